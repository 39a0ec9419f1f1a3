"""Requests per second through schoolgate vs bare ``mitmdump -q``, on one loopback origin.

    python3 bench/gateway_bench.py [--seconds 10] [--concurrency 10]

Needs ``hey`` (Debian: ``apt-get install -y hey``). Runs, in one go: a local origin server,
bare ``mitmdump -q`` and ``schoolgate run --quiet`` (the test config in tests/data/gateway:
127.0.0.1 is a student in a lesson, the origin uncategorised), each loaded with HTTP/1.1
keep-alive requests (``hey -c N -z Ts -x proxy``) for allowed requests to the origin, and
for schoolgate also blocked requests (block page, logged). Prints requests/s, p50/p99 latency
and the ratio to bare mitmproxy.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Origin(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes

    def do_GET(self) -> None:  # noqa: N802
        body = b"hello from the origin\n"
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"proxy exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("proxy did not start")


def hey(url: str, proxy: str, seconds: int, concurrency: int) -> dict[str, float]:
    out = subprocess.run(
        ["hey", "-z", f"{seconds}s", "-c", str(concurrency), "-x", proxy, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = float(re.search(r"50%+ in ([\d.]+) secs", out).group(1))
    p99 = float(re.search(r"99%+ in ([\d.]+) secs", out).group(1))
    codes = dict(re.findall(r"\[(\d{3})\]\s+(\d+) responses", out))
    return {"rps": rps, "p50_ms": p50 * 1000, "p99_ms": p99 * 1000, "codes": codes}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_proxy(cmd: list[str], port: int, url: str, args, label: str, warm: int = 2):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        wait_port(port, proc)
        proxy = f"http://127.0.0.1:{port}"
        hey(url, proxy, warm, args.concurrency)  # warm up
        cpu_before = cpu_seconds(proc.pid)
        result = hey(url, proxy, args.seconds, args.concurrency)
        requests = sum(int(n) for n in result["codes"].values())
        # The proxy's own CPU per request: steadier than req/s when the machine is shared, and
        # what decides throughput for a CPU-bound proxy.
        result["cpu_us"] = (cpu_seconds(proc.pid) - cpu_before) / max(requests, 1) * 1e6
        print(
            f"{label:<34} {result['rps']:>9.1f} req/s   p50 {result['p50_ms']:6.2f} ms   "
            f"p99 {result['p99_ms']:6.2f} ms   proxy CPU {result['cpu_us']:6.0f} us/request   "
            f"{result['codes']}"
        )
        return result
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    if not shutil.which("hey"):
        print("bench needs hey: apt-get install -y hey", file=sys.stderr)
        return 2
    origin = ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{origin.server_address[1]}/page"
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "config"
        shutil.copytree(ROOT / "tests" / "data" / "gateway", conf)
        print(f"origin {url}; {args.concurrency} connections, keep-alive, {args.seconds}s each")
        port = free_port()
        bare = run_proxy(
            [
                "mitmdump",
                "-q",
                "--listen-host",
                "127.0.0.1",
                "--listen-port",
                str(port),
                "--set",
                f"confdir={tmp}/bare-ca",
            ],
            port,
            url,
            args,
            "bare mitmdump -q (allowed)",
        )
        results = {}
        for label, target in (
            ("schoolgate run (allowed)", url),
            ("schoolgate run (blocked, logged)", "http://social.test/x"),
        ):
            port = free_port()
            results[label] = run_proxy(
                [
                    sys.executable,
                    "-m",
                    "schoolgate.cli",
                    "run",
                    "--quiet",
                    "--config",
                    str(conf / "config.yaml"),
                    "--data-dir",
                    f"{tmp}/var",
                    "--listen-host",
                    "127.0.0.1",
                    "--listen-port",
                    str(port),
                ],
                port,
                target,
                args,
                label,
            )
        allowed = results["schoolgate run (allowed)"]
        ratio = allowed["rps"] / bare["rps"]
        per_request_us = (1 / allowed["rps"] - 1 / bare["rps"]) * 1e6
        print(
            f"ratio schoolgate/bare (allowed): {ratio:.3f} "
            f"({(1 - ratio) * 100:+.1f}% cost; ~{per_request_us:.0f} us per request)"
        )
        cpu_cost = allowed["cpu_us"] / bare["cpu_us"] - 1
        print(
            f"proxy CPU per request, schoolgate vs bare (allowed): {allowed['cpu_us']:.0f} vs "
            f"{bare['cpu_us']:.0f} us ({cpu_cost * 100:+.1f}%: what the addons cost)"
        )
    origin.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
