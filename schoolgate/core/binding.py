"""A binding as a plain, immutable value: who a source says is on an address, until when."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

# Sources that bind an address to a person, in the default order of trust (an order in the
# config wins): a Kerberos ticket proves the person at the keyboard, RADIUS accounting proves
# the person who authenticated the device, a sign-in proves who typed a password on it.
SOURCES: tuple[str, ...] = ("negotiate", "radius", "sign_in")
KINDS: tuple[str, ...] = ("person", "machine")


@dataclass(frozen=True, slots=True)
class Binding:
    id: int
    address: str
    source: str  # one of SOURCES
    kind: str  # "person", or "machine" (a device with no person: a computer account, MAB)
    user: str | None
    role: str | None  # from the directory's groups at sign-in; the roster beats it
    device: str | None  # a name: the machine account, the DHCP host name
    mac: str | None  # aa:bb:cc:dd:ee:ff when a source told it
    session_id: str | None  # Acct-Session-Id, or the sign-in session's reference
    origin: str  # who reported it: "radius 10.0.0.2 (wlc-1)", "sign-in page", ...
    started_at: datetime
    last_seen: datetime
    expires_at: datetime | None  # lapses then unless renewed (accounting, traffic)
    idle_seconds: int | None  # traffic renews it by this much (sign-in, Negotiate)
    ends_by: datetime | None  # never renewed past this (the longest a session may last)
    ended_at: datetime | None = None
    end_reason: str | None = None
    version: int = 0

    @property
    def active(self) -> bool:
        return self.ended_at is None

    def in_force(self, now: datetime) -> bool:
        return self.ended_at is None and (self.expires_at is None or self.expires_at > now)

    def who(self) -> str:
        if self.kind == "machine":
            return f"machine {self.device or '?'}"
        return self.user or "?"

    def describe(self) -> str:
        """``pupil1 on 10.20.1.5 by radius (device aa:bb:..; until 2026-11-27 10:00Z)``."""
        extra = []
        if self.device and self.kind != "machine":
            extra.append(f"device {self.device}")
        if self.mac:
            extra.append(f"MAC {self.mac}")
        if self.role:
            extra.append(f"role {self.role}")
        if self.expires_at is not None:
            extra.append(f"until {self.expires_at:%Y-%m-%d %H:%M}Z")
        tail = f" ({'; '.join(extra)})" if extra else ""
        return f"{self.who()} on {self.address} by {self.source}{tail}"

    def to_json(self) -> dict[str, Any]:
        def when(value: datetime | None) -> str | None:
            return value.isoformat() if value is not None else None

        return {
            "id": self.id,
            "address": self.address,
            "source": self.source,
            "kind": self.kind,
            "user": self.user,
            "role": self.role,
            "device": self.device,
            "mac": self.mac,
            "origin": self.origin,
            "started_at": when(self.started_at),
            "last_seen": when(self.last_seen),
            "expires_at": when(self.expires_at),
            "ends_by": when(self.ends_by),
            "ended_at": when(self.ended_at),
            "end_reason": self.end_reason,
        }
