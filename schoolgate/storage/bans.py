"""Bans, supervision sessions and their audit trail in the database.

Tables (migration ``0003``): ``bans`` (one row per lockout or supervised-only ban), ``ban_audit``
(every change of ban state: made, lifted, expired, supervision started and ended, who and why)
and ``supervision_sessions``. The gateway reads what is in force into a
:class:`~schoolgate.core.sanctions.BanBook` every few seconds; the CLI and the portal change it
here.
Each change is also written to the general ``audit`` table.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    CursorResult,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from schoolgate.core.sanctions import BanState, Supervision, new_ban_ref, parse_subject
from schoolgate.storage.db import utcnow
from schoolgate.storage.models import AuditRow, BanAuditRow, BanRow, SupervisionRow
from schoolgate.storage.storable import escape_text


class BanError(ValueError):
    """A ban change that cannot be made (no such ban, already lifted, ...)."""


# -- conversions --------------------------------------------------------------------------------


def to_state(row: BanRow) -> BanState:
    try:
        events = tuple(json.loads(row.events or "[]"))
    except ValueError:
        events = ()
    return BanState(
        ref=row.ref,
        subject=row.subject,
        kind=row.kind,
        starts=row.starts,
        ends=row.ends,
        reason=row.reason,
        created_by=row.created_by,
        stage=row.stage,
        points=row.points,
        events=events,
        id=row.id,
        lifted_at=row.lifted_at,
        lifted_by=row.lifted_by,
        lift_reason=row.lift_reason,
    )


def to_supervision(row: SupervisionRow) -> Supervision:
    return Supervision(
        ref=row.ref,
        subject=row.subject,
        staff=row.staff,
        starts=row.starts,
        ends=row.ends,
        reason=row.reason,
        ban_id=row.ban_id,
        id=row.id,
        ended_at=row.ended_at,
    )


def status_of(row: BanRow, at: datetime) -> str:
    if row.lifted_at is not None:
        return "lifted"
    if row.starts > at:
        return "scheduled"
    if row.ends is not None and row.ends <= at:
        return "expired"
    return "active"


def ban_json(row: BanRow, at: datetime | None = None) -> dict[str, Any]:
    at = at or utcnow()
    state = to_state(row)
    return {
        "id": row.id,
        "ref": row.ref,
        "subject": row.subject,
        "subject_kind": state.subject_kind,
        "who": state.subject_value,
        "kind": row.kind,
        "status": status_of(row, at),
        "starts": row.starts.isoformat(),
        "ends": row.ends.isoformat() if row.ends else None,
        "reason": row.reason,
        "stage": row.stage,
        "points": row.points,
        "events": list(state.events),
        "role": row.role,
        "client_ip": row.client_ip,
        "created_by": row.created_by,
        "created_at": row.created_at.isoformat() if row.created_at else None,
        "lifted_at": row.lifted_at.isoformat() if row.lifted_at else None,
        "lifted_by": row.lifted_by,
        "lift_reason": row.lift_reason,
    }


def supervision_json(row: SupervisionRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "ref": row.ref,
        "subject": row.subject,
        "ban_id": row.ban_id,
        "staff": row.staff,
        "starts": row.starts.isoformat(),
        "ends": row.ends.isoformat(),
        "reason": row.reason,
        "ended_at": row.ended_at.isoformat() if row.ended_at else None,
        "ended_by": row.ended_by,
    }


def audit_json(row: BanAuditRow) -> dict[str, Any]:
    return {
        "at": row.at.isoformat(),
        "ban_id": row.ban_id,
        "supervision_id": row.supervision_id,
        "subject": row.subject,
        "actor": row.actor,
        "os_user": row.os_user,
        "action": row.action,
        "detail": row.detail,
    }


def _audit(
    session: Session,
    *,
    at: datetime,
    actor: str,
    action: str,
    subject: str,
    detail: str,
    ban_id: int | None = None,
    supervision_id: int | None = None,
) -> None:
    session.add(
        BanAuditRow(
            at=at,
            ban_id=ban_id,
            supervision_id=supervision_id,
            subject=subject,
            actor=actor,
            action=action,
            detail=detail,
        )
    )
    what = f"ban #{ban_id}" if ban_id is not None else f"supervision #{supervision_id}"
    session.add(
        AuditRow(at=at, actor=actor, action=action, subject=f"{what} {subject}", detail=detail)
    )


# -- changes ------------------------------------------------------------------------------------


def save_ban(
    session: Session,
    ban: BanState,
    *,
    role: str | None = None,
    client_ip: str | None = None,
) -> BanRow:
    """Store a ban made by the gateway (or by hand); idempotent on ``ban.ref``."""
    existing = session.scalar(select(BanRow).where(BanRow.ref == ban.ref))
    if existing is not None:
        return existing
    # The reason quotes what the pupil sent (a host name with a byte that is not UTF-8, say):
    # escaped, or the database refuses this ban and every one saved after it.
    ban = dataclasses.replace(ban, reason=escape_text(ban.reason))
    row = BanRow(
        ref=ban.ref,
        subject=ban.subject,
        kind=ban.kind,
        starts=ban.starts,
        ends=ban.ends,
        reason=ban.reason,
        stage=ban.stage,
        points=ban.points,
        events=json.dumps(list(ban.events)),
        role=role,
        client_ip=client_ip,
        created_by=ban.created_by,
        created_at=ban.starts,
    )
    session.add(row)
    session.flush()
    until = ban.ends.isoformat() if ban.ends else "no end"
    _audit(
        session,
        at=ban.starts,
        actor=ban.created_by,
        action=f"{ban.kind}.create",
        subject=ban.subject,
        ban_id=row.id,
        detail=f"until {until}: {ban.reason}",
    )
    return row


def add_ban(
    session: Session,
    who: str,
    *,
    by: str,
    minutes: int,
    reason: str,
    kind: str = "ban",
    now: datetime | None = None,
) -> BanRow:
    """A ban made by a member of staff (the portal, tests): ``who`` is a user or a device."""
    if not by:
        raise BanError("say who is making the ban (--by)")
    if not reason:
        raise BanError("give a reason")
    if kind not in ("lockout", "ban"):
        raise BanError("kind is lockout or ban")
    if minutes <= 0:
        raise BanError("minutes must be positive")
    subject = parse_subject(who)
    if subject is None:
        raise BanError(f"{who!r} names no user or device")
    now = now or utcnow()
    state = BanState(
        ref=new_ban_ref(),
        subject=subject,
        kind=kind,
        starts=now,
        ends=now + timedelta(minutes=minutes),
        reason=reason,
        created_by=by,
    )
    return save_ban(session, state)


def get_ban(session: Session, ban_id: int) -> BanRow:
    row = session.get(BanRow, ban_id)
    if row is None:
        raise BanError(f"no ban #{ban_id}")
    return row


def _ban_in_force(session: Session, ban_id: int, now: datetime) -> BanRow:
    """The ban, refused if it was lifted or has ended (lifting and confirming need one in force)."""
    row = get_ban(session, ban_id)
    status = status_of(row, now)
    if status == "lifted":
        raise BanError(f"ban #{ban_id} was already lifted by {row.lifted_by}")
    if status == "expired":
        raise BanError(f"ban #{ban_id} has already ended")
    return row


def lift_ban(
    session: Session, ban_id: int, *, by: str, reason: str, now: datetime | None = None
) -> BanRow:
    """End a ban (or lockout) early. Every running supervision session for it ends too."""
    if not by:
        raise BanError("say who is lifting the ban (--by)")
    if not reason:
        raise BanError("give a reason for lifting the ban (--reason)")
    now = now or utcnow()
    row = _ban_in_force(session, ban_id, now)
    row.lifted_at, row.lifted_by, row.lift_reason = now, by, reason
    _audit(
        session,
        at=now,
        actor=by,
        action=f"{row.kind}.lift",
        subject=row.subject,
        ban_id=row.id,
        detail=reason,
    )
    if row.kind == "ban":  # lifting a ban gives access back: lockouts in force end with it
        lockouts = select(BanRow).where(
            BanRow.subject == row.subject,
            BanRow.kind == "lockout",
            BanRow.lifted_at.is_(None),
            or_(BanRow.ends.is_(None), BanRow.ends > now),
        )
        for other in session.scalars(lockouts):
            other.lifted_at, other.lifted_by = now, by
            other.lift_reason = f"lifted with ban #{row.id}: {reason}"
            _audit(
                session,
                at=now,
                actor=by,
                action="lockout.lift",
                subject=other.subject,
                ban_id=other.id,
                detail=other.lift_reason,
            )
    # Supervision was only needed because of the ban: sessions still running end now.
    running = select(SupervisionRow).where(
        SupervisionRow.subject == row.subject,
        SupervisionRow.starts <= now,
        SupervisionRow.ends > now,
    )
    for supervision in session.scalars(running):
        supervision.ends = now
        _audit(
            session,
            at=now,
            actor=by,
            action="supervision.end",
            subject=supervision.subject,
            ban_id=row.id,
            detail=f"ended with the lift of {row.kind} #{row.id}",
            supervision_id=supervision.id,
        )
    return row


def confirm_ban(
    session: Session, ban_id: int, *, by: str, note: str = "", now: datetime | None = None
) -> BanRow:
    """Record that SLT reviewed a ban (or lockout) in force and upheld it; nothing else changes."""
    if not by:
        raise BanError("say who is confirming the ban (--by)")
    now = now or utcnow()
    row = _ban_in_force(session, ban_id, now)
    _audit(
        session,
        at=now,
        actor=by,
        action=f"{row.kind}.confirm",
        subject=row.subject,
        ban_id=row.id,
        detail=note or "upheld",
    )
    return row


def active_ban(session: Session, subject: str, now: datetime) -> BanRow | None:
    query = (
        select(BanRow)
        .where(BanRow.subject == subject, BanRow.lifted_at.is_(None), BanRow.starts <= now)
        .where(or_(BanRow.ends.is_(None), BanRow.ends > now))
        .order_by(BanRow.kind.desc(), BanRow.id.desc())  # "lockout" < "ban" reversed: ban first
    )
    rows = list(session.scalars(query))
    for row in rows:
        if row.kind == "ban":
            return row
    return rows[0] if rows else None


def start_supervision(
    session: Session,
    who: str,
    *,
    by: str,
    minutes: int,
    reason: str,
    max_minutes: int = 480,
    now: datetime | None = None,
) -> SupervisionRow:
    """Open a supervision session for a user (or device) under a supervised-only ban."""
    if not by:
        raise BanError("say who is supervising (--by)")
    if not reason:
        raise BanError("give a reason (the lesson or activity supervised, --reason)")
    if minutes <= 0 or minutes > max_minutes:
        raise BanError(f"a supervision session lasts 1 to {max_minutes} minutes")
    now = now or utcnow()
    subject = parse_subject(who)
    if subject is None:
        raise BanError(f"{who!r} names no user or device")
    ban = active_ban(session, subject, now)
    if ban is None:
        raise BanError(f"{who} is not banned: there is nothing to supervise")
    if ban.kind != "ban":
        raise BanError(f"{who} is in a short lockout (ban #{ban.id}), which cannot be supervised")
    row = SupervisionRow(
        ref="s" + new_ban_ref()[1:],
        subject=subject,
        ban_id=ban.id,
        staff=by,
        starts=now,
        ends=now + timedelta(minutes=minutes),
        reason=reason,
        created_at=now,
    )
    session.add(row)
    session.flush()
    _audit(
        session,
        at=now,
        actor=by,
        action="supervision.start",
        subject=subject,
        ban_id=ban.id,
        supervision_id=row.id,
        detail=f"{minutes} minutes until {row.ends.isoformat()}: {reason}",
    )
    return row


def _running_supervision(session: Session, supervision_id: int, now: datetime) -> SupervisionRow:
    row = session.get(SupervisionRow, supervision_id)
    if row is None:
        raise BanError(f"no supervision session #{supervision_id}")
    if row.ended_at is not None or row.ends <= now:
        raise BanError(f"supervision session #{supervision_id} has already ended")
    return row


def extend_supervision(
    session: Session,
    supervision_id: int,
    *,
    by: str,
    minutes: int,
    max_minutes: int = 480,
    now: datetime | None = None,
) -> SupervisionRow:
    """Give a running supervision session ``minutes`` more (it never ends more than
    ``max_minutes`` from now, and only while the ban it supervises is in force)."""
    if not by:
        raise BanError("say who is extending the supervision (--by)")
    if minutes <= 0 or minutes > max_minutes:
        raise BanError(f"a supervision session is extended by 1 to {max_minutes} minutes")
    now = now or utcnow()
    row = _running_supervision(session, supervision_id, now)
    ban = active_ban(session, row.subject, now)
    if ban is None or ban.kind != "ban":
        raise BanError("the ban it supervises is no longer in force: nothing to extend")
    ends = min(row.ends + timedelta(minutes=minutes), now + timedelta(minutes=max_minutes))
    if ends <= row.ends:
        raise BanError(f"a supervision session ends at most {max_minutes} minutes from now")
    row.ends = ends
    _audit(
        session,
        at=now,
        actor=by,
        action="supervision.extend",
        subject=row.subject,
        ban_id=row.ban_id,
        supervision_id=row.id,
        detail=f"{minutes} more minutes, until {ends.isoformat()}",
    )
    return row


def end_supervision(
    session: Session, supervision_id: int, *, by: str, now: datetime | None = None
) -> SupervisionRow:
    now = now or utcnow()
    row = _running_supervision(session, supervision_id, now)
    row.ended_at, row.ended_by = now, by
    _audit(
        session,
        at=now,
        actor=by,
        action="supervision.end",
        subject=row.subject,
        ban_id=row.ban_id,
        supervision_id=row.id,
        detail="ended early",
    )
    return row


def note_expired(
    session: Session, now: datetime | None = None, *, actor: str = "schoolgate"
) -> int:
    """Write ``ban.expire`` to the audit trail for bans whose time ran out (once each, also
    with several gateways: the row is claimed with a conditional UPDATE)."""
    now = now or utcnow()
    rows = list(
        session.scalars(
            select(BanRow).where(
                BanRow.lifted_at.is_(None),
                BanRow.expiry_noted_at.is_(None),
                BanRow.ends.is_not(None),
                BanRow.ends <= now,
            )
        )
    )
    count = 0
    for row in rows:
        result = session.execute(
            update(BanRow)
            .where(BanRow.id == row.id, BanRow.expiry_noted_at.is_(None))
            .values(expiry_noted_at=now)
        )
        claimed = cast(CursorResult[Any], result).rowcount  # an UPDATE's result has one
        if claimed:
            assert row.ends is not None  # only bans that end were read
            _audit(
                session,
                at=row.ends,
                actor=actor,
                action=f"{row.kind}.expire",
                subject=row.subject,
                ban_id=row.id,
                detail="ended at its set time",
            )
            count += 1
    return count


# -- reading ------------------------------------------------------------------------------------


def bans_current(session: Session, now: datetime) -> list[BanState]:
    """Bans not lifted and not ended (including ones starting later)."""
    query = (
        select(BanRow)
        .where(BanRow.lifted_at.is_(None))
        .where(or_(BanRow.ends.is_(None), BanRow.ends > now))
        .order_by(BanRow.id)
    )
    return [to_state(row) for row in session.scalars(query)]


def supervisions_current(session: Session, now: datetime) -> list[Supervision]:
    query = (
        select(SupervisionRow)
        .where(SupervisionRow.ended_at.is_(None), SupervisionRow.ends > now)
        .order_by(SupervisionRow.id)
    )
    return [to_supervision(row) for row in session.scalars(query)]


def list_bans(
    session: Session,
    *,
    now: datetime | None = None,
    include_ended: bool = False,
    subject: str | None = None,
) -> list[BanRow]:
    now = now or utcnow()
    query = select(BanRow)
    if subject:
        query = query.where(BanRow.subject == parse_subject(subject))
    if not include_ended:
        query = query.where(BanRow.lifted_at.is_(None)).where(
            or_(BanRow.ends.is_(None), BanRow.ends > now)
        )
    return list(session.scalars(query.order_by(BanRow.id)))


def ban_history(session: Session, ban_id: int) -> list[BanAuditRow]:
    query = select(BanAuditRow).where(BanAuditRow.ban_id == ban_id)
    return list(session.scalars(query.order_by(BanAuditRow.at, BanAuditRow.id)))


def supervisions_of(session: Session, ban_id: int) -> list[SupervisionRow]:
    query = select(SupervisionRow).where(SupervisionRow.ban_id == ban_id)
    return list(session.scalars(query.order_by(SupervisionRow.id)))


def save_bans(session: Session, items: Iterable[tuple[BanState, str | None, str | None]]) -> int:
    """Store bans made by a gateway: ``(ban, role, client_ip)``; returns how many were new."""
    new = 0
    for ban, role, client_ip in items:
        before = session.scalar(select(BanRow.id).where(BanRow.ref == ban.ref))
        save_ban(session, ban, role=role, client_ip=client_ip)
        new += before is None
    return new
