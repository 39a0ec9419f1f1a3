"""Cost of the circumvention detectors on ordinary school traffic (they run on every request).

    python3 bench/detectors_bench.py

Uses the ordinary-traffic list the detector tests check for false alarms. Two figures: the
steady state (every host seen before, as on a running gateway) and the first sight of each
host (the host-analysis caches emptied before each round: normalisation, disguises and the
registrable domain from the Public Suffix List are worked out again).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_circumvention import ORDINARY_TRAFFIC, SCHOOL  # noqa: E402

from schoolgate.circumvention import analyse_host  # noqa: E402
from schoolgate.core.hosts import registrable_domain  # noqa: E402


def steady(rounds: int = 2000) -> float:
    for facts in ORDINARY_TRAFFIC:  # warm the caches, as a running gateway's would be
        SCHOOL.inspect(facts)
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


def main() -> None:
    what = f"over {len(ORDINARY_TRAFFIC)} ordinary requests ({len(SCHOOL.names)} detectors"
    print(f"{steady():.2f} us per inspect {what}, with a circumvention list lookup)")
    print(f"{first_sight():.2f} us per inspect {what}, each host seen for the first time)")


if __name__ == "__main__":
    main()
