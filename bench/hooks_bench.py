"""What schoolgate's addons add to mitmproxy's own work for one HTTP request, without sockets.

    python3 bench/hooks_bench.py [--requests 3000] [--host origin.test --port 80]
    python3 bench/hooks_bench.py --callgrind      # instructions: the same figure on a busy machine

A ``mitmdump``-like master (mitmproxy's default addons, ``flow_detail=0``) is driven through
the events of an allowed HTTP/1.1 request (requestheaders, request, responseheaders, response,
each followed by mitmproxy's ``update``), once bare and once with schoolgate loaded as
``schoolgate run`` loads it (the test config: 127.0.0.1 is a student in a lesson). Prints the
microseconds per request of each and the difference: the addons' own cost, dispatch included.
With ``--callgrind`` each configuration runs twice under ``valgrind --tool=callgrind`` (N and
2N requests) and the difference of the two instruction counts gives instructions per request,
which other work on the machine does not change.

Two reference addons show what any addon costs before it does anything: mitmproxy offers every
event to every addon in its chain, hook or no hook. "empty" is an addon with no hooks at all,
"no-op hooks" one whose ``request`` and ``response`` hooks return at once.

``--dispatch table`` drives the master as ``schoolgate run`` does, its events dispatched
through a table of the hooks that exist (``schoolgate/gateway/hook_table.py``); the default,
``mitmproxy``, is mitmproxy's own dispatch, as under ``mitmdump -s``.

What it leaves out, and ``bench/gateway_bench.py`` measures: sockets, parsing, the origin.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CA_DIR = Path(tempfile.gettempdir()) / "schoolgate-hooks-bench-ca"
HEADERS = (
    ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537"),
    ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    ("accept-language", "en-GB,en;q=0.9"),
    ("accept-encoding", "gzip, deflate"),
    ("cookie", "session=abc123; theme=light"),
    ("connection", "keep-alive"),
)


class EmptyAddon:
    """An addon with no hooks: what mitmproxy's dispatch costs for any addon at all."""

    name = "empty"


class NoOpHooks:
    """An addon whose request and response hooks do nothing (schoolgate's hooks, emptied)."""

    name = "noop_hooks"

    def request(self, flow) -> None:
        pass

    def response(self, flow) -> None:
        pass


CONFIGS = {"bare": None, "empty": EmptyAddon, "noop": NoOpHooks, "schoolgate": None}
LABELS = {
    "bare": "bare mitmproxy",
    "empty": "+ an empty addon",
    "noop": "+ no-op hooks",
    "schoolgate": "+ schoolgate",
}


async def drive(
    which: str, requests: int, host: str, port: int, quiet: bool = False, table: bool = False
) -> float:
    """Microseconds per request of ``requests`` requests through one configuration (``table``:
    events dispatched through the gateway's hook table)."""
    from mitmproxy import hooks, options
    from mitmproxy.proxy.layers.http import (
        HttpRequestHeadersHook,
        HttpRequestHook,
        HttpResponseHeadersHook,
        HttpResponseHook,
    )
    from mitmproxy.test import tflow, tutils
    from mitmproxy.tools import dump

    opts = options.Options()
    master = dump.DumpMaster(opts, with_termlog=False, with_dumper=True)
    if table:
        from schoolgate.gateway.hook_table import use_hook_table

        use_hook_table(master)
    tmp = Path(tempfile.mkdtemp())
    try:
        # One CA for every run: generating a key pair costs a random number of instructions.
        opts.update(confdir=str(CA_DIR), flow_detail=0)
        if CONFIGS[which] is not None:
            master.addons.add(CONFIGS[which]())
        if which == "schoolgate":
            from schoolgate.gateway import make_chain

            shutil.copytree(ROOT / "tests" / "data" / "gateway", tmp / "config")
            master.addons.add(*make_chain())
            opts.update(
                schoolgate_config=str(tmp / "config" / "config.yaml"),
                schoolgate_data_dir=str(tmp / "var"),
                confdir=str(CA_DIR),
            )
            if quiet:  # background work would count by wall time, not by request
                opts.update(
                    schoolgate_bans_interval=3600.0,
                    schoolgate_exceptions_interval=3600.0,
                    schoolgate_reload_interval=3600.0,
                    schoolgate_alerts_interval=3600.0,
                    schoolgate_jobs=False,
                    schoolgate_portal_sender=False,
                )
        await master.addons.trigger_event(hooks.RunningHook())
        client = tflow.tclient_conn()
        client.peername = ("127.0.0.1", 40000)
        client.sni = None
        response = tutils.tresp()

        async def one() -> int:
            flow = tflow.tflow(client_conn=client, resp=False)
            req = flow.request
            req.scheme, req.host, req.port, req.path = "http", host, port, "/page"
            req.headers["host"] = host if port == 80 else f"{host}:{port}"
            for name, value in HEADERS:
                req.headers[name] = value
            lifecycle = master.addons.handle_lifecycle
            await lifecycle(HttpRequestHeadersHook(flow))
            await lifecycle(HttpRequestHook(flow))
            if flow.response is None:
                flow.response = response.copy()
                await lifecycle(HttpResponseHeadersHook(flow))
            await lifecycle(HttpResponseHook(flow))
            return flow.response.status_code

        status = await one()
        if status != 200:
            raise SystemExit(f"the request was not allowed (status {status}): pick another host")
        started = time.perf_counter()
        for _ in range(requests):
            await one()
        elapsed = time.perf_counter() - started
        await master.addons.trigger_event(hooks.DoneHook())
        return elapsed / requests * 1e6
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def instructions(args: argparse.Namespace, which: str, requests: int) -> int:
    out = Path(tempfile.mkdtemp()) / "callgrind.out"
    cmd = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        __file__,
        "--only",
        which,
        "--requests",
        str(requests),
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--dispatch",
        args.dispatch,
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    found = re.search(r"Collected : (\d+)", run.stderr)
    if run.returncode != 0 or not found:
        raise SystemExit(f"valgrind failed:\n{run.stderr[-2000:]}")
    shutil.rmtree(out.parent, ignore_errors=True)
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--host", default="origin.test")
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--callgrind", action="store_true")
    parser.add_argument(
        "--dispatch",
        choices=("mitmproxy", "table"),
        default="mitmproxy",
        help="mitmproxy's own event dispatch, or schoolgate run's hook table",
    )
    parser.add_argument("--only", choices=tuple(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    table = args.dispatch == "table"
    if args.only:
        asyncio.run(drive(args.only, args.requests, args.host, args.port, quiet=True, table=table))
        return 0
    print(
        f"an allowed GET http://{args.host}:{args.port}/page from a student (test config); "
        f"events dispatched by {'the hook table' if table else 'mitmproxy'}"
    )
    if args.callgrind:
        if not shutil.which("valgrind"):
            print("--callgrind needs valgrind: apt-get install -y valgrind", file=sys.stderr)
            return 2
        asyncio.run(drive("bare", 1, args.host, args.port))  # makes the CA, outside valgrind
        n = max(args.requests // 10, 100)
        per = {}
        for which in CONFIGS:
            low, high = instructions(args, which, n), instructions(args, which, 2 * n)
            per[which] = (high - low) / n
            print(f"{LABELS[which]:<18} {per[which]:>12,.0f} instructions per request", end="")
            if which != "bare":
                extra = per[which] - per["bare"]
                print(f"  adds {extra:>9,.0f} ({extra / per['bare'] * 100:.1f}%)", end="")
            print()
        return 0
    # Round by round, each configuration in turn: the machine's speed drifts over a run, and
    # taking turns spreads the drift over all of them instead of favouring the last.
    per = dict.fromkeys(CONFIGS, float("inf"))
    for _ in range(args.reps):
        for which in CONFIGS:
            us = asyncio.run(drive(which, args.requests, args.host, args.port, table=table))
            per[which] = min(per[which], us)
    for which, us in per.items():
        extra = "" if which == "bare" else f"  adds {us - per['bare']:6.1f}"
        print(f"{LABELS[which]:<18} {us:7.1f} us per request{extra}")
    print(f"(best of {args.reps} runs of {args.requests} requests each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
