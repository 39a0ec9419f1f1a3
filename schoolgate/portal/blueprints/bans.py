"""Bans and lockouts in the portal (``/it/bans``): those in force and those ended in the last
week, with their evidence, supervision sessions and history; IT Support, network managers and
SLT **lift** one (with a reason), SLT **confirm** one (``/slt/bans/<id>/confirm``). Changes go
through :mod:`schoolgate.storage.bans`, so they are in the ban audit trail.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from flask import abort, flash, redirect, render_template, request, url_for
from sqlalchemy import or_, select

from schoolgate.portal.blueprints.staff import REVIEWERS, it_bp, required_note, slt_bp
from schoolgate.portal.context import db, now, signed_in_staff, staff_required
from schoolgate.storage.bans import BanError, confirm_ban, lift_ban, status_of, to_state
from schoolgate.storage.models import BanAuditRow, BanRow, EventRow, SupervisionRow

BANS_RECENT = timedelta(days=7)  # the bans page also shows bans that ended this recently


def _bans_shown(at: datetime) -> list[BanRow]:
    """Bans and lockouts in force (or starting later), then those ended in the last week."""
    since = at - BANS_RECENT
    query = select(BanRow).where(
        or_(
            BanRow.lifted_at >= since,
            (BanRow.lifted_at.is_(None)) & (or_(BanRow.ends.is_(None), BanRow.ends >= since)),
        )
    )
    rows = list(db().scalars(query.order_by(BanRow.id.desc())))
    in_force = [r for r in rows if status_of(r, at) in ("active", "scheduled")]
    return in_force + [r for r in rows if r not in in_force]


@it_bp.get("/bans")
@staff_required(*REVIEWERS)
def bans() -> str:
    session_ = db()
    at = now()
    rows = _bans_shown(at)
    ids = [r.id for r in rows]
    history: dict[int | None, list[BanAuditRow]] = {i: [] for i in ids}
    sessions: dict[int | None, list[SupervisionRow]] = {i: [] for i in ids}
    events: dict[str, EventRow] = {}
    states = {r.id: to_state(r) for r in rows}
    if ids:
        for entry in session_.scalars(
            select(BanAuditRow)
            .where(BanAuditRow.ban_id.in_(ids))
            .order_by(BanAuditRow.at, BanAuditRow.id)
        ):
            history[entry.ban_id].append(entry)
        for sup in session_.scalars(
            select(SupervisionRow).where(SupervisionRow.ban_id.in_(ids)).order_by(SupervisionRow.id)
        ):
            sessions[sup.ban_id].append(sup)
        refs = sorted({ref for st in states.values() for ref in st.events})
        if refs:
            events = {
                e.ref: e for e in session_.scalars(select(EventRow).where(EventRow.ref.in_(refs)))
            }
    items = [
        {
            "row": r,
            "state": states[r.id],
            "status": status_of(r, at),
            "history": history[r.id],
            "confirmed": [h for h in history[r.id] if h.action.endswith(".confirm")],
            "sessions": sessions[r.id],
            "events": [(ref, events.get(ref)) for ref in states[r.id].events],
        }
        for r in rows
    ]
    return render_template(
        "portal/bans.html",
        items=items,
        now=at,
        in_force=sum(1 for i in items if i["status"] in ("active", "scheduled")),
        recent_days=BANS_RECENT.days,
    )


def _load_ban(ban_id: int) -> BanRow:
    row = db().get(BanRow, ban_id)
    if row is None:
        abort(404, description="No such ban.")
    return row


@it_bp.post("/bans/<int:ban_id>/lift")
@staff_required(*REVIEWERS)
def lift(ban_id: int):
    staff = signed_in_staff()
    row = _load_ban(ban_id)
    reason = required_note("reason", "a reason for lifting the ban")
    try:
        lift_ban(db(), row.id, by=staff.username, reason=reason, now=now())
    except BanError as exc:
        abort(400, description=f"{exc}.")
    db().commit()
    flash(
        f"{row.kind.capitalize()} #{row.id} of {row.subject} lifted: the gateway gives access "
        "back within a few seconds."
    )
    return redirect(url_for("it.bans"), code=303)


@slt_bp.post("/bans/<int:ban_id>/confirm")
@staff_required("slt")
def confirm_ban_view(ban_id: int):
    staff = signed_in_staff()
    row = _load_ban(ban_id)
    if row.created_by.split(",")[0].strip().lower() == staff.username.lower():
        abort(403, description="You made this ban: another member of SLT must confirm it.")
    note = request.form.get("note", "").strip()[:1000]
    try:
        confirm_ban(db(), row.id, by=staff.username, note=note, now=now())
    except BanError as exc:
        abort(400, description=f"{exc}.")
    db().commit()
    flash(f"{row.kind.capitalize()} #{row.id} of {row.subject} confirmed.")
    return redirect(url_for("it.bans"), code=303)
