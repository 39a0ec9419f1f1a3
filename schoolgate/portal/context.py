"""What the portal's views share: the app's state, the request's database session and clock,
the form token, the signed-in member of staff and the decorator that requires one, and small
helpers for templates. The app factory (:mod:`schoolgate.portal.app`) builds the state;
blueprints import from here, never from the factory, so that no module imports its importer.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import wraps
from pathlib import Path
from urllib.parse import urlsplit

from flask import abort, current_app, g, redirect, request, session, url_for
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.core import words
from schoolgate.core.model import Identity
from schoolgate.core.policy import Policy
from schoolgate.core.portal_settings import ALWAYS_SLT, SltRequired  # noqa: F401 - read here
from schoolgate.jobs.notify import Notifier, OutboxSender
from schoolgate.portal.auth import RateLimiter, password_stamp
from schoolgate.storage.models import StaffRow
from schoolgate.storage.signin import (
    LoginLimits,
    end_staff_session,
    find_staff_session,
    start_staff_session,
)

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

# A session's last-seen time is written at most this often (a write per page is not needed).
SEEN_STEP = timedelta(seconds=15)


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


# -- helpers the views share -------------------------------------------------------------------


def state() -> PortalState:
    return current_app.extensions["schoolgate_portal"]


def db() -> Session:
    """The request's database session (closed at the end of the request)."""
    if "db" not in g:
        g.db = state().sessions()
    return g.db


def close_db(_exc: BaseException | None) -> None:
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
    if ended is not None or row is None:  # (no row: ended)
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


def signed_in_staff() -> StaffRow:
    """The signed-in member of staff, in a view that :func:`staff_required` guards (it has
    turned everyone else away already)."""
    staff = current_staff()
    if staff is None:  # never behind staff_required
        abort(403)
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


def source_of_address() -> str:
    """The kind of address a sign-in comes from: the role the policy gives it (``student``,
    ``staff``, ...). Failures count per account and kind, so pupils cannot lock staff out of
    the staff network. If the policy cannot say, all such sign-ins share one kind."""
    try:
        return state().identify(request.environ).role or "unknown"
    except Exception:  # noqa: BLE001 - never let a policy error open or break sign-in
        return "unknown"
