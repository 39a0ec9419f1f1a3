"""The designated safeguarding lead's pages (``/dsl/``), for the ``dsl`` role only (not IT
Support, not SLT): the queue of risk matches to review, a pupil's timeline (every view audited),
cases with their status, notes and outcome, and a case's export as HTML and CSV.

Rules and storage: :mod:`schoolgate.storage.cases`; what the pages show:
:mod:`schoolgate.portal.services.dsl`.
"""

from __future__ import annotations

from flask import Blueprint, Response, abort, flash, redirect, render_template, request, url_for
from sqlalchemy import select

from schoolgate.core import words
from schoolgate.core.sanctions import parse_subject
from schoolgate.portal.context import current_staff, db, now, staff_required, state
from schoolgate.portal.services import dsl as service
from schoolgate.storage import cases as store
from schoolgate.storage.cases import CaseError
from schoolgate.storage.models import CaseRow, MatchRow

ROLE = "dsl"
DAYS = (7, 30, 90, 365)

bp = Blueprint("dsl", __name__, url_prefix="/dsl")


def _tz():
    policy = state().policy
    return policy.timetables[policy.resolver.default_site].tz


def _me() -> str:
    staff = current_staff()
    assert staff is not None  # staff_required
    return staff.username


def _case(case_id: int) -> CaseRow:
    row = db().get(CaseRow, case_id)
    if row is None:
        abort(404, description="No such case.")
    return row


@bp.get("/")
@staff_required(ROLE)
def queue():
    return render_template(
        "portal/dsl/queue.html",
        matches=store.review_queue(db()),
        open_cases=store.cases(db(), statuses=("new", "reviewed", "escalated")),
        severity_words=service.severity_words,
    )


@bp.post("/match/<ref>/case")
@staff_required(ROLE)
def open_case(ref: str):
    try:
        case, created = store.open_case(db(), ref, actor=_me(), now=now())
    except CaseError as exc:
        abort(400, description=f"{str(exc).capitalize()}.")
    db().commit()
    flash(f"Case #{case.id} opened." if created else f"Match added to case #{case.id}.")
    return redirect(url_for("dsl.case", case_id=case.id), code=303)


@bp.post("/match/<ref>/no-concern")
@staff_required(ROLE)
def no_concern(ref: str):
    try:
        store.dismiss(db(), ref, actor=_me(), now=now(), reason=request.form.get("reason", ""))
    except CaseError as exc:
        abort(400, description=f"{str(exc).capitalize()}.")
    db().commit()
    flash("Marked as reviewed: no concern.")
    return redirect(url_for("dsl.queue"), code=303)


@bp.get("/pupil/<who>")
@staff_required(ROLE)
def timeline(who: str):
    subject = parse_subject(who)
    if not subject:
        abort(404, description="Say whose timeline to show.")
    try:
        days = int(request.args.get("days", "30"))
    except ValueError:
        days = 30
    days = days if days in DAYS else 30
    reviewed = set(db().scalars(select(MatchRow.event_ref).where(MatchRow.subject == subject)))
    entries = service.timeline(
        db(), subject, viewer=_me(), now=now(), days=days, tz=_tz(), reviewed=reviewed
    )
    pupil_cases = store.subject_cases(db(), subject)
    db().commit()  # the audit entry for this view
    kind, _, value = subject.partition(":")
    return render_template(
        "portal/dsl/timeline.html",
        who=value if kind == "user" else f"device {value}",
        subject=subject,
        entries=entries,
        cases=pupil_cases,
        days=days,
        choices=DAYS,
        severity_words=service.severity_words,
    )


@bp.get("/cases")
@staff_required(ROLE)
def case_list():
    status = request.args.get("status", "")
    statuses = (status,) if status in store.STATUSES else ()
    return render_template(
        "portal/dsl/cases.html",
        cases=store.cases(db(), statuses=statuses),
        status=status if statuses else "",
        statuses=store.STATUSES,
    )


@bp.get("/cases/<int:case_id>")
@staff_required(ROLE)
def case(case_id: int):
    row = _case(case_id)
    return render_template(
        "portal/dsl/case.html",
        case=row,
        matches=store.case_matches(db(), row),
        notes=store.case_notes(db(), row),
        next_statuses=store.TRANSITIONS[row.status],
        severity_words=service.severity_words,
    )


def _changed(row: CaseRow, message: str):
    db().commit()
    flash(message)
    return redirect(url_for("dsl.case", case_id=row.id), code=303)


@bp.post("/cases/<int:case_id>/status")
@staff_required(ROLE)
def status(case_id: int):
    row = _case(case_id)
    new = request.form.get("status", "")
    try:
        store.set_status(db(), row, new, actor=_me(), now=now(),
                         note=request.form.get("note", ""),
                         outcome=request.form.get("outcome"))  # fmt: skip
    except CaseError as exc:
        db().rollback()
        abort(400, description=f"{str(exc).capitalize()}.")
    return _changed(row, f"Case #{row.id} is now {new}.")


@bp.post("/cases/<int:case_id>/note")
@staff_required(ROLE)
def note(case_id: int):
    row = _case(case_id)
    try:
        store.add_note(db(), row, request.form.get("text", ""), actor=_me(), now=now())
    except CaseError as exc:
        abort(400, description=f"{str(exc).capitalize()}.")
    return _changed(row, "Note added.")


@bp.post("/cases/<int:case_id>/outcome")
@staff_required(ROLE)
def outcome(case_id: int):
    row = _case(case_id)
    try:
        store.set_outcome(db(), row, request.form.get("outcome", ""), actor=_me(), now=now())
    except CaseError as exc:
        abort(400, description=f"{str(exc).capitalize()}.")
    return _changed(row, "Outcome recorded.")


@bp.get("/cases/<int:case_id>/export.html")
@staff_required(ROLE)
def export_html(case_id: int):
    row = _case(case_id)
    record = service.case_record(db(), row, viewer=_me(), how="html")
    db().commit()
    tz = _tz()
    page = render_template(
        "portal/dsl/export.html",
        record=record,
        severity_words=service.severity_words,
        when=lambda value: words.absolute(value, tz, seconds=True),
        exported_by=_me(),
        exported_at=now(),
    )
    return _download(page, "text/html", f"safeguarding-case-{row.id}.html")


@bp.get("/cases/<int:case_id>/export.csv")
@staff_required(ROLE)
def export_csv(case_id: int):
    row = _case(case_id)
    record = service.case_record(db(), row, viewer=_me(), how="csv")
    db().commit()
    return _download(service.case_csv(record), "text/csv", f"safeguarding-case-{row.id}.csv")


def _download(body: str, mimetype: str, filename: str) -> Response:
    """A file to save (never kept in a cache: it is a safeguarding record)."""
    return Response(
        body,
        mimetype=mimetype,
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Cache-Control": "no-store",
        },
    )
