"""Staff sign-in: password hashes, staff accounts, the submissions' rate limit (failed
sign-ins and sessions are kept in the database: :mod:`schoolgate.storage.signin`).

Passwords are hashed with **scrypt** from the standard library (``hashlib.scrypt``, N=2**14,
r=8, p=1, 16-byte salt): ``bcrypt`` is not installed alongside mitmproxy, and passlib's bcrypt
backend needs it. A hash is stored as ``scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>``, so the
cost can be raised later without breaking old hashes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from schoolgate.core.staff_signin import STAFF_ROLES
from schoolgate.storage.db import utcnow
from schoolgate.storage.models import StaffRoleRow, StaffRow
from schoolgate.storage.signin import end_sessions_of

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
MIN_PASSWORD_LENGTH = 10


class AccountError(ValueError):
    """A staff account that cannot be made or changed as asked."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(
            password.encode("utf-8"),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
            maxmem=2**26,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


# A hash to check against when the user name is unknown, so both cases take as long.
_DUMMY_HASH = hash_password(secrets.token_hex(8))


def password_stamp(row: StaffRow) -> str:
    """Changes whenever the password does: a session made before a change stops working."""
    return hashlib.sha256(row.password_hash.encode("ascii")).hexdigest()[:16]


def check_password_rules(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")


def _split(values: Iterable[str]) -> list[str]:
    out: list[str] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if part and part not in out:
                out.append(part)
    return out


def find_staff(session: Session, username: str) -> StaffRow | None:
    return session.scalar(
        select(StaffRow).where(func.lower(StaffRow.username) == username.strip().lower())
    )


def authenticate(session: Session, username: str, password: str) -> StaffRow | None:
    row = find_staff(session, username) if username else None
    if row is None or not row.active:
        verify_password(password, _DUMMY_HASH)
        return None
    return row if verify_password(password, row.password_hash) else None


def add_staff(
    session: Session,
    *,
    username: str,
    password: str,
    roles: Iterable[str],
    groups: Iterable[str] = (),
    email: str = "",
    display_name: str = "",
) -> StaffRow:
    username = username.strip().lower()
    if not username or any(c.isspace() for c in username):
        raise AccountError("a user name must be non-empty and have no spaces")
    role_list = _split(roles)
    if not role_list:
        raise AccountError(f"give at least one role: {', '.join(STAFF_ROLES)}")
    unknown = [r for r in role_list if r not in STAFF_ROLES]
    if unknown:
        raise AccountError(
            f"unknown role(s) {', '.join(unknown)}; roles are {', '.join(STAFF_ROLES)}"
        )
    if find_staff(session, username) is not None:
        raise AccountError(f"there is already a staff account {username!r}")
    check_password_rules(password)
    now = utcnow()
    row = StaffRow(
        username=username,
        display_name=display_name or username,
        email=email,
        groups=",".join(_split(groups)),
        password_hash=hash_password(password),
        active=True,
        created_at=now,
        password_changed_at=now,
    )
    row.set_roles(role_list)
    session.add(row)
    session.flush()
    return row


def set_password(session: Session, username: str, password: str) -> StaffRow:
    row = find_staff(session, username)
    if row is None:
        raise AccountError(f"no staff account {username!r}")
    check_password_rules(password)
    row.password_hash = hash_password(password)
    row.password_changed_at = utcnow()
    # Whoever was signed in with the old password is signed out, on every gateway.
    end_sessions_of(session, row.id, now=row.password_changed_at, reason="password changed")
    return row


class RateLimiter:
    """At most ``limit`` hits per key in ``window`` seconds (in memory, per process)."""

    def __init__(
        self, limit: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        return hits

    def allowed(self, key: str) -> bool:
        """Whether another hit would be within the limit (does not count one)."""
        with self._lock:
            return len(self._recent(key, self.clock())) < self.limit

    def hit(self, key: str) -> bool:
        """Count a hit; False if the key is over its limit (the hit is then not counted)."""
        with self._lock:
            now = self.clock()
            hits = self._recent(key, now)
            if len(hits) >= self.limit:
                return False
            hits.append(now)
            if len(self._hits) > 10_000:  # forget idle keys
                for stale in [k for k, v in self._hits.items() if not v]:
                    del self._hits[stale]
            return True

    def reset(self, key: str) -> None:
        with self._lock:
            self._hits.pop(key, None)


def active_staff_roles(session: Session) -> set[str]:
    """Every role held by at least one active staff account (empty: no one can sign in)."""
    held = (
        select(StaffRoleRow.role)
        .join(StaffRow, StaffRow.id == StaffRoleRow.staff_id)
        .where(StaffRow.active.is_(True))
        .distinct()
    )
    return set(session.scalars(held))
