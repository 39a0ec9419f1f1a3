"""Cost of the circumvention detectors on ordinary school traffic (they run on every request).

    python3 bench/detectors_bench.py

Uses the ordinary-traffic list the detector tests check for false alarms.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_circumvention import ORDINARY_TRAFFIC, SCHOOL  # noqa: E402


def main() -> None:
    for facts in ORDINARY_TRAFFIC:  # warm the caches, as a running gateway's would be
        SCHOOL.inspect(facts)
    rounds = 2000
    start = time.perf_counter()
    for _ in range(rounds):
        for facts in ORDINARY_TRAFFIC:
            SCHOOL.inspect(facts)
    elapsed = time.perf_counter() - start
    per = elapsed / (rounds * len(ORDINARY_TRAFFIC)) * 1e6
    print(
        f"{per:.2f} us per inspect over {len(ORDINARY_TRAFFIC)} ordinary requests "
        f"({len(SCHOOL.names)} detectors, with a circumvention list lookup)"
    )


if __name__ == "__main__":
    main()
