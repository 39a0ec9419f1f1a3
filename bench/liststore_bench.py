"""The compiled list store side by side with squidGuard: memory shared by workers, decisions,
compile time and a reload, on the same seeded list and request stream.

    python3 bench/liststore_bench.py --n 1000000                 # 1M domains, 4 workers
    python3 bench/liststore_bench.py --n 5000000 --reload        # 5M, and a reload with 4 workers

One run does, in order:

1. squidGuard (``../shared/bench-anchors/squidguard/run.sh``): generates N domains, a stream
   of M requests and their expected answers, builds its database and decides the stream
   (``--runs`` times): decisions/s, build time, RSS, mismatches.
2. The store is compiled from the same list by ``schoolgate.jobs.listupdate.compile_lists`` (what
   ``schoolgate lists update`` runs) in a fresh process: wall time, peak RSS of the compiler.
3. One worker process maps the store and decides the whole stream with ``Policy.decide``
   (``--runs`` passes): decisions/s, p99 of one decision, mismatches against the labels.
4. ``--workers`` processes each load the policy (mapping the store) and decide the stream once,
   touching the pages as traffic would; then, from ``/proc/PID/smaps_rollup`` and
   ``/proc/PID/smaps``: each worker's private memory (Private_Clean + Private_Dirty) before
   and after loading the lists, and the proportional share (PSS) of the store file summed over
   the workers, which is the store's whole memory, however many workers map it.
5. ``--reload``: the list gets one more domain, the new version is compiled (as ``lists
   update`` does), and every worker reloads its policy in a thread while its main thread
   goes on deciding; total PSS of the workers is sampled before, during and after, and each
   worker reports its slowest decision during the reload and its p99 before it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def smaps_rollup(pid: int | str = "self") -> dict[str, int]:
    """kB figures of /proc/PID/smaps_rollup."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1])
    return out


def mapping_kb(pid: int | str, suffix: str) -> dict[str, int]:
    """Rss and Pss (kB) of the mappings of files whose name ends with ``suffix``."""
    out = {"Rss": 0, "Pss": 0}
    inside = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            first = line.split(" ", 1)[0]
            if "-" in first and not first.endswith(":"):
                inside = line.rstrip().endswith(suffix)
            elif inside and first in ("Rss:", "Pss:"):
                out[first[:-1]] += int(line.split()[1])
    return out


def private_kb(pid: int | str = "self") -> int:
    roll = smaps_rollup(pid)
    return roll["Private_Clean"] + roll["Private_Dirty"]


# -- the worker process ----------------------------------------------------------------------------
def worker(args: argparse.Namespace) -> None:
    """Answers commands on stdin with one JSON line each: load, decide, serve, reload, quit."""
    import engine_bench

    import schoolgate.core.config  # noqa: F401 - the code is loaded before the baseline is taken

    stream_path = args.work / "urls.txt"
    labels = (args.work / "urls.txt.labels").read_text()
    state: dict = {"policy": None}

    def facts():
        # read as a gateway sees requests: one at a time, nothing of the stream kept
        with open(stream_path) as lines:
            for line in lines:
                yield engine_bench.parse_stream_line(line)

    commands = {
        "load": _load,
        "decide": _decide,
        "touch": _touch,
        "reload": _reload_while_serving,
    }
    gc.collect()
    reply(ready=True, private_kb=private_kb())
    for line in sys.stdin:
        name, *rest = line.split()
        if name == "quit":
            return
        reply(**commands[name](state, facts, args, labels, *rest))
        gc.collect()


def reply(**fields) -> None:
    print(json.dumps(fields), flush=True)


def _load(state: dict, facts, args: argparse.Namespace, labels: str) -> dict:
    from schoolgate.core.config import load_policy

    started = time.perf_counter()
    state["policy"] = load_policy(args.config, data_dir=args.data_dir)
    seconds = time.perf_counter() - started
    gc.collect()
    return {"seconds": seconds, "private_kb": private_kb()}


def _decide(state: dict, facts, args: argparse.Namespace, labels: str, runs: str) -> dict:
    decide = state["policy"].decide
    rates, mismatches, samples = [], 0, []
    clock = time.perf_counter_ns
    batch = list(facts())
    for run in range(int(runs)):
        started = time.perf_counter()
        answers = [decide(f).allowed for f in batch]
        rates.append(len(batch) / (time.perf_counter() - started))
        if run == 0:
            mismatches = sum(a != (lab == "0") for a, lab in zip(answers, labels, strict=True))
    for f in batch[:300_000]:
        t0 = clock()
        decide(f)
        samples.append(clock() - t0)
    samples.sort()
    return {
        "rates": rates,
        "mismatches": mismatches,
        "p50_us": samples[len(samples) // 2] / 1000,
        "p99_us": samples[int(len(samples) * 0.99)] / 1000,
    }


def _touch(state: dict, facts, args: argparse.Namespace, labels: str) -> dict:
    """One pass over the stream, as traffic would touch the store's pages."""
    decide = state["policy"].decide
    allowed = sum(1 for f in facts() if decide(f).allowed)
    gc.collect()
    return {"allowed": allowed, "private_kb": private_kb()}


def _reload_while_serving(state: dict, facts, args: argparse.Namespace, labels: str) -> dict:
    """Reload in a thread (as the gateway's holder does) while this thread decides."""
    from schoolgate.core.config import load_policy

    clock = time.perf_counter_ns
    done = threading.Event()
    new: dict = {}

    def reload() -> None:
        new["policy"] = load_policy(args.config, data_dir=args.data_dir)
        done.set()

    before, during = [], []
    policy = state["policy"]
    stream = facts()
    for _ in range(50_000):  # the latency of a decision before the reload
        f = next(stream)
        t0 = clock()
        policy.decide(f)
        before.append(clock() - t0)
    thread = threading.Thread(target=reload)
    started = time.perf_counter()
    thread.start()
    while not done.is_set():
        f = next(stream, None)
        if f is None:
            stream = facts()
            continue
        t0 = clock()
        policy.decide(f)
        during.append(clock() - t0)
    seconds = time.perf_counter() - started
    thread.join()
    state["policy"] = new["policy"]
    del policy
    gc.collect()
    before.sort()
    return {
        "seconds": seconds,
        "decisions_during": len(during),
        "p99_before_us": before[int(len(before) * 0.99)] / 1000,
        "max_before_us": before[-1] / 1000,
        "max_during_us": max(during, default=0) / 1000,
        "p99_during_us": sorted(during)[int(len(during) * 0.99)] / 1000 if during else 0,
        "private_kb": private_kb(),
    }


class Worker:
    def __init__(self, args: argparse.Namespace, label: str) -> None:
        cmd = [sys.executable, __file__, "--role", "worker", "--work", str(args.work)]
        cmd += ["--config", str(args.config), "--data-dir", str(args.data_dir)]
        self.label = label
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ready = self.read()

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"worker {self.label} died")
        return json.loads(line)

    def send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def ask(self, command: str) -> dict:
        self.send(command)
        return self.read()

    def quit(self) -> None:
        self.send("quit")
        self.proc.wait()


def total_pss_kb(workers: list[Worker]) -> int:
    return sum(smaps_rollup(w.proc.pid)["Pss"] for w in workers)


def store_pss_kb(workers: list[Worker]) -> int:
    return sum(mapping_kb(w.proc.pid, ".sgl")["Pss"] for w in workers)


# -- the run ---------------------------------------------------------------------------------------
def small_list_args(args: argparse.Namespace, listed: Path) -> argparse.Namespace:
    """A config like the bench's with the first 1,000 domains of the list only."""
    import engine_bench

    work = args.data_dir.parent / "small"
    (work / "db" / "social").mkdir(parents=True, exist_ok=True)
    with open(listed) as src:
        head = [next(src) for _ in range(1000)]
    (work / "db" / "social" / "domains").write_text("".join(head))
    small = argparse.Namespace(**vars(args))
    small.config = engine_bench.write_config(work, work)
    small.data_dir = work / "var"
    return small


def compile_fresh(args: argparse.Namespace) -> dict:
    """``compile_lists`` in a fresh process (as ``schoolgate lists update`` runs it)."""
    code = (
        "import json, resource, sys, time\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from schoolgate.jobs.listupdate import compile_lists\n"
        "t = time.perf_counter()\n"
        f"compile_lists({str(args.config)!r}, {str(args.data_dir)!r}, progress=False)\n"
        "s = time.perf_counter() - t\n"
        "kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(json.dumps({'seconds': s, 'compiler_maxrss_kb': kids, 'self_maxrss_kb': me}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="listed domains")
    parser.add_argument("--m", type=int, default=1_000_000, help="request lines")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--reload", action="store_true")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--no-squidguard", action="store_true")
    parser.add_argument(
        "--callgrind",
        type=int,
        default=0,
        metavar="K",
        help="also count instructions per decision over the first K requests, again over them,"
        " and over the next K (valgrind)",
    )
    parser.add_argument("--role", default="main", help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--decide", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "worker":
        worker(args)
        return
    if args.role == "count":
        count(args)
        return
    import engine_bench

    args.work = args.work or Path(f"/tmp/sgbench-work-{args.n}")
    args.work.mkdir(parents=True, exist_ok=True)
    squid = None
    if not args.no_squidguard and shutil.which("squidGuard"):
        print(f"squidGuard: N={args.n:,} M={args.m:,} runs={args.runs} ...", flush=True)
        squid = engine_bench.run_squidguard(args.work, args.n, args.m, args.runs)
    else:
        if not args.no_squidguard:
            print("squidGuard not installed (apt-get install -y squidguard): ours only")
        engine_bench.generate_only(args.work, args.n, args.m)
    listed = args.work / "db" / "social" / "domains"
    folder = Path(tempfile.mkdtemp(prefix="liststore-bench-"))
    try:
        args.config = engine_bench.write_config(args.work, folder)
        args.data_dir = folder / "var"
        run(args, squid, listed)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run(args: argparse.Namespace, squid: dict | None, listed: Path) -> None:
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, N={args.n:,}")
    built = compile_fresh(args)
    store_file = next((args.data_dir / "lists").glob("main-*.sgl"))
    size_mb = store_file.stat().st_size / 1e6
    print(
        f"compile: {built['seconds']:.1f} s ({listed.stat().st_size / 1e6:.0f} MB list -> "
        f"{size_mb:.1f} MB store), compiler peak RSS "
        f"{max(built['compiler_maxrss_kb'], built['self_maxrss_kb']) / 1024:.0f} MB"
    )

    one = Worker(args, "decide")
    one.ask("load")
    result = one.ask(f"decide {args.runs}")
    one.quit()
    ours = statistics.median(result["rates"])
    print(
        f"decide: {ours:,.0f} decisions/s (median of {args.runs}: "
        + ", ".join(f"{r:,.0f}" for r in result["rates"])
        + f"), median {result['p50_us']:.2f} us, p99 {result['p99_us']:.2f} us, "
        f"mismatches {result['mismatches']}"
    )

    # The same worker with a 1,000-domain list: what remains of the difference after the same
    # traffic is what the size of the lists costs each worker of its own memory.
    small = Worker(small_list_args(args, listed), "small")
    small.ask("load")
    small_touched = small.ask("touch")["private_kb"] - small.ready["private_kb"]
    small.quit()

    workers = [Worker(args, str(i + 1)) for i in range(args.workers)]
    empty = [w.ready["private_kb"] for w in workers]
    loaded = [w.ask("load") for w in workers]
    for w in workers:
        w.send("touch")
    touched = [w.read() for w in workers]
    pss = total_pss_kb(workers)
    store = store_pss_kb(workers)
    grown = [t["private_kb"] - e for t, e in zip(touched, empty, strict=True)]
    after_load = [x["private_kb"] - e for x, e in zip(loaded, empty, strict=True)]
    for_lists = [g - small_touched for g in grown]
    print(
        f"{args.workers} workers: private memory before loading the lists "
        + ", ".join(f"{e / 1024:.1f}" for e in empty)
        + " MB; growth after loading them "
        + ", ".join(f"{g / 1024:.1f}" for g in after_load)
        + " MB (load "
        + ", ".join(f"{x['seconds']:.2f}" for x in loaded)
        + " s); after deciding the stream once "
        + ", ".join(f"{g / 1024:.1f}" for g in grown)
        + f" MB, against {small_touched / 1024:.1f} MB with a 1,000-domain list"
    )
    print(
        f"{args.workers} workers: private memory for the lists (difference) "
        + ", ".join(f"{g / 1024:.1f}" for g in for_lists)
        + f" MB; store PSS summed {store / 1024:.1f} MB (file {size_mb:.1f} MB); "
        f"store in all {(store + sum(for_lists)) / 1024:.1f} MB; total PSS of the workers "
        f"{pss / 1024:.0f} MB"
    )
    if squid:
        rate = float(squid.get("rate_median", "nan"))
        print(
            f"squidGuard: {rate:,.0f} decisions/s (median), build {squid.get('build_s')} s, "
            f"RSS {int(squid.get('rss_kb', 0)) / 1024:.1f} MB, mismatches "
            f"{squid.get('mismatches')}"
        )
        print(
            f"ratios: decisions/s {ours / rate:.2f}x squidGuard's; compile "
            f"{built['seconds'] / float(squid.get('build_s', 'nan')):.2f}x squidGuard's build; "
            f"store in all over {args.workers} workers "
            f"{(store + sum(for_lists)) / int(squid.get('rss_kb', 1)):.2f}x squidGuard's RSS"
        )
    if args.callgrind:
        instructions(args, squid is not None)
    if args.reload:
        reload(args, workers, listed, store_file)
    for w in workers:
        w.quit()


def count(args: argparse.Namespace) -> None:
    """Under valgrind: parse the first K requests, load the policy, decide them ``--decide``
    times over (0, 1 or 2: the differences are what a first and a later pass cost)."""
    import engine_bench

    from schoolgate.core.config import load_policy

    k = args.callgrind
    with open(args.work / "urls.txt") as lines:
        facts = [engine_bench.parse_stream_line(next(lines)) for _ in range(2 * k)]
    first, others = facts[:k], facts[k:]
    decide = load_policy(args.config, data_dir=args.data_dir).decide
    # --decide 3: the first K once, then the next K requests once (other hosts, nearly all:
    # what a decision costs a worker that is warm but has not met the host lately).
    for batch in [first] * args.decide if args.decide < 3 else [first, others]:
        for f in batch:
            decide(f)


def _collected(cmd: list[str], stdin_path: Path | None = None) -> int:
    full = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *cmd]
    with open(stdin_path or os.devnull) as stdin:
        done = subprocess.run(full, stdin=stdin, capture_output=True, text=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if not found:
        raise SystemExit(f"valgrind failed: {done.stderr[-2000:]}")
    return int(found.group(1))


def instructions(args: argparse.Namespace, with_squidguard: bool) -> None:
    """Instructions per decision, which other work on the machine does not change: a first
    pass over K requests (every client address and host new to the caches) and a second."""
    k = args.callgrind
    ours = [
        sys.executable, __file__, "--role", "count", "--work", str(args.work), "--config",
        str(args.config), "--data-dir", str(args.data_dir), "--callgrind", str(k),
    ]  # fmt: skip
    c0, c1, c2, c3 = (_collected([*ours, "--decide", str(passes)]) for passes in (0, 1, 2, 3))
    print(
        f"instructions per decision (callgrind, {k:,} requests): schoolgate first pass "
        f"{(c1 - c0) / k:,.0f}, second pass {(c2 - c1) / k:,.0f}, "
        f"the next {k:,} requests after the first pass {(c3 - c1) / k:,.0f}"
    )
    if with_squidguard:
        lines = []
        with open(args.work / "urls.txt") as src:
            lines = [next(src) for _ in range(2 * k)]
        once, twice = args.work / f"urls-head-{k}.txt", args.work / f"urls-head-{k}-x2.txt"
        both = args.work / f"urls-head-{2 * k}.txt"
        once.write_text("".join(lines[:k]))
        twice.write_text("".join(lines[:k]) * 2)
        both.write_text("".join(lines))
        conf = str(args.work / "squidGuard.conf")
        sg = ["squidGuard", "-c", conf, "-t", "2024-06-03T10:00:00"]
        s0, s1, s2 = _collected(sg), _collected(sg, once), _collected(sg, twice)
        s3 = _collected(sg, both)
        print(
            f"instructions per decision (callgrind, {k:,} requests): squidGuard first pass "
            f"{(s1 - s0) / k:,.0f}, second pass {(s2 - s1) / k:,.0f}, the next {k:,} "
            f"requests after the first pass {(s3 - s1) / k:,.0f} (its reading and "
            "writing of the lines included; the kernel's part of its I/O is not counted)"
        )


def reload(args: argparse.Namespace, workers: list[Worker], listed: Path, old: Path) -> None:

    size = listed.stat().st_size
    with open(listed, "a") as f:
        f.write("reload-bench-added.example\n")
    try:
        reload_workers(args, workers, old)
    finally:
        os.truncate(listed, size)  # the generator's list again, for the next run


def reload_workers(args: argparse.Namespace, workers: list[Worker], old: Path) -> None:
    from schoolgate.core.liststore import remove_unused

    built = compile_fresh(args)
    new = max((args.data_dir / "lists").glob("main-*.sgl"), key=lambda p: p.stat().st_mtime)
    new_mb = new.stat().st_size / 1e6
    before = total_pss_kb(workers)
    for w in workers:
        w.send("reload")
    peak = before
    replies: list[dict] = []
    pending = list(workers)
    while pending:  # each worker replies when its reload is done
        peak = max(peak, total_pss_kb(workers))
        ready, _, _ = select.select([w.proc.stdout for w in pending], [], [], 0.02)
        for w in [w for w in pending if w.proc.stdout in ready]:
            replies.append(w.read())
            pending.remove(w)
    after = total_pss_kb(workers)
    print(
        f"reload: new version compiled in {built['seconds']:.1f} s ({new_mb:.1f} MB); "
        f"total PSS of {len(workers)} workers {before / 1024:.0f} MB before, peak "
        f"{peak / 1024:.0f} MB (+{(peak - before) / 1024:.0f} MB), {after / 1024:.0f} MB after"
    )
    for i, r in enumerate(replies, 1):
        print(
            f"  worker {i}: reload {r['seconds']:.2f} s, {r['decisions_during']:,} decisions "
            f"meanwhile, slowest {r['max_during_us']:.0f} us, p99 {r['p99_during_us']:.1f} us "
            f"(before: p99 {r['p99_before_us']:.1f} us, slowest {r['max_before_us']:.0f} us)"
        )
    removed, in_use = remove_unused(args.data_dir)
    print(
        f"old version: removed {removed} file(s) no worker maps, {in_use} in use; old file "
        f"on disk: {old.exists()}"
    )


if __name__ == "__main__":
    main()
