"""What schoolgate's addons cost, measured in one process with them switched off and on in turn.

    python3 bench/addon_cost_bench.py [--seconds 5] [--pairs 6] [--processes 3]
        [--scenarios keepalive,https,newconn] [--concurrency 10] [--latency-requests 200]
        [--addon schoolgate|empty] [--no-pin]

``bench/gateway_bench.py`` compares separate processes, and the same proxy runs several
percent faster or slower from one start to the next (where its memory landed), and the
machine's speed drifts while the proxies take turns: that noise is as large as the cost being
measured. Here one process serves throughout (``bench/lean_mitmproxy.py --switchable``:
mitmproxy set up as ``schoolgate run --quiet`` sets it up, schoolgate's addons loaded with the
test config, where 127.0.0.1 is a student in a lesson and the origin is uncategorised, so
allowed), and the addons are taken out of mitmproxy's addon chain and put back between loads
of ``hey`` (``--seconds`` each). Each pair of loads (off then on, or on then off, alternating)
gives one ratio; the cost is the median over the pairs of every process (``--processes``
fresh ones, each with ``--pairs`` pairs), with the proxy's CPU time per request beside it.
A low-load pass then times ``--latency-requests`` requests each way on one connection, in
alternating blocks, for the p50/p99 the addons add.

What it leaves out: the addons' threads and memory are there in both states (their
background work, about 3.5 ms of CPU a second when idle, counts in both), and what
``schoolgate run`` saves on mitmproxy's own work (no Dumper, logging at INFO) is in both
states too: this is what the addons add to mitmproxy as the gateway runs it. Needs ``hey``.

``--addon empty`` switches an addon with no hooks instead of schoolgate's, by the same
method: the part of the figure that is mitmproxy's price for any addon in its chain (it
offers every event to every addon), which no addon's code can take away.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_bench import (  # noqa: E402
    SCENARIOS,
    Probe,
    Proxy,
    Scenario,
    cpu_seconds,
    hey,
    named_origin,
    percentile,
    run_scenarios,
)


class Switchable:
    """One proxy process whose schoolgate addons can be switched off and on."""

    def __init__(
        self,
        scenario: Scenario,
        work: Path,
        conf: Path,
        addon: str,
        extra: tuple[str, ...] = (),
        prefix: tuple[str, ...] = (),
        timeout: float = 30,
    ) -> None:
        """``prefix``: a command to run the proxy under (valgrind), ``timeout``: how long it
        may take to listen."""
        kind = "switchable-empty" if addon == "empty" else "switchable"
        # Its stdout is read: it prints "on" or "off" once switched.
        self.proxy = Proxy.start(
            kind, scenario, work, conf, extra, subprocess.PIPE, prefix=prefix, timeout=timeout
        )
        self.proc, self.port, self.ca = self.proxy.proc, self.proxy.port, self.proxy.ca
        self.address = self.proxy.address
        self.env = self.proxy.client_env(scenario.https)

    def switch(self, on: bool) -> None:
        self.proc.send_signal(signal.SIGUSR2 if on else signal.SIGUSR1)
        want = "on" if on else "off"
        # printed once the chain has changed (the log shares stdout: skip its lines)
        for line in self.proc.stdout:
            if line.strip() in ("on", "off"):
                if line.strip() == want:
                    return
                break
        raise SystemExit(f"the proxy did not switch its addons {want}")

    def stop(self) -> None:
        self.proxy.stop()


def load(proxy: Switchable, scenario: Scenario, args: argparse.Namespace) -> dict:
    """One hey load: responses a second over the run, and the proxy's CPU per request."""
    before = cpu_seconds(proxy.proc.pid)
    result = hey(
        scenario.url,
        proxy.address,
        args.seconds,
        args.concurrency,
        scenario.hey_args,
        proxy.env,
    )
    requests = sum(int(n) for n in result["codes"].values())
    if set(result["codes"]) != {"200"}:
        raise SystemExit(f"not every request was answered 200: {result['codes']}")
    return {
        "rps": requests / args.seconds,
        "cpu_us": (cpu_seconds(proxy.proc.pid) - before) / max(requests, 1) * 1e6,
    }


def latency(
    proxy: Switchable, scenario: Scenario, args: argparse.Namespace
) -> dict[bool, list[float]]:
    """Low load: one connection, ``--latency-rate`` requests a second, in blocks of 50 with
    the addons off and on in turn."""
    probe = Probe(proxy.port, scenario.origin, scenario.name, proxy.ca if scenario.https else None)
    times: dict[bool, list[float]] = {False: [], True: []}
    block = 50
    state = False
    probe.start()
    try:
        while min(len(t) for t in times.values()) < args.latency_requests:
            proxy.switch(state)
            probe.start(warm=2)  # a request or two after the switch, not timed
            next_at = time.monotonic()
            for _ in range(block):
                probe.one()
                next_at += 1 / args.latency_rate
                pause = next_at - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            times[state].extend(probe.times_us)
            state = not state
    finally:
        probe.close()
    return times


def measure(scenario: Scenario, args: argparse.Namespace, work: Path, conf: Path) -> None:
    what = "an addon with no hooks" if args.addon == "empty" else "schoolgate's addons"
    if args.addon == "schoolgate":  # HTTPS to a named origin, which the destination check allows
        scenario, extra, origin = named_origin(scenario, work)
    else:
        extra, origin = (), None
    try:
        measure_on(scenario, args, work, conf, what, extra)
    finally:
        if origin is not None:
            origin.shutdown()


def measure_on(
    scenario: Scenario,
    args: argparse.Namespace,
    work: Path,
    conf: Path,
    what: str,
    extra: tuple[str, ...],
) -> None:
    print(
        f"{scenario.title}, {what}: {args.processes} processes x {args.pairs} pairs of "
        f"{args.seconds}s loads ({args.concurrency} connections), {scenario.url}",
        flush=True,
    )
    costs, extra_us, per_process = [], [], []
    times: dict[bool, list[float]] = {False: [], True: []}
    for number in range(1, args.processes + 1):
        proxy = Switchable(scenario, work, conf, args.addon, extra)
        try:
            for on in (True, False):  # warm both ways: caches, connections, the policy
                proxy.switch(on)
                hey(scenario.url, proxy.address, 2, args.concurrency, scenario.hey_args, proxy.env)
            mine = []
            for pair in range(args.pairs):
                order = (False, True) if pair % 2 == 0 else (True, False)
                done = {}
                for on in order:
                    proxy.switch(on)
                    done[on] = load(proxy, scenario, args)
                ratio = done[True]["rps"] / done[False]["rps"]
                added = done[True]["cpu_us"] - done[False]["cpu_us"]
                costs.append(1 - ratio)
                mine.append(1 - ratio)
                extra_us.append(added)
                print(
                    f"  process {number}, pair {pair + 1}: off {done[False]['rps']:7.1f} req/s "
                    f"({done[False]['cpu_us']:5.0f} us CPU/request), on {done[True]['rps']:7.1f} "
                    f"req/s ({done[True]['cpu_us']:5.0f}): cost {(1 - ratio) * 100:+5.1f}%, "
                    f"{added:+4.0f} us CPU/request",
                    flush=True,
                )
            per_process.append(statistics.median(mine))
            for on, found in latency(proxy, scenario, args).items():
                times[on].extend(found)
        finally:
            proxy.stop()
    print(
        f"  cost of {what}, median of {len(costs)} pairs: "
        f"{statistics.median(costs) * 100:+.1f}% of throughput "
        f"(pairs from {min(costs) * 100:+.1f}% to {max(costs) * 100:+.1f}%; each process's "
        f"median: {', '.join(f'{c * 100:+.1f}%' for c in per_process)}); "
        f"CPU per request {statistics.median(extra_us):+.0f} us (median)"
    )
    off, on = times[False], times[True]
    print(
        f"  low load ({len(on)} requests each way, {args.latency_rate:g}/s): off p50 "
        f"{percentile(off, 0.5) / 1000:.3f} ms, p99 {percentile(off, 0.99) / 1000:.3f} ms; on "
        f"p50 {percentile(on, 0.5) / 1000:.3f} ms, p99 {percentile(on, 0.99) / 1000:.3f} ms; "
        f"added p50 {(percentile(on, 0.5) - percentile(off, 0.5)) / 1000:+.3f} ms, p99 "
        f"{(percentile(on, 0.99) - percentile(off, 0.99)) / 1000:+.3f} ms",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--latency-requests", type=int, default=200)
    parser.add_argument("--latency-rate", type=float, default=50)
    parser.add_argument(
        "--addon",
        choices=("schoolgate", "empty"),
        default="schoolgate",
        help="what to switch: schoolgate's addons, or an addon with no hooks (the reference)",
    )
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args()
    return run_scenarios(parser, args, measure)


if __name__ == "__main__":
    sys.exit(main())
