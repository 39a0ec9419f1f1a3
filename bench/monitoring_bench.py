"""Safeguarding monitoring: how well the shipped risk-term library does on the labelled searches,
and what matching costs per request.

    python3 bench/monitoring_bench.py [--rounds 50]

Quality, per split of ``tests/data/monitoring/searches.tsv`` (dev: tuned on; heldout-1: tuned on
after one untouched measurement; heldout-2: never tuned on) and for the whole set:
recall of severity-3 searches (found at severity 3 in one of their themes; target >= 0.95),
severity-3 alerts on ordinary school work (target 0), and per theme the precision (of the
searches reported in a theme, how many are labelled with it) and recall (any severity).

Cost, in microseconds per call, median and p99 over every labelled search x rounds:
``assess`` (normalise + one automaton pass + resolution) alone; a search request end to end
(``capture`` of a Google results URL + ``assess`` of its term); ``capture`` of a request that is
not a search (what every other request pays); a page's titles read from its first bytes.
Target: under 20 us per request.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import quote_plus

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_monitoring_labelled import SPLITS, load_labelled, score  # noqa: E402

from schoolgate.monitoring.library import THEMES  # noqa: E402
from schoolgate.monitoring.searches import capture  # noqa: E402
from schoolgate.monitoring.terms import load_matcher  # noqa: E402
from schoolgate.monitoring.titles import extract_titles  # noqa: E402

OTHER_REQUESTS = [
    ("www.bbc.co.uk", "/bitesize/guides/zxm8xnb/revision/1"),
    ("classroom.google.com", "/u/0/c/NjQ1MjM0?cjc=abc"),
    ("fonts.gstatic.com", "/s/roboto/v30/KFOmCnqEu92Fr1Mu4mxK.woff2"),
    ("www.google.com", "/gen_204?atyp=i&ct=slh&cad=&ei=x"),
    ("www.youtube.com", "/watch?v=dQw4w9WgXcQ&t=42s"),
    ("en.wikipedia.org", "/wiki/Photosynthesis"),
]
PAGE = (ROOT / "tests" / "test_monitoring_titles.py").read_text().split('NEWS = b"""')[1]
PAGE_BYTES = PAGE.split('"""')[0].encode() + b"x" * 30_000


def _timed(calls: list, rounds: int) -> tuple[float, float, float]:
    """Wall-clock p50 and p99 per call, and the mean CPU time per call of this thread (which
    time spent waiting for the shared machine's cores does not inflate)."""
    samples = []
    clock = time.perf_counter_ns
    gc.disable()
    cpu = time.thread_time_ns()
    try:
        for _ in range(rounds):
            for fn, arg in calls:
                start = clock()
                fn(*arg)
                samples.append(clock() - start)
    finally:
        cpu = time.thread_time_ns() - cpu
        gc.enable()
    samples.sort()
    p50 = statistics.median(samples) / 1000
    p99 = samples[int(len(samples) * 0.99) - 1] / 1000
    return p50, p99, cpu / len(samples) / 1000


def quality(matcher, items) -> None:
    print(
        f"{'split':<10} {'searches':>8} {'sev-3 recall':>16} {'sev-3 on ordinary':>18} "
        f"{'any match on ordinary':>22} {'risky found':>12}"
    )
    for name in (*SPLITS, "all"):
        part = [i for i in items if name == "all" or i.split == name]
        s = score(matcher, part)
        print(
            f"{name:<10} {len(part):>8} {s.severe_recall:>7.3f} ({s.severe_found:>3}/"
            f"{s.severe_total:<3}) {s.ordinary_severe:>10}/{s.ordinary_total:<7} "
            f"{s.ordinary_any:>14}/{s.ordinary_total:<7} {s.risky_found:>5}/{s.risky_total}"
        )
    s = score(matcher, items)
    labelled = {t: sum(t in i.themes for i in items) for t in THEMES}
    print(f"\n{'theme':<22} {'precision':>14} {'recall (any severity)':>22}")
    for theme in THEMES:
        reported, correct = s.reported[theme], s.correct[theme]
        found = sum(
            any(m.theme == theme for m in matcher.assess(i.text).active)
            for i in items
            if theme in i.themes
        )
        precision = f"{correct / reported:.2f} ({correct}/{reported})" if reported else "-"
        recall = f"{found / labelled[theme]:.2f} ({found}/{labelled[theme]})"
        print(f"{theme:<22} {precision:>14} {recall:>22}")


def cost(matcher, items, rounds: int) -> None:
    texts = [i.text for i in items]
    for text in texts:  # warm up, as a running gateway would be
        matcher.assess(text)
    paths = [f"/search?q={quote_plus(t)}&hl=en-GB&source=hp" for t in texts]

    def search_request(path: str) -> None:
        found = capture("www.google.co.uk", path)
        if found is not None:
            matcher.assess(found.term)

    rows = [
        ("assess(term)", [(matcher.assess, (t,)) for t in texts]),
        ("search request: capture + assess", [(search_request, (p,)) for p in paths]),
        ("other request: capture", [(capture, hp) for hp in OTHER_REQUESTS] * 60),
        ("page titles (first 32 KB)", [(extract_titles, (PAGE_BYTES,))] * 5),
    ]
    print(f"\n{'cost per call (us)':<36} {'p50':>8} {'p99':>8} {'CPU mean':>9}")
    for name, calls in rows:
        p50, p99, cpu = _timed(calls, rounds)
        print(f"{name:<36} {p50:>8.2f} {p99:>8.2f} {cpu:>9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    start = time.perf_counter()
    matcher = load_matcher()
    loaded = time.perf_counter() - start
    items = load_labelled()
    print(
        f"library: {len(matcher.terms)} terms, {len(matcher.allows)} allow-phrases, "
        f"{len(matcher.rules)} context rules, {matcher.patterns} patterns; "
        f"loaded in {loaded * 1000:.0f} ms\n"
    )
    quality(matcher, items)
    cost(matcher, items, args.rounds)


if __name__ == "__main__":
    main()
