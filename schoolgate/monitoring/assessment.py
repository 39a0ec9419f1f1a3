"""What the matcher reports of a text: each term or rule found (:class:`Match`) and all of
them, most severe first (:class:`Assessment`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Match:
    """One term found: its theme, severity (after context), the library's term, and what
    suppressed or lowered it."""

    theme: str
    severity: int
    term: str
    base_severity: int
    firm: bool = False
    suppressed_by: str | None = None  # the allow-phrase or context phrase
    lowered_by: str | None = None  # the context phrase that lowered it
    note: str = ""
    source: str = ""
    rule: bool = False  # ``term`` names a co-occurrence rule of the library

    @property
    def active(self) -> bool:
        # ``rank`` writes this test out (sorting calls it for every match): keep the two alike.
        return self.suppressed_by is None and self.severity > 0

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "theme": self.theme,
            "severity": self.severity,
            "term": self.term,
        }
        if self.base_severity != self.severity:
            out["base_severity"] = self.base_severity
        if self.suppressed_by:
            out["suppressed_by"] = self.suppressed_by
        if self.lowered_by:
            out["lowered_by"] = self.lowered_by
        if self.rule:
            out["rule"] = True
        return out


@dataclass(frozen=True, slots=True)
class Assessment:
    """Every term found in one text: the active ones first, most severe first."""

    matches: tuple[Match, ...] = ()

    @property
    def active(self) -> tuple[Match, ...]:
        return tuple(m for m in self.matches if m.active)

    @property
    def suppressed(self) -> tuple[Match, ...]:
        return tuple(m for m in self.matches if not m.active)

    @property
    def severity(self) -> int:
        # Match.active written out, in a plain loop: read for every match of every search.
        best = 0
        for m in self.matches:
            if m.suppressed_by is None and m.severity > best:
                best = m.severity
        return best

    @property
    def top(self) -> Match | None:
        active = self.active
        return active[0] if active else None

    def themes(self, minimum: int = 1) -> frozenset[str]:
        return frozenset(m.theme for m in self.matches if m.active and m.severity >= minimum)


NOTHING = Assessment()
# The slot's own setter (a frozen dataclass refuses setattr): the matcher builds an
# Assessment without the dataclass's __init__.
set_matches = Assessment.__dict__["matches"].__set__


def library_grade(found: Assessment) -> int | None:
    """The library's severity for ``found`` where the second opinion may raise it to 3: 1 or 2
    (flagged), or 0 (found in nothing); None where it may not: an allow-phrase or context
    phrase judged its words ordinary, or it is severity 3 already. (One pass over the
    matches: the severity's test written out.)"""
    best = 0
    for m in found.matches:
        if m.suppressed_by or m.lowered_by:
            return None
        if m.severity > best:
            best = m.severity
    return best if best < 3 else None


def raised(
    found: Assessment, grade: int, theme: str, term: str, score: str, source: str
) -> Assessment:
    """``found`` (graded ``grade`` by the library: 0 to 2) with a learned model's severity-3
    match in ``theme``, its note naming the library's grade and term (or that it found
    nothing) and the model's ``score``."""
    if grade:
        note = f"graded {grade} by {found.active[0].term!r}; {score}"
    else:
        note = f"no term or rule found; {score}"
    return Assessment(ordered([Match(theme, 3, term, 3, note=note, source=source), *found.matches]))


def ordered(matches: Iterable[Match]) -> tuple[Match, ...]:
    return tuple(sorted(matches, key=rank))


def rank(m: Match) -> tuple[bool, int, str, str]:
    """Active first (``active`` written out: a property is one more call), most severe first."""
    return (m.suppressed_by is not None or m.severity <= 0, -m.severity, m.theme, m.term)


__all__ = [
    "NOTHING",
    "Assessment",
    "Match",
    "library_grade",
    "ordered",
    "raised",
    "rank",
    "set_matches",
]
