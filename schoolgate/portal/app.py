"""The portal: access requests and content reports from block pages, the IT Support queue,
SLT review, and teachers' classroom overrides. A Flask app, built by :func:`create_app`.

The gateway mounts it at the portal host name (``portal.host``) with mitmproxy's
``asgiapp.WSGIApp``; it can also be served on its own port for staff. Who a requester is comes
from the ``identify`` callable (the gateway: client address and proxy user), never from a form.

Blueprints, one per audience: ``public`` (``/request``, ``/report``, ``/status/...``,
``/mine``), ``staff`` (``/staff/login``, ``/staff/logout``, ``/staff/``), ``it``
(``/it/...``: IT Support and network managers), ``slt`` (``/slt/...``) and ``teacher``
(``/teacher/...``). The portal leaves ``/``, ``/ca`` and the PAC file to the gateway's pages.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flask import (
    Flask,
    abort,
    render_template,
    request,
    session,
)
from flask.sessions import SecureCookieSessionInterface
from sqlalchemy.orm import sessionmaker

from schoolgate.core import words
from schoolgate.core.model import Identity
from schoolgate.core.policy import Policy
from schoolgate.jobs.notify import Notifier, OutboxSender, SmtpSettings
from schoolgate.portal.auth import RateLimiter
from schoolgate.portal.context import (
    PortalState,
    SltRequired,
    close_db,
    csrf_token,
    current_staff,
    label,
    now,
    school_name,
    state,
)
from schoolgate.storage.signin import (
    LoginLimits,
)

USER_HEADER_ENVIRON = "HTTP_X_SCHOOLGATE_USER"  # the gateway's X-Schoolgate-User header

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
}
# Over HTTPS only (a browser ignores it over HTTP, and over HTTPS with a certificate error).
HSTS = "max-age=31536000"


def _utcnow() -> datetime:
    return datetime.now(UTC)


def make_identify(
    policy_getter: Callable[[], Policy], *, trust_user_header: bool = True
) -> Callable[[dict], Identity]:
    """The usual ``identify``: REMOTE_ADDR and, behind the gateway, the ``X-Schoolgate-User``
    header it sets (after removing any the client sent). Standalone (not behind the gateway),
    pass ``trust_user_header=False``."""

    def identify(environ: dict) -> Identity:
        ip = environ.get("REMOTE_ADDR")
        user = (environ.get(USER_HEADER_ENVIRON) or "").strip() if trust_user_header else ""
        return policy_getter().identify(ip, user or None)

    return identify


def create_app(
    *,
    policy_getter: Callable[[], Policy],
    session_factory: sessionmaker,
    secret: bytes,
    data_dir: Path,
    identify: Callable[[dict], Identity],
    smtp: SmtpSettings | None = None,
    webhook_url: str | None = None,
    clock: Callable[[], datetime] = _utcnow,
    slt_required: SltRequired | dict | None = None,
    base_url: str | None = None,
    start_sender: bool = True,
    session_idle_minutes: int = 30,
    session_max_hours: int = 10,
    max_upload_bytes: int = 5 * 1024 * 1024,
    submit_limit: tuple[int, float] = (10, 600.0),
    login_limit: tuple[int, float] = (5, 900.0),
    monotonic: Callable[[], float] = time.monotonic,
    admin: bool = False,
    live_streams: int = 2,
) -> Flask:
    """The portal app. ``secret`` is the gateway's secret (``load_or_create_secret``): it
    verifies block-page references and (derived) signs the session cookie.

    ``slt_required``: a :class:`SltRequired` or the config mapping (``{scopes: [...],
    longer_than_days: 91}``). ``base_url`` for links in notifications (default
    ``http://<portal host>``). ``submit_limit``: (count, seconds) per person, in memory.
    ``login_limit``: (count, seconds) of failed sign-ins per account from one kind of source
    address, and per address, kept in the database (:mod:`schoolgate.storage.signin`).
    """
    if isinstance(slt_required, dict) or slt_required is None:
        slt_required = SltRequired.from_config(slt_required)
    data_dir = Path(data_dir)
    app = Flask(__name__)
    app.secret_key = hmac.new(secret, b"schoolgate portal session", "sha256").digest()
    app.session_interface = PortalSessionInterface()
    app.config.update(
        SESSION_COOKIE_NAME="schoolgate_portal",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=session_max_hours),
        MAX_CONTENT_LENGTH=max_upload_bytes + 64 * 1024,
        TEMPLATES_AUTO_RELOAD=False,
    )
    if base_url is None:
        base_url = f"http://{policy_getter().settings.portal_host}"
    notifier = Notifier(smtp=smtp, webhook_url=webhook_url, clock=clock, base_url=base_url)
    sender = OutboxSender(session_factory, smtp, clock=clock)
    state = PortalState(
        policy_getter=policy_getter,
        sessions=session_factory,
        secret=secret,
        data_dir=data_dir,
        identify=identify,
        clock=clock,
        notifier=notifier,
        sender=sender,
        slt_required=slt_required,
        idle_timeout=timedelta(minutes=session_idle_minutes),
        max_session=timedelta(hours=session_max_hours),
        max_upload_bytes=max_upload_bytes,
        submit_limiter=RateLimiter(*submit_limit, clock=monotonic),
        login_limits=LoginLimits(
            per_account=login_limit[0],
            per_address=login_limit[0],
            window=timedelta(seconds=login_limit[1]),
        ),
        admin=admin,
        live_streams=live_streams,
    )
    app.extensions["schoolgate_portal"] = state

    import schoolgate.portal.blueprints.public as views_public
    import schoolgate.portal.blueprints.staff as views_staff
    from schoolgate.portal.blueprints import (  # noqa: F401 - bans adds routes
        bans,
        console,
        dsl,
        signin,
        staff_signin,
        supervision,
        teacher,
    )

    app.register_blueprint(views_public.bp)
    app.register_blueprint(views_staff.staff_bp)
    app.register_blueprint(staff_signin.bp)
    app.register_blueprint(console.bp)
    app.register_blueprint(supervision.bp)
    app.register_blueprint(dsl.bp)  # the designated safeguarding lead's pages
    app.register_blueprint(views_staff.it_bp)
    app.register_blueprint(views_staff.slt_bp)
    app.register_blueprint(teacher.teacher_bp)
    app.register_blueprint(signin.bp)  # devices that must sign in to the network
    app.register_blueprint(signin.it_signins_bp)

    app.before_request(_check_csrf)
    app.after_request(_security_headers)
    app.teardown_appcontext(close_db)
    app.context_processor(_template_globals)
    app.jinja_env.filters["local"] = _local_time
    app.register_error_handler(400, _error_page)
    app.register_error_handler(403, _error_page)
    app.register_error_handler(404, _error_page)
    app.register_error_handler(413, _error_page)
    app.register_error_handler(429, _error_page)

    if start_sender and (smtp is not None or webhook_url):
        sender.start()
    return app


def _check_csrf() -> None:
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    expected = session.get("csrf")
    given = request.form.get("csrf_token", "")
    if not expected or not given or not hmac.compare_digest(expected, given):
        abort(
            400,
            description="This form has expired or did not come from this site. "
            "Go back, reload the page and try again.",
        )


def _security_headers(response):
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.is_secure:
        response.headers.setdefault("Strict-Transport-Security", HSTS)
    return response


class PortalSessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie, ``Secure`` when the request came over HTTPS (through the
    gateway at ``https://<portal host>``) and not over plain HTTP, where a browser would
    drop a ``Secure`` cookie and no form could be sent."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure


def _error_page(error):
    titles = {
        400: "Cannot do that",
        403: "Not allowed",
        404: "Not found",
        413: "Too large",
        429: "Too many attempts",
    }
    code = getattr(error, "code", 500) or 500
    return (
        render_template(
            "portal/message.html",
            title=titles.get(code, "Error"),
            message=getattr(error, "description", "") or "",
        ),
        code,
    )


def _local_time(value: datetime | None, fmt: str | None = None) -> str:
    """A time in words in the school's zone ("today at 15:10"); with seconds when ``fmt``
    asks for them (evidence)."""
    if value is None:
        return "no end"
    policy = state().policy
    tz = policy.timetables[policy.resolver.default_site].tz
    return words.moment(value, now(), tz, seconds=bool(fmt and "%S" in fmt))


def _template_globals() -> dict[str, Any]:
    return {
        "csrf_token": csrf_token,
        "staff": current_staff(),
        "label": label,
        "school": school_name(),
    }
