"""Data protection: how long each kind of record is kept, the purge, and a person's data.

* :class:`RetentionSettings` (the ``retention`` config section, read when the config is loaded:
  :mod:`schoolgate.core.retention_settings`) says how long each kind is kept.
* :func:`purge` deletes what is past its retention period (the nightly job and
  ``schoolgate purge``), and says what it deleted in the audit trail.
* :func:`export_user` gathers everything held about one person (a subject access request);
  :func:`erase_user` erases it, except what is kept as **safeguarding evidence** or as the
  audit trail the school must keep (see ``docs/data-protection.md``).

The tables are the models of :mod:`schoolgate.storage.models`; the migrations make every one
of them, so each is there to purge and to search.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Table, and_, delete, not_, or_, select
from sqlalchemy.orm import Session

from schoolgate.core.configfile import parse_clock  # noqa: F401 - read here by callers
from schoolgate.core.retention_settings import (  # noqa: F401 - read here by callers
    DEFAULT_SAFEGUARDING_CATEGORIES,
    RETENTION_KINDS,
    RetentionSettings,
    read_retention,
)
from schoolgate.storage.db import utcnow
from schoolgate.storage.models import (
    OPEN_STATUSES,
    AuditRow,
    BanRow,
    Base,
    CaseNoteRow,
    CaseRow,
    EventRow,
    ExceptionRow,
    MatchRow,
    OutboxRow,
    PortalRequestRow,
    StaffRoleRow,
)

ACTOR = "schoolgate"

# Kinds of event that the monitoring records, each kept for its own period, not the log's.
MONITORING_KINDS = ("search", "page_risk")


# -- config -------------------------------------------------------------------------------------
def retention_of(policy: Any) -> RetentionSettings:
    """The policy's retention settings (the defaults without a policy)."""
    return policy.settings.retention if policy is not None else RetentionSettings()


def safeguarding_categories(policy: Any, settings: RetentionSettings) -> set[str]:
    """Configured safeguarding categories plus every locked one (illegal content lists)."""
    cats = set(settings.safeguarding_categories)
    if policy is not None:
        cats |= {name for name, c in policy.categories.items() if getattr(c, "locked", False)}
    return cats


# -- tables about people --------------------------------------------------------------------------
def _user_columns(table: Table) -> list[Any]:
    """Columns of a table that name a person (``user``, ``requester_user``...)."""
    names = ("user", "username", "requester_user", "student", "subject_user")
    return [table.c[n] for n in names if n in table.c]


def _about(table: Table, name: str) -> list[Any]:
    """Conditions selecting one person's rows: a user-name column, or the bans' ``subject``
    (``user:NAME``)."""
    conds = [c == name for c in _user_columns(table)]
    if "subject" in table.c:
        conds.append(table.c.subject == f"user:{name}")
    return conds


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return value


def _row_dict(row: Any) -> dict[str, Any]:
    return {key: _jsonable(value) for key, value in row._mapping.items()}


# -- safeguarding evidence ----------------------------------------------------------------------
def _evidence_refs(session: Session) -> set[str]:
    """Event refs named by a content report or put in a safeguarding case: kept as evidence
    (a ban's own events are circumvention, kept as such)."""
    refs = set(
        session.scalars(
            select(PortalRequestRow.event_ref).where(PortalRequestRow.event_ref.is_not(None))
        )
    )
    # A match the DSL put in a case is evidence for as long as the case is kept.
    refs |= set(session.scalars(select(MatchRow.event_ref).where(MatchRow.case_id.is_not(None))))
    return {r for r in refs if r is not None}


def _is_evidence(cats: Iterable[str], refs: set[str]):
    """A SQL condition: the event is safeguarding evidence."""
    # An event without a category must be false here, not NULL: NOT(NULL) would keep it forever.
    in_category = and_(EventRow.category.is_not(None), EventRow.category.in_(sorted(cats)))
    cond = or_(EventRow.kind == "circumvention", in_category)
    if refs:
        cond = or_(cond, EventRow.ref.in_(sorted(refs)))
    return cond


# -- purge --------------------------------------------------------------------------------------
@dataclass
class PurgeResult:
    at: datetime
    deleted: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.deleted.values())

    def summary(self) -> str:
        parts = [f"{k}: {v}" for k, v in self.deleted.items()]
        return "deleted " + (", ".join(parts) if parts else "nothing")


def purge(
    session: Session,
    settings: RetentionSettings,
    *,
    now: datetime | None = None,
    policy: Any = None,
    reports_dir: Path | None = None,
    actor: str = ACTOR,
) -> PurgeResult:
    """Delete every record past its retention period; audit what was deleted (not who)."""
    now = now or utcnow()
    result = PurgeResult(at=now)
    days = timedelta(days=1)
    cats = safeguarding_categories(policy, settings)
    refs = _evidence_refs(session)
    evidence = _is_evidence(cats, refs)

    def count(name: str, res: Any) -> None:
        result.deleted[name] = result.deleted.get(name, 0) + (res.rowcount or 0)

    monitored = EventRow.kind.in_(MONITORING_KINDS)
    count(
        "decision events",
        session.execute(
            delete(EventRow).where(
                EventRow.at < now - settings.decisions_days * days,
                not_(evidence),
                not_(monitored),
            )
        ),
    )
    # A search event's ``rule`` is the risk term it matched (or why it could not be graded):
    # without one it is an ordinary search, kept for the shorter period.
    plain_search = and_(EventRow.kind == "search", EventRow.rule.is_(None))
    count(
        "searches",
        session.execute(
            delete(EventRow).where(
                EventRow.at < now - settings.search_days * days, plain_search, not_(evidence)
            )
        ),
    )
    count(
        "risk matches",
        session.execute(
            delete(EventRow).where(
                EventRow.at < now - settings.page_risk_days * days,
                monitored,
                not_(plain_search),
                not_(evidence),
            )
        ),
    )
    count(
        "safeguarding events",
        session.execute(
            delete(EventRow).where(EventRow.at < now - settings.safeguarding_days * days, evidence)
        ),
    )
    ex_cut = now - settings.exceptions_days * days
    count(
        "exceptions",
        session.execute(
            delete(ExceptionRow).where(
                or_(
                    and_(ExceptionRow.ends.is_not(None), ExceptionRow.ends < ex_cut),
                    and_(ExceptionRow.revoked_at.is_not(None), ExceptionRow.revoked_at < ex_cut),
                )
            )
        ),
    )
    count(
        "audit entries",
        session.execute(delete(AuditRow).where(AuditRow.at < now - settings.audit_days * days)),
    )
    count(
        "access requests and content reports",
        session.execute(
            delete(PortalRequestRow).where(
                PortalRequestRow.updated_at < now - settings.requests_days * days,
                PortalRequestRow.status.not_in(OPEN_STATUSES),
            )
        ),
    )
    count(
        "notifications sent",
        session.execute(
            delete(OutboxRow).where(
                OutboxRow.sent_at.is_not(None),
                OutboxRow.sent_at < now - settings.outbox_days * days,
            )
        ),
    )
    count(
        "bans",
        session.execute(
            delete(BanRow).where(
                BanRow.ends.is_not(None), BanRow.ends < now - settings.bans_days * days
            )
        ),
    )
    _purge_cases(session, now - settings.safeguarding_cases_days * days, count)
    if reports_dir is not None and reports_dir.is_dir():
        cut = (now - settings.reports_days * days).timestamp()
        removed = 0
        for path in reports_dir.rglob("*"):
            if path.is_file() and path.suffix in (".html", ".csv") and path.stat().st_mtime < cut:
                path.unlink()
                removed += 1
        result.deleted["report files"] = removed
    result.deleted = {k: v for k, v in result.deleted.items() if v}
    session.add(
        AuditRow(
            at=now,
            actor=actor,
            action="retention.purge",
            subject="records past their retention period",
            detail=json.dumps(
                {"deleted": result.deleted, "retention": settings.as_dict()}, default=str
            ),
        )
    )
    return result


def _purge_cases(session: Session, cut: datetime, count: Any) -> None:
    """Closed cases past their retention period, with their notes and matches (the events
    they linked are evidence no longer, and go with the decision log's own period)."""
    old = select(CaseRow.id).where(CaseRow.closed_at.is_not(None), CaseRow.closed_at < cut)
    ids = list(session.scalars(old))
    if not ids:
        return
    session.execute(delete(CaseNoteRow).where(CaseNoteRow.case_id.in_(ids)))
    session.execute(delete(MatchRow).where(MatchRow.case_id.in_(ids)))
    count("safeguarding cases", session.execute(delete(CaseRow).where(CaseRow.id.in_(ids))))


# -- subject access -----------------------------------------------------------------------------
def _event_dict(row: EventRow) -> dict[str, Any]:
    from schoolgate.storage.events import event_json

    return event_json(row)


def _exception_dict(row: ExceptionRow) -> dict[str, Any]:
    return {
        c.key: _jsonable(getattr(row, c.key))
        for c in ExceptionRow.__table__.columns  # type: ignore[attr-defined]
    }


def _audit_dict(row: AuditRow) -> dict[str, Any]:
    return {"id": row.id, "at": row.at.isoformat(), "actor": row.actor, "os_user": row.os_user,
            "action": row.action, "subject": row.subject, "detail": row.detail}  # fmt: skip


def _audit_about(name: str):
    return or_(
        AuditRow.actor == name,
        AuditRow.subject == name,
        AuditRow.subject.like(f"%user={name}%"),
        AuditRow.detail.like(f"%user={name}%"),
        AuditRow.subject == f"user {name}",
    )


def export_user(
    session: Session, username: str, *, policy: Any = None, now: datetime | None = None
) -> dict[str, Any]:
    """Everything schoolgate holds about ``username`` (a subject access request)."""
    name = username.strip().lower()
    now = now or utcnow()
    out: dict[str, Any] = {
        "subject": name,
        "generated_at": now.isoformat(),
        "controller_note": (
            "Held by the school as data controller for online safety (public task; "
            "legal obligation under Keeping Children Safe in Education). See the school's "
            "record of processing (docs/data-protection.md)."
        ),
    }
    if policy is not None:
        entry = None
        roster = getattr(policy.resolver, "roster", None)
        if isinstance(roster, dict):
            entry = roster.get(name)
        if entry is not None:
            out["roster"] = {
                k: _jsonable(getattr(entry, k, None))
                for k in ("username", "role", "group", "date_of_birth", "site")
            }
    events = session.scalars(select(EventRow).where(EventRow.user == name).order_by(EventRow.at))
    out["events"] = [_event_dict(r) for r in events]
    exc = session.scalars(
        select(ExceptionRow)
        .where(
            or_(
                and_(ExceptionRow.scope == "user", ExceptionRow.scope_value == name),
                ExceptionRow.created_by == name,
                ExceptionRow.revoked_by == name,
            )
        )
        .order_by(ExceptionRow.id)
    )
    out["exceptions"] = [_exception_dict(r) for r in exc]
    audit_rows = session.scalars(select(AuditRow).where(_audit_about(name)).order_by(AuditRow.at))
    out["audit"] = [_audit_dict(r) for r in audit_rows]
    for table_name, key in (
        ("portal_requests", "requests_and_reports"),
        ("bans", "bans"),
        ("ban_audit", "ban_history"),
        ("supervision_sessions", "supervision_sessions"),
        ("safeguarding_cases", "safeguarding_cases"),
        ("staff", "staff_account"),
    ):
        table = Base.metadata.tables[table_name]
        conds = _about(table, name)
        if not conds:
            out[key] = []
            continue
        rows = session.execute(select(table).where(or_(*conds)))
        items = []
        for row in rows:
            item = _row_dict(row)
            for secret in ("password_hash", "token", "totp_secret", "totp_recovery"):
                if secret in item:
                    item[secret] = "(withheld: a credential)"
            if table_name == "staff":  # held beside the account since migration 0013
                item["roles"] = ",".join(_staff_roles(session, item["id"]))
            items.append(item)
        out[key] = items
    out["counts"] = {
        k: len(v) for k, v in out.items() if isinstance(v, list) and k not in ("counts",)
    }
    return out


def _staff_roles(session: Session, staff_id: int) -> list[str]:
    query = select(StaffRoleRow.role).where(StaffRoleRow.staff_id == staff_id)
    return list(session.scalars(query.order_by(StaffRoleRow.id)))


# -- erasure ------------------------------------------------------------------------------------
@dataclass
class ErasePlan:
    """What an erasure removes, and what it keeps and why."""

    subject: str
    erase: dict[str, int] = field(default_factory=dict)
    keep: dict[str, tuple[int, str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "erased": self.erase,
            "kept": {k: {"count": n, "why": why} for k, (n, why) in self.keep.items()},
        }


EVIDENCE_WHY = (
    "safeguarding evidence: exempt from erasure (UK GDPR Art. 17(3)(b) and (e); DPA 2018 "
    "Sch. 2 para 3 / KCSIE: the school must keep what a designated safeguarding lead may need)"
)
AUDIT_WHY = (
    "audit trail of changes to the filtering: kept for the legal obligation to show who "
    "opened what (DfE filtering standard); purged at the end of its retention period"
)
OPEN_WHY = "still being handled (open request, ban or exception in force): erased when closed"


def erase_user(
    session: Session,
    username: str,
    *,
    policy: Any = None,
    settings: RetentionSettings | None = None,
    apply: bool = False,
    now: datetime | None = None,
    actor: str = ACTOR,
) -> ErasePlan:
    """Erase what is held about ``username``, except safeguarding evidence and the audit trail.

    With ``apply=False`` nothing changes: the plan says what would happen.
    """
    name = username.strip().lower()
    now = now or utcnow()
    settings = settings or (retention_of(policy) if policy is not None else RetentionSettings())
    plan = ErasePlan(subject=name)
    cats = safeguarding_categories(policy, settings)
    evidence = _is_evidence(cats, _evidence_refs(session))
    mine = EventRow.user == name

    def n(query: Any) -> int:
        return len(session.execute(query).all())

    plan.erase["events"] = n(select(EventRow.id).where(mine, not_(evidence)))
    kept_events = n(select(EventRow.id).where(mine, evidence))
    if kept_events:
        plan.keep["safeguarding events"] = (kept_events, EVIDENCE_WHY)
    ended = and_(
        ExceptionRow.scope == "user",
        ExceptionRow.scope_value == name,
        or_(ExceptionRow.revoked_at.is_not(None), and_(ExceptionRow.ends.is_not(None),
                                                       ExceptionRow.ends <= now)),
    )  # fmt: skip
    live = and_(ExceptionRow.scope == "user", ExceptionRow.scope_value == name, not_(ended))
    plan.erase["exceptions for this person (ended)"] = n(select(ExceptionRow.id).where(ended))
    live_n = n(select(ExceptionRow.id).where(live))
    if live_n:
        plan.keep["exceptions in force"] = (live_n, OPEN_WHY)
    audit_n = n(select(AuditRow.id).where(_audit_about(name)))
    if audit_n:
        plan.keep["audit entries"] = (audit_n, AUDIT_WHY)
    requests = PortalRequestRow
    who = requests.requester_user == name
    req_evidence = and_(who, requests.kind == "report")
    req_open = and_(who, requests.kind != "report", requests.status.in_(OPEN_STATUSES))
    req_closed = and_(who, requests.kind != "report", requests.status.not_in(OPEN_STATUSES))
    plan.erase["access requests (closed)"] = n(select(requests.id).where(req_closed))
    if (k := n(select(requests.id).where(req_open))) > 0:
        plan.keep["access requests (open)"] = (k, OPEN_WHY)
    if (k := n(select(requests.id).where(req_evidence))) > 0:
        plan.keep["content reports"] = (
            k,
            "reports of harmful content: " + EVIDENCE_WHY.split(": ", 1)[1],
        )
    for table_name, label in (
        ("bans", "bans"),
        ("ban_audit", "ban history"),
        ("supervision_sessions", "supervision sessions"),
        ("safeguarding_cases", "safeguarding cases"),
    ):
        table = Base.metadata.tables[table_name]
        if conds := _about(table, name):
            if k := n(select(*table.primary_key.columns).where(or_(*conds))):
                plan.keep[label] = (k, EVIDENCE_WHY)
    plan.erase = {k: v for k, v in plan.erase.items()}
    if not apply:
        return plan
    session.execute(delete(EventRow).where(mine, not_(evidence)))
    session.execute(delete(ExceptionRow).where(ended))
    session.execute(delete(requests).where(req_closed))
    session.add(
        AuditRow(
            at=now,
            actor=actor,
            action="data.erase",
            subject=f"user {name}",
            detail=json.dumps(plan.as_dict()),
        )
    )
    return plan
