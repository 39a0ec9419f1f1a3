"""Hostile load against real gateways: ``python3 bench/hostile_bench.py [--repeat 5]
[--flood 5000] [--source DIR]``.

1. **Many headers.** A blocked request (``social.test``) with 10, 1,000 and 10,000 headers,
   each on a new connection: the median time to the answer, through ``schoolgate run`` as
   shipped (more than 100 headers: 431 at the first hook), with its limits raised past the
   request (every hook runs: the block page), and through bare ``mitmdump -q`` to a local
   origin (mitmproxy's own cost of reading the request).
2. **Idle flood.** Another client's requests (a new connection each, to a local origin):
   latency p50/p99 with nothing else going on, then while one address holds ``--flood``
   connections that each sent half a request line; how many of those the gateway refused
   at once, its open descriptors and memory meanwhile, and how long until it had closed
   them all (the header timeout, 30 s).

``--source DIR``: run another checkout's gateway (say, the code before these limits) for the
same figures. The machine's load moves the times; each figure is a median of ``--repeat``.
"""

from __future__ import annotations

import argparse
import os
import re
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from gateway_process import Origin, free_port, wait_port  # noqa: E402

ATTACKER = "127.0.0.5"
GIVE_UP = 300.0  # seconds: an answer later than this is reported as "inf"


def start(
    cmd: list[str], log: Path, port: int, source: Path, env: dict | None = None
) -> subprocess.Popen:
    proc = subprocess.Popen(
        cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=source, env=env
    )
    wait_port(port, proc, log, timeout=120)
    return proc


def gateway(tmp: Path, source: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    folder = tmp / f"config-{len(list(tmp.iterdir()))}"
    shutil.copytree(ROOT / "tests" / "data" / "gateway", folder)
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(source))
    cmd = [sys.executable, "-m", "schoolgate.cli", "run", "--config", str(folder / "config.yaml")]
    cmd += ["--data-dir", str(folder / "var"), "--listen-host", "127.0.0.1"]
    cmd += ["--listen-port", str(port), "--quiet", *extra]
    return start(cmd, folder / "gateway.log", port, source, env), port


def bare_mitmdump(tmp: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    mitmdump = Path(sys.executable).with_name("mitmdump")
    cmd = [str(mitmdump), "-q", "--listen-host", "127.0.0.1", "-p", str(port)]
    cmd += ["--set", f"confdir={tmp / 'bare-ca'}"]
    return start(cmd, tmp / "bare.log", port, ROOT), port


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def request(port: int, url: str, headers: int = 0, source: str = "127.0.0.1") -> tuple[float, int]:
    """(seconds to the whole answer, status) of one GET on a new connection; (inf, 0) when
    none came within :data:`GIVE_UP`."""
    host = url.split("/")[2]
    filler = "".join(f"X-Filler-{i}: value-{i}\r\n" for i in range(headers))
    head = (
        f"GET {url} HTTP/1.1\r\nHost: {host}\r\n{filler}Accept: text/html\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), GIVE_UP, (source, 0)) as sock:
        sock.sendall(head)
        answer = b""
        try:
            while more := sock.recv(65536):
                answer += more
        except TimeoutError:
            return float("inf"), 0
    return time.perf_counter() - started, int(answer.split(b" ", 2)[1])


def many_headers(args, tmp: Path, origin: str) -> None:
    print("1. A blocked request with many headers (median of", args.repeat, "new connections)")
    runs = [
        ("schoolgate run", lambda: gateway(tmp, args.source), "http://social.test/x"),
        (
            "schoolgate run, limits raised",
            lambda: gateway(
                tmp,
                args.source,
                "--set",
                "schoolgate_max_request_headers=20000",
                "--set",
                "schoolgate_max_request_head=1000000",
            ),  # fmt: skip
            "http://social.test/x",
        ),
        ("bare mitmdump -q (to the origin)", lambda: bare_mitmdump(tmp), f"{origin}/x"),
    ]
    for name, make, url in runs:
        try:
            proc, port = make()
        except AssertionError as exc:  # an older checkout without the options
            print(f"  {name}: did not start ({str(exc).splitlines()[-1]})")
            continue
        try:
            request(port, url)  # warm up
            cells = []
            for count in (10, 1_000, 10_000):
                results = [request(port, url, count) for _ in range(args.repeat)]
                seconds = statistics.median(r[0] for r in results)
                cells.append(f"{count:>6} headers {seconds * 1000:8.1f} ms ({results[0][1]})")
            print(f"  {name}:\n    " + "\n    ".join(cells))
        finally:
            stop(proc)


def latencies(port: int, origin: str, count: int) -> list[float]:
    return sorted(request(port, f"{origin}/lesson")[0] for _ in range(count))


def _pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(len(values) * p))] * 1000


def _proc_figures(pid: int) -> str:
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss = next(
        int(line.split()[1]) // 1024
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    return f"{fds} open descriptors, {rss} MB RSS"


class CloseWatch:
    """Notes when the gateway closes each flood connection, from a thread of its own."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.lock = threading.Lock()
        self.closed: list[float] = []  # seconds from opening to close, one per connection
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def add(self, sock: socket.socket, opened_at: float) -> None:
        sock.setblocking(False)
        with self.lock:
            self.selector.register(sock, selectors.EVENT_READ, opened_at)

    def _run(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                ready = self.selector.select(timeout=0) if self.selector.get_map() else []
            if not ready:
                time.sleep(0.05)
                continue
            now = time.perf_counter()
            for key, _ in ready:
                try:
                    data = key.fileobj.recv(4096)
                except (ConnectionResetError, BlockingIOError):
                    data = b""
                if data:
                    continue
                with self.lock:
                    self.selector.unregister(key.fileobj)
                key.fileobj.close()
                self.closed.append(now - key.data)

    def wait(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.closed) < count and time.monotonic() < deadline:
            time.sleep(0.2)
        self.stop.set()
        self.thread.join()


def half_request(port: int, watch: CloseWatch) -> bool:
    sock = socket.socket()
    sock.settimeout(120)
    try:
        sock.bind((ATTACKER, 0))
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET http://social.test/ HT")
    except OSError:
        sock.close()
        return False
    watch.add(sock, time.perf_counter())
    return True


def idle_flood(args, tmp: Path, origin: str) -> None:
    print(f"2. One address holding {args.flood} half-sent requests; another client meanwhile")
    proc, port = gateway(tmp, args.source)
    try:
        latencies(port, origin, 20)  # warm up
        quiet = latencies(port, origin, 200)
        print(
            f"  alone:      p50 {_pct(quiet, 0.5):.1f} ms, p99 {_pct(quiet, 0.99):.1f} ms "
            f"({_proc_figures(proc.pid)})"
        )
        watch = CloseWatch()
        started = time.perf_counter()
        with ThreadPoolExecutor(32) as pool:
            socks = [s for s in pool.map(lambda _: half_request(port, watch), range(args.flood))]
        socks = [s for s in socks if s]
        opened = time.perf_counter() - started
        during = latencies(port, origin, 200)
        figures = _proc_figures(proc.pid)
        watch.wait(len(socks), GIVE_UP)
        times = sorted(watch.closed) + [float("inf")] * (len(socks) - len(watch.closed))
        at_once = sum(t < 2 for t in times)
        print(
            f"  flooded:    p50 {_pct(during, 0.5):.1f} ms, p99 {_pct(during, 0.99):.1f} ms "
            f"({figures}); {len(socks)} flood connections opened in {opened:.1f} s"
        )
        print(
            f"  the flood:  {at_once} closed within 2 s (past the cap per address), the last "
            f"after {times[-1]:.1f} s (header timeout); never closed: "
            f"{sum(t == float('inf') for t in times)}"
        )
    finally:
        stop(proc)


def blocked(args, tmp: Path) -> None:
    """Blocked requests (each logged: spooled, then written) at full speed with ``hey``,
    this checkout and ``--compare`` taking turns."""
    sources = [("this checkout", ROOT)] + ([("--compare", args.compare)] if args.compare else [])
    print(f"3. Blocked requests, keep-alive, hey -c 10 -z {args.seconds}s ({args.repeat} rounds)")
    rates: dict[str, list[float]] = {name: [] for name, _ in sources}
    for _ in range(args.repeat):
        for name, source in sources:
            proc, port = gateway(tmp, source)
            try:
                out = subprocess.run(
                    ["hey", "-c", "10", "-z", f"{args.seconds}s", "-x", f"http://127.0.0.1:{port}"]
                    + ["http://social.test/x"],
                    capture_output=True,
                    text=True,
                    timeout=args.seconds + 120,
                ).stdout
            finally:
                stop(proc)
            found = re.search(r"Requests/sec:\s+([\d.]+)", out)
            codes = re.findall(r"\[(\d+)\]\s+(\d+) responses", out)
            rates[name].append(float(found[1]) if found else 0.0)
            if any(code != "403" for code, _ in codes):
                print(f"  {name}: answers {codes}")
    for name, values in rates.items():
        print(
            f"  {name:14} median {statistics.median(values):7.0f} blocked req/s "
            f"(rounds: {', '.join(f'{v:.0f}' for v in values)})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--flood", type=int, default=5000)
    parser.add_argument("--source", type=Path, default=ROOT)
    parser.add_argument("--only", choices=("headers", "flood", "blocked"))
    parser.add_argument("--compare", type=Path, help="another checkout, for the blocked load")
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hostile-bench-"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    origin = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        if args.only in (None, "headers"):
            many_headers(args, tmp, origin)
        if args.only in (None, "flood"):
            idle_flood(args, tmp, origin)
        if args.only in (None, "blocked"):
            blocked(args, tmp)
    finally:
        server.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
