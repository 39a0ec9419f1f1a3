"""Every table of schoolgate's database, as SQLAlchemy models sharing one :class:`Base`.

The schema is only ever made by the Alembic migrations (``storage/migrations/versions/``); these
models say what the newest migration makes (a test compares them). The queries live beside, one
module per concern (:mod:`~schoolgate.storage.bans`, :mod:`~schoolgate.storage.cases`, ...).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from schoolgate.storage.db import UTCDateTime, utcnow

# What a request or report can be; "awaiting_slt" holds IT Support's proposed exception until
# SLT approve it.
OPEN_STATUSES = ("open", "escalated", "awaiting_slt")
STATUSES = (*OPEN_STATUSES, "approved", "rejected", "actioned")
MISSED_BEATS = 3  # a gateway process not seen for this many heartbeat intervals is down


class Base(DeclarativeBase):
    pass


# -- the decision log, exceptions and the audit trail (0001) ---------------------------------------
class ExceptionRow(Base):
    """A time-limited allow entry: an approval, or a teacher's curriculum override."""

    __tablename__ = "exceptions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(20), default="exception")
    scope: Mapped[str] = mapped_column(String(20))
    scope_value: Mapped[str] = mapped_column(String(200), default="")
    target_kind: Mapped[str] = mapped_column(String(20))
    target: Mapped[str] = mapped_column(String(500))
    starts: Mapped[datetime] = mapped_column(UTCDateTime)
    ends: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)
    created_by: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    reason: Mapped[str] = mapped_column(Text, default="")
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    revoke_reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class EventRow(Base):
    """One recorded event: a decision of the gateway, or (later) a circumvention attempt.

    The columns are what the DfE filtering standard asks a school to be able to see.
    """

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ref: Mapped[str] = mapped_column(String(40), unique=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    kind: Mapped[str] = mapped_column(String(30), index=True)  # "block", "allow", "error", ...
    action: Mapped[str] = mapped_column(String(10))
    client_ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    device: Mapped[str | None] = mapped_column(String(200), nullable=True)
    user: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    role: Mapped[str | None] = mapped_column(String(50), nullable=True)
    group: Mapped[str | None] = mapped_column(String(100), nullable=True, index=True)
    site: Mapped[str | None] = mapped_column(String(100), nullable=True)
    method: Mapped[str | None] = mapped_column(String(16), nullable=True)
    scheme: Mapped[str | None] = mapped_column(String(10), nullable=True)
    host: Mapped[str | None] = mapped_column(String(500), nullable=True, index=True)
    url: Mapped[str | None] = mapped_column(Text, nullable=True)
    search_term: Mapped[str | None] = mapped_column(Text, nullable=True)
    category: Mapped[str | None] = mapped_column(String(100), nullable=True, index=True)
    window: Mapped[str | None] = mapped_column(String(50), nullable=True)
    window_name: Mapped[str | None] = mapped_column(String(100), nullable=True)
    rule: Mapped[str | None] = mapped_column(Text, nullable=True)
    exception_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON: extra evidence


class AuditRow(Base):
    """Who changed what: exceptions made and revoked, and later bans and approvals."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(50))
    subject: Mapped[str] = mapped_column(String(200))
    detail: Mapped[str] = mapped_column(Text, default="")
    # The operating system user that ran the command (migration 0009); None from the portal,
    # the gateway and its jobs.
    os_user: Mapped[str | None] = mapped_column(String(200), nullable=True)


# -- the portal: staff, requests and reports, the notification outbox (0002) -----------------------
class StaffRow(Base):
    """A member of staff who may sign in to the portal."""

    __tablename__ = "staff"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(200), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    email: Mapped[str] = mapped_column(String(320), default="")
    groups: Mapped[str] = mapped_column(Text, default="")  # comma-separated (teachers)
    password_hash: Mapped[str] = mapped_column(String(300))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    password_changed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Two-factor sign-in (migration 0006, schoolgate.portal.totp): the secret encrypted with a
    # key derived from secret.key; enabled once a first code confirmed it; the last time step
    # accepted (a code is never accepted twice); the recovery codes, hashed (JSON).
    totp_secret: Mapped[str | None] = mapped_column(Text, nullable=True)
    totp_enabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    totp_recovery: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The roles (migration 0013), in the order they were given; loaded with the account, which
    # is used after its session has ended.
    role_rows: Mapped[list[StaffRoleRow]] = relationship(
        order_by="StaffRoleRow.id", cascade="all, delete-orphan", lazy="selectin"
    )

    @property
    def role_list(self) -> list[str]:
        return [row.role for row in self.role_rows]

    def set_roles(self, roles: Iterable[str]) -> None:
        """Hold exactly ``roles``: a role kept keeps its row (and its place), so that taking a
        role away and giving it back in one change never meets the unique (staff, role)."""
        wanted = list(dict.fromkeys(r for r in roles if r))
        kept = [row for row in self.role_rows if row.role in wanted]
        held = {row.role for row in kept}
        self.role_rows = kept + [StaffRoleRow(role=r) for r in wanted if r not in held]

    @property
    def group_list(self) -> list[str]:
        return [g for g in self.groups.split(",") if g]

    def has_role(self, *roles: str) -> bool:
        return any(role in self.role_list for role in roles)


class StaffRoleRow(Base):
    """One role held by a member of staff (``it_support``, ``slt``, ...)."""

    __tablename__ = "staff_roles"
    __table_args__ = (UniqueConstraint("staff_id", "role", name="uq_staff_roles_staff_id_role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    staff_id: Mapped[int] = mapped_column(Integer, ForeignKey("staff.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(50))


class PortalRequestRow(Base):
    """An access request (``kind="access"``) or a content report (``kind="report"``)."""

    __tablename__ = "portal_requests"
    # The IT Support queue's filters in its order, oldest first (migration 0004).
    __table_args__ = (
        Index("ix_portal_requests_status_created_at", "status", "created_at"),
        Index("ix_portal_requests_kind_status_created_at", "kind", "status", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ref: Mapped[str] = mapped_column(String(20), unique=True)  # quoted to IT Support
    token: Mapped[str] = mapped_column(String(64))  # in the requester's status link
    kind: Mapped[str] = mapped_column(String(10), index=True)
    status: Mapped[str] = mapped_column(String(20), index=True, default="open")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # who asked: from the gateway, never from the form
    requester_user: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    requester_role: Mapped[str] = mapped_column(String(50), default="")
    requester_group: Mapped[str | None] = mapped_column(String(100), nullable=True)
    requester_site: Mapped[str] = mapped_column(String(100), default="")
    client_ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # what about
    url: Mapped[str] = mapped_column(Text, default="")
    host: Mapped[str] = mapped_column(String(500), default="")
    category: Mapped[str | None] = mapped_column(String(100), nullable=True)
    event_ref: Mapped[str | None] = mapped_column(String(40), nullable=True)  # verified only
    purpose: Mapped[str] = mapped_column(String(30), default="")  # curriculum, erroneous, ...
    # what the requester asks to have opened: "page" (only this page) or "site" (0015)
    wants: Mapped[str | None] = mapped_column(String(20), nullable=True)
    message: Mapped[str] = mapped_column(Text, default="")
    screenshot_file: Mapped[str | None] = mapped_column(String(100), nullable=True)
    screenshot_type: Mapped[str | None] = mapped_column(String(50), nullable=True)
    # escalation to SLT
    escalated_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    escalation_note: Mapped[str | None] = mapped_column(Text, nullable=True)
    # an exception proposed by IT Support that needs SLT approval
    proposal: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON
    proposed_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # the outcome
    decided_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    outcome: Mapped[str | None] = mapped_column(Text, nullable=True)  # shown to the requester
    exception_id: Mapped[int | None] = mapped_column(Integer, nullable=True)

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


class OutboxRow(Base):
    """A notification waiting to be sent (or sent): e-mail or webhook, retried until it goes."""

    __tablename__ = "portal_outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    channel: Mapped[str] = mapped_column(String(10))  # "email" or "webhook"
    recipient: Mapped[str] = mapped_column(Text)  # address(es) or URL
    subject: Mapped[str] = mapped_column(Text, default="")
    body: Mapped[str] = mapped_column(Text, default="")  # e-mail text or webhook JSON
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Which sender is sending it, until when (migration 0005): several gateways' senders may
    # share one outbox, and a sender that died mid-send lets the others retry after that time.
    claimed_by: Mapped[str | None] = mapped_column(String(300), nullable=True)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


# -- staff sign-in: failed attempts and sessions (0009) --------------------------------------------
class LoginFailureRow(Base):
    """One failed staff sign-in."""

    __tablename__ = "login_failures"
    # The two counts a sign-in is refused on: an account's recent failures from one kind of
    # source, and an address's.
    __table_args__ = (
        Index("ix_login_failures_account", "username", "source", "at"),
        Index("ix_login_failures_address", "client_ip", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    username: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(100))  # the role of the address it came from
    client_ip: Mapped[str] = mapped_column(String(64))


class StaffSessionRow(Base):
    """A signed-in member of staff: the cookie holds the token, ``id`` is its SHA-256."""

    __tablename__ = "staff_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    staff_id: Mapped[int] = mapped_column(Integer, ForeignKey("staff.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    end_reason: Mapped[str | None] = mapped_column(String(100), nullable=True)
    client_ip: Mapped[str | None] = mapped_column(String(64), nullable=True)


# -- bans, their audit trail and supervision sessions (0003) ---------------------------------------
class BanRow(Base):
    __tablename__ = "bans"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ref: Mapped[str] = mapped_column(String(40), unique=True)
    subject: Mapped[str] = mapped_column(String(250), index=True)  # user:NAME | device:IP
    kind: Mapped[str] = mapped_column(String(20))  # lockout | ban
    starts: Mapped[datetime] = mapped_column(UTCDateTime)
    ends: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    stage: Mapped[int | None] = mapped_column(Integer, nullable=True)
    points: Mapped[float | None] = mapped_column(Float, nullable=True)
    events: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of event refs
    role: Mapped[str | None] = mapped_column(String(50), nullable=True)
    client_ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_by: Mapped[str] = mapped_column(String(200), default="schoolgate")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    lifted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    lifted_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lift_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    expiry_noted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class BanAuditRow(Base):
    __tablename__ = "ban_audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    ban_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("bans.id"), nullable=True, index=True
    )
    supervision_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    subject: Mapped[str] = mapped_column(String(250), index=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(40))  # ban.create, ban.lift, ban.expire, ...
    detail: Mapped[str] = mapped_column(Text, default="")
    # The operating system user that ran the command (migration 0008), beside ``actor`` (its
    # ``--by``); None from the portal and the gateway.
    os_user: Mapped[str | None] = mapped_column(String(200), nullable=True)


class SupervisionRow(Base):
    __tablename__ = "supervision_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ref: Mapped[str] = mapped_column(String(40), unique=True)
    subject: Mapped[str] = mapped_column(String(250), index=True)
    ban_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("bans.id"), nullable=True)
    staff: Mapped[str] = mapped_column(String(200))
    starts: Mapped[datetime] = mapped_column(UTCDateTime)
    ends: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ended_by: Mapped[str | None] = mapped_column(String(200), nullable=True)


# -- safeguarding cases, their notes and reviewed matches (0012) -----------------------------------
class CaseRow(Base):
    __tablename__ = "safeguarding_cases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject: Mapped[str] = mapped_column(String(250), index=True)  # user:NAME | device:IP
    group: Mapped[str | None] = mapped_column(String(100), nullable=True)
    status: Mapped[str] = mapped_column(String(20), index=True)
    outcome: Mapped[str] = mapped_column(Text, default="")
    opened_by: Mapped[str] = mapped_column(String(200))
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)
    closed_by: Mapped[str | None] = mapped_column(String(200), nullable=True)

    @property
    def pupil(self) -> str:
        """The pupil's user name, or ``device 10.1.2.3`` when nobody was signed in."""
        kind, _, value = self.subject.partition(":")
        return value if kind == "user" else f"device {value}"


class CaseNoteRow(Base):
    __tablename__ = "safeguarding_case_notes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("safeguarding_cases.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    author: Mapped[str] = mapped_column(String(200))
    status: Mapped[str | None] = mapped_column(String(20), nullable=True)  # set: a status change
    text: Mapped[str] = mapped_column(Text, default="")


class MatchRow(Base):
    __tablename__ = "safeguarding_matches"

    event_ref: Mapped[str] = mapped_column(String(40), primary_key=True)
    case_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("safeguarding_cases.id", ondelete="CASCADE"), nullable=True, index=True
    )
    subject: Mapped[str | None] = mapped_column(String(250), nullable=True, index=True)
    reviewed_by: Mapped[str] = mapped_column(String(200))
    reviewed_at: Mapped[datetime] = mapped_column(UTCDateTime)


# -- address -> person bindings and their version counter (0008) -----------------------------------
class BindingRow(Base):
    __tablename__ = "bindings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    address: Mapped[str] = mapped_column(String(64), index=True)
    source: Mapped[str] = mapped_column(String(20))
    kind: Mapped[str] = mapped_column(String(10), default="person")
    user: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    role: Mapped[str | None] = mapped_column(String(50), nullable=True)
    device: Mapped[str | None] = mapped_column(String(200), nullable=True)
    mac: Mapped[str | None] = mapped_column(String(17), nullable=True)
    session_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    origin: Mapped[str] = mapped_column(String(200), default="")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    idle_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    ends_by: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    end_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    version: Mapped[int] = mapped_column(Integer, index=True)

    __table_args__ = (
        Index(
            "uq_bindings_in_force",
            "address",
            "source",
            unique=True,
            sqlite_where=text("ended_at IS NULL"),
            postgresql_where=text("ended_at IS NULL"),
        ),
    )


class BindingVersionRow(Base):
    """One row (id 1): the number of the last change to ``bindings``."""

    __tablename__ = "binding_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer)


# -- leases (0005) ---------------------------------------------------------------------------------
class LeaseRow(Base):
    """Who holds a named lease, until when (created by migration 0005)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    holder: Mapped[str] = mapped_column(String(300))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    renewed_at: Mapped[datetime] = mapped_column(UTCDateTime)


# -- the last run of each job (0007) ---------------------------------------------------------------
class JobRunRow(Base):
    __tablename__ = "job_runs"

    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime)
    outcome: Mapped[str] = mapped_column(String(10))  # "ok" or "failed"
    summary: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    host: Mapped[str] = mapped_column(String(300), default="")  # which process ran it


# -- gateway heartbeats (0010) ---------------------------------------------------------------------
class HeartbeatRow(Base):
    __tablename__ = "gateway_heartbeats"

    instance: Mapped[str] = mapped_column(String(300), primary_key=True)  # host:port/worker
    host: Mapped[str] = mapped_column(String(200), default="")
    port: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[int] = mapped_column(Integer, default=0)  # 0: a gateway of one process
    pid: Mapped[int] = mapped_column(Integer, default=0)
    version: Mapped[str] = mapped_column(String(50), default="")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    interval: Mapped[float] = mapped_column(Float, default=10.0)
    policy_loaded_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    policy_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    runs_jobs: Mapped[bool] = mapped_column(Boolean, default=False)
    sends_mail: Mapped[bool] = mapped_column(Boolean, default=False)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    blocks: Mapped[int] = mapped_column(BigInteger, default=0)
    events_pending: Mapped[int] = mapped_column(Integer, default=0)
    events_written: Mapped[int] = mapped_column(BigInteger, default=0)
    events_rejected: Mapped[int] = mapped_column(BigInteger, default=0)
    events_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    minutes: Mapped[str] = mapped_column(Text, default="[]")  # [[epoch minute, req, blocks]]

    def is_up(self, now: datetime) -> bool:
        """Seen within its last few beats and not stopped."""
        if self.stopped_at is not None:
            return False
        return now - self.seen_at <= timedelta(seconds=MISSED_BEATS * max(self.interval, 1.0))

    def per_minute(self) -> list[tuple[int, int, int]]:
        try:
            return [(int(m), int(r), int(b)) for m, r, b in json.loads(self.minutes or "[]")]
        except (ValueError, TypeError):
            return []

    @property
    def label(self) -> str:
        """``gw1:8080`` or ``gw1:8080 worker 2``."""
        where = f"{self.host}:{self.port}"
        return f"{where} worker {self.worker}" if self.worker else where


# -- hosts recognised from their traffic (0011) ----------------------------------------------------
class DetectedHostRow(Base):
    __tablename__ = "detected_hosts"

    host: Mapped[str] = mapped_column(String(300), primary_key=True)
    category: Mapped[str] = mapped_column(String(100))
    software: Mapped[str | None] = mapped_column(String(100), nullable=True)
    evidence: Mapped[str] = mapped_column(Text, default="")
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    client_ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
