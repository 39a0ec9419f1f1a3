"""Reading the decision log back: `schoolgate events`, and later the portal and reports."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from schoolgate.db import EventRow

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
