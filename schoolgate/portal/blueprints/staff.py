"""For staff: sign-in, the IT Support queue, SLT review and teachers' classroom overrides.

Rules every action keeps: a member of staff can never decide their own request, nor approve
an exception they proposed themselves; escalated requests are for SLT; exceptions beyond
``SltRequired`` wait for SLT when IT Support start them; every action is in the audit trail.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, time, timedelta
from pathlib import Path

from flask import Blueprint, abort, flash, redirect, render_template, request, send_file, url_for
from sqlalchemy import func, or_, select

from schoolgate.core import words
from schoolgate.portal.auth import authenticate
from schoolgate.portal.blueprints.staff_signin import after_password
from schoolgate.portal.context import (
    current_staff,
    db,
    now,
    safe_next,
    sign_in,
    sign_out,
    signed_in_staff,
    source_of_address,
    staff_required,
    state,
)
from schoolgate.portal.services import listing
from schoolgate.storage.exceptions import (
    ExceptionRequestError,
    add_exception,
    audit,
    exceptions_current,
    revoke_exception,
    validate_exception,
)
from schoolgate.storage.models import (
    OPEN_STATUSES,
    STATUSES,
    EventRow,
    ExceptionRow,
    PortalRequestRow,
    StaffRow,
)
from schoolgate.storage.signin import clear_login_failures, login_refusal, record_login_failure

staff_bp = Blueprint("staff", __name__, url_prefix="/staff")
it_bp = Blueprint("it", __name__, url_prefix="/it")
slt_bp = Blueprint("slt", __name__, url_prefix="/slt")

REVIEWERS = ("it_support", "network_manager", "slt")
IT = ("it_support", "network_manager")
SCOPE_CHOICES = ("user", "group", "role", "site", "everyone")
DURATIONS = {
    "lesson": "until the end of this lesson (or window)",
    "today": "until the end of today",
    "7d": "for a week",
    "28d": "for four weeks",
    "until": "until a date and time (below)",
    "permanent": "permanently (until revoked)",
}
QUEUE_PAGE_SIZE = 100  # requests and reports per page of the IT Support queue


# -- sign-in -----------------------------------------------------------------------------------


@staff_bp.route("/login", methods=["GET", "POST"])
def login():
    target = safe_next(request.values.get("next"), url_for("staff.home"))
    if request.method == "GET":
        expired = request.args.get("expired") == "1"
        return render_template("portal/login.html", next=target, expired=expired, error=None)
    username = request.form.get("username", "").strip().lower()[:200] or "(blank)"
    password = request.form.get("password", "")[:1000]
    at = now()
    where = {
        "username": username,
        "source": source_of_address(),
        "client_ip": request.remote_addr or "unknown",
    }
    limits = state().login_limits
    session_ = db()
    # Checked before the password: a refused attempt costs no hash, and says nothing of it.
    refusal = login_refusal(session_, **where, now=at, limits=limits)
    if refusal is not None:
        minutes = max(1, math.ceil((refusal.until - at).total_seconds() / 60))
        abort(429, description=f"{refusal.reason} Wait {minutes} minutes and try again.")
    row = authenticate(session_, username, password)
    came_from = f"from {where['client_ip']} ({where['source']})"
    if row is None:
        record_login_failure(session_, **where, now=at, limits=limits)
        audit(session_, username, "staff.login_failed", "portal", came_from)
        session_.commit()
        return render_template(
            "portal/login.html",
            next=target,
            expired=False,
            error="That user name and password do not match.",
        ), 401
    clear_login_failures(session_, username=username, source=where["source"])
    second_step = after_password(row, target)  # two-factor code (or set-up) still to come
    if second_step is not None:
        return second_step
    sign_in(row)
    audit(session_, row.username, "staff.login", "portal", came_from)
    session_.commit()
    return redirect(target, code=303)


@staff_bp.post("/logout")
def logout():
    staff = current_staff()
    if staff is not None:
        audit(db(), staff.username, "staff.logout", "portal", "")
    sign_out()
    db().commit()
    return redirect(url_for("staff.login"), code=303)


@staff_bp.get("/")
@staff_required()
def home():
    from schoolgate.core.subscriptions import list_warnings

    # The lists' health: what a network manager must act on (empty, unfetched, stale lists).
    return render_template("portal/staff_home.html", list_warnings=list_warnings(state().policy))


# -- shared: loading, checks, evidence ----------------------------------------------------------


def _load(request_id: int) -> PortalRequestRow:
    row = db().get(PortalRequestRow, request_id)
    if row is None:
        abort(404, description="No such request.")
    return row


def _not_own(row: PortalRequestRow, staff: StaffRow) -> None:
    if row.requester_user and row.requester_user.lower() == staff.username.lower():
        abort(403, description="You cannot decide your own request: another member of staff must.")


def _must_be(row: PortalRequestRow, *statuses: str) -> None:
    if row.status not in statuses:
        abort(
            400,
            description=f"This {row.kind} is {row.status.replace('_', ' ')}: "
            "that action is not possible now.",
        )


def _require_slt_for_escalated(row: PortalRequestRow, staff: StaffRow) -> None:
    if row.status in ("escalated", "awaiting_slt") and not staff.has_role("slt"):
        abort(403, description="This request is with SLT: only SLT can decide it now.")


def required_note(field: str, what: str) -> str:
    text = request.form.get(field, "").strip()
    if not text:
        abort(400, description=f"Give {what}.")
    return text[:4000]


def _touch(row: PortalRequestRow) -> None:
    row.updated_at = now()


def _notify_outcome(row: PortalRequestRow) -> None:
    state().notifier.notify(
        db(),
        audience="requester",
        user=row.requester_user,
        event=f"{row.kind}.{row.status}",
        ref=row.ref,
        subject=f"[schoolgate] Your {'request' if row.kind == 'access' else 'report'} "
        f"{row.ref}: {row.status}",
        body=f"{row.url}\n\n{row.outcome or ''}",
        link=url_for("public.status", ref=row.ref, token=row.token),
    )


def _evidence(row: PortalRequestRow) -> dict:
    session_ = db()
    event = None
    if row.event_ref:
        event = session_.scalar(select(EventRow).where(EventRow.ref == row.event_ref))
    if row.requester_user:
        who = EventRow.user == row.requester_user
    elif row.client_ip:
        who = EventRow.client_ip == row.client_ip
    else:
        return {"event": event, "blocks": [], "circumvention": []}
    since = row.created_at - timedelta(days=7)
    blocks = session_.scalars(
        select(EventRow)
        .where(who, EventRow.action == "block", EventRow.at >= since)
        .order_by(EventRow.at.desc())
        .limit(25)
    ).all()
    circumvention = session_.scalars(
        select(EventRow)
        .where(who, EventRow.kind.like("circumvention%"), EventRow.at >= since - timedelta(days=23))
        .order_by(EventRow.at.desc())
        .limit(25)
    ).all()
    return {"event": event, "blocks": blocks, "circumvention": circumvention}


# -- exceptions from a decision ------------------------------------------------------------------


def _ends(choice: str, until_text: str, site: str) -> datetime | None:
    policy = state().policy
    at = now()
    tz = policy.timetables[site].tz
    if choice == "lesson":
        return policy.window(site, at).end
    if choice == "today":
        day = at.astimezone(tz).date() + timedelta(days=1)
        return datetime.combine(day, time(0, 0), tzinfo=tz)
    if choice in ("7d", "28d"):
        return at + timedelta(days=int(choice[:-1]))
    if choice == "until":
        try:
            value = datetime.fromisoformat(until_text.strip())
        except ValueError:
            abort(400, description="Give the end as a date and time, e.g. 2026-12-18T15:30.")
        return value if value.tzinfo else value.replace(tzinfo=tz)
    if choice == "permanent":
        return None
    abort(400, description="Choose how long the exception lasts.")


def _proposal_from_form(row: PortalRequestRow) -> dict:
    """The exception described by the approve form, validated (400 with the reason if not)."""
    policy = state().policy
    scope = request.form.get("scope", "")
    if scope not in SCOPE_CHOICES:
        abort(400, description="Choose who the exception is for.")
    scope_value = request.form.get("scope_value", "").strip()[:200]
    target_kind = request.form.get("target_kind", "host")
    target = request.form.get("target", "").strip()[:500]
    if target_kind == "host" and "/" in target:  # "this site" of a page's address
        target = target.split("://", 1)[-1].split("/", 1)[0]
    site = (
        row.requester_site
        if row.requester_site in policy.timetables
        else (policy.resolver.default_site)
    )
    ends = _ends(request.form.get("duration", ""), request.form.get("until", ""), site)
    starts = now()
    try:
        validate_exception(
            policy,
            scope=scope,
            scope_value=scope_value,
            target_kind=target_kind,
            target=target,
            starts=starts,
            ends=ends,
        )
    except ExceptionRequestError as exc:
        abort(400, description=f"That exception is not possible: {exc}.")
    return {
        "scope": scope,
        "scope_value": scope_value,
        "target_kind": target_kind,
        "target": target,
        "starts": starts.isoformat(),
        "ends": ends.isoformat() if ends else None,
        "kind": "exception",
        "reason": request.form.get("note", "").strip()[:1000]
        or f"request {row.ref}: {row.message[:200]}",
    }


def _grant(row: PortalRequestRow, proposal: dict, by: str) -> ExceptionRow:
    try:
        exc = add_exception(
            db(),
            state().policy,
            scope=proposal["scope"],
            scope_value=proposal["scope_value"],
            target_kind=proposal["target_kind"],
            target=proposal["target"],
            starts=now(),
            ends=datetime.fromisoformat(proposal["ends"]) if proposal["ends"] else None,
            created_by=by,
            reason=proposal["reason"],
            kind=proposal["kind"],
        )
    except ExceptionRequestError as error:
        abort(400, description=f"That exception is not possible: {error}.")
    row.status = "approved"
    row.exception_id = exc.id
    row.decided_by = by
    row.decided_at = now()
    policy = state().policy
    site = row.requester_site if row.requester_site in policy.timetables else None
    tz = policy.timetables[site or policy.resolver.default_site].tz
    until = f"until {words.absolute(exc.ends, tz)}" if exc.ends else "with no end date"
    who = "everyone" if exc.scope == "everyone" else f"{exc.scope} {exc.scope_value}"
    row.outcome = f"Approved: {exc.target_kind} {exc.target} is open for {who} {until}."
    _touch(row)
    return exc


def _carry_out(row: PortalRequestRow, proposal: dict, by: str) -> str:
    """Do what a proposal says: an entry added to a category's list, or an exception. Returns
    what was done, for the audit trail and the flash message."""
    if proposal["kind"] != "categorise":
        exc = _grant(row, proposal, by)
        return f"exception #{exc.id}"
    policy = state().policy
    path = listing.add_to_list(policy, proposal, by=by, ref=row.ref, at=now())
    row.status = "actioned"
    row.category = proposal["category"]
    row.decided_by = by
    row.decided_at = now()
    row.outcome = "Thank you: the site has been added to the school's filter."
    _touch(row)
    return f"{proposal['target']} -> {proposal['category']} ({path.name})"


def _propose_or_grant(row: PortalRequestRow, staff: StaffRow, proposal: dict):
    """Grant now, or (beyond what IT Support may grant alone) hold it for SLT."""
    ends = datetime.fromisoformat(proposal["ends"]) if proposal["ends"] else None
    why_slt = None
    if not staff.has_role("slt"):
        why_slt = state().slt_required.reason(
            scope=proposal["scope"], ends=ends, now=now(), kind=proposal["kind"]
        )
    if why_slt:
        row.status = "awaiting_slt"
        row.proposal = json.dumps(proposal)
        row.proposed_by = staff.username
        _touch(row)
        audit(
            db(),
            staff.username,
            f"{'report' if row.kind == 'report' else 'request'}.propose",
            _subject(row),
            f"{why_slt}: {json.dumps(proposal)}",
        )
        state().notifier.notify(
            db(),
            audience="slt",
            event="request.awaiting_slt",
            ref=row.ref,
            subject=f"[schoolgate] SLT approval needed: {row.ref} {row.host}",
            body=f"{staff.username} proposes an exception that needs SLT approval "
            f"({why_slt}):\n{json.dumps(proposal, indent=2)}\n\nRequest: {row.url}\n"
            f"{row.message}",
            link=url_for("it.item", request_id=row.id),
        )
        flash(f"Sent to SLT for approval: {why_slt}.")
        return
    done = _carry_out(row, proposal, staff.username)
    action = "report.add_to_category" if proposal["kind"] == "categorise" else "request.approve"
    audit(db(), staff.username, action, _subject(row), done)
    _notify_outcome(row)
    flash(f"{'Added' if proposal['kind'] == 'categorise' else 'Approved'}: {done}.")


def _subject(row: PortalRequestRow) -> str:
    """How the audit trail names a request or report."""
    return f"{'report' if row.kind == 'report' else 'request'} {row.ref}"


def _done(row: PortalRequestRow):
    db().commit()
    state().sender.wake()
    return redirect(url_for("it.item", request_id=row.id), code=303)


# -- IT Support ----------------------------------------------------------------------------------


@it_bp.get("/")
@staff_required(*REVIEWERS)
def queue():
    kind = request.args.get("kind", "")
    status = request.args.get("status", "open")
    category = request.args.get("category", "")
    text = request.args.get("q", "").strip()[:200]
    conditions = []
    if kind in ("access", "report"):
        conditions.append(PortalRequestRow.kind == kind)
    if status == "open":
        conditions.append(PortalRequestRow.status.in_(OPEN_STATUSES))
    elif status in STATUSES:
        conditions.append(PortalRequestRow.status == status)
    if category:
        conditions.append(PortalRequestRow.category == category)
    if text:
        like = f"%{text}%"
        conditions.append(
            or_(
                PortalRequestRow.url.like(like),
                PortalRequestRow.requester_user.like(like),
                PortalRequestRow.ref.like(like),
                PortalRequestRow.requester_group.like(like),
            )
        )
    session_ = db()
    total = session_.scalar(select(func.count(PortalRequestRow.id)).where(*conditions)) or 0
    # A year of requests is far too many for one page (tens of megabytes of HTML): a page of
    # the oldest, with links onwards. Past the last page shows the last page.
    pages = max(1, -(-total // QUEUE_PAGE_SIZE))
    page = min(_page_number(request.args.get("page")), pages)
    rows = session_.scalars(
        select(PortalRequestRow)
        .where(*conditions)
        .order_by(PortalRequestRow.created_at, PortalRequestRow.id)
        .offset((page - 1) * QUEUE_PAGE_SIZE)
        .limit(QUEUE_PAGE_SIZE)
    ).all()
    filters = {"kind": kind, "status": status, "category": category, "q": text}
    # Links keep the filters as given, leaving out the empty ones (short, readable URLs).
    link_args = {k: v for k, v in filters.items() if v}
    return render_template(
        "portal/queue.html",
        rows=rows,
        filters=filters,
        statuses=STATUSES,
        categories=list(state().policy.categories),
        total=total,
        first=(page - 1) * QUEUE_PAGE_SIZE + 1 if rows else 0,
        page=page,
        pages=pages,
        previous_url=url_for("it.queue", **link_args, page=page - 1) if page > 1 else None,
        next_url=url_for("it.queue", **link_args, page=page + 1) if page < pages else None,
    )


def _page_number(text: str | None) -> int:
    try:
        return max(1, int(text or 1))
    except ValueError:
        return 1


@it_bp.get("/item/<int:request_id>")
@staff_required(*REVIEWERS)
def item(request_id: int):
    row = _load(request_id)
    policy = state().policy
    proposal = json.loads(row.proposal) if row.proposal else None
    exception = db().get(ExceptionRow, row.exception_id) if row.exception_id else None
    from schoolgate.core.pages import parse_page

    page = parse_page(row.url) if row.kind == "access" and row.url else None
    found = policy.platforms.lookup(row.host) if policy.platforms is not None else None
    platform = found.platform if found is not None and not found.static else None
    return render_template(
        "portal/item.html",
        row=row,
        page_target=page.text if page is not None else None,
        platform=platform,
        evidence=_evidence(row),
        proposal=proposal,
        exception=exception,
        durations=DURATIONS,
        scopes=SCOPE_CHOICES,
        categories=[c for c, s in policy.categories.items() if not s.locked],
        all_categories=list(policy.categories),
        own=bool(
            row.requester_user and row.requester_user.lower() == signed_in_staff().username.lower()
        ),
    )


@it_bp.get("/item/<int:request_id>/screenshot")
@staff_required(*REVIEWERS)
def screenshot(request_id: int):
    row = _load(request_id)
    if not row.screenshot_file or row.screenshot_type not in (
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
    ):
        abort(404, description="No screenshot.")
    path = state().upload_dir / Path(row.screenshot_file).name
    if not path.is_file():
        abort(404, description="The screenshot file is missing.")
    response = send_file(
        path,
        mimetype=row.screenshot_type,
        as_attachment=True,
        download_name=f"report-{row.ref}.{path.suffix.lstrip('.')}",
        max_age=0,
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    audit(db(), signed_in_staff().username, "report.screenshot_view", f"report {row.ref}", "")
    db().commit()
    return response


@it_bp.post("/item/<int:request_id>/approve")
@staff_required(*REVIEWERS)
def approve(request_id: int):
    staff = signed_in_staff()
    row = _load(request_id)
    _not_own(row, staff)
    if row.kind != "access":
        abort(
            400,
            description="Only an access request can be approved; for a report, add "
            "the site to a category or close it.",
        )
    _must_be(row, "open", "escalated")
    _require_slt_for_escalated(row, staff)
    _propose_or_grant(row, staff, _proposal_from_form(row))
    return _done(row)


@it_bp.post("/item/<int:request_id>/unlist")
@staff_required(*REVIEWERS)
def unlist(request_id: int):
    """Blocked by mistake: the request's own host, for everyone, permanently (SLT approve)."""
    staff = signed_in_staff()
    row = _load(request_id)
    _not_own(row, staff)
    if row.kind != "access":
        abort(400, description="Only an access request can be un-listed.")
    _must_be(row, "open", "escalated")
    _require_slt_for_escalated(row, staff)
    try:
        proposal = listing.unlist_proposal(
            state().policy,
            row_host=row.host,
            given_host=request.form.get("host", ""),
            ref=row.ref,
            note=request.form.get("note", "").strip(),
            at=now(),
        )
    except listing.ListingError as exc:
        abort(400, description=str(exc))
    _propose_or_grant(row, staff, proposal)
    return _done(row)


@it_bp.post("/item/<int:request_id>/reject")
@staff_required(*REVIEWERS)
def reject(request_id: int):
    staff = signed_in_staff()
    row = _load(request_id)
    _not_own(row, staff)
    _must_be(row, *OPEN_STATUSES)
    _require_slt_for_escalated(row, staff)
    reason = required_note("reason", "a reason (the requester sees it)")
    row.status = "rejected"
    row.decided_by = staff.username
    row.decided_at = now()
    row.outcome = f"Not approved: {reason}" if row.kind == "access" else f"Closed: {reason}"
    _touch(row)
    audit(db(), staff.username, f"{row.kind}.reject", f"{row.kind} {row.ref}", reason)
    _notify_outcome(row)
    flash("Done: the requester will see your reason.")
    return _done(row)


@it_bp.post("/item/<int:request_id>/escalate")
@staff_required(*IT)
def escalate(request_id: int):
    staff = signed_in_staff()
    row = _load(request_id)
    _not_own(row, staff)
    _must_be(row, "open")
    note = required_note("note", "a note for SLT")
    row.status = "escalated"
    row.escalated_by = staff.username
    row.escalation_note = note
    _touch(row)
    audit(db(), staff.username, f"{row.kind}.escalate", f"{row.kind} {row.ref}", note)
    state().notifier.notify(
        db(),
        audience="slt",
        event=f"{row.kind}.escalated",
        ref=row.ref,
        subject=f"[schoolgate] Escalated to SLT: {row.ref} {row.host}",
        body=f"{staff.username} asks SLT to decide:\n{note}\n\n{row.url}\n{row.message}",
        link=url_for("it.item", request_id=row.id),
    )
    flash("Escalated to SLT.")
    return _done(row)


@it_bp.post("/item/<int:request_id>/add-to-category")
@staff_required(*REVIEWERS)
def add_to_category(request_id: int):
    """A report's host (or a page on it) added to a category for everyone (SLT approve)."""
    staff = signed_in_staff()
    row = _load(request_id)
    _not_own(row, staff)
    if row.kind != "report":
        abort(400, description="Only a content report adds a site to a category.")
    _must_be(row, "open", "escalated")
    _require_slt_for_escalated(row, staff)
    try:
        proposal = listing.categorise_proposal(
            state().policy,
            row_host=row.host,
            category=request.form.get("category", ""),
            entry=request.form.get("entry", ""),
            ref=row.ref,
        )
    except listing.ListingError as exc:
        abort(400, description=str(exc))
    _propose_or_grant(row, staff, proposal)
    return _done(row)


# -- SLT -----------------------------------------------------------------------------------------


@slt_bp.get("/")
@staff_required("slt")
def review():
    rows = (
        db()
        .scalars(
            select(PortalRequestRow)
            .where(PortalRequestRow.status.in_(("escalated", "awaiting_slt")))
            .order_by(PortalRequestRow.created_at)
        )
        .all()
    )
    standing = exceptions_current(db(), now())
    return render_template("portal/slt.html", rows=rows, exceptions=standing)


@slt_bp.post("/item/<int:request_id>/approve-proposal")
@staff_required("slt")
def approve_proposal(request_id: int):
    staff = signed_in_staff()
    row = _load(request_id)
    _not_own(row, staff)
    _must_be(row, "awaiting_slt")
    if row.proposed_by and row.proposed_by.lower() == staff.username.lower():
        abort(
            403, description="You proposed this exception: another member of SLT must approve it."
        )
    proposal = json.loads(row.proposal or "{}")
    note = request.form.get("note", "").strip()[:1000]
    if note:
        proposal["reason"] = f"{proposal['reason']} (SLT: {note})"
    done = _carry_out(row, proposal, f"{row.proposed_by}, approved by {staff.username}")
    audit(
        db(),
        staff.username,
        f"{'report' if row.kind == 'report' else 'request'}.slt_approve",
        _subject(row),
        done + (f": {note}" if note else ""),
    )
    _notify_outcome(row)
    flash(f"Approved: {done}.")
    return _done(row)


@slt_bp.post("/exception/<int:exception_id>/revoke")
@staff_required("slt")
def revoke(exception_id: int):
    staff = signed_in_staff()
    reason = required_note("reason", "a reason")
    try:
        revoke_exception(db(), exception_id, by=staff.username, reason=reason)
    except ExceptionRequestError as exc:
        abort(400, description=str(exc))
    db().commit()
    flash(f"Exception #{exception_id} ended.")
    return redirect(url_for("slt.review"), code=303)


@slt_bp.post("/exception/<int:exception_id>/confirm")
@staff_required("slt")
def confirm(exception_id: int):
    staff = signed_in_staff()
    row = db().get(ExceptionRow, exception_id)
    if row is None or row.revoked_at is not None:
        abort(404, description="No such exception in force.")
    if row.created_by.split(",")[0].strip().lower() == staff.username.lower():
        abort(403, description="You made this exception: another member of SLT must confirm it.")
    note = request.form.get("reason", "").strip()[:1000]
    audit(db(), staff.username, f"{row.kind}.confirm", f"exception #{row.id}", note)
    db().commit()
    flash(f"Exception #{exception_id} confirmed.")
    return redirect(url_for("slt.review"), code=303)
