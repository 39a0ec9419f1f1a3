"""Throughput of ``schoolgate run --workers N`` against one worker, through the real gateway.

    python3 bench/workers_bench.py [--workers N] [--seconds 10] [--concurrency 32]
                                   [--targets allowed,blocked]

Needs ``hey`` (Debian: ``apt-get install -y hey``). For each target (``allowed``: a page of a
local origin server, proxied; ``blocked``: a social-media URL the gateway answers itself with
its block page, no upstream) and each load (``new-conn``: a new TCP connection per request,
``hey -disable-keepalive``; ``keep-alive``: ``--concurrency`` HTTP/1.1 connections reused), it
runs ``schoolgate run --quiet`` with one worker, then with N (default: one per core), and
prints requests/s, the CPU each process used (every worker, the supervisor, ``hey``, the
origin) and the scaling ratio ``N workers / (N x one worker)`` against the 0.9 target.

The load generator and the origin run on the same machine and take CPU from the workers: on a
host with few cores the ratio measures the machine, not the gateway. The figures that count
come from a gateway host with its own cores and the load from other machines; here, read the
CPU columns: with N workers each should be as busy as the one worker was.

Keep-alive connections stay on the worker that accepted them; the kernel spreads connections
by a hash of their addresses, so with few connections one worker can get more than its share
(the per-worker CPU shows it). A long ``new-conn`` run opens tens of thousands of
connections: if ``hey`` reports errors, the client ports may be exhausted (TIME_WAIT).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_bench import Origin, cpu_seconds, free_port, wait_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.9


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def listeners(port: int) -> int:
    """Listening TCP sockets on ``port`` (one per worker with SO_REUSEPORT)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":
                count += 1
    return count


def machine_busy() -> float:
    """CPU seconds all cores spent busy so far (everything on the machine, kernel included)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def hey(url: str, proxy: str, seconds: float, concurrency: int, keepalive: bool) -> dict:
    """One ``hey`` run: requests/s, status codes, errors, and hey's own CPU seconds."""
    cmd = ["hey", "-z", f"{seconds}s", "-c", str(concurrency), "-x", proxy]
    if not keepalive:
        cmd.append("-disable-keepalive")
    proc = subprocess.Popen(
        [*cmd, url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"hey failed ({proc.returncode}):\n{out}")
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    codes = dict(re.findall(r"\[(\d{3})\]\s+(\d+) responses", out))
    errors = re.search(r"Error distribution:\n((?:.+\n?)+)", out)
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "codes": codes,
        "errors": errors.group(1).strip() if errors else "",
        "cpu": usage.ru_utime + usage.ru_stime,
    }


class Gateway:
    def __init__(self, workers: int, conf: Path, data_dir: Path) -> None:
        self.workers = workers
        self.port = free_port()
        self.proxy = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "schoolgate.cli", "run", "--quiet"]
            + ["--config", str(conf), "--data-dir", str(data_dir)]
            + ["--listen-host", "127.0.0.1", "--listen-port", str(self.port)]
            + ["--workers", str(workers)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
        )
        wait_port(self.port, self.proc)
        deadline = time.monotonic() + 60
        while listeners(self.port) < workers:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise SystemExit(f"{workers} workers did not all listen on {self.port}")
            time.sleep(0.1)

    def serving_pids(self) -> list[int]:
        """The processes that serve: the workers (or the one process)."""
        return children(self.proc.pid) if self.workers > 1 else [self.proc.pid]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def measure(gateway: Gateway, url: str, args, keepalive: bool) -> dict:
    hey(url, gateway.proxy, args.warmup, args.concurrency, keepalive)
    pids = gateway.serving_pids()
    before = {pid: cpu_seconds(pid) for pid in [*pids, gateway.proc.pid]}
    origin_before, busy_before = time.process_time(), machine_busy()
    started = time.monotonic()
    result = hey(url, gateway.proxy, args.seconds, args.concurrency, keepalive)
    result["wall"] = time.monotonic() - started
    result["origin_cpu"] = time.process_time() - origin_before
    result["machine_cpu"] = machine_busy() - busy_before
    result["worker_cpu"] = [cpu_seconds(pid) - before[pid] for pid in pids]
    result["supervisor_cpu"] = (
        cpu_seconds(gateway.proc.pid) - before[gateway.proc.pid] if gateway.workers > 1 else 0.0
    )
    return result


def us_per_request(result: dict) -> float:
    """The workers' CPU per answered request: what scaling cannot improve, and steadier than
    req/s when other load shares the machine."""
    requests = sum(int(n) for n in result["codes"].values())
    return sum(result["worker_cpu"]) / max(requests, 1) * 1e6


def show(label: str, result: dict) -> None:
    seconds = result["wall"]  # hey's run with its start and exit: what the CPU figures cover
    workers = " ".join(f"{cpu / seconds * 100:3.0f}%" for cpu in result["worker_cpu"])
    line = (
        f"  {label:<12} {result['rps']:>9.1f} req/s  {us_per_request(result):5.0f} us CPU/req"
        f"   CPU: workers [{workers}]"
        f"  supervisor {result['supervisor_cpu'] / seconds * 100:3.0f}%"
        f"  hey {result['cpu'] / seconds * 100:3.0f}%"
        f"  origin+bench {result['origin_cpu'] / seconds * 100:3.0f}%"
        f"  machine {result['machine_cpu'] / seconds * 100:3.0f}%   {result['codes']}"
    )
    print(line, flush=True)
    if result["errors"]:
        print(f"    hey errors: {result['errors'][:300]}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=cores(), help="N (default: cores)")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--targets", default="allowed,blocked")
    args = parser.parse_args()
    if not shutil.which("hey"):
        print("bench needs hey: apt-get install -y hey", file=sys.stderr)
        return 2
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    origin = ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    origin.daemon_threads = True
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    urls = {
        "allowed": f"http://127.0.0.1:{origin.server_address[1]}/page",
        "blocked": "http://social.test/feed",
    }
    n = args.workers
    print(
        f"{cores()} cores; N = {n} workers; hey -c {args.concurrency}, {args.seconds:g}s per "
        f"run after {args.warmup:g}s warm-up.\nCaveat: hey and the origin share these cores with "
        "the workers; on a small machine the ratio measures the machine, not the gateway "
        "(CPU as % of one core over the run; 'machine' is every process and the kernel, "
        f"out of {cores() * 100}%: more than the others add up to is someone else's load).",
        flush=True,
    )
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "config"
        shutil.copytree(ROOT / "tests" / "data" / "gateway", conf)
        for target in targets:
            for load, keepalive in (("new-conn", False), ("keep-alive", True)):
                print(f"{target}, {load} ({urls[target]}):", flush=True)
                rps, cost = {}, {}
                for workers in (1, n):
                    gateway = Gateway(workers, conf / "config.yaml", Path(tmp) / "var")
                    try:
                        result = measure(gateway, urls[target], args, keepalive)
                    finally:
                        gateway.stop()
                    rps[workers], cost[workers] = result["rps"], us_per_request(result)
                    show(f"{workers} worker{'s' if workers > 1 else ''}", result)
                ratio = rps[n] / (n * rps[1]) if rps[1] else 0.0
                ratios.append((f"{target}, {load}", ratio))
                verdict = "meets" if ratio >= TARGET else "below"
                print(
                    f"  ratio {n} workers / ({n} x 1 worker) = {ratio:.2f} "
                    f"({verdict} the {TARGET} target); CPU per request {n} workers / 1 worker"
                    f" = {cost[n] / cost[1] if cost[1] else 0:.2f}",
                    flush=True,
                )
    origin.shutdown()
    print("summary: " + "; ".join(f"{label} {ratio:.2f}" for label, ratio in ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
