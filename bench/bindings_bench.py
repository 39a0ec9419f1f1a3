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
from schoolgate.bindings.settings import LeaseFile, RadiusSettings  # noqa: E402
from schoolgate.bindings.writer import BindingWriter  # noqa: E402
from schoolgate.db import open_database  # noqa: E402
from schoolgate.storage import bindings as store  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", help="default: SQLite in a temporary folder")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--bindings", type=int, default=3000)
    parser.add_argument("--packets", type=int, default=2000)
    parser.add_argument("--leases", type=int, default=20000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)

        def url(name: str) -> str:
            return args.database_url or f"sqlite:///{base / name}.db"

        propagation(url("propagation"), args.rounds)
        lookups(url("lookups"), args.bindings)
        radius_burst(url("radius"), args.packets)
        dhcp(base, args.leases)


if __name__ == "__main__":
    main()
