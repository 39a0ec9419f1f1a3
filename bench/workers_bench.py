"""Throughput of ``schoolgate run --workers N`` against one worker, through the real gateway.

    python3 bench/workers_bench.py [--workers N] [--seconds 10] [--concurrency 32]
                                   [--targets allowed,blocked] [--client wrk|hey]
                                   [--origin nginx|python] [--method both|open|confined]
                                   [--rounds 3] [--loads new-conn,keep-alive]
                                   [--no-pin | --compare-pinning | --steer |
                                    --compare-steering]

For each target (``allowed``: a page of a local origin server, proxied; ``blocked``: a
social-media URL the gateway answers itself with its block page, no upstream) and each load
(``new-conn``: a new TCP connection per request; ``keep-alive``: ``--concurrency`` HTTP/1.1
connections reused), it runs ``schoolgate run --quiet`` with one worker and with N (default:
one per core), taking turns for ``--rounds`` rounds with fresh processes each time (a
process's speed differs by a few percent from one start to the next), and prints requests/s,
the CPU each process used (every worker, the supervisor, the load generator, the origin) and
the scaling ratio ``N workers / (N x one worker)`` of the medians against the 0.9 target.

The load generator and the origin run on the same machine and take CPU from the workers. Two
ways to run them (``--method``, default both):

* ``open``: they run on any core. One worker then has a core to itself and the load on
  another, while N workers on N cores share them with it: the ratio is biased low by the
  share of the machine the load takes (most on a small machine);
* ``confined``: everything (workers, load generator, origin and the kernel's work for them)
  runs on the cores given to the workers, one core for one worker and N for N (``taskset``),
  so that both runs lose the same share of their cores to the load: the ratio then shows
  what the workers themselves lose by running side by side.

By default they are also the lightest there are: ``wrk`` (Debian: ``apt-get install -y wrk``;
``Connection: close`` for new connections) and an ``nginx`` origin (``apt-get install -y
nginx-light``), each a few percent of a core at these rates. Without them (or with
``--client hey --origin python``) it falls back to ``hey`` and a Python origin, which on a
two-core machine take a third of a core or more: then the ratio measures the machine, not the
gateway. Read the CPU columns: with N workers each should be as busy as the one worker was.

The workers run as ``schoolgate run`` runs them by default: each kept on a core of its own
(``--pin-workers``, when there are as many cores as workers). ``--no-pin`` runs them with
``--no-pin-workers`` instead, free to move between cores; ``--compare-pinning`` runs N
workers both ways in every round (the three runs of a round taking turns to go first) and
prints the pinned / free ratio round by round, the measure of what pinning gives that the
machine's drift from one minute to the next disturbs least. ``--steer`` runs the N workers
with ``--steer-connections`` (each connection to the worker on the core that received it);
``--compare-steering`` runs N workers steered and by hash in every round and prints the
steered / hash ratio round by round. Steering can only spread connections that are
received on every core: on loopback that is the core of the client that opens them, so with
either option the client runs as one process per core of the run (one for one worker), each
kept on its core with a share of the ``--concurrency`` connections, for every run of the
comparison.

Keep-alive connections stay on the worker that accepted them; the kernel spreads connections
by a hash of their addresses, so with few connections one worker can get more than its share
(the per-worker CPU shows it). A long ``new-conn`` run opens tens of thousands of
connections: if the client reports errors, the client ports may be exhausted (TIME_WAIT).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from http.server import ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_bench import (  # noqa: E402
    Origin,
    copy_test_config,
    cpu_seconds,
    free_port,
    stop_process,
    wait_port,
)

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.9
ALL_CPUS = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set()
METHODS = {
    "open": "the load generator and origin free to run on any core",
    "confined": "the load generator and origin confined to the workers' cores",
}


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


def confine(pids: list[int], cpus: set[int] | None) -> None:
    """Every thread of these processes onto ``cpus`` (None: every CPU this script may use).
    Threads made later inherit it from the thread that makes them."""
    allowed = cpus if cpus is not None else ALL_CPUS
    for pid in pids:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            tids = [pid]
        for tid in tids:
            try:
                os.sched_setaffinity(tid, allowed)
            except OSError:  # the thread ended meanwhile
                pass


def pinned(cmd: list[str], cpus: set[int] | None) -> list[str]:
    if cpus is None:
        return cmd
    return ["taskset", "-c", ",".join(str(c) for c in sorted(cpus)), *cmd]


def machine_busy() -> float:
    """CPU seconds all cores spent busy so far (everything on the machine, kernel included)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def hey(url: str, proxy: str, seconds: float, concurrency: int, keepalive: bool, cpus=None) -> dict:
    """One ``hey`` run: requests/s, status codes, errors, and hey's own CPU seconds."""
    cmd = ["hey", "-z", f"{seconds}s", "-c", str(concurrency), "-x", proxy]
    if not keepalive:
        cmd.append("-disable-keepalive")
    proc = subprocess.Popen(
        pinned([*cmd, url], cpus), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
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


WRK_SCRIPT = """
local target = os.getenv("SCHOOLGATE_BENCH_TARGET")
wrk.headers["Host"] = target:match("^https?://([^/]+)")
request = function() return wrk.format("GET", target) end
"""


def wrk(url: str, proxy: str, seconds: float, concurrency: int, keepalive: bool, cpus=None) -> dict:
    """One ``wrk`` run through the proxy (absolute-form requests, as a browser sends to an
    explicit proxy): requests/s, answers by class, errors, and wrk's own CPU seconds."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT)
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "-s", script.name]
    if not keepalive:
        cmd += ["-H", "Connection: close"]
    env = dict(os.environ, SCHOOLGATE_BENCH_TARGET=url)
    try:
        proc = subprocess.Popen(
            pinned([*cmd, proxy], cpus),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        os.unlink(script.name)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"wrk failed:\n{out}")
    total = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    other = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: .*", out)
    requests = int(total.group(1)) if total else 0
    not_ok = int(other.group(1)) if other else 0
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "codes": {"2xx/3xx": requests - not_ok, "other": not_ok},
        "errors": errors.group(0) if errors else "",
        "cpu": usage.ru_utime + usage.ru_stime,
    }


NGINX_CONF = """
daemon off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {folder}; proxy_temp_path {folder}; fastcgi_temp_path {folder};
    uwsgi_temp_path {folder}; scgi_temp_path {folder};
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        location / {{ default_type text/plain; return 200 "hello from the origin\\n"; }}
    }}
}}
"""


class NginxOrigin:
    """An nginx origin on loopback (one worker process): a few microseconds a request."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = folder / "nginx.conf"
        conf.write_text(NGINX_CONF.format(folder=folder, port=self.port))
        self.proc = subprocess.Popen(
            [shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(conf), "-p", str(folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, self.proc)

    def pids(self) -> list[int]:
        return [self.proc.pid, *children(self.proc.pid)]

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class PythonOrigin:
    """The Python origin of gateway_bench, in this process (its CPU is this process's)."""

    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Origin)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def pids(self) -> list[int]:
        return [os.getpid()]

    def cpu(self) -> float:
        return time.process_time()

    def stop(self) -> None:
        self.server.shutdown()


class Gateway:
    def __init__(
        self,
        workers: int,
        conf: Path,
        data_dir: Path,
        cpus: set[int] | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        self.workers = workers
        self.port = free_port()
        self.proxy = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            pinned(
                [sys.executable, "-m", "schoolgate.cli", "run", "--quiet"]
                + ["--config", str(conf), "--data-dir", str(data_dir)]
                + ["--listen-host", "127.0.0.1", "--listen-port", str(self.port)]
                + ["--workers", str(workers), *extra],
                cpus,
            ),
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
        stop_process(self.proc, 60)


def on_each_core(client, cores: Sequence[int]):
    """``client`` run as one process per core, each kept on its core with a share of the
    connections, all at once; their figures added up. A connection is received on the core
    of the process that opens it (loopback), so this is how steering by core can be measured
    here: one client process left to the scheduler may open every connection from one core
    (and with keep-alive hand them all to one worker for the whole run)."""

    def run(url, proxy, seconds, concurrency, keepalive, cpus=None) -> dict:
        shares = [
            concurrency // len(cores) + (i < concurrency % len(cores)) for i in range(len(cores))
        ]
        results: list[dict] = [{} for _ in cores]

        def one(i: int) -> None:
            results[i] = client(url, proxy, seconds, max(1, shares[i]), keepalive, {cores[i]})

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(cores))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if any(not result for result in results):
            raise SystemExit(f"{CLIENT} failed on a core")
        codes: dict[str, int] = {}
        for result in results:
            for code, count in result["codes"].items():
                codes[code] = codes.get(code, 0) + int(count)
        return {
            "rps": sum(r["rps"] for r in results),
            "codes": codes,
            "errors": "; ".join(r["errors"] for r in results if r["errors"]),
            "cpu": sum(r["cpu"] for r in results),
        }

    return run


def measure(
    gateway: Gateway,
    url: str,
    args,
    keepalive: bool,
    origin,
    cpus: set[int] | None = None,
    client_cores: Sequence[int] = (),
) -> dict:
    client = wrk if args.client == "wrk" else hey
    if client_cores:
        client = on_each_core(client, client_cores)
    client(url, gateway.proxy, args.warmup, args.concurrency, keepalive, cpus)
    pids = gateway.serving_pids()
    before = {pid: cpu_seconds(pid) for pid in [*pids, gateway.proc.pid]}
    origin_before, busy_before = origin.cpu(), machine_busy()
    started = time.monotonic()
    result = client(url, gateway.proxy, args.seconds, args.concurrency, keepalive, cpus)
    result["wall"] = time.monotonic() - started
    result["origin_cpu"] = origin.cpu() - origin_before
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
        f"  {label:<20} {result['rps']:>9.1f} req/s  {us_per_request(result):5.0f} us CPU/req"
        f"   CPU: workers [{workers}]"
        f"  supervisor {result['supervisor_cpu'] / seconds * 100:3.0f}%"
        f"  {CLIENT} {result['cpu'] / seconds * 100:3.0f}%"
        f"  origin {result['origin_cpu'] / seconds * 100:3.0f}%"
        f"  machine {result['machine_cpu'] / seconds * 100:3.0f}%   {result['codes']}"
    )
    print(line, flush=True)
    if result["errors"]:
        print(f"    {CLIENT} errors: {result['errors'][:300]}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=cores(), help="N (default: cores)")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="runs of each worker count, taking turns, each with fresh processes; the ratio "
        "is of the medians (default 3)",
    )
    parser.add_argument("--targets", default="allowed,blocked")
    parser.add_argument(
        "--loads", default="new-conn,keep-alive", help="new-conn, keep-alive or both (default)"
    )
    pinning = parser.add_mutually_exclusive_group()
    pinning.add_argument(
        "--no-pin",
        action="store_true",
        help="run the workers with --no-pin-workers (free to move between cores)",
    )
    pinning.add_argument(
        "--compare-pinning",
        action="store_true",
        help="in each round also run N workers with --no-pin-workers, and compare",
    )
    pinning.add_argument(
        "--steer",
        action="store_true",
        help="run the workers with --steer-connections (and a client process on each core)",
    )
    pinning.add_argument(
        "--compare-steering",
        action="store_true",
        help="in each round run N workers both by hash and with --steer-connections, and "
        "compare (a client process on each core in every run)",
    )
    parser.add_argument(
        "--client",
        choices=("wrk", "hey"),
        default="wrk" if shutil.which("wrk") else "hey",
        help="load generator (default: wrk if installed)",
    )
    parser.add_argument(
        "--origin",
        choices=("nginx", "python"),
        default="nginx" if shutil.which("nginx") or Path("/usr/sbin/nginx").exists() else "python",
        help="origin server (default: nginx if installed)",
    )
    parser.add_argument(
        "--method",
        choices=("both", *METHODS),
        default="both",
        help="open: the load generator and origin run anywhere (one worker then has a core to "
        "itself); confined: they share the cores given to the workers, one core for one "
        "worker and N for N, so that each run loses the same share to them (default: both)",
    )
    args = parser.parse_args()
    args.methods = list(METHODS) if args.method == "both" else [args.method]
    if "confined" in args.methods and (args.workers > len(ALL_CPUS) or not shutil.which("taskset")):
        print("--method confined needs taskset and N <= the cores", file=sys.stderr)
        return 2
    global CLIENT
    CLIENT = args.client
    if not shutil.which(args.client):
        print(f"bench needs {args.client}: apt-get install -y {args.client}", file=sys.stderr)
        return 2
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        origin = NginxOrigin(Path(tmp) / "nginx") if args.origin == "nginx" else PythonOrigin()
        try:
            return run(args, targets, origin, Path(tmp))
        finally:
            origin.stop()


CLIENT = "wrk"


CEILING_WORK = """
import time
data = {str(i): i for i in range(2000)}
started = time.perf_counter()
total = 0
for _ in range(400):
    for key, value in data.items():
        total += len(key.upper()) + value % 7
print(time.perf_counter() - started)
"""


def machine_ceiling(n: int, repeats: int = 3) -> float:
    """What N CPU-bound Python processes, one per core, get done next to one alone (the same
    pure-Python work in each: no sockets, no shared state): the most any N workers could
    scale on this machine. Below 1 when the cores slow each other down (shared caches and
    memory bandwidth, or virtual CPUs that share a physical core)."""

    def timed(count: int) -> float:
        procs = [
            subprocess.Popen(
                pinned([sys.executable, "-c", CEILING_WORK], {sorted(ALL_CPUS)[i]}),
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(count)
        ]
        return statistics.mean(float(proc.communicate()[0]) for proc in procs)

    alone = statistics.median(timed(1) for _ in range(repeats))
    together = statistics.median(timed(n) for _ in range(repeats))
    return alone / together


def one_run(
    args: argparse.Namespace,
    conf: Path,
    tmp: Path,
    url: str,
    keepalive: bool,
    origin,
    workers: int,
    method: str,
    variant: str = "pinned",
) -> dict:
    """A fresh gateway of ``workers`` workers under one load: a process's speed differs by
    a few percent from one start to the next, so each round starts new ones. ``variant``:
    how N workers run (``pinned``, ``free`` or ``steered``; see VARIANTS)."""
    cpus = set(sorted(ALL_CPUS)[:workers]) if method == "confined" else None
    confine(origin.pids(), cpus)
    extra = VARIANTS[variant][1] if workers > 1 else []
    # With steering in the comparison every run makes its connections from each of its cores.
    client_cores = sorted(cpus or ALL_CPUS)[:workers] if steering(args) else []
    gateway = Gateway(workers, conf / "config.yaml", tmp / "var", cpus, extra)
    try:
        result = measure(gateway, url, args, keepalive, origin, cpus, client_cores)
    finally:
        gateway.stop()
        confine(origin.pids(), None)
    result["cpus"] = cpus
    return result


# How N workers run: what the header says of it, and the `schoolgate run` options.
VARIANTS = {
    "pinned": ("each kept on its core", []),
    "free": ("free to move between cores", ["--no-pin-workers"]),
    "steered": (
        "each kept on its core and given the connections its core receives",
        ["--steer-connections"],
    ),
}


def steering(args: argparse.Namespace) -> bool:
    return args.steer or args.compare_steering


def variants_of(args: argparse.Namespace) -> list[str]:
    """How the N workers run in each round: the first is the one the ratio is of."""
    if args.compare_pinning:
        return ["pinned", "free"]
    if args.compare_steering:
        return ["pinned", "steered"]
    return ["free" if args.no_pin else "steered" if args.steer else "pinned"]


def pinning_of(args: argparse.Namespace) -> str:
    variants = variants_of(args)
    text = ", and ".join(VARIANTS[v][0] for v in variants)
    if len(variants) > 1:
        text += ", in every round"
    if steering(args):
        text += f"; a {args.client} on each core of the run, with a share of the connections"
    return text


def run(args: argparse.Namespace, targets: list[str], origin, tmp: Path) -> int:
    urls = {
        "allowed": f"http://127.0.0.1:{origin.port}/page",
        "blocked": "http://social.test/feed",
    }
    n = args.workers
    print(
        f"{cores()} cores; N = {n} workers; {args.client} with {args.concurrency} connections, "
        f"{args.origin} origin; {args.seconds:g}s per run after {args.warmup:g}s warm-up; "
        f"workers {pinning_of(args)}.\n"
        f"The load generator and the origin share these cores with the workers (CPU as % of "
        "one core over the run; 'machine' is every process and the kernel, out of "
        f"{cores() * 100}%: more than the others add up to is someone else's load).",
        flush=True,
    )
    if n <= len(ALL_CPUS) and shutil.which("taskset"):
        ceiling = machine_ceiling(n)
        print(
            f"machine ceiling: {n} CPU-bound Python processes on {n} cores each run at "
            f"{ceiling:.2f} x the speed of one alone (so {n} workers can give at most about "
            f"{ceiling:.2f} N)",
            flush=True,
        )
    ratios = []
    conf = copy_test_config(Path(tmp))
    for target in targets:
        for load, keepalive in (("new-conn", False), ("keep-alive", True)):
            if load not in args.loads.split(","):
                continue
            for method in args.methods:
                print(f"{target}, {load} ({urls[target]}), {METHODS[method]}:", flush=True)
                # Keys: "one" (one worker), then the ways N workers run (the first is the
                # ratio's; a second one is compared with it round by round).
                variants = variants_of(args)
                order = ["one", *variants]
                runs: dict[str, list[dict]] = {key: [] for key in order}
                for number in range(1, args.rounds + 1):
                    for key in order:
                        workers = 1 if key == "one" else n
                        variant = "pinned" if key == "one" else key
                        result = one_run(
                            args,
                            conf,
                            tmp,
                            urls[target],
                            keepalive,
                            origin,
                            workers,
                            method,
                            variant,
                        )
                        runs[key].append(result)
                        cpus = result["cpus"]
                        where = (
                            f" on {len(cpus)} core{'s' if len(cpus) > 1 else ''}" if cpus else ""
                        )
                        label = f"{workers} worker{'s' if workers > 1 else ''}{where}"
                        if len(variants) > 1 and workers > 1:
                            label += f", {key}"
                        show(f"{label}, round {number}" if args.rounds > 1 else label, result)
                    order = order[1:] + order[:1]  # none always goes first
                main_runs = runs[variants[0]]
                rps = {
                    1: statistics.median(r["rps"] for r in runs["one"]),
                    n: statistics.median(r["rps"] for r in main_runs),
                }
                cost = {
                    1: statistics.median(us_per_request(r) for r in runs["one"]),
                    n: statistics.median(us_per_request(r) for r in main_runs),
                }
                if args.rounds > 1:
                    each = ", ".join(
                        f"{big['rps'] / (n * small['rps']):.2f}"
                        for small, big in zip(runs["one"], main_runs, strict=True)
                    )
                    print(
                        f"  medians over {args.rounds} rounds: 1 worker {rps[1]:.1f} req/s, "
                        f"{n} workers {rps[n]:.1f} req/s; round by round ratios: {each}",
                        flush=True,
                    )
                ratio = rps[n] / (n * rps[1]) if rps[1] else 0.0
                ratios.append((f"{target}, {load}, {method}", ratio))
                verdict = "meets" if ratio >= TARGET else "below"
                print(
                    f"  ratio {n} workers / ({n} x 1 worker) = {ratio:.2f} "
                    f"({verdict} the {TARGET} target); CPU per request {n} workers / 1 worker"
                    f" = {cost[n] / cost[1] if cost[1] else 0:.2f}",
                    flush=True,
                )
                for other_key in variants[1:]:
                    other = runs[other_key]
                    other_rps = statistics.median(r["rps"] for r in other)
                    other_cost = statistics.median(us_per_request(r) for r in other)
                    if other_key == "steered":  # the new way over the default, as a gain
                        pairs, names = zip(other, main_runs, strict=True), "steered / pinned"
                    else:
                        pairs, names = zip(main_runs, other, strict=True), "pinned / free"
                    each = " ".join(f"{a['rps'] / b['rps']:.2f}" for a, b in pairs)
                    other_ratio = other_rps / (n * rps[1]) if rps[1] else 0.0
                    print(
                        f"  {n} workers {other_key}: {other_rps:.1f} req/s, ratio "
                        f"{other_ratio:.2f}, CPU per request / 1 worker = "
                        f"{other_cost / cost[1] if cost[1] else 0:.2f}; {names} "
                        f"round by round: {each}",
                        flush=True,
                    )
                    ratios.append((f"{target}, {load}, {method}, {other_key}", other_ratio))
    print("summary: " + "; ".join(f"{label} {ratio:.2f}" for label, ratio in ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
