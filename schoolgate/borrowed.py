"""What schoolgate borrows from inside its libraries, and on which of their versions.

A few things go beneath mitmproxy's and APScheduler's public interfaces because the public way
costs every pupil's request (or loses a job):

* :mod:`schoolgate.gateway.hook_table` makes mitmproxy's addon manager dispatch events through
  a table of the hooks that exist (it swaps the manager's class and uses
  ``addonmanager.traverse``, ``cut_traceback`` and ``logger``);
* :mod:`schoolgate.gateway.auth_cache` replaces the ``validator`` of mitmproxy's ``proxyauth``
  addon with one that remembers logins;
* :mod:`schoolgate.gateway.workers` relies on mitmproxy's servers listening through
  ``loop.create_server`` (several processes share the port with ``SO_REUSEPORT``), and reaches
  into its ``termlog`` and ``dumper`` addons to tag each worker's lines;
* :mod:`schoolgate.jobs.scheduler` overrides APScheduler's ``_process_jobs`` so that no job
  starts after the scheduler was told to stop.

Each is used only where the installed library is a version the tests cover (:data:`TESTED`)
and the internal still has the shape it was written against. Otherwise the library's own
public behaviour is kept, and one WARNING line says what that costs. To support a new version:
run the whole suite on it, then widen its range here.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
from collections.abc import Callable

log = logging.getLogger(__name__)

Version = tuple[int, int]

# (lowest, highest) major.minor release the tests cover, both included. Run on mitmproxy
# 11.0.2, 11.1.3, 12.0.1, 12.1.2, 12.2.3 and 12.3.1, and APScheduler 3.10.4 and 3.11.3.
SUPPORTED_MITMPROXY: tuple[Version, Version] = ((11, 0), (12, 3))
SUPPORTED_APSCHEDULER: tuple[Version, Version] = ((3, 10), (3, 11))
TESTED: dict[str, tuple[Version, Version]] = {
    "mitmproxy": SUPPORTED_MITMPROXY,
    "APScheduler": SUPPORTED_APSCHEDULER,
}

_warned: set[str] = set()


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution`` as its metadata says, or None."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def parse_version(text: str | None) -> Version | None:
    """``"12.3.1"`` -> ``(12, 3)``; None if it does not start with major.minor."""
    match = re.match(r"(\d+)\.(\d+)", text or "")
    return (int(match[1]), int(match[2])) if match else None


def untested(distribution: str) -> str | None:
    """Why the installed ``distribution`` is not one the tests cover, or None if it is."""
    lowest, highest = TESTED[distribution]
    text = installed_version(distribution)
    version = parse_version(text)
    covered = f"{lowest[0]}.{lowest[1]} to {highest[0]}.{highest[1]}"
    if text is None:
        return f"the installed version of {distribution} is unknown (tested: {covered})"
    if version is None or not lowest <= version <= highest:
        return f"{distribution} {text} is not a version schoolgate is tested with ({covered})"
    return None


def borrow(what: str, distribution: str, shape: Callable[[], str | None], instead: str) -> bool:
    """May ``what`` (an internal of ``distribution``) be used? Yes if the installed version is
    tested and ``shape()`` finds nothing amiss (it returns what is, or None). If not, one
    WARNING per ``what`` in this process says why and what happens ``instead``."""
    problem = untested(distribution)
    if problem is None:
        try:
            problem = shape()
        except Exception as exc:  # noqa: BLE001 - an unexpected shape is a reason, not a crash
            problem = f"checking it failed ({type(exc).__name__}: {exc})"
    if problem is None:
        return True
    if what not in _warned:
        _warned.add(what)
        log.warning("schoolgate: not using %s: %s; %s", what, problem, instead)
    return False
