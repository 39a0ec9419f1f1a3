"""The risk-term library compiled once per test process, for the gateways the tests build.

Compiling the shipped library (its YAML read with line numbers, the rules indexed, the
automaton built) takes over a second, and most gateway tests build a gateway of their own
on the same unchanged library. :class:`CompiledLibraries` stands in for
``schoolgate.gateway.monitoring_addon.load_matcher`` (``tests/conftest.py`` puts it there):
it compiles a library once per exact content of its folders and hands every later gateway
the same :class:`~schoolgate.monitoring.terms.Matcher`. A folder changed on disk is another
key, so a reload still compiles what the files now say; a library that fails to load raises
as before and is not kept. Tests of the loader itself call ``load_matcher`` directly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path

from schoolgate.monitoring.library import default_root
from schoolgate.monitoring.terms import Matcher, load_matcher

Loader = Callable[..., Matcher]


class CompiledLibraries:
    """``load_matcher`` remembered by the library's folders, languages and file contents."""

    def __init__(self, load: Loader = load_matcher) -> None:
        self._load = load
        self._compiled: dict[tuple, Matcher] = {}

    def __call__(
        self, roots: Iterable[Path] | None = None, *, languages: tuple[str, ...] | None = None
    ) -> Matcher:
        folders = list(roots) if roots else None
        key = (_contents(folders or [default_root()]), languages)
        matcher = self._compiled.get(key)
        if matcher is None:
            matcher = self._load(folders, languages=languages)
            self._compiled[key] = matcher
        else:
            # Each gateway starts as after a fresh load: no text or word remembered from the
            # tests before it (the matcher itself is never changed once built).
            matcher.forget()
        return matcher


def _contents(roots: list[Path]) -> tuple:
    """Everything under each root that the library reads, as (name, digest) pairs: every
    folder and file by its path and every file by its bytes."""
    found: list[tuple[str, str]] = []
    for root in roots:
        if not root.is_dir():
            found.append((str(root), "not a folder"))
            continue
        for path in sorted(root.rglob("*")):
            found.append((str(path), _digest(path)))
    return (tuple(str(root.resolve()) for root in roots), tuple(found))


def _digest(path: Path) -> str:
    if not path.is_file():
        return "/"
    try:
        return hashlib.blake2b(path.read_bytes()).hexdigest()
    except OSError:  # the loader reports it (and raises, so nothing is kept)
        return "unreadable"


__all__ = ["CompiledLibraries"]
