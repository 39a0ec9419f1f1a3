"""Decision log throughput and memory: ``python3 bench/eventlog_bench.py [--seconds 10]``.

1. Sustained: events recorded at ``--rate`` per second (default 10,000) for ``--seconds``
   into a fresh SQLite file; reports events written per second, the queue's peak and loss,
   and what ``record()`` costs the caller (the event loop): with the spool (as the gateway
   runs it: each event written to the spool file before ``record()`` returns) and without.
2. Burst: ``--burst`` events (default 100,000) recorded as fast as possible, with and without
   the spool; reports the cost of ``record()``, the queue peak, the process RSS before/after
   (VmHWM), and time to drain.
3. The spool's fsync: how long each batched ``fsync`` takes and how many events it covers at
   the sustained rate, and how long a ``durable`` record (a sanction's event) waits for it.
4. Memory per queued event (tracemalloc over 10,000 block events).
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

from schoolgate.core.model import Action, Decision, Identity, ListMatch, RequestFacts, Window  # noqa: E402
from schoolgate.storage.db import open_database  # noqa: E402
from schoolgate.storage.eventlog import EventLog, EventRecord, decision_event, new_ref  # noqa: E402
from schoolgate.storage.models import EventRow

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


def make_event(i: int) -> EventRecord:
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


def _log(factory, folder: Path, spool: bool) -> EventLog:
    return EventLog(factory, spool_dir=folder / "spool" if spool else None)


class SyncTimer:
    """Times each of the spool's fsync rounds (the sync thread's work)."""

    def __init__(self, log: EventLog) -> None:
        self.rounds: list[float] = []
        self.log = log
        spool = log.spool
        real = spool.sync

        def timed() -> bool:
            started = time.perf_counter()
            try:
                return real()
            finally:
                self.rounds.append(time.perf_counter() - started)

        spool.sync = timed


def _pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] if values else 0.0


def sustained(folder: Path, rate: int, seconds: float, spool: bool) -> None:
    factory = open_database(f"sqlite:///{folder / f'sustained-{spool}.db'}")
    log = _log(factory, folder / f"sustained-{spool}", spool)
    timer = SyncTimer(log) if spool else None
    log.start()
    # Build the events first so that the pacing loop measures the log, not decision_event.
    events = [make_event(i) for i in range(int(rate * seconds))]
    started = time.perf_counter()
    costs: list[float] = []
    for n, event in enumerate(events):
        due = started + n / rate
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
        t0 = time.perf_counter()
        log.record(event)
        costs.append(time.perf_counter() - t0)
    feed_done = time.perf_counter()
    ok = log.flush(120)
    drained = time.perf_counter()
    log.close()
    written = count(factory)
    print(
        f"sustained, {'spool' if spool else 'memory only'}: offered {len(events)} events at "
        f"{rate}/s for {feed_done - started:.1f} s; written {written} "
        f"({written / (drained - started):,.0f}/s), lost {len(events) - written}, queue peak "
        f"{log.peak}, drain after feed {drained - feed_done:.2f} s, flush ok {ok}, failures "
        f"{log.failures}; record() mean {sum(costs) / len(costs) * 1e6:.2f} us, "
        f"p99 {_pct(costs, 0.99) * 1e6:.1f} us"
    )
    if timer is not None and timer.rounds:
        busy = [r for r in timer.rounds if r > 0]
        print(
            f"  spool fsync: {len(timer.rounds)} rounds ({len(events) / len(timer.rounds):,.0f} "
            f"events each on average), median {_pct(busy, 0.5) * 1e3:.2f} ms, p99 "
            f"{_pct(busy, 0.99) * 1e3:.2f} ms, {sum(timer.rounds):.2f} s in all "
            f"({sum(timer.rounds) / len(events) * 1e6:.2f} us an event, on the sync thread)"
        )


def burst(folder: Path, size: int, spool: bool) -> None:
    factory = open_database(f"sqlite:///{folder / f'burst-{spool}.db'}")
    events = [make_event(i) for i in range(size)]
    log = _log(factory, folder / f"burst-{spool}", spool)
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
        f"burst, {'spool' if spool else 'memory only'}: {size} events recorded in "
        f"{recorded - started:.3f} s "
        f"({(recorded - started) / size * 1e6:.2f} us each), queue peak {log.peak}, "
        f"drained in {drained - started:.2f} s ({written / (drained - started):,.0f}/s), "
        f"written {written}, lost {size - written}, flush ok {ok}"
    )
    print(
        f"burst: RSS {rss_before / 1024:.0f} MB before the burst (events built), "
        f"{rss_kb() / 1024:.0f} MB after, peak (VmHWM) {rss_kb('VmHWM') / 1024:.0f} MB"
    )


def durable_waits(folder: Path, count: int = 300) -> None:
    """A sanction's event: how long ``record(durable=True)`` waits until it is synced, with
    ordinary events going on at 1,000/s meanwhile."""
    factory = open_database(f"sqlite:///{folder / 'durable.db'}")
    log = _log(factory, folder / "durable", True)
    log.start()
    waits = []
    for i in range(count):
        for j in range(10):
            log.record(make_event(i * 10 + j))
        started = time.perf_counter()
        assert log.record(make_event(-i), durable=True).result(30)
        waits.append(time.perf_counter() - started)
        time.sleep(0.01)
    log.close()
    print(
        f"durable (sanction) events: wait for the fsync median {_pct(waits, 0.5) * 1e3:.2f} ms, "
        f"p99 {_pct(waits, 0.99) * 1e3:.2f} ms, max {max(waits) * 1e3:.2f} ms ({count} events; "
        "the event loop is not held meanwhile: the hook awaits it)"
    )


def memory_per_event(n: int = 10_000) -> None:
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    events = [make_event(i).as_row() for i in range(n)]  # what the queue holds
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
        for spool in (True, False):
            sustained(folder, args.rate, args.seconds, spool)
        for spool in (True, False):
            burst(folder, args.burst, spool)
        durable_waits(folder)


if __name__ == "__main__":
    main()
