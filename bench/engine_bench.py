"""Decision engine benchmark, side by side with squidGuard on the same list and request stream.

    python3 bench/engine_bench.py                 # 1M domains, 1M requests, squidGuard too
    python3 bench/engine_bench.py --n 100000 --m 200000 --no-squidguard

It runs ../shared/bench-anchors/squidguard/run.sh (which generates a seeded list of N domains,
a stream of M request lines and the expected answers, builds squidGuard's database and times
squidGuard), then loads the same list into schoolgate's policy (a student network, the shipped
timetable, a block rule for the category in lessons), decides every line of the same stream at
a lesson time, checks every answer against the same labels, and prints: load time, memory,
decisions per second, the median and p99 latency of one decision, and squidGuard's rate, the
ratio and the mismatches of both. Install squidGuard with `apt-get install -y squidguard`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
# shared/ beside the checkout (or beside the folder of worktrees that holds it)
ANCHOR = next(
    (
        folder / "shared" / "bench-anchors" / "squidguard"
        for folder in (ROOT.parent, ROOT.parent.parent)
        if (folder / "shared" / "bench-anchors").is_dir()
    ),
    ROOT.parent / "shared" / "bench-anchors" / "squidguard",
)
sys.path.insert(0, str(ROOT))

from schoolgate.core.config import load_policy  # noqa: E402
from schoolgate.core.model import RequestFacts  # noqa: E402

LESSON = datetime(2026, 11, 24, 10, 30, tzinfo=ZoneInfo("Europe/London"))  # a Tuesday, P2


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MB."""
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def inputs_ready(work: Path, n: int, m: int) -> bool:
    """Whether ``work`` already holds the generator's output for these sizes (same seed)."""
    try:
        meta = json.loads((work / "urls.txt.meta.json").read_text())
    except (OSError, ValueError):
        return False
    return (
        meta.get("synthetic_domains") == n
        and meta.get("urls") == m
        and meta.get("seed") == 20240601
        and (work / "db" / "social" / "domains").is_file()
    )


def run_squidguard(work: Path, n: int, m: int, runs: int) -> dict[str, str]:
    env = dict(
        os.environ,
        SGBENCH_WORK=str(work),
        N=str(n),
        M=str(m),
        RUNS=str(runs),
        TIMEMODE="emulate",
        CONTROL="0",
        SKIP_GEN="1" if inputs_ready(work, n, m) else "0",
    )
    done = subprocess.run(["bash", str(ANCHOR / "run.sh")], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"squidGuard run failed:\n{done.stdout}\n{done.stderr}")
    results = (work / "results.txt").read_text()
    out = {}
    summary = re.search(r"summary\tlines_per_s min=(\d+) median=(\d+) max=(\d+)", results)
    if summary:
        out["rate_median"] = summary.group(2)
    mism = re.findall(r"mismatch=(\d+)", results)
    out["mismatches"] = str(max(int(x) for x in mism)) if mism else "?"
    build = re.search(r"build\twall_s=([\d.]+)\tmaxrss_kb=(\d+)", results)
    if build:
        out["build_s"], out["build_rss_kb"] = build.group(1), build.group(2)
    rss = re.findall(r"run\d\t.*?maxrss_kb=(\d+)", results)
    if rss:
        out["rss_kb"] = rss[0]
    return out


def generate_only(work: Path, n: int, m: int) -> None:
    if inputs_ready(work, n, m):
        return
    (work / "db").mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            str(ANCHOR / "gen.py"),
            "--domains",
            str(n),
            "--urls",
            str(m),
            "--seed",
            "20240601",
            "--dbdir",
            str(work / "db"),
            "--out",
            str(work / "urls.txt"),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def write_config(work: Path, folder: Path) -> Path:
    config = folder / "bench_config.yaml"
    config.write_text(f"""\
database: {{url: "sqlite:///{folder}/bench.db"}}
roles:
  student: {{}}
  staff: {{}}
identity:
  networks: [{{cidr: 10.20.0.0/16, role: student}}]
sites:
  main: {{timetable: {ROOT / "schedules" / "default.yaml"}}}
categories:
  social: {{lists: [{work / "db" / "social" / "domains"}], format: domains}}
rules:
  - {{roles: [student], windows: [lesson, registration], categories: [social], action: block}}
  - {{roles: "*", windows: "*", categories: [social], action: allow}}
""")
    return config


def parse_stream_line(line: str) -> RequestFacts:
    """One line of the anchor's stream (``URL client/fqdn ident method ...``) as facts."""
    url, src, _ident, method = line.split(" ", 4)[:4]
    ip = src.split("/", 1)[0]
    if method == "CONNECT":
        host = url.rsplit(":", 1)[0]
        return RequestFacts(
            host=host, at=LESSON, path=None, method=None, port=443, scheme="https", client_ip=ip
        )
    rest = url.split("://", 1)[1]
    slash = rest.find("/")
    host, path = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
    return RequestFacts(
        host=host, at=LESSON, path=path, method=method, port=80, scheme="http", client_ip=ip
    )


def parse_stream(path: Path) -> list[RequestFacts]:
    with open(path) as stream:
        return [parse_stream_line(line) for line in stream]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="listed domains")
    parser.add_argument("--m", type=int, default=1_000_000, help="request lines")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/sgbench-work"))
    parser.add_argument("--no-squidguard", action="store_true")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    squid = None
    if not args.no_squidguard and shutil.which("squidGuard"):
        print(f"squidGuard: N={args.n} M={args.m} runs={args.runs} ...", flush=True)
        squid = run_squidguard(args.work, args.n, args.m, args.runs)
    else:
        if not args.no_squidguard:
            print("squidGuard not installed (apt-get install -y squidguard): ours only")
        generate_only(args.work, args.n, args.m)

    # The policy is loaded first, so the process's memory then is what a gateway holds.
    gc.collect()
    base_rss, _ = rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        config = write_config(args.work, Path(tmp))
        started = time.perf_counter()
        policy = load_policy(config, data_dir=Path(tmp))
        load_s = time.perf_counter() - started
    gc.collect()
    loaded_rss, peak_rss = rss_mb()
    decide = policy.decide
    labels = (args.work / "urls.txt.labels").read_text()
    stream = parse_stream(args.work / "urls.txt")

    # Throughput: every line, answers checked against the generator's labels.
    rates = []
    mismatches = 0
    for run in range(args.runs):
        started = time.perf_counter()
        answers = [decide(f).allowed for f in stream]
        elapsed = time.perf_counter() - started
        rates.append(len(stream) / elapsed)
        if run == 0:
            mismatches = sum(
                1
                for allowed, label in zip(answers, labels, strict=True)
                if allowed != (label == "0")
            )
        del answers
    # Latency of one decision, measured one at a time over the stream.
    clock = time.perf_counter_ns
    samples = []
    for f in stream[: min(len(stream), 300_000)]:
        t0 = clock()
        decide(f)
        samples.append(clock() - t0)
    samples.sort()
    median_us = statistics.median(samples) / 1000
    p99_us = samples[int(len(samples) * 0.99)] / 1000

    ours = statistics.median(rates)
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    print(f"lists: {policy.matcher.stats()}")
    print(
        f"schoolgate load:   {load_s:.2f} s, memory for the policy "
        f"{loaded_rss - base_rss:.0f} MB (process RSS {loaded_rss:.0f} MB, peak "
        f"{peak_rss:.0f} MB)"
    )
    print(
        f"schoolgate decide: {ours:,.0f} decisions/s (median of {args.runs}; runs: "
        + ", ".join(f"{r:,.0f}" for r in rates)
        + ")"
    )
    print(f"schoolgate latency: median {median_us:.2f} us, p99 {p99_us:.2f} us per decision")
    print(f"schoolgate mismatches: {mismatches} of {len(stream):,}")
    if squid:
        rate = float(squid.get("rate_median", "nan"))
        print(
            f"squidGuard: {rate:,.0f} decisions/s (median), build {squid.get('build_s')} s, "
            f"RSS {int(squid.get('rss_kb', 0)) / 1024:.0f} MB, mismatches "
            f"{squid.get('mismatches')}"
        )
        print(f"ratio schoolgate/squidGuard: {ours / rate:.2f}")


if __name__ == "__main__":
    main()
