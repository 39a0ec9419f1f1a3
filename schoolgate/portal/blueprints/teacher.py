"""Teachers' classroom overrides (``/teacher/``): open a category or a site for one of their
own groups until the end of the lesson or a time today, and end it early. Only categories
whose config says ``teachers_may_open`` (never a locked one); each override is an exception of
kind ``curriculum`` for scope ``group``, in the audit trail like every exception.
"""

from __future__ import annotations

from datetime import datetime, time

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from sqlalchemy import or_, select

from schoolgate.core.hosts import normalize_host
from schoolgate.portal.context import db, label, now, signed_in_staff, staff_required, state
from schoolgate.storage.exceptions import ExceptionRequestError, add_exception, revoke_exception
from schoolgate.storage.models import ExceptionRow, StaffRow

teacher_bp = Blueprint("teacher", __name__, url_prefix="/teacher")


def _teacher_categories() -> list[str]:
    return [
        name
        for name, settings in state().policy.categories.items()
        if settings.teachers_may_open and not settings.locked
    ]


def _my_overrides(staff: StaffRow) -> list[ExceptionRow]:
    at = now()
    return list(
        db().scalars(
            select(ExceptionRow)
            .where(
                ExceptionRow.kind == "curriculum",
                ExceptionRow.created_by == staff.username,
                ExceptionRow.revoked_at.is_(None),
                or_(ExceptionRow.ends.is_(None), ExceptionRow.ends > at),
            )
            .order_by(ExceptionRow.id)
        )
    )


@teacher_bp.get("/")
@staff_required("teacher")
def overrides():
    staff = signed_in_staff()
    policy = state().policy
    site = policy.resolver.default_site
    return render_template(
        "portal/teacher.html",
        groups=staff.group_list,
        categories=_teacher_categories(),
        overrides=_my_overrides(staff),
        sites=policy.sites,
        window=policy.window(site, now()),
    )


@teacher_bp.post("/open")
@staff_required("teacher")
def open_for_class():
    staff = signed_in_staff()
    policy = state().policy
    group = request.form.get("group", "")
    if group.lower() not in [g_.lower() for g_ in staff.group_list]:
        abort(403, description="You can only open sites for your own groups.")
    site = request.form.get("site") or policy.resolver.default_site
    if site not in policy.timetables:
        abort(400, description="Unknown site.")
    allowed = _teacher_categories()
    # Nothing is chosen for the teacher: one click must never open a whole category.
    target_kind = request.form.get("target_kind", "")
    if target_kind == "category":
        target = request.form.get("category", "")
        if not target:
            abort(400, description="Choose which category to open.")
        if target not in allowed:
            abort(403, description="Teachers may not open that category; ask IT Support.")
    elif target_kind == "host":
        target = normalize_host(request.form.get("host", "").strip()[:500])
        match = policy.matcher.lookup(target, None) if target else None
        if match is None or match.category == "allowlist":
            abort(400, description="That site is not blocked by a category: nothing to open.")
        if match.category not in allowed:
            abort(
                403,
                description=f"{target} is in {label(match.category)}, which teachers "
                "may not open; ask IT Support.",
            )
    else:
        abort(400, description="Choose a category or a site.")
    at = now()
    tz = policy.timetables[site].tz
    until = request.form.get("until", "lesson").strip()
    if until == "lesson":
        ends = policy.window(site, at).end
    else:
        try:
            clock_time = time.fromisoformat(until)
        except ValueError:
            abort(400, description="Give the end as a time today, e.g. 11:00.")
        ends = datetime.combine(at.astimezone(tz).date(), clock_time, tzinfo=tz)
        if ends <= at:
            abort(400, description="That time has already passed today.")
    reason = request.form.get("reason", "").strip()[:500] or "curriculum activity"
    try:
        add_exception(
            db(),
            policy,
            scope="group",
            scope_value=group,
            target_kind=target_kind,
            target=target,
            starts=at,
            ends=ends,
            created_by=staff.username,
            reason=reason,
            kind="curriculum",
        )
    except ExceptionRequestError as exc:
        abort(400, description=str(exc))
    db().commit()
    flash(f"Opened {label(target)} for {group} until {ends.astimezone(tz):%H:%M}.")
    return redirect(url_for("teacher.overrides"), code=303)


@teacher_bp.post("/end/<int:exception_id>")
@staff_required("teacher")
def end_override(exception_id: int):
    staff = signed_in_staff()
    row = db().get(ExceptionRow, exception_id)
    if row is None or row.kind != "curriculum" or row.created_by != staff.username:
        abort(403, description="You can only end your own class overrides.")
    try:
        revoke_exception(db(), exception_id, by=staff.username, reason="ended early by teacher")
    except ExceptionRequestError as exc:
        abort(400, description=str(exc))
    db().commit()
    flash("Ended.")
    return redirect(url_for("teacher.overrides"), code=303)
