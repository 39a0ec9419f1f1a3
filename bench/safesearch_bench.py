"""What safe search enforcement costs a request: ``python3 bench/safesearch_bench.py``.

:func:`schoolgate.core.safesearch.enforce` runs for every allowed request of a role with safe search
or YouTube Restricted Mode on. Most hosts are not search engines and should cost a couple of
string checks; search pages are parsed and rewritten. Best of five runs of 100,000 calls each.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schoolgate.core.safesearch import enforce  # noqa: E402

OTHER_HOSTS = [
    "www.example.com",
    "cdn.jsdelivr.net",
    "static.xx.fbcdn.net",
    "i.ytimg.com",
    "fonts.gstatic.com",
]
SEARCHES = [
    ("www.google.co.uk", "/search?q=volcanoes&safe=off"),
    ("www.bing.com", "/search?q=volcanoes&adlt=off"),
    ("duckduckgo.com", "/?q=volcanoes&kp=-2"),
    ("www.youtube.com", "/results?search_query=volcanoes"),
]


def per_call(calls: list[tuple[str, str]], rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for host, path in calls:
            enforce(host, path, safe_search=True, youtube_restrict="strict")
        best = min(best, (time.perf_counter() - started) / len(calls))
    return best


def main() -> None:
    others = [(host, "/some/path?x=1") for host in OTHER_HOSTS] * 20_000
    searches = SEARCHES * 25_000
    print(f"other hosts: {per_call(others) * 1e6:.2f} us a call (best of 5 x {len(others)})")
    print(f"search pages: {per_call(searches) * 1e6:.2f} us a call (best of 5 x {len(searches)})")


if __name__ == "__main__":
    main()
