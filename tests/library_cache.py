"""The risk-term library compiled once per test process, for the gateways the tests build.

The gateway keeps its compiled library in its data dir (``schoolgate/monitoring/compiled.py``),
but most gateway tests build a gateway of their own, with a data dir of its own, on the same
unchanged library. :class:`CompiledLibraries` stands in for
``schoolgate.gateway.monitoring_addon.load_compiled`` (``tests/conftest.py`` puts it there):
it keeps each matcher by the exact content of its library's folders and hands every later
gateway of the process the same :class:`~schoolgate.monitoring.terms.Matcher`. A folder
changed on disk is another key, so a reload still compiles what the files now say; a library
that fails to load raises as before and is not kept. Tests of the loaders themselves call
them directly.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from schoolgate.monitoring.compiled import library_digest, load_compiled
from schoolgate.monitoring.terms import Matcher

Loader = Callable[..., Matcher]


class CompiledLibraries:
    """``load_compiled`` remembered by the library's digest (its folders' paths and file
    contents, the languages, the code that compiles it)."""

    def __init__(self, load: Loader = load_compiled) -> None:
        self._load = load
        self._compiled: dict[str, Matcher] = {}

    def __call__(
        self,
        data_dir: Path,
        roots: list[Path] | None = None,
        *,
        languages: tuple[str, ...] | None = None,
    ) -> Matcher:
        key = library_digest(roots, languages)
        matcher = self._compiled.get(key)
        if matcher is None:
            matcher = self._load(data_dir, roots, languages=languages)
            self._compiled[key] = matcher
        else:
            # Each gateway starts as after a fresh load: no text or word remembered from the
            # tests before it (the matcher itself is never changed once built).
            matcher.forget()
        return matcher


__all__ = ["CompiledLibraries"]
