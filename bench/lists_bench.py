#!/usr/bin/env python3
"""Benchmark schoolgate.core.lists on a 1M-domain squidGuard list and a request stream.

By default it runs the squidGuard anchor's seeded generator
(``/work/shared/bench-anchors/squidguard/gen.py``, beside the checkout as ``../shared``) into a
work folder, so the inputs are byte-identical to the ones squidGuard is timed on; ``--dbdir``
and ``--stream`` reuse inputs already generated (e.g. by the anchor's ``run.sh``).

Prints: list load time (parse + build), process RSS after loading (and peak), lookups/s over
the stream (75% URLs, 25% CONNECT host-only), median and p99 time of one lookup, the cost
of a 3-label host lookup, and mismatches against the generator's labels.

    python3 bench/lists_bench.py                       # 1M domains, 1M requests, seed 20240601
    python3 bench/lists_bench.py --domains 100000 --urls 200000
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from schoolgate.core.configfile import Issues  # noqa: E402
from schoolgate.core.lists import Matcher, parse_list  # noqa: E402

GEN = ROOT.parent / "shared" / "bench-anchors" / "squidguard" / "gen.py"


def rss_kb(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def read_stream(path: Path) -> list[tuple[str, str | None]]:
    """``http://host/path?q ...`` -> (host, path); ``host:443 ... CONNECT`` -> (host, None)."""
    out: list[tuple[str, str | None]] = []
    with open(path) as f:
        for line in f:
            url = line.split(" ", 1)[0]
            if url.startswith("http://"):
                rest = url[7:]
                slash = rest.find("/")
                if slash < 0:
                    out.append((rest, "/"))
                else:
                    out.append((rest[:slash], rest[slash:]))
            else:
                out.append((url.rsplit(":", 1)[0], None))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--domains", type=int, default=1_000_000)
    ap.add_argument("--urls", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--work", default=os.environ.get("LISTS_BENCH_WORK", "/tmp/lists-bench"))
    ap.add_argument("--dbdir", help="existing squidGuard db dir (list at DBDIR/social/domains)")
    ap.add_argument("--stream", help="existing request stream (with STREAM.labels)")
    ap.add_argument("--samples", type=int, default=200_000, help="lookups timed one by one")
    a = ap.parse_args()

    if a.dbdir and a.stream:
        dbdir, stream = Path(a.dbdir), Path(a.stream)
    else:
        work = Path(a.work) / f"n{a.domains}-m{a.urls}-s{a.seed}"
        dbdir, stream = work / "db", work / "urls.txt"
        if not (dbdir / "social" / "domains").exists() or not stream.exists():
            work.mkdir(parents=True, exist_ok=True)
            cmd = [
                sys.executable,
                str(GEN),
                "--domains",
                str(a.domains),
                "--urls",
                str(a.urls),
                "--seed",
                str(a.seed),
                "--dbdir",
                str(dbdir),
                "--out",
                str(stream),
            ]
            print("generating:", " ".join(cmd), file=sys.stderr)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    listfile = dbdir / "social" / "domains"

    gc.collect()
    rss0 = rss_kb()
    issues = Issues()
    t0 = time.perf_counter()
    parsed = parse_list(listfile, issues, fmt="squidguard", display_path="social/domains")
    t1 = time.perf_counter()
    matcher = Matcher.build([("social", [parsed])])
    t2 = time.perf_counter()
    rss1 = rss_kb()
    print(f"list          {listfile} ({listfile.stat().st_size / 1e6:.1f} MB)")
    print(f"entries       {matcher.stats()}  skipped={parsed.skipped} issues={len(issues)}")
    print(f"load          parse {t1 - t0:.2f} s + build {t2 - t1:.2f} s = {t2 - t0:.2f} s")
    print(
        f"rss           {rss1 / 1024:.0f} MB after load (interpreter before: {rss0 / 1024:.0f} MB;"
        f" peak {rss_kb('VmHWM') / 1024:.0f} MB)"
    )

    requests = read_stream(stream)
    labels_path = Path(str(stream) + ".labels")
    labels = labels_path.read_text() if labels_path.exists() else None

    lookup = matcher.lookup
    gc.disable()
    t0 = time.perf_counter()
    results = [lookup(h, p) for h, p in requests]
    t1 = time.perf_counter()
    gc.enable()
    n = len(requests)
    blocked = sum(r is not None for r in results)
    print(
        f"stream        {n} lookups in {t1 - t0:.2f} s = {n / (t1 - t0):,.0f} lookups/s;"
        f" blocked {blocked} ({blocked / n:.1%})"
    )
    if labels is not None:
        mism = sum((r is not None) != (lab == "1") for r, lab in zip(results, labels, strict=False))
        print(f"mismatches    {mism} against {labels_path.name}")

    # one by one, for the distribution (perf_counter_ns overhead is subtracted)
    sample = requests[: a.samples]
    clock = time.perf_counter_ns
    overhead = min(-(clock() - clock()) for _ in range(10000))
    times = []
    gc.disable()
    for h, p in sample:
        s = clock()
        lookup(h, p)
        times.append(clock() - s - overhead)
    gc.enable()
    times.sort()
    med = statistics.median(times) / 1000
    p99 = times[int(len(times) * 0.99)] / 1000
    print(
        f"per lookup    median {med:.2f} us, p99 {p99:.2f} us, max {times[-1] / 1000:.1f} us"
        f" (n={len(times)}, timer overhead {overhead} ns subtracted)"
    )

    for host, path in (
        ("www.example-not-listed.com", "/index.html"),
        ("www.facebook.com", "/"),
        ("www.example-not-listed.com", None),
    ):
        reps = 1_000_000
        t0 = time.perf_counter()
        for _ in range(reps):
            lookup(host, path)
        dt = (time.perf_counter() - t0) / reps * 1e6
        print(f"3-label host  {host} path={path!r}: {dt:.2f} us per lookup (loop included)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
