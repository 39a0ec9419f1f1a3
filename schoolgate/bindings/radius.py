"""RADIUS accounting (RFC 2866) from the Wi-Fi controllers and 802.1X switches.

The controller tells, for each session, who authenticated (``User-Name``), from which device
(``Calling-Station-Id``, its MAC address) and on which address (``Framed-IP-Address``,
``Framed-IPv6-Address``): Accounting-Start and Interim-Update bind the address to the person,
Stop ends the binding, Accounting-On/Off (the controller restarted) ends every binding it
reported.

Packets are checked on arrival, on whichever event loop runs the server (cheap: an MD5): a
source outside ``clients``, a bad Request Authenticator or Message-Authenticator, or a
malformed packet is dropped and counted (:class:`RadiusCounters`). The database write happens
on the :class:`~schoolgate.bindings.writer.BindingWriter`'s thread, and the
Accounting-Response is sent only once it is stored: RFC 2866 says a server must not answer what
it could not record, so the controller resends it until the database is back.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pyrad.dictionary import Dictionary
from pyrad.packet import AccountingRequest, AccountingResponse, AcctPacket, StatusServer
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.bindings.names import (
    Principal,
    UnusableName,
    clean_device_name,
    normalise_address,
    normalise_mac,
    parse_principal,
)
from schoolgate.bindings.writer import BindingWriter
from schoolgate.core.identity_settings import RadiusSettings
from schoolgate.storage.db import utcnow

log = logging.getLogger(__name__)

# The attributes schoolgate reads (RFC 2865, 2866, 2869, 3162, 6911), in pyrad's format. Others
# arrive keyed by their number and are left alone.
DICTIONARY_TEXT = """
ATTRIBUTE User-Name 1 string
ATTRIBUTE NAS-IP-Address 4 ipaddr
ATTRIBUTE NAS-Port 5 integer
ATTRIBUTE Service-Type 6 integer
ATTRIBUTE Framed-IP-Address 8 ipaddr
ATTRIBUTE Class 25 octets
ATTRIBUTE Session-Timeout 27 integer
ATTRIBUTE Called-Station-Id 30 string
ATTRIBUTE Calling-Station-Id 31 string
ATTRIBUTE NAS-Identifier 32 string
ATTRIBUTE Proxy-State 33 octets
ATTRIBUTE Acct-Status-Type 40 integer
ATTRIBUTE Acct-Delay-Time 41 integer
ATTRIBUTE Acct-Input-Octets 42 integer
ATTRIBUTE Acct-Output-Octets 43 integer
ATTRIBUTE Acct-Session-Id 44 string
ATTRIBUTE Acct-Authentic 45 integer
ATTRIBUTE Acct-Session-Time 46 integer
ATTRIBUTE Acct-Terminate-Cause 49 integer
ATTRIBUTE Acct-Multi-Session-Id 50 string
ATTRIBUTE Event-Timestamp 55 date
ATTRIBUTE NAS-Port-Type 61 integer
ATTRIBUTE Message-Authenticator 80 octets
ATTRIBUTE NAS-Port-Id 87 string
ATTRIBUTE NAS-IPv6-Address 95 ipv6addr
ATTRIBUTE Framed-IPv6-Address 168 ipv6addr
VALUE Acct-Status-Type Start 1
VALUE Acct-Status-Type Stop 2
VALUE Acct-Status-Type Interim-Update 3
VALUE Acct-Status-Type Accounting-On 7
VALUE Acct-Status-Type Accounting-Off 8
VALUE Acct-Terminate-Cause User-Request 1
VALUE Acct-Terminate-Cause Lost-Carrier 2
VALUE Acct-Terminate-Cause Idle-Timeout 4
VALUE Acct-Terminate-Cause Session-Timeout 5
VALUE Acct-Terminate-Cause Admin-Reset 6
VALUE Acct-Terminate-Cause NAS-Reboot 11
"""

STATUS_NAMES = {
    1: "start",
    2: "stop",
    3: "interim",
    7: "accounting-on",
    8: "accounting-off",
}


def radius_dictionary() -> Dictionary:
    return Dictionary(io.StringIO(DICTIONARY_TEXT))


@dataclass
class RadiusCounters:
    """What the server received and did with it (read for metrics; totals since start)."""

    received: int = 0
    recorded: int = 0  # stored, answered
    answered_without_binding: int = 0  # no address, a machine we keep no binding for, ...
    status_server: int = 0
    dropped_unknown_client: int = 0
    dropped_bad_authenticator: int = 0
    dropped_malformed: int = 0
    dropped_not_accounting: int = 0
    dropped_busy: int = 0  # the writer's queue was full; the controller resends
    write_failed: int = 0  # the database refused; the controller resends
    unusable_user: int = 0  # anonymous or malformed User-Name: answered, nobody bound

    def snapshot(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class AccountingRecord:
    """One Accounting-Request, read and checked: what it means for the bindings."""

    status: str  # "start", "interim", "stop", "accounting-on", "accounting-off"
    origin: str  # "radius 10.0.0.2 (wlc-1)": the NAS that reported it
    addresses: tuple[str, ...] = ()
    principal: Principal | None = None
    mac: str | None = None
    device: str | None = None
    session_id: str | None = None
    terminate_cause: str | None = None
    raw_user: str | None = field(default=None, repr=False)


class IgnoredPacket(ValueError):
    """A valid packet that binds nobody (answered, counted, not stored)."""


def _first(packet: AcctPacket, name: str) -> Any:
    try:
        values = packet[name]
    except KeyError:
        return None
    return values[0] if values else None


def _text(value: Any, limit: int = 200) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return clean_device_name(str(value), limit)


def _usable_address(text: str | None) -> str | None:
    if not text:
        return None
    try:
        address = ipaddress.ip_address(normalise_address(str(text)))
    except ValueError:
        return None
    if address.is_unspecified or address.is_multicast or address.is_loopback:
        return None
    if address.version == 4 and int(address) in (0xFFFFFFFF, 0xFFFFFFFE):
        return None  # "the user chooses" / "the NAS chooses" (RFC 2865 section 5.8)
    return str(address)


def read_accounting(
    packet: AcctPacket, source_ip: str, *, keep_realm: bool = False
) -> AccountingRecord:
    """An :class:`AccountingRecord` from a verified Accounting-Request. Raises
    :class:`IgnoredPacket` for one that binds nobody, ValueError for a malformed one."""
    status_code = _first(packet, "Acct-Status-Type")
    if isinstance(status_code, str):  # pyrad gives the VALUE name when the dictionary has one
        status = status_code.lower().replace("interim-update", "interim")
    elif isinstance(status_code, int):
        status = STATUS_NAMES.get(status_code, f"type {status_code}")
    else:
        raise ValueError("no Acct-Status-Type")
    nas = _text(_first(packet, "NAS-IP-Address")) or _text(_first(packet, "NAS-IPv6-Address"))
    nas = nas or source_ip
    name = _text(_first(packet, "NAS-Identifier"), 64)
    origin = f"radius {nas}" + (f" ({name})" if name else "")
    if status in ("accounting-on", "accounting-off"):
        return AccountingRecord(status, origin)
    if status not in ("start", "interim", "stop"):
        raise IgnoredPacket(f"Acct-Status-Type {status} is not about a session")
    addresses = tuple(
        a
        for a in (
            _usable_address(_text(_first(packet, "Framed-IP-Address"))),
            _usable_address(_text(_first(packet, "Framed-IPv6-Address"))),
        )
        if a is not None
    )
    session_id = _text(_first(packet, "Acct-Session-Id"))
    calling = _text(_first(packet, "Calling-Station-Id"), 100)
    mac = normalise_mac(calling)
    raw_user = _first(packet, "User-Name")
    if isinstance(raw_user, bytes):
        raw_user = raw_user.decode("utf-8", errors="replace")
    cause = _first(packet, "Acct-Terminate-Cause")
    record = AccountingRecord(
        status,
        origin,
        addresses,
        None,
        mac,
        mac or calling,
        session_id,
        str(cause) if cause is not None else None,
        raw_user,
    )
    if status == "stop":
        if not addresses and not session_id:
            raise IgnoredPacket("Stop without an address or Acct-Session-Id")
        principal = None
        if raw_user:
            try:
                principal = parse_principal(raw_user, keep_realm=keep_realm)
            except UnusableName:
                principal = None
        return _with(record, principal)
    if not addresses:
        # Controllers often send Start before the device has an address; the address comes
        # in an Interim-Update.
        raise IgnoredPacket("no Framed-IP-Address yet")
    if raw_user is None:
        raise IgnoredPacket("no User-Name")
    principal = parse_principal(raw_user, keep_realm=keep_realm)  # UnusableName: the caller
    return _with(record, principal)


def _with(record: AccountingRecord, principal: Principal | None) -> AccountingRecord:
    return AccountingRecord(
        record.status,
        record.origin,
        record.addresses,
        principal,
        record.mac,
        record.device if principal is None or principal.is_person else principal.name,
        record.session_id,
        record.terminate_cause,
        record.raw_user,
    )


def apply_accounting(
    db: Session, record: AccountingRecord, *, now: datetime, idle_minutes: int
) -> list[str]:
    """Store what ``record`` means for the bindings; a line per change (for the log)."""
    from schoolgate.storage import bindings as store

    actor = record.origin
    if record.status in ("accounting-on", "accounting-off"):
        ended = store.end_bindings(
            db,
            source="radius",
            origin=record.origin,
            reason=f"the controller restarted ({record.status})",
            actor=actor,
            now=now,
        )
        return [f"ended {b.describe()}" for b in ended]
    if record.status == "stop":
        reason = "session stopped" + (
            f" ({record.terminate_cause})" if record.terminate_cause else ""
        )
        who = record.principal
        ended = []
        if record.addresses:
            for address in record.addresses:
                ended += store.end_bindings(
                    db,
                    source="radius",
                    address=address,
                    session_id=record.session_id,
                    user=who.name if who and who.is_person and not record.session_id else None,
                    reason=reason,
                    actor=actor,
                    now=now,
                )
        else:
            ended = store.end_bindings(
                db,
                source="radius",
                session_id=record.session_id,
                origin=record.origin,
                reason=reason,
                actor=actor,
                now=now,
            )
        return [f"ended {b.describe()}" for b in ended]
    principal = record.principal
    assert principal is not None
    lines = []
    for address in record.addresses:
        outcome = store.bind(
            db,
            address=address,
            source="radius",
            user=principal.name if principal.is_person else None,
            kind=principal.kind,
            device=record.device,
            mac=record.mac,
            session_id=record.session_id,
            origin=record.origin,
            now=now,
            expires_at=now + timedelta(minutes=idle_minutes),
            actor=actor,
        )
        if outcome.change != "renewed":
            lines.append(f"{outcome.change} {outcome.binding.describe()}")
    return lines


def accounting_store(
    writer: BindingWriter,
    sessions: sessionmaker,
    settings: RadiusSettings,
    *,
    clock: Callable[[], datetime] = utcnow,
) -> Callable[[AccountingRecord, Callable[[BaseException | None], None]], bool]:
    """The ``submit`` of :class:`RadiusAccountingProtocol`: stores records on ``writer``."""
    from schoolgate.storage.bindings import in_transaction

    def submit(record: AccountingRecord, on_stored: Callable[[BaseException | None], None]) -> bool:
        def work() -> None:
            lines = in_transaction(
                sessions,
                lambda db: apply_accounting(
                    db, record, now=clock(), idle_minutes=settings.idle_minutes
                ),
            )
            for line in lines:
                log.info("schoolgate: %s: %s", record.origin, line)

        return writer.submit(work, on_stored)

    return submit


class RadiusAccountingProtocol(asyncio.DatagramProtocol):
    """The accounting port: checks each datagram on the loop, hands stores to ``submit``.

    ``submit(record, on_stored)`` queues the store on another thread and calls
    ``on_stored(error_or_None)`` from that thread when done; it returns False when it cannot
    take more (the packet is dropped and the controller resends it).
    """

    def __init__(
        self,
        settings: RadiusSettings,
        submit: Callable[[AccountingRecord, Callable[[BaseException | None], None]], bool],
    ) -> None:
        self.settings = settings
        self.submit = submit
        self.secret = settings.secret
        self.dictionary = radius_dictionary()
        self.counters = RadiusCounters()
        self.transport: asyncio.DatagramTransport | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._v4 = tuple(
            (int(n.network_address), int(n.netmask)) for n in settings.clients if n.version == 4
        )
        self._v6 = tuple(n for n in settings.clients if n.version == 6)
        self._warned: dict[tuple[str, str], float] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.loop = asyncio.get_running_loop()

    def _allowed(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(normalise_address(ip))
        except ValueError:
            return False
        if address.version == 4:
            value = int(address)
            return any(value & mask == net for net, mask in self._v4)
        return any(address in net for net in self._v6)

    def _warn(self, ip: str, what: str, detail: str = "") -> None:
        """At most one line a minute per source and kind of drop (a flood stays one line)."""
        now = time.monotonic()
        key = (ip, what)
        if now - self._warned.get(key, -3600.0) < 60:
            return
        if len(self._warned) > 10_000:
            self._warned.clear()
        self._warned[key] = now
        log.warning("schoolgate: RADIUS accounting from %s dropped: %s%s", ip, what, detail)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        counters = self.counters
        counters.received += 1
        ip = str(addr[0])
        if not self._allowed(ip):
            counters.dropped_unknown_client += 1
            self._warn(ip, "not in identity.radius.clients")
            return
        try:
            packet = AcctPacket(packet=data, secret=self.secret, dict=self.dictionary)
        except Exception as exc:  # noqa: BLE001 - pyrad raises several kinds on bad input
            counters.dropped_malformed += 1
            self._warn(ip, "malformed packet", f" ({exc})")
            return
        if packet.code == StatusServer:
            self._status_server(packet, addr, ip)
            return
        if packet.code != AccountingRequest:
            counters.dropped_not_accounting += 1
            self._warn(ip, f"not an Accounting-Request (code {packet.code})")
            return
        if not self._authentic(packet):
            counters.dropped_bad_authenticator += 1
            self._warn(ip, "bad authenticator (is the shared secret the same on both sides?)")
            return
        try:
            record = read_accounting(packet, ip, keep_realm=self.settings.keep_realm)
        except UnusableName as exc:
            counters.unusable_user += 1
            log.info("schoolgate: RADIUS accounting from %s binds nobody: %s", ip, exc)
            self._answer(packet, addr)
            return
        except IgnoredPacket:
            counters.answered_without_binding += 1
            self._answer(packet, addr)
            return
        except Exception as exc:  # noqa: BLE001 - an attribute pyrad could not decode
            counters.dropped_malformed += 1
            self._warn(ip, "unreadable attributes", f" ({exc})")
            return

        loop = self.loop

        def on_stored(error: BaseException | None) -> None:
            if error is not None:
                counters.write_failed += 1
                return  # not answered: the controller resends
            counters.recorded += 1
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self._answer, packet, addr)

        if not self.submit(record, on_stored):
            counters.dropped_busy += 1
            self._warn(ip, "the binding writer is busy")

    def _authentic(self, packet: AcctPacket) -> bool:
        try:
            if not packet.VerifyAcctRequest():
                return False
            if packet.message_authenticator:
                return bool(packet.verify_message_authenticator())
        except Exception:  # noqa: BLE001 - a malformed authenticator is a bad one
            return False
        return True

    def _status_server(self, packet: AcctPacket, addr: tuple[Any, ...], ip: str) -> None:
        # RFC 5997: a controller checking the server is alive; signed with a
        # Message-Authenticator, answered with an Accounting-Response.
        if not self._authentic(packet):
            self.counters.dropped_bad_authenticator += 1
            self._warn(ip, "Status-Server with a bad Message-Authenticator")
            return
        self.counters.status_server += 1
        self._answer(packet, addr)

    def _answer(self, packet: AcctPacket, addr: tuple[Any, ...]) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        reply = packet.CreateReply()
        reply.code = AccountingResponse
        self.transport.sendto(reply.ReplyPacket(), addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("schoolgate: RADIUS socket error: %s", exc)


class RadiusListener:
    """The accounting server on a loop of its own, in a thread (so that it never waits behind
    the proxy's work, nor the proxy behind it). ``start()`` returns once the port is open."""

    def __init__(
        self,
        settings: RadiusSettings,
        submit: Callable[[AccountingRecord, Callable[[BaseException | None], None]], bool],
    ) -> None:
        self.protocol = RadiusAccountingProtocol(settings, submit)
        self.settings = settings
        self.address: tuple[str, int] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def counters(self) -> RadiusCounters:
        return self.protocol.counters

    def start(self, timeout: float = 10) -> None:
        self._thread = threading.Thread(target=self._run, name="schoolgate-radius", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the RADIUS accounting server did not start")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            transport, _ = loop.run_until_complete(
                loop.create_datagram_endpoint(
                    lambda: self.protocol, local_addr=(self.settings.host, self.settings.port)
                )
            )
        except OSError as exc:
            self._error = OSError(
                exc.errno,
                f"cannot listen for RADIUS accounting on "
                f"{self.settings.host}:{self.settings.port}: {exc.strerror or exc}",
            )
            self._ready.set()
            loop.close()
            return
        self.address = transport.get_extra_info("sockname")[:2]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            transport.close()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    def stop(self, timeout: float = 10) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
        self._thread = None
