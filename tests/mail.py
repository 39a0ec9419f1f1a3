"""A real SMTP server's inbox (aiosmtpd) for tests of the mail the portal and jobs send."""

from __future__ import annotations

import time
from email import message_from_bytes


class Inbox:
    """aiosmtpd's handler: every message received, with its recipients, parsed."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], object]] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
        self.messages.append((list(envelope.rcpt_tos), message_from_bytes(envelope.content)))
        return "250 OK"

    def wait(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.messages) >= count, self.messages
