"""Host names as the detectors see them: one normalised spelling, the disguises found in how it
was written (percent-encoding, odd IPv4 forms, script mixing, ...), its site (registrable
domain) and what kind of known host it is (resolver, Tor, wrapper service). :func:`analyse_host`
computes all of it once per spelling."""

from __future__ import annotations

import ipaddress
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote

from schoolgate.circumvention.facts import IPAddress
from schoolgate.circumvention.knownhosts import (
    ARCHIVE_TODAY,
    DOH_HOSTS,
    DOH_SUFFIXES,
    RESOLVER_IPS,
    TOR2WEB_SUFFIXES,
    TOR_INFRA_HOSTS,
    TOR_INFRA_SUFFIXES,
    TRANSLATE_GOOGLE,
    TRANSLATE_YANDEX,
    WRAPPER_HOSTS,
)
from schoolgate.core.hosts import lower_host, registrable_domain


@dataclass(frozen=True, slots=True)
class HostInfo:
    """Everything the detectors want to know of one host spelling (computed once, cached)."""

    raw: str
    host: str  # normalised: lower-case ASCII/punycode, no port, brackets or trailing dot
    disguises: tuple[str, ...]
    ip: IPAddress | None
    ip_disguised: bool  # decimal/hex/octal/short IPv4 or IPv4-mapped IPv6
    site: str  # registrable domain without "www." (or the IP): what "same site" compares
    skeleton: str | None  # ASCII look-alike of an IDN host ("аpple.com" -> "apple.com")
    resolver: bool  # a well-known public DNS-over-HTTPS/TLS resolver
    tor: str | None  # why the host is Tor-related, if it is
    wrapper: str | None  # name of the wrapper service (translator, cache, archive), if it is


# --------------------------------------------------------------------------------------------
# Host normalisation and disguises
# --------------------------------------------------------------------------------------------

_UNICODE_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})
_INVISIBLE = frozenset(
    "\u00ad\u034f\u115f\u1160\u180b\u180c\u180d\u180e\u200b\u200c\u200d\u2060\ufeff"
)
_HEX = frozenset("0123456789abcdef")
_OCT = frozenset("01234567")
IP_DISGUISES = frozenset(
    {"ipv4-decimal", "ipv4-hex", "ipv4-octal", "ipv4-short", "ipv4-mapped-ipv6"}
)

# Script combinations a single label may legitimately mix (as browsers allow them).
_ALLOWED_SCRIPT_MIXES = (
    frozenset({"Latin", "Han", "Hiragana", "Katakana"}),
    frozenset({"Latin", "Han", "Bopomofo"}),
    frozenset({"Latin", "Han", "Hangul"}),
)
# Letters of other scripts that look like Latin letters (after lower-casing and NFKC).
_CONFUSABLES = {
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "һ": "h", "і": "i", "ј": "j", "к": "k", "м": "m",
    "о": "o", "р": "p", "с": "c", "ѕ": "s", "т": "t", "у": "y", "х": "x", "ԁ": "d",
    "ԛ": "q", "ԝ": "w", "ӏ": "l", "ѵ": "v", "ү": "y", "ɡ": "g", "ԍ": "g", "п": "n",
    # Greek
    "α": "a", "β": "b", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p",
    "τ": "t", "υ": "u", "χ": "x", "γ": "y", "η": "n", "ω": "w",
    # Armenian
    "օ": "o", "ս": "u", "ց": "g", "հ": "h", "ո": "n", "զ": "q",
    # Latin look-alikes
    "ı": "i", "ɑ": "a", "ɩ": "i", "ℓ": "l", "ȷ": "j",
}  # fmt: skip
# Top-level domains where an all-Cyrillic / all-Greek label is ordinary.
_SCRIPT_TLDS = {
    "Cyrillic": frozenset(
        "ru su by ua kz kg bg rs mk mn tj uz xn--p1ai xn--90ais xn--j1amh xn--d1alf "
        "xn--90a3ac xn--80ao21a xn--l1acc".split()
    ),
    "Greek": frozenset({"gr", "cy", "xn--qxam"}),
}


@lru_cache(maxsize=4096)
def _char_script(ch: str) -> str | None:
    """Script of a letter, None for digits, marks, punctuation (the "common" characters)."""
    if ch.isascii():
        return "Latin" if ch.isalpha() else None
    if unicodedata.category(ch)[0] != "L":
        return None
    first = unicodedata.name(ch, "").split(" ", 1)[0]
    if first in ("CJK", "IDEOGRAPHIC"):
        return "Han"
    if not first or "-" in first or first == "MODIFIER":
        return None
    return first.title()


def _label_scripts(label: str) -> frozenset[str]:
    return frozenset(s for s in map(_char_script, label) if s)


def _skeleton_label(label: str) -> str:
    decomposed = unicodedata.normalize("NFD", label)
    return "".join(_CONFUSABLES.get(c, c) for c in decomposed if unicodedata.category(c) != "Mn")


def _parse_ipv4(host: str) -> tuple[ipaddress.IPv4Address, list[str]] | None:
    """IPv4 in any form a browser or inet_aton accepts (WHATWG URL host parser rules).

    ``3232235777``, ``0xC0A80101``, ``0300.0250.0001.0001``, ``0xc0.0xa8.1.1`` and ``127.1``
    are all IPv4; returns the address and the odd forms used, or None for a host name.
    """
    parts = host.split(".")
    last = parts[-1]
    if len(parts) > 4 or not last:
        return None
    if not (last.isascii() and last.isdigit()) and not (
        last.startswith("0x") and set(last[2:]) <= _HEX
    ):
        return None  # does not end in a number: a host name
    values: list[int] = []
    forms: list[str] = []
    for part in parts:
        if part.startswith("0x"):
            digits = part[2:]
            if not set(digits) <= _HEX:
                return None
            values.append(int(digits, 16) if digits else 0)
            forms.append("ipv4-hex")
        elif len(part) > 1 and part[0] == "0":
            if not set(part) <= _OCT:
                return None
            values.append(int(part, 8))
            forms.append("ipv4-octal")
        elif part.isascii() and part.isdigit():
            values.append(int(part))
        else:
            return None
    count = len(values)
    if any(v > 255 for v in values[:-1]) or values[-1] >= 256 ** (5 - count):
        return None
    value = values[-1]
    for i, v in enumerate(values[:-1]):
        value += v << (8 * (3 - i))
    if count == 1 and not forms:
        forms.append("ipv4-decimal")
    elif count in (2, 3):
        forms.append("ipv4-short")
    return ipaddress.IPv4Address(value), list(dict.fromkeys(forms))


def _parse_ipv6(text: str, disguises: list[str]) -> tuple[str, IPAddress | None]:
    try:
        addr = ipaddress.IPv6Address(text.split("%", 1)[0])
    except ValueError:
        return text.lower(), None
    if addr.ipv4_mapped is not None:
        disguises.append("ipv4-mapped-ipv6")
        return str(addr.ipv4_mapped), addr.ipv4_mapped
    return addr.compressed, addr


def _normalise(raw: str) -> tuple[str, list[str], IPAddress | None, str | None]:
    """(normalised host, disguises, IP address or None, ASCII skeleton of an IDN or None)."""
    disguises: list[str] = []
    host = raw.strip()
    if "%" in host and not host.startswith("["):
        rounds = 0
        while "%" in host and rounds < 3:
            decoded = unquote(host)
            if decoded == host:
                break
            host, rounds = decoded, rounds + 1
        disguises.append("percent-encoding")
        if rounds > 1:
            disguises.append("double-percent-encoding")
    if "://" in host:
        host = host.split("://", 1)[1]
    for sep in ("/", "?", "#", "\\"):
        if sep in host:
            host = host.split(sep, 1)[0]
    if "@" in host:
        disguises.append("userinfo")
        host = host.rsplit("@", 1)[1]
    if host.startswith("["):  # [::1]:443
        end = host.find("]")
        addr_text = host[1:end] if end > 0 else host[1:]
        name, ip = _parse_ipv6(addr_text, disguises)
        return name, disguises, ip, None
    colons = host.count(":")
    if colons == 1:
        host = host.split(":", 1)[0]
    elif colons > 1:  # bare IPv6
        name, ip = _parse_ipv6(host, disguises)
        return name, disguises, ip, None
    if not host.isascii():
        if any(c in "\u3002\uff0e\uff61" for c in host):
            disguises.append("unicode-dot")
            host = host.translate(_UNICODE_DOTS)
        if any(c in _INVISIBLE for c in host):
            disguises.append("invisible-characters")
            host = "".join(c for c in host if c not in _INVISIBLE)
        if any("\uff01" <= c <= "\uff5e" for c in host):
            disguises.append("fullwidth-characters")
        host = unicodedata.normalize("NFKC", host)
    if host.endswith("."):
        disguises.append("trailing-dot")
        host = host.rstrip(".")
    host = lower_host(host)
    if not host:
        return "", disguises, None, None
    if ".." in host:
        disguises.append("empty-label")
    if host.isascii():
        v4 = _parse_ipv4(host)
        if v4 is not None:
            disguises.extend(v4[1])
            return str(v4[0]), disguises, v4[0], None
        if "xn--" not in host:
            return host, disguises, None, None
    ascii_labels: list[str] = []
    skeleton_labels: list[str] = []
    idn = False
    labels = host.split(".")
    for label in labels:
        if label.isascii():
            unicode_label = label
            if label.startswith("xn--"):
                try:
                    unicode_label = label.encode("ascii").decode("idna")
                except UnicodeError:
                    disguises.append("invalid-punycode")
            ascii_label = label
        else:
            unicode_label = label
            try:
                ascii_label = label.encode("idna").decode("ascii")
            except UnicodeError:
                disguises.append("invalid-idn")
                ascii_label = label
        ascii_labels.append(ascii_label)
        if not unicode_label.isascii():
            idn = True
            scripts = _label_scripts(unicode_label)
            if len(scripts) > 1 and not any(scripts <= mix for mix in _ALLOWED_SCRIPT_MIXES):
                disguises.append("mixed-script")
            elif len(scripts) == 1 and (script := next(iter(scripts))) in _SCRIPT_TLDS:
                letters = [c for c in unicode_label if c.isalpha()]
                if all(c in _CONFUSABLES for c in letters) and (
                    labels[-1] not in _SCRIPT_TLDS[script]
                ):
                    disguises.append("whole-script-confusable")
            skeleton_labels.append(_skeleton_label(unicode_label))
        else:
            skeleton_labels.append(unicode_label)
    name = ".".join(ascii_labels)
    skeleton = None
    if idn:
        candidate = ".".join(skeleton_labels)
        if candidate.isascii() and candidate != name:
            skeleton = candidate
    return name, list(dict.fromkeys(disguises)), None, skeleton


def normalise_for_detection(raw_host: str) -> tuple[str, list[str]]:
    """The normalised host and the disguises found in how it was written.

    The host is spelt as :func:`schoolgate.core.hosts.normalize_host` spells it (lower-case
    punycode, no port, brackets or trailing dot), except that IPv4 in odd forms becomes its
    dotted quad (``0xC0A80101`` -> ``192.168.1.1``). Disguises: ``percent-encoding``,
    ``double-percent-encoding``, ``userinfo``, ``trailing-dot``, ``empty-label``,
    ``unicode-dot``, ``invisible-characters``, ``fullwidth-characters``, ``invalid-punycode``,
    ``invalid-idn``, ``mixed-script``, ``whole-script-confusable``, ``ipv4-decimal``,
    ``ipv4-hex``, ``ipv4-octal``, ``ipv4-short``, ``ipv4-mapped-ipv6``. Upper case is not a
    disguise.
    """
    info = analyse_host(raw_host)
    return info.host, list(info.disguises)


# --------------------------------------------------------------------------------------------
# Sites ("same site" is the registrable domain, by the Public Suffix List)
# --------------------------------------------------------------------------------------------


def _site_of(host: str, ip: IPAddress | None) -> str:
    if ip is not None:
        return str(ip)
    if not host:
        return ""
    site = registrable_domain(host)
    return site[4:] if site.startswith("www.") else site


# Organisations whose own domains share certificates and may share a coalesced HTTP/2
# connection. Never add CDNs or user-content domains: that is what fronting abuses.
SITE_FAMILIES: dict[str, str] = {}
for _family, _sites in {
    "google": "google.com google.co.uk googleapis.com gstatic.com youtube.com ytimg.com "
    "youtube-nocookie.com ggpht.com googlevideo.com gvt1.com gvt2.com googletagmanager.com "
    "google-analytics.com googleadservices.com googlesyndication.com doubleclick.net "
    "withgoogle.com android.com gmail.com",
    "microsoft": "microsoft.com microsoftonline.com office.com office.net office365.com live.com "
    "outlook.com msauth.net msftauth.net msauthimages.net msftauthimages.net sharepoint.com "
    "onenote.com skype.com lync.com bing.com msn.com windows.com windowsupdate.com",
    "apple": "apple.com icloud.com mzstatic.com apple-cloudkit.com cdn-apple.com",
    "meta": "facebook.com fbcdn.net facebook.net fb.com instagram.com cdninstagram.com "
    "messenger.com whatsapp.com whatsapp.net",
}.items():
    for _site in _sites.split():
        SITE_FAMILIES[_site] = _family

ECH_PUBLIC_NAMES = frozenset({"cloudflare-ech.com"})


def _suffixes(host: str) -> Iterable[str]:
    parts = host.split(".")
    return (".".join(parts[i:]) for i in range(len(parts)))


@lru_cache(maxsize=65536)
def analyse_host(raw: str) -> HostInfo:
    host, disguises, ip, skeleton = _normalise(raw)
    resolver = False
    tor = None
    wrapper = None
    if ip is not None:
        resolver = str(ip) in RESOLVER_IPS
    elif host:
        suffixes = list(_suffixes(host))
        resolver = host in DOH_HOSTS or any(s in DOH_SUFFIXES for s in suffixes)
        if any(s in TOR2WEB_SUFFIXES for s in suffixes):
            tor = "a tor2web gateway to a Tor hidden service"
        elif host.endswith(".onion") or host == "onion":
            tor = "a Tor hidden service (.onion) address"
        elif host in TOR_INFRA_HOSTS or any(s in TOR_INFRA_SUFFIXES for s in suffixes):
            tor = "Tor bridge or snowflake infrastructure"
        if host.endswith(".translate.goog"):
            wrapper = "google-translate-proxy"
        elif host in WRAPPER_HOSTS:
            wrapper = WRAPPER_HOSTS[host]
        elif host.startswith("translate.") and TRANSLATE_GOOGLE.match(host):
            wrapper = "google-translate"
        elif host.startswith("translate.") and TRANSLATE_YANDEX.match(host):
            wrapper = "yandex-translate"
        elif "archive." in host and ARCHIVE_TODAY.match(host):
            wrapper = "archive-today"
    return HostInfo(
        raw=raw,
        host=host,
        disguises=tuple(disguises),
        ip=ip,
        ip_disguised=any(d in IP_DISGUISES for d in disguises),
        site=_site_of(host, ip),
        skeleton=skeleton,
        resolver=resolver,
        tor=tor,
        wrapper=wrapper,
    )


NO_HOST = analyse_host("")
