"""The portal's tables: staff accounts, requests and reports, and the notification outbox.

Created only by the Alembic migration ``0002_portal``; these classes share
:class:`schoolgate.storage.db.Base` with the rest of schoolgate.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from schoolgate.core.staff_signin import STAFF_ROLES
from schoolgate.storage.db import Base, UTCDateTime, utcnow

__all__ = ["STAFF_ROLES", "OutboxRow", "PortalRequestRow", "StaffRow"]

# What a request or report can be; "awaiting_slt" holds IT Support's proposed exception until
# SLT approve it.
OPEN_STATUSES = ("open", "escalated", "awaiting_slt")
STATUSES = (*OPEN_STATUSES, "approved", "rejected", "actioned")


class StaffRow(Base):
    """A member of staff who may sign in to the portal."""

    __tablename__ = "staff"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(200), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    email: Mapped[str] = mapped_column(String(320), default="")
    roles: Mapped[str] = mapped_column(String(200), default="")  # comma-separated
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

    @property
    def role_list(self) -> list[str]:
        return [r for r in self.roles.split(",") if r]

    @property
    def group_list(self) -> list[str]:
        return [g for g in self.groups.split(",") if g]

    def has_role(self, *roles: str) -> bool:
        return any(role in self.role_list for role in roles)


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
