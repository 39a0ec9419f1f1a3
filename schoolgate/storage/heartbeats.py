"""Each gateway process's heartbeat: the console's health view, ``/healthz`` (the other
workers) and ``/metrics`` read them.

A process's background thread replaces its own row (``host:port/worker``) every few seconds
(:mod:`schoolgate.gateway.health`): when it started and was last seen, its policy, its decision
log's backlog and counters, and its requests and blocks per minute of the last hour. A process
that stops cleanly marks its row stopped; one that dies simply stops being seen, and the console
says so after three missed beats. Rows not seen for a week are removed. Created by migration
0010; a beat that cannot be written (the database is unreachable) is skipped, never fatal.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.storage.models import HeartbeatRow

log = logging.getLogger(__name__)

KEEP_FOR = timedelta(days=7)


@dataclass(frozen=True)
class Beat:
    """What one process reports about itself."""

    host: str
    port: int
    worker: int
    pid: int
    started_at: datetime
    seen_at: datetime
    interval: float
    version: str = ""
    stopped: bool = False
    policy_loaded_at: datetime | None = None
    policy_error: str | None = None
    runs_jobs: bool = False
    sends_mail: bool = False
    requests: int = 0
    blocks: int = 0
    events_pending: int = 0
    events_written: int = 0
    events_rejected: int = 0
    events_error: str | None = None
    minutes: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def instance(self) -> str:
        return instance_key(self.host, self.port, self.worker)


def instance_key(host: str, port: int, worker: int) -> str:
    return f"{host}:{port}/{worker}"


def record_beat(sessions: sessionmaker[Session], beat: Beat, *, prune: bool = False) -> bool:
    """Replace this process's row; ``prune`` also removes rows not seen for a week. False when
    it could not be written (never raises: the gateway must go on without its heartbeat)."""
    try:
        with sessions.begin() as session:
            row = session.get(HeartbeatRow, beat.instance) or HeartbeatRow(instance=beat.instance)
            row.host, row.port, row.worker, row.pid = beat.host, beat.port, beat.worker, beat.pid
            row.version = beat.version[:50]
            row.started_at, row.seen_at = beat.started_at, beat.seen_at
            row.stopped_at = beat.seen_at if beat.stopped else None
            row.interval = beat.interval
            row.policy_loaded_at = beat.policy_loaded_at
            row.policy_error = beat.policy_error[:2000] if beat.policy_error else None
            row.runs_jobs, row.sends_mail = beat.runs_jobs, beat.sends_mail
            row.requests, row.blocks = beat.requests, beat.blocks
            row.events_pending = beat.events_pending
            row.events_written, row.events_rejected = beat.events_written, beat.events_rejected
            row.events_error = beat.events_error[:2000] if beat.events_error else None
            row.minutes = json.dumps([list(m) for m in beat.minutes], separators=(",", ":"))
            session.add(row)
            if prune:
                session.execute(
                    delete(HeartbeatRow).where(HeartbeatRow.seen_at < beat.seen_at - KEEP_FOR)
                )
        return True
    except SQLAlchemyError as exc:
        log.debug("heartbeat not recorded: %s", exc)
        return False


def recent_beats(
    session: Session, now: datetime, within: timedelta = KEEP_FOR
) -> list[HeartbeatRow]:
    """The processes seen within ``within`` (a week: those that died show as down), running
    ones first, then by gateway and worker."""
    rows = list(session.scalars(select(HeartbeatRow).where(HeartbeatRow.seen_at >= now - within)))
    rows.sort(key=lambda r: (not r.is_up(now), r.host, r.port, r.worker))
    return rows


def minutes_total(
    rows: list[HeartbeatRow], now: datetime, span: int = 60
) -> list[tuple[int, int, int]]:
    """Requests and blocks per minute over the last ``span`` minutes, summed over processes:
    ``[(epoch minute, requests, blocks)]``, oldest first, every minute present."""
    last = int(now.timestamp()) // 60
    first = last - span + 1
    totals = {m: [0, 0] for m in range(first, last + 1)}
    for row in rows:
        for minute, requests, blocks in row.per_minute():
            if minute in totals:
                totals[minute][0] += requests
                totals[minute][1] += blocks
    return [(m, r, b) for m, (r, b) in sorted(totals.items())]


__all__ = [
    "Beat",
    "instance_key",
    "minutes_total",
    "recent_beats",
    "record_beat",
]
