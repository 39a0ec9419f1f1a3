"""Where the config and the data folder are: one answer for the gateway and every command.

In order, for each of the two:

1. what the command line says (``--config``, ``--data-dir``);
2. the environment: ``SCHOOLGATE_CONFIG``, ``SCHOOLGATE_DATA_DIR``;
3. when schoolgate is **installed system-wide**: ``/etc/schoolgate/mitm_config.yaml`` and
   ``/var/lib/schoolgate`` (the layout of ``docs/deployment.md`` and the systemd unit);
4. in a source checkout: the checkout's own ``mitm_config.yaml`` and ``var/`` beside it,
   whatever the current folder is.

"Installed system-wide" means either that ``/etc/schoolgate/mitm_config.yaml`` exists (the
school put its config there, whether schoolgate runs from a checkout or an installed copy), or
that the package is not running from a source checkout (``pip install`` into a virtual
environment or the system: the package lives in ``site-packages``). An installed copy never
looks for its config inside ``site-packages``: with no config in any of these places it says
where to put one.

Pure: paths and the environment only (no database, no mitmproxy).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ENV_CONFIG = "SCHOOLGATE_CONFIG"
ENV_DATA_DIR = "SCHOOLGATE_DATA_DIR"
SYSTEM_CONFIG = Path("/etc/schoolgate/mitm_config.yaml")
SYSTEM_DATA_DIR = Path("/var/lib/schoolgate")
CONFIG_NAME = "mitm_config.yaml"
CHECKOUT_DATA = "var"
PACKAGE_DIR = Path(__file__).resolve().parent.parent  # the schoolgate package

# Where each answer came from (shown by commands that change state).
GIVEN = "given"
ENVIRONMENT = "environment"
SYSTEM = "system"
CHECKOUT = "checkout"


class LocationError(Exception):
    """No config could be found: the message says where schoolgate looked and what to do."""


@dataclass(frozen=True)
class Found:
    """A path and where it came from (``given``, ``environment``, ``system``, ``checkout``)."""

    path: Path
    source: str
    detail: str = ""  # the option or variable: "--config", "SCHOOLGATE_DATA_DIR"

    def describe(self) -> str:
        why = {
            GIVEN: f"from {self.detail or 'the command line'}",
            ENVIRONMENT: f"from {self.detail}",
            SYSTEM: "installed system-wide",
            CHECKOUT: "the checkout's default",
        }[self.source]
        return f"{self.path} ({why})"


@dataclass(frozen=True)
class Locations:
    config: Found
    data_dir: Found

    def describe(self) -> str:
        return f"config {self.config.describe()}; data folder {self.data_dir.describe()}"


def checkout_root(package_dir: Path = PACKAGE_DIR) -> Path | None:
    """The source checkout the package runs from (``pyproject.toml`` and ``mitm_config.yaml``
    beside the package folder, not inside ``site-packages``), or None for an installed copy."""
    if any(part in ("site-packages", "dist-packages") for part in package_dir.parts):
        return None
    root = package_dir.parent
    if (root / "pyproject.toml").is_file() and (root / CONFIG_NAME).is_file():
        return root
    return None


def _absolute(path: Path | str) -> Path:
    return Path(os.path.abspath(Path(path).expanduser()))


def _from_environment(environ: Mapping[str, str], name: str) -> Found | None:
    value = (environ.get(name) or "").strip()
    return Found(_absolute(value), ENVIRONMENT, name) if value else None


def find_config(
    given: Path | str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    system_config: Path = SYSTEM_CONFIG,
    package_dir: Path = PACKAGE_DIR,
) -> Found:
    """The config file (absolute), or :class:`LocationError` when there is none anywhere."""
    environ = os.environ if environ is None else environ
    if given:
        return Found(_absolute(given), GIVEN, "--config")
    found = _from_environment(environ, ENV_CONFIG)
    if found is not None:
        return found
    if system_config.is_file():
        return Found(system_config, SYSTEM)
    checkout = checkout_root(package_dir)
    if checkout is not None:
        return Found(checkout / CONFIG_NAME, CHECKOUT)
    raise LocationError(
        f"no configuration found: give --config PATH, set {ENV_CONFIG}, or put it at "
        f"{system_config} (this copy of schoolgate is installed, so it has no config of its "
        "own: start from the mitm_config.yaml, schedules/ and blocklists/ of its source)"
    )


def find_data_dir(
    given: Path | str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    system_config: Path = SYSTEM_CONFIG,
    system_data_dir: Path = SYSTEM_DATA_DIR,
    package_dir: Path = PACKAGE_DIR,
) -> Found:
    """The data folder (absolute; it may not exist yet)."""
    environ = os.environ if environ is None else environ
    if given:
        return Found(_absolute(given), GIVEN, "--data-dir")
    found = _from_environment(environ, ENV_DATA_DIR)
    if found is not None:
        return found
    checkout = checkout_root(package_dir)
    if system_config.is_file() or checkout is None:
        return Found(system_data_dir, SYSTEM)
    return Found(checkout / CHECKOUT_DATA, CHECKOUT)


def locate(
    config: Path | str | None = None,
    data_dir: Path | str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    system_config: Path = SYSTEM_CONFIG,
    system_data_dir: Path = SYSTEM_DATA_DIR,
    package_dir: Path = PACKAGE_DIR,
) -> Locations:
    """The config file and the data folder, by the order in the module's docstring. Paths
    come back absolute, so that a command run from another folder means the same files.
    Raises :class:`LocationError` when there is no config anywhere."""
    return Locations(
        find_config(config, environ=environ, system_config=system_config, package_dir=package_dir),
        find_data_dir(
            data_dir,
            environ=environ,
            system_config=system_config,
            system_data_dir=system_data_dir,
            package_dir=package_dir,
        ),
    )


__all__ = [
    "ENV_CONFIG",
    "ENV_DATA_DIR",
    "SYSTEM_CONFIG",
    "SYSTEM_DATA_DIR",
    "Found",
    "LocationError",
    "Locations",
    "checkout_root",
    "find_config",
    "find_data_dir",
    "locate",
]
