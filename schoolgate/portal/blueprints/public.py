"""For everyone, from the block page: request access, report content, see the outcome."""

from __future__ import annotations

import hmac
import os
import re
import secrets
from urllib.parse import urlsplit

from flask import Blueprint, abort, redirect, render_template, request, url_for
from sqlalchemy import select

from schoolgate.core.hosts import normalize_host
from schoolgate.core.model import Identity
from schoolgate.gateway.blockpage import verify_ref
from schoolgate.portal.context import IMAGE_EXTENSIONS, IMAGE_TYPES, db, now, state
from schoolgate.storage.exceptions import audit
from schoolgate.storage.models import EventRow, PortalRequestRow

bp = Blueprint("public", __name__)

PURPOSES = {
    "curriculum": "I need it for a lesson or coursework (curriculum)",
    "erroneous": "It is blocked by mistake (it is not what the category says)",
    "other": "Something else (explain below)",
}
REF_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
MAX_URL = 2000
_HOST = re.compile(r"[a-z0-9_\-]+(\.[a-z0-9_\-]+)+")
MAX_MESSAGE = 4000


def new_ref(kind: str) -> str:
    prefix = "A" if kind == "access" else "R"
    return prefix + "-" + "".join(secrets.choice(REF_ALPHABET) for _ in range(8))


def _clean_url(text: str) -> tuple[str, str, str]:
    """(url, host, path) for something typed or carried in a link; 400 if it is no web URL."""
    text = (text or "").strip()
    if len(text) > MAX_URL:
        abort(400, description="That address is too long.")
    if text and "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    host = normalize_host(parts.hostname or "") if parts.scheme in ("http", "https") else ""
    if not host or not (_HOST.fullmatch(host) or ":" in host):
        abort(
            400, description="Give the address (URL) of the web page, e.g. https://example.com/page"
        )
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return text, host, path


def _requester() -> Identity:
    return state().identify(request.environ)


def _limit(identity: Identity) -> None:
    key = f"submit:{identity.user or identity.client_ip or 'unknown'}"
    if not state().submit_limiter.hit(key):
        abort(
            429,
            description="You have sent a lot of requests in a short time. "
            "Please wait a few minutes and try again.",
        )


def _logged_event(signed_ref: str | None) -> tuple[str | None, EventRow | None]:
    ref = verify_ref(state().secret, signed_ref)
    if ref is None:
        return None, None
    return ref, db().scalar(select(EventRow).where(EventRow.ref == ref))


def _status_link(row: PortalRequestRow) -> str:
    return url_for("public.status", ref=row.ref, token=row.token)


def _new_row(kind: str, identity: Identity, url: str, host: str) -> PortalRequestRow:
    at = now()
    return PortalRequestRow(
        ref=new_ref(kind),
        token=secrets.token_urlsafe(24),
        kind=kind,
        status="open",
        created_at=at,
        updated_at=at,
        requester_user=identity.user,
        requester_role=identity.role,
        requester_group=identity.group,
        requester_site=identity.site,
        client_ip=identity.client_ip,
        url=url,
        host=host,
        purpose="",
        message="",
    )


def _who(row: PortalRequestRow) -> str:
    return row.requester_user or f"{row.requester_role} at {row.client_ip or 'unknown address'}"


# -- request access ----------------------------------------------------------------------------


def wants_choices(url: str) -> dict[str, str]:
    """What a requester may ask to have opened, narrowest first: this page (when the address
    names one), then the whole site, or the whole platform when the site is one's."""
    from schoolgate.core.pages import parse_page

    choices: dict[str, str] = {}
    page = parse_page(url) if url else None
    if page is not None:
        choices["page"] = f"Only this page ({page.text} and what it shows)"
    try:
        host = normalize_host(urlsplit(url if "://" in url else "http://" + url).hostname or "")
    except ValueError:
        host = ""
    platforms = state().policy.platforms
    found = platforms.lookup(host) if platforms is not None and host else None
    if found is not None and not found.static:
        choices["site"] = f"All of {found.platform.name}"
    else:
        choices["site"] = f"The whole site ({host})" if host else "The whole site"
    return choices


@bp.get("/request")
def request_form():
    signed = request.args.get("ref", "")[:200]
    event_ref, event = _logged_event(signed)
    url = event.url if event is not None and event.url else request.args.get("url", "")[:MAX_URL]
    category = event.category if event is not None else request.args.get("category", "")[:100]
    return render_template(
        "portal/request.html",
        url=url,
        category=category,
        signed_ref=signed if event_ref else "",
        event_ref=event_ref,
        purposes=PURPOSES,
        wants=wants_choices(url),
        # "Report a problem with this block" on the block page comes here as "erroneous"
        form={"purpose": purpose} if (purpose := request.args.get("purpose")) in PURPOSES else {},
    )


@bp.post("/request")
def request_submit():
    identity = _requester()
    policy = state().policy
    signed = request.form.get("ref", "")[:200]
    event_ref, event = _logged_event(signed)
    # The logged decision is the evidence; the form's URL is only used when there is none.
    url, host, path = _clean_url(
        event.url if event is not None and event.url else request.form.get("url", "")
    )
    purpose = request.form.get("purpose", "")
    message = request.form.get("message", "").strip()
    wants = wants_choices(url)
    wanted = request.form.get("wants") or next(iter(wants))
    errors = []
    if wanted not in wants:
        errors.append("Choose what you need opened.")
    if purpose not in PURPOSES:
        errors.append("Choose why you need the page.")
    if not message:
        errors.append("Say what you need the page for.")
    if len(message) > MAX_MESSAGE:
        errors.append(f"Keep the explanation under {MAX_MESSAGE} characters.")
    if policy.locked_matcher is not None and policy.locked_matcher.lookup(host, path):
        abort(
            400,
            description="This site is in a category that is blocked for everyone at all "
            "times; no one can open it. If you think that is a mistake, speak to IT Support.",
        )
    if errors:
        return render_template(
            "portal/request.html",
            url=url,
            category=request.form.get("category", ""),
            signed_ref=signed if event_ref else "",
            event_ref=event_ref,
            purposes=PURPOSES,
            wants=wants,
            form=request.form,
            errors=errors,
        ), 400
    _limit(identity)
    match = policy.matcher.lookup(host, path)
    category = match.category if match is not None and match.category != "allowlist" else None
    if event is not None and event.category:
        category = event.category
    row = _new_row("access", identity, url, host)
    row.category = category
    row.event_ref = event_ref
    row.purpose = purpose
    row.wants = wanted
    row.message = message
    session = db()
    session.add(row)
    session.flush()
    audit(session, _who(row), "request.create", f"request {row.ref}", f"{url} ({purpose})")
    state().notifier.notify(
        session,
        audience="it_support",
        event="request.new",
        ref=row.ref,
        subject=f"[schoolgate] Access request {row.ref}: {host}",
        body=(
            f"{_who(row)} ({row.requester_role}"
            + (f", {row.requester_group}" if row.requester_group else "")
            + f") asks for access to\n{url}\n({wants[wanted]})\ncategory: {category or 'none'}\n"
            f"why: {PURPOSES[purpose]}\n\n{message}"
        ),
        link=url_for("it.item", request_id=row.id),
    )
    session.commit()
    state().sender.wake()
    return redirect(_status_link(row), code=303)


# -- report content ----------------------------------------------------------------------------


def _save_screenshot(upload) -> tuple[str, str] | None:
    """Store an uploaded screenshot; (file name, content type) or None if none was sent."""
    if upload is None or not upload.filename:
        return None
    limit = state().max_upload_bytes
    data = upload.stream.read(limit + 1)
    if len(data) > limit:
        abort(413, description=f"The screenshot is too large (at most {limit // 1024 // 1024} MB).")
    kind = None
    for content_type, magics in IMAGE_TYPES.items():
        if any(data.startswith(magic) for magic in magics):
            if content_type == "image/webp" and data[8:12] != b"WEBP":
                continue
            kind = content_type
            break
    if kind is None:
        abort(400, description="The screenshot must be a PNG, JPEG, GIF or WebP image.")
    folder = state().upload_dir
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{secrets.token_hex(16)}.{IMAGE_EXTENSIONS[kind]}"
    fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return name, kind


@bp.get("/report")
def report_form():
    return render_template(
        "portal/report.html",
        url=request.args.get("url", "")[:MAX_URL],
        signed_ref=request.args.get("ref", "")[:200],
        form={},
    )


@bp.post("/report")
def report_submit():
    identity = _requester()
    signed = request.form.get("ref", "")[:200]
    event_ref, _event = _logged_event(signed)
    url, host, _path = _clean_url(request.form.get("url", ""))
    message = request.form.get("message", "").strip()
    if not message or len(message) > MAX_MESSAGE:
        return render_template(
            "portal/report.html",
            url=url,
            signed_ref=signed,
            form=request.form,
            errors=["Say what is wrong with the page (at most 4000 characters)."],
        ), 400
    _limit(identity)
    screenshot = _save_screenshot(request.files.get("screenshot"))
    row = _new_row("report", identity, url, host)
    row.event_ref = event_ref
    row.message = message
    if screenshot:
        row.screenshot_file, row.screenshot_type = screenshot
    session = db()
    session.add(row)
    session.flush()
    audit(session, _who(row), "report.create", f"report {row.ref}", url)
    state().notifier.notify(
        session,
        audience="it_support",
        event="report.new",
        ref=row.ref,
        subject=f"[schoolgate] Content report {row.ref}: {host}",
        body=f"{_who(row)} reports\n{url}\nat {row.created_at.isoformat()}\n\n{message}"
        + ("\n\n(with a screenshot)" if screenshot else ""),
        link=url_for("it.item", request_id=row.id),
    )
    if _esafety_hears_of_reports():
        # Inappropriate content that got through is a safeguarding matter too (the DSL).
        state().notifier.notify(
            session,
            audience="esafety",
            event="report.new",
            ref=row.ref,
            subject=f"[schoolgate] Content report {row.ref}: {host} (for the e-safety team)",
            body=f"{_who(row)} reports inappropriate content that was not blocked:\n{url}\n"
            f"at {row.created_at.isoformat()}\n\n{message}"
            + ("\n\n(with a screenshot)" if screenshot else "")
            + "\n\nIT Support have been told and will block the site if it should be.",
            link=url_for("it.item", request_id=row.id),
        )
    session.commit()
    state().sender.wake()
    return redirect(_status_link(row), code=303)


def _esafety_hears_of_reports() -> bool:
    """``alerts.content_reports`` (default true: when in doubt, the DSL is told)."""
    from schoolgate.jobs.alerts import alerts_of

    return alerts_of(state().policy).content_reports


# -- the requester's view ----------------------------------------------------------------------


@bp.get("/status/<ref>/<token>")
def status(ref: str, token: str):
    row = db().scalar(select(PortalRequestRow).where(PortalRequestRow.ref == ref[:20]))
    if row is None or not hmac.compare_digest(row.token, token[:64]):
        abort(404, description="There is no request with that reference.")
    return render_template("portal/status.html", row=row)


@bp.get("/mine")
def mine():
    identity = _requester()
    rows = []
    if identity.user:
        rows = (
            db()
            .scalars(
                select(PortalRequestRow)
                .where(PortalRequestRow.requester_user == identity.user)
                .order_by(PortalRequestRow.created_at.desc())
                .limit(50)
            )
            .all()
        )
    return render_template("portal/mine.html", rows=rows, identity=identity)
