"""For staff: sign-in, the IT Support queue, SLT review and teachers' classroom overrides.

Rules every action keeps: a member of staff can never decide their own request, nor approve
an exception they proposed themselves; escalated requests are for SLT; exceptions beyond
``SltRequired`` wait for SLT when IT Support start them; every action is in the audit trail.
"""

from __future__ import annotations

import json
import re
import threading
from datetime import datetime, time, timedelta
from pathlib import Path

from flask import (
    Blueprint,
    abort,
    flash,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)
from sqlalchemy import func, or_, select

from schoolgate.bans_store import (
    BanAuditRow,
    BanError,
    BanRow,
    SupervisionRow,
    confirm_ban,
    lift_ban,
    status_of,
    to_state,
)
from schoolgate.core import words
from schoolgate.db import EventRow, ExceptionRow
from schoolgate.hosts import normalize_host
from schoolgate.portal.app import (
    current_staff,
    db,
    label,
    now,
    safe_next,
    sign_in,
    sign_out,
    staff_required,
    state,
)
from schoolgate.portal.auth import authenticate
from schoolgate.portal.blueprints.signin import after_password
from schoolgate.portal.models import OPEN_STATUSES, STATUSES, PortalRequestRow, StaffRow
from schoolgate.store import (
    ExceptionRequestError,
    add_exception,
    audit,
    exceptions_current,
    revoke_exception,
    validate_exception,
)

staff_bp = Blueprint("staff", __name__, url_prefix="/staff")
it_bp = Blueprint("it", __name__, url_prefix="/it")
slt_bp = Blueprint("slt", __name__, url_prefix="/slt")
teacher_bp = Blueprint("teacher", __name__, url_prefix="/teacher")

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
_ENTRY = re.compile(r"^[a-z0-9.\-]+(/[A-Za-z0-9._~\-/%]*)?$")
_CATEGORY_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")
_FILE_LOCK = threading.Lock()
QUEUE_PAGE_SIZE = 100  # requests and reports per page of the IT Support queue
BANS_RECENT = timedelta(days=7)  # the bans page also shows bans that ended this recently


# -- sign-in -----------------------------------------------------------------------------------


@staff_bp.route("/login", methods=["GET", "POST"])
def login():
    target = safe_next(request.values.get("next"), url_for("staff.home"))
    if request.method == "GET":
        expired = request.args.get("expired") == "1"
        return render_template("portal/login.html", next=target, expired=expired, error=None)
    username = request.form.get("username", "").strip().lower()[:200]
    password = request.form.get("password", "")[:1000]
    limiter = state().login_limiter
    keys = (f"login-ip:{request.remote_addr}", f"login-user:{username}")
    if not all(limiter.allowed(key) for key in keys):
        abort(429, description="Too many failed sign-ins. Wait 15 minutes and try again.")
    session_ = db()
    row = authenticate(session_, username, password)
    if row is None:
        for key in keys:
            limiter.hit(key)
        audit(
            session_,
            username or "(blank)",
            "staff.login_failed",
            "portal",
            f"from {request.remote_addr}",
        )
        session_.commit()
        return render_template(
            "portal/login.html",
            next=target,
            expired=False,
            error="That user name and password do not match.",
        ), 401
    limiter.reset(keys[1])
    second_step = after_password(row, target)  # two-factor code (or set-up) still to come
    if second_step is not None:
        return second_step
    sign_in(row)
    audit(session_, row.username, "staff.login", "portal", f"from {request.remote_addr}")
    session_.commit()
    return redirect(target, code=303)


@staff_bp.post("/logout")
def logout():
    staff = current_staff()
    if staff is not None:
        audit(db(), staff.username, "staff.logout", "portal", "")
        db().commit()
    sign_out()
    return redirect(url_for("staff.login"), code=303)


@staff_bp.get("/")
@staff_required()
def home():
    return render_template("portal/staff_home.html")


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


def _note(field: str, what: str) -> str:
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
            "request.propose",
            f"request {row.ref}",
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
    exc = _grant(row, proposal, staff.username)
    audit(db(), staff.username, "request.approve", f"request {row.ref}", f"exception #{exc.id}")
    _notify_outcome(row)
    flash(f"Approved: exception #{exc.id}.")


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
    return render_template(
        "portal/item.html",
        row=row,
        evidence=_evidence(row),
        proposal=proposal,
        exception=exception,
        durations=DURATIONS,
        scopes=SCOPE_CHOICES,
        categories=[c for c, s in policy.categories.items() if not s.locked],
        all_categories=list(policy.categories),
        own=bool(row.requester_user)
        and row.requester_user.lower() == current_staff().username.lower(),
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
    audit(db(), current_staff().username, "report.screenshot_view", f"report {row.ref}", "")
    db().commit()
    return response


@it_bp.post("/item/<int:request_id>/approve")
@staff_required(*REVIEWERS)
def approve(request_id: int):
    staff = current_staff()
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
    staff = current_staff()
    row = _load(request_id)
    _not_own(row, staff)
    if row.kind != "access":
        abort(400, description="Only an access request can be un-listed.")
    _must_be(row, "open", "escalated")
    _require_slt_for_escalated(row, staff)
    host = normalize_host(request.form.get("host", "") or row.host)
    proposal = {
        "scope": "everyone",
        "scope_value": "",
        "target_kind": "host",
        "target": host,
        "starts": now().isoformat(),
        "ends": None,
        "kind": "unlist",
        "reason": f"erroneous list entry (request {row.ref}): "
        + request.form.get("note", "").strip()[:500],
    }
    try:
        validate_exception(
            state().policy,
            scope="everyone",
            scope_value="",
            target_kind="host",
            target=host,
            starts=now(),
            ends=None,
        )
    except ExceptionRequestError as exc:
        abort(400, description=f"That cannot be un-listed: {exc}.")
    _propose_or_grant(row, staff, proposal)
    return _done(row)


@it_bp.post("/item/<int:request_id>/reject")
@staff_required(*REVIEWERS)
def reject(request_id: int):
    staff = current_staff()
    row = _load(request_id)
    _not_own(row, staff)
    _must_be(row, *OPEN_STATUSES)
    _require_slt_for_escalated(row, staff)
    reason = _note("reason", "a reason (the requester sees it)")
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
    staff = current_staff()
    row = _load(request_id)
    _not_own(row, staff)
    _must_be(row, "open")
    note = _note("note", "a note for SLT")
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


def local_list_path(category: str) -> Path:
    """``blocklists/local/<category>.txt`` next to the config file."""
    config = Path(state().policy.settings.config_path).resolve()
    return config.parent / "blocklists" / "local" / f"{category}.txt"


@it_bp.post("/item/<int:request_id>/add-to-category")
@staff_required(*IT)
def add_to_category(request_id: int):
    staff = current_staff()
    row = _load(request_id)
    _not_own(row, staff)
    if row.kind != "report":
        abort(400, description="Only a content report adds a site to a category.")
    _must_be(row, "open", "escalated")
    policy = state().policy
    category = request.form.get("category", "")
    if category not in policy.categories or not _CATEGORY_NAME.match(category):
        abort(400, description="Choose one of the configured categories.")
    entry = request.form.get("entry", "").strip().lower()
    entry = re.sub(r"^[a-z]+://", "", entry).rstrip("/")
    if not entry or not _ENTRY.match(entry) or "." not in entry.split("/", 1)[0]:
        abort(
            400,
            description="Give a host (example.com) or a host and path "
            "(example.com/page), with no spaces.",
        )
    path = local_list_path(category)
    stamp = now().isoformat(timespec="seconds")
    with _FILE_LOCK:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as handle:
            handle.write(f"# added by {staff.username} at {stamp} for report {row.ref}\n{entry}\n")
    row.status = "actioned"
    row.category = category
    row.decided_by = staff.username
    row.decided_at = now()
    row.outcome = "Thank you: the site has been added to the school's filter."
    _touch(row)
    audit(
        db(),
        staff.username,
        "report.add_to_category",
        f"report {row.ref}",
        f"{entry} -> {category} ({path.name})",
    )
    _notify_outcome(row)
    flash(f"Added {entry} to {label(category)} ({path}).")
    return _done(row)


# -- bans (IT Support and SLT) -------------------------------------------------------------------


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
def bans():
    session_ = db()
    at = now()
    rows = _bans_shown(at)
    ids = [r.id for r in rows]
    history: dict[int, list[BanAuditRow]] = {i: [] for i in ids}
    sessions: dict[int, list[SupervisionRow]] = {i: [] for i in ids}
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
    staff = current_staff()
    row = _load_ban(ban_id)
    reason = _note("reason", "a reason for lifting the ban")
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
    staff = current_staff()
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
    exc = _grant(row, proposal, f"{row.proposed_by}, approved by {staff.username}")
    audit(
        db(),
        staff.username,
        "request.slt_approve",
        f"request {row.ref}",
        f"exception #{exc.id}" + (f": {note}" if note else ""),
    )
    _notify_outcome(row)
    flash(f"Approved: exception #{exc.id}.")
    return _done(row)


@slt_bp.post("/exception/<int:exception_id>/revoke")
@staff_required("slt")
def revoke(exception_id: int):
    staff = current_staff()
    reason = _note("reason", "a reason")
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
    staff = current_staff()
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


@slt_bp.post("/bans/<int:ban_id>/confirm")
@staff_required("slt")
def confirm_ban_view(ban_id: int):
    staff = current_staff()
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


# -- teachers ------------------------------------------------------------------------------------


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
    staff = current_staff()
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
    staff = current_staff()
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
    staff = current_staff()
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
