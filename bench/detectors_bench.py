"""Cost of the circumvention detectors on ordinary school traffic (they run on every request).

    python3 bench/detectors_bench.py
    python3 bench/detectors_bench.py --callgrind    # instructions per inspect, under valgrind

Uses the ordinary-traffic list the detector tests check for false alarms. Two figures: the
steady state (every host seen before, as on a running gateway) and the first sight of each
host (the host-analysis caches emptied before each round: normalisation, disguises and the
registrable domain from the Public Suffix List are worked out again). With ``--callgrind``,
instructions instead of time (the machine's load does not change them): whole runs under
valgrind with 0 and with N rounds of each, differenced.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_circumvention import ORDINARY_TRAFFIC, SCHOOL  # noqa: E402

from schoolgate.circumvention import analyse_host  # noqa: E402
from schoolgate.core.hosts import registrable_domain  # noqa: E402


def warm() -> None:
    for facts in ORDINARY_TRAFFIC:  # warm the caches, as a running gateway's would be
        SCHOOL.inspect(facts)


def steady(rounds: int = 2000) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        for facts in ORDINARY_TRAFFIC:
            SCHOOL.inspect(facts)
    return (time.perf_counter() - start) / (rounds * len(ORDINARY_TRAFFIC)) * 1e6


def first_sight(rounds: int = 300) -> float:
    elapsed = 0.0
    for _ in range(rounds):
        analyse_host.cache_clear()
        registrable_domain.cache_clear()
        SCHOOL._clean_names.clear()  # what the name-only detectors found clean, per host
        start = time.perf_counter()
        for facts in ORDINARY_TRAFFIC:
            SCHOOL.inspect(facts)
        elapsed += time.perf_counter() - start
    return elapsed / (rounds * len(ORDINARY_TRAFFIC)) * 1e6


def instructions(steady_rounds: int, first_sight_rounds: int) -> int:
    """Instructions of a whole run of this script under valgrind (callgrind)."""
    command = [
        *("valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"),
        *(sys.executable, __file__, "--steady-rounds", str(steady_rounds)),
        *("--first-sight-rounds", str(first_sight_rounds)),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}  # the same sets' layout in every run
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    assert found, done.stderr[-2000:]
    return int(found[1].replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--callgrind", action="store_true", help="count instructions")
    parser.add_argument("--steady-rounds", type=int, default=2000)
    parser.add_argument("--first-sight-rounds", type=int, default=300)
    args = parser.parse_args()
    warm()  # in every run, so that the differenced valgrind runs count only the rounds
    what = f"over {len(ORDINARY_TRAFFIC)} ordinary requests ({len(SCHOOL.names)} detectors"
    if args.callgrind:
        base = instructions(0, 0)
        n, m = 50, 20
        per_steady = (instructions(n, 0) - base) / (n * len(ORDINARY_TRAFFIC))
        per_first = (instructions(0, m) - base) / (m * len(ORDINARY_TRAFFIC))
        print(f"{per_steady:,.0f} instructions per inspect {what}, hosts seen before)")
        print(f"{per_first:,.0f} instructions per inspect {what}, each host seen first)")
        return
    if args.steady_rounds:
        print(f"{steady(args.steady_rounds):.2f} us per inspect {what}, hosts seen before)")
    if args.first_sight_rounds:
        print(
            f"{first_sight(args.first_sight_rounds):.2f} us per inspect {what}, "
            "each host seen for the first time)"
        )


if __name__ == "__main__":
    main()
