"""Load test: a stated request rate through a real ``schoolgate run`` for minutes.

    python3 bench/load_test.py [--rate 300] [--seconds 180] [--blocked-share 0.25]
                               [--clients 24] [--sample 5] [--gateway-arg=--workers=2 ...]

300 requests/s is a 1,500-pupil school at the start of a lesson. Needs ``hey`` (Debian:
``apt-get install -y hey``). Starts a local origin and ``schoolgate run --quiet`` on the test
config (tests/data/gateway: 127.0.0.1 is a student in a lesson; the origin is uncategorised,
social.test is blocked and logged) with a SQLite database in a temporary data dir, then holds
the rate with two rate-limited ``hey`` runs side by side (``-q <rate per client> -c N -z``):
allowed requests to the origin, and blocked ones (block page + an event in the database),
HTTP/1.1 keep-alive. The gateway's RSS (with any worker processes) is sampled every few
seconds.

Prints the achieved rate, errors (connection errors and any status but 200 for allowed, 403
for blocked), p50/p99 latency for each stream, RSS at start/end/max and its growth over the
second half (bounded memory: the growth should be near zero), CPU used, and events written
against blocks served (after a clean SIGTERM, which flushes the decision log). Exits 1 on any
error or a lost event. A benchmark, not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_bench import free_port, wait_port  # noqa: E402 - bench/ is not a package

ROOT = Path(__file__).resolve().parents[1]
BLOCKED_URL = "http://social.test/feed"


class Origin(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = b"hello from the origin\n"
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a supervisor's workers)."""
    found = [pid]
    for current in found:
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                children = Path(f"/proc/{current}/task/{task}/children").read_text().split()
                found.extend(int(c) for c in children)
        except OSError:
            continue
    return found


def rss_mb(pid: int) -> float:
    total = 0
    for member in process_tree(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


class Sampler(threading.Thread):
    """The gateway's RSS every ``interval`` seconds: (seconds since start, MB)."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.start_time = time.monotonic()

    def run(self) -> None:
        while True:
            self.samples.append((time.monotonic() - self.start_time, rss_mb(self.pid)))
            if self.stop.wait(self.interval):
                self.samples.append((time.monotonic() - self.start_time, rss_mb(self.pid)))
                return


def hey_command(url: str, proxy: str, rate: float, clients: int, seconds: int) -> list[str]:
    per_client = rate / clients
    return ["hey", "-z", f"{seconds}s", "-c", str(clients), "-q", f"{per_client:.3f}"] + [
        "-t",
        "10",
        "-x",
        proxy,
        url,
    ]


def parse_hey(out: str) -> dict:
    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    errors = {}
    if "Error distribution:" in out:
        for count, text in re.findall(r"\[(\d+)\]\s+(.+)", out.split("Error distribution:")[1]):
            errors[text.strip()] = int(count)

    def seconds(pattern: str) -> float:
        match = re.search(pattern, out)
        return float(match.group(1)) if match else float("nan")

    return {
        "codes": codes,
        "errors": errors,
        "rps": seconds(r"Requests/sec:\s+([\d.]+)"),
        "p50_ms": seconds(r"50%+ in ([\d.]+) secs") * 1000,
        "p99_ms": seconds(r"99%+ in ([\d.]+) secs") * 1000,
    }


def blocks_recorded(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as connection:
        return connection.execute(
            "SELECT count(*) FROM events WHERE kind = 'block' AND host = 'social.test'"
        ).fetchone()[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=300.0, help="requests/s in all")
    parser.add_argument("--seconds", type=int, default=180)
    parser.add_argument("--blocked-share", type=float, default=0.25)
    parser.add_argument("--clients", type=int, default=24, help="concurrent clients in all")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument(
        "--gateway-arg",
        action="append",
        default=[],
        help="an extra argument for `schoolgate run` (repeatable), e.g. --gateway-arg=--workers=2",
    )
    args = parser.parse_args()
    if not shutil.which("hey"):
        print("the load test needs hey: apt-get install -y hey", file=sys.stderr)
        return 2
    if not 0 < args.blocked_share < 1 or args.rate <= 0 or args.seconds < 2:
        parser.error("--blocked-share must be between 0 and 1, --rate positive, --seconds >= 2")
    blocked_clients = max(1, round(args.clients * args.blocked_share))
    allowed_clients = max(1, args.clients - blocked_clients)
    blocked_rate = args.rate * args.blocked_share
    allowed_rate = args.rate - blocked_rate

    origin = ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    origin.daemon_threads = True
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    allowed_url = f"http://127.0.0.1:{origin.server_address[1]}/page"
    with tempfile.TemporaryDirectory(prefix="schoolgate-load-") as tmp:
        conf = Path(tmp) / "config"
        shutil.copytree(ROOT / "tests" / "data" / "gateway", conf)
        data_dir = Path(tmp) / "var"
        port = free_port()
        log_path = Path(tmp) / "gateway.log"
        command = [sys.executable, "-m", "schoolgate.cli", "run", "--quiet"]
        command += ["--config", str(conf / "config.yaml"), "--data-dir", str(data_dir)]
        command += ["--listen-host", "127.0.0.1", "--listen-port", str(port), *args.gateway_arg]
        with log_path.open("wb") as log_file:
            gateway = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            wait_port(port, gateway)
            proxy = f"http://127.0.0.1:{port}"
            print(
                f"{args.rate:.0f} req/s for {args.seconds} s through schoolgate run: "
                f"{allowed_rate:.0f}/s allowed ({allowed_clients} clients), "
                f"{blocked_rate:.0f}/s blocked ({blocked_clients} clients), keep-alive"
            )
            sampler = Sampler(gateway.pid, args.sample)
            cpu_before = cpu_seconds(gateway.pid)
            sampler.start()
            started = time.monotonic()
            runs = {
                "allowed": subprocess.Popen(
                    hey_command(allowed_url, proxy, allowed_rate, allowed_clients, args.seconds),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                ),
                "blocked": subprocess.Popen(
                    hey_command(BLOCKED_URL, proxy, blocked_rate, blocked_clients, args.seconds),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                ),
            }
            outputs = {name: run.communicate()[0] for name, run in runs.items()}
            elapsed = time.monotonic() - started
            cpu_used = cpu_seconds(gateway.pid) - cpu_before
            sampler.stop.set()
            sampler.join()
            alive = gateway.poll() is None
            gateway.send_signal(signal.SIGTERM)
            try:
                exit_code = gateway.wait(90)
            except subprocess.TimeoutExpired:
                gateway.kill()
                exit_code = gateway.wait()
        finally:
            if gateway.poll() is None:
                gateway.kill()
                gateway.wait()
        results = {name: parse_hey(out) for name, out in outputs.items()}
        expected = {"allowed": 200, "blocked": 403}
        total = 0
        errors = 0
        for name, result in results.items():
            answered = sum(result["codes"].values())
            failed = sum(result["errors"].values())
            wrong = sum(n for code, n in result["codes"].items() if code != expected[name])
            total += answered + failed
            errors += failed + wrong
            print(
                f"  {name:<8} {answered + failed:>8} requests  {result['rps']:8.1f} req/s  "
                f"p50 {result['p50_ms']:7.2f} ms  p99 {result['p99_ms']:7.2f} ms  "
                f"codes {dict(sorted(result['codes'].items()))}"
            )
            for text, count in result["errors"].items():
                print(f"           error x{count}: {text}")
            if not result["codes"] and not result["errors"]:
                print(outputs[name][-2000:])
        print(
            f"achieved {total / elapsed:.1f} req/s in all (target {args.rate:.0f}); errors {errors}"
        )
        samples = sampler.samples
        values = [mb for _, mb in samples]
        half = [mb for at, mb in samples if at >= elapsed / 2]
        growth = (half[-1] - half[0]) if len(half) > 1 else float("nan")
        print(
            f"gateway RSS: start {values[0]:.1f} MB, end {values[-1]:.1f} MB, "
            f"max {max(values):.1f} MB; growth over the second half {growth:+.1f} MB "
            f"({len(samples)} samples every {args.sample:g} s)"
        )
        print(
            f"gateway CPU: {cpu_used:.1f} s in {elapsed:.1f} s "
            f"({cpu_used / elapsed * 100:.0f}% of one core)"
        )
        blocks = results["blocked"]["codes"].get(403, 0)
        written = blocks_recorded(data_dir / "schoolgate.db")
        lost = max(0, blocks - written)
        # A request hey gave up on at the end of its run can still have been decided and
        # logged: more events than block pages is not a loss.
        print(
            f"events written {written} for {blocks} block pages served; lost {lost}; "
            f"gateway {'alive' if alive else 'DIED'} under load, exit status {exit_code}"
        )
        problems = []
        if errors:
            problems.append(f"{errors} errors")
        if lost:
            problems.append(f"{lost} events lost")
        if not alive or exit_code != 0:
            problems.append(f"gateway exit status {exit_code}")
        if problems:
            print("FAILED: " + ", ".join(problems))
            print(log_path.read_text(errors="replace")[-3000:])
            return 1
        print("OK")
    origin.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
