"""A learned second opinion on the searches the library's terms and rules grade below 3.

Terms and rules catch the phrasings someone wrote down; pupils keep finding new ones, and a
search the library finds a concern ("sextortion what to do hes asking for 200 quid") may be
graded lower than a safeguarding lead would, or a risk phrased in words no term holds ("went
too deep and it wont stop bleeding") found in nothing. A small logistic model over a search's
normalised words, word pairs and the four-letter pieces of each word, trained on labelled
searches (severity-3 risks against everything else: ordinary look-alikes, and a day's ordinary
searches of every kind), says when such a search reads like the severity-3 ones; the pieces let
it read a word it never saw by the words it did ("shanks", "xannies", "starvin"). It never
overrules the library: a search an allow-phrase or context phrase judged ordinary stays as
judged. It has two thresholds, each set on the training set itself by scoring every search
with a model that never saw it (five folds):

* ``threshold``, for a search the library graded 1 or 2: a probability of at least one half,
  above all but ``TOLERATED`` of the ordinary searches the library flags;
* ``alone_threshold``, for a search the library found nothing in: stricter, above all but
  ``ALONE_TOLERATED`` of the ordinary searches it finds nothing in (a model of a few thousand
  searches alone reads some family life and coursework as grooming or self-harm, so most of
  what it would raise there must be left). A file without it raises only flagged searches.

A second model picks the theme (among those the library found, or among all for a search it
found nothing in). It is plain data (weights by word), read from ``second_opinion.json`` in a
language folder of the library and rebuilt by ``schoolgate train-opinion`` from labelled
searches (the shipped ones and the school's own); training is deterministic, so the same files
always give the same model.

Nothing here knows of mitmproxy, the database or the web.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from schoolgate.monitoring.assessment import Assessment, library_grade, raised

try:  # the model's sum in C, where the package was built with a C compiler
    from schoolgate.monitoring import speedups
except ImportError:  # the same sum in Python (a test holds the two to the same results)
    speedups = None  # type: ignore[assignment]

FORMAT = 1
FILE_NAME = "second_opinion.json"
EPOCHS = 30
RATE = 0.2
DECAY = 1e-2  # L2: the weights stay small, so one rare word never decides alone
FOLDS = 5
TOLERATED = 2  # flagged ordinary searches of the training set that may score above it
# The share of the ordinary training searches the library finds nothing in that may score
# above ``alone_threshold``: most are look-alikes written to read like the risks, which a
# school's day holds few of.
ALONE_TOLERATED = 0.005
PRUNE = 1e-4  # smaller weights are left out of the file
TERM = "second opinion"  # what the DSL sees as the match's term
PIECE = "c:"  # a piece of a word's feature name: "c:<sha", "c:hank", "c:ank>"
PIECE_SIZE = 4  # the letters of a piece, "<" and ">" marking the word's ends
# Words the model never saw whose pieces' weights are kept, so a word a pupil types again
# is one lookup; bounded, so a flood of made-up words cannot grow it without end.
UNSEEN_KEPT = 50_000


@dataclass(frozen=True)
class Example:
    words: tuple[str, ...]  # normalised, as the matcher reads the search
    severe: bool  # labelled severity 3
    themes: frozenset[str]  # empty: ordinary
    # The library grades it 1 or 2 (and no allow-phrase or context phrase judged it): one of
    # the searches the model may raise, which set its threshold.
    flagged: bool = True
    # The library finds nothing in it (and no phrase judged it): the model alone may raise it,
    # above the stricter ``alone_threshold``, which these set.
    alone: bool = False


def features(words: Sequence[str]) -> list[str]:
    """The words and each pair of neighbours ("how to", "to die"), each once, sorted (so that
    training adds them up in the same order every time)."""
    found = set(words)
    found.update(f"{a} {b}" for a, b in zip(words, words[1:], strict=False))
    return sorted(found)


def pieces(word: str, size: int = PIECE_SIZE) -> list[str]:
    """The pieces of ``size`` letters of a word marked at both ends, in order: "shank" ->
    "<sha", "shan", "hank", "ank>" (a word too short for two pieces is one, whole)."""
    marked = f"<{word}>"
    if len(marked) <= size:
        return [marked]
    return [marked[i : i + size] for i in range(len(marked) - size + 1)]


def severity_features(words: Sequence[str], size: int = PIECE_SIZE) -> list[str]:
    """:func:`features`, and the pieces of each word once (``size`` 0: none): what the
    severity model weighs. The theme model weighs the words and pairs alone."""
    found = features(words)
    if size:
        found += sorted(PIECE + p for word in set(words) for p in pieces(word, size))
    return found


@dataclass(frozen=True)
class SecondOpinion:
    bias: float
    weights: dict[str, float]
    threshold: float  # a probability; a search at or above it reads as severity 3
    themes: tuple[str, ...]
    theme_bias: tuple[float, ...]
    theme_weights: dict[str, tuple[float, ...]]
    trained_on: dict[str, int]  # searches, severe, ordinary
    source: str = ""
    # For a search the library found nothing in; None: the model does not raise those.
    alone_threshold: float | None = None
    piece_size: int = 0  # the letters of the pieces of words it weighs; 0: none
    cut: float = field(init=False, repr=False, compare=False)
    alone_cut: float = field(init=False, repr=False, compare=False)
    # Each word's weight with its pieces' weights, and the weights of the pairs it begins
    # ("to" -> (0.2, {"die": 1.2})), every word of a pair or of its own included: one lookup a
    # word, and no string built for a pair or a piece.
    table: dict[str, tuple[float, dict[str, float] | None]] = field(
        init=False, repr=False, compare=False
    )
    piece_weights: dict[str, float] = field(init=False, repr=False, compare=False)
    # A word in no feature -> its pieces' weights (UNSEEN_KEPT at most).
    unseen: dict[str, float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # The thresholds as sums of weights: no exponential per search.
        object.__setattr__(self, "cut", logit(self.threshold))
        alone = math.inf if self.alone_threshold is None else logit(self.alone_threshold)
        object.__setattr__(self, "alone_cut", alone)
        pairs: dict[str, dict[str, float]] = {}
        words: set[str] = set()
        parts: dict[str, float] = {}
        for feature in self.weights:
            if feature.startswith(PIECE):
                parts[feature[len(PIECE) :]] = float(self.weights[feature])
                continue
            first, _, second = feature.partition(" ")
            if second:
                pairs.setdefault(first, {})[second] = float(self.weights[feature])
                words.update((first, second))
            else:
                words.add(first)
        object.__setattr__(self, "piece_weights", parts if self.piece_size else {})
        table = {
            w: (float(self.weights.get(w, 0.0)) + self._pieces(w), pairs.get(w))
            for w in sorted(words)
        }
        object.__setattr__(self, "table", table)
        object.__setattr__(self, "unseen", {})

    def score(self, words: Sequence[str]) -> float:
        """The probability that a search of these words is a severity-3 risk."""
        return sigmoid(self._sum(words))

    def severe(self, words: Sequence[str], *, alone: bool = False) -> bool:
        """Whether these words read as severity 3: at ``threshold``, or for ``alone`` (a search
        the library found nothing in) at ``alone_threshold`` (never, without one)."""
        return self._sum(words) >= (self.alone_cut if alone else self.cut)

    def _pieces(self, word: str) -> float:
        """The sum of the weights of the pieces of ``word``, in order."""
        if not self.piece_weights:
            return 0.0
        get = self.piece_weights.get
        total = 0.0
        for piece in pieces(word, self.piece_size):
            total += get(piece, 0.0)
        return total

    def _sum(self, words: Sequence[str]) -> float:
        if speedups is not None:
            words = words if type(words) is tuple else tuple(words)
            parts = self.piece_weights or None
            return speedups.linear(
                words, self.table, self.bias, parts, self.piece_size, self.unseen, UNSEEN_KEPT
            )
        table = self.table
        total = self.bias
        row: dict[str, float] | None = None  # the pairs the previous word begins
        for word in words:  # each word, and each pair (without building the features' list)
            entry = table.get(word)
            if entry is None:  # in no feature, nor in a pair: its pieces alone
                row = None
                if self.piece_weights:
                    weight = self.unseen.get(word)
                    if weight is None:
                        weight = self._pieces(word)
                        if len(self.unseen) < UNSEEN_KEPT:
                            self.unseen[word] = weight
                    total += weight
                continue
            total += entry[0]
            if row is not None:
                total += row.get(word, 0.0)
            row = entry[1]
        return total

    def review(
        self, words: tuple[str, ...], found: Assessment, *, alone: bool = True
    ) -> Assessment:
        """``found`` (the library's grading of a search of these ``words``) with a severity-3
        match of the model's when it reads the words as severity 3: where the library graded
        them 1 or 2 (at ``threshold``) or, for ``alone``, found nothing in them (at
        ``alone_threshold``), and no allow-phrase or context phrase judged them ordinary
        (:func:`~schoolgate.monitoring.assessment.library_grade`)."""
        # Most searches match nothing: their test in as few calls as can be.
        grade = library_grade(found) if found.matches else 0
        if grade is None or (grade == 0 and (not alone or self.alone_threshold is None)):
            return found
        total = self._sum(words)
        if total < (self.cut if grade else self.alone_cut):
            return found
        score = f"the learned model's score {sigmoid(total):.2f}"
        if grade:
            among = {m.theme for m in found.active}
            score += f" (threshold {self.threshold:.2f})"
        else:
            among = set(self.themes)
            score += (
                f" (threshold for a search the library finds nothing in {self.alone_threshold:.2f})"
            )
        return raised(found, grade, self.theme(words, among), TERM, score, self.source)

    def theme(self, words: Sequence[str], among: Iterable[str]) -> str:
        """Of the themes ``among`` (those the library found), the one whose risky searches
        these words read most like (the first in order when the model knows none of them)."""
        choices = sorted(among)
        sums = list(self.theme_bias)
        for feature in features(words):
            row = self.theme_weights.get(feature)
            if row is not None:
                for i, value in enumerate(row):
                    sums[i] += value
        score = dict(zip(self.themes, sums, strict=True))
        return max(choices, key=lambda name: score.get(name, float("-inf")))

    def to_json(self) -> dict[str, object]:
        return {
            "format": FORMAT,
            "trained_on": self.trained_on,
            "threshold": round(self.threshold, 6),
            **({"piece_size": self.piece_size} if self.piece_size else {}),
            **(
                {}
                if self.alone_threshold is None
                else {"alone_threshold": round(self.alone_threshold, 6)}
            ),
            "bias": round(self.bias, 6),
            "themes": list(self.themes),
            "theme_bias": [round(v, 6) for v in self.theme_bias],
            "weights": {k: round(v, 5) for k, v in sorted(self.weights.items())},
            "theme_weights": {
                k: [round(v, 5) for v in row] for k, row in sorted(self.theme_weights.items())
            },
        }


class OpinionError(ValueError):
    """A second-opinion file that cannot be used: what is wrong, and where (``field``, and
    ``line`` for a file that is not JSON)."""

    def __init__(self, message: str, field: str = "", line: int | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.message, self.field, self.line = message, field, line


def from_json(data: object, source: str = "") -> SecondOpinion:
    """The model in ``data`` (as :meth:`SecondOpinion.to_json` wrote it); raises
    :class:`OpinionError` naming the first field that is wrong."""
    if not isinstance(data, dict):
        raise OpinionError("the file holds no JSON object")
    if data.get("format") != FORMAT:
        raise OpinionError(f"{data.get('format')!r}, expected {FORMAT}", "format")
    themes = data.get("themes")
    if not isinstance(themes, list) or not themes or not all(isinstance(t, str) for t in themes):
        raise OpinionError("a list of theme names", "themes")
    width = len(themes)
    threshold = _number(data, "threshold")
    if not 0 < threshold < 1:
        raise OpinionError(f"{threshold} is not between 0 and 1", "threshold")
    alone = None
    if "alone_threshold" in data:
        alone = _number(data, "alone_threshold")
        if not threshold <= alone < 1:
            raise OpinionError(
                f"{alone} is not between the threshold ({threshold}) and 1", "alone_threshold"
            )
    piece_size = data.get("piece_size", 0)
    if type(piece_size) is not int or not 0 <= piece_size <= 8:
        raise OpinionError(f"{piece_size!r} is not a whole number from 0 to 8", "piece_size")
    weights = data.get("weights")
    if not isinstance(weights, dict):
        raise OpinionError("an object of feature -> number", "weights")
    theme_weights = data.get("theme_weights")
    if not isinstance(theme_weights, dict):
        raise OpinionError("an object of feature -> list of numbers", "theme_weights")
    theme_bias = data.get("theme_bias")
    if not _numbers(theme_bias, width):
        raise OpinionError(f"{width} numbers, one per theme", "theme_bias")
    for key, value in weights.items():
        if not finite(value):
            raise OpinionError(f"{value!r} is not a number", f"weights.{key}")
    for key, row in theme_weights.items():
        if not _numbers(row, width):
            raise OpinionError(f"{width} numbers, one per theme", f"theme_weights.{key}")
    trained = data.get("trained_on")
    if not isinstance(trained, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in trained.values()
    ):
        raise OpinionError("an object of counts", "trained_on")
    return SecondOpinion(
        bias=_number(data, "bias"),
        weights={str(k): float(v) for k, v in weights.items()},
        threshold=threshold,
        themes=tuple(themes),
        theme_bias=tuple(float(v) for v in theme_bias),  # type: ignore[union-attr]
        theme_weights={str(k): tuple(float(v) for v in row) for k, row in theme_weights.items()},
        trained_on={str(k): int(v) for k, v in trained.items()},
        source=source,
        alone_threshold=alone,
        piece_size=piece_size,
    )


def load_opinion(path: Path) -> SecondOpinion:
    """Read ``path``; raises :class:`OpinionError` when it cannot."""
    return from_json(read_model_file(path, OpinionError), source=str(path))


def read_model_file(path: Path, error: type[OpinionError]) -> object:
    """The JSON in a learned model's file; raises ``error`` when it cannot be read or is not
    JSON (with the line)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"cannot be read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise error(f"not JSON: {exc.msg}", line=exc.lineno) from None


def train(
    examples: Sequence[Example],
    themes: Sequence[str],
    *,
    alone_tolerated: float = ALONE_TOLERATED,
    piece_size: int = PIECE_SIZE,
) -> SecondOpinion:
    """A model from labelled searches: the severity-3 model, its thresholds from five folds
    (``alone_tolerated``: the share of the ordinary searches the library finds nothing in that
    may score above ``alone_threshold``; ``piece_size``: the letters of the pieces of words it
    weighs, 0 for none), and the theme model from the risky ones. Raises ValueError when the
    set cannot teach it (no severe or no ordinary search)."""
    if not 0 <= piece_size <= 8:
        raise ValueError(f"pieces of {piece_size} letters: from 0 to 8")
    if not 0 <= alone_tolerated < 1:
        raise ValueError(f"the share tolerated, {alone_tolerated}, is not between 0 and 1")
    rows = [(severity_features(e.words, piece_size), e.severe) for e in examples]
    severe = sum(1 for _, y in rows if y)
    ordinary = [i for i, e in enumerate(examples) if not e.themes]
    flagged = [i for i in ordinary if examples[i].flagged]
    if not severe or not ordinary:
        raise ValueError("the labelled set needs severity-3 searches and ordinary ones")
    # The threshold: score each search by a model trained on the other folds.
    order = list(range(len(rows)))
    random.Random(1).shuffle(order)
    held_out = [0.0] * len(rows)
    for fold in range(FOLDS):
        held = set(order[fold::FOLDS])
        bias, weights = _fit([rows[i] for i in range(len(rows)) if i not in held])
        for i in held:
            held_out[i] = sigmoid(bias + sum(weights.get(f, 0.0) for f in rows[i][0]))
    scores = sorted((held_out[i] for i in flagged), reverse=True)
    threshold = scores[TOLERATED] + 1e-9 if len(scores) > TOLERATED else 0.5
    threshold = min(max(threshold, 0.5), 0.999999)
    alone_threshold = None
    unflagged = sorted((held_out[i] for i in ordinary if examples[i].alone), reverse=True)
    if unflagged:  # at least the threshold: never easier to raise than a flagged search
        kept = unflagged[int(alone_tolerated * len(unflagged))] + 1e-9
        alone_threshold = min(max(kept, threshold), 0.999999)
    bias, weights = _fit(rows)
    risky = [(features(e.words), e.themes) for e in examples if e.themes]
    names = tuple(sorted({t for e in examples for t in e.themes} | set(themes)))
    theme_bias, theme_weights = _fit_themes(risky, names)
    return SecondOpinion(
        bias=bias,
        weights={k: v for k, v in weights.items() if abs(v) >= PRUNE},
        threshold=threshold,
        themes=names,
        theme_bias=theme_bias,
        theme_weights=theme_weights,
        trained_on={"searches": len(rows), "severe": severe, "ordinary": len(ordinary)},
        alone_threshold=alone_threshold,
        piece_size=piece_size,
    )


def _fit(rows: Sequence[tuple[list[str], bool]]) -> tuple[float, dict[str, float]]:
    """Logistic regression by stochastic gradient descent, in a fixed order."""
    weights: dict[str, float] = {}
    bias = 0.0
    data = list(rows)
    shuffle = random.Random(7).shuffle
    for _ in range(EPOCHS):
        shuffle(data)
        for feats, label in data:
            z = bias + sum(weights.get(f, 0.0) for f in feats)
            step = sigmoid(z) - (1.0 if label else 0.0)
            bias -= RATE * step
            for f in feats:
                w = weights.get(f, 0.0)
                weights[f] = w - RATE * (step + DECAY * w)
    return bias, weights


def _fit_themes(
    rows: Sequence[tuple[list[str], frozenset[str]]], names: tuple[str, ...]
) -> tuple[tuple[float, ...], dict[str, tuple[float, ...]]]:
    """A softmax over the themes, each risky search's themes sharing its weight."""
    width = len(names)
    index = {name: i for i, name in enumerate(names)}
    bias = [0.0] * width
    weights: dict[str, list[float]] = {}
    data = list(rows)
    shuffle = random.Random(11).shuffle
    for _ in range(EPOCHS):
        shuffle(data)
        for feats, labelled in data:
            sums = bias[:]
            for f in feats:
                row = weights.get(f)
                if row is not None:
                    for i in range(width):
                        sums[i] += row[i]
            top = max(sums)
            exps = [math.exp(s - top) for s in sums]
            total = sum(exps)
            target = [0.0] * width
            for name in labelled:
                target[index[name]] = 1.0 / len(labelled)
            steps = [exps[i] / total - target[i] for i in range(width)]
            for i in range(width):
                bias[i] -= RATE * steps[i]
            for f in feats:
                row = weights.setdefault(f, [0.0] * width)
                for i in range(width):
                    row[i] -= RATE * (steps[i] + DECAY * row[i])
    kept = {f: tuple(row) for f, row in weights.items() if max(abs(v) for v in row) >= PRUNE * 100}
    return tuple(bias), kept


def examples_from(
    rows: Iterable[tuple[tuple[str, ...], int, frozenset[str], int | None]],
) -> list[Example]:
    """(normalised words, severity, themes, the library's grade) -> examples. The grade is
    :func:`~schoolgate.monitoring.assessment.library_grade`'s: 1 or 2 flagged, 0 found in
    nothing, None judged by a phrase or graded 3."""
    return [
        Example(words, severity >= 3, themes, grade in (1, 2), grade == 0)
        for words, severity, themes, grade in rows
    ]


def sigmoid(z: float) -> float:
    """The probability of a sum of weights (0 or 1 beyond 30 either way)."""
    if z < -30:
        return 0.0
    if z > 30:
        return 1.0
    return 1.0 / (1.0 + math.exp(-z))


def logit(p: float) -> float:
    """The sum of weights of a probability: :func:`sigmoid`'s inverse."""
    return math.log(p / (1.0 - p))


def finite(value: object) -> bool:
    """A JSON number, not a bool, neither infinite nor NaN."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _numbers(value: object, width: int) -> bool:
    return isinstance(value, list) and len(value) == width and all(map(finite, value))


def _number(data: dict, key: str) -> float:
    value = data.get(key)
    if not isinstance(value, int | float) or not finite(value):
        raise OpinionError(f"{value!r} is not a number", key)
    return float(value)


__all__ = [
    "ALONE_TOLERATED",
    "FILE_NAME",
    "TERM",
    "Example",
    "OpinionError",
    "SecondOpinion",
    "examples_from",
    "features",
    "finite",
    "from_json",
    "load_opinion",
    "logit",
    "read_model_file",
    "sigmoid",
    "train",
]
