"""Identity bindings: ``python3 bench/bindings_bench.py [--database-url URL]``.

1. Propagation: a binding written by this process, seen by the cache of another process (as a
   second worker or gateway keeps it; tests/binding_peer.py), ``--rounds`` times. Reports the
   delay from the commit to the other process's first look-up that honours it (p50, p95, max):
   the "effective everywhere within 1 s" of issue 24. SQLite in a temporary folder by default.
2. Look-up: the cost of :meth:`BindingCache.lookup` on the event loop with ``--bindings``
   addresses bound (a hit renewing a sign-in, a hit without renewal, a miss).
3. RADIUS burst: ``--packets`` Accounting-Starts for different pupils (the start of the school
   day) sent at once with up to 64 outstanding over real UDP to the accounting server; reports
   packets answered per second (each answer comes after its binding is committed).
4. DHCP: parsing an ISC ``dhcpd.leases`` of ``--leases`` leases whole, and reading an append of
   one lease to it.
5. Two workers: a real ``schoolgate run --workers 2`` on loopback, on a network that requires
   sign-in. Each of ``--sign-ins`` rounds signs a new address in through the portal (served by
   whichever worker takes the connection; the page returns once that worker honours it), then
   sends requests on new connections (spread over both workers) until 3 s have passed.
   Reports how long after the sign-in page returned a request was still sent to sign in (only
   the other worker can do that): the time for a binding made through one worker to reach the
   other.

``--parts 1,5`` runs only some of them.
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pyrad.packet import AcctPacket  # noqa: E402

from schoolgate.bindings.cache import BindingCache  # noqa: E402
from schoolgate.bindings.dhcp import LeaseWatcher  # noqa: E402
from schoolgate.bindings.radius import (  # noqa: E402
    RadiusListener,
    accounting_store,
    radius_dictionary,
)
from schoolgate.bindings.writer import BindingWriter  # noqa: E402
from schoolgate.core.identity_settings import LeaseFile, RadiusSettings  # noqa: E402
from schoolgate.storage import bindings as store  # noqa: E402
from schoolgate.storage.db import open_database  # noqa: E402

SECRET = b"bench-shared-secret-0123456789"


def bind(sessions, address: str, user: str, source: str = "radius", **extra) -> None:
    now = datetime.now(UTC)
    store.in_transaction(
        sessions,
        lambda db: store.bind(
            db,
            address=address,
            source=source,
            user=user,
            now=now,
            expires_at=now + timedelta(hours=1),
            actor="bench",
            **extra,
        ),
    )


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def propagation(url: str, rounds: int) -> None:
    sessions = open_database(url)
    peer = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "binding_peer.py"), url, "radius"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert peer.stdout.readline().strip() == "ready"
    delays = []
    for number in range(rounds):
        user = f"pupil{number}"
        peer.stdin.write(f"watch 10.20.1.5 {user} 10\n")
        peer.stdin.flush()
        time.sleep(random.uniform(0.05, 0.6))  # not in step with the peer's polling
        bind(sessions, "10.20.1.5", user)
        committed = time.monotonic()
        answer = peer.stdout.readline().split()
        if answer[0] != "seen":
            print(f"  round {number}: not seen within 10 s")
            continue
        delays.append(max(0.0, float(answer[1]) - committed))
    peer.stdin.close()
    peer.wait(30)
    print(
        f"1. propagation to another process ({len(delays)}/{rounds} rounds): "
        f"p50 {percentile(delays, 0.5) * 1000:.0f} ms, p95 {percentile(delays, 0.95) * 1000:.0f} "
        f"ms, max {max(delays) * 1000:.0f} ms (refresh interval 500 ms)"
    )


def lookups(url: str, count: int) -> None:
    sessions = open_database(url)
    now = datetime.now(UTC)
    network = ipaddress.ip_network("10.64.0.0/16")
    addresses = [str(network[i + 1]) for i in range(count)]

    def fill(db) -> None:
        for number, address in enumerate(addresses):
            store.bind(
                db,
                address=address,
                source="sign_in" if number % 2 else "radius",
                user=f"pupil{number}",
                now=now,
                expires_at=now + timedelta(minutes=45),
                idle_seconds=2700 if number % 2 else None,
                ends_by=now + timedelta(hours=8) if number % 2 else None,
                actor="bench",
            )

    store.in_transaction(sessions, fill)
    cache = BindingCache(sessions, order=("radius", "sign_in"))
    started = time.perf_counter()
    cache.refresh()
    load = time.perf_counter() - started
    print(f"2. cache of {count} bindings read in {load * 1000:.0f} ms")
    for label, address, traffic in (
        ("hit, sign-in renewed by traffic", addresses[1], True),
        ("hit, RADIUS (no renewal)", addresses[0], True),
        ("hit, no traffic counted", addresses[1], False),
        ("miss (an address nobody is bound to)", "10.65.0.1", True),
    ):
        n = 200_000
        lookup = cache.lookup
        started, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            lookup(address, traffic=traffic)
        per = (time.perf_counter() - started) / n
        per_cpu = (time.process_time() - cpu) / n
        print(f"   lookup {label}: {per * 1e9:.0f} ns ({per_cpu * 1e9:.0f} ns of CPU)")


def radius_burst(url: str, packets: int) -> None:
    sessions = open_database(url)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = RadiusSettings(
        "127.0.0.1", port, SECRET, (ipaddress.ip_network("127.0.0.0/8"),), 120
    )
    writer = BindingWriter()
    writer.start()
    listener = RadiusListener(settings, accounting_store(writer, sessions, settings))
    listener.start()
    dictionary = radius_dictionary()
    requests = []
    for number in range(packets):
        packet = AcctPacket(id=number % 256, secret=SECRET, dict=dictionary)
        packet["Acct-Status-Type"] = "Start"
        packet["User-Name"] = f"SCHOOL\\pupil{number}"
        packet["Framed-IP-Address"] = (
            f"10.{70 + number // 65000}.{number // 250 % 256}.{number % 250 + 1}"
        )
        packet["Calling-Station-Id"] = (
            f"aa-bb-cc-{number >> 16 & 255:02x}-{number >> 8 & 255:02x}-{number & 255:02x}"
        )
        packet["Acct-Session-Id"] = f"s{number}"
        requests.append(packet.RequestPacket())
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(10)
    started, cpu = time.perf_counter(), time.process_time()
    sent = answered = 0
    window = 64
    while answered < packets:
        while sent < packets and sent - answered < window:
            sock.sendto(requests[sent], ("127.0.0.1", port))
            sent += 1
        try:
            sock.recv(4096)
        except TimeoutError:
            break
        answered += 1
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    listener.stop()
    writer.stop()
    print(
        f"3. RADIUS burst: {answered}/{packets} Accounting-Starts answered in {elapsed:.2f} s "
        f"({answered / elapsed:.0f}/s, each stored before its answer; {cpu / answered * 1000:.1f} "
        f"ms of CPU a packet, this process's threads); counters "
        f"{ {k: v for k, v in listener.counters.snapshot().items() if v} }"
    )


def dhcp(folder: Path, count: int) -> None:
    path = folder / "dhcpd.leases"
    block = (
        "lease {a} {{\n  starts 4 2026/11/26 08:01:02;\n  ends 4 2099/11/26 20:01:02;\n"
        "  cltt 4 2026/11/26 08:01:02;\n  binding state active;\n  next binding state free;\n"
        '  hardware ethernet {m};\n  uid "\\001\\252\\273\\314\\335\\356\\001";\n'
        '  client-hostname "LAPTOP-{n}";\n}}\n'
    )
    with path.open("w") as handle:
        for n in range(count):
            handle.write(
                block.format(
                    a=f"10.80.{n // 250 % 256}.{n % 250 + 1}",
                    m=f"aa:bb:cc:{n >> 16 & 255:02x}:{n >> 8 & 255:02x}:{n & 255:02x}",
                    n=n,
                )
            )
    watcher = LeaseWatcher([LeaseFile("isc", path, str(path))])
    started, cpu = time.perf_counter(), time.process_time()
    watcher.check()
    whole, whole_cpu = time.perf_counter() - started, time.process_time() - cpu
    with path.open("a") as handle:
        handle.write(block.format(a="10.80.0.1", m="aa:bb:cc:ff:ff:ff", n="renewed"))
    started, cpu = time.perf_counter(), time.process_time()
    watcher.check()
    append, append_cpu = time.perf_counter() - started, time.process_time() - cpu
    size = path.stat().st_size / 1e6
    print(
        f"4. DHCP: {count} ISC leases ({size:.1f} MB) read whole in {whole * 1000:.0f} ms "
        f"({whole_cpu * 1000:.0f} ms of CPU); an appended lease read in {append * 1000:.1f} ms "
        f"({append_cpu * 1000:.1f} ms of CPU; {len(watcher.leases)} leases)"
    )


WORKERS_CONFIG = """
database: {{url: "sqlite:///{data}/schoolgate.db"}}
portal: {{host: schoolgate.internal}}
roles:
  student: {{}}
  staff: {{}}
identity:
  networks: [{{cidr: 127.0.0.0/8, role: student}}]
  sources: [sign_in]
  sign_in:
    networks: [127.0.0.0/8]
    portal_accounts: {{role: staff}}
sites:
  main: {{timetable: {timetable}}}
categories:
  social_media: {{entries: [social.test]}}
rules:
  - {{roles: [student], windows: "*", categories: [social_media], action: block}}
  - {{roles: [staff], windows: "*", categories: [social_media], action: allow}}
"""


def two_workers(folder: Path, sign_ins: int) -> None:
    import http.client
    import re
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import urlencode

    class Origin(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - the standard library's name
            self.send_response(200)
            self.send_header("content-length", "6")
            self.end_headers()
            self.wfile.write(b"origin")

        def log_message(self, *args) -> None:
            pass

    data = folder / "workers"
    data.mkdir()
    config = data / "config.yaml"
    timetable = ROOT / "tests" / "data" / "gateway" / "timetable.yaml"
    config.write_text(WORKERS_CONFIG.format(data=data, timetable=timetable))
    cli = [sys.executable, "-m", "schoolgate.cli"]
    where = ["--config", str(config), "--data-dir", str(data)]
    password = "bench staff password 1"
    subprocess.run(
        cli + ["staff", "add", "bench.staff", "--role", "it_support", "--password-stdin"]
        + ["--init", *where],
        input=password + "\n", text=True, check=True, capture_output=True, cwd=ROOT,
    )  # fmt: skip
    origin = ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = data / "gateway.log"
    proc = subprocess.Popen(
        cli + ["run", *where, "--listen-host", "127.0.0.1", "--listen-port", str(port)]
        + ["--workers", "2", "--mode", f"upstream:http://127.0.0.1:{origin.server_address[1]}"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while len(set(re.findall(r"\[worker (\d) pid \d+\].*listening", log.read_text()))) < 2:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the gateway did not start:\n{log.read_text()}")
            time.sleep(0.2)

        def ask(address: str, method: str, url: str, body: str = "", cookie: str = ""):
            """One request through the proxy on a new connection from ``address``."""
            host = url.split("/")[2]
            conn = http.client.HTTPConnection(
                "127.0.0.1", port, timeout=30, source_address=(address, 0)
            )
            headers = {"Host": host, "Connection": "close"}
            if cookie:
                headers["Cookie"] = cookie
            if body:
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            try:
                conn.request(method, url, body=body or None, headers=headers)
                answer = conn.getresponse()
                return answer.status, answer.getheader("set-cookie") or "", answer.read().decode()
            finally:
                conn.close()

        sessions = open_database(f"sqlite:///{data / 'schoolgate.db'}")
        committed: list[float] = []
        lags: list[float] = []
        refused = probes = 0
        for number in range(sign_ins):
            address = f"127.0.{1 + number // 200}.{10 + number % 200}"
            _, cookie, page = ask(address, "GET", "http://schoolgate.internal/sign-in")
            token = re.search(r'name="csrf_token" value="([^"]+)"', page)[1]
            form = urlencode({"csrf_token": token, "username": "bench.staff", "password": password})
            status, _, page = ask(
                address, "POST", "http://schoolgate.internal/sign-in", form, cookie.split(";")[0]
            )
            assert status == 200 and "bench.staff" in page, page
            returned = time.time()
            with sessions() as db:
                bound = store.find(db, address=address)[0]
            # From the commit (the binding's start, a moment before it) to the page's return:
            # this worker honours it by then (the page waits for that).
            after_commit = returned - bound.started_at.timestamp()
            committed.append(after_commit)
            signed = time.monotonic()
            last = 0.0
            while time.monotonic() - signed < 3.0:
                probes += 1
                if ask(address, "GET", "http://social.test/")[0] != 200:
                    refused += 1  # only the other worker can still send it to sign in
                    last = time.monotonic() - signed
            lags.append(after_commit + last)
        text = log.read_text()
        served = {"1": 0, "2": 0}
        for index, source in re.findall(
            r"^\[worker (\d) pid \d+\]\S*\[127\.0\.(\d+\.\d+):\d+\] client connect", text, re.M
        ):
            if source != "0.1":
                served[index] += 1
        committed.sort()
        lags.sort()
        spacing = 3.0 * sign_ins / max(probes, 1)
        print(
            f"5. two workers, {sign_ins} sign-ins through the portal; the sign-in page returned "
            f"p50 {percentile(committed, 0.5) * 1000:.0f} ms, max {committed[-1] * 1000:.0f} "
            f"ms after the commit; then {probes} requests on new connections (worker 1 took "
            f"{served['1']}, worker 2 {served['2']}, sign-in pages included), {refused} of them "
            f"still sent to sign in by the other worker, the last p50 "
            f"{percentile(lags, 0.5) * 1000:.0f} ms, p95 {percentile(lags, 0.95) * 1000:.0f} "
            f"ms, max {lags[-1] * 1000:.0f} ms after the commit (a request every "
            f"{spacing * 1000:.0f} ms)"
        )
    finally:
        proc.terminate()
        proc.wait(30)
        origin.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", help="default: SQLite in a temporary folder")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--bindings", type=int, default=3000)
    parser.add_argument("--packets", type=int, default=2000)
    parser.add_argument("--leases", type=int, default=20000)
    parser.add_argument("--sign-ins", type=int, default=20)
    parser.add_argument("--parts", default="1,2,3,4,5", help="which parts to run")
    args = parser.parse_args()
    parts = {part.strip() for part in args.parts.split(",")}
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)

        def url(name: str) -> str:
            return args.database_url or f"sqlite:///{base / name}.db"

        if "1" in parts:
            propagation(url("propagation"), args.rounds)
        if "2" in parts:
            lookups(url("lookups"), args.bindings)
        if "3" in parts:
            radius_burst(url("radius"), args.packets)
        if "4" in parts:
            dhcp(base, args.leases)
        if "5" in parts:
            two_workers(base, args.sign_ins)


if __name__ == "__main__":
    main()
