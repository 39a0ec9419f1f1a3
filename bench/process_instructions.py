"""Instructions per request of the whole proxy process, under valgrind: what the addons cost
against bare ``mitmdump -q``, free of the machine's load.

    python3 bench/process_instructions.py [--requests 200] [--warm 40] [--idle 20]
        [--scenarios keepalive,https] [--proxies bare,switchable,run] [--quiet-background]
        [--keep DIR]

Wall-clock comparisons (``bench/addon_cost_bench.py``, ``bench/gateway_bench.py``) move by
more than the cost being measured on a shared 2-core machine; ``bench/hooks_bench.py`` and
``bench/part_instructions.py`` count instructions, but only of the hooks, without sockets,
HTTP parsing or TLS. Here each proxy is a real process on a real port, run under
``valgrind --tool=callgrind --separate-threads=yes`` (every thread counted, each apart):

1. bare ``mitmdump -q`` (mitmproxy's own, no addons), as an explicit proxy;
2. ``schoolgate run --quiet``'s mitmproxy with schoolgate's addons loaded and switched off,
   as ``addon_cost_bench.py`` switches them (``bench/lean_mitmproxy.py --switchable``, the
   test config, where 127.0.0.1 is a student in a lesson and the origin is allowed: SIGUSR1
   takes the addons out of mitmproxy's chain; their threads and memory stay);
3. the same process with the addons switched back on (SIGUSR2);
4. ``schoolgate run --quiet`` itself, as the README runs it, to show that (3) is what the
   gateway runs (``--proxies`` picks which of bare, switchable (2 and 3) and run are started).

One client in this process (outside valgrind) sends allowed HTTP/1.1 keep-alive GETs on one
connection, to a loopback origin (``keepalive``) or, intercepted, to a TLS origin (``https``:
to ``https://origin.test/page`` through schoolgate's hosts file for (2) to (4), as
``addon_cost_bench.py`` does, and to the TLS origin's address for bare mitmdump). In each
state: ``--warm`` requests (the TLS handshakes among them) not counted, then ``--requests``
requests, then twice as many, each phase ended by ``callgrind_control --dump``, which writes
what every thread executed since the previous dump. Instructions per request are the
difference of the two phases divided by ``--requests``: what a phase costs whatever its
length (the dump, the first request after a pause) cancels out.

Background threads and the event loop's timers run by wall time, which valgrind stretches
about fifty times: after the requests, the process sits idle for ``--idle`` seconds between
two dumps, and each thread's idle instructions a second, times a phase's length, are taken
off that thread's count in the phase (printed: "background"). Thread 1 is the event loop,
where mitmproxy parses, encrypts and calls the hooks; schoolgate's other threads (the
decision log's writer among them) are counted too, the work they do for a request included.
What no correction takes off: the scheduled jobs' threads (``expire`` every minute, and more)
hold the GIL for a while now and then, and the event loop pays to get it back; under valgrind
a job runs for many seconds. ``--quiet-background`` sets (2) to (4) as ``hooks_bench.py
--callgrind`` does (no jobs, no portal sender, the periodic reloads an hour apart): what the
addons cost a request without the work they do by the clock.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from addon_cost_bench import Switchable  # noqa: E402
from gateway_bench import (  # noqa: E402
    Probe,
    Proxy,
    Scenario,
    chosen_scenarios,
    copy_test_config,
    make_scenarios,
    named_origin,
    start_origin,
)

START_TIMEOUT = (
    1800  # seconds: python, mitmproxy and schoolgate start ~50x slower, more on a busy machine
)


@dataclass
class Phase:
    """What each thread executed between two dumps, and how long that took."""

    threads: dict[int, int]
    seconds: float


@dataclass
class Counted:
    """A proxy process under callgrind, whose counters are dumped on demand."""

    pid: int
    out: Path  # callgrind's files: <out>.<dump>-<thread>
    dumps: int = 0
    last: float = field(default_factory=time.monotonic)

    def dump(self) -> Phase:
        """Dump every thread's counts since the last dump (callgrind zeroes them)."""
        seconds = time.monotonic() - self.last
        self.dumps += 1
        # returns once the process has dumped (vgdb wakes it if it sits in a system call)
        subprocess.run(["callgrind_control", "--dump", str(self.pid)], capture_output=True)
        deadline = time.monotonic() + 120
        files: list[Path] = []
        while time.monotonic() < deadline:
            files = list(self.out.parent.glob(f"{self.out.name}.{self.dumps}-*"))
            if files and all(_complete(f) for f in files):
                break
            time.sleep(0.2)
        else:
            raise SystemExit(f"callgrind did not write dump {self.dumps} of {self.pid}")
        self.last = time.monotonic()
        return Phase({int(f.name.rsplit("-", 1)[1]): _total(f) for f in files}, seconds)


def _complete(path: Path) -> bool:
    return re.search(r"^totals: \d+", path.read_text(), re.M) is not None


def _total(path: Path) -> int:
    return int(re.search(r"^totals: (\d+)", path.read_text(), re.M)[1])


def valgrind(out: Path) -> tuple[str, ...]:
    return (
        "valgrind",
        "--tool=callgrind",
        "--separate-threads=yes",
        "--vgdb=yes",  # callgrind_control talks to the process through vgdb
        f"--callgrind-out-file={out}",
        f"--log-file={out}.log",
    )


@dataclass
class State:
    """One proxy state measured: its two phases, and what the idle process does a second."""

    label: str
    short: Phase
    long: Phase
    requests: int
    idle: dict[int, float] = field(default_factory=dict)

    def background(self, phase: Phase) -> dict[int, float]:
        return {tid: self.idle.get(tid, 0.0) * phase.seconds for tid in phase.threads}

    def net(self, phase: Phase) -> dict[int, float]:
        base = self.background(phase)
        return {tid: count - base[tid] for tid, count in phase.threads.items()}

    def per_request(self, threads: set[int] | None = None) -> float:
        """Instructions a request: (2N phase - N phase) / N, background taken off."""
        short, long = self.net(self.short), self.net(self.long)
        keep = threads if threads is not None else set(short) | set(long)
        return sum(long.get(t, 0) - short.get(t, 0) for t in keep) / self.requests

    def raw_per_request(self) -> float:
        return (sum(self.long.threads.values()) - sum(self.short.threads.values())) / self.requests

    def background_per_request(self) -> float:
        short, long = self.background(self.short), self.background(self.long)
        return (sum(long.values()) - sum(short.values())) / self.requests


class Client:
    """The one keep-alive connection of a state, each response checked."""

    def __init__(self, port: int, scenario: Scenario, ca: Path) -> None:
        self.probe = Probe(port, scenario.origin, scenario.name, ca if scenario.https else None)

    def send(self, count: int) -> None:
        self.probe.codes.clear()
        for _ in range(count):
            self.probe.one()
        if self.probe.codes != {200: count}:
            raise SystemExit(f"not every request was answered 200: {self.probe.codes}")
        self.probe.times_us.clear()

    def close(self) -> None:
        self.probe.close()


def measure_state(label: str, counted: Counted, client: Client, args: argparse.Namespace) -> State:
    """Warm-up, then N and 2N requests, each phase between two dumps."""
    client.send(args.warm)
    counted.dump()  # start-up (or the previous state) and the warm-up: not counted
    client.send(args.requests)
    short = counted.dump()
    client.send(2 * args.requests)
    long = counted.dump()
    print(f"    {label}: done ({short.seconds:.0f} s + {long.seconds:.0f} s)", flush=True)
    return State(label, short, long, args.requests)


def idle_rates(counted: Counted, seconds: float) -> dict[int, float]:
    """Each thread's instructions a second while no request comes."""
    counted.dump()
    time.sleep(seconds)
    phase = counted.dump()
    return {tid: count / phase.seconds for tid, count in phase.threads.items()}


# The first request of a connection must be complete within schoolgate_header_timeout (30 s):
# under valgrind, the TLS handshake alone (a certificate made for the host) can take longer.
SLOW = ("--set", "schoolgate_header_timeout=3600")
QUIET = (
    "schoolgate_bans_interval=3600",
    "schoolgate_exceptions_interval=3600",
    "schoolgate_reload_interval=3600",
    "schoolgate_alerts_interval=3600",
    "schoolgate_jobs=false",
    "schoolgate_portal_sender=false",
)


def quiet_options(args: argparse.Namespace) -> tuple[str, ...]:
    """``--set`` arguments that keep schoolgate's work by the clock out (``--quiet-background``)."""
    if not args.quiet_background:
        return ()
    return tuple(arg for option in QUIET for arg in ("--set", option))


def run_bare(scenario: Scenario, args: argparse.Namespace, work: Path, conf: Path) -> list[State]:
    out = Path(tempfile.mkdtemp(prefix="cg-bare-", dir=work)) / "cg.out"
    proxy = Proxy.start("bare", scenario, work, conf, prefix=valgrind(out), timeout=START_TIMEOUT)
    return _measure(proxy, Proxy.stop, scenario, args, out, [("1 bare mitmdump -q", None)])


def run_switchable(
    scenario: Scenario, args: argparse.Namespace, work: Path, conf: Path
) -> list[State]:
    scenario, extra, origin = named_origin(scenario, work)
    extra = (*extra, *SLOW, *quiet_options(args))
    out = Path(tempfile.mkdtemp(prefix="cg-switch-", dir=work)) / "cg.out"
    try:
        proxy = Switchable(
            scenario, work, conf, "schoolgate", extra, prefix=valgrind(out), timeout=START_TIMEOUT
        )
        steps = [("2 schoolgate, addons off", False), ("3 schoolgate, addons on", True)]
        return _measure(proxy, Switchable.stop, scenario, args, out, steps)
    finally:
        if origin is not None:
            origin.shutdown()


def run_schoolgate(
    scenario: Scenario, args: argparse.Namespace, work: Path, conf: Path
) -> list[State]:
    scenario, extra, origin = named_origin(scenario, work)
    extra = (*extra, *SLOW, *quiet_options(args))
    out = Path(tempfile.mkdtemp(prefix="cg-run-", dir=work)) / "cg.out"
    try:
        proxy = Proxy.start(
            "schoolgate", scenario, work, conf, extra, prefix=valgrind(out), timeout=START_TIMEOUT
        )
        steps = [("4 schoolgate run --quiet", None)]
        return _measure(proxy, Proxy.stop, scenario, args, out, steps)
    finally:
        if origin is not None:
            origin.shutdown()


def _measure(
    proxy: Proxy | Switchable,
    stop: Callable[[Any], None],
    scenario: Scenario,
    args: argparse.Namespace,
    out: Path,
    steps: list[tuple[str, bool | None]],
) -> list[State]:
    """Each step (a label, and the addons to switch on or off, or None) on one process, then
    its idle rates, which every step's background correction uses."""
    states = []
    try:
        counted = Counted(proxy.proc.pid, out)
        client = Client(proxy.port, scenario, proxy.ca)
        try:
            for label, on in steps:
                if on is not None and isinstance(proxy, Switchable):
                    proxy.switch(on)
                states.append(measure_state(label, counted, client, args))
            idle = idle_rates(counted, args.idle)
        finally:
            client.close()
    finally:
        stop(proxy)
    for state in states:
        state.idle = idle
    return states


def print_idle(states: list[State]) -> None:
    seen = []
    for state in states:
        if state.idle not in seen:
            seen.append(state.idle)
            rates = ", ".join(f"thread {t} {r:,.0f}" for t, r in sorted(state.idle.items()))
            print(f"    idle instructions a second, process of {state.label}: {rates}")


def report(scenario: Scenario, states: list[State], args: argparse.Namespace) -> None:
    print(
        f"  {scenario.title}: instructions per request, whole process, "
        f"({2 * args.requests} - {args.requests} requests) / {args.requests}"
    )
    print(
        f"    {'':<28} {'all threads':>12} {'event loop':>12} {'other threads':>14} "
        f"{'background':>11} {'uncorrected':>12}  threads"
    )
    for state in states:
        total, loop = state.per_request(), state.per_request({1})
        print(
            f"    {state.label:<28} {total:>12,.0f} {loop:>12,.0f} {total - loop:>14,.0f} "
            f"{state.background_per_request():>11,.0f} {state.raw_per_request():>12,.0f}  "
            f"{len(state.long.threads)}"
        )
    print_idle(states)
    by = {state.label[0]: state for state in states}
    if "3" not in by:
        print(flush=True)
        return
    bare, off, on = by.get("1"), by["2"], by["3"]
    for name, threads in (("all threads", None), ("event loop only", {1})):
        cost = on.per_request(threads) - off.per_request(threads)
        of_bare = (
            f"{cost / bare.per_request(threads) * 100:.1f}% of bare mitmdump -q (1), "
            if bare
            else ""
        )
        print(
            f"    the addons' cost, (3) - (2), {name}: {cost:,.0f} instructions a request = "
            f"{of_bare}{cost / off.per_request(threads) * 100:.1f}% of (2)"
        )
    if "4" in by:
        for name, threads in (("all threads", None), ("event loop only", {1})):
            run, ref = by["4"].per_request(threads), on.per_request(threads)
            print(
                f"    schoolgate run --quiet (4) against (3), {name}: {run - ref:+,.0f} "
                f"({(run / ref - 1) * 100:+.1f}%)"
            )
    print(flush=True)


RUNS = {"bare": run_bare, "switchable": run_switchable, "run": run_schoolgate}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="N: phases of N and 2N")
    parser.add_argument("--warm", type=int, default=40, help="requests before counting")
    parser.add_argument("--idle", type=float, default=20, help="seconds of the idle phase")
    parser.add_argument("--scenarios", default="keepalive,https")
    parser.add_argument(
        "--proxies", default="bare,switchable,run", help="of bare (1), switchable (2, 3), run (4)"
    )
    parser.add_argument(
        "--quiet-background",
        action="store_true",
        help="no scheduled jobs, portal sender or frequent reloads in (2) to (4)",
    )
    parser.add_argument("--keep", metavar="DIR", help="keep callgrind's files here")
    args = parser.parse_args()
    chosen = chosen_scenarios(parser, args.scenarios)
    if "newconn" in chosen:
        parser.error("newconn is not measured here: one keep-alive connection per state")
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        print("needs valgrind: apt-get install -y valgrind", file=sys.stderr)
        return 2
    # mitmdump is the venv's; under valgrind the proxies wait far longer than a client's default
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    os.environ["PYTHONHASHSEED"] = "0"
    socket.setdefaulttimeout(600)
    work = Path(args.keep or tempfile.mkdtemp(prefix="process-instructions-"))
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"valgrind --tool=callgrind, every thread; {args.warm} requests to warm up, then phases "
        f"of {args.requests} and {2 * args.requests}; idle {args.idle:g} s"
        + ("; quiet background" if args.quiet_background else ""),
        flush=True,
    )
    try:
        conf = copy_test_config(work)
        plain, tls = start_origin(), start_origin(work / "origin-tls")
        try:
            scenarios = make_scenarios(plain, tls)
            for name in chosen:
                scenario = scenarios[name]
                print(f"{scenario.title} ({scenario.url} for bare mitmdump):", flush=True)
                states = []
                for proxies, run in RUNS.items():
                    if proxies in args.proxies.split(","):
                        # one proxy that fails (a start slower than START_TIMEOUT on a busy
                        # machine) leaves the others' figures standing
                        try:
                            states += run(scenario, args, work, conf)
                        except (SystemExit, OSError) as exc:
                            print(f"    {proxies}: not measured ({exc})", flush=True)
                report(scenario, states, args)
        finally:
            plain.shutdown()
            tls.shutdown()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
