"""Reading the decision log back: ``schoolgate events`` (and ``--follow``), the console.

Following the log (:class:`LiveCursor`) reads what was written after the last row id seen.
PostgreSQL may make a row with a smaller id visible after a larger one (two writers committing
out of order), so the cursor looks back over a small overlap of recent rows and skips those it
has already seen.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.storage.models import EventRow

LIVE_OVERLAP = 100  # rows looked back over for ones committed out of order
LIVE_BATCH = 200
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(
    text: str | None, policy: Any = None, *, now: datetime | None = None
) -> datetime | None:
    """``2h``/``30m``/``7d`` ago, or an ISO-8601 time (no zone: the default site's zone)."""
    if not text:
        return None
    now = now or datetime.now(UTC)
    found = _DURATION.match(text)
    if found:
        return now - timedelta(**{_UNITS[found.group(2).lower()]: int(found.group(1))})
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"--since takes an ISO-8601 time or a duration such as 2h, 30m, 7d; got {text!r}"
        ) from None
    if value.tzinfo is None:
        tz = UTC
        if policy is not None:
            tz = policy.timetables[policy.resolver.default_site].tz
        value = value.replace(tzinfo=tz)
    return value


def event_json(row: EventRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "ref": row.ref,
        "at": row.at.isoformat(),
        "kind": row.kind,
        "action": row.action,
        "client_ip": row.client_ip,
        "device": row.device,
        "user": row.user,
        "role": row.role,
        "group": row.group,
        "site": row.site,
        "method": row.method,
        "scheme": row.scheme,
        "host": row.host,
        "url": row.url,
        "search_term": row.search_term,
        "category": row.category,
        "window": row.window,
        "window_name": row.window_name,
        "rule": row.rule,
        "exception_id": row.exception_id,
        "reason": row.reason,
        "detail": json.loads(row.detail) if row.detail else None,
    }


def list_events(
    session: Session,
    *,
    since: datetime | None = None,
    kind: str | None = None,
    user: str | None = None,
    limit: int | None = 200,
) -> list[dict[str, Any]]:
    """Newest last, at most ``limit`` (the most recent ones)."""
    query = select(EventRow)
    if since is not None:
        query = query.where(EventRow.at >= since)
    if kind:
        query = query.where(EventRow.kind == kind)
    if user:
        query = query.where(EventRow.user == user.lower())
    query = query.order_by(EventRow.at.desc(), EventRow.id.desc())
    if limit:
        query = query.limit(limit)
    rows = list(session.scalars(query))
    rows.reverse()
    return [event_json(row) for row in rows]


def event_conditions(*, kind: str | None = None, user: str | None = None) -> list[Any]:
    """``schoolgate events``' filters as query conditions."""
    found: list[Any] = []
    if kind:
        found.append(EventRow.kind == kind)
    if user:
        found.append(EventRow.user == user.lower())
    return found


def latest_id(session: Session) -> int:
    return session.scalar(select(EventRow.id).order_by(EventRow.id.desc()).limit(1)) or 0


@dataclass
class LiveCursor:
    """Where a reader following the log is: rows above ``last`` are new; ``seen`` holds the
    ids at most ``LIVE_OVERLAP`` below it that were there already or were shown (a row
    committed late, below ``last``, is new when it is not among them)."""

    last: int = 0
    seen: set[int] = field(default_factory=set)

    @classmethod
    def start(cls, session: Session, last: int | None = None) -> LiveCursor:
        """From row ``last`` (None: the newest now): what is there already is not new."""
        if last is None:
            last = latest_id(session)
        low = max(0, last - LIVE_OVERLAP)
        ids = session.scalars(select(EventRow.id).where(EventRow.id > low, EventRow.id <= last))
        return cls(last=last, seen=set(ids))

    def take(
        self, session: Session, conditions: Sequence[Any] = (), limit: int = LIVE_BATCH
    ) -> list[EventRow]:
        """The new rows matching ``conditions``, oldest first; moves the cursor past them."""
        low = max(0, self.last - LIVE_OVERLAP)
        rows = session.scalars(
            select(EventRow)
            .where(EventRow.id > low, *conditions)
            .order_by(EventRow.id)
            .limit(limit + LIVE_OVERLAP)
        )
        fresh = [row for row in rows if row.id not in self.seen][:limit]
        for row in fresh:
            self.seen.add(row.id)
            self.last = max(self.last, row.id)
        floor = self.last - LIVE_OVERLAP
        self.seen = {i for i in self.seen if i > floor}
        return fresh


def follow_events(
    sessions: sessionmaker[Session],
    *,
    after: int | None = None,
    kind: str | None = None,
    user: str | None = None,
    poll: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
    rounds: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Events as they are written after row ``after`` (None: from this call on), for ever (or
    for ``rounds`` reads, for tests). A database that is busy for a moment is read again."""
    with sessions() as session:
        cursor = LiveCursor.start(session, after)
    return _follow(sessions, cursor, event_conditions(kind=kind, user=user), poll, sleep, rounds)


def _follow(
    sessions: sessionmaker[Session],
    cursor: LiveCursor,
    conditions: list[Any],
    poll: float,
    sleep: Callable[[float], None],
    rounds: int | None,
) -> Iterator[dict[str, Any]]:
    from sqlalchemy.exc import OperationalError

    done = 0
    while rounds is None or done < rounds:
        done += 1
        try:
            with sessions() as session:
                rows = [event_json(row) for row in cursor.take(session, conditions)]
        except OperationalError:
            rows = []
        yield from rows
        if not rows:
            sleep(poll)
