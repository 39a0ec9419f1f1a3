"""mitmproxy set up exactly as ``schoolgate run --quiet`` sets it up, without schoolgate's addons
or with them switchable in the running process.

    python3 bench/lean_mitmproxy.py --data-dir DIR [--listen-host H] [--listen-port P]
                                    [--set NAME=VALUE ...] [--switchable CONFIG]
                                    [--switchable-empty] [--time-hooks FILE]

Without ``--switchable``: the baseline that separates what schoolgate's addons cost from
what the runner saves on mitmproxy's own work (no Dumper, logging at INFO: see
``schoolgate.gateway.runner.make_master``). ``bench/gateway_bench.py`` runs it as its "lean"
proxy. It filters nothing.

With ``--switchable CONFIG``: schoolgate's addons are loaded (CONFIG, data in DIR) as
``schoolgate run`` loads them, and ``SIGUSR1`` takes them out of mitmproxy's addon chain,
``SIGUSR2`` puts them back (each prints ``off`` or ``on`` when done). Their threads and
memory stay either way: what changes is only whether mitmproxy offers them each event. So
one process can be measured with and without the addons in turn, and the comparison is free
of what differs from one process to the next (``bench/addon_cost_bench.py``). Not a
gateway either: with the addons off it filters nothing.

With ``--switchable-empty``: the same, with an addon that has no hooks at all in place of
schoolgate's (and ``connection_strategy=lazy``, as schoolgate sets it): what mitmproxy charges
for being one more addon in its chain, before an addon does anything.

With ``--time-hooks FILE`` (and ``--switchable``): every hook of each part, and the one addon
mitmproxy sees, is timed on the event loop as the gateway runs, and the times (nanoseconds,
by ``Part.hook``) go to FILE as JSON when the proxy stops (``bench/hook_times.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from mitmproxy import options

from schoolgate.gateway.runner import make_master, mitm_options, set_options


async def serve(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    (data_dir / "ca").mkdir(parents=True, exist_ok=True)
    opts = options.Options()
    master = make_master(opts, quiet=True)
    loop = asyncio.get_running_loop()
    if args.switchable or args.switchable_empty:
        if args.switchable_empty:
            from hooks_bench import EmptyAddon

            chain = [EmptyAddon()]
        else:
            from schoolgate.gateway import make_addons, make_chain

            parts = make_addons()
            if args.time_hooks:
                for part in parts:
                    time_hooks(part, type(part).__name__)
            chain = make_chain(parts)
            if args.time_hooks:
                time_hooks(chain[0], "all parts")
        master.addons.add(*chain)
        if args.switchable_empty:
            opts.update(connection_strategy="lazy")  # as schoolgate's addons set it
        else:
            opts.update(schoolgate_config=args.switchable, schoolgate_data_dir=str(data_dir))

        def switch(on: bool) -> None:
            for addon in chain:
                if on and addon not in master.addons.chain:
                    master.addons.chain.append(addon)
                elif not on and addon in master.addons.chain:
                    master.addons.chain.remove(addon)
            master.addons.hooks_changed()  # the chain was edited by hand
            print("on" if on else "off", flush=True)

        loop.add_signal_handler(signal.SIGUSR1, switch, False)
        loop.add_signal_handler(signal.SIGUSR2, switch, True)
    opts.update(**mitm_options(args, data_dir))
    set_options(opts, args.set)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, master.shutdown)
    await master.run()
    if args.time_hooks:
        Path(args.time_hooks).write_text(json.dumps(TIMES))
    return 0


TIMED_HOOKS = ("http_connect", "tls_clienthello", "requestheaders", "request", "response")
TIMES: dict[str, list[int]] = collections.defaultdict(list)


def time_hooks(addon: object, label: str) -> None:
    """Wrap ``addon``'s hooks (those of ``TIMED_HOOKS`` it has) to record how long each call
    holds the event loop. An awaitable a hook returns is not waited for: what the loop is
    kept from is the synchronous part."""
    for hook in TIMED_HOOKS:
        fn = getattr(addon, hook, None)
        if callable(fn):
            setattr(addon, hook, _timed(fn, TIMES[f"{label}.{hook}"]))


def _timed(fn: Callable, into: list[int]) -> Callable:
    clock = time.perf_counter_ns

    def timed(*args):
        started = clock()
        result = fn(*args)
        into.append(clock() - started)
        return result

    return timed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="mitmproxy's CA goes in DIR/ca")
    parser.add_argument("--listen-host", default="127.0.0.1")
    parser.add_argument("--listen-port", type=int, default=8080)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    switch = parser.add_mutually_exclusive_group()
    switch.add_argument("--switchable", metavar="CONFIG", help="load schoolgate's addons")
    switch.add_argument(
        "--switchable-empty", action="store_true", help="load an addon with no hooks instead"
    )
    parser.add_argument("--time-hooks", metavar="FILE", help="time the addons' hooks into FILE")
    args = parser.parse_args()
    if args.time_hooks and not args.switchable:
        parser.error("--time-hooks needs --switchable")
    args.quiet = True
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
