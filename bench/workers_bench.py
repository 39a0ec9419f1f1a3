"""Throughput of ``schoolgate run --workers N`` against one worker, through the real gateway.

    python3 bench/workers_bench.py [--workers N] [--seconds 10] [--concurrency 32]
                                   [--targets allowed,blocked] [--client wrk|hey]
                                   [--origin nginx|python]

For each target (``allowed``: a page of a local origin server, proxied; ``blocked``: a
social-media URL the gateway answers itself with its block page, no upstream) and each load
(``new-conn``: a new TCP connection per request; ``keep-alive``: ``--concurrency`` HTTP/1.1
connections reused), it runs ``schoolgate run --quiet`` with one worker, then with N (default:
one per core), and prints requests/s, the CPU each process used (every worker, the
supervisor, the load generator, the origin) and the scaling ratio
``N workers / (N x one worker)`` against the 0.9 target.

The load generator and the origin run on the same machine and take CPU from the workers, so
by default they are the lightest there are: ``wrk`` (Debian: ``apt-get install -y wrk``;
``Connection: close`` for new connections) and an ``nginx`` origin (``apt-get install -y
nginx-light``), each a few percent of a core at these rates. Without them (or with
``--client hey --origin python``) it falls back to ``hey`` and a Python origin, which on a
two-core machine take a third of a core or more: then the ratio measures the machine, not the
gateway. Read the CPU columns: with N workers each should be as busy as the one worker was.

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


WRK_SCRIPT = """
local target = os.getenv("SCHOOLGATE_BENCH_TARGET")
wrk.headers["Host"] = target:match("^https?://([^/]+)")
request = function() return wrk.format("GET", target) end
"""


def wrk(url: str, proxy: str, seconds: float, concurrency: int, keepalive: bool) -> dict:
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
            [*cmd, proxy], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
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

    def cpu(self) -> float:
        return time.process_time()

    def stop(self) -> None:
        self.server.shutdown()


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


def measure(gateway: Gateway, url: str, args, keepalive: bool, origin) -> dict:
    client = wrk if args.client == "wrk" else hey
    client(url, gateway.proxy, args.warmup, args.concurrency, keepalive)
    pids = gateway.serving_pids()
    before = {pid: cpu_seconds(pid) for pid in [*pids, gateway.proc.pid]}
    origin_before, busy_before = origin.cpu(), machine_busy()
    started = time.monotonic()
    result = client(url, gateway.proxy, args.seconds, args.concurrency, keepalive)
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
        f"  {label:<12} {result['rps']:>9.1f} req/s  {us_per_request(result):5.0f} us CPU/req"
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
    parser.add_argument("--targets", default="allowed,blocked")
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
    args = parser.parse_args()
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


def run(args: argparse.Namespace, targets: list[str], origin, tmp: Path) -> int:
    urls = {
        "allowed": f"http://127.0.0.1:{origin.port}/page",
        "blocked": "http://social.test/feed",
    }
    n = args.workers
    print(
        f"{cores()} cores; N = {n} workers; {args.client} with {args.concurrency} connections, "
        f"{args.origin} origin; {args.seconds:g}s per run after {args.warmup:g}s warm-up.\n"
        f"The load generator and the origin share these cores with the workers (CPU as % of "
        "one core over the run; 'machine' is every process and the kernel, out of "
        f"{cores() * 100}%: more than the others add up to is someone else's load).",
        flush=True,
    )
    ratios = []
    conf = Path(tmp) / "config"
    shutil.copytree(ROOT / "tests" / "data" / "gateway", conf)
    for target in targets:
        for load, keepalive in (("new-conn", False), ("keep-alive", True)):
            print(f"{target}, {load} ({urls[target]}):", flush=True)
            rps, cost = {}, {}
            for workers in (1, n):
                gateway = Gateway(workers, conf / "config.yaml", tmp / "var")
                try:
                    result = measure(gateway, urls[target], args, keepalive, origin)
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
    print("summary: " + "; ".join(f"{label} {ratio:.2f}" for label, ratio in ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
