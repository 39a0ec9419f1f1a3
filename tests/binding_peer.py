"""Another process with its own bindings cache, as a second worker or gateway has: it reads
commands on its standard input and answers on its standard output.

    lookup ADDRESS              -> the user bound to ADDRESS in its cache, or "-"
    watch ADDRESS WHO SECONDS   -> "seen <monotonic time>" once its cache says WHO (or "-" for
                                   nobody) on ADDRESS, or "timeout" after SECONDS

Run as ``python tests/binding_peer.py DATABASE_URL SOURCE[,SOURCE...]``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schoolgate.bindings.cache import BindingCache  # noqa: E402
from schoolgate.storage.db import open_database  # noqa: E402


def main(url: str, order: str) -> None:
    cache = BindingCache(open_database(url), order=order.split(","))
    cache.start()
    while cache.refreshed_at is None:
        time.sleep(0.01)
    print("ready", flush=True)
    for line in sys.stdin:
        command, *args = line.split()
        if command == "lookup":
            binding = cache.lookup(args[0], traffic=False)
            print(binding.who() if binding else "-", flush=True)
        elif command == "watch":
            address, who, seconds = args[0], args[1], float(args[2])
            deadline = time.monotonic() + seconds
            while True:
                binding = cache.lookup(address, traffic=False)
                if (binding.who() if binding else "-") == who:
                    print(f"seen {time.monotonic()!r}", flush=True)
                    break
                if time.monotonic() > deadline:
                    print("timeout", flush=True)
                    break
                time.sleep(0.001)
    cache.stop()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
