"""Notifications: new requests and reports to IT Support, escalations to SLT, outcomes to the
requester, by e-mail through the school's SMTP relay and by an optional webhook.

Nothing is sent while a request is handled: the request and its notifications are written in
the same transaction (the ``portal_outbox`` table), and :class:`OutboxSender` (a background
thread) sends what is due, retrying a failure with exponential backoff (30 s, 1 min, 2 min, ...
capped at 1 hour) for as long as it takes. A failed send never loses the request or the
message; ``last_error`` on the row says what went wrong.

Several senders may share one outbox (the gateways of a trust on one database): each message
is claimed with one atomic ``UPDATE`` (``claimed_by``, ``claimed_until``) before it is sent,
so exactly one sender sends it; a claim left by a sender that died mid-send runs out after
:data:`CLAIM_FOR` and another sender retries the message.
"""

from __future__ import annotations

import json
import logging
import smtplib
import ssl
import threading
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any, cast

from sqlalchemy import CursorResult, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.core.notification_settings import (  # noqa: F401 - read here by callers
    NotificationSettings,
    SmtpSettings,
    smtp_settings_from,
)
from schoolgate.storage.leases import holder_id
from schoolgate.storage.models import OutboxRow, StaffRow
from schoolgate.storage.storable import escape_text

log = logging.getLogger(__name__)

BACKOFF_FIRST = 30.0  # seconds
BACKOFF_MAX = 3600.0
BATCH = 50
# How long a sender's claim on a message lasts: far longer than one send (the SMTP and webhook
# timeouts), so only a sender that died mid-send lets another retry the message after it.
CLAIM_FOR = timedelta(minutes=5)


@dataclass
class Notifier:
    """Queues notifications in the outbox (inside the caller's transaction)."""

    smtp: SmtpSettings | None
    webhook_url: str | None
    clock: Callable[[], datetime]
    base_url: str = ""
    extra_headers: dict[str, str] = field(default_factory=dict)

    def _staff_addresses(self, session: Session, role: str) -> list[str]:
        rows = session.scalars(select(StaffRow).where(StaffRow.active.is_(True)))
        return [row.email for row in rows if row.email and role in row.role_list]

    def recipients(self, session: Session, audience: str, user: str | None = None) -> list[str]:
        if self.smtp is None:
            return []
        if audience == "it_support":
            return list(self.smtp.it_support) or self._staff_addresses(session, "it_support")
        if audience == "slt":
            return list(self.smtp.slt) or self._staff_addresses(session, "slt")
        if audience == "esafety":
            return list(self.smtp.esafety or self.smtp.slt) or self._staff_addresses(session, "slt")
        if audience == "dsl":
            found = list(self.smtp.dsl or self.smtp.esafety or self.smtp.slt)
            return (
                found
                or self._staff_addresses(session, "dsl")
                or self.recipients(session, "esafety")
            )
        if audience == "requester" and user and self.smtp.user_domain:
            return [f"{user}@{self.smtp.user_domain}"]
        return []

    def notify(
        self,
        session: Session,
        *,
        audience: str,
        event: str,
        subject: str,
        body: str,
        ref: str,
        user: str | None = None,
        link: str = "",
    ) -> None:
        now = self.clock()
        # Text from the network (a host, a search term) may hold bytes that were not UTF-8 or
        # a NUL: escaped, or the database refuses the message and every one queued with it.
        subject, body = escape_text(subject), escape_text(body)
        to = self.recipients(session, audience, user)
        if to:
            text = body + (f"\n\n{self.base_url}{link}\n" if link else "\n")
            session.add(
                OutboxRow(
                    channel="email",
                    recipient=", ".join(to),
                    subject=subject,
                    body=text,
                    created_at=now,
                    next_attempt_at=now,
                    attempts=0,
                )
            )
        if self.webhook_url:
            payload = {
                "event": event,
                "audience": audience,
                "ref": ref,
                "subject": subject,
                "text": body,
                "link": f"{self.base_url}{link}" if link else "",
                "at": now.isoformat(),
            }
            session.add(
                OutboxRow(
                    channel="webhook",
                    recipient=self.webhook_url,
                    subject=subject,
                    body=json.dumps(payload),
                    created_at=now,
                    next_attempt_at=now,
                    attempts=0,
                )
            )


def notifier_for(
    notifications: NotificationSettings, *, clock: Callable[[], datetime]
) -> Notifier | None:
    """A :class:`Notifier` for the config's ``notifications`` section (``smtp``, ``webhook``);
    None when neither is set, so callers can say that nothing will be sent."""
    if notifications.smtp is None and not notifications.webhook:
        return None
    return Notifier(smtp=notifications.smtp, webhook_url=notifications.webhook, clock=clock)


def send_email(smtp: SmtpSettings, recipients: Iterable[str], subject: str, body: str) -> None:
    message = EmailMessage()
    message["From"] = smtp.sender
    message["To"] = ", ".join(recipients)
    message["Subject"] = subject
    message.set_content(body)
    with smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout) as client:
        client.ehlo()
        if smtp.starttls:
            client.starttls(context=ssl.create_default_context(cafile=smtp.ca_file))
            client.ehlo()
        if smtp.username:
            client.login(smtp.username, smtp.password or "")
        client.send_message(message)


def post_webhook(url: str, body: str, timeout: float = 10.0) -> None:
    request = urllib.request.Request(
        url,
        data=body.encode("utf-8"),
        headers={"Content-Type": "application/json", "User-Agent": "schoolgate-portal"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        if not 200 <= response.status < 300:
            raise OSError(f"webhook answered HTTP {response.status}")


def backoff(attempts: int) -> timedelta:
    """The wait after the ``attempts``-th failure: 30 s, 1 min, 2 min, ... at most 1 hour."""
    return timedelta(seconds=min(BACKOFF_FIRST * 2 ** max(attempts - 1, 0), BACKOFF_MAX))


class OutboxSender:
    """Sends what is due in the outbox; :meth:`start` runs it in a daemon thread."""

    def __init__(
        self,
        sessions: sessionmaker,
        smtp: SmtpSettings | None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        interval: float = 5.0,
        send_email_fn: Callable[..., None] = send_email,
        post_webhook_fn: Callable[..., None] = post_webhook,
    ) -> None:
        self.sessions = sessions
        self.smtp = smtp
        self.clock = clock
        self.interval = interval
        self._send_email = send_email_fn
        self._post_webhook = post_webhook_fn
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # Names this sender's claims on outbox rows (several gateways may send from one outbox).
        self.sender_id = holder_id()

    def _deliver(self, row: OutboxRow) -> None:
        if row.channel == "email":
            if self.smtp is None:
                raise OSError("no SMTP relay is configured")
            recipients = [a.strip() for a in row.recipient.split(",") if a.strip()]
            self._send_email(self.smtp, recipients, row.subject, row.body)
        elif row.channel == "webhook":
            self._post_webhook(row.recipient, row.body)
        else:
            raise ValueError(f"unknown channel {row.channel!r}")

    def _claim(self, session: Session, row_id: int, now: datetime) -> OutboxRow | None:
        """Claim the message for this sender (one atomic UPDATE: of several senders on one
        database exactly one matches); the row if claimed, None if another sender has it, has
        sent it or has moved it on."""
        claimed = session.execute(
            update(OutboxRow)
            .where(
                OutboxRow.id == row_id,
                OutboxRow.sent_at.is_(None),
                OutboxRow.next_attempt_at <= now,
                or_(OutboxRow.claimed_until.is_(None), OutboxRow.claimed_until < now),
            )
            .values(claimed_by=self.sender_id, claimed_until=now + CLAIM_FOR)
            .execution_options(synchronize_session=False)
        )
        session.commit()  # the claim is seen by the other senders before anything is sent
        if cast(CursorResult[Any], claimed).rowcount != 1:  # an UPDATE's result has one
            return None
        return session.get(OutboxRow, row_id, populate_existing=True)

    def send_due(self) -> tuple[int, int]:
        """Try every message that is due once; returns (sent, failed)."""
        sent = failed = 0
        with self._lock, self.sessions() as session:
            now = self.clock()
            due = session.scalars(
                select(OutboxRow.id)
                .where(OutboxRow.sent_at.is_(None), OutboxRow.next_attempt_at <= now)
                .where(or_(OutboxRow.claimed_until.is_(None), OutboxRow.claimed_until < now))
                .order_by(OutboxRow.id)
                .limit(BATCH)
            ).all()
            for row_id in due:
                row = self._claim(session, row_id, self.clock())
                if row is None:
                    continue  # another sender's
                try:
                    self._deliver(row)
                except Exception as exc:  # noqa: BLE001 - any failure is retried later
                    error = f"{type(exc).__name__}: {exc}"[:1000]
                    attempts = row.attempts + 1
                    next_at = self.clock() + backoff(attempts)
                    # Only while the claim is still ours: had it expired and another sender
                    # claimed the message, the retry is that sender's to record.
                    session.execute(
                        update(OutboxRow)
                        .where(OutboxRow.id == row_id, OutboxRow.claimed_by == self.sender_id)
                        .values(
                            attempts=attempts,
                            last_error=error,
                            next_attempt_at=next_at,
                            claimed_by=None,
                            claimed_until=None,
                        )
                        .execution_options(synchronize_session=False)
                    )
                    failed += 1
                    log.warning(
                        "portal: %s to %s failed (attempt %d, next at %s): %s",
                        row.channel,
                        row.recipient,
                        attempts,
                        next_at.isoformat(),
                        error,
                    )
                else:
                    # Recorded even if the claim ran out meanwhile: the message did go.
                    session.execute(
                        update(OutboxRow)
                        .where(OutboxRow.id == row_id, OutboxRow.sent_at.is_(None))
                        .values(
                            attempts=OutboxRow.attempts + 1,
                            sent_at=self.clock(),
                            last_error=None,
                            claimed_by=None,
                            claimed_until=None,
                        )
                        .execution_options(synchronize_session=False)
                    )
                    sent += 1
                session.commit()  # one message at a time: a crash never re-sends many
                session.expunge_all()
        return sent, failed

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="schoolgate-outbox", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.send_due()
            except Exception:  # noqa: BLE001 - e.g. the database is briefly unavailable
                log.exception("portal: the outbox could not be read; trying again")
            self._wake.wait(self.interval)
            self._wake.clear()
