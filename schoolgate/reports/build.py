"""The figures of a report, computed from the database.

Everything is counted with SQL aggregates over the decision log (``events``), the exceptions and
the audit trail, the portal's requests and content reports and the bans. An empty database gives
an honest empty report.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from schoolgate.core.report_settings import (  # noqa: F401 - read here by callers
    DEFAULT_CONCERN_CATEGORIES,
    DEFAULT_CONCERN_TERMS,
    ReportSettings,
    read_reports,
)
from schoolgate.storage.db import utcnow
from schoolgate.storage.exceptions import list_exceptions
from schoolgate.storage.models import OPEN_STATUSES, AuditRow, BanRow, EventRow, PortalRequestRow

PERIODS = ("day", "week", "term")
# One attempt to get round the filter is curiosity; repeated attempts are worth a look.
CIRCUMVENTION_REPEATS = 3


def reports_of(policy: Any) -> ReportSettings:
    """The policy's report settings (the defaults without a policy)."""
    return policy.settings.reports if policy is not None else ReportSettings()


# -- periods --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Period:
    kind: str
    start: datetime  # aware, inclusive
    end: datetime  # aware, exclusive
    label: str
    tz: tzinfo

    @property
    def days(self) -> float:
        return max((self.end - self.start).total_seconds() / 86400, 1 / 24)

    def slug(self) -> str:
        return f"{self.kind}-{self.start.astimezone(self.tz).date().isoformat()}"


def _midnight(day: date, tz: tzinfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=tz)


def period_for(kind: str, policy: Any = None, *, on: date | None = None,
               tz: tzinfo | None = None) -> Period:  # fmt: skip
    """The day, Monday-to-Sunday week, or term containing ``on`` (the site's local dates)."""
    if kind not in PERIODS:
        raise ValueError(f"period must be one of {', '.join(PERIODS)}, not {kind!r}")
    timetable = None
    if policy is not None:
        timetable = policy.timetables[policy.resolver.default_site]
        tz = tz or timetable.tz
    tz = tz or ZoneInfo("Europe/London")
    on = on or utcnow().astimezone(tz).date()
    if kind == "day":
        start, end = on, on + timedelta(days=1)
        label = on.strftime("%A %d %B %Y")
    elif kind == "week":
        start = on - timedelta(days=on.weekday())
        end = start + timedelta(days=7)
        label = f"week beginning {start.strftime('%A %d %B %Y')}"
    else:
        starts = getattr(timetable, "_term_starts", ()) if timetable else ()
        ends = getattr(timetable, "_term_ends", ()) if timetable else ()
        span = next(((s, e) for s, e in zip(starts, ends, strict=False) if s <= on <= e), None)
        if span is None:  # a holiday: the term before it
            before = [(s, e) for s, e in zip(starts, ends, strict=False) if e < on]
            span = before[-1] if before else (on - timedelta(days=90), on)
        start, end = span[0], span[1] + timedelta(days=1)
        label = f"term {start.strftime('%d %B %Y')} to {span[1].strftime('%d %B %Y')}"
    return Period(kind, _midnight(start, tz), _midnight(end, tz), label, tz)


def previous_period(kind: str, policy: Any, now: datetime) -> Period:
    """The last complete day or week before ``now`` (what the scheduled report covers)."""
    current = period_for(kind, policy, on=now.astimezone(_tz(policy)).date())
    return period_for(kind, policy, on=(current.start - timedelta(hours=12)).date())


def _tz(policy: Any) -> tzinfo:
    if policy is None:
        return ZoneInfo("Europe/London")
    return policy.timetables[policy.resolver.default_site].tz


# -- the report -----------------------------------------------------------------------------------
@dataclass
class Section_:
    """An optional part of the report (a table another feature adds)."""

    recorded: bool
    summary: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""


@dataclass
class Report:
    period: Period
    generated_at: datetime
    school: str = ""
    totals: dict[str, int] = field(default_factory=dict)
    blocks_by_category: list[tuple[str, int]] = field(default_factory=list)
    blocks_by_window: list[tuple[str, int]] = field(default_factory=list)
    blocks_by_role: list[tuple[str, int]] = field(default_factory=list)
    blocks_by_group: list[tuple[str, int]] = field(default_factory=list)
    blocks_by_day: list[tuple[str, int]] = field(default_factory=list)
    blocks_by_hour: list[tuple[str, int]] = field(default_factory=list)
    top_hosts: list[dict[str, Any]] = field(default_factory=list)
    circumvention: dict[str, Any] = field(default_factory=dict)
    bans: Section_ = field(default_factory=lambda: Section_(False))
    requests: Section_ = field(default_factory=lambda: Section_(False))
    content_reports: Section_ = field(default_factory=lambda: Section_(False))
    exceptions: list[dict[str, Any]] = field(default_factory=list)
    at_risk: list[dict[str, Any]] = field(default_factory=list)
    list_updates: list[dict[str, Any]] = field(default_factory=list)
    settings: ReportSettings = field(default_factory=ReportSettings)

    @property
    def empty(self) -> bool:
        return not self.totals.get("events")


def _label(value: Any) -> str:
    return "(none)" if value in (None, "") else str(value)


def _grouped(session: Session, column: Any, where: list[Any], limit: int | None = None):
    query = (
        select(column, func.count())
        .where(*where)
        .group_by(column)
        .order_by(func.count().desc(), column)
    )
    if limit:
        query = query.limit(limit)
    return [(_label(k), int(n)) for k, n in session.execute(query)]


def build_report(
    session: Session,
    period: Period,
    *,
    policy: Any = None,
    settings: ReportSettings | None = None,
    now: datetime | None = None,
) -> Report:
    settings = settings or reports_of(policy)
    now = now or utcnow()
    report = Report(period=period, generated_at=now, settings=settings)
    if policy is not None:
        report.school = policy.settings.wording.school_name
    in_period = [EventRow.at >= period.start, EventRow.at < period.end]
    blocks = [*in_period, EventRow.kind == "block"]
    totals: dict[str, int] = {
        kind: int(n)
        for kind, n in session.execute(
            select(EventRow.kind, func.count()).where(*in_period).group_by(EventRow.kind)
        )
    }
    report.totals = {
        "events": sum(totals.values()),
        "blocks": totals.get("block", 0),
        "allowed (logged)": totals.get("allow", 0),
        "errors": totals.get("error", 0),
        "circumvention": totals.get("circumvention", 0),
        "people blocked": session.scalar(
            select(func.count(func.distinct(EventRow.user))).where(*blocks)
        )
        or 0,
        "devices blocked": session.scalar(
            select(func.count(func.distinct(EventRow.client_ip))).where(*blocks)
        )
        or 0,
    }
    top = settings.top
    report.blocks_by_category = _grouped(session, EventRow.category, blocks)
    report.blocks_by_window = _grouped(session, EventRow.window, blocks)
    report.blocks_by_role = _grouped(session, EventRow.role, blocks)
    report.blocks_by_group = _grouped(session, EventRow.group, blocks, top)
    # by local day / hour: read the times (one column) and bucket in the site's zone
    by_day: Counter[str] = Counter()
    by_hour: Counter[int] = Counter()
    for (at,) in session.execute(select(EventRow.at).where(*blocks)):
        local = at.astimezone(period.tz)
        by_day[local.date().isoformat()] += 1
        by_hour[local.hour] += 1
    if period.kind != "day":
        day = period.start.astimezone(period.tz).date()
        last = (period.end - timedelta(seconds=1)).astimezone(period.tz).date()
        while day <= last:
            report.blocks_by_day.append((day.strftime("%a %d %b"), by_day.get(day.isoformat(), 0)))
            day += timedelta(days=1)
    report.blocks_by_hour = [(f"{h:02d}:00", by_hour.get(h, 0)) for h in range(24)]
    host_rows = session.execute(
        select(
            EventRow.host,
            func.count(),
            func.count(func.distinct(EventRow.user)),
            func.min(EventRow.category),
        )
        .where(*blocks)
        .group_by(EventRow.host)
        .order_by(func.count().desc(), EventRow.host)
        .limit(top)
    )
    report.top_hosts = [
        {"host": _label(h), "blocks": int(n), "people": int(u), "category": _label(c)}
        for h, n, u, c in host_rows
    ]
    report.circumvention = _circumvention(session, in_period, top)
    report.bans = _bans(session, period)
    report.requests, report.content_reports = _requests(session, period, settings, now)
    report.exceptions = _exceptions(session, period, now)
    report.at_risk = _at_risk(session, period, settings, in_period)
    report.list_updates = [
        {
            "at": r.at.astimezone(period.tz).strftime("%a %d %b %H:%M"),
            "action": r.action,
            "subject": r.subject,
            **_json(r.detail),
        }  # fmt: skip
        for r in session.scalars(
            select(AuditRow)
            .where(AuditRow.at >= period.start, AuditRow.at < period.end)
            .where(AuditRow.action.in_(("lists.update", "lists.refused")))
            .order_by(AuditRow.at)
        )
    ]
    return report


def _json(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _circumvention(session: Session, in_period: list[Any], top: int) -> dict[str, Any]:
    where = [*in_period, EventRow.kind == "circumvention"]
    by_detector: Counter[str] = Counter()
    users: Counter[str] = Counter()
    recent: list[dict[str, Any]] = []
    for row in session.scalars(select(EventRow).where(*where).order_by(EventRow.at.desc())):
        detail = _json(row.detail)
        by_detector[str(detail.get("detector") or row.category or "unknown")] += 1
        users[row.user or row.client_ip or "(unknown)"] += 1
        if len(recent) < top:
            recent.append(
                {
                    "at": row.at,
                    "who": row.user or row.client_ip or "(unknown)",
                    "role": _label(row.role),
                    "host": _label(row.host),
                    "detector": str(detail.get("detector") or "-"),
                    "action": row.action,
                }
            )
    return {
        "count": sum(by_detector.values()),
        "people": len(users),
        "by_detector": by_detector.most_common(),
        "top_people": users.most_common(10),
        "recent": recent,
    }


def _bans(session: Session, period: Period) -> Section_:
    rows = session.execute(
        select(BanRow.reason, BanRow.starts, BanRow.ends)
        .where(BanRow.created_at >= period.start, BanRow.created_at < period.end)
        .limit(200)
    ).all()
    return Section_(True, {"bans": len(rows)}, [dict(r._mapping) for r in rows])


def _turnaround(rows: list[dict[str, Any]]) -> dict[str, Any]:
    hours = [
        (r["decided_at"] - r["created_at"]).total_seconds() / 3600
        for r in rows
        if r.get("decided_at") and r.get("created_at")
    ]
    if not hours:
        return {}
    return {
        "decided": len(hours),
        "median hours": round(statistics.median(hours), 1),
        "mean hours": round(statistics.fmean(hours), 1),
        "longest hours": round(max(hours), 1),
        "within 1 hour": sum(1 for h in hours if h <= 1),
        "within 1 day": sum(1 for h in hours if h <= 24),
    }


def _requests(session: Session, period: Period, settings: ReportSettings, now: datetime):
    table = PortalRequestRow.__table__
    rows = [
        dict(r._mapping)
        for r in session.execute(
            select(table)
            .where(table.c.created_at >= period.start, table.c.created_at < period.end)
            .order_by(table.c.created_at)
        )
    ]
    overdue_cut = min(now, period.end) - timedelta(hours=settings.escalate_after_hours)
    out = []
    for kind in ("access", "report"):
        mine = [r for r in rows if r.get("kind") == kind]
        summary: dict[str, Any] = {"received": len(mine)}
        summary.update(Counter(str(r.get("status")) for r in mine))
        if kind == "access":
            summary.update(_turnaround(mine))
            summary["open and overdue"] = sum(
                1
                for r in mine
                if r.get("status") in OPEN_STATUSES and r["created_at"] <= overdue_cut
            )
        shown = [
            {
                "ref": r.get("ref"),
                "at": r.get("created_at"),
                "who": r.get("requester_user") or r.get("requester_role") or "-",
                "host": r.get("host"),
                "purpose": r.get("purpose"),
                "status": r.get("status"),
                "decided_by": r.get("decided_by") or "",
                "turnaround": (
                    f"{(r['decided_at'] - r['created_at']).total_seconds() / 3600:.1f} h"
                    if r.get("decided_at")
                    else "open"
                ),
            }
            for r in mine[-settings.top :]
        ]
        out.append(Section_(True, summary, shown))
    return out[0], out[1]


def _exceptions(session: Session, period: Period, now: datetime) -> list[dict[str, Any]]:
    at = min(now, period.end - timedelta(seconds=1))
    return [
        {
            "id": r.id,
            "kind": r.kind,
            "for": f"{r.scope}={r.scope_value}" if r.scope_value else r.scope,
            "target": f"{r.target_kind} {r.target}",
            "until": r.ends,
            "by": r.created_by,
            "reason": r.reason,
        }
        for r in list_exceptions(session, at=at)
    ]


def _at_risk(
    session: Session, period: Period, settings: ReportSettings, in_period: list[Any]
) -> list[dict[str, Any]]:
    """Students whose attempts suggest they may be at risk: a prompt for the DSL, not a verdict."""
    roles = list(settings.at_risk_roles)
    base = [*in_period, EventRow.user.is_not(None), EventRow.role.in_(roles)]
    people: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"score": 0, "reasons": [], "group": "", "blocks": 0}
    )
    concern = list(settings.concern_categories)
    for user, group, cat, n in session.execute(
        select(EventRow.user, func.max(EventRow.group), EventRow.category, func.count())
        .where(*base, EventRow.kind == "block", EventRow.category.in_(concern))
        .group_by(EventRow.user, EventRow.category)
    ):
        if user is None:  # not selected (base has users only); for the type checker
            continue
        p = people[user]
        p["group"] = group or p["group"]
        p["score"] += 3 + min(int(n), 10)
        p["reasons"].append(f"{n} block(s) in {cat}")
    terms = settings.concern_terms
    matched: dict[str, Counter[str]] = defaultdict(Counter)
    groups: dict[str, str] = {}
    for user, group, term in session.execute(
        select(EventRow.user, EventRow.group, EventRow.search_term).where(
            *base, EventRow.search_term.is_not(None)
        )
    ):
        if user is None:
            continue
        text = (term or "").lower()
        for word in terms:
            if word in text:
                matched[user][word] += 1
                groups[user] = group or ""
    for user, words in matched.items():
        p = people[user]
        p["group"] = p["group"] or groups.get(user, "")
        p["score"] += 5 * min(sum(words.values()), 5)
        p["reasons"].append(
            "searches for "
            + ", ".join(
                f"'{w}'" + (f" x{n}" if n > 1 else "") for w, n in words.most_common()
            )  # fmt: skip
        )
    for user, group, n in session.execute(
        select(EventRow.user, func.max(EventRow.group), func.count())
        .where(*base, EventRow.kind == "circumvention")
        .group_by(EventRow.user)
        .having(func.count() >= CIRCUMVENTION_REPEATS)
    ):
        if user is None:
            continue
        p = people[user]
        p["group"] = p["group"] or group or ""
        p["score"] += 2 + min(int(n), 5)
        p["reasons"].append(f"{n} attempt(s) to get round the filter")
    threshold = max(1, round(settings.many_blocks_per_day * max(1.0, _school_days(period))))
    for user, group, n in session.execute(
        select(EventRow.user, func.max(EventRow.group), func.count())
        .where(*base, EventRow.kind == "block")
        .group_by(EventRow.user)
        .having(func.count() >= threshold)
    ):
        if user is None:
            continue
        p = people[user]
        p["group"] = p["group"] or group or ""
        p["score"] += 2
        p["reasons"].append(f"{n} blocks in the period (unusually many: {threshold}+)")
    ranked = sorted(people.items(), key=lambda kv: (-kv[1]["score"], kv[0]))
    return [
        {
            "user": user,
            "group": p["group"] or "-",
            "score": p["score"],
            "reasons": "; ".join(p["reasons"]),
        }  # fmt: skip
        for user, p in ranked[: settings.at_risk_max]
    ]


def _school_days(period: Period) -> float:
    if period.kind == "day":
        return 1.0
    return period.days * 5 / 7


def report_as_dict(report: Report) -> dict[str, Any]:
    """Plain values (for JSON and tests)."""

    def plain(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.astimezone(UTC).isoformat()
        if isinstance(value, Section_):
            return {"recorded": value.recorded, "summary": value.summary,
                    "rows": plain(value.rows), "note": value.note}  # fmt: skip
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return {
        "period": {
            "kind": report.period.kind,
            "label": report.period.label,
            "start": report.period.start.isoformat(),
            "end": report.period.end.isoformat(),
        },  # fmt: skip
        "generated_at": report.generated_at.isoformat(),
        **{
            name: plain(getattr(report, name))
            for name in (
                "totals",
                "blocks_by_category",
                "blocks_by_window",
                "blocks_by_role",
                "blocks_by_group",
                "blocks_by_day",
                "top_hosts",
                "circumvention",
                "bans",
                "requests",
                "content_reports",
                "exceptions",
                "at_risk",
                "list_updates",
            )
        },  # fmt: skip
    }
