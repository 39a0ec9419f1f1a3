"""How much the learned second opinion adds, on splits it was not trained on.

Trains the model as ``schoolgate train-opinion`` does, on the labelled searches but the splits
left out (``--leave-out``, repeat), on every other ordinary look-alike (the rest are held out
to count false alarms on) and on the everyday searches but those in ``EVERYDAY_UNSEEN`` (held
out likewise), then prints, for each split left out, severity-3 recall and ordinary searches
at severity 3 with the terms and rules alone and with the model, and the held-out look-alikes
and everyday searches that reach severity 3.

The shipped design raises a search the library flagged at the model's threshold, and one it
found nothing in at its stricter ``alone_threshold``. ``--every-search`` measures the first
design, not shipped: one threshold for every search, set on every ordinary search out of fold;
``--flagged-only`` the second, shipped until 4 December: only what the library flagged;
``--no-look-alikes`` trains without the look-alikes (all of them then held out);
``--whole-words`` trains the model shipped until 4 December (late evening), without the
pieces of words.

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

from test_monitoring_labelled import (  # noqa: E402
    EVERYDAY_UNSEEN,
    LABELLED,
    LOOK_ALIKES,
    load_everyday,
    load_labelled,
    score,
)

from schoolgate.monitoring.assessment import Assessment, Match, library_grade  # noqa: E402
from schoolgate.monitoring.opinion import (  # noqa: E402
    PIECE_SIZE,
    TERM,
    Example,
    SecondOpinion,
    examples_from,
    train,
)
from schoolgate.monitoring.terms import Matcher, load_matcher  # noqa: E402


def look_alikes() -> list[str]:
    lines = LOOK_ALIKES.read_text(encoding="utf-8").splitlines()
    return [line.split("\t")[2] for line in lines if line.strip() and not line.startswith("#")]


def everyday() -> tuple[list[str], list[str]]:
    """The everyday searches the model learns from, and those held out (``EVERYDAY_UNSEEN``)."""
    by_split = load_everyday()
    days = [t for split, texts in by_split.items() if split not in EVERYDAY_UNSEEN for t in texts]
    return days, [t for split in EVERYDAY_UNSEEN for t in by_split.get(split, [])]


def train_without(
    matcher: Matcher,
    items: list,
    left_out: set[str],
    look_alikes: list[str],
    *,
    every_search: bool = False,
    piece_size: int = PIECE_SIZE,
) -> tuple[SecondOpinion, list[Example]]:
    """The second opinion as ``schoolgate train-opinion`` trains it, on the labelled ``items``
    but the splits ``left_out``, on ``look_alikes`` and on the everyday searches but those held
    out; ``matcher`` (without a model of its own) grades each for the examples."""
    read, assess = matcher.normaliser.read, matcher.assess

    def example(text: str, severity: int, themes: frozenset[str]) -> Example:
        if every_search:
            return Example(read(text).words, severity >= 3, themes, True)
        (made,) = examples_from([(read(text).words, severity, themes, library_grade(assess(text)))])
        return made

    examples = [example(i.text, i.severity, i.themes) for i in items if i.split not in left_out]
    examples += [example(t, 0, frozenset()) for t in look_alikes + everyday()[0]]
    model = train(examples, sorted(matcher.library.themes), piece_size=piece_size)
    return model, examples


def grade(matcher: Matcher, model, text: str, design: str) -> Assessment:
    """The Assessment with ``model`` as the second opinion: the gateway's own path for the
    ``shipped`` and ``flagged`` designs (as ``monitoring.second_opinion`` true and "flagged"),
    and for ``every`` search the same test without asking for a library match."""
    if model is None:
        return matcher.assess(text)
    if design != "every":
        matcher.opinion = model
        try:
            return matcher.assess(text, search=True, alone=design == "shipped")
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
    design = parser.add_mutually_exclusive_group()
    design.add_argument("--every-search", action="store_true")
    design.add_argument("--flagged-only", action="store_true")
    parser.add_argument(
        "--no-look-alikes", action="store_true", help="train on the labelled searches only"
    )
    parser.add_argument(
        "--whole-words", action="store_true", help="words and pairs, not the pieces of words"
    )
    args = parser.parse_args()
    matcher = load_matcher()
    matcher.use_models(True, False)  # without the library's reader: the opinion's own figures
    matcher.opinion = None  # the terms and rules alone; the model under test is applied here
    items = load_labelled()
    left_out = set(args.leave_out)
    unknown = left_out - {i.split for i in items}
    if unknown:
        parser.error(f"no such split in {LABELLED.name}: {', '.join(sorted(unknown))}")
    ordinary = look_alikes()
    learned, held = ordinary[0::2], ordinary[1::2]  # every other one held out
    if args.no_look_alikes:
        learned, held = [], ordinary
    days, days_held = everyday()
    pieces = 0 if args.whole_words else PIECE_SIZE
    model, examples = train_without(
        matcher, items, left_out, learned, every_search=args.every_search, piece_size=pieces
    )
    design = "every" if args.every_search else "flagged" if args.flagged_only else "shipped"
    said = {
        "every": "on every search",
        "flagged": "raising only what the library flags",
        "shipped": "raising what the library flags, and above a stricter threshold the rest",
    }[design]
    shipped = design == "shipped" and model.alone_threshold is not None
    alone = f", alone {model.alone_threshold:.3f}" if shipped else ""
    print(
        f"second opinion {said}: trained on {len(examples)} searches "
        f"({len(learned)} look-alikes, {len(days)} everyday), threshold "
        f"{model.threshold:.3f}{alone}\n"
    )
    print(f"{'split':<11} {'sev-3 recall, rules':>22} {'with the model':>18} {'ordinary at 3':>14}")
    for split in sorted(left_out, key=lambda s: (len(s), s)):
        part = [i for i in items if i.split == split]
        alone = score(matcher, part)
        both = _score_with(matcher, model, part, design)
        total = alone.severe_total
        print(
            f"{split:<11} {alone.severe_recall:>10.3f} ({alone.severe_found:>3}/{total:<3})"
            f" {both[0]:>8.3f} ({both[1]:>3}/{total:<3})"
            f" {alone.ordinary_severe:>4} -> {both[2]}/{alone.ordinary_total}"
        )
    for name, texts in (("look-alikes", held), ("everyday searches", days_held)):
        rules = [t for t in texts if matcher.assess(t).severity >= 3]
        alerts = [t for t in texts if grade(matcher, model, t, design).severity >= 3]
        print(
            f"\nheld-out {name} at severity 3: {len(rules)} of {len(texts)} with the rules "
            f"alone, {len(alerts)} with the model"
        )
        for text in alerts[:12]:
            print(f"  {text}")


def _score_with(matcher: Matcher, model, part, design: str) -> tuple[float, int, int]:
    found = ordinary = 0
    severe = [i for i in part if i.severity >= 3]
    for item in part:
        graded = grade(matcher, model, item.text, design)
        if item.severity >= 3:
            found += any(m.severity >= 3 and m.theme in item.themes for m in graded.active)
        elif not item.themes:
            ordinary += graded.severity >= 3
    return (found / len(severe) if severe else 1.0), found, ordinary


if __name__ == "__main__":
    main()
