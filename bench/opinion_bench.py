"""How much the learned second opinion adds, on splits it was not trained on.

Trains the model as ``schoolgate train-opinion`` does, on the labelled searches but the splits
left out (``--leave-out``, repeat) and on every other ordinary look-alike (the rest are held
out to count false alarms on), then prints, for each split left out, severity-3 recall and
ordinary searches at severity 3 with the terms and rules alone and with the model, and the
held-out look-alikes that reach severity 3.

``--every-search`` measures the design that was not shipped: the model also grades searches
the library found nothing in (its threshold then set on every ordinary search out of fold);
``--no-look-alikes`` trains it without the look-alikes (all of them then held out).

    python3 bench/opinion_bench.py --leave-out heldout-18 --leave-out heldout-19
    python3 bench/opinion_bench.py --leave-out heldout-14 --leave-out heldout-15 --every-search
    python3 bench/opinion_bench.py --leave-out heldout-14 --leave-out heldout-15 --every-search \
        --no-look-alikes
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from test_monitoring_labelled import LABELLED, LOOK_ALIKES, load_labelled, score  # noqa: E402

from schoolgate.monitoring.assessment import Assessment, Match  # noqa: E402
from schoolgate.monitoring.opinion import TERM, Example, train  # noqa: E402
from schoolgate.monitoring.terms import Matcher, load_matcher, may_raise  # noqa: E402


def look_alikes() -> list[str]:
    lines = LOOK_ALIKES.read_text(encoding="utf-8").splitlines()
    return [line.split("\t")[2] for line in lines if line.strip() and not line.startswith("#")]


def grade(matcher: Matcher, model, text: str, every_search: bool) -> Assessment:
    """The Assessment with ``model`` as the second opinion: the gateway's own path for the
    shipped design, and for ``every_search`` the same test without asking for a library match."""
    if model is None:
        return matcher.assess(text)
    if not every_search:
        matcher.opinion = model
        try:
            return matcher.assess(text, search=True)
        finally:
            matcher.opinion = None
            matcher.forget()
    found = matcher.assess(text)
    words = matcher.normaliser.read(text).words
    judged = any(m.suppressed_by or m.lowered_by for m in found.matches)
    if found.severity >= 3 or judged or not model.severe(words):
        return found
    among = {m.theme for m in found.active} or set(model.themes)
    return Assessment((Match(model.theme(words, among), 3, TERM, 3), *found.matches))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--leave-out", action="append", required=True, metavar="SPLIT")
    parser.add_argument("--every-search", action="store_true")
    parser.add_argument(
        "--no-look-alikes", action="store_true", help="train on the labelled searches only"
    )
    args = parser.parse_args()
    matcher = load_matcher()
    matcher.opinion = None  # the terms and rules alone; the model under test is applied here
    read = matcher.normaliser.read
    items = load_labelled()
    left_out = set(args.leave_out)
    unknown = left_out - {i.split for i in items}
    if unknown:
        parser.error(f"no such split in {LABELLED.name}: {', '.join(sorted(unknown))}")
    ordinary = look_alikes()
    learned, held = ordinary[0::2], ordinary[1::2]  # every other one held out
    if args.no_look_alikes:
        learned, held = [], ordinary

    def flagged(text: str) -> bool:
        return True if args.every_search else may_raise(matcher.assess(text))

    examples = [
        Example(read(i.text).words, i.severity >= 3, i.themes, flagged(i.text))
        for i in items
        if i.split not in left_out
    ]
    examples += [Example(read(t).words, False, frozenset(), flagged(t)) for t in learned]
    model = train(examples, sorted(matcher.library.themes))
    design = "on every search" if args.every_search else "raising only what the library flags"
    print(
        f"second opinion {design}: trained on {len(examples)} searches "
        f"({len(learned)} look-alikes), threshold {model.threshold:.3f}\n"
    )
    print(f"{'split':<11} {'sev-3 recall, rules':>22} {'with the model':>18} {'ordinary at 3':>14}")
    for split in sorted(left_out, key=lambda s: (len(s), s)):
        part = [i for i in items if i.split == split]
        alone = score(matcher, part)
        both = _score_with(matcher, model, part, args.every_search)
        total = alone.severe_total
        print(
            f"{split:<11} {alone.severe_recall:>10.3f} ({alone.severe_found:>3}/{total:<3})"
            f" {both[0]:>8.3f} ({both[1]:>3}/{total:<3})"
            f" {alone.ordinary_severe:>4} -> {both[2]}/{alone.ordinary_total}"
        )
    rules = [t for t in held if matcher.assess(t).severity >= 3]
    alerts = [t for t in held if grade(matcher, model, t, args.every_search).severity >= 3]
    print(
        f"\nheld-out look-alikes at severity 3: {len(rules)} of {len(held)} with the rules "
        f"alone, {len(alerts)} with the model"
    )
    for text in alerts[:12]:
        print(f"  {text}")


def _score_with(matcher: Matcher, model, part, every_search: bool) -> tuple[float, int, int]:
    found = ordinary = 0
    severe = [i for i in part if i.severity >= 3]
    for item in part:
        graded = grade(matcher, model, item.text, every_search)
        if item.severity >= 3:
            found += any(m.severity >= 3 and m.theme in item.themes for m in graded.active)
        elif not item.themes:
            ordinary += graded.severity >= 3
    return (found / len(severe) if severe else 1.0), found, ordinary


if __name__ == "__main__":
    main()
