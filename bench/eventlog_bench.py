"""Decision log throughput and memory: ``python3 bench/eventlog_bench.py [--seconds 10]``.

1. Sustained: events recorded at ``--rate`` per second (default 10,000) for ``--seconds``
   into a fresh SQLite file; reports events written per second, the queue's peak and loss.
2. Burst: ``--burst`` events (default 100,000) recorded as fast as possible; reports the cost
   of ``record()``, the queue peak, the process RSS before/after (VmHWM), and time to drain.
3. Memory per queued event (tracemalloc over 10,000 block events).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import func, select  # noqa: E402

from schoolgate.db import EventRow, open_database  # noqa: E402
from schoolgate.eventlog import EventLog, decision_event, new_ref  # noqa: E402
from schoolgate.model import Action, Decision, Identity, ListMatch, RequestFacts, Window  # noqa: E402

AT = datetime(2026, 11, 30, 10, 15, tzinfo=UTC)
DECISION = Decision(
    Action.BLOCK,
    Identity(
        role="student",
        site="main",
        user="ben.smith",
        group="9B",
        client_ip="10.20.1.5",
        source="roster",
        rule="roster",
    ),
    Window("lesson", "P2", AT, AT + timedelta(hours=1), "main"),
    "social_media",
    "social_media is blocked for student in lesson (P2).",
    rule="rules[0] (mitm_config.yaml:80)",
    match=ListMatch("social_media", "facebook.com", "blocklists/social_media.txt:3", "domain"),
    until=AT + timedelta(hours=1),
)


def make_event(i: int) -> dict:
    facts = RequestFacts(
        host="www.facebook.com",
        at=AT,
        path=f"/groups/{i}?ref=bookmarks",
        scheme="https",
        port=443,
        client_ip=f"10.20.{i % 250}.{i % 200}",
        user="ben.smith",
    )
    return decision_event(DECISION, facts, ref=new_ref(), url=None, device=f"LAPTOP-{i % 300}")


def rss_kb(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def count(factory) -> int:
    with factory() as session:
        return session.scalar(select(func.count()).select_from(EventRow))


def sustained(folder: Path, rate: int, seconds: float) -> None:
    factory = open_database(f"sqlite:///{folder / 'sustained.db'}")
    log = EventLog(factory)
    log.start()
    # Build the events first so that the pacing loop measures the log, not decision_event.
    events = [make_event(i) for i in range(int(rate * seconds))]
    started = time.perf_counter()
    record_time = 0.0
    for n, event in enumerate(events):
        due = started + n / rate
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
        t0 = time.perf_counter()
        log.record(event)
        record_time += time.perf_counter() - t0
    feed_done = time.perf_counter()
    ok = log.flush(120)
    drained = time.perf_counter()
    log.close()
    written = count(factory)
    print(
        f"sustained: offered {len(events)} events at {rate}/s for {feed_done - started:.1f} s; "
        f"written {written} ({written / (drained - started):,.0f}/s), lost "
        f"{len(events) - written}, queue peak {log.peak}, drain after feed "
        f"{drained - feed_done:.2f} s, flush ok {ok}, failures {log.failures}, "
        f"record() mean {record_time / len(events) * 1e6:.2f} us"
    )


def burst(folder: Path, size: int) -> None:
    factory = open_database(f"sqlite:///{folder / 'burst.db'}")
    events = [make_event(i) for i in range(size)]
    log = EventLog(factory)
    log.start()
    rss_before = rss_kb()
    started = time.perf_counter()
    for event in events:
        log.record(event)
    recorded = time.perf_counter()
    ok = log.flush(300)
    drained = time.perf_counter()
    log.close()
    written = count(factory)
    print(
        f"burst: {size} events recorded in {recorded - started:.3f} s "
        f"({(recorded - started) / size * 1e6:.2f} us each), queue peak {log.peak}, "
        f"drained in {drained - started:.2f} s ({written / (drained - started):,.0f}/s), "
        f"written {written}, lost {size - written}, flush ok {ok}"
    )
    print(
        f"burst: RSS {rss_before / 1024:.0f} MB before the burst (events built), "
        f"{rss_kb() / 1024:.0f} MB after, peak (VmHWM) {rss_kb('VmHWM') / 1024:.0f} MB"
    )


def memory_per_event(n: int = 10_000) -> None:
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    events = [make_event(i) for i in range(n)]
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    print(
        f"memory: {used / n:,.0f} bytes per queued block event (tracemalloc, {n} events); "
        f"1,000,000 queued ~ {used / n * 1e6 / 2**30:.1f} GiB"
    )
    del events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--burst", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        memory_per_event()
        sustained(folder, args.rate, args.seconds)
        burst(folder, args.burst)


if __name__ == "__main__":
    main()
