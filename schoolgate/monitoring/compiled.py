"""The risk-term library compiled once per content, kept in ``<data_dir>/monitoring``.

Compiling the library (its YAML read with line numbers, the rules indexed, the automaton
built) takes a second or two, and every gateway process does it at start: each worker of a
multi-process gateway, and again after a restart. The compiled
:class:`~schoolgate.monitoring.terms.Matcher` is saved (pickled) under a digest of everything
it is made from: every file under the library's folders (paths and bytes), the languages
read, the source of the modules that build it, and the Python and pyahocorasick versions. A
library edited on disk, or a schoolgate upgrade, is another digest, so it compiles again; a
saved file that cannot be read is compiled again too. A library with errors raises
:class:`~schoolgate.core.configfile.ConfigError` as :func:`load_matcher` does, and nothing is
saved.

The folder is the gateway's own (beside its database and its CA's key): only the gateway
writes there, and its files are written mode 0600.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from schoolgate.core import configfile
from schoolgate.monitoring.library import default_root
from schoolgate.monitoring.terms import Matcher, load_matcher

log = logging.getLogger(__name__)

FOLDER = "monitoring"  # under the data dir
# Another folder for it, shared by the gateways of one machine (the tests' gateways share one).
FOLDER_ENV = "SCHOOLGATE_COMPILED_LIBRARY_DIR"
PREFIX, SUFFIX = "library-", ".pickle"
KEEP = 4  # compiled versions kept (a few schools' folders, or the one before an edit)
# The modules whose code shapes a compiled matcher: a change to any of them is a new digest.
_SOURCES = (
    *sorted(Path(__file__).resolve().parent.glob("*.py")),
    Path(configfile.__file__).resolve(),
)


def load_compiled(
    data_dir: Path, roots: list[Path] | None = None, *, languages: tuple[str, ...] | None = None
) -> Matcher:
    """The library's matcher as :func:`load_matcher` builds it, compiled once per content in
    ``<data_dir>/monitoring`` (or ``$SCHOOLGATE_COMPILED_LIBRARY_DIR``)."""
    folder = os.environ.get(FOLDER_ENV) or Path(data_dir) / FOLDER
    return CompiledLibrary(Path(folder)).load(roots, languages=languages)


class CompiledLibrary:
    """Load the library's matcher from ``folder`` when this exact library was compiled
    before, else compile it (:func:`load_matcher`) and save it there."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def load(
        self, roots: list[Path] | None = None, *, languages: tuple[str, ...] | None = None
    ) -> Matcher:
        path = self.folder / f"{PREFIX}{library_digest(roots, languages)}{SUFFIX}"
        saved = self._read(path)
        if saved is not None:
            return saved
        matcher = load_matcher(roots, languages=languages)  # raises on errors: nothing saved
        self._save(path, matcher)
        return matcher

    def _read(self, path: Path) -> Matcher | None:
        try:
            with path.open("rb") as file:
                # The gateway's own file, named by the digest of what it was compiled from.
                found = pickle.load(file)  # noqa: S301
        except FileNotFoundError:
            return None
        except Exception:  # noqa: BLE001 - a damaged file is compiled again, never fatal
            log.warning("schoolgate: %s could not be read; compiling the library again", path)
            return None
        return found if isinstance(found, Matcher) else None

    def _save(self, path: Path, matcher: Matcher) -> None:
        """Written whole or not at all (another process may read it meanwhile); a failure
        only costs the next start a compile."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(prefix=".library-", dir=self.folder)
            try:
                with os.fdopen(fd, "wb") as file:
                    pickle.dump(matcher, file, protocol=pickle.HIGHEST_PROTOCOL)
                os.replace(temporary, path)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
            self._prune(keep=path)
        except Exception as exc:  # noqa: BLE001 - e.g. a read-only data dir
            log.warning("schoolgate: the compiled library could not be saved in %s: %s", path, exc)

    def _prune(self, keep: Path) -> None:
        """Only the newest few compiled versions stay."""
        saved = sorted(
            (p for p in self.folder.glob(f"{PREFIX}*{SUFFIX}") if p != keep),
            key=lambda p: p.stat().st_mtime_ns,
            reverse=True,
        )
        for old in saved[KEEP - 1 :]:
            old.unlink(missing_ok=True)


def library_digest(roots: list[Path] | None, languages: tuple[str, ...] | None) -> str:
    """What a compiled library depends on, as one hex digest (see the module's docstring)."""
    digest = hashlib.sha256()

    def part(*values: object) -> None:
        for value in values:
            data = value if isinstance(value, bytes) else repr(value).encode()
            digest.update(len(data).to_bytes(8, "big") + data)

    part(sys.version, pickle.HIGHEST_PROTOCOL, _version("pyahocorasick"), languages)
    for source in _SOURCES:
        part(source.name, source.read_bytes())
    for root in roots or [default_root()]:
        part("root", str(root.resolve()))
        if root.is_dir():
            for path in sorted(root.rglob("*")):
                part(str(path.relative_to(root)), _contents(path))
    return digest.hexdigest()[:32]


def _contents(path: Path) -> bytes | str:
    if not path.is_file():
        return "folder"
    try:
        return path.read_bytes()
    except OSError:  # the loader reports it (and raises, so nothing is saved)
        return "unreadable"


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


__all__ = ["CompiledLibrary", "library_digest", "load_compiled"]
