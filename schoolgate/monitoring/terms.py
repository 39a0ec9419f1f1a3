"""Risk-term matching: the normaliser, then one multi-pattern automaton (``pyahocorasick``,
walked as a flat copy in C, :mod:`.flat`, where the C loops are built).

Every term, allow-phrase, context phrase and rule phrase of the library is normalised
(:mod:`.normaliser`) and compiled into one automaton; a text is normalised the same way and
read in one pass. Since ``1`` and ``|`` may also stand for ``l``, each term is also compiled
with its ``l``\\ s read as ``i`` (``se1f harm``).

Matching runs on the words joined without spaces, and a match counts only where it starts and
ends at word boundaries and the text has no word break the term does not have (so
``killmyself`` and ``kill my self`` match ``kill myself``; ``skill`` never matches ``kill``,
``the hero in`` never matches ``heroin``). A stem (``overdos*``) need not end at a boundary.

A term inside an allow-phrase of its theme is not counted (``kill the lights``); a context
phrase anywhere in the text (``macbeth``, ``history of``) lowers or drops the terms of its
themes, except ``firm`` ones, so a pupil cannot hide "kill myself" behind "macbeth".

**Rules** (co-occurrence, :class:`~schoolgate.monitoring.library.Rule`) reach what a list of
terms cannot: "most painless way to go", "is hanging painful". A rule matches when a phrase of
each of its word groups is found (outside allow-phrases of its theme), within its ``within``
words and in order if it says so, a phrase of its last group ending the text if it says
so (``ends``), and none of its ``unless`` phrases is in the text; it is
then graded like a term (context lowers it unless it is firm) and reported under its name.

A school's searches repeat (a class searches the same set text), so the matcher remembers the
last few thousand texts it assessed, and its normaliser the words it has read.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import ahocorasick

from schoolgate.core.configfile import Issues
from schoolgate.monitoring.assessment import (
    NOTHING,
    Assessment,
    Match,
    ordered,
    set_matches,
)
from schoolgate.monitoring.flat import flat_automaton
from schoolgate.monitoring.library import (
    SUPPRESS,
    Allow,
    ContextRule,
    Library,
    Rule,
    Term,
    default_root,
    load_library,
)
from schoolgate.monitoring.normaliser import (
    MAX_TEXT,
    Normalised,
    Normaliser,
    normalise,
    spelling_table,
    word_starts,
)
from schoolgate.monitoring.rules import satisfied

try:  # the per-text loops in C, where the package was built with a C compiler
    from schoolgate.monitoring import speedups
except ImportError:  # the same loops in Python (tests hold the two to the same results)
    speedups = None  # type: ignore[assignment]

MIN_PATTERN = 3  # a term shorter than this once normalised matches too much
MIN_STEM = 4  # likewise a stem
MAX_L_VARIANTS = 3  # a term's first three l's are also compiled as i
CACHE_SIZE = 4096  # texts whose assessment is remembered
MAX_MATCHES = 100_000  # distinct matches remembered (terms x allow-phrases x context phrases)


def _test(pattern: _Pattern) -> tuple[bytes, int, int, tuple[int, ...], bool]:
    """A pattern as :meth:`Matcher._scan` tests it: ``(signature, kind, index, inner breaks,
    stem)``, where the signature is a text's breaks (``Normalised.bounds``) from the pattern's
    start to its end when the text has exactly the pattern's."""
    kind, index, _, inner, stem, same = pattern
    return (b"\1" + same + b"\1", kind, index, inner, stem)


def _no_other_break(seen: bytes, inner: tuple[int, ...]) -> bool:
    """Whether the breaks inside ``seen`` (a text's, from a pattern's start to its end) are
    all among the pattern's ``inner`` ones (``killmyself`` for ``kill myself``, never ``the
    hero in`` for ``heroin``)."""
    last = len(seen) - 1
    at = seen.find(1, 1, last)
    while at >= 0 and at in inner:
        at = seen.find(1, at + 1, last)
    return at < 0


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


_new_tuple = tuple.__new__
_new = object.__new__

# -- the matcher --------------------------------------------------------------------------------

_TERM, _ALLOW, _CONTEXT, _WORD = 0, 1, 2, 3

# A pattern: (kind, index, length, word breaks inside it, is a stem, its breaks as
# ``Normalised.bounds`` has them). What the automaton holds for a key: (its length, its first
# pattern as :func:`_test` gives it, then its other patterns' tests).
_Pattern = tuple[int, int, int, tuple[int, ...], bool, bytes]
_Found = list[tuple[int, int, int]]  # (index, start, end) in ``Normalised.joined``
# The rule phrases of a text as :meth:`Matcher._apply_rule` reads them: (phrase id, word span).
_Places = list[tuple[int, tuple[int, int]]]


class _Hits(NamedTuple):
    terms: _Found
    allows: _Found
    context: _Found  # (context rule, start, end)
    words: _Found  # rule phrases of several words, and stems: (phrase id, start, end)
    word_ids: list[int | None]  # for each word of the text: the one word rule phrase it is


def _places(norm: Normalised, hits: _Hits) -> _Places:
    """Where each rule phrase found is, in words: ``(phrase, (first, after))`` for the phrases
    found in the joined text, then for the one word phrases. A phrase starts at a word start;
    the word starts up to an offset (``bounds``, counted once for the text) are the word it
    is in."""
    spans = []
    if hits.words:
        upto = list(itertools.accumulate(norm.bounds))  # word starts at or before each offset
        for phrase, start, end in hits.words:
            spans.append((phrase, (upto[start] - 1, upto[end - 1])))
    word_spans = _WORD_SPANS
    if len(hits.word_ids) > len(word_spans):  # more words than characters: spellings
        word_spans = tuple((at, at + 1) for at in range(len(hits.word_ids)))
    position = 0
    for single in hits.word_ids:
        if single:
            spans.append((single, word_spans[position]))
        position += 1
    return spans


# (position, position + 1) for every word a text can have: made once, not once a phrase.
_WORD_SPANS = tuple((at, at + 1) for at in range(MAX_TEXT + 1))


class Matcher:
    """The library compiled into one automaton. Build once; :meth:`assess` is thread-safe."""

    def __init__(
        self, library: Library, issues: Issues | None = None, *, cache_size: int = CACHE_SIZE
    ) -> None:
        self.library = library
        self.terms: tuple[Term, ...] = library.terms
        self.allows: tuple[Allow, ...] = library.allow
        self.rules: tuple[ContextRule, ...] = library.context
        self.cooccurrence: tuple[Rule, ...] = library.rules
        self.spellings = spelling_table(library.spellings)
        self.normaliser = Normaliser(self.spellings)
        self.cache_size = cache_size
        self._cache: dict[str, Assessment] = {}
        self._searches: dict[str, Assessment] = {}  # with the second opinion
        self._flagged: dict[str, Assessment] = {}  # with it only where the library flags
        self.opinion = library.opinion
        self.reader = library.reader
        self._models: tuple[bool | str, bool | str] = (True, True)  # as use_models sets them
        self._matches: dict[tuple[bool, int, str | None, str | None, int], Match] = {}
        self.automaton = ahocorasick.Automaton()
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
        self._compile_rules(table, issues)
        for key, patterns in table.items():
            # Most keys are one pattern: its test inline, the others (if any) after it.
            first, *more = map(_test, patterns)
            self.automaton.add_word(key, (len(key), *first, tuple(more)))
        self._flat = flat_automaton(self.automaton)  # walked in its place when C is built
        self.patterns = len(table) + len(self._single)
        if table:
            self.automaton.make_automaton()
        self._warn_idle_allows(compiled_allows, issues)
        # Each term's and rule's match where nothing allows or lowers it (most texts), as
        # _judge makes it: looked up without a call.
        nothing = _Hits([], [], [], [], [])
        self._plain_terms = tuple(
            self._judge(term, index, None, nothing) for index, term in enumerate(self.terms)
        )
        self._plain_rules = tuple(
            self._judge(term, number, None, nothing, True)
            for number, term in enumerate(self._rule_terms)
        )

    # -- compiling ------------------------------------------------------------------------

    def _add(
        self,
        table: dict[str, list[_Pattern]],
        kind: int,
        index: int,
        text: str,
        issues: Issues,
        source: str,
        report: bool,
        stem: bool = False,
    ) -> bool:
        norm = normalise(text, self.spellings)
        shortest = MIN_STEM if stem else MIN_PATTERN if kind != _WORD else 2
        if len(norm.joined) < shortest:
            if report:
                what = "stem" if stem else "term" if kind == _TERM else "phrase"
                _report(
                    issues, source, "allow" if kind == _ALLOW else what,
                    f"{text!r} is too short once normalised ({norm.joined!r}): it would match "
                    "too much",
                )  # fmt: skip
            return False
        inner = tuple(i for i in range(1, len(norm.joined)) if norm.bounds[i])
        same = bytes(norm.bounds[1 : len(norm.joined)])  # a text with just these breaks
        pattern = (kind, index, len(norm.joined), inner, stem, same)
        patterns = table.setdefault(norm.joined, [])
        if pattern not in patterns:
            patterns.append(pattern)
        return True

    def _compile_rules(self, table: dict[str, list[_Pattern]], issues: Issues) -> None:
        """Every phrase of every rule gets an id; one word phrases are looked up by word,
        longer ones and stems go in the automaton."""
        ids: dict[tuple[str, bool], int] = {}
        # phrase id -> (rule, group or -1 for unless); id 0 is no phrase, so ids are true
        usage: list[list[tuple[int, int]]] = [[]]
        self.phrases: list[str] = [""]  # phrase id -> the phrase as the library writes it
        self._single: dict[str, int] = {}  # normalised word -> phrase id
        for number, rule in enumerate(self.cooccurrence):
            for group, phrases in (*enumerate(rule.groups), *((-1, p) for p in [rule.unless])):
                for phrase in phrases:
                    stem = phrase.endswith("*")
                    text = phrase[:-1] if stem else phrase
                    norm = normalise(text, self.spellings)
                    key = (norm.text, stem)
                    if key not in ids:
                        if stem and norm.joined.endswith("k") and text.lower().endswith("c"):
                            _report(
                                issues, rule.source, "all",
                                f"{phrase!r}: a stem cannot end in 'c' (how it sounds depends "
                                "on the next letter)",
                            )  # fmt: skip
                            continue
                        ids[key] = len(usage)
                        usage.append([])
                        self.phrases.append(phrase)
                        if len(norm.words) == 1 and not stem:
                            if len(norm.joined) < min(2, len(text.strip())):
                                _report(
                                    issues, rule.source, "all",
                                    f"{phrase!r} is too short once normalised "
                                    f"({norm.joined!r}): it would match too much",
                                )  # fmt: skip
                                continue
                            self._single[norm.joined] = ids[key]
                        elif not self._add(
                            table, _WORD, ids[key], text, issues, rule.source, True, stem
                        ):
                            continue
                    if (number, group) not in usage[ids[key]]:
                        usage[ids[key]].append((number, group))
        self._usage = tuple(tuple(uses) for uses in usage)
        # phrase id -> {rule: its groups the phrase is in, -1 for unless}
        by_rule: list[dict[int, tuple[int, ...]]] = []
        for uses in usage:
            groups: dict[int, tuple[int, ...]] = {}
            for rule_number, group in uses:
                groups[rule_number] = (*groups.get(rule_number, ()), group)
            by_rule.append(groups)
        self._groups_of = tuple(by_rule)
        self._group_counts = tuple(len(r.groups) for r in self.cooccurrence)
        # What speedups.settle needs of each rule: (groups, ordered, within, ends).
        self._shapes = tuple(
            (len(r.groups), r.ordered, r.within, r.ends) for r in self.cooccurrence
        )
        self._rule_terms = tuple(
            Term(r.name, r.theme, r.severity, r.firm, (), r.note, r.language, r.source)
            for r in self.cooccurrence
        )
        self._index_rules()

    def _index_rules(self) -> None:
        """Bits and anchors, so that a text's phrases rule out almost every rule at once.

        Each (rule, group) is a bit: a text has the bits of the phrases found in it, and a
        rule can match only when all its groups' bits are there. A rule is looked at only
        when a phrase of its *anchor* is found: the group whose phrases the fewest rules use
        (the least common words, so "how to" or "i" rarely wake a rule up).
        """
        offsets, bit = [], 0
        for cooccurring in self.cooccurrence:
            offsets.append(bit)
            bit += len(cooccurring.groups)
        self._rule_masks = tuple(
            ((1 << len(cooccurring.groups)) - 1) << offsets[number]
            for number, cooccurring in enumerate(self.cooccurrence)
        )
        # Each group's weight: how many rules use its phrases, summed over them. One pass
        # over the phrases (a pass per rule made loading quadratic in the rules).
        weights: list[dict[int, int]] = [{} for _ in self.cooccurrence]
        for uses in self._usage:
            shared = len(uses)
            for rule, group in uses:
                if group >= 0:
                    groups = weights[rule]
                    groups[group] = groups.get(group, 0) + shared
        anchors = [min(groups, key=lambda g: (groups[g], g)) for groups in weights]
        masks, bits, woken, vetoes = [], [], [], []
        for uses in self._usage:
            bits.append(tuple(offsets[rule] + group for rule, group in uses if group >= 0))
            mask = 0
            for place in bits[-1]:
                mask |= 1 << place
            masks.append(mask)
            woken.append(tuple(rule for rule, group in uses if group == anchors[rule]))
            vetoes.append(tuple(rule for rule, group in uses if group < 0))
        self._phrase_masks = tuple(masks)
        # The same bits as speedups.screen reads them: each phrase's bits; rule n's are
        # offsets[n] to offsets[n + 1] - 1 (the last offset: how many bits there are).
        self._phrase_bits = tuple(bits)
        self._rule_offsets = (*offsets, bit)
        self._phrase_wakes = tuple(woken)
        self._phrase_vetoes = tuple(vetoes)

    def _warn_idle_allows(self, allows: list[Allow], issues: Issues) -> None:
        """An allow-phrase in which no term of its theme matches does nothing: say so."""
        for allow in allows:
            hits = self._scan(normalise(allow.phrase, self.spellings))
            if any(allow.theme in (None, self.terms[index].theme) for index, _, _ in hits.terms):
                continue
            phrases = [phrase for phrase, _, _ in hits.words] + [p for p in hits.word_ids if p]
            themes = {self.cooccurrence[rule].theme for phrase in phrases
                      for rule, group in self._usage[phrase] if group >= 0}  # fmt: skip
            if allow.theme is None and themes or allow.theme in themes:
                continue
            _report_warning(
                issues, allow.source, "allow",
                f"{allow.phrase!r} contains no term of {allow.theme or 'any theme'}: "
                "it has no effect",
            )  # fmt: skip

    # -- assessing ------------------------------------------------------------------------

    def assess(self, text: str | None, *, search: bool = False, alone: bool = True) -> Assessment:
        """Every term and rule in ``text`` with its final severity; :data:`NOTHING` for none.
        ``search``: a pupil's search, graded by the learned models too (see :meth:`use_models`);
        ``alone``: also where the terms and rules found nothing (else only where they flag)."""
        if not text or not self.patterns:
            return NOTHING
        if len(text) > MAX_TEXT:
            text = text[:MAX_TEXT]
        opinion, reader = (self.opinion, self.reader) if search else (None, None)
        cache = self._cache if not search else self._searches if alone else self._flagged
        found = cache.get(text)
        if found is None:
            norm = self.normaliser.read(text)
            found = self.assess_normalised(norm)
            if opinion is not None:
                found = opinion.review(norm.words, found, alone=alone and self._models[0] is True)
            if reader is not None:  # the library's second opinion names the theme it reads
                alone = alone and self._models[1] is True
                found = reader.review(text, norm.words, found, self.library.opinion, alone=alone)
            if self.cache_size:
                if len(cache) >= self.cache_size:
                    cache.clear()  # start again: cheaper than keeping an order
                cache[text] = found
        return found

    def use_models(self, opinion: bool | str = True, reader: bool | str = True) -> None:
        """Which learned models of the library also grade searches: each True (every search),
        "flagged" (only those the library flags) or False (none)."""
        if (opinion, reader) != self._models:
            self._models = (opinion, reader)
            self.opinion = self.library.opinion if opinion else None
            self.reader = self.library.reader if reader else None
            self._searches, self._flagged = {}, {}

    def forget(self) -> None:
        """Forget the texts assessed and the words read (to measure the cost of new ones)."""
        self._cache = {}
        self._searches = {}
        self._flagged = {}
        self.normaliser.forget()
        if self.reader is not None:
            self.reader.forget()

    def assess_normalised(self, norm: Normalised) -> Assessment:
        hits = self._scan(norm)
        matches = self._resolve(hits) if hits.terms else []
        if self.cooccurrence:
            more = self._apply_rules(norm, hits)
            if more:
                matches = self._merge(matches, more) if matches else more
        if not matches:
            return NOTHING
        found = _new(Assessment)  # without the frozen dataclass's __init__
        set_matches(found, ordered(matches) if len(matches) > 1 else (matches[0],))
        return found

    def _scan(self, norm: Normalised) -> _Hits:
        """One pass of the automaton, and a look-up of every word among the one word rule
        phrases."""
        flat = self._flat
        if speedups is not None and flat is not None:
            found = speedups.find(flat.compiled, norm.joined, norm.bounds, norm.words, self._single)
            return _new_tuple(_Hits, found)  # no Python __new__
        return self._scan_python(self.automaton.iter(norm.joined), norm)

    def _scan_python(self, found: Iterable[tuple[int, tuple]], norm: Normalised) -> _Hits:
        bounds = norm.bounds
        terms: _Found = []
        allows: _Found = []
        context: _Found = []
        words: _Found = []
        by_kind = (terms, allows, context, words)
        for end_index, (length, signature, kind, index, inner, stem, more) in found:
            end = end_index + 1
            start = end - length
            seen = bounds[start : end + 1]  # the text's breaks from the start to the end
            # The usual: exactly the pattern's breaks. Else a break at the start, one at the
            # end unless a stem, and none inside that the pattern does not have.
            if seen == signature or (
                seen[0] and (stem or seen[-1]) and _no_other_break(seen, inner)
            ):
                by_kind[kind].append((index, start, end))
            if more:  # the key's other patterns (a term that is also a rule phrase, ...)
                for signature, kind, index, inner, stem in more:
                    if seen == signature or (
                        seen[0] and (stem or seen[-1]) and _no_other_break(seen, inner)
                    ):
                        by_kind[kind].append((index, start, end))
        word_ids = list(map(self._single.get, norm.words))
        return _new_tuple(_Hits, (terms, allows, context, words, word_ids))  # no Python __new__

    def _resolve(self, hits: _Hits) -> list[Match]:
        terms = hits.terms
        if len(terms) == 1:
            index, start, end = terms[0]
            if not hits.allows and not hits.context:
                return [self._plain_terms[index]]
            term = self.terms[index]
            allowed = self._allowed(term.theme, start, end, hits) if hits.allows else None
            return [self._judge(term, index, allowed, hits)]
        best: dict[tuple[str, str], Match] = {}
        covered = _covered_spans({(start, end) for _, start, end in terms})
        for index, start, end in terms:
            if (start, end) in covered:
                continue  # the same words as a longer term ("kill" in "kill myself")
            term = self.terms[index]
            match = self._judge(term, index, self._allowed(term.theme, start, end, hits), hits)
            key = (term.theme, term.text)
            old = best.get(key)
            if old is None or (match.active, match.severity) > (old.active, old.severity):
                best[key] = match
        return list(best.values())

    def _allowed(self, theme: str, start: int, end: int, hits: _Hits) -> str | None:
        """The allow-phrase of ``theme`` (or of every theme) around ``start..end``, if any."""
        for index, a_start, a_end in hits.allows:
            allow = self.allows[index]
            if a_start <= start and end <= a_end and allow.theme in (None, theme):
                return allow.phrase
        return None

    def _judge(
        self, term: Term, index: int, allowed_by: str | None, hits: _Hits, rule: bool = False
    ) -> Match:
        """The match of ``term`` (``index``: of it among the terms, or the rules), allowed
        or lowered by context. Matches are immutable, so each is built once."""
        lowering, by = 0, None
        if allowed_by is None and hits.context and not term.firm:
            for context_index, _, _ in hits.context:
                context = self.rules[context_index]
                if context.themes is not None and term.theme not in context.themes:
                    continue
                if context.lower > lowering:
                    lowering, by = context.lower, context.phrase
        key = (rule, index, allowed_by, by, lowering)
        match = self._matches.get(key)
        if match is None:
            severity = 0 if allowed_by else max(term.severity - lowering, 0)
            if allowed_by is None and lowering and severity == 0:
                allowed_by, by = by, None
            match = Match(
                term.theme, severity, term.text, term.severity, term.firm, allowed_by, by,
                term.note, term.source, rule,
            )  # fmt: skip
            if len(self._matches) >= MAX_MATCHES:
                self._matches = {}
            self._matches[key] = match
        return match

    def _apply_rules(self, norm: Normalised, hits: _Hits) -> list[Match]:
        """The rules whose every group was found, judged like terms. The bits of the
        phrases found rule out almost every rule without a loop over them. (Plain loops:
        here a Python-level call costs more than a few lines of bytecode.)"""
        if speedups is not None:
            candidates = speedups.screen(
                hits.words, hits.word_ids, self._phrase_wakes, self._phrase_bits, self._rule_offsets
            )
        else:
            candidates = self._candidates(hits)
        if not candidates:  # most texts: no rule has every group found
            return []
        if speedups is not None and not hits.allows:  # the usual: every candidate in one call
            return self._settled(norm, hits, candidates)
        if speedups is not None:  # once per text, for every rule that may match
            places = speedups.places(hits.words, norm.bounds, hits.word_ids, _WORD_SPANS)
        else:
            places = _places(norm, hits)
        out = []
        for number in candidates:
            match = self._apply_rule(number, norm, hits, places)
            if match is not None:
                out.append(match)
        return out

    def _settled(self, norm: Normalised, hits: _Hits, candidates: list[int]) -> list[Match]:
        """:meth:`_apply_rule` of each candidate, its test in C (a text without
        allow-phrases): what C leaves (too many spans to try) is Python's."""
        out = []
        places = None
        for number, vetoing in speedups.settle(
            hits.words, norm.bounds, hits.word_ids, candidates, self._groups_of, self._shapes
        ):
            if vetoing == 0 and not hits.context:  # satisfied, nothing vetoes or lowers it
                out.append(self._plain_rules[number])
                continue
            if vetoing >= 0:  # satisfied; vetoed by a phrase, or by none (0)
                term = self._rule_terms[number]
                vetoed = self.phrases[vetoing] if vetoing else None
                out.append(self._judge(term, number, vetoed, hits, True))
                continue
            if places is None:  # too many spans for C: Python's _apply_rule
                places = speedups.places(hits.words, norm.bounds, hits.word_ids, _WORD_SPANS)
            match = self._apply_rule(number, norm, hits, places)
            if match is not None:
                out.append(match)
        return out

    def _candidates(self, hits: _Hits) -> list[int]:
        """The rules woken by an anchor found whose every group was found (as
        ``speedups.screen``)."""
        wakes, masks = self._phrase_wakes, self._phrase_masks
        woken: set[int] = set()
        found_mask = 0
        for phrase, _, _ in hits.words:
            if wakes[phrase]:
                woken.update(wakes[phrase])
            found_mask |= masks[phrase]
        for phrase in filter(None, hits.word_ids):  # in C: the words that are rule phrases
            if wakes[phrase]:
                woken.update(wakes[phrase])
            found_mask |= masks[phrase]
        rule_masks = self._rule_masks
        return sorted(n for n in woken if found_mask & rule_masks[n] == rule_masks[n])

    def _apply_rule(
        self, number: int, norm: Normalised, hits: _Hits, places: _Places
    ) -> Match | None:
        rule = self.cooccurrence[number]
        # One list of spans per group: a literal (the library allows five groups), cheaper
        # than a comprehension.
        count = self._group_counts[number]
        found: list[list[tuple[int, int]]] = [[], [], [], [], []]
        if count < 5:
            del found[count:]
        elif count > 5:
            found += [[] for _ in range(count - 5)]
        # The phrases found in the joined text first, then the one word phrases: the first
        # "unless" phrase in that order is the one reported.
        vetoed: str | None = None
        if speedups is not None:
            vetoing = speedups.collect(places, self._groups_of, number, found)
            if vetoing is not None:
                vetoed = self.phrases[vetoing]
        else:
            groups_of = self._groups_of
            for phrase, span in places:
                groups = groups_of[phrase].get(number)
                if groups is not None:
                    for group in groups:
                        if group < 0:
                            vetoed = vetoed or self.phrases[phrase]
                        else:
                            found[group].append(span)
        if rule.ends:  # only where the last group's phrase ends the text
            found[-1] = [span for span in found[-1] if span[1] == len(norm.words)]
        ordered, within = rule.ordered, rule.within
        if not (satisfied(found, within, ordered) if ordered or within is not None
                else all(found)):  # fmt: skip
            return None
        term = self._rule_terms[number]
        if vetoed is not None:
            return self._judge(term, number, vetoed, hits, True)
        allowed_by = None
        if hits.allows:
            starts = word_starts(norm)
            kept: list[list[tuple[int, int]]] = [[] for _ in found]
            ends = (*starts[1:], len(norm.joined))
            for group, group_spans in enumerate(found):
                for first, after in group_spans:
                    by = self._allowed(rule.theme, starts[first], ends[after - 1], hits)
                    if by is None:
                        kept[group].append((first, after))
                    else:
                        allowed_by = by
            if satisfied(kept, within, ordered) if ordered or within is not None else all(kept):
                allowed_by = None
        return self._judge(term, number, allowed_by, hits, True)

    @staticmethod
    def _merge(matches: list[Match], more: list[Match]) -> list[Match]:
        best = {(m.theme, m.term): m for m in matches}
        for match in more:
            key = (match.theme, match.term)
            old = best.get(key)
            if old is None or (match.active, match.severity) > (old.active, old.severity):
                best[key] = match
        return list(best.values())


def _report(issues: Issues, source: str, field_name: str, message: str) -> None:
    file, _, line = source.rpartition(":")
    issues.add(file or source, int(line) if line.isdigit() else None, field_name, message)


def _report_warning(issues: Issues, source: str, field_name: str, message: str) -> None:
    file, _, line = source.rpartition(":")
    issues.warn(file or source, int(line) if line.isdigit() else None, field_name, message)


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


def loops_in_c() -> bool:
    """Whether the matcher's per-text loops run in C (:mod:`.speedups` was built when the
    package was installed) or, the same loops, in Python."""
    return speedups is not None


def load_matcher(
    roots: Iterable[Path] | None = None, *, languages: tuple[str, ...] | None = None
) -> Matcher:
    """The matcher for the shipped library (and any school folders after it); raises
    :class:`~schoolgate.core.configfile.ConfigError` naming every problem."""
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
    "loops_in_c",
    "normalise",
    "spelling_table",
]
