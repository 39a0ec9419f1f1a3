"""Bindings that last for a session: the sign-in page's, and Windows single sign-on's.

A session binding is renewed by the address's own traffic (``idle_minutes``; the cache renews
it, :mod:`schoolgate.bindings.cache`) and never lasts past ``max_minutes`` from the sign-in. It
ends at sign-out, and when the address is seen with another device. What tells that, in order
of trust:

* a DHCP lease for the address with another MAC address, or the lease of the signed-in device
  ending (released, expired) - :func:`apply_lease_changes`, from the lease files;
* RADIUS accounting binding the address to another device (``Calling-Station-Id``) - done by
  :func:`schoolgate.storage.bindings.bind` for every source.

The MAC address of the signed-in device is taken from the DHCP lease at sign-in. Without lease
files or RADIUS (a routed network where the gateway sees no MAC address), only the idle timeout
and sign-out end a session. The TLS or HTTP "fingerprint" of the traffic is not used: every
app on a device has its own (and browsers change theirs with each update), so it would sign
pupils out all day, and a pupil can copy another device's.

Sign-in attempts are throttled per user name and per address, before the directory is asked:
a pupil guessing a teacher's password would otherwise lock the teacher's account out.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from schoolgate.bindings.dhcp import Lease
from schoolgate.bindings.directory import (
    Directory,
    DirectoryError,
    DirectoryUnavailable,
    DirectoryUser,
)
from schoolgate.bindings.names import Principal, normalise_address
from schoolgate.core.binding import Binding
from schoolgate.core.identity_settings import NegotiateSettings, SignInSettings
from schoolgate.portal.auth import RateLimiter
from schoolgate.storage import bindings as store
from schoolgate.storage.db import utcnow

log = logging.getLogger(__name__)

SIGN_IN_ORIGIN = "sign-in page"
DHCP_ACTOR = "dhcp"


def bind_session(
    db: Session,
    *,
    source: str,
    address: str,
    user: str | None,
    kind: str = "person",
    role: str | None = None,
    mac: str | None = None,
    device: str | None = None,
    session_id: str | None = None,
    origin: str,
    actor: str,
    now: datetime,
    idle_minutes: int,
    max_minutes: int,
) -> store.BindOutcome:
    """A binding renewed by traffic for ``idle_minutes``, ending ``max_minutes`` from now."""
    ends_by = now + timedelta(minutes=max_minutes)
    return store.bind(
        db,
        address=address,
        source=source,
        user=user,
        kind=kind,
        role=role,
        device=device,
        mac=mac,
        session_id=session_id,
        origin=origin,
        now=now,
        expires_at=min(now + timedelta(minutes=idle_minutes), ends_by),
        idle_seconds=idle_minutes * 60,
        ends_by=ends_by,
        actor=actor,
    )


def record_negotiate(
    db: Session,
    *,
    address: str,
    principal: Principal,
    protocol: str | None,
    settings: NegotiateSettings,
    now: datetime,
    lease: Lease | None = None,
) -> store.BindOutcome:
    """Bind the address of a connection that completed a Negotiate handshake."""
    person = principal.is_person
    return bind_session(
        db,
        source="negotiate",
        address=address,
        user=principal.name if person else None,
        kind=principal.kind,
        mac=lease.mac if lease else None,
        device=(lease.device if lease else None) if person else principal.name,
        origin=f"negotiate ({protocol or 'kerberos'})",
        actor=principal.name,
        now=now,
        idle_minutes=settings.idle_minutes,
        max_minutes=settings.max_minutes,
    )


def apply_lease_changes(
    db: Session, old: Mapping[str, Lease], new: Mapping[str, Lease], now: datetime
) -> list[Binding]:
    """End the bindings of devices that left an address: another device now holds its lease,
    or the device's own lease ended. Bindings with no known MAC address are left alone."""
    ended: list[Binding] = []
    for address, lease in new.items():
        before = old.get(address)
        if lease.held(now) and lease.mac:
            if before is not None and before.mac == lease.mac and before.held(now):
                continue
            ended += store.end_bindings(
                db,
                address=address,
                other_mac_than=lease.mac,
                reason=f"the address is now leased to another device ({lease.device})",
                actor=DHCP_ACTOR,
                now=now,
            )
        elif not lease.held(now) and lease.mac and (before is None or before.held(now)):
            ended += store.end_bindings(
                db,
                address=address,
                mac=lease.mac,
                reason="the device's DHCP lease ended (released or expired)",
                actor=DHCP_ACTOR,
                now=now,
            )
    return ended


class TooManyAttempts(DirectoryError):
    def __init__(self, detail: str, minutes: int) -> None:
        super().__init__(detail)
        self.message = (
            f"Too many wrong sign-ins. Wait up to {minutes} minute{'s' if minutes != 1 else ''} "
            "and try again, or ask IT Support."
        )


@dataclass(frozen=True)
class SignedIn:
    binding: Binding
    user: DirectoryUser
    session_id: str  # for the portal's cookie: signs out exactly this session


class SignInService:
    """The sign-in page's work: check the password, bind the address, sign out.

    Blocking (the directory, the database): for the portal's worker threads. ``devices`` gives
    the DHCP lease of an address (the device's MAC address and name); ``on_change`` is called
    after a binding was written (the cache's ``wake``).
    """

    def __init__(
        self,
        sessions: sessionmaker,
        settings: SignInSettings,
        *,
        directory: Directory,
        devices: Callable[[str], Lease | None] | None = None,
        clock: Callable[[], datetime] = utcnow,
        throttle: RateLimiter | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.directory = directory
        self.devices = devices
        self.clock = clock
        # Wrong passwords per user name and per address (the same limiter as the portal's
        # staff login).
        self.throttle = throttle or RateLimiter(
            settings.max_failures, settings.lockout_minutes * 60
        )
        self.on_change = on_change

    def sign_in(self, address: str, username: str, password: str) -> SignedIn:
        """Raises a :class:`~schoolgate.bindings.directory.DirectoryError` (its ``message`` is
        for the page) or ValueError for an address that is not one."""
        address = normalise_address(address)
        name_key = f"user:{username.strip().lower()}"
        address_key = f"address:{address}"
        for key in (name_key, address_key):
            if not self.throttle.allowed(key):
                raise TooManyAttempts(f"{key}: too many failures", self.settings.lockout_minutes)
        try:
            user = self.directory.authenticate(username, password)
        except DirectoryError as exc:
            if not isinstance(exc, DirectoryUnavailable):
                # The directory being down is not the person's failure: it does not count.
                self.throttle.hit(name_key)
                self.throttle.hit(address_key)
            log.info("schoolgate: sign-in from %s refused: %s", address, exc.detail)
            raise
        # The address's count stays: signing in as oneself between guesses clears nothing.
        self.throttle.reset(name_key)
        lease = self.devices(address) if self.devices is not None else None
        token = secrets.token_urlsafe(18)
        now = self.clock()
        outcome = store.in_transaction(
            self.sessions,
            lambda db: bind_session(
                db,
                source="sign_in",
                address=address,
                user=user.username,
                role=user.role,
                mac=lease.mac if lease else None,
                device=lease.device if lease else None,
                session_id=token,
                origin=SIGN_IN_ORIGIN,
                actor=user.username,
                now=now,
                idle_minutes=self.settings.idle_minutes,
                max_minutes=self.settings.max_minutes,
            ),
        )
        log.info("schoolgate: signed in: %s", outcome.binding.describe())
        self._changed()
        return SignedIn(outcome.binding, user, token)

    def sign_out(
        self, address: str, *, session_id: str | None = None, by: str = SIGN_IN_ORIGIN
    ) -> list[Binding]:
        """End the sign-in on ``address`` (only that session, when ``session_id`` is given)."""
        address = normalise_address(address)
        now = self.clock()
        ended = store.in_transaction(
            self.sessions,
            lambda db: store.end_bindings(
                db,
                address=address,
                source="sign_in",
                session_id=session_id,
                reason=f"signed out ({by})",
                actor=by,
                now=now,
            ),
        )
        if ended:
            self._changed()
        return ended

    def current(self, address: str) -> Binding | None:
        """The sign-in in force on ``address`` (for the page: "signed in as ...")."""
        address = normalise_address(address)
        now = self.clock()
        with self.sessions() as db:
            found = [
                b
                for b in store.find(db, address=address)
                if b.source == "sign_in" and b.in_force(now)
            ]
        return found[0] if found else None

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()
