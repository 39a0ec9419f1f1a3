"""The ``notifications`` section of the config: who is e-mailed (SMTP) or told (a webhook) when
a request, an escalation or an alert needs someone, and when unanswered requests go to SLT.
Read by the config check and by the jobs and portal that send them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schoolgate.core.configfile import Section

# -- the section's keys -----------------------------------------------------------
SMTP_KEYS = {
    "host", "port", "starttls", "ca_file", "username", "password", "from", "sender",
    "it_support", "slt", "esafety", "dsl", "user_domain", "timeout",
}  # fmt: skip


@dataclass(frozen=True)
class NotificationSettings:
    escalate_after_hours: float | None = 24.0  # None: never escalate automatically
    smtp: dict[str, Any] | None = None
    webhook: str | None = None


def read_notifications(sec: Section | None) -> NotificationSettings:
    """Validate the ``notifications`` section (the portal reads ``smtp`` and ``webhook``)."""
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
    webhook = sec.text("webhook")
    if webhook and not webhook.startswith(("http://", "https://")):
        sec.error("webhook", f"expected an http(s):// address, got {webhook!r}")
        webhook = None
    return NotificationSettings(
        escalate_after_hours=escalate,
        smtp=dict(smtp.data) if smtp is not None else None,
        webhook=webhook,
    )
