"""Portal sign-in state in the database (migration ``0009``), so that every worker and every
gateway on the database applies the same limits and sees the same sessions.

* **Failed sign-ins** (``login_failures``): each one with its account, its *source* (the role
  the policy gives the address it came from: ``student``, ``staff``, ...) and the address.
  A sign-in is refused while the account has too many recent failures **from that kind of
  source**, or the address has too many for any account. So a pupil guessing a member of
  staff's password from pupils' devices locks the account out of pupils' devices (and their
  own device out), but not out of the staff network.
* **Staff sessions** (``staff_sessions``): the cookie carries a random token, the database
  its SHA-256 with the times that bound it. Signing out (or a password change) ends the row:
  a copy of the cookie no longer works.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from schoolgate.storage.models import LoginFailureRow, StaffSessionRow

SESSIONS_KEPT = timedelta(days=2)  # ended or idle session rows are deleted after this


# -- failed sign-ins ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LoginLimits:
    """At most ``per_account`` failures for an account from one kind of source, and
    ``per_address`` from one address (any accounts), in ``window``."""

    per_account: int = 5
    per_address: int = 5
    window: timedelta = timedelta(minutes=15)


@dataclass(frozen=True)
class Refusal:
    """Why a sign-in is refused now, and when it may be tried again."""

    reason: str
    until: datetime


def login_refusal(
    session: Session,
    *,
    username: str,
    source: str,
    client_ip: str,
    now: datetime,
    limits: LoginLimits,
) -> Refusal | None:
    """A :class:`Refusal` if there were too many recent failures for this account from this
    kind of source, or from this address; None if the password may be checked."""
    cutoff = now - limits.window
    checks = (
        (
            LoginFailureRow.client_ip == client_ip,
            limits.per_address,
            "Too many failed sign-ins from this device.",
        ),
        (
            (LoginFailureRow.username == username) & (LoginFailureRow.source == source),
            limits.per_account,
            "Too many failed sign-ins for this account from this part of the network.",
        ),
    )
    for condition, limit, reason in checks:
        count, oldest = session.execute(
            select(func.count(LoginFailureRow.id), func.min(LoginFailureRow.at)).where(
                condition, LoginFailureRow.at > cutoff
            )
        ).one()
        if count >= limit:
            # Sliding window: free again when the oldest of them is older than the window.
            return Refusal(reason, oldest + limits.window)
    return None


def record_login_failure(
    session: Session,
    *,
    username: str,
    source: str,
    client_ip: str,
    now: datetime,
    limits: LoginLimits,
) -> None:
    """Count a failed sign-in (and forget those too old to count)."""
    session.execute(delete(LoginFailureRow).where(LoginFailureRow.at <= now - limits.window))
    session.add(
        LoginFailureRow(
            at=now, username=username[:200], source=source[:100], client_ip=client_ip[:64]
        )
    )


def clear_login_failures(session: Session, *, username: str, source: str) -> None:
    """After a good sign-in: the account's own mistakes from there no longer count (those of
    the address do: a pupil who knows one password must not reset their guessing)."""
    session.execute(
        delete(LoginFailureRow).where(
            LoginFailureRow.username == username, LoginFailureRow.source == source
        )
    )


# -- sessions ----------------------------------------------------------------------------------


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def start_staff_session(
    session: Session, *, staff_id: int, client_ip: str | None, now: datetime
) -> str:
    """A new session for a member of staff; returns the token for the cookie."""
    session.execute(delete(StaffSessionRow).where(StaffSessionRow.seen_at < now - SESSIONS_KEPT))
    token = secrets.token_urlsafe(32)
    session.add(
        StaffSessionRow(
            id=_digest(token),
            staff_id=staff_id,
            created_at=now,
            seen_at=now,
            client_ip=(client_ip or "")[:64] or None,
        )
    )
    return token


def find_staff_session(session: Session, token: str) -> StaffSessionRow | None:
    """The session the cookie's token names, if it has not been ended."""
    if not token:
        return None
    row = session.get(StaffSessionRow, _digest(token))
    return row if row is not None and row.ended_at is None else None


def end_staff_session(session: Session, token: str, *, now: datetime, reason: str) -> None:
    row = find_staff_session(session, token)
    if row is not None:
        row.ended_at, row.end_reason = now, reason[:100]


def end_sessions_of(session: Session, staff_id: int, *, now: datetime, reason: str) -> None:
    """End every session of one member of staff (a new password, a disabled account)."""
    session.execute(
        update(StaffSessionRow)
        .where(StaffSessionRow.staff_id == staff_id, StaffSessionRow.ended_at.is_(None))
        .values(ended_at=now, end_reason=reason[:100])
    )
