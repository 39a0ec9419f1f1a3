"""Instructions per allowed request in each of schoolgate's parts, under valgrind.

    python3 bench/part_instructions.py [--requests 300] [--host origin.test --port 80]

``bench/hooks_bench.py --callgrind`` gives what the addons add in all; this says which part
adds it. The same events as there (an allowed HTTP/1.1 GET from a student, the test config,
``schoolgate run``'s hook table) are driven in one process under ``valgrind --tool=callgrind``
with collection off, and in each phase of ``--requests`` requests one part's hooks (or, in the
phase "all parts", the one addon mitmproxy sees: the parts and the dispatch between them) are
called through ``functools.reduce``, the function callgrind is told to count inside
(``--toggle-collect``; in the phase "all parts" the parts' hooks are called as the gateway
calls them, not through the wrappers that count each part in its own phase); a call of
``math.gcd`` between phases makes callgrind write what each
phase counted (``--dump-before``). Only the event loop's thread is read
(``--separate-threads``): the gateway's background threads do not count. The counts hold the
``reduce`` call around each hook (printed, about 1,500 instructions a call; subtract it per
hook call for a part's own work). A part's first hook of a request that reads the request's
view (``flowinfo.request_view``) pays for making it: that is GatewayPages.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hooks_bench import CA_DIR, HEADERS, ROOT  # noqa: E402

HOOKS = ("requestheaders", "request", "responseheaders", "response", "update")
ACTIVE: list[str | None] = [None]


def _counted(addon: object, label: str) -> None:
    """Call ``addon``'s hooks through ``functools.reduce`` while its phase runs."""
    reduce = functools.reduce
    for hook in HOOKS:
        fn = getattr(addon, hook, None)
        if not callable(fn):
            continue

        def counted(*args, fn=fn, label=label):
            if ACTIVE[0] == label:
                return reduce(lambda _a, _b: fn(*args), (0,), None)
            return fn(*args)

        setattr(addon, hook, counted)


def _choose(served: object, counted: object) -> None:
    """``served``'s hooks counted in the phase "all parts"; in a part's phase, ``counted``'s
    (the same parts, each part's hooks counted in its own phase) called instead."""
    reduce = functools.reduce
    for hook in HOOKS:
        fn = getattr(served, hook, None)
        if not callable(fn):
            continue
        other = getattr(counted, hook)

        def choose(*args, fn=fn, other=other):
            if ACTIVE[0] == "all parts":
                return reduce(lambda _a, _b: fn(*args), (0,), None)
            return other(*args)

        setattr(served, hook, choose)


async def phases(out: Path, host: str, port: int, requests: int, gc_off: bool) -> None:
    from mitmproxy import hooks, options
    from mitmproxy.proxy.layers.http import (
        HttpRequestHeadersHook,
        HttpRequestHook,
        HttpResponseHeadersHook,
        HttpResponseHook,
    )
    from mitmproxy.test import tflow, tutils
    from mitmproxy.tools import dump

    from schoolgate.gateway import make_addons, make_chain
    from schoolgate.gateway.hook_table import use_hook_table

    opts = options.Options()
    master = dump.DumpMaster(opts, with_termlog=False, with_dumper=True)
    use_hook_table(master)
    tmp = Path(tempfile.mkdtemp())
    shutil.copytree(ROOT / "tests" / "data" / "gateway", tmp / "config")
    parts = make_addons()
    # The dispatch keeps the hooks it finds when it is made: this one the parts' own, as the
    # gateway serves them (what "all parts" counts: no part's counting wrapper in it) ...
    served = make_chain(parts)[0]
    labels = []
    for part in parts:
        if any(callable(getattr(part, hook, None)) for hook in HOOKS):
            _counted(part, type(part).__name__)
            labels.append(type(part).__name__)
    # ... and this one the counted ones, for each part's phase.
    _choose(served, make_chain(parts)[0])
    master.addons.add(served)
    opts.update(
        confdir=str(CA_DIR),
        flow_detail=0,
        schoolgate_config=str(tmp / "config" / "config.yaml"),
        schoolgate_data_dir=str(tmp / "var"),
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
    lifecycle = master.addons.handle_lifecycle

    async def one() -> int:
        flow = tflow.tflow(client_conn=client, resp=False)
        req = flow.request
        req.scheme, req.host, req.port, req.path = "http", host, port, "/page"
        req.headers["host"] = host if port == 80 else f"{host}:{port}"
        for name, value in HEADERS:
            req.headers[name] = value
        await lifecycle(HttpRequestHeadersHook(flow))
        await lifecycle(HttpRequestHook(flow))
        if flow.response is None:
            flow.response = response.copy()
            await lifecycle(HttpResponseHeadersHook(flow))
        await lifecycle(HttpResponseHook(flow))
        return flow.response.status_code

    if await one() != 200:
        raise SystemExit("the request was not allowed: pick another host")
    for _ in range(300):  # the caches as warm as in service
        await one()
    if gc_off:
        gc.disable()
    names = ["all parts", *labels]
    math.gcd(1, 1)  # what was counted so far (nothing): the first dump
    for name in names:
        ACTIVE[0] = name
        for _ in range(requests):
            await one()
        ACTIVE[0] = None
        math.gcd(1, 1)
    for _ in range(requests):  # the reduce call itself, four times a request
        for _ in range(4):
            functools.reduce(lambda _a, _b: None, (0,), None)
    math.gcd(1, 1)
    out.write_text("\n".join(["(start)", *names, "(reduce x4)"]) + "\n")
    await master.addons.trigger_event(hooks.DoneHook())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--host", default="origin.test")
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument(
        "--gc-off",
        action="store_true",
        help="an experiment: the cyclic garbage collector disabled once the gateway runs, to "
        "see what share of each count is its passes",
    )
    parser.add_argument(
        "--keep", metavar="DIR", help="keep callgrind's files here (for callgrind_annotate)"
    )
    parser.add_argument("--phases", help=argparse.SUPPRESS)  # run inside valgrind
    args = parser.parse_args()
    if args.phases:
        asyncio.run(phases(Path(args.phases), args.host, args.port, args.requests, args.gc_off))
        return 0
    if not shutil.which("valgrind"):
        print("needs valgrind: apt-get install -y valgrind", file=sys.stderr)
        return 2
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp())
    work.mkdir(parents=True, exist_ok=True)
    try:
        cmd = [
            "valgrind",
            "--tool=callgrind",
            "--collect-atstart=no",
            "--separate-threads=yes",
            "--toggle-collect=*functools_reduce*",
            "--dump-before=*math_gcd*",
            f"--callgrind-out-file={work / 'cg.out'}",
            sys.executable,
            __file__,
            "--phases",
            str(work / "phases.txt"),
            "--requests",
            str(args.requests),
            "--host",
            args.host,
            "--port",
            str(args.port),
            *(["--gc-off"] if args.gc_off else []),
        ]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
        if run.returncode != 0:
            raise SystemExit(f"valgrind failed:\n{run.stderr[-2000:]}")
        names = (work / "phases.txt").read_text().split("\n")[:-1]
        dumps = sorted(
            work.glob("cg.out.*-01"), key=lambda p: int(re.search(r"\.(\d+)-01$", p.name)[1])
        )
        counts = []
        for dump_file in dumps:
            found = re.search(r"^(?:summary|totals): (\d+)", dump_file.read_text(), re.M)
            counts.append(int(found[1]) if found else 0)
        print(
            f"an allowed GET http://{args.host}:{args.port}/page from a student (test config), "
            f"{args.requests} requests a phase: instructions per request"
            + (" (garbage collector off)" if args.gc_off else "")
        )
        for name, count in zip(names, counts, strict=False):
            if not name.startswith("(start"):
                print(f"  {name:<24} {count / args.requests:>10,.0f}")
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
