"""A learned second opinion on the searches the library's terms and rules grade 1 or 2.

Terms and rules catch the phrasings someone wrote down; pupils keep finding new ones, and a
search the library finds a concern ("sextortion what to do hes asking for 200 quid") may be
graded lower than a safeguarding lead would. A small logistic model over a search's
normalised words and word pairs, trained on labelled searches (severity-3 risks against
everything else, ordinary look-alikes included), says when such a search reads like the
severity-3 ones. It only ever raises a search the library already flagged: alone, a model of a
few thousand searches also reads "my dad picks me up after school" as grooming. Its threshold
is set on the training set itself: a probability of at least one half, above all but
``TOLERATED`` of the ordinary searches the library flags, each scored by a model that never saw
it (five folds). A second model picks the theme among those the library found. It is plain
data (weights by word), read from ``second_opinion.json`` in a language folder of the library
and rebuilt by ``schoolgate train-opinion`` from labelled searches (the shipped ones and the
school's own); training is deterministic, so the same files always give the same model.

Nothing here knows of mitmproxy, the database or the web.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

FORMAT = 1
FILE_NAME = "second_opinion.json"
EPOCHS = 30
RATE = 0.2
DECAY = 1e-2  # L2: the weights stay small, so one rare word never decides alone
FOLDS = 5
TOLERATED = 2  # flagged ordinary searches of the training set that may score above it
PRUNE = 1e-4  # smaller weights are left out of the file
TERM = "second opinion"  # what the DSL sees as the match's term


@dataclass(frozen=True)
class Example:
    words: tuple[str, ...]  # normalised, as the matcher reads the search
    severe: bool  # labelled severity 3
    themes: frozenset[str]  # empty: ordinary
    # The library grades it 1 or 2 (and no allow-phrase or context phrase judged it): one of
    # the searches the model may raise, which set its threshold.
    flagged: bool = True


def features(words: Sequence[str]) -> list[str]:
    """The words and each pair of neighbours ("how to", "to die"), each once, sorted (so that
    training adds them up in the same order every time)."""
    found = set(words)
    found.update(f"{a} {b}" for a, b in zip(words, words[1:], strict=False))
    return sorted(found)


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
    cut: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # The threshold as a sum of weights: no exponential per search.
        object.__setattr__(self, "cut", _logit(self.threshold))

    def score(self, words: Sequence[str]) -> float:
        """The probability that a search of these words is a severity-3 risk."""
        return _sigmoid(self._sum(words))

    def severe(self, words: Sequence[str]) -> bool:
        return self._sum(words) >= self.cut

    def _sum(self, words: Sequence[str]) -> float:
        get = self.weights.get
        total = self.bias
        previous = None
        for word in words:  # each word, and each pair (without building the features' list)
            total += get(word, 0.0)
            if previous is not None:
                total += get(previous + " " + word, 0.0)
            previous = word
        return total

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
        if not _finite(value):
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
    )


def load_opinion(path: Path) -> SecondOpinion:
    """Read ``path``; raises :class:`OpinionError` when it cannot."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise OpinionError(f"cannot be read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise OpinionError(f"not JSON: {exc.msg}", line=exc.lineno) from None
    return from_json(data, source=str(path))


def train(examples: Sequence[Example], themes: Sequence[str]) -> SecondOpinion:
    """A model from labelled searches: the severity-3 model, its threshold from five folds,
    and the theme model from the risky ones. Raises ValueError when the set cannot teach it
    (no severe or no ordinary search)."""
    rows = [(features(e.words), e.severe) for e in examples]
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
            held_out[i] = _sigmoid(bias + sum(weights.get(f, 0.0) for f in rows[i][0]))
    scores = sorted((held_out[i] for i in flagged), reverse=True)
    threshold = scores[TOLERATED] + 1e-9 if len(scores) > TOLERATED else 0.5
    threshold = min(max(threshold, 0.5), 0.999999)
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
            step = _sigmoid(z) - (1.0 if label else 0.0)
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
    rows: Iterable[tuple[tuple[str, ...], int, frozenset[str], bool]],
) -> list[Example]:
    """(normalised words, severity, themes, flagged by the library) -> examples."""
    return [Example(words, severity >= 3, themes, flag) for words, severity, themes, flag in rows]


def _sigmoid(z: float) -> float:
    if z < -30:
        return 0.0
    if z > 30:
        return 1.0
    return 1.0 / (1.0 + math.exp(-z))


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _numbers(value: object, width: int) -> bool:
    return isinstance(value, list) and len(value) == width and all(map(_finite, value))


def _number(data: dict, key: str) -> float:
    value = data.get(key)
    if not isinstance(value, int | float) or not _finite(value):
        raise OpinionError(f"{value!r} is not a number", key)
    return float(value)


__all__ = [
    "FILE_NAME",
    "TERM",
    "Example",
    "OpinionError",
    "SecondOpinion",
    "examples_from",
    "features",
    "from_json",
    "load_opinion",
    "train",
]
