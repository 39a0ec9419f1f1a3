"""mitmproxy set up exactly as ``schoolgate run --quiet`` sets it up, without schoolgate's addons
or with them switchable in the running process.

    python3 bench/lean_mitmproxy.py --data-dir DIR [--listen-host H] [--listen-port P]
                                    [--set NAME=VALUE ...] [--switchable CONFIG]

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
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from mitmproxy import options

from schoolgate.gateway.runner import make_master, mitm_options, set_options


async def serve(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    (data_dir / "ca").mkdir(parents=True, exist_ok=True)
    opts = options.Options()
    master = make_master(opts, quiet=True)
    loop = asyncio.get_running_loop()
    if args.switchable:
        from schoolgate.gateway import make_chain

        chain = make_chain()
        master.addons.add(*chain)
        opts.update(schoolgate_config=args.switchable, schoolgate_data_dir=str(data_dir))

        def switch(on: bool) -> None:
            for addon in chain:
                if on and addon not in master.addons.chain:
                    master.addons.chain.append(addon)
                elif not on and addon in master.addons.chain:
                    master.addons.chain.remove(addon)
            print("on" if on else "off", flush=True)

        loop.add_signal_handler(signal.SIGUSR1, switch, False)
        loop.add_signal_handler(signal.SIGUSR2, switch, True)
    opts.update(**mitm_options(args, data_dir))
    set_options(opts, args.set)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, master.shutdown)
    await master.run()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="mitmproxy's CA goes in DIR/ca")
    parser.add_argument("--listen-host", default="127.0.0.1")
    parser.add_argument("--listen-port", type=int, default=8080)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--switchable", metavar="CONFIG", help="load schoolgate's addons")
    args = parser.parse_args()
    args.quiet = True
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
