"""The console's figures: the school's state now, the dashboard, list freshness and what is
switched off. The views call these; these call the database (indexed queries only: counts over
today's events by the ``at`` index, the newest rows by primary key).
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.core.switched_off import SwitchedOff, switched_off
from schoolgate.portal.auth import active_staff_roles
from schoolgate.storage.db import database_exists, safe_url
from schoolgate.storage.heartbeats import minutes_total, recent_beats
from schoolgate.storage.job_runs import last_runs
from schoolgate.storage.models import (
    OPEN_STATUSES,
    BanRow,
    EventRow,
    HeartbeatRow,
    OutboxRow,
    PortalRequestRow,
    SupervisionRow,
)

TOP = 10
RECENT_BLOCKS = 10


def school_tz(policy: Any) -> tzinfo:
    return policy.timetables[policy.resolver.default_site].tz


def local_midnight(now: datetime, tz: tzinfo) -> datetime:
    local = now.astimezone(tz)
    return local.replace(hour=0, minute=0, second=0, microsecond=0)


# -- what is switched off ------------------------------------------------------------------------


def read_switched_off(policy: Any, sessions: sessionmaker | None) -> list[SwitchedOff]:
    """:func:`switched_off` with the staff accounts read from the database (None, or a database
    not made yet: "no staff account yet")."""
    roles = None
    if sessions is not None:
        with sessions() as session:
            roles = active_staff_roles(session)
    return switched_off(policy, staff_roles=roles)


def switched_off_for_url(policy: Any) -> list[SwitchedOff]:
    """For ``check-config``: the database named by the policy, without creating it."""
    from schoolgate.storage.db import open_database

    url = policy.settings.database_url
    try:
        exists = database_exists(url)
    except Exception:  # noqa: BLE001 - an unreachable server: say nothing about staff
        return switched_off(policy, staff_roles={"it_support"})
    return read_switched_off(policy, open_database(url) if exists else None)


# -- the school's state ----------------------------------------------------------------------------


def school_state(session: Session, policy: Any, now: datetime) -> dict[str, Any]:
    """Open requests by (kind, status), the outbox, bans in force by kind, supervision sessions
    running, each job's last run, what is switched off."""
    requests: Counter[tuple[str, str]] = Counter()
    for kind, status, count in session.execute(
        select(PortalRequestRow.kind, PortalRequestRow.status, func.count())
        .where(PortalRequestRow.status.in_(OPEN_STATUSES))
        .group_by(PortalRequestRow.kind, PortalRequestRow.status)
    ):
        requests[(kind, status)] = count
    unsent = OutboxRow.sent_at.is_(None)
    waiting = session.scalar(select(func.count()).select_from(OutboxRow).where(unsent)) or 0
    failing = (
        session.scalar(
            select(func.count()).select_from(OutboxRow).where(unsent, OutboxRow.attempts > 0)
        )
        or 0
    )
    oldest = session.scalar(select(func.min(OutboxRow.created_at)).where(unsent))
    last_error = session.scalar(
        select(OutboxRow.last_error)
        .where(unsent, OutboxRow.last_error.is_not(None))
        .order_by(OutboxRow.id.desc())
        .limit(1)
    )
    bans: Counter[str] = Counter()
    for kind, count in session.execute(
        select(BanRow.kind, func.count())
        .where(BanRow.lifted_at.is_(None), BanRow.starts <= now)
        .where(or_(BanRow.ends.is_(None), BanRow.ends > now))
        .group_by(BanRow.kind)
    ):
        bans[kind] = count
    supervisions = (
        session.scalar(
            select(func.count())
            .select_from(SupervisionRow)
            .where(SupervisionRow.ended_at.is_(None))
            .where(SupervisionRow.starts <= now, SupervisionRow.ends > now)
        )
        or 0
    )
    return {
        "requests": dict(requests),
        "outbox": {
            "waiting": waiting,
            "failing": failing,
            "oldest_seconds": (now - oldest).total_seconds() if oldest else 0.0,
            "oldest": oldest,
            "last_error": last_error,
        },
        "bans": dict(bans),
        "supervisions": supervisions,
        "jobs": last_runs(session),
        "switched_off": switched_off(policy, staff_roles=active_staff_roles(session)),
    }


def list_freshness(policy: Any, now: datetime) -> list[dict[str, Any]]:
    """Each category: entries in force, locked or not, and when its newest list file changed
    (None when it has no file, or none is found)."""
    stats = policy.matcher.stats()
    locked = policy.locked_matcher.stats() if policy.locked_matcher is not None else {}
    base = Path(policy.settings.config_path).resolve().parent
    out = []
    for name, cat in policy.categories.items():
        newest = None
        for source in cat.sources:
            path = Path(str(source))
            path = path if path.is_absolute() else base / path
            try:
                mtime = path.stat().st_mtime
            except OSError:
                continue
            newest = mtime if newest is None else max(newest, mtime)
        updated = datetime.fromtimestamp(newest, tz=now.tzinfo) if newest is not None else None
        out.append(
            {
                "category": name,
                "locked": bool(cat.locked),
                "entries": stats.get(name, locked.get(name, 0)),
                "files": len(cat.sources),
                "updated": updated,
                "age": (now - updated) if updated is not None else None,
            }
        )
    return out


# -- the dashboard ---------------------------------------------------------------------------------


@dataclass
class Today:
    """Today's blocks and attempts to get round the filter, counted in one pass."""

    blocks: int = 0
    circumvention: int = 0
    hosts: Counter = field(default_factory=Counter)
    categories: Counter = field(default_factory=Counter)
    circumventors: Counter = field(default_factory=Counter)


def today(session: Session, midnight: datetime) -> Today:
    """One pass over today's rows. They are found by row id (ids grow with time: the first of
    today is one step down the ``at`` index) and read in id order, a range of the table: not
    one index lookup a row, which is what grouping by ``at`` costs (4.5 s for 110,000 rows of
    a day in ``bench/console_bench.py``, against about a fifth of that this way)."""
    # The first row of today by the ``at`` index (min(id) would walk the ids from the start).
    first = session.scalar(
        select(EventRow.id).where(EventRow.at >= midnight).order_by(EventRow.at).limit(1)
    )
    found = Today()
    if first is None:
        return found
    # coalesce(): compared as an expression, so that SQLite reads the id range, not the index.
    table = EventRow.__table__.c
    rows = session.connection().execute(  # Core rows: no ORM work per row
        select(table.kind, table.action, table.host, table.category, table.user)
        .where(table.id >= first, func.coalesce(table.at, table.at) >= midnight)
        .execution_options(yield_per=5000)
    )
    for kind, action, host, category, user in rows:
        if action == "block":
            found.blocks += 1
            found.hosts[host or "-"] += 1
            found.categories[category] += 1
        if kind.startswith("circumvention"):
            found.circumvention += 1
            found.circumventors[user or ""] += 1
    return found


def _most(counter: Counter, limit: int = TOP) -> list[tuple]:
    return heapq.nsmallest(limit, counter.items(), key=lambda item: (-item[1], str(item[0])))


def dashboard(session: Session, policy: Any, now: datetime) -> dict[str, Any]:
    """Everything the dashboard shows, from indexed queries and one pass over today."""
    tz = school_tz(policy)
    day = today(session, local_midnight(now, tz))
    blocks_today = day.blocks
    top_hosts = _most(day.hosts)
    top_categories = _most(day.categories)
    circumvention_today = day.circumvention
    top_circumvention = [(user or None, n) for user, n in _most(day.circumventors, 5)]
    recent = list(
        session.scalars(
            select(EventRow)
            .where(EventRow.action == "block")
            .order_by(EventRow.id.desc())
            .limit(RECENT_BLOCKS)
        )
    )
    bans = list(
        session.scalars(
            select(BanRow)
            .where(BanRow.lifted_at.is_(None), BanRow.starts <= now)
            .where(or_(BanRow.ends.is_(None), BanRow.ends > now))
            .order_by(BanRow.id.desc())
            .limit(20)
        )
    )
    pending = list(
        session.scalars(
            select(PortalRequestRow)
            .where(PortalRequestRow.status.in_(OPEN_STATUSES))
            .order_by(PortalRequestRow.created_at)
            .limit(5)
        )
    )
    beats = recent_beats(session, now)
    state = school_state(session, policy, now)
    return {
        "now": now,
        "tz": tz,
        "minutes": minutes_total(beats, now),
        "blocks_today": blocks_today,
        "top_hosts": top_hosts,
        "top_categories": top_categories,
        "circumvention_today": circumvention_today,
        "top_circumvention": [(user or "(unknown user)", n) for user, n in top_circumvention],
        "recent_blocks": recent,
        "bans": bans,
        "pending": pending,
        "pending_total": sum(state["requests"].values()),
        "state": state,
        "lists": list_freshness(policy, now),
        "processes": beats,
        "database": database_state(session, policy, beats, now),
    }


def database_state(
    session: Session, policy: Any, beats: list[HeartbeatRow], now: datetime
) -> dict[str, Any]:
    """Which database, its size (SQLite), the oldest and newest event, and the decision log's
    backlog and errors over the running processes."""
    url = policy.settings.database_url
    backend = session.get_bind().dialect.name
    size = None
    if backend == "sqlite":
        name = session.get_bind().engine.url.database or ""
        size = sum(
            Path(name + suffix).stat().st_size
            for suffix in ("", "-wal")
            if name and Path(name + suffix).exists()
        )
    # Two queries: each is one step down the ``at`` index (together, SQLite reads every row).
    oldest = session.scalar(select(func.min(EventRow.at)))
    newest = session.scalar(select(func.max(EventRow.at)))
    running = [b for b in beats if b.is_up(now)]
    return {
        "backend": backend,
        "url": safe_url(url),
        "size": size,
        "oldest_event": oldest,
        "newest_event": newest,
        "backlog": sum(b.events_pending for b in running),
        "errors": [f"{b.label}: {b.events_error}" for b in running if b.events_error],
    }


def per_minute_chart(minutes: list[tuple[int, int, int]], tz: tzinfo) -> dict[str, list]:
    """Labels (local clock times) and the two series, for the charts."""
    labels = [datetime.fromtimestamp(m * 60, tz).strftime("%H:%M") for m, _, _ in minutes]
    return {
        "requests": list(zip(labels, [r for _, r, _ in minutes], strict=True)),
        "blocks": list(zip(labels, [b for _, _, b in minutes], strict=True)),
    }


def ago(delta: timedelta | None) -> str:
    """``3 minutes``, ``2 hours``, ``5 days`` (for freshness)."""
    if delta is None:
        return "never"
    seconds = max(0, int(delta.total_seconds()))
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


__all__ = [
    "ago",
    "dashboard",
    "database_state",
    "list_freshness",
    "per_minute_chart",
    "read_switched_off",
    "school_state",
    "switched_off_for_url",
]
