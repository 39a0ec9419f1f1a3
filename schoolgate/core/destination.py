"""Where a connection really goes, checked against the name it claims (pure).

A client that names a site (a CONNECT target, an absolute URL) leaves the gateway to find the
site's address, so the connection goes where the name says. A client that chooses an
*address* (CONNECT to an IP, any connection in transparent mode, ``http://<address>/``) and
names a site only in the SNI or the Host header could be talking to any server: the name is
then verified, as Squid's ``host_verify_strict`` does, by resolving it with the gateway's own
resolver and requiring the address among its answers.

:func:`verify` turns (address, name, the resolver's answer) into a :class:`Destination`, and
:func:`handling` says what to do with it: pass it, refuse it, or connect to the verified
name's own address instead of the client's (never forward to the client's address on the
strength of a name it did not prove).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Collection
from dataclasses import dataclass
from enum import StrEnum

from schoolgate.core.authority import AuthorityError, address_host, parse_server_name


class Verdict(StrEnum):
    NAMED = "named"  # the client named the destination: the gateway resolves it itself
    VERIFIED = "verified"  # the client's address is one of the name's addresses
    LOCAL = "local"  # an address the school lets clients reach by address (no name needed)
    NO_NAME = "no_name"  # an address, and no name for it
    MISMATCH = "mismatch"  # the client's address is not one of the name's addresses
    UNRESOLVABLE = "unresolvable"  # the name has no address
    LOOKUP_FAILED = "lookup_failed"  # the gateway's resolver failed: nothing can be verified
    MALFORMED = "malformed"  # not exactly one host (and port): a Host, authority or SNI


# Verdicts that mean "the filter does not know where this goes".
UNKNOWN = frozenset({Verdict.NO_NAME, Verdict.MISMATCH, Verdict.UNRESOLVABLE, Verdict.MALFORMED})
GOOD = frozenset({Verdict.NAMED, Verdict.VERIFIED, Verdict.LOCAL})


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    """What the gateway's resolver says of one name. ``addresses`` are the current answers in
    the resolver's order; ``known`` also holds the answers of the last few lookups (a client's
    DNS cache may hold one of them a while after the gateway's answer moved on); ``error`` is
    ``"no_address"`` (the name does not exist, or has no address) or ``"failed"``."""

    name: str
    addresses: tuple[str, ...] = ()
    known: frozenset[str] = frozenset()
    error: str | None = None
    at: float = 0.0  # when it was looked up (the resolver's clock)

    def has(self, address: str) -> bool:
        return address in self.known or address in self.addresses


@dataclass(frozen=True, slots=True)
class Destination:
    """The verdict on one destination, and the sentence that explains it."""

    verdict: Verdict
    address: str | None = None  # the address the client chose, if it chose one
    name: str | None = None  # the name it claimed
    detail: str = ""
    answers: tuple[str, ...] = ()  # the name's addresses, when they were looked up

    @property
    def ok(self) -> bool:
        return self.verdict in GOOD

    @property
    def unknown(self) -> bool:
        return self.verdict in UNKNOWN


NAMED = Destination(Verdict.NAMED)
# The good verdicts, once each: a request to an address gets one of these (no detail to keep),
# and building a frozen value for every request would cost more than the check itself.
LOCAL = Destination(Verdict.LOCAL, detail="a local address")
VERIFIED = Destination(Verdict.VERIFIED, detail="an address of the name")


def verify(
    address: str,
    name: str | None,
    answer: DnsAnswer | None,
    *,
    local: Callable[[str], bool],
) -> Destination:
    """The verdict on a connection to ``address`` that claims to be ``name`` (None: no name;
    ``answer`` is the resolver's for ``name``). ``local(address)``: whether the school lets
    clients reach the address without a name (its own networks)."""
    if name is None or name == address:
        if local(address):
            return LOCAL
        return Destination(
            Verdict.NO_NAME,
            address,
            None,
            f"a connection to the address {address} that names no site",
        )
    if answer is None or answer.error == "failed":
        return Destination(
            Verdict.LOOKUP_FAILED,
            address,
            name,
            f"the gateway could not look up {name} to check it is at {address}",
        )
    if answer.error is not None or not answer.addresses:
        return Destination(
            Verdict.UNRESOLVABLE,
            address,
            name,
            f"{name} has no address, yet the connection to {address} claims to be it",
        )
    if answer.has(address):
        return VERIFIED
    return Destination(
        Verdict.MISMATCH,
        address,
        name,
        f"the connection goes to {address}, which is not an address of {name} "
        f"({', '.join(answer.addresses[:4])}{', ...' if len(answer.addresses) > 4 else ''})",
        answer.addresses,
    )


def malformed(what: str, problem: str) -> Destination:
    return Destination(Verdict.MALFORMED, None, None, f"{what}: {problem}")


class Handling(StrEnum):
    PASS = "pass"
    REFUSE = "refuse"
    CONNECT_TO_NAME = "connect_to_name"  # go to the name's own address, not the client's


def handling(destination: Destination, *, filtered: bool, connect_to_name: bool) -> Handling:
    """What to do with a destination, for a role that is filtered or not.

    Refused for everyone: what cannot be read (malformed), what cannot be verified (the
    resolver failed) and a name with no address. For a filtered role, an address with no name,
    or one that is not the name's, is refused (or, with ``connect_to_name``, the connection goes
    to the name's own address instead); for other roles the first passes and the second goes
    to the name's address.
    """
    verdict = destination.verdict
    if verdict in GOOD:
        return Handling.PASS
    if verdict in (Verdict.MALFORMED, Verdict.LOOKUP_FAILED, Verdict.UNRESOLVABLE):
        return Handling.REFUSE
    if verdict is Verdict.NO_NAME:
        return Handling.REFUSE if filtered else Handling.PASS
    # MISMATCH
    if filtered and not connect_to_name:
        return Handling.REFUSE
    return Handling.CONNECT_TO_NAME


def first_shared(addresses: Collection[str], answer: DnsAnswer) -> str | None:
    """The first of ``addresses`` that is also one of the name's, if any."""
    for address in addresses:
        if answer.has(address):
            return address
    return None


# -- destinations a tunnel may reach with something other than TLS or HTTP --------------------


@dataclass(frozen=True, slots=True)
class RawDestination:
    """One entry of ``circumvention.allowed_raw_destinations``: a network or a name (and its
    sub-domains), on one port or any."""

    text: str
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None
    name: str | None
    port: int | None

    def allows(self, host: str, port: int | None) -> bool:
        if self.port is not None and port != self.port:
            return False
        if self.network is not None:
            address = address_host(host)
            if address is None:
                return False
            ip = ipaddress.ip_address(address)
            return ip.version == self.network.version and ip in self.network
        return host == self.name or host.endswith("." + self.name)  # type: ignore[operator]


def parse_raw_destination(text: str) -> RawDestination:
    """``10.1.2.3``, ``10.1.0.0/16``, ``10.1.0.0/16:1433``, ``[2001:db8::/32]:22``,
    ``mis.school.example`` or ``mis.school.example:8443``. Raises ValueError."""
    raw = text.strip()
    port = None
    if raw.startswith("["):
        body, _, rest = raw[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r}: expected [network]:port")
            port = _raw_port(rest[1:], text)
        raw = body
    elif raw.count(":") == 1:
        raw, _, port_text = raw.partition(":")
        port = _raw_port(port_text, text)
    try:
        network = ipaddress.ip_network(raw, strict=False)
    except ValueError:
        pass
    else:
        return RawDestination(text, network, None, port)
    try:
        name = parse_server_name(raw)
    except AuthorityError as exc:
        raise ValueError(f"{text!r} is not an address, network or host name: {exc}") from None
    return RawDestination(text, None, name, port)


def _raw_port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{whole!r}: {text!r} is not a port number 1-65535")
    return int(text)


def raw_allowed(entries: Collection[RawDestination], host: str, port: int | None) -> bool:
    """Whether a tunnel to ``host`` (a name or address) and ``port`` may carry anything."""
    return any(entry.allows(host, port) for entry in entries)
