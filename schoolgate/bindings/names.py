"""The names identity sources report, made comparable: user names, MAC addresses, addresses
and device names. Everything here comes from a packet, a header or a file a pupil can
influence, so a name that cannot be read with certainty is refused, never guessed."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

MAX_NAME = 200  # the width of the user and device columns
_MAC_HEX = re.compile(
    r"^(?:[0-9a-f]{2}([:-])[0-9a-f]{2}(?:\1[0-9a-f]{2}){4}"  # aa:bb:cc:dd:ee:ff, aa-bb-...
    r"|[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}"  # aabb.ccdd.eeff (Cisco)
    r"|[0-9a-f]{12})$"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
ANONYMOUS = frozenset({"anonymous", "anon", "guest-anonymous"})


class UnusableName(ValueError):
    """A user name that cannot bind an address to a person (empty, anonymous, malformed)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a source says is on an address: a person, or a machine (a computer account or a
    device authenticated by its MAC address) that stands for no person."""

    kind: Literal["person", "machine"]
    name: str  # lower case; without the domain or realm unless ``keep_realm``
    realm: str | None = None  # the Windows domain or Kerberos realm, as given, lower case

    @property
    def is_person(self) -> bool:
        return self.kind == "person"


def parse_principal(raw: str, *, keep_realm: bool = False) -> Principal:
    """``DOMAIN\\user``, ``user@realm``, ``user``; ``host/LAPTOP-12.school.local``,
    ``LAPTOP-12$`` and a MAC address are machines. Raises :class:`UnusableName`."""
    if not isinstance(raw, str):
        raise UnusableName("not text")
    text = raw.strip()
    if not text:
        raise UnusableName("empty user name")
    if len(text) > MAX_NAME:
        raise UnusableName(f"user name longer than {MAX_NAME} characters")
    if _CONTROL.search(text):
        raise UnusableName("control characters in the user name")
    lowered = text.lower()
    if lowered.startswith("host/"):
        host, _, host_realm = lowered[5:].partition("@")
        if not host:
            raise UnusableName("machine account without a host name")
        return Principal("machine", host, host_realm or None)
    mac = normalise_mac(lowered)
    if mac is not None:
        return Principal("machine", mac)  # MAC authentication: a device, not a person
    realm: str | None = None
    name = lowered
    if "\\" in name:
        realm, _, name = name.partition("\\")
        if "\\" in name:
            raise UnusableName(f"more than one domain separator in {raw!r}")
    elif "@" in name:
        name, _, realm = name.rpartition("@")
    name = name.strip()
    realm = (realm or "").strip() or None
    if not name:
        raise UnusableName(f"no user before the realm in {raw!r}")
    if name in ANONYMOUS:
        raise UnusableName(
            f"{raw!r} is an anonymous outer identity; the RADIUS server must put the "
            "inner (real) user name in accounting"
        )
    if name.endswith("$"):
        if len(name) == 1:
            raise UnusableName(f"not a computer account: {raw!r}")
        return Principal("machine", name[:-1], realm)
    if keep_realm and realm and "@" not in name:
        name = f"{name}@{realm}"
    return Principal("person", name, realm)


def normalise_mac(text: str | None) -> str | None:
    """``AA-BB-CC-DD-EE-FF``, ``aa:bb:cc:dd:ee:ff``, ``aabb.ccdd.eeff`` or ``AABBCCDDEEFF`` as
    ``aa:bb:cc:dd:ee:ff``; None for anything else."""
    if not text:
        return None
    lowered = text.strip().lower()
    if not _MAC_HEX.match(lowered):
        return None
    digits = re.sub(r"[^0-9a-f]", "", lowered)
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def normalise_address(text: str) -> str:
    """One spelling per address: IPv4-mapped IPv6 as IPv4, zone index dropped, IPv6
    compressed. Raises ValueError for anything that is not an address."""
    address = ipaddress.ip_address(text.strip().split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return str(address)


def clean_device_name(text: str | bytes | None, limit: int = 100) -> str | None:
    """A device name as shown in the decision log: printable, one line, at most ``limit``
    characters (a DHCP client chooses its own host name)."""
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    cleaned = " ".join(_CONTROL.sub(" ", text).split())
    return cleaned[:limit] or None
