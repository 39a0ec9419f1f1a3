"""Supervision sessions from the portal (``/supervision/``): a teacher starts, extends and ends
one for a banned pupil in their group; SLT, IT Support and network managers for anyone. Rules
and the audit trail: :mod:`schoolgate.portal.services.supervision`."""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for

from schoolgate.core import words
from schoolgate.portal.context import db, now, signed_in_staff, staff_required, state
from schoolgate.portal.services import supervision as service
from schoolgate.storage.bans import BanError
from schoolgate.storage.models import BanRow, SupervisionRow

WHO = ("teacher", "slt", "it_support", "network_manager")
CHOICES = (15, 30, 45, 60, 90, 120)

bp = Blueprint("supervision", __name__, url_prefix="/supervision")


def _tz():
    policy = state().policy
    return policy.timetables[policy.resolver.default_site].tz


def _minutes(limit: int) -> int:
    try:
        value = int(request.form.get("minutes", ""))
    except ValueError:
        abort(400, description="Choose how many minutes.")
    if not 1 <= value <= limit:
        abort(400, description=f"A session lasts 1 to {limit} minutes.")
    return value


@bp.get("/")
@staff_required(*WHO)
def index():
    policy = state().policy
    staff = signed_in_staff()
    limit = service.max_minutes(policy)
    return render_template(
        "portal/console/supervision.html",
        banned=service.banned_now(db(), policy, staff, now()),
        choices=[c for c in CHOICES if c <= limit] or [limit],
        limit=limit,
        until=lambda value: words.until(value, now(), _tz()),
    )


def _done(message: str):
    db().commit()
    flash(message)
    return redirect(url_for("supervision.index"), code=303)


@bp.post("/start/<int:ban_id>")
@staff_required(*WHO)
def start(ban_id: int):
    policy = state().policy
    staff = signed_in_staff()
    ban = db().get(BanRow, ban_id)
    if ban is None:
        abort(404, description="No such ban.")
    reason = request.form.get("reason", "").strip()[:1000]
    if not reason:
        abort(400, description="Say which lesson or activity you are supervising.")
    minutes = _minutes(service.max_minutes(policy))
    try:
        row = service.start(db(), policy, staff, ban, minutes=minutes, reason=reason, now=now())
    except service.NotAllowed as exc:
        abort(403, description=str(exc))
    except BanError as exc:
        abort(400, description=f"{exc}.")
    who = ban.subject.partition(":")[2]
    return _done(
        f"Supervision session #{row.id} started: {who} can browse under your supervision "
        f"{words.until(row.ends, now(), _tz())} (every gateway within a few seconds)."
    )


def _session(session_id: int) -> SupervisionRow:
    row = db().get(SupervisionRow, session_id)
    if row is None:
        abort(404, description="No such supervision session.")
    return row


@bp.post("/<int:session_id>/extend")
@staff_required(*WHO)
def extend(session_id: int):
    policy = state().policy
    row = _session(session_id)
    minutes = _minutes(service.max_minutes(policy))
    try:
        service.extend(db(), policy, signed_in_staff(), row, minutes=minutes, now=now())
    except service.NotAllowed as exc:
        abort(403, description=str(exc))
    except BanError as exc:
        abort(400, description=f"{exc}.")
    return _done(f"Supervision session #{row.id} now lasts {words.until(row.ends, now(), _tz())}.")


@bp.post("/<int:session_id>/end")
@staff_required(*WHO)
def end(session_id: int):
    policy = state().policy
    row = _session(session_id)
    try:
        service.end(db(), policy, signed_in_staff(), row, now=now())
    except service.NotAllowed as exc:
        abort(403, description=str(exc))
    except BanError as exc:
        abort(400, description=f"{exc}.")
    return _done(f"Supervision session #{row.id} ended: the suspension applies again.")
