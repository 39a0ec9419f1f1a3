"""Exceptions and the audit trail in the database, handed to the policy as plain values."""

from __future__ import annotations

import ipaddress
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from schoolgate.core.model import AccessException
from schoolgate.core.policy import Policy
from schoolgate.storage.db import utcnow
from schoolgate.storage.models import AuditRow, ExceptionRow

SCOPES = ("user", "group", "role", "network", "site", "everyone")
# host: a site (a platform's host opens the platform's family); page: one page
# (tiktok.com/@bbcnews, see schoolgate.core.pages); platform: a platform by its key.
TARGET_KINDS = ("host", "category", "page", "platform")


class ExceptionRequestError(ValueError):
    """An exception that the policy does not permit or that is malformed."""


def to_plain(row: ExceptionRow) -> AccessException:
    return AccessException(
        id=row.id,
        scope=row.scope,
        scope_value=row.scope_value,
        target_kind=row.target_kind,
        target=row.target,
        starts=row.starts,
        ends=row.ends,
        created_by=row.created_by,
        reason=row.reason,
        kind=row.kind,
    )


def validate_exception(
    policy: Policy,
    *,
    scope: str,
    scope_value: str,
    target_kind: str,
    target: str,
    starts: datetime,
    ends: datetime | None,
) -> None:
    """Refuse what no one may grant: locked categories, unknown names, an end in the past."""
    if scope not in SCOPES:
        raise ExceptionRequestError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    if scope != "everyone" and not scope_value:
        raise ExceptionRequestError(f"scope {scope} needs a value (e.g. {scope}=...)")
    if scope == "role" and policy.role_named(scope_value) is None:
        raise ExceptionRequestError(
            f"unknown role {scope_value!r}; roles are {', '.join(sorted(policy.roles))}"
        )
    if scope == "site" and scope_value not in policy.timetables:
        raise ExceptionRequestError(
            f"unknown site {scope_value!r}; sites are {', '.join(policy.timetables)}"
        )
    if scope == "network":
        try:
            ipaddress.ip_network(scope_value, strict=False)
        except ValueError as exc:
            raise ExceptionRequestError(f"not a network: {scope_value!r}") from exc
    if target_kind not in TARGET_KINDS:
        raise ExceptionRequestError(
            f"target must be a host, page, platform or category, not {target_kind!r}"
        )
    if target_kind == "platform":
        if policy.platforms is None or target not in policy.platforms:
            known = ", ".join(p.key for p in policy.platforms or ())
            raise ExceptionRequestError(f"unknown platform {target!r}; platforms are {known}")
    elif target_kind == "page":
        from schoolgate.core.pages import parse_page

        page = parse_page(target)
        if page is None:
            raise ExceptionRequestError(
                f"not a page: {target!r} (a host and a path, such as tiktok.com/@bbcnews)"
            )
        locked = policy.locked_matcher
        if locked is not None and locked.lookup(page.host, page.prefix):
            raise ExceptionRequestError(f"{target} is in a locked category: it can never be opened")
    elif target_kind == "category":
        settings = policy.categories.get(target)
        if settings is None:
            raise ExceptionRequestError(
                f"unknown category {target!r}; categories are {', '.join(policy.categories)}"
            )
        if settings.locked:
            raise ExceptionRequestError(f"category {target!r} is locked: it can never be opened")
    else:
        from schoolgate.core.hosts import normalize_host

        host = normalize_host(target)
        if not host or "." not in host and ":" not in host:
            raise ExceptionRequestError(f"not a host name: {target!r}")
        if policy.locked_matcher is not None and policy.locked_matcher.lookup(host, None):
            raise ExceptionRequestError(f"{host} is in a locked category: it can never be opened")
    if ends is not None and ends <= utcnow():
        raise ExceptionRequestError("the end is already in the past")
    if ends is not None and ends <= starts:
        raise ExceptionRequestError("the end must be after the start")


def add_exception(
    session: Session,
    policy: Policy,
    *,
    scope: str,
    scope_value: str,
    target_kind: str,
    target: str,
    starts: datetime,
    ends: datetime | None,
    created_by: str,
    reason: str,
    kind: str = "exception",
) -> ExceptionRow:
    """Validate, store and audit a new exception."""
    if not created_by:
        raise ExceptionRequestError("say who is granting it (--by)")
    if scope == "role":  # a role alias ("teacher") is stored as the role it means ("staff")
        scope_value = policy.role_named(scope_value) or scope_value
    validate_exception(
        policy,
        scope=scope,
        scope_value=scope_value,
        target_kind=target_kind,
        target=target,
        starts=starts,
        ends=ends,
    )
    if target_kind == "host":
        from schoolgate.core.hosts import normalize_host

        target = normalize_host(target)
    elif target_kind == "page":
        from schoolgate.core.pages import parse_page

        target = parse_page(target).text  # type: ignore[union-attr]  # validated above
    row = ExceptionRow(
        kind=kind,
        scope=scope,
        scope_value=scope_value if scope != "everyone" else "",
        target_kind=target_kind,
        target=target,
        starts=starts,
        ends=ends,
        created_by=created_by,
        created_at=utcnow(),
        reason=reason,
    )
    session.add(row)
    session.flush()
    audit(
        session,
        created_by,
        f"{kind}.add",
        f"exception #{row.id}",
        to_plain(row).describe() + (f": {reason}" if reason else ""),
    )
    return row


def revoke_exception(session: Session, exception_id: int, *, by: str, reason: str) -> ExceptionRow:
    row = session.get(ExceptionRow, exception_id)
    if row is None:
        raise ExceptionRequestError(f"no exception #{exception_id}")
    if row.revoked_at is not None:
        raise ExceptionRequestError(f"exception #{exception_id} was already revoked")
    row.revoked_at = utcnow()
    row.revoked_by = by
    row.revoke_reason = reason
    audit(session, by, f"{row.kind}.revoke", f"exception #{row.id}", reason)
    return row


def list_exceptions(
    session: Session, *, at: datetime | None = None, revoked: bool = False
) -> list[ExceptionRow]:
    """Exceptions not revoked (``revoked``: those too); with ``at``, only those in force at
    that moment."""
    query = select(ExceptionRow)
    if not revoked:
        query = query.where(ExceptionRow.revoked_at.is_(None))
    if at is not None:
        query = query.where(ExceptionRow.starts <= at).where(
            or_(ExceptionRow.ends.is_(None), ExceptionRow.ends > at)
        )
    return list(session.scalars(query.order_by(ExceptionRow.id)))


def exceptions_current(session: Session, at: datetime) -> list[AccessException]:
    """Exceptions not revoked and not yet ended (including ones starting later)."""
    query = (
        select(ExceptionRow)
        .where(ExceptionRow.revoked_at.is_(None))
        .where(or_(ExceptionRow.ends.is_(None), ExceptionRow.ends > at))
        .order_by(ExceptionRow.id)
    )
    return [to_plain(row) for row in session.scalars(query)]


def audit(session: Session, actor: str, action: str, subject: str, detail: str = "") -> None:
    session.add(AuditRow(at=utcnow(), actor=actor, action=action, subject=subject, detail=detail))
