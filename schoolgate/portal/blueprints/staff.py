"""For staff: sign-in, the IT Support queue and SLT review.

The pages parse the forms and show the outcome; the workflow itself (who may decide what, the
exceptions granted, the audit trail and the notifications) is
:mod:`schoolgate.portal.services.requests`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)
from werkzeug.exceptions import BadRequest, Forbidden, HTTPException, NotFound

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
from schoolgate.portal.services.requests import (
    DURATIONS,
    SCOPE_CHOICES,
    RequestError,
    Workflow,
    queue_page,
)
from schoolgate.storage.exceptions import audit
from schoolgate.storage.models import OPEN_STATUSES, STATUSES
from schoolgate.storage.signin import clear_login_failures, login_refusal, record_login_failure

staff_bp = Blueprint("staff", __name__, url_prefix="/staff")
it_bp = Blueprint("it", __name__, url_prefix="/it")
slt_bp = Blueprint("slt", __name__, url_prefix="/slt")

REVIEWERS = ("it_support", "network_manager", "slt")
IT = ("it_support", "network_manager")


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


# -- shared: the workflow, refusals, notes ------------------------------------------------------


def _workflow() -> Workflow:
    """The request workflow on this request's session, clock and policy."""
    portal = state()
    return Workflow(
        session=db(),
        policy=portal.policy,
        now=now(),
        notifier=portal.notifier,
        slt_required=portal.slt_required,
        item_link=lambda row: url_for("it.item", request_id=row.id),
        status_link=lambda row: url_for("public.status", ref=row.ref, token=row.token),
    )


REFUSALS: dict[int, type[HTTPException]] = {400: BadRequest, 403: Forbidden, 404: NotFound}


def _refused(error: RequestError):
    """A refused action as the portal's error page, with its status."""
    return current_app.handle_http_exception(REFUSALS[error.status](description=str(error)))


it_bp.register_error_handler(RequestError, _refused)
slt_bp.register_error_handler(RequestError, _refused)


def required_note(field: str, what: str) -> str:
    text = request.form.get(field, "").strip()
    if not text:
        abort(400, description=f"Give {what}.")
    return text[:4000]


def _done(row):
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
    found = queue_page(db(), kind=kind, status=status, category=category, text=text,
                       page=_page_number(request.args.get("page")))  # fmt: skip
    filters = {"kind": kind, "status": status, "category": category, "q": text}
    # Links keep the filters as given, leaving out the empty ones (short, readable URLs).
    link_args = {k: v for k, v in filters.items() if v}
    page, pages = found.page, found.pages
    return render_template(
        "portal/queue.html",
        rows=found.rows,
        filters=filters,
        statuses=STATUSES,
        categories=list(state().policy.categories),
        total=found.total,
        first=found.first,
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
    workflow = _workflow()
    row = workflow.load(request_id)
    policy = state().policy
    proposal = json.loads(row.proposal) if row.proposal else None
    from schoolgate.core.pages import parse_page

    page = parse_page(row.url) if row.kind == "access" and row.url else None
    found = policy.platforms.lookup(row.host) if policy.platforms is not None else None
    platform = found.platform if found is not None and not found.static else None
    return render_template(
        "portal/item.html",
        row=row,
        page_target=page.text if page is not None else None,
        platform=platform,
        evidence=workflow.evidence(row),
        proposal=proposal,
        exception=workflow.exception_of(row),
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
    workflow = _workflow()
    row = workflow.load(request_id)
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
    workflow.screenshot_viewed(row, signed_in_staff())
    return response


@it_bp.post("/item/<int:request_id>/approve")
@staff_required(*REVIEWERS)
def approve(request_id: int):
    staff = signed_in_staff()
    workflow = _workflow()
    row = workflow.load(request_id)
    workflow.check_decidable(
        row,
        staff,
        "open",
        "escalated",
        kind="access",
        other_kind="Only an access request can be approved; for a report, add "
        "the site to a category or close it.",
    )
    form = request.form
    proposal = workflow.exception_proposal(
        row,
        scope=form.get("scope", ""),
        scope_value=form.get("scope_value", ""),
        target_kind=form.get("target_kind", "host"),
        target=form.get("target", ""),
        duration=form.get("duration", ""),
        until=form.get("until", ""),
        note=form.get("note", ""),
    )
    flash(workflow.propose_or_grant(row, staff, proposal))
    return _done(row)


@it_bp.post("/item/<int:request_id>/unlist")
@staff_required(*REVIEWERS)
def unlist(request_id: int):
    """Blocked by mistake: the request's own host, for everyone, permanently (SLT approve)."""
    staff = signed_in_staff()
    workflow = _workflow()
    row = workflow.load(request_id)
    workflow.check_decidable(
        row,
        staff,
        "open",
        "escalated",
        kind="access",
        other_kind="Only an access request can be un-listed.",
    )
    try:
        proposal = listing.unlist_proposal(
            state().policy,
            row_host=row.host,
            given_host=request.form.get("host", ""),
            ref=row.ref,
            note=request.form.get("note", "").strip(),
            at=workflow.now,
        )
    except listing.ListingError as exc:
        abort(400, description=str(exc))
    flash(workflow.propose_or_grant(row, staff, proposal))
    return _done(row)


@it_bp.post("/item/<int:request_id>/reject")
@staff_required(*REVIEWERS)
def reject(request_id: int):
    staff = signed_in_staff()
    workflow = _workflow()
    row = workflow.load(request_id)
    workflow.check_decidable(row, staff, *OPEN_STATUSES)
    workflow.reject(row, staff, required_note("reason", "a reason (the requester sees it)"))
    flash("Done: the requester will see your reason.")
    return _done(row)


@it_bp.post("/item/<int:request_id>/escalate")
@staff_required(*IT)
def escalate(request_id: int):
    staff = signed_in_staff()
    workflow = _workflow()
    row = workflow.load(request_id)
    workflow.check_decidable(row, staff, "open")
    workflow.escalate(row, staff, required_note("note", "a note for SLT"))
    flash("Escalated to SLT.")
    return _done(row)


@it_bp.post("/item/<int:request_id>/add-to-category")
@staff_required(*REVIEWERS)
def add_to_category(request_id: int):
    """A report's host (or a page on it) added to a category for everyone (SLT approve)."""
    staff = signed_in_staff()
    workflow = _workflow()
    row = workflow.load(request_id)
    workflow.check_decidable(
        row,
        staff,
        "open",
        "escalated",
        kind="report",
        other_kind="Only a content report adds a site to a category.",
    )
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
    flash(workflow.propose_or_grant(row, staff, proposal))
    return _done(row)


# -- SLT -----------------------------------------------------------------------------------------


@slt_bp.get("/")
@staff_required("slt")
def review():
    rows, standing = _workflow().for_slt()
    return render_template("portal/slt.html", rows=rows, exceptions=standing)


@slt_bp.post("/item/<int:request_id>/approve-proposal")
@staff_required("slt")
def approve_proposal(request_id: int):
    workflow = _workflow()
    row = workflow.load(request_id)
    note = request.form.get("note", "").strip()[:1000]
    done = workflow.approve_proposal(row, signed_in_staff(), note)
    flash(f"Approved: {done}.")
    return _done(row)


@slt_bp.post("/exception/<int:exception_id>/revoke")
@staff_required("slt")
def revoke(exception_id: int):
    staff = signed_in_staff()
    reason = required_note("reason", "a reason")
    _workflow().revoke(exception_id, staff, reason)
    flash(f"Exception #{exception_id} ended.")
    return redirect(url_for("slt.review"), code=303)


@slt_bp.post("/exception/<int:exception_id>/confirm")
@staff_required("slt")
def confirm(exception_id: int):
    note = request.form.get("reason", "").strip()[:1000]
    _workflow().confirm(exception_id, signed_in_staff(), note)
    flash(f"Exception #{exception_id} confirmed.")
    return redirect(url_for("slt.review"), code=303)
