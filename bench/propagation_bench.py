"""How long a change made through one gateway takes to reach another gateway's decisions, two
real gateways on one real PostgreSQL server (the set-up of ``tests/test_postgres_e2e.py``):
``python3 bench/propagation_bench.py [--rounds 5]``.

Each round: an exception added with the CLI (until the second gateway lets the site through)
and revoked (until it blocks again). The first round also bans a device through the first
gateway by circumvention attempts (until the second shows the suspension page) and lifts the
ban with the CLI (until the second serves the device again): the same attempts again within
the config's ``repeat_minutes`` would not count. Times run from the moment the CLI returned or
the first gateway answered, polled every 0.1 s with curl; the promise is 5 s (the gateways
re-read the database every 3 s by default).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from pg_server import PostgresServer  # noqa: E402
from test_postgres_e2e import BAN_CLIENT, SOCIAL_ORIGIN, Trust  # noqa: E402

STEP = 0.1
GIVE_UP = 60.0


def until(predicate) -> float:
    """Seconds until ``predicate()`` holds (polled every :data:`STEP`); inf after 60 s."""
    started = time.monotonic()
    while time.monotonic() - started < GIVE_UP:
        if predicate():
            return time.monotonic() - started
        time.sleep(STEP)
    return float("inf")


def one_round(trust: Trust, n: int) -> dict[str, float]:
    url = f"{trust.social}/round-{n}"
    page = f"{trust.origin}/homework-{n}"
    out = trust.cli(
        "allow", "add", "--host", SOCIAL_ORIGIN, "--for", "network=127.0.0.1/32",
        "--minutes", "30", "--by", "it.support", "--reason", "bench",
    )  # fmt: skip
    times = {"exception added": until(lambda: trust.b.status(url) == 200)}
    exception_id = re.search(r"#(\d+)", out).group(1)
    trust.cli("allow", "revoke", exception_id, "--by", "it.support", "--reason", "bench")
    times["exception revoked"] = until(lambda: trust.b.status(url) == 403)
    if n:
        return times
    for host in ("proxy1.test", "proxy2.test", "proxy3.test"):
        trust.a.status(f"http://{host}/{n}", BAN_CLIENT)
    trust.a.get(page, BAN_CLIENT)
    times["ban made"] = until(
        lambda: trust.b.get(page, BAN_CLIENT)[1].get("x-schoolgate-suspended") == "ban"
    )
    bans = json.loads(trust.cli("bans", "list", "--json"))
    ban = next(b for b in bans if b["kind"] == "ban")
    trust.cli("bans", "lift", str(ban["id"]), "--by", "it.support", "--reason", "bench")
    times["ban lifted"] = until(lambda: trust.b.status(page, BAN_CLIENT) == 200)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    pg = PostgresServer()
    pg.start()
    tmp = Path(tempfile.mkdtemp(prefix="propagation-"))
    trust = Trust(tmp, pg)
    try:
        trust.start()
        rounds = [one_round(trust, n) for n in range(args.rounds)]
    finally:
        trust.stop()
        pg.remove()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{args.rounds} rounds, two gateways on PostgreSQL (refresh every 3 s):")
    for what in rounds[0]:
        values = [r[what] for r in rounds if what in r]
        print(
            f"  {what:18} median {statistics.median(values):.1f} s, max {max(values):.1f} s "
            f"({len(values)} measured, over 5 s: {sum(v > 5 for v in values)})"
        )


if __name__ == "__main__":
    main()
