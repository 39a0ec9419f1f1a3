"""Risk-term matching: a normaliser, then one multi-pattern automaton (``pyahocorasick``).

The normaliser turns a search or a page title, and every term of the library, into the same
skeleton, so that what a pupil may write to get past a word list still matches:

1. **Unicode**: NFKC (fullwidth, mathematical and circled letters), look-alike Cyrillic and
   Greek letters inside Latin words (``suіcide`` with a Cyrillic ``і``), accents dropped,
   zero-width and format characters removed, then case folded.
2. **Words**: letters and digits make words; ``.``, ``-``, ``_``, ``/`` and spaces separate
   them; apostrophes inside a word vanish (``don't``). Three or more one-letter words in a
   row are one word (``s u i c i d e``, ``k.i.l.l``).
3. **Leetspeak** inside words that have letters: ``0 1 3 4 5 7 @ $ | !`` read as
   ``o i e a s t a s i i`` (``k1ll``, ``$uicide``, ``n4zi``); a word of digits alone stays
   (``1488``). Since ``1`` and ``|`` may also stand for ``l``, each term is also compiled
   with its ``l``\\ s read as ``i`` (``se1f harm``).
4. **Misspelt words** from the library's ``spellings`` (``sucide``, ``wnat``) read as the
   word, wherever they are; then **sound-alike spellings**: ``ph``->``f``, ``ck``->``k``,
   ``c`` before ``e i y``->``s``, other ``c``->``k``, ``x``->``ks`` (``suiside``,
   ``extasy``, ``secks``).
5. **Repeated letters** count once (``kiiiill``, ``canabis``).

Matching runs on the words joined without spaces, and a match counts only where it starts and
ends at word boundaries and the text has no word break the term does not have (so
``killmyself`` and ``kill my self`` match ``kill myself``; ``skill`` never matches ``kill``,
``the hero in`` never matches ``heroin``). Allow-phrases and context phrases are patterns in
the same automaton: one pass over the text finds everything.

A term inside an allow-phrase of its theme is not counted (``kill the lights``); a context
phrase anywhere in the text (``macbeth``, ``history of``) lowers or drops the terms of its
themes, except ``firm`` ones, so a pupil cannot hide "kill myself" behind "macbeth".
"""

from __future__ import annotations

import itertools
import operator
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import ahocorasick

from schoolgate.configfile import Issues
from schoolgate.monitoring.library import (
    SUPPRESS,
    Allow,
    ContextRule,
    Library,
    Term,
    default_root,
    load_library,
)

MIN_PATTERN = 3  # a term shorter than this once normalised matches too much
MAX_TEXT = 1000  # characters of a text that are read (terms are cut at 500, titles at 300)
MAX_L_VARIANTS = 3  # a term's first three l's are also compiled as i

# -- the normaliser -----------------------------------------------------------------------------

_CONFUSABLES = str.maketrans(
    {
        # Cyrillic
        "а": "a", "в": "b", "г": "r", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h",
        "о": "o", "п": "n", "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "ь": "b",
        "ѕ": "s", "і": "i", "ї": "i", "ј": "j", "ԁ": "d", "ԛ": "q", "ԝ": "w", "ү": "y",
        "һ": "h", "ӏ": "l", "ʏ": "y",
        # Greek
        "α": "a", "β": "b", "γ": "y", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v",
        "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ω": "w", "ς": "s",
        # Latin look-alikes and small capitals
        "ɑ": "a", "ɡ": "g", "ı": "i", "ɩ": "i", "ʟ": "l", "ᴀ": "a", "ʙ": "b", "ᴄ": "c",
        "ᴅ": "d", "ᴇ": "e", "ꜰ": "f", "ɢ": "g", "ʜ": "h", "ɪ": "i", "ᴊ": "j", "ᴋ": "k",
        "ᴍ": "m", "ɴ": "n", "ᴏ": "o", "ᴘ": "p", "ʀ": "r", "ꜱ": "s", "ᴛ": "t", "ᴜ": "u",
        "ᴠ": "v", "ᴡ": "w", "ᴢ": "z",
    }
)  # fmt: skip
# Format and zero-width characters, combining marks, and the replacement character of a
# term that was not valid UTF-8: dropped, so that they cannot split a word.
_INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffd\u0300-\u036f\u1ab0-\u1aff"
    "\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]"
)
_APOSTROPHE = re.compile(r"(?<=[^\W_])['’`´](?=[^\W_])")
_WORD = re.compile(r"(?:[^\W_]|[@$|!](?=[^\W_@$|!]|[@$|!]+[^\W_]))+")
_SPELLED = re.compile(r"(?<![^ ])(?:[^ ] ){2,}[^ ](?![^ ])")
_LEET_WORD = re.compile(r"[^ ]*[0-9@$|!][^ ]*")
_LEET = str.maketrans(
    {
        "0": "o",
        "1": "i",
        "3": "e",
        "4": "a",
        "5": "s",
        "7": "t",
        "@": "a",
        "$": "s",
        "|": "i",
        "!": "i",
    }
)
_LEET_CHAR = re.compile(r"[0-9@$|!]")
_LETTER = re.compile(r"[^\W\d_]")
_SOFT_C = re.compile(r"c(?=[eiy])")
_REPEAT = re.compile(r"(.)\1+")
_FIRST_GROUP = operator.itemgetter(1)  # a C-level callable: no Python call per repeat


class Normalised(NamedTuple):
    """A text as the matcher reads it: its words joined, and where each word ends."""

    words: tuple[str, ...]
    joined: str
    bounds: bytearray  # bounds[i] == 1 where a word starts or ends at offset i of ``joined``

    @property
    def text(self) -> str:
        return " ".join(self.words)


def _leet(found: re.Match[str]) -> str:
    word = found.group()
    if _LETTER.search(word):
        return word.translate(_LEET)
    return re.sub(r"[@$|!]", "", word)


def normalise(text: str, spellings: dict[str, str] | None = None) -> Normalised:
    """The skeleton of ``text`` (see the module's description). ``spellings``: misspelt
    word -> word, both as :func:`spelling_table` gives them."""
    text = text[:MAX_TEXT]
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
        text = _INVISIBLE.sub("", unicodedata.normalize("NFKD", text))
        text = unicodedata.normalize("NFC", text).casefold()
        if not text.isascii():
            text = " ".join(
                w.translate(_CONFUSABLES) if re.search("[a-z]", w) else w for w in text.split()
            )
    else:
        text = text.lower()
    if "'" in text or "’" in text or "`" in text or "´" in text:
        text = _APOSTROPHE.sub("", text)
    spaced = " ".join(_WORD.findall(text))
    if " " in spaced:
        spaced = _SPELLED.sub(lambda m: m.group().replace(" ", ""), spaced)
    if _LEET_CHAR.search(spaced):
        spaced = _LEET_WORD.sub(_leet, spaced)
    if spellings:
        spaced = " ".join([spellings.get(w, w) for w in spaced.split(" ")])
    # sound-alikes: ph -> f, ck -> k, c before e/i/y -> s, other c -> k, x -> ks
    if "ph" in spaced:
        spaced = spaced.replace("ph", "f")
    if "c" in spaced:
        spaced = _SOFT_C.sub("s", spaced.replace("ck", "k")).replace("c", "k")
    if "x" in spaced:
        spaced = spaced.replace("x", "ks")
    spaced = _REPEAT.sub(_FIRST_GROUP, spaced)
    words = tuple(spaced.split())
    joined = "".join(words)
    bounds = bytearray(len(joined) + 1)
    bounds[0] = 1
    for at in itertools.accumulate(map(len, words)):
        bounds[at] = 1
    return Normalised(words, joined, bounds)


def spelling_table(spellings: dict[str, str]) -> dict[str, str]:
    """A library's word spellings as :func:`normalise` reads them (after case and leetspeak,
    before the sound-alike rules)."""
    out = {}
    for wrong, word in spellings.items():
        out[_LEET_WORD.sub(_leet, wrong.lower())] = _LEET_WORD.sub(_leet, word.lower())
    return out


def _l_variants(text: str) -> set[str]:
    """``text`` with each combination of its first few ``l``\\ s written as ``1``."""
    places = [i for i, ch in enumerate(text.lower()) if ch == "l"][:MAX_L_VARIANTS]
    out = {text}
    for count in range(1, len(places) + 1):
        for chosen in itertools.combinations(places, count):
            chars = list(text)
            for i in chosen:
                chars[i] = "1"
            out.add("".join(chars))
    return out


# -- results ------------------------------------------------------------------------------------


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

    @property
    def active(self) -> bool:
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
        return max((m.severity for m in self.matches if m.active), default=0)

    @property
    def top(self) -> Match | None:
        active = self.active
        return active[0] if active else None

    def themes(self, minimum: int = 1) -> frozenset[str]:
        return frozenset(m.theme for m in self.matches if m.active and m.severity >= minimum)


NOTHING = Assessment()

# -- the matcher --------------------------------------------------------------------------------

_TERM, _ALLOW, _CONTEXT = 0, 1, 2


@dataclass(frozen=True, slots=True)
class _Pattern:
    kind: int
    index: int  # into the matcher's terms, allows or rules
    length: int
    inner: frozenset[int]  # word breaks inside the pattern, as offsets from its start


class Matcher:
    """The library compiled into one automaton. Build once; :meth:`assess` is thread-safe."""

    def __init__(self, library: Library, issues: Issues | None = None) -> None:
        self.library = library
        self.terms: tuple[Term, ...] = library.terms
        self.allows: tuple[Allow, ...] = library.allow
        self.rules: tuple[ContextRule, ...] = library.context
        self.spellings = spelling_table(library.spellings)
        self.automaton = ahocorasick.Automaton()
        self.patterns = 0
        issues = issues if issues is not None else Issues()
        table: dict[str, list[_Pattern]] = {}
        compiled_allows: list[Allow] = []
        for index, term in enumerate(self.terms):
            for form in (term.text, *term.spellings):
                for variant in _l_variants(form):
                    self._add(table, _TERM, index, variant, issues, term.source, variant == form)
        for index, allow in enumerate(self.allows):
            if self._add(table, _ALLOW, index, allow.phrase, issues, allow.source, True):
                compiled_allows.append(allow)
        for index, rule in enumerate(self.rules):
            self._add(table, _CONTEXT, index, rule.phrase, issues, rule.source, True)
        for key, patterns in table.items():
            self.automaton.add_word(key, tuple(patterns))
        self.patterns = len(table)
        if table:
            self.automaton.make_automaton()
        self._warn_idle_allows(compiled_allows, issues)

    def _add(
        self,
        table: dict[str, list[_Pattern]],
        kind: int,
        index: int,
        text: str,
        issues: Issues,
        source: str,
        report: bool,
    ) -> bool:
        norm = normalise(text, self.spellings)
        if len(norm.joined) < MIN_PATTERN:
            if report:
                file, _, line = source.rpartition(":")
                issues.add(
                    file or source,
                    int(line) if line.isdigit() else None,
                    "term" if kind == _TERM else "phrase" if kind == _CONTEXT else "allow",
                    f"{text!r} is too short once normalised ({norm.joined!r}): it would match "
                    "too much",
                )
            return False
        inner = frozenset(i for i in range(1, len(norm.joined)) if norm.bounds[i])
        pattern = _Pattern(kind, index, len(norm.joined), inner)
        patterns = table.setdefault(norm.joined, [])
        if pattern not in patterns:
            patterns.append(pattern)
        return True

    def _warn_idle_allows(self, allows: list[Allow], issues: Issues) -> None:
        """An allow-phrase in which no term of its theme matches does nothing: say so."""
        for allow in allows:
            terms, _, _ = self._scan(normalise(allow.phrase, self.spellings))
            if any(allow.theme in (None, self.terms[index].theme) for index, _, _ in terms):
                continue
            file, _, line = allow.source.rpartition(":")
            issues.warn(
                file,
                int(line) if line.isdigit() else None,
                "allow",
                f"{allow.phrase!r} contains no term of {allow.theme or 'any theme'}: "
                "it has no effect",
            )

    def assess(self, text: str | None) -> Assessment:
        """Every term in ``text`` with its final severity; :data:`NOTHING` for none."""
        if not text or not self.patterns:
            return NOTHING
        return self.assess_normalised(normalise(text, self.spellings))

    def assess_normalised(self, norm: Normalised) -> Assessment:
        found_terms, found_allows, found_rules = self._scan(norm)
        if not found_terms:
            return NOTHING
        return Assessment(self._resolve(found_terms, found_allows, found_rules))

    def _scan(
        self, norm: Normalised
    ) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]], list[int]]:
        """One pass of the automaton: the terms and allow-phrases found, with where they are
        in ``norm.joined``, and the context rules whose phrase is there."""
        joined, bounds = norm.joined, norm.bounds
        found_terms: list[tuple[int, int, int]] = []  # (term index, start, end)
        found_allows: list[tuple[int, int, int]] = []
        found_rules: list[int] = []
        for end_index, patterns in self.automaton.iter(joined):
            end = end_index + 1
            if not bounds[end]:
                continue
            for pattern in patterns:
                start = end - pattern.length
                if not bounds[start] or not _aligned(bounds, start, end, pattern.inner):
                    continue
                if pattern.kind == _TERM:
                    found_terms.append((pattern.index, start, end))
                elif pattern.kind == _ALLOW:
                    found_allows.append((pattern.index, start, end))
                else:
                    found_rules.append(pattern.index)
        return found_terms, found_allows, found_rules

    def _resolve(
        self,
        found_terms: list[tuple[int, int, int]],
        found_allows: list[tuple[int, int, int]],
        found_rules: list[int],
    ) -> tuple[Match, ...]:
        best: dict[tuple[str, str], Match] = {}
        covered = _covered_spans({(start, end) for _, start, end in found_terms})
        for index, start, end in found_terms:
            if (start, end) in covered:
                continue  # the same words as a longer term ("kill" in "kill myself")
            term = self.terms[index]
            match = self._judge(term, start, end, found_allows, found_rules)
            key = (term.theme, term.text)
            old = best.get(key)
            if old is None or (match.active, match.severity) > (old.active, old.severity):
                best[key] = match
        return tuple(
            sorted(best.values(), key=lambda m: (not m.active, -m.severity, m.theme, m.term))
        )

    def _judge(
        self,
        term: Term,
        start: int,
        end: int,
        found_allows: list[tuple[int, int, int]],
        found_rules: list[int],
    ) -> Match:
        for index, a_start, a_end in found_allows:
            allow = self.allows[index]
            if a_start <= start and end <= a_end and allow.theme in (None, term.theme):
                return Match(
                    term.theme, 0, term.text, term.severity, term.firm, allow.phrase,
                    None, term.note, term.source,
                )  # fmt: skip
        lowering, by = 0, None
        if not term.firm:
            for index in found_rules:
                rule = self.rules[index]
                if rule.themes is not None and term.theme not in rule.themes:
                    continue
                if rule.lower > lowering:
                    lowering, by = rule.lower, rule.phrase
        severity = max(term.severity - lowering, 0)
        if lowering and severity == 0:
            return Match(
                term.theme, 0, term.text, term.severity, term.firm, by, None, term.note,
                term.source,
            )  # fmt: skip
        return Match(
            term.theme, severity, term.text, term.severity, term.firm, None, by, term.note,
            term.source,
        )  # fmt: skip


def _covered_spans(spans: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """The spans inside a longer one, in one sweep (a pupil's "kill kill kill ..." must not
    cost quadratic time)."""
    covered = set()
    reach = -1  # the furthest end of a span that starts at or before this one
    for start, end in sorted(spans, key=lambda span: (span[0], -span[1])):
        if reach >= end:
            covered.add((start, end))
        reach = max(reach, end)
    return covered


def _aligned(bounds: bytearray, start: int, end: int, inner: frozenset[int]) -> bool:
    """No word break inside ``start..end`` that the pattern does not have."""
    at = bounds.find(1, start + 1, end)
    while at != -1:
        if at - start not in inner:
            return False
        at = bounds.find(1, at + 1, end)
    return True


def load_matcher(
    roots: Iterable[Path] | None = None, *, languages: tuple[str, ...] | None = None
) -> Matcher:
    """The matcher for the shipped library (and any school folders after it); raises
    :class:`~schoolgate.configfile.ConfigError` naming every problem."""
    issues = Issues()
    library = load_library(list(roots) if roots else [default_root()], issues, languages=languages)
    matcher = Matcher(library, issues)
    issues.raise_if_any()
    return matcher


__all__ = [
    "SUPPRESS",
    "Assessment",
    "Match",
    "Matcher",
    "Normalised",
    "load_matcher",
    "normalise",
    "spelling_table",
]
