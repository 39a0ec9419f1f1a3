"""The ``notifications`` section of the config: who is e-mailed (SMTP) or told (a webhook) when
a request, an escalation or an alert needs someone, and when unanswered requests go to SLT.
Read once when the config is loaded (``Policy.settings.notifications``); the jobs, the portal
and the gateway's alerts send with what was read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schoolgate.core.configfile import Section

# -- the section's keys -----------------------------------------------------------
SMTP_KEYS = {
    "host", "port", "starttls", "ca_file", "username", "password", "from", "sender",
    "it_support", "slt", "esafety", "dsl", "user_domain", "timeout",
}  # fmt: skip


@dataclass(frozen=True)
class SmtpSettings:
    """The school's SMTP relay and who gets what.

    ``it_support`` and ``slt`` are addresses; when empty, the e-mail addresses of active staff
    accounts with that role are used. ``user_domain``: outcomes go to ``<user>@<user_domain>``
    (leave empty to tell requesters on their status page only).
    """

    host: str
    port: int = 25
    starttls: bool = False
    # The CA that signed the relay's certificate, when it is the school's own (PEM file);
    # otherwise the system's trusted CAs are used.
    ca_file: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a log line
    sender: str = "schoolgate@localhost"
    it_support: tuple[str, ...] = ()
    slt: tuple[str, ...] = ()
    # The designated safeguarding lead and e-safety team (circumvention alerts, bans); when
    # empty, the SLT addresses.
    esafety: tuple[str, ...] = ()
    # The designated safeguarding lead (risk terms in searches and page titles); when empty,
    # the e-safety addresses.
    dsl: tuple[str, ...] = ()
    user_domain: str = ""
    timeout: float = 20.0


def smtp_settings_from(section: Mapping[str, Any] | None) -> SmtpSettings | None:
    """Build settings from a config mapping (e.g. the ``notifications.smtp`` section)."""
    if not section or not section.get("host"):
        return None

    def addresses(value: Any) -> tuple[str, ...]:
        if not value:
            return ()
        return (value,) if isinstance(value, str) else tuple(value)

    return SmtpSettings(
        host=str(section["host"]),
        port=int(section.get("port", 25)),
        starttls=bool(section.get("starttls", False)),
        ca_file=section.get("ca_file") or None,
        username=section.get("username"),
        password=section.get("password"),
        sender=str(section.get("from", section.get("sender", "schoolgate@localhost"))),
        it_support=addresses(section.get("it_support")),
        slt=addresses(section.get("slt")),
        esafety=addresses(section.get("esafety")),
        dsl=addresses(section.get("dsl")),
        user_domain=str(section.get("user_domain", "")),
        timeout=float(section.get("timeout", 20.0)),
    )


@dataclass(frozen=True)
class NotificationSettings:
    escalate_after_hours: float | None = 24.0  # None: never escalate automatically
    smtp: SmtpSettings | None = None
    webhook: str | None = None


def read_notifications(sec: Section | None) -> NotificationSettings:
    """Validate the ``notifications`` section; problems go to ``sec.issues`` with file, line and
    field (``smtp`` is kept only when it has none)."""
    if sec is None:
        return NotificationSettings()
    sec.check_keys({"smtp", "webhook", "escalate_after_hours"})
    escalate: float | None = 24.0
    if sec.data.get("escalate_after_hours") is False:
        escalate = None
    else:
        value = sec.get("escalate_after_hours", (int, float), "a number of hours (or false)")
        if value is not None:
            if value <= 0:
                sec.error("escalate_after_hours", f"expected a positive number, got {value}")
            else:
                escalate = float(value)
    smtp = sec.section("smtp")
    if smtp is not None:
        smtp.check_keys(SMTP_KEYS)
        smtp.text("host", required=True)
        smtp.number("port", minimum=1, maximum=65535)
        smtp.flag("starttls")
        ca_file = smtp.text("ca_file")
        if ca_file and not Path(ca_file).is_absolute():
            smtp.error("ca_file", f"expected the full path of a PEM file, got {ca_file!r}")
        elif ca_file and not Path(ca_file).is_file():
            smtp.error("ca_file", f"file not found: {ca_file}")
        for key in ("it_support", "slt", "esafety", "dsl"):
            for text, line, field_name in smtp.strings(key):
                if "@" not in text:
                    smtp.issues.add(smtp.file, line, field_name, f"not an e-mail address: {text!r}")
        smtp.get("timeout", (int, float), "a number of seconds")
    webhook = sec.text("webhook")
    if webhook and not webhook.startswith(("http://", "https://")):
        sec.error("webhook", f"expected an http(s):// address, got {webhook!r}")
        webhook = None
    return NotificationSettings(
        escalate_after_hours=escalate,
        smtp=smtp_settings_from(smtp.data) if smtp is not None and not smtp.issues else None,
        webhook=webhook,
    )
