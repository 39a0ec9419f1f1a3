"""Safeguarding monitoring: how well the shipped risk-term library does on the labelled searches,
and what matching costs per request.

    python3 bench/monitoring_bench.py [--rounds 50] [--instructions] [--cost-only]
        [--without-reader]

Quality, per split of ``tests/data/monitoring/searches.tsv`` and for the whole set: recall of
severity-3 searches (found at severity 3 in one of their themes; target >= 0.95), severity-3
alerts on ordinary school work (target 0), and per theme the precision (of the searches
reported in a theme, how many are labelled with it) and recall (any severity). Every split in
the file has its row; those in ``TUNED`` (of ``tests/test_monitoring_labelled.py``) were tuned
on, any other never was (the file's header says how each was made): the ``never tuned`` row
sums them, the figure for searches phrased in ways the library has not seen. Then, per split
of ``tests/data/monitoring/everyday.tsv`` (a school's ordinary day of searches): how many
reach severity 3 (target 0) and how many match anything.

Cost, in microseconds per call, median and p99 over every labelled search x rounds, and the
mean CPU time of this thread (which waiting for the shared machine's cores does not inflate):

* ``assess`` of a search not seen before (the matcher's memory of texts off; its memory of
  words warm, as in a running gateway), of one whose words were never seen either, and of the
  same search again (remembered);
* a search request end to end: ``capture`` of a Google results URL + ``assess`` of its term
  (target: under 20 us), for the labelled searches and for the everyday ones;
* ``capture`` of a request that is not a search (what every other request pays);
* the gateway's hooks (:class:`~schoolgate.gateway.monitoring_addon.MonitoringAddon`'s
  ``request``, on mitmproxy test flows with a browser's headers) for a request that is not a
  search (target: almost nothing), and for a search: what the event loop pays (the facts
  taken and queued), and what the grading thread then does (recognised, graded and recorded:
  the event handed to a recorder that keeps nothing, the person's recent searches kept);
* a page's title: what the event loop pays (``responseheaders`` and the tap's copy of the
  first bytes of a 1 KB page, in chunks of 160 bytes), and the grading thread's reading and grading;
* a page's titles read from its first bytes: a small head, a 32 KB head of links and metas,
  and a 30 KB script before the title (per KB too);
* the library's neural reader reading a search it has not read before (every 12th labelled
  search or so, 300 in all), as the grading thread does after matching: not matching's
  cost, which the rows above give without it, and not counted by ``--instructions``.

The quality figures are those of the shipped grading, the reader included;
``--without-reader`` prints them without it.

``--instructions`` also counts the instructions of each row with ``valgrind --tool=callgrind``
(the same on a loaded machine as on an idle one), every row in one run under valgrind: each
row runs once (warm), the heap is settled (``gc.collect(); gc.freeze()``, as the gateway's
``settle_heap`` does), then the row runs one more round with only that round counted
(``--toggle-collect`` on the ``eval`` the round runs in, a dump after it), less what an empty
round costs, divided by the row's calls. ``PYTHONHASHSEED=0``. ``--misses`` adds callgrind's
cache model (``--cache-sim=yes``): first-level instruction and data misses and last-level ones.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote_plus

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_monitoring_labelled import (  # noqa: E402
    EVERYDAY_UNSEEN,
    SPLITS,
    TUNED,
    load_everyday,
    load_labelled,
    score,
)

from schoolgate.monitoring.library import THEMES  # noqa: E402
from schoolgate.monitoring.searches import capture  # noqa: E402
from schoolgate.monitoring.terms import Matcher, load_matcher  # noqa: E402
from schoolgate.monitoring.titles import extract_titles  # noqa: E402

OTHER_REQUESTS = [
    ("www.bbc.co.uk", "/bitesize/guides/zxm8xnb/revision/1"),
    ("classroom.google.com", "/u/0/c/NjQ1MjM0?cjc=abc"),
    ("fonts.gstatic.com", "/s/roboto/v30/KFOmCnqEu92Fr1Mu4mxK.woff2"),
    ("www.google.com", "/gen_204?atyp=i&ct=slh&cad=&ei=x"),
    ("www.youtube.com", "/watch?v=dQw4w9WgXcQ&t=42s"),
    ("en.wikipedia.org", "/wiki/Photosynthesis"),
]
_NEWS = (ROOT / "tests" / "test_monitoring_titles.py").read_text().split('NEWS = b"""')[1]
SMALL_PAGE = _NEWS.split('"""')[0].encode()
# A news site's head: a charset, 60 metas, 200 links and preloads, then the titles.
BIG_HEAD = (
    b'<!DOCTYPE html><html lang="en-GB"><head><meta charset="utf-8">'
    + b'<meta name="robots" content="max-image-preview:large">' * 60
    + b'<link rel="preload" href="https://static.files.example/font/Reith.woff2" as="font"'
    b' type="font/woff2" crossorigin="anonymous">'
    * 200
    + b"<title>Teenagers and social media - BBC News</title>"
    b'<meta property="og:title" content="Teenagers and social media">'
)
BIG_HEAD += b"<!-- -->" * ((32 * 1024 - len(BIG_HEAD)) // 8)
SCRIPT_FIRST = (
    b"<html><head><script>" + b"window.dataLayer.push({'event':'x'});" * 800 + b"</script>"
    b"<title>Late title</title></head>"
)


def _timed(calls: list, rounds: int) -> tuple[float, float, float]:
    """Wall-clock p50 and p99 per call, and the mean CPU time per call of this thread."""
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
        f"{'split':<11} {'searches':>7} {'sev-3 recall':>16} {'sev-3 on ordinary':>18} "
        f"{'any match on ordinary':>22} {'risky found':>12}"
    )
    present = [split for split in SPLITS if any(i.split == split for i in items)]
    parts = [(split, [i for i in items if i.split == split]) for split in present]
    parts.append(("tuned", [i for i in items if i.split in TUNED]))
    if any(split not in TUNED for split in present):
        parts.append(("never tuned", [i for i in items if i.split not in TUNED]))
    parts.append(("all", items))
    for name, part in parts:
        s = score(matcher, part)
        print(
            f"{name:<11} {len(part):>7} {s.severe_recall:>7.3f} ({s.severe_found:>3}/"
            f"{s.severe_total:<3}) {s.ordinary_severe:>10}/{s.ordinary_total:<7} "
            f"{s.ordinary_any:>14}/{s.ordinary_total:<7} {s.risky_found:>5}/{s.risky_total}"
        )
    s = score(matcher, items)
    labelled = {t: sum(t in i.themes for i in items) for t in THEMES}
    print(f"\n{'theme':<22} {'precision':>14} {'recall (any severity)':>22}")
    for theme in THEMES:
        reported, correct = s.reported[theme], s.correct[theme]
        found = sum(
            any(m.theme == theme for m in matcher.assess(i.text, search=True).active)
            for i in items
            if theme in i.themes
        )
        precision = f"{correct / reported:.2f} ({correct}/{reported})" if reported else "-"
        recall = f"{found / labelled[theme]:.2f} ({found}/{labelled[theme]})"
        print(f"{theme:<22} {precision:>14} {recall:>22}")
    rules = sum(
        m.rule for i in items for m in matcher.assess(i.text, search=True).active if m.severity >= 3
    )
    print(f"\nseverity-3 matches that came from co-occurrence rules: {rules}")
    everyday(matcher)


def everyday(matcher) -> None:
    """Alerts on a school's ordinary day, by split: at severity 3 (the DSL e-mailed at once),
    and any match."""
    by_split = load_everyday()
    print(f"\n{'everyday':<22} {'searches':>8} {'at severity 3':>14} {'any match':>10}")
    for split, texts in by_split.items():
        graded = [matcher.assess(t, search=True) for t in texts]
        unseen = " (never trained on)" if split in EVERYDAY_UNSEEN else ""
        print(
            f"{split + unseen:<22} {len(texts):>8} {sum(g.severity >= 3 for g in graded):>14} "
            f"{sum(bool(g.active) for g in graded):>10}"
        )


def rows(matcher: Matcher, items, with_reader: bool = True) -> dict[str, tuple[list, int]]:
    """Each cost row: its calls, and the bytes each call reads (titles) or 0. The rows of
    matching leave the reader out (its own row, ``with_reader``, times it alone: a search's
    word pieces read by the int8 model, on one core)."""
    texts = [i.text for i in items]
    paths = [f"/search?q={quote_plus(t)}&hl=en-GB&source=hp" for t in texts]
    reader = matcher.reader
    # Matching (terms, rules and the second opinion); the reader has rows of its own below.
    matcher.use_models(True, False)
    fresh = Matcher(matcher.library, cache_size=0)  # remembers words, not texts
    fresh.use_models(True, False)
    for text in texts:  # warm up, as a running gateway would be
        fresh.assess(text, search=True)
    for text in texts[: matcher.cache_size]:
        matcher.assess(text, search=True)

    def new_search(text: str) -> None:  # as the gateway grades a search
        fresh.assess(text, search=True)

    def same_search(text: str) -> None:
        matcher.assess(text, search=True)

    def never_seen(text: str) -> None:
        fresh.normaliser.forget()
        fresh.assess(text, search=True)

    def search_request(path: str) -> None:
        found = capture("www.google.co.uk", path)
        if found is not None:
            fresh.assess(found.term, search=True)

    everyday_searches = [text for texts in load_everyday().values() for text in texts]
    days = [f"/search?q={quote_plus(t)}&hl=en-GB&source=hp" for t in everyday_searches]
    for path in days:  # warm up likewise
        search_request(path)

    def search_request_words_unseen(path: str) -> None:
        found = capture("www.google.co.uk", path)
        if found is not None:
            fresh.normaliser.forget()
            fresh.assess(found.term, search=True)

    hooks = _hook_rows(matcher, paths)
    reading: dict[str, tuple[list, int]] = {}
    if reader is not None and with_reader:
        sample = texts[:: max(1, len(texts) // 300)]

        def read(text: str) -> None:  # a search not read before, on the grading thread
            reader.forget()
            reader.severe(text)

        reading["reader: a new search"] = ([(read, (t,)) for t in sample], 0)
    return {
        "assess: a new search": ([(new_search, (t,)) for t in texts], 0),
        "assess: words never seen": ([(never_seen, (t,)) for t in texts], 0),
        # As many as the matcher remembers (the labelled set has more searches than that).
        "assess: the same search again": (
            [(same_search, (t,)) for t in texts[: matcher.cache_size]],
            0,
        ),
        "search request: capture + assess": ([(search_request, (p,)) for p in paths], 0),
        "search request: an everyday search": ([(search_request, (p,)) for p in days], 0),
        "search request, words never seen": (
            [(search_request_words_unseen, (p,)) for p in paths],
            0,
        ),
        "other request: capture": ([(capture, hp) for hp in OTHER_REQUESTS] * 60, 0),
        "gateway hook: other request": (hooks["other"], 0),
        "gateway hook: a search, queued": (hooks["search"], 0),
        "  of which the request's view": (hooks["view"], 0),
        "grading thread: a search, recorded": (hooks["graded"], 0),
        "gateway hook: a 1 KB page's title": (hooks["page"], len(SMALL_PAGE)),
        "grading thread: a page's title": (hooks["page graded"], len(SMALL_PAGE)),
        "page titles: 1 KB page": ([(extract_titles, (SMALL_PAGE,))] * 100, len(SMALL_PAGE)),
        "page titles: 32 KB head": ([(extract_titles, (BIG_HEAD,))] * 10, len(BIG_HEAD)),
        "page titles: 30 KB script first": (
            [(extract_titles, (SCRIPT_FIRST,))] * 10,
            len(SCRIPT_FIRST),
        ),
        **reading,
    }


def _hook_rows(matcher: Matcher, paths: list[str]) -> dict[str, list]:
    """Calls of the monitoring addon's hooks, and of its grading thread's work: requests that
    are not searches, searches (every one recorded: the same-search window is off), and a
    page's title. The grading thread never starts: the hooks' rows leave what they queue in
    the queue, and the grading rows do that work on this thread."""
    from mitmproxy.test import tflow, tutils

    from schoolgate.core.model import Identity
    from schoolgate.gateway.flowinfo import request_view
    from schoolgate.gateway.monitoring_addon import MonitoringAddon

    class Policy:
        settings = type("S", (), {"keep_paths": True, "extra": {}})()

        def identify(self, client_ip, user):
            return Identity(role="student", site="main", user=user, client_ip=client_ip)

    class Holder:
        policy = Policy()

        def subscribe(self, listener) -> None:
            pass

    class Recorder:
        def record(self, event) -> None:
            pass

    addon = MonitoringAddon(Holder(), Recorder())  # type: ignore[arg-type]
    addon.matcher = matcher
    addon._searches = addon._titles = True
    addon._dedupe.window = 0
    queued: list = []

    class Queue:  # the grading thread's queue, never read
        lock = None

        def offer(self, item) -> bool:
            queued.append(item)
            if len(queued) > 100_000:
                queued.clear()
            return True

    addon.grader = Queue()  # type: ignore[assignment]

    def flow(host: str, path: str, dest: str):
        req = tutils.treq(host=host, port=443, scheme=b"https", path=path.encode())
        req.headers["host"] = host
        req.headers["accept"] = "image/avif,image/webp,*/*" if dest == "image" else "text/html"
        req.headers["accept-encoding"] = "gzip, deflate, br, zstd"
        req.headers["sec-fetch-dest"] = dest
        made = tflow.tflow(req=req)
        made.client_conn.peername = ("10.20.1.2", 40000)
        return made

    other = [flow(h, p, "image") for h, p in OTHER_REQUESTS]
    searches = [flow("www.google.co.uk", p, "document") for p in paths]
    for f in searches:
        addon.request(f)
    taken_searches = list(queued)

    def page(made) -> None:
        made.response.stream = False  # as it comes from the server
        addon.responseheaders(made)
        tap = made.response.stream
        for at in range(0, len(SMALL_PAGE), 160):
            tap(SMALL_PAGE[at : at + 160])
        tap(b"")  # the end of the body

    def page_graded(taken) -> None:
        taken.page = SMALL_PAGE  # the grading reads it, then lets it go
        addon._graded(taken)

    pages = [flow("news.example", "/story", "document") for _ in range(20)]
    for made in pages:
        made.response = tutils.tresp(content=b"")
        made.response.headers["content-type"] = "text/html; charset=utf-8"
    queued.clear()
    for made in pages:
        page(made)
    taken_pages = list(queued)
    # In the gateway, Enforcement has just read the request's view (one cached slot): each
    # request here is hooked 60 times in a row, so all but the first find it cached too. A
    # search's row builds its view each time, which in the gateway it finds cached: the row
    # under it is what building the views costs.
    return {
        "other": [(addon.request, (f,)) for f in other for _ in range(60)],
        "search": [(addon.request, (f,)) for f in searches],
        "view": [(request_view, (f.request,)) for f in searches],
        "graded": [(addon._graded, (t,)) for t in taken_searches],
        "page": [(page, (made,)) for made in pages],
        "page graded": [(page_graded, (t,)) for t in taken_pages],
    }


def cost(matcher, items, rounds: int, instructions: bool, misses: bool = False) -> None:
    table = rows(matcher, items)
    counted = count_instructions(misses) if instructions else {}
    head = f"\n{'cost per call (us)':<36} {'p50':>8} {'p99':>8} {'CPU mean':>9} {'p50 per KB':>10}"
    head += f" {'instructions':>13}" if instructions else ""
    print(head + (f" {'I1 miss':>8} {'D1 miss':>8} {'LL miss':>8}" if misses else ""))
    for name, (calls, size) in table.items():
        p50, p99, cpu = _timed(calls, rounds)
        per_kb = f"{p50 / (size / 1024):>10.2f}" if size else f"{'':>10}"
        line = f"{name:<36} {p50:>8.2f} {p99:>8.2f} {cpu:>9.2f} {per_kb}"
        if instructions and name in counted:
            line += "".join(
                f" {figure:>{13 if i == 0 else 8},}" for i, figure in enumerate(counted[name])
            )
        print(line, flush=True)


def count_instructions(misses: bool = False) -> dict[str, tuple[int, ...]]:
    """Instructions per call of every row, in one run under callgrind (see the module's
    description): ``--rows`` runs them, a dump after each row's counted round. ``misses``:
    also the first-level instruction and data cache misses and the last-level ones
    (``--cache-sim=yes``: valgrind's model of the cache, not this machine's counters)."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "cg.out"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--collect-atstart=no",
                "--toggle-collect=builtin_eval",
                "--dump-before=*math_gcd*",
                f"--cache-sim={'yes' if misses else 'no'}",
                f"--callgrind-out-file={out}",
                sys.executable,
                __file__,
                "--rows",
                str(Path(folder) / "calls.json"),
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        calls = json.loads((Path(folder) / "calls.json").read_text())
        totals = []
        for dump in Path(folder).glob("cg.out.*"):
            text = dump.read_text()
            events = re.search(r"^events: (.*)$", text, re.MULTILINE)
            found = re.search(r"^(?:totals|summary): ([\d ]+)$", text, re.MULTILINE)
            figures = dict(
                zip(
                    events.group(1).split() if events else ["Ir"],
                    map(int, found.group(1).split()) if found else [0],
                    strict=False,
                )
            )
            totals.append((int(dump.name.rsplit(".", 1)[1]), _figures(figures, misses)))
    totals.sort()
    if len(totals) < len(calls):
        raise SystemExit(f"callgrind wrote {len(totals)} dumps for {len(calls)} rows")
    # One dump per row, in order (the last file is what follows the last row: nothing).
    counted = dict(zip(calls, (total for _, total in totals), strict=False))
    overhead = counted["(eval)"]
    return {
        name: tuple(
            round((figure - empty) / count)
            for figure, empty in zip(counted[name], overhead, strict=True)
        )
        for name, count in calls.items()
        if not name.startswith("(")
    }


def _figures(events: dict[str, int], misses: bool) -> tuple[int, ...]:
    """Instructions, then (``misses``) first-level instruction misses, first-level data misses
    (reads and writes) and last-level misses (instructions and data) of one callgrind dump."""
    ir = events.get("Ir", 0)
    if not misses:
        return (ir,)
    get = events.get
    return (
        ir,
        get("I1mr", 0),
        get("D1mr", 0) + get("D1mw", 0),
        get("ILmr", 0) + get("DLmr", 0) + get("DLmw", 0),
    )


def run_rows(calls_file: str) -> None:
    """What ``--instructions`` runs under valgrind: each row once untimed (warm), the heap
    settled, then once more, counted (inside ``eval``) and dumped after it."""
    # Not the reader's row: onnxruntime under valgrind would take the best part of an hour.
    table = rows(load_matcher(), load_labelled(), with_reader=False)
    counts = {}
    # Two empty rounds first: the first eval's one-time cost, then what an eval costs itself.
    for name, (calls, _) in {"(first)": ([], 0), "(eval)": ([], 0), **table}.items():
        _run(calls)  # warm: right before, as a row before it may have made the words unseen
        gc.collect()
        gc.freeze()
        eval("_run(calls)", {"_run": _run, "calls": calls})  # counted: inside eval only
        math.gcd(0, 0)  # callgrind dumps the row's count here
        counts[name] = len(calls)
    Path(calls_file).write_text(json.dumps(counts))


def _run(calls: list) -> None:
    for fn, arg in calls:
        fn(*arg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--instructions", action="store_true", help="count with callgrind")
    parser.add_argument(
        "--misses", action="store_true", help="with --instructions: also cache misses"
    )
    parser.add_argument("--cost-only", action="store_true", help="skip the quality figures")
    parser.add_argument(
        "--without-reader",
        action="store_true",
        help="the quality figures without the library's neural reader (terms, rules and the "
        "second opinion alone, as with monitoring.reader: false)",
    )
    parser.add_argument("--rows", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rows:
        run_rows(args.rows)
        return
    start = time.perf_counter()
    matcher = load_matcher()
    loaded = time.perf_counter() - start
    items = load_labelled()
    print(
        f"library: {len(matcher.terms)} terms, {len(matcher.cooccurrence)} rules, "
        f"{len(matcher.allows)} allow-phrases, {len(matcher.rules)} context rules, "
        f"{matcher.patterns} patterns; loaded in {loaded * 1000:.0f} ms\n"
    )
    if not args.cost_only:
        if args.without_reader:
            matcher.use_models(True, False)
        quality(matcher, items)
        matcher.use_models(True, True)
    cost(matcher, items, args.rounds, args.instructions, args.misses)


if __name__ == "__main__":
    main()
