"""What the destination check costs a request, and what the gateway's resolver saves a new
upstream connection.

    python3 bench/destination_bench.py [--requests 20000] [--connections 2000] [--repeats 5]
    python3 bench/destination_bench.py --callgrind   # instructions a check: same on a busy machine

1. The destination check's ``request`` hook (``schoolgate/gateway/destinations.py``), in this
   process, on the tests' gateway config (127.0.0.1 a student) with a hosts file, for the
   shapes a request comes in: a named target (explicit proxy: nothing to verify), an address
   in the school's network, a request made to an address whose Host names a site (transparent
   mode: verified against the cached answer) and one whose address is not the site's
   (refused). Median of ``--repeats`` runs of ``--requests`` calls, in microseconds a call.
2. New connections to a loopback server by name (``localhost``, from ``/etc/hosts``) with
   ``asyncio.open_connection``, as mitmproxy opens its upstream connections: with the event
   loop's own ``getaddrinfo`` (a thread-pool call every time) and with the gateway's resolver
   installed (one lookup, then the cache). It prints the lookups the resolver made for
   ``--connections`` connections: a warm connection adds none.

``--callgrind`` runs each shape of (1) under ``valgrind --tool=callgrind`` with N and 2N calls
(N = ``--requests`` / 10, the runs side by side) and prints the difference of the instruction
counts a call, which other work on the machine does not change.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mitmproxy.test import tflow, tutils  # noqa: E402

from schoolgate.core.config import load_policy  # noqa: E402
from schoolgate.gateway.destinations import DestinationCheck  # noqa: E402
from schoolgate.gateway.holder import PolicyHolder  # noqa: E402
from schoolgate.gateway.resolver import Resolver, read_hosts_file  # noqa: E402


def flow(target: str, host_header: str):
    request = tutils.treq(host=target, port=80, authority=b"")
    request.headers["Host"] = host_header
    made = tflow.tflow(req=request)
    made.client_conn.peername = ("127.0.0.1", 40000)
    made.client_conn.sni = None
    return made


def checker() -> DestinationCheck:
    work = Path(tempfile.mkdtemp(prefix="destination-bench-"))
    hosts = work / "hosts"
    hosts.write_text("127.0.0.12 origin.bench\n")
    config = ROOT / "tests" / "data" / "gateway" / "config.yaml"
    holder = PolicyHolder()
    holder.preload(load_policy(config, data_dir=work), config, work)
    check = DestinationCheck(holder)
    check.resolver.configure(hosts=read_hosts_file(hosts), ttl=60)
    return check


SHAPES = {
    "named target (explicit proxy)": ("origin.bench", "origin.bench"),
    "an address in the school's network": ("127.0.0.12", "127.0.0.12"),
    "an address, Host verified (transparent)": ("127.0.0.12", "origin.bench"),
    "an address, Host elsewhere (refused)": ("127.0.0.13", "origin.bench"),
}


def run_only(shape: int, calls: int) -> None:
    """The calls of one shape, for callgrind (one warm call first)."""
    check = checker()
    sample = flow(*list(SHAPES.values())[shape])
    for _ in range(calls + 1):
        sample.metadata.clear()
        check.request(sample)


def instructions(args: argparse.Namespace) -> None:
    n = max(args.requests // 10, 100)
    runs = {}
    for shape in range(len(SHAPES)):
        for calls in (n, 2 * n):
            command = [
                "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
                __file__, "--only", str(shape), "--requests", str(calls),
            ]  # fmt: skip
            env = {**os.environ, "PYTHONHASHSEED": "0"}
            runs[shape, calls] = subprocess.Popen(
                command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env
            )
    print(f"destination check, instructions a call ({n} and {2 * n} calls under callgrind):")
    for shape, what in enumerate(SHAPES):
        counts = []
        for calls in (n, 2 * n):
            err = runs[shape, calls].communicate()[1]
            found = re.search(r"Collected : (\d+)", err)
            if found is None:
                raise SystemExit(f"valgrind failed:\n{err[-2000:]}")
            counts.append(int(found.group(1)))
        print(f"  {what:45s} {(counts[1] - counts[0]) / n:9,.0f}")


def check_cost(args: argparse.Namespace) -> None:
    check = checker()
    shapes = {what: flow(*shape) for what, shape in SHAPES.items()}
    print(f"destination check, {args.requests} calls, median of {args.repeats} runs:")
    for what, sample in shapes.items():
        timings = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            for _ in range(args.requests):
                sample.metadata.clear()
                assert check.request(sample) is None  # cached: never waits
            timings.append((time.perf_counter() - started) / args.requests * 1e6)
        verdict = sample.metadata.get("schoolgate_destination")
        shown = verdict[0].verdict if verdict else "passes"
        print(f"  {what:45s} {statistics.median(timings):6.2f} us  ({shown})")
    print(f"  resolver lookups for all of them: {check.resolver.lookups}")


async def connections(count: int, resolver: Resolver | None) -> float:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    if resolver is not None:
        resolver.install(loop)
    try:
        started = time.perf_counter()
        for _ in range(count):
            _, writer = await asyncio.open_connection("localhost", port, family=socket.AF_INET)
            writer.close()
        return (time.perf_counter() - started) / count * 1e6
    finally:
        if resolver is not None:
            resolver.uninstall()
        server.close()


def connection_cost(args: argparse.Namespace) -> None:
    print(f"\nnew connections to 'localhost' by name, {args.connections} each, median of "
          f"{args.repeats}:")  # fmt: skip
    plain, cached, lookups = [], [], []
    for _ in range(args.repeats):
        plain.append(asyncio.run(connections(args.connections, None)))
        resolver = Resolver()
        cached.append(asyncio.run(connections(args.connections, resolver)))
        lookups.append(resolver.lookups)
    print(
        f"  the loop's getaddrinfo every time      {statistics.median(plain):7.1f} us a connection"
    )
    print(
        f"  the gateway's resolver (cached)        {statistics.median(cached):7.1f} us a connection"
    )
    print(
        f"  lookups the resolver made per run:     {lookups} (for {args.connections} connections)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--callgrind", action="store_true")
    parser.add_argument("--only", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only is not None:
        run_only(args.only, args.requests)
        return
    if args.callgrind:
        instructions(args)
        return
    check_cost(args)
    connection_cost(args)


if __name__ == "__main__":
    main()
