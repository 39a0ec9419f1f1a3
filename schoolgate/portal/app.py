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
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import wraps
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Flask,
    abort,
    current_app,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.core import words
from schoolgate.model import Identity
from schoolgate.policy import Policy
from schoolgate.portal.auth import RateLimiter, password_stamp
from schoolgate.portal.models import StaffRow
from schoolgate.portal.notify import Notifier, OutboxSender, SmtpSettings
from schoolgate.storage.signin import (
    LoginLimits,
    end_staff_session,
    find_staff_session,
    start_staff_session,
)

USER_HEADER_ENVIRON = "HTTP_X_SCHOOLGATE_USER"  # the gateway's X-Schoolgate-User header

# Screenshots: the type is decided from the file's first bytes, never from the browser.
IMAGE_TYPES: dict[str, tuple[bytes, ...]] = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),  # and "WEBP" at offset 8, checked below
}
IMAGE_EXTENSIONS = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/gif": "gif",
    "image/webp": "webp",
}

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
# A session's last-seen time is written at most this often (a write per page is not needed).
SEEN_STEP = timedelta(seconds=15)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class SltRequired:
    """Which exceptions need SLT approval even when IT Support grant them.

    ``scopes``: exceptions for a whole role, site or everyone; ``longer_than_days``: longer
    than this (and permanent ones); None for no limit. Whatever they say, un-listing a site
    (a permanent host exception for everyone, kind ``unlist``) and adding a site to a category
    (kind ``categorise``: it changes what everyone may reach) always need SLT.
    """

    scopes: tuple[str, ...] = ("role", "site", "everyone")
    longer_than_days: int | None = 91

    def reason(self, *, scope: str, ends: datetime | None, now: datetime, kind: str) -> str | None:
        """Why SLT must approve this exception, or None if IT Support may grant it."""
        if kind in ALWAYS_SLT:
            return ALWAYS_SLT[kind]
        if scope in self.scopes:
            return f"an exception for {scope} needs SLT approval"
        if self.longer_than_days is not None:
            if ends is None:
                return "a permanent exception needs SLT approval"
            if ends - now > timedelta(days=self.longer_than_days):
                return f"an exception longer than {self.longer_than_days} days needs SLT approval"
        return None

    @classmethod
    def from_config(cls, section: dict[str, Any] | None) -> SltRequired:
        if not section:
            return cls()
        # ``unlist`` may still be in a config: un-listing needs SLT whatever it says.
        return cls(
            scopes=tuple(section.get("scopes", cls.scopes)),
            longer_than_days=section.get("longer_than_days", cls.longer_than_days),
        )


ALWAYS_SLT = {
    "unlist": "un-listing a site for everyone needs SLT approval",
    "categorise": "adding a site to a category changes it for everyone: it needs SLT approval",
}


@dataclass
class PortalState:
    """What the views share (``current_app.extensions["schoolgate_portal"]``)."""

    policy_getter: Callable[[], Policy]
    sessions: sessionmaker
    secret: bytes
    data_dir: Path
    identify: Callable[[dict], Identity]
    clock: Callable[[], datetime]
    notifier: Notifier
    sender: OutboxSender
    slt_required: SltRequired
    idle_timeout: timedelta
    max_session: timedelta
    max_upload_bytes: int
    submit_limiter: RateLimiter
    login_limits: LoginLimits
    # Served on the portal's own port (not through the proxy, which buffers every answer):
    # the live view may stream (server-sent events) there.
    admin: bool = False
    # Live streams open at once in this process: each holds one of the server's threads for
    # up to a minute, so fewer than the server has (the rest serve every other page).
    live_streams: int = 2
    upload_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.upload_dir = self.data_dir / "portal_uploads"

    @property
    def policy(self) -> Policy:
        return self.policy_getter()


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

    from schoolgate.portal import views_public, views_staff
    from schoolgate.portal.blueprints import (  # noqa: F401 - bans adds routes
        bans,
        console,
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
    app.register_blueprint(views_staff.it_bp)
    app.register_blueprint(views_staff.slt_bp)
    app.register_blueprint(teacher.teacher_bp)
    app.register_blueprint(signin.bp)  # devices that must sign in to the network
    app.register_blueprint(signin.it_signins_bp)

    app.before_request(_check_csrf)
    app.after_request(_security_headers)
    app.teardown_appcontext(_close_db)
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


# -- helpers the views share -------------------------------------------------------------------


def state() -> PortalState:
    return current_app.extensions["schoolgate_portal"]


def db() -> Session:
    """The request's database session (closed at the end of the request)."""
    if "db" not in g:
        g.db = state().sessions()
    return g.db


def _close_db(_exc: BaseException | None) -> None:
    session_ = g.pop("db", None)
    if session_ is not None:
        session_.close()


def now() -> datetime:
    return state().clock()


def csrf_token() -> str:
    token = session.get("csrf")
    if not token:
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


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


def school_name() -> str:
    """The school's name (``school_name`` in the config), or "" when it is not set."""
    return words.wording_of(state().policy).school_name


def label(name: str | None) -> str:
    return words.plain(name)


def safe_next(target: str | None, default: str) -> str:
    """Only a path on this site (no ``//host`` or ``scheme:``) to go back to after sign-in."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    parts = urlsplit(target)
    return default if parts.scheme or parts.netloc else target


# -- staff sessions ----------------------------------------------------------------------------


def sign_in(row: StaffRow) -> None:
    """A new session on the server for ``row`` (the caller commits), and a new cookie."""
    session.clear()
    session.permanent = True
    token = start_staff_session(db(), staff_id=row.id, client_ip=request.remote_addr, now=now())
    session.update(sid=token, stamp=password_stamp(row), csrf=secrets.token_urlsafe(32))


def sign_out() -> None:
    """End the session on the server (a copy of the cookie stops working; the caller
    commits) and forget the cookie."""
    token = session.get("sid")
    if token:
        end_staff_session(db(), token, now=now(), reason="signed out")
    session.clear()


def current_staff() -> StaffRow | None:
    """The signed-in member of staff, or None (also when the session expired or was ended:
    ``g.expired``). The session is the server's row, not what the cookie says."""
    if "staff" in g:
        return g.staff
    g.staff = None
    token = session.get("sid")
    if not token:
        return None
    st = state()
    session_ = db()
    at = now()
    row = find_staff_session(session_, token)
    staff = session_.get(StaffRow, row.staff_id) if row is not None else None
    ended = None
    if row is None:
        ended = "ended"
    elif at - row.seen_at > st.idle_timeout or at - row.created_at > st.max_session:
        ended = "expired"
    elif staff is None or not staff.active or session.get("stamp") != password_stamp(staff):
        ended = "account changed"
    if ended is not None:
        if row is not None:
            row.ended_at, row.end_reason = at, ended
            session_.commit()
        g.expired = True
        # The form token stays: a form sent after expiry is answered "sign in again" (403).
        for key in ("sid", "stamp"):
            session.pop(key, None)
        return None
    if at - row.seen_at >= SEEN_STEP:
        row.seen_at = at
        session_.commit()
    g.staff = staff
    return staff


def staff_required(*roles: str):
    """Only for signed-in staff with one of ``roles`` (none given: any member of staff)."""

    def decorate(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            row = current_staff()
            if row is None:
                if request.method != "GET":
                    abort(
                        403,
                        description=(
                            "Your session has expired. Sign in again, then repeat what you did."
                            if g.get("expired")
                            else "Sign in first."
                        ),
                    )
                return redirect(
                    url_for(
                        "staff.login",
                        next=request.full_path.rstrip("?"),
                        expired="1" if g.get("expired") else None,
                    )
                )
            if roles and not row.has_role(*roles):
                abort(403, description="Your account does not have the role this page needs.")
            return view(*args, **kwargs)

        return wrapper

    return decorate
