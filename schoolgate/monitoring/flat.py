"""The matcher's automaton laid out flat in C (``speedups.compile``), from pyahocorasick's.

pyahocorasick keeps each node of its trie in its own allocation: a search's walk over it was
mostly cache misses. ``speedups.compile`` lays the same keys out once in a few arrays, and
``speedups.find`` walks them. The pyahocorasick automaton stays (the Python loops walk it) and
is what a pickled matcher keeps: the flat one is made again from it when unpickled.
"""

from __future__ import annotations

from typing import Any

import ahocorasick

try:
    from schoolgate.monitoring import speedups
except ImportError:  # no C loops: no flat automaton either
    speedups = None  # type: ignore[assignment]


class FlatAutomaton:
    """``compiled``: what ``speedups.find`` walks, the keys and values of ``source`` (each
    value ``(length, signature, kind, index, inner, stem, more)``, as the Matcher adds them)."""

    __slots__ = ("compiled", "source")

    def __init__(self, source: ahocorasick.Automaton) -> None:
        assert speedups is not None
        self.source = source
        entries = [
            (key, (value[1:6], *value[6])) for key, value in (source.items() if len(source) else ())
        ]
        self.compiled: Any = speedups.compile(entries)

    def __reduce__(self) -> tuple[Any, tuple[ahocorasick.Automaton]]:
        return (flat_automaton, (self.source,))


def flat_automaton(source: ahocorasick.Automaton) -> FlatAutomaton | None:
    """The flat automaton of ``source``; None where the C loops were not built."""
    return FlatAutomaton(source) if speedups is not None else None


__all__ = ["FlatAutomaton", "flat_automaton"]
