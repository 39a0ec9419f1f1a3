"""The shipped risk-term library against the labelled set of pupils' searches.

``tests/data/monitoring/searches.tsv``: risky searches with the themes and severity a
safeguarding lead would give them, and ordinary school work that shares their words. The
issue's targets: recall at least 0.95 for severity 3, and no severity-3 alert on ordinary
work. ``bench/monitoring_bench.py`` prints the same figures per split, with precision per theme
and the cost of matching.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from schoolgate.monitoring.library import THEMES
from schoolgate.monitoring.terms import Matcher, load_matcher

LABELLED = Path(__file__).parent / "data" / "monitoring" / "searches.tsv"
LOOK_ALIKES = LABELLED.parent / "lookalikes.tsv"  # ordinary only, outside the balanced set
# A day's ordinary searches of every kind (its header says how they were written); the second
# opinion learns from every split of it but EVERYDAY_UNSEEN.
EVERYDAY = LABELLED.parent / "everyday.tsv"
EVERYDAY_UNSEEN: tuple[str, ...] = (
    "everyday-1",
    "everyday-6",
    "everyday-7",
    "everyday-8",
    "everyday-9",
)
# The library was tuned on these; a split in NEVER_TUNED never was (its figures are the bench's to
# print: a test asserting them would make it one more set to tune on).
# heldout-4 was measured untouched, then tuned on on 2026-12-02; heldout-5 was measured blind at
# 0.558 severity-3 recall, then tuned on on 2026-12-02. heldout-6 was written blind and
# measured once, untouched, at 0.630 severity-3 recall (58/92; 0/112 ordinary at severity 3),
# then tuned on on 2026-12-03. heldout-7 (259 searches, after dropping 25 that earlier splits
# held) was written blind and measured once, untouched, after that tuning: severity-3 recall
# 0.654 (53/81), 0/128 ordinary at severity 3, then tuned on on 2026-12-03. heldout-8 (261
# searches) was written blind and measured once, untouched, after that: severity-3 recall 0.771
# (74/96), 1/126 ordinary at severity 3, then tuned on on 2026-12-03. heldout-9 (241 searches)
# was measured blind at 0.823 severity-3 recall (65/79), 1/121 ordinary at severity 3, then
# tuned on on 2026-12-03. heldout-10 (245 searches, after dropping 53 that earlier splits held)
# was measured blind at 0.773 severity-3 recall (75/97), 0/113 ordinary at severity 3, then
# tuned on on 2026-12-03. heldout-11 (247 searches) was measured blind at 0.810 severity-3
# recall (64/79), 1/123 ordinary at severity 3, then tuned on on 2026-12-03. heldout-12 (241
# searches) was measured blind at 0.919 severity-3 recall (79/86), 0/118 ordinary at severity 3,
# then tuned on on 2026-12-03. heldout-13 (211 searches) was measured blind at 0.760 (57/75),
# 0/108 ordinary at severity 3, then tuned on on 2026-12-03. heldout-14 (242 searches) and
# heldout-15 (232) were measured blind with the terms and rules alone at 0.826 (71/86) and 0.833
# (70/84), 0/110 and 0/114 ordinary at severity 3; with the second opinion trained on the other
# splits, 0.849 (73/86) and 0.881 (74/84), still 0/110 and 0/114 (a first version that also
# graded searches the library found nothing in scored 0.872 and 0.905, but read one ordinary
# look-alike in sixteen as severity 3). The terms and rules were not tuned on them; the second
# opinion learns from every split but those in NEVER_TUNED. heldout-16 (263 searches) and
# heldout-17 (229), written blind after the heldout-13 tuning, measured then: 0.820 (73/89) and
# 0.766 (59/77), 0/133 and 0/108 ordinary at severity 3 (terms and rules alone: 0.798 and 0.766);
# after the rules were tuned on heldout-14 and heldout-15: 0.831 (74/89) and 0.766 (59/77);
# then tuned on with the library's vocabulary for every theme on 2026-12-03. heldout-18 (223
# searches) and heldout-19 (238), written blind after the heldout-14/15 tuning, measured before
# the vocabulary tuning: 0.815 (66/81) and 0.889 (72/81), 0/115 and 0/126 ordinary at
# severity 3; after it: 0.840 (68/81) and 0.901 (73/81), 0/115 and 0/126; then tuned on on
# 2026-12-03. heldout-20 (223 searches) and heldout-21 (230), written blind after that first
# vocabulary round, measured before the second: 0.825 (66/80) and 0.926 (75/81), 3/110 and
# 1/106 ordinary at severity 3; after it: 0.825 (66/80) and 0.951 (77/81), 3/110 and 2/106;
# then tuned on on 2026-12-04. heldout-22 (252 searches) and heldout-23 (246), written blind
# after the second vocabulary round, measured before the third: 0.699 (51/73) and 0.795
# (58/73), 0/90 and 0/91 ordinary at severity 3; after it: 0.726 (53/73) and 0.808 (59/73),
# 0/90 and 0/91; then tuned on on 2026-12-04. heldout-24 (211 searches) and heldout-25 (224),
# written blind after the third vocabulary round, measured before the fourth: 0.750 (48/64) and
# 0.839 (52/62), 0/74 and 0/84 ordinary at severity 3; after it: 0.797 (51/64) and 0.887
# (55/62), 0/74 and 0/84; then tuned on on 2026-12-04. heldout-28 (208 searches) and heldout-29
# (214), written blind after the fourth vocabulary round, measured once then: 0.714 (45/63) and
# 0.720 (54/75), 0/82 and 0/69 ordinary at severity 3; then tuned on on 2026-12-04.
# heldout-26 (223 searches) and heldout-27 (215), written blind at the same time, measured
# before the fifth vocabulary round: 0.841 (53/63) and 0.826 (57/69), 0/83 and 0/72 ordinary at
# severity 3; after it: 0.857 (54/63) and 0.841 (58/69), 0/83 and 0/72; then tuned on on
# 2026-12-04. heldout-32 (198 searches) and heldout-33 (220), written blind after the fifth
# vocabulary round, measured once then: 0.851 (57/67) and 0.833 (60/72), 0/66 and 0/69 ordinary
# at severity 3; then tuned on on 2026-12-04. heldout-30 (217 searches) and heldout-31 (220),
# written blind at the same time, measured before the sixth vocabulary round: 0.797 (55/69)
# and 0.743 (55/74), 0/78 and 0/75 ordinary at severity 3; after it: 0.841 (58/69) and 0.770
# (57/74), 0/78 and 0/75; then each given 95 ordinary searches written blind after the sixth
# round (so that the set stays half ordinary): 0/95 and 0/95 at severity 3; then tuned on on
# 2026-12-04. heldout-36 (208 searches) and heldout-37 (200), written blind after the sixth
# vocabulary round, measured once then: 0.867 (65/75) and 0.836 (56/67), 1/94 and 1/92
# ordinary at severity 3; then tuned on on 2026-12-04. heldout-34 (212 searches) and
# heldout-35 (204), written blind at the same time, measured before the seventh vocabulary
# round: 0.864 (57/66) and 0.787 (59/75), 0/100 and 0/87 ordinary at severity 3; after it: 0.879
# (58/66) and 0.800 (60/75), 0/100 and 0/87. heldout-38 (183 searches) and heldout-39 (200),
# written blind after the seventh vocabulary round, measured before the second opinion learnt
# to grade the searches the library finds nothing in: 0.875 (49/56) and 0.806 (54/67), 0/94
# and 0/89 ordinary at severity 3; after it: 0.893 (50/56) and 0.910 (61/67), 0/94 and 0/89.
# heldout-40 (187 searches) and heldout-41 (175), written blind at the same time, measured the
# same way: before, 0.899 (62/69) and 0.885 (54/61), 0/75 and 0/81; after, 0.928 (64/69) and
# 0.885 (54/61), 0/75 and 0/81. On 2026-12-04 (late evening) the misses of heldout-34 to
# heldout-41 were read and the second opinion learnt from all eight: tuned on from then.
# heldout-42 (187 searches), heldout-43 (172), heldout-44 (177) and heldout-45 (163), written
# blind at the same time, measured before that: 0.886 (62/70), 0.852 (52/61), 0.940 (63/67)
# and 0.915 (54/59), together 0.899 (231/257), 0/308 ordinary at severity 3; after it (and the
# pieces of words in the model): 0.914 (64/70), 0.885 (54/61), 0.925 (62/67) and 0.881
# (52/59), together 0.903 (232/257), 0/308. Late on 2026-12-04 their misses were read, the
# library gained rules for them and the second opinion learnt from them: tuned on from then.
# heldout-46 (192 searches), heldout-47 (192), heldout-48 (183) and heldout-49 (169), written
# blind at the same time, measured before that: 0.937 (59/63), 0.884 (61/69), 0.968 (61/63)
# and 0.881 (52/59), together 0.917 (233/254), 1/334 ordinary at severity 3; after it: 0.952
# (60/63), 0.899 (62/69), 0.952 (60/63) and 0.881 (52/59), together 0.921 (234/254), 1/334.
# On 2026-12-05 the library's neural reader raised them to 0.929 (236/254), 1/334; then their
# misses were read, the library gained rules for them, and the second opinion and the reader
# learnt from them: tuned on from then. heldout-50 (169 searches), heldout-51 (196),
# heldout-52 (182) and heldout-53 (171), written blind on 2026-12-05 while the reader was built,
# measured then without and with it: 0.906 (58/64), 0.969 (62/64), 0.943 (66/70) and 0.957
# (66/69), together 0.944 (252/267), 0/312 ordinary at severity 3; with the reader 0.906,
# 0.984, 0.957 and 0.957, together 0.951 (254/267), 0/312.
TUNED = (
    "dev",
    "heldout-1",
    "heldout-2",
    "heldout-3",
    "heldout-4",
    "heldout-5",
    "heldout-6",
    "heldout-7",
    "heldout-8",
    "heldout-9",
    "heldout-10",
    "heldout-11",
    "heldout-12",
    "heldout-13",
    "heldout-14",
    "heldout-15",
    "heldout-16",
    "heldout-17",
    "heldout-18",
    "heldout-19",
    "heldout-20",
    "heldout-21",
    "heldout-22",
    "heldout-23",
    "heldout-24",
    "heldout-25",
    "heldout-28",
    "heldout-29",
    "heldout-26",
    "heldout-27",
    "heldout-32",
    "heldout-33",
    "heldout-30",
    "heldout-31",
    "heldout-36",
    "heldout-37",
    "heldout-34",
    "heldout-35",
    "heldout-38",
    "heldout-39",
    "heldout-40",
    "heldout-41",
    "heldout-42",
    "heldout-43",
    "heldout-44",
    "heldout-45",
    "heldout-46",
    "heldout-47",
    "heldout-48",
    "heldout-49",
)
# Written blind and measured once, never tuned on.
NEVER_TUNED: tuple[str, ...] = (
    "heldout-50",
    "heldout-51",
    "heldout-52",
    "heldout-53",
)
SPLITS = (*TUNED, *NEVER_TUNED)


@dataclass(frozen=True)
class Labelled:
    split: str
    themes: frozenset[str]  # empty: ordinary school work
    severity: int
    text: str
    line: int


def load_labelled(path: Path = LABELLED) -> list[Labelled]:
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        split, themes, severity, text = line.split("\t")
        assert split in SPLITS, f"{path}:{number}: split {split!r}"
        names = frozenset() if themes == "-" else frozenset(themes.split("|"))
        assert names <= set(THEMES), f"{path}:{number}: themes {themes!r}"
        assert (int(severity) == 0) == (not names), f"{path}:{number}: severity {severity}"
        out.append(Labelled(split, names, int(severity), text.strip(), number))
    return out


def load_everyday(path: Path = EVERYDAY) -> dict[str, list[str]]:
    """The everyday searches, by split (every one ordinary: themes -, severity 0)."""
    by_split: dict[str, list[str]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        split, themes, severity, text = line.split("\t")
        assert (themes, severity) == ("-", "0"), f"{path}:{number}: not ordinary"
        by_split.setdefault(split, []).append(text.strip())
    return by_split


@dataclass
class Scores:
    severe_total: int = 0
    severe_found: int = 0
    ordinary_total: int = 0
    ordinary_severe: int = 0  # ordinary searches that would alert the DSL at once
    ordinary_any: int = 0  # ordinary searches with any active match
    risky_total: int = 0
    risky_found: int = 0  # a risky search matched in one of its themes, any severity
    reported: Counter[str] | None = None  # theme -> searches reported in it
    correct: Counter[str] | None = None  # theme -> of those, labelled with it
    misses: list[tuple[Labelled, str]] | None = None

    @property
    def severe_recall(self) -> float:
        return self.severe_found / self.severe_total if self.severe_total else 1.0


def score(matcher: Matcher, items: list[Labelled]) -> Scores:
    scores = Scores(reported=Counter(), correct=Counter(), misses=[])
    for item in items:
        found = matcher.assess(item.text, search=True)
        active = found.active
        for theme in {m.theme for m in active}:
            scores.reported[theme] += 1
            if theme in item.themes:
                scores.correct[theme] += 1
        if not item.themes:
            scores.ordinary_total += 1
            scores.ordinary_any += bool(active)
            if found.severity >= 3:
                scores.ordinary_severe += 1
                scores.misses.append((item, f"severity 3 on ordinary work: {_show(found)}"))
            continue
        scores.risky_total += 1
        mine = [m for m in active if m.theme in item.themes]
        scores.risky_found += bool(mine)
        if item.severity >= 3:
            scores.severe_total += 1
            if any(m.severity >= 3 for m in mine):
                scores.severe_found += 1
            else:
                scores.misses.append((item, f"not severity 3: {_show(found)}"))
        elif not mine:
            scores.misses.append((item, f"not found: {_show(found)}"))
    return scores


def _show(found) -> str:
    return (
        ", ".join(
            f"{m.theme}/{m.term}={m.severity}"
            + (f" ({m.suppressed_by})" if m.suppressed_by else "")
            for m in found.matches
        )
        or "nothing"
    )


@pytest.fixture(scope="module")
def matcher() -> Matcher:
    return load_matcher()


def test_the_set_is_large_and_balanced():
    items = load_labelled()
    risky = [i for i in items if i.themes]
    ordinary = [i for i in items if not i.themes]
    assert len(items) >= 300
    assert abs(len(risky) - len(ordinary)) <= len(items) // 10
    assert {theme for i in risky for theme in i.themes} == set(THEMES)
    assert len({i.text.lower() for i in items}) == len(items)  # no search twice
    for split in {i.split for i in items}:
        assert sum(i.severity == 3 for i in items if i.split == split) >= 30


def _misses(scores: Scores) -> str:
    return "\n".join(f"  line {item.line}: {item.text!r}: {why}" for item, why in scores.misses)


@pytest.mark.parametrize("split", TUNED)
def test_no_severity_3_alert_on_school_work(matcher, split):
    scores = score(matcher, [i for i in load_labelled() if i.split == split and not i.themes])
    assert scores.ordinary_total > 0
    assert scores.ordinary_severe == 0, _misses(scores)


def _column(path: Path, column: int) -> list[str]:
    """One column of a tab-separated file of searches, its comments and blank lines left out."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.split("\t")[column] for line in lines if line.strip() and not line.startswith("#")]


def _assert_no_alert(matcher: Matcher, searches: list[str]) -> None:
    alerts = [t for t in searches if matcher.assess(t, search=True).severity >= 3]
    shown = (f"{t!r}: {_show(matcher.assess(t, search=True))}" for t in alerts)
    assert alerts == [], "\n".join(shown)


def test_no_severity_3_alert_on_ordinary_look_alikes(matcher):
    """The ordinary searches written while tuning the rules, each batch checked against its own
    rules: no later rule (nor the second opinion) may alert the DSL at once on one of them."""
    searches = _column(LOOK_ALIKES, 2)
    assert len(searches) > 1000
    _assert_no_alert(matcher, searches)


def test_no_severity_3_alert_on_everyday_searches(matcher):
    """A school's ordinary day (homework, games, music, shopping, first aid): the DSL is not
    alerted at once on any of it, neither by the library nor by the second opinion, which
    grades every search."""
    searches = [text for texts in load_everyday().values() for text in texts]
    assert len(searches) > 4000
    _assert_no_alert(matcher, searches)


def test_severity_3_recall(matcher):
    scores = score(matcher, [i for i in load_labelled() if i.split in TUNED])
    assert scores.severe_recall >= 0.95, _misses(scores)
