"""Strict reading of what names a destination: a Host header, an HTTP/2 ``:authority``, a
CONNECT target and a TLS server name (SNI).

The gateway decides on these names, so it must read them as a web server would, or refuse
them. RFC 9112 section 3.2: a request with more than one Host header, or a Host that is not a
valid ``uri-host [":" port]``, gets 400. This module is stricter than the RFC's grammar in the
way browsers are: a host is exactly one of

* a DNS name of LDH labels (letters, digits, hyphen; underscore too, which real names use), at
  most 63 characters a label and 253 in all, with one optional trailing dot;
* an IPv4 address in dotted-decimal form (four numbers 0-255, no leading zeros);
* an IPv6 address in brackets (no zone).

Everything else is refused: extra colons (``www.facebook.com::``, ``host:80:``), an empty port,
trailing punctuation (``host;``), percent-encoding, userinfo, non-ASCII (browsers send
punycode), empty labels, and names whose last label is a number but which are not a dotted
quad (``2130706433``, ``0x7f.1``, ``127.1``: the WHATWG URL standard reads them as IPv4, a
name server as a name; the gateway will not guess which one the server meant).

An SNI is a name only (RFC 6066: no port, no IP address literal).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache

MAX_NAME = 253
_LABEL = re.compile(r"[a-z0-9_-]{1,63}")
_DIGITS = re.compile(r"[0-9]+")
_HEX_NUMBER = re.compile(r"0x[0-9a-f]*")


class AuthorityError(ValueError):
    """The text is not exactly one host (and optional port); the message says why."""


@dataclass(frozen=True, slots=True)
class Authority:
    """One host and its port. ``host`` is lower case, without brackets or trailing dot;
    an IPv6 address is compressed and an IPv4-mapped IPv6 address is its IPv4 address."""

    host: str
    port: int | None
    ip: bool  # an address, not a name

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


def _ends_in_a_number(labels: list[str]) -> bool:
    last = labels[-1]
    return bool(_DIGITS.fullmatch(last) or _HEX_NUMBER.fullmatch(last))


def _ipv4(text: str) -> str:
    parts = text.split(".")
    if len(parts) != 4:
        raise AuthorityError(f"{text!r} ends in a number but is not an IPv4 address a.b.c.d")
    for part in parts:
        if not _DIGITS.fullmatch(part) or len(part) > 3 or (len(part) > 1 and part[0] == "0"):
            raise AuthorityError(f"{text!r} is not an IPv4 address in dotted-decimal form")
        if int(part) > 255:
            raise AuthorityError(f"{text!r} is not an IPv4 address (a number above 255)")
    return text


def _ipv6(text: str) -> str:
    if "%" in text:
        raise AuthorityError("an IPv6 zone is not a destination")
    try:
        address = ipaddress.IPv6Address(text)
    except ValueError:
        raise AuthorityError(f"[{text}] is not an IPv6 address") from None
    mapped = address.ipv4_mapped
    return str(mapped) if mapped is not None else address.compressed


def _port(text: str) -> int:
    if not text:
        raise AuthorityError("an empty port")
    if not _DIGITS.fullmatch(text) or len(text) > 5 or not 0 < int(text) < 65536:
        raise AuthorityError(f"{text!r} is not a port number 1-65535")
    return int(text)


def _host(text: str) -> tuple[str, bool]:
    """(the host, whether it is an address) of a bracket-free host; raises if not one."""
    if not text:
        raise AuthorityError("no host")
    if not text.isascii():
        raise AuthorityError(f"{text!r} is not ASCII (a name is sent in punycode)")
    name = text.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > MAX_NAME:
        raise AuthorityError(f"{text!r} is not a host name (length)")
    labels = name.split(".")
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise AuthorityError(f"{text!r} is not a host name (label {label!r})")
    if _ends_in_a_number(labels):
        return _ipv4(name), True
    return name, False


@lru_cache(maxsize=8192)
def parse_authority(text: str) -> Authority:
    """A Host header, ``:authority`` or CONNECT target: ``host``, ``host:port``,
    ``[v6]`` or ``[v6]:port``. Raises :class:`AuthorityError` for anything else."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise AuthorityError("an IPv6 address without its closing bracket")
        host = _ipv6(text[1:end])
        rest = text[end + 1 :]
        if not rest:
            return Authority(host, None, True)
        if not rest.startswith(":"):
            raise AuthorityError(f"{rest!r} after an IPv6 address")
        return Authority(host, _port(rest[1:]), True)
    name, colon, port = text.partition(":")
    host, ip = _host(name)
    return Authority(host, _port(port) if colon else None, ip)


@lru_cache(maxsize=8192)
def parse_server_name(text: str) -> str:
    """A TLS server name (SNI): one DNS name, lower case, no trailing dot. Raises
    :class:`AuthorityError` for a port, an address or anything :func:`parse_authority`
    refuses."""
    host, ip = _host(text)
    if ip:
        raise AuthorityError("an IP address is not a server name (RFC 6066)")
    return host


def address_host(text: str) -> str | None:
    """The canonical spelling of an IP address (``::ffff:a.b.c.d`` as ``a.b.c.d``), or None
    when ``text`` is not an address."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return address.compressed
