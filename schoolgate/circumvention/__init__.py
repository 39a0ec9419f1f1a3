"""Circumvention detectors: small, named, pure units that turn what the gateway saw into evidence.

The school's policy says attempts to circumvent the filter lead to a ban, and every incident
needs evidence. Each detector here looks at one :class:`TrafficFacts` (an HTTP CONNECT, a TLS
ClientHello or a decrypted HTTP request) and returns :class:`CircumventionEvent` values: a kind,
a severity (1 low .. 3 high), one sentence for the e-safety team and the evidence it rests on.

Nothing here knows of mitmproxy, the database or the web: the gateway adapter builds the facts,
the policy supplies ``circumvention_lookup`` (host -> matching entry of the ``circumvention``
list) and decides what an event leads to.

Stages and repeats. :meth:`Detectors.inspect` is stateless: it reports everything visible at
the stage it is given. Host-level findings (a listed host, an IP literal, a disguised host, a
known DNS resolver) are visible again at each stage of one connection and in every request of a
tunnel, so the adapter should keep one event per :attr:`CircumventionEvent.key` per connection
(or per time window). Tunnel-level detectors fire once: ``odd_port`` and ``dot`` on the
``connect`` stage (and ``odd_port`` on plain ``http`` requests, which have no CONNECT),
``no_sni`` on the ``tls`` stage. In transparent mode the client wrote no host: pass the SNI (or
"" when there is none) as ``host``, never the destination IP, or ``ip_literal`` fires on every
connection; synthesise a ``connect`` stage for the destination port if ``odd_port`` is wanted.

Deliberate decisions (see also the tests):

* Redirectors are not wrappers. ``google.com/url?q=...``, Outlook safe links, OAuth
  ``redirect_uri``/``continue`` parameters and share links only send the browser on; its next
  request is to the destination, which the gateway sees and filters. Reporting them would log
  every search click and every sign-in. ``wrapped_site`` fires only on services that fetch the
  destination and serve it under their own name (translators, caches, archives); ``web_proxy``
  only on known web-proxy URL signatures (Glype, PHProxy, CGIProxy, CroxyProxy, Ultraviolet,
  Rammerhead, Scramjet, bare/wisp back ends) and on generic ``?url=``/``?u=``/``?q=``
  parameters only under web-proxy script paths (``/browse.php``, ``/proxy.php``, ``/proxy``,
  ``/index.php?q=`` with a URL or base64 URL value). Link-exit scripts (``go.php?url=``,
  ``l.php?u=``) are redirectors and are not reported.
* Tor Browser sends the same User-Agent as Firefox ESR: ``vpn_client`` does not claim to
  catch it. Tor shows up through ``tor`` (``.onion`` names, tor2web gateways, bridge and
  snowflake infrastructure), Tor ports in ``odd_port`` and listed hosts.
* Mixed case in a host is not a disguise (browsers lower-case hosts); IP-literal forms are
  reported by ``ip_literal``, not again by ``disguised_host``.
* HTTP/2 connection coalescing lets a browser reuse one TLS connection for sibling hosts of
  the same organisation (``www.google.com`` / ``fonts.gstatic.com``), so ``domain_fronting``
  treats a few such families as one site; CDN and user-content domains (appspot.com,
  cloudfront.net, azureedge.net, ...) are never in a family. Encrypted Client Hello public
  names (``cloudflare-ech.com``) are not reported as fronting.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from schoolgate.core.destination import Destination
from schoolgate.core.hosts import lower_host

try:  # bundled with mitmproxy; the fallback below covers the common cases without it
    import publicsuffix2 as _psl
except ImportError:  # pragma: no cover - depends on the environment
    _psl = None

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

STAGES: tuple[str, ...] = ("connect", "tls", "request")
KINDS: tuple[str, ...] = (
    "vpn",
    "proxy",
    "doh",
    "dot",
    "ip_literal",
    "domain_fronting",
    "no_sni",
    "wrapped_site",
    "odd_port",
    "non_tls_tunnel",
    "disguised_host",
    "vpn_client",
    "tor",
    "unverified_destination",
)


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------


# The request headers the detectors read (lower-case names). The gateway hands them only
# these (building a map of every header costs more than all the detectors' checks):
# a detector that reads another header must add it here.
DETECTOR_HEADERS = frozenset({"user-agent", "content-type", "accept", "x-bare-url", "x-bare-host"})


@dataclass(slots=True)
class TrafficFacts:
    """What the gateway saw of one connection or request; None where not known at the stage.

    ``stage`` is "connect" (HTTP CONNECT), "tls" (ClientHello seen or, with ``tls_seen``
    False, a tunnel that carries something else) or "request" (HTTP request known).
    ``host`` is the host as the client wrote it (CONNECT authority host, Host header or
    URL host), NOT normalised. ``headers`` have lower-case names; the gateway passes those in
    :data:`DETECTOR_HEADERS`. ``tls_seen`` says, for a CONNECT tunnel, whether the client
    spoke TLS (None = not known yet).

    Not frozen only because a frozen dataclass costs ~1 microsecond more to build, and one is
    built for every request; treat it as immutable.
    """

    stage: str
    host: str
    port: int | None
    sni: str | None = None
    http_host: str | None = None
    method: str | None = None
    path: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    scheme: str | None = None
    tls_seen: bool | None = None
    # The destination check's verdict when it refused the destination (else None).
    destination: Destination | None = None


@dataclass(frozen=True, slots=True)
class CircumventionEvent:
    """One finding: which detector, what kind, how serious, and the evidence."""

    detector: str
    kind: str
    severity: int
    summary: str
    evidence: Mapping[str, str]
    wrapped_host: str | None = None

    @property
    def key(self) -> tuple[str, str, str, str]:
        """For de-duplicating repeats of one finding across stages and requests."""
        return (self.detector, self.kind, self.evidence.get("host", ""), self.wrapped_host or "")

    def to_json(self) -> dict[str, Any]:
        return {
            "detector": self.detector,
            "kind": self.kind,
            "severity": self.severity,
            "summary": self.summary,
            "evidence": dict(self.evidence),
            "wrapped_host": self.wrapped_host,
        }


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
_IP_DISGUISES = frozenset(
    {"ipv4-decimal", "ipv4-hex", "ipv4-octal", "ipv4-short", "ipv4-mapped-ipv6"}
)
_HOSTNAME = re.compile(
    r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)+(?:[a-z]{2,63}|xn--[a-z0-9-]{1,59})\Z"
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
    info = _analyse(raw_host)
    return info.host, list(info.disguises)


# --------------------------------------------------------------------------------------------
# Registrable domains ("same site")
# --------------------------------------------------------------------------------------------

_FALLBACK_SUFFIXES = frozenset(
    """
    co.uk org.uk ac.uk gov.uk sch.uk nhs.uk ltd.uk plc.uk me.uk net.uk police.uk mod.uk
    com.au net.au org.au edu.au gov.au co.nz org.nz govt.nz co.jp ne.jp or.jp ac.jp co.in
    com.br com.cn com.hk com.sg com.tr com.mx co.za co.kr
    github.io gitlab.io appspot.com blogspot.com cloudfront.net herokuapp.com azurewebsites.net
    azureedge.net netlify.app vercel.app pages.dev workers.dev web.app firebaseapp.com
    glitch.me onrender.com fly.dev repl.co s3.amazonaws.com
    """.split()
)


def _registrable_fallback(host: str) -> str:
    """Registrable domain with a short built-in suffix list (when publicsuffix2 is missing)."""
    labels = host.split(".")
    if len(labels) <= 2:
        return host
    if host.endswith(".sch.uk") and len(labels) >= 4:  # school.lea.sch.uk (the *.sch.uk rule)
        return ".".join(labels[-4:])
    if ".".join(labels[-2:]) in _FALLBACK_SUFFIXES:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


@lru_cache(maxsize=16384)
def _registrable(host: str) -> str:
    if _psl is not None:
        try:
            found = _psl.get_sld(host)
        except Exception:  # pragma: no cover - defensive: a bad name must not stop detection
            found = None
        if found:
            return found
    return _registrable_fallback(host)


def _site_of(host: str, ip: IPAddress | None) -> str:
    if ip is not None:
        return str(ip)
    if not host:
        return ""
    site = _registrable(host)
    return site[4:] if site.startswith("www.") else site


# Organisations whose own domains share certificates and may share a coalesced HTTP/2
# connection. Never add CDNs or user-content domains: that is what fronting abuses.
_SITE_FAMILIES: dict[str, str] = {}
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
        _SITE_FAMILIES[_site] = _family

_ECH_PUBLIC_NAMES = frozenset({"cloudflare-ech.com"})


# --------------------------------------------------------------------------------------------
# Known hosts
# --------------------------------------------------------------------------------------------

# Public DNS-over-HTTPS / DNS-over-TLS resolvers: exact names...
_DOH_HOSTS = frozenset(
    """
    dns.google dns.google.com 8888.google dns64.dns.google one.one.one.one
    dns.quad9.net dns9.quad9.net dns10.quad9.net dns11.quad9.net dns12.quad9.net
    doh.opendns.com doh.familyshield.opendns.com
    dns.adguard-dns.com family.adguard-dns.com unfiltered.adguard-dns.com dns.adguard.com
    dns-family.adguard.com dns-unfiltered.adguard.com
    doh.cleanbrowsing.org doh.mullvad.net dns.mullvad.net adblock.dns.mullvad.net
    base.dns.mullvad.net extended.dns.mullvad.net family.dns.mullvad.net all.dns.mullvad.net
    doh.dns.sb dns.twnic.tw doh.libredns.gr dns.alidns.com doh.pub doh.360.cn
    dns.switch.ch dns.digitale-gesellschaft.ch doh.ffmuc.net doh.applied-privacy.net
    dns.njal.la doh.xfinity.com dns.brahma.world doh.tiar.app doh.crypto.sx ordns.he.net
    odvr.nic.cz anycast.uncensoreddns.org unicast.uncensoreddns.org dns.decloudus.com
    """.split()
)
# ...names whose every sub-domain is a resolver endpoint...
_DOH_SUFFIXES = frozenset(
    """
    cloudflare-dns.com cloudflare-gateway.com dns.nextdns.io d.adguard-dns.com
    dns.controld.com freedns.controld.com dns0.eu
    """.split()
)
# ...and their addresses (clients use these for DoH/DoT without any name).
_RESOLVER_IPS = frozenset(
    str(ipaddress.ip_address(a))
    for a in """
    1.1.1.1 1.0.0.1 1.1.1.2 1.0.0.2 1.1.1.3 1.0.0.3 8.8.8.8 8.8.4.4 9.9.9.9 9.9.9.10
    9.9.9.11 149.112.112.112 149.112.112.10 149.112.112.11 208.67.222.222 208.67.220.220
    208.67.222.123 208.67.220.123 94.140.14.14 94.140.15.15 94.140.14.15 94.140.15.16
    94.140.14.140 94.140.14.141 185.228.168.168 185.228.169.168 185.228.168.9 185.228.169.9
    194.242.2.2 194.242.2.3 185.222.222.222 45.11.45.11 223.5.5.5 223.6.6.6 76.76.2.0
    76.76.10.0 193.110.81.0 185.253.5.0
    2606:4700:4700::1111 2606:4700:4700::1001 2001:4860:4860::8888 2001:4860:4860::8844
    2620:fe::fe 2620:fe::9 2620:119:35::35 2620:119:53::53 2a10:50c0::ad1:ff 2a10:50c0::ad2:ff
    """.split()
)

_TOR2WEB_SUFFIXES = frozenset(
    """
    onion.to onion.ly onion.ws onion.pet onion.city onion.cab onion.link onion.sh onion.dog
    onion.rip onion.lu onion.direct onion.guide onion.casa onion.plus onion.re tor2web.org
    tor2web.io tor2web.fi onion.moe onion.foundation
    """.split()
)
_TOR_INFRA_HOSTS = frozenset(
    """
    bridges.torproject.org snowflake-broker.torproject.net snowflake-broker.freehaven.net
    snowflake-broker.bamsoftware.com aus1.torproject.org aus2.torproject.org
    """.split()
)
_TOR_INFRA_SUFFIXES = frozenset({"torproject.net"})

_TRANSLATE_GOOGLE = re.compile(
    r"translate\.google(?:\.com?)?\.[a-z]{2,3}\Z|translate\.googleusercontent\.com\Z"
)
_TRANSLATE_YANDEX = re.compile(r"translate\.yandex\.(?:com|ru|net|by|kz|ua|com\.tr)\Z")
_ARCHIVE_TODAY = re.compile(r"(?:www\.)?archive\.(?:ph|today|is|li|vn|fo|md)\Z")
_WRAPPER_HOSTS = {
    "web.archive.org": "wayback",
    "wayback.archive.org": "wayback",
    "archive.org": "wayback",
    "www.archive.org": "wayback",
    "webcache.googleusercontent.com": "google-cache",
    "cc.bingj.com": "bing-cache",
    "yandexwebcache.net": "yandex-cache",
    "cachedview.nl": "cachedview",
    "www.cachedview.nl": "cachedview",
    "cachedview.com": "cachedview",
    "www.cachedview.com": "cachedview",
    "www.translatetheweb.com": "microsoft-translator",
    "translatetheweb.com": "microsoft-translator",
    "www.microsofttranslator.com": "microsoft-translator",
    "googleweblight.com": "google-weblight",
    "www.googleweblight.com": "google-weblight",
    "12ft.io": "12ft",
    "r.jina.ai": "jina-reader",
    "timetravel.mementoweb.org": "memento",
    "ghostarchive.org": "ghostarchive",
}
_WRAPPER_LABELS = {
    "google-translate-proxy": "Google Translate's website proxy",
    "google-translate": "Google Translate (website mode)",
    "yandex-translate": "Yandex Translate (website mode)",
    "microsoft-translator": "Microsoft Translator (website mode)",
    "wayback": "the Internet Archive's Wayback Machine",
    "archive-today": "archive.today",
    "google-cache": "Google's cache",
    "bing-cache": "Bing's cache",
    "yandex-cache": "Yandex's cache",
    "cachedview": "a cached-page viewer",
    "google-weblight": "Google Web Light",
    "12ft": "12ft.io",
    "jina-reader": "a page-fetching reader service",
    "memento": "the Memento time-travel service",
    "ghostarchive": "Ghostarchive",
}


def _suffixes(host: str) -> Iterable[str]:
    parts = host.split(".")
    return (".".join(parts[i:]) for i in range(len(parts)))


@lru_cache(maxsize=65536)
def _analyse(raw: str) -> HostInfo:
    host, disguises, ip, skeleton = _normalise(raw)
    resolver = False
    tor = None
    wrapper = None
    if ip is not None:
        resolver = str(ip) in _RESOLVER_IPS
    elif host:
        suffixes = list(_suffixes(host))
        resolver = host in _DOH_HOSTS or any(s in _DOH_SUFFIXES for s in suffixes)
        if any(s in _TOR2WEB_SUFFIXES for s in suffixes):
            tor = "a tor2web gateway to a Tor hidden service"
        elif host.endswith(".onion") or host == "onion":
            tor = "a Tor hidden service (.onion) address"
        elif host in _TOR_INFRA_HOSTS or any(s in _TOR_INFRA_SUFFIXES for s in suffixes):
            tor = "Tor bridge or snowflake infrastructure"
        if host.endswith(".translate.goog"):
            wrapper = "google-translate-proxy"
        elif host in _WRAPPER_HOSTS:
            wrapper = _WRAPPER_HOSTS[host]
        elif host.startswith("translate.") and _TRANSLATE_GOOGLE.match(host):
            wrapper = "google-translate"
        elif host.startswith("translate.") and _TRANSLATE_YANDEX.match(host):
            wrapper = "yandex-translate"
        elif "archive." in host and _ARCHIVE_TODAY.match(host):
            wrapper = "archive-today"
    return HostInfo(
        raw=raw,
        host=host,
        disguises=tuple(disguises),
        ip=ip,
        ip_disguised=any(d in _IP_DISGUISES for d in disguises),
        site=_site_of(host, ip),
        skeleton=skeleton,
        resolver=resolver,
        tor=tor,
        wrapper=wrapper,
    )


_NO_HOST = _analyse("")


# --------------------------------------------------------------------------------------------
# URL decoding helpers (wrappers and web proxies)
# --------------------------------------------------------------------------------------------

_SCHEME = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]{0,9}://")
_EMBEDDED_URL = re.compile(r"(?:https?|wss?)(?::|%3A)(?:/|%2F){1,2}", re.IGNORECASE)


def _url_host(value: str, *, bare_ok: bool = True) -> str | None:
    """The host of a URL (or, with ``bare_ok``, of ``example.com/page``); None if none."""
    v = value.strip()
    if not v:
        return None
    if "://" not in v[:12] and "%" in v[:24]:
        v = unquote(v)
    if v.startswith("//"):
        v = "http:" + v
    elif not _SCHEME.match(v):
        if not bare_ok:
            return None
        v = "http://" + v
    elif v.split(":", 1)[0].lower() not in ("http", "https", "ws", "wss", "ftp"):
        return None
    try:
        netloc = urlsplit(v).netloc
    except ValueError:
        return None
    info = _analyse(netloc)
    if info.ip is not None:
        return info.host
    if info.host and _HOSTNAME.match(info.host):
        return info.host
    return None


def _b64_text(value: str) -> str | None:
    s = value.strip().replace(" ", "+").replace("-", "+").replace("_", "/")
    s += "=" * (-len(s) % 4)
    try:
        return base64.b64decode(s, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None


def _b64_url_host(value: str) -> str | None:
    """Host of a base64-encoded URL (Glype drops the leading "http": ``Oi8v`` = ``://``)."""
    text = _b64_text(value)
    if not text:
        return None
    if text.startswith(("://", "s://")):
        text = "http" + text
    if not text.lower().startswith(("http://", "https://")):
        return None
    return _url_host(text, bare_ok=False)


def _query(path: str) -> dict[str, str]:
    if "?" not in path:
        return {}
    params: dict[str, str] = {}
    for k, v in parse_qsl(path.split("?", 1)[1], keep_blank_values=True):
        params.setdefault(k, v)
    return params


def _target(value: str, *, bare_ok: bool) -> tuple[str | None, str]:
    host = _url_host(value, bare_ok=bare_ok)
    if host:
        return host, "url"
    host = _b64_url_host(value)
    if host:
        return host, "base64 url"
    return None, ""


def _path_url_host(path: str) -> str | None:
    m = _EMBEDDED_URL.search(path)
    return _url_host(path[m.start() :], bare_ok=False) if m else None


# Wrapper decoders: (host, path) -> (wrapped host or None, how) when the request is a wrapped
# page, None when it is not (the service's home page, its text translator, ...).
Decoded = tuple[str | None, str] | None


def _dec_translate_goog(host: str, path: str | None) -> Decoded:
    label = host[: -len(".translate.goog")]
    if not label:
        return None
    # Google's encoding: "." -> "-", "-" -> "--" (www-example-com -> www.example.com).
    decoded = label.replace("--", "\x00").replace("-", ".").replace("\x00", "-")
    wrapped = _url_host(decoded)
    return wrapped, f"host name {label!r} decodes to {decoded!r}"


def _params_decoder(*names: str, paths: tuple[str, ...] = ()) -> Callable[..., Decoded]:
    def decode(host: str, path: str | None) -> Decoded:
        if path is None or (paths and not path.startswith(paths)):
            return None
        params = _query(path)
        for name in names:
            value = params.get(name)
            if value:
                wrapped, how = _target(value, bare_ok=True)
                if wrapped:
                    return wrapped, f"{name}= parameter ({how})"
        return None

    return decode


def _path_decoder(host: str, path: str | None) -> Decoded:
    if not path:
        return None
    wrapped = _path_url_host(path)
    return (wrapped, "URL in the path") if wrapped else None


_WAYBACK = re.compile(r"/web/(?:([0-9*]{1,14}[a-z_]{0,4}\*?)/)?(.+)", re.DOTALL)


def _dec_wayback(host: str, path: str | None) -> Decoded:
    if not path:
        return None
    if path.startswith("/wayback/available"):
        wrapped = _url_host(_query(path).get("url", ""))
        return (wrapped, "availability query") if wrapped else None
    m = _WAYBACK.match(path)
    if not m:
        return None
    wrapped = _url_host(m.group(2))
    if wrapped is None and not m.group(1):
        return None
    when = f" captured {m.group(1)}" if m.group(1) else ""
    return wrapped, f"archived copy{when}"


_ARCHIVE_ID = re.compile(r"/(?=[a-z]*[A-Z0-9])[A-Za-z0-9]{4,6}/?\Z")
_ARCHIVE_PREFIX = re.compile(
    r"/(?:(?:newest|oldest|\d{4}[\d.\-]*|o/[A-Za-z0-9]+)/)?(.*)", re.DOTALL
)


def _dec_archive_today(host: str, path: str | None) -> Decoded:
    if not path or path == "/":
        return None
    if _ARCHIVE_ID.match(path):
        return None, "archived page id (destination not in the URL)"
    m = _ARCHIVE_PREFIX.match(path)
    target = m.group(1) if m else ""
    if not target or target.startswith(("submit", "search", "timegate", "timemap", "?")):
        return None
    first = target.split("/", 1)[0]
    if "://" not in target and "." not in first:
        return None
    wrapped = _url_host(target)
    return (wrapped, "archived copy") if wrapped else None


_CACHE_ID = re.compile(r"[A-Za-z0-9_-]{6,20}:(?!//)")


def _dec_google_cache(host: str, path: str | None) -> Decoded:
    if not path:
        return None
    q = _query(path).get("q", "")
    if not q.startswith("cache:"):
        return None
    rest = q[6:]
    m = _CACHE_ID.match(rest)
    if m:
        rest = rest[m.end() :]
    rest = rest.split(" ", 1)[0].split("+", 1)[0]
    return _url_host(rest), "cached copy"


def _dec_bing_cache(host: str, path: str | None) -> Decoded:
    if path and path.startswith("/cache.aspx"):
        return None, "cached copy (destination not in the URL)"
    return None


def _dec_ghostarchive(host: str, path: str | None) -> Decoded:
    if path and path.startswith("/archive/"):
        return None, "archived page id (destination not in the URL)"
    return _params_decoder("term", paths=("/search",))(host, path)


_12FT_QUERY = _params_decoder("q")

_WRAPPER_DECODERS: dict[str, Callable[[str, str | None], Decoded]] = {
    "google-translate-proxy": _dec_translate_goog,
    "google-translate": _params_decoder("u"),
    "yandex-translate": _params_decoder("url"),
    "microsoft-translator": _params_decoder("a"),
    "wayback": _dec_wayback,
    "archive-today": _dec_archive_today,
    "google-cache": _dec_google_cache,
    "bing-cache": _dec_bing_cache,
    "yandex-cache": _params_decoder("url"),
    "cachedview": _params_decoder("url", "u", "q"),
    "google-weblight": _params_decoder("lite_url", "u"),
    "12ft": lambda h, p: _12FT_QUERY(h, p) or _path_decoder(h, p),
    "jina-reader": _path_decoder,
    "memento": _path_decoder,
    "ghostarchive": _dec_ghostarchive,
}


def _uv_decode(encoded: str) -> str:
    """Ultraviolet's default "xor" codec: every second character XOR 2, then URL-encoded."""
    text = unquote(encoded)
    return "".join(chr(ord(c) ^ 2) if i % 2 else c for i, c in enumerate(text))


_UV = re.compile(r"/service/([^?#]+)")
_SCRAMJET = re.compile(r"/scram(?:jet)?/(?:service/)?([^?#]+)")
_CGIPROXY = re.compile(r"/nph-[a-z]*proxy\.(?:cgi|pl)/[^/]*/(?:(https?)/([^/?#]+))?")
_RAMMERHEAD = re.compile(r"/[a-z0-9]{32}/((?:https?|wss?)(?::|%3A).*)", re.DOTALL)
_PROXY_PREFIX = re.compile(
    r"/(?:main|proxy|browse|go|surf|p)/((?:https?|wss?)(?::|%3A)(?:/|%2F).*)", re.DOTALL
)
_PROXY_SCRIPTS = ("/browse.php", "/proxy.php", "/proxy", "/proxy/")


def _match_web_proxy(path: str) -> tuple[str | None, str] | None:
    """Recognise a web-proxy URL; returns (wrapped host or None, which proxy), else None."""
    base = path.split("?", 1)[0]
    if "/service/" in base:  # Ultraviolet (/service/, /uv/service/)
        m = _UV.search(base)
        if m:
            decoded = _uv_decode(m.group(1))
            if decoded.lower().startswith(("http://", "https://", "ws://", "wss://")):
                return _url_host(decoded, bare_ok=False), "Ultraviolet web proxy"
    if "/scram" in base:
        m = _SCRAMJET.search(base)
        if m:
            wrapped = _url_host(unquote(m.group(1)), bare_ok=False)
            if wrapped:
                return wrapped, "Scramjet web proxy"
    if "nph-" in base:
        m = _CGIPROXY.search(base)
        if m:
            return (_url_host(m.group(2)) if m.group(2) else None), "CGIProxy web proxy"
    if base.startswith("/bare/") or "/bare/v" in base:
        return None, "bare-server web proxy back end"
    if "/wisp" in base and (base.endswith("/wisp") or "/wisp/" in base):
        return None, "wisp tunnel (web proxy back end)"
    if len(base) > 34 and base[33] == "/":
        m = _RAMMERHEAD.match(path)
        if m:
            return _url_host(m.group(1), bare_ok=False), "Rammerhead web proxy"
    m = _PROXY_PREFIX.match(path)
    if m:
        wrapped = _url_host(m.group(1), bare_ok=False)
        if wrapped:
            return wrapped, "web proxy (URL in the path)"
    if "?" not in path:
        return None
    params = _query(path)
    cpo = params.get("__cpo")
    if cpo:
        return _b64_url_host(cpo), "CroxyProxy web proxy"
    script = base.endswith(_PROXY_SCRIPTS)
    if script or base.endswith("/index.php"):  # PHProxy: index.php?q=<url or base64 url>
        for name in ("u", "url", "q") if script else ("q",):
            value = params.get(name)
            if value:
                wrapped, how = _target(value, bare_ok=False)
                if wrapped:
                    return wrapped, f"web proxy script {base} ({name}= {how})"
        if base.endswith("/browse.php") and "u" in params and "b" in params:
            return None, "Glype web proxy (encoded URL)"
    q = params.get("q", "")
    if q.startswith("aHR0c"):  # base64 of "http"
        wrapped = _b64_url_host(q)
        if wrapped:
            return wrapped, "web proxy (base64 URL in q=)"
    return None


# --------------------------------------------------------------------------------------------
# Ports and user agents
# --------------------------------------------------------------------------------------------

# port -> (likely protocol, kind, severity)
_PORT_PROTOCOLS: dict[int, tuple[str, str, int]] = {
    21: ("FTP", "odd_port", 1),
    22: ("SSH (can carry a SOCKS tunnel)", "odd_port", 2),
    23: ("Telnet", "odd_port", 1),
    25: ("SMTP mail", "odd_port", 1),
    53: ("DNS over TCP", "odd_port", 2),
    110: ("POP3 mail", "odd_port", 1),
    143: ("IMAP mail", "odd_port", 1),
    465: ("SMTP mail submission", "odd_port", 1),
    500: ("IPsec IKE VPN", "vpn", 3),
    587: ("SMTP mail submission", "odd_port", 1),
    993: ("IMAP mail over TLS", "odd_port", 1),
    995: ("POP3 mail over TLS", "odd_port", 1),
    1080: ("SOCKS proxy", "proxy", 3),
    1194: ("OpenVPN", "vpn", 3),
    1701: ("L2TP VPN", "vpn", 3),
    1723: ("PPTP VPN", "vpn", 3),
    3128: ("HTTP proxy (Squid)", "proxy", 2),
    3389: ("Remote Desktop (RDP)", "odd_port", 2),
    4500: ("IPsec NAT traversal VPN", "vpn", 3),
    5222: ("XMPP chat", "odd_port", 1),
    5223: ("XMPP chat over TLS / Apple push", "odd_port", 1),
    5900: ("VNC remote desktop", "odd_port", 2),
    5938: ("TeamViewer remote desktop", "odd_port", 2),
    6568: ("AnyDesk remote desktop", "odd_port", 2),
    6667: ("IRC chat", "odd_port", 1),
    6697: ("IRC chat over TLS", "odd_port", 1),
    8000: ("HTTP alternate (often a proxy)", "odd_port", 1),
    8118: ("HTTP proxy (Privoxy)", "proxy", 2),
    8888: ("HTTP alternate (often a proxy)", "odd_port", 1),
    9001: ("Tor relay (ORPort)", "tor", 3),
    9030: ("Tor directory (DirPort)", "tor", 3),
    9050: ("Tor SOCKS port", "tor", 3),
    9051: ("Tor control port", "tor", 3),
    9150: ("Tor Browser SOCKS port", "tor", 3),
    25565: ("Minecraft server", "odd_port", 1),
    51820: ("WireGuard VPN", "vpn", 3),
}
# Ordinary services on unusual ports, by site: Chrome's push channel (mtalk.google.com:5228)
# goes through the proxy; Apple push and Zoom have their own ports too.
_BENIGN_PORTS = frozenset(
    {("google.com", 5228), ("google.com", 5229), ("google.com", 5230), ("apple.com", 5223),
     ("zoom.us", 8801), ("zoom.us", 8802)}
)  # fmt: skip


def _port_protocol(port: int) -> tuple[str, str, int]:
    if port in _PORT_PROTOCOLS:
        return _PORT_PROTOCOLS[port]
    if 6881 <= port <= 6889:
        return ("BitTorrent", "odd_port", 1)
    return ("unknown", "odd_port", 1)


# Product tokens of VPN and proxy clients. Matched as whole tokens (not inside other words),
# so no ordinary browser UA matches. Generic VPN protocols (OpenVPN, WireGuard) are severity 2:
# staff may use them for the school's own remote access; consumer VPNs and censorship-evasion
# tools are severity 3.
_VPN_GENERIC = r"OpenVPN(?:[ _-]?Connect|3)?|WireGuard|strongSwan"
_VPN_BRANDS = (
    r"NordVPN|NordLayer|ExpressVPN|ExpressVPN[ _-]?\w+|Proton[ _-]?VPN|Psiphon\d?|Ultra[ _-]?Surf"
    r"|Hotspot[ _-]?Shield|HSS[ _-]?VPN|Hola(?:[ _-]?VPN|_svc|[ _-]browser)?|Lantern|Windscribe"
    r"|TunnelBear|Surfshark|CyberGhost|PrivateInternetAccess|pia[ _-]client|IPVanish|Betternet"
    r"|Turbo[ _-]?VPN|VPN[ _-]?Proxy[ _-]?Master|X-VPN|hide\.me|Hideme|PrivadoVPN"
    r"|Mullvad[ _-]?VPN|AtlasVPN|Urban[ _-]?VPN|Thunder[ _-]?VPN|VyprVPN|Touch[ _-]?VPN"
    r"|Avast[ _-]?SecureLine|Hoxx|Browsec|ZenMate|SetupVPN|Cloudflare[ _-]?WARP|1\.1\.1\.1(?=/)"
)
_VPN_UA = re.compile(
    rf"(?<![A-Za-z0-9.])(?:(?P<generic>{_VPN_GENERIC})|(?P<brand>{_VPN_BRANDS}))(?=[/ ;)(_,]|\Z)",
    re.IGNORECASE,
)


@lru_cache(maxsize=8192)
def _vpn_user_agent(ua: str) -> tuple[str, int] | None:
    m = _VPN_UA.search(ua)
    if m is None:
        return None
    return m.group(0), (2 if m.group("generic") else 3)


def _looks_like_dns_message(b64: str) -> bool:
    s = b64.strip() + "=" * (-len(b64.strip()) % 4)
    try:
        raw = base64.urlsafe_b64decode(s)
    except (binascii.Error, ValueError):
        return False
    # header (12 bytes), one question, QR bit clear (a query)
    return len(raw) >= 17 and raw[4:6] == b"\x00\x01" and not raw[2] & 0x80


# --------------------------------------------------------------------------------------------
# Detectors
# --------------------------------------------------------------------------------------------

DetectorFn = Callable[["Detectors", TrafficFacts, HostInfo], "list[CircumventionEvent] | None"]
_REGISTRY: dict[str, DetectorFn] = {}


def register_detector(name: str) -> Callable[[DetectorFn], DetectorFn]:
    """Register ``fn(detectors, facts, host_info) -> list[CircumventionEvent] | None``."""

    def register(fn: DetectorFn) -> DetectorFn:
        _REGISTRY[name] = fn
        return fn

    return register


def detector_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def _evidence(f: TrafficFacts, hi: HostInfo, **extra: object) -> Mapping[str, str]:
    ev: dict[str, str] = {"stage": f.stage, "host": hi.host or f.host}
    if f.host and f.host != hi.host:
        ev["raw_host"] = f.host
    if f.port is not None:
        ev["port"] = str(f.port)
    if f.sni is not None:
        ev["sni"] = f.sni
    if f.http_host is not None:
        ev["http_host"] = f.http_host
    if f.method:
        ev["method"] = f.method
    if f.path is not None:
        ev["path"] = f.path if len(f.path) <= 512 else f.path[:509] + "..."
    ua = f.headers.get("user-agent")
    if ua:
        ev["user-agent"] = ua[:300]
    for k, v in extra.items():
        if v is not None and v != "":
            ev[k] = str(v)
    return MappingProxyType(ev)


def _event(
    name: str,
    kind: str,
    severity: int,
    summary: str,
    f: TrafficFacts,
    hi: HostInfo,
    wrapped_host: str | None = None,
    **extra: object,
) -> CircumventionEvent:
    return CircumventionEvent(
        detector=name,
        kind=kind,
        severity=severity,
        summary=summary,
        evidence=_evidence(f, hi, wrapped_host=wrapped_host, **extra),
        wrapped_host=wrapped_host,
    )


def _other_names(f: TrafficFacts, hi: HostInfo) -> list[tuple[str, HostInfo]]:
    """The host, SNI and Host header as analysed hosts, one per distinct normalised name."""
    names = [("host", hi)] if hi.host else []
    for role, raw in (("sni", f.sni), ("http_host", f.http_host)):
        if raw and raw != f.host:
            info = _analyse(raw)
            if info.host and all(info.host != other.host for _, other in names):
                names.append((role, info))
    return names


_TOR_WORD = re.compile(r"(?:^|[./-])(?:tor|torproject|onion)(?:[./-]|$)")


def _kind_for_entry(entry: str, host: str) -> str:
    text = f"{entry} {host}".lower()
    if "vpn" in text:
        return "vpn"
    if _TOR_WORD.search(entry.lower()) or _TOR_WORD.search(host):
        return "tor"
    return "proxy"


@register_detector("listed_host")
def _listed_host(det: Detectors, f: TrafficFacts, hi: HostInfo) -> list[CircumventionEvent] | None:
    """A host in the school's ``circumvention`` list (VPNs, web proxies, anonymisers, Tor)."""
    lookup = det.circumvention_lookup
    if lookup is None:
        return None
    if (f.sni is None or f.sni == f.host) and (f.http_host is None or f.http_host == f.host):
        if not hi.host or not lookup(hi.host):  # the usual case: one name, not listed
            return None
    events = None
    for role, info in _other_names(f, hi):
        entry = lookup(info.host)
        if entry:
            kind = _kind_for_entry(entry, info.host)
            what = {"vpn": "a VPN service", "tor": "a Tor service"}.get(kind, "a proxy service")
            via = "" if role == "host" else f" (named in the {role.replace('_', ' ')})"
            events = events or []
            events.append(
                _event(
                    "listed_host",
                    kind,
                    2,
                    f"Connected to {info.host}{via}, listed as {what} for getting round "
                    f"the filter (list entry {entry}).",
                    f,
                    hi,
                    listed_host=info.host,
                    list_entry=entry,
                    matched_in=role,
                )
            )
    return events


@register_detector("doh")
def _doh(det: Detectors, f: TrafficFacts, hi: HostInfo) -> list[CircumventionEvent] | None:
    """DNS-over-HTTPS: resolver hosts, /dns-query and /resolve paths, DNS media types."""
    reasons: list[str] = []
    severity = 2
    if f.port != 853:  # DNS-over-TLS is the dot detector's
        if hi.resolver:
            reasons.append(f"known public DNS resolver {hi.host}")
        elif f.sni and f.sni != f.host and _analyse(f.sni).resolver:
            reasons.append(f"known public DNS resolver {f.sni} (SNI)")
    path = f.path
    if path and "dns" in path:
        base, _, query = path.partition("?")
        if base == "/dns-query" or base.startswith("/dns-query/"):
            reasons.append("DoH path /dns-query")
        elif "dns=" in query:
            value = _query(path).get("dns")
            if value and _looks_like_dns_message(value):
                reasons.append("DNS query in the dns= parameter (RFC 8484 GET)")
    if path and "/resolve" in path and "name=" in path and path.split("?", 1)[0] == "/resolve":
        if "type" in _query(path):
            reasons.append("DoH JSON API query /resolve?name=...&type=")
        else:
            reasons.append("DoH JSON API path /resolve?name=")
            if len(reasons) == 1:
                severity = 1  # the path alone: a weaker sign
    for header in ("content-type", "accept"):
        value = f.headers.get(header)
        if value and "dns-" in value:
            low = value.lower()
            for media in ("application/dns-message", "application/dns-json"):
                if media in low:
                    reasons.append(f"{header}: {media}")
                    severity = 2
    if not reasons:
        return None
    return [
        _event(
            "doh",
            "doh",
            severity,
            f"Used DNS-over-HTTPS via {hi.host or f.sni}, which hides the sites looked up "
            "from the school's filter.",
            f,
            hi,
            reasons="; ".join(dict.fromkeys(reasons)),
        )
    ]


@register_detector("dot")
def _dot(det: Detectors, f: TrafficFacts, hi: HostInfo) -> list[CircumventionEvent] | None:
    """DNS-over-TLS: a tunnel to port 853."""
    if f.port != 853 or f.stage != "connect":
        return None
    known = " (a known public resolver)" if hi.resolver else ""
    return [
        _event(
            "dot",
            "dot",
            2,
            f"Opened a DNS-over-TLS connection to {hi.host or f.sni}{known}, which hides the "
            "sites looked up from the school's filter.",
            f,
            hi,
            protocol="DNS-over-TLS (port 853)",
        )
    ]


@register_detector("ip_literal")
def _ip_literal(det: Detectors, f: TrafficFacts, hi: HostInfo) -> list[CircumventionEvent] | None:
    """A destination written as an IP address, rather than a name the filter can check."""
    ip = hi.ip
    if ip is None or det.ip_allowed(ip):
        return None
    odd = [d for d in hi.disguises if d in _IP_DISGUISES]
    if "ipv4-mapped-ipv6" in odd and len(odd) == 1:
        severity, how = 2, "an IPv4 address disguised as IPv6"
    elif odd:
        severity, how = 3, f"an IP address written in a disguised form ({', '.join(odd)})"
    else:
        severity, how = 1, f"an IPv{ip.version} address"
    return [
        _event(
            "ip_literal",
            "ip_literal",
            severity,
            f"Went to {how} ({f.host} = {ip}) instead of a site name, which can slip past "
            "name-based filtering.",
            f,
            hi,
            ip=str(ip),
            forms=", ".join(odd),
        )
    ]


@register_detector("domain_fronting")
def _domain_fronting(
    det: Detectors, f: TrafficFacts, hi: HostInfo
) -> list[CircumventionEvent] | None:
    """TLS SNI, CONNECT host and HTTP Host naming different sites (www. and sub-domains fine)."""
    sni, http_host = f.sni, f.http_host
    if sni is None and http_host is None:
        return None
    if (sni is None or sni == f.host) and (http_host is None or http_host == f.host):
        return None
    seen: dict[str, tuple[str, HostInfo]] = {}
    roles = (("connect_host" if f.stage != "request" else "host", hi),)
    if sni:
        roles += (("sni", _analyse(sni)),)
    if http_host:
        roles += (("http_host", _analyse(http_host)),)
    for role, info in roles:
        if not info.host or info.ip is not None or info.host in _ECH_PUBLIC_NAMES:
            continue
        family = _SITE_FAMILIES.get(info.site, info.site)
        seen.setdefault(family, (role, info))
    if len(seen) < 2:
        return None
    by_role = {role: info for role, info in seen.values()}
    inner = by_role.get("http_host") or by_role.get("sni")
    outer = by_role.get("sni") if "http_host" in by_role else by_role.get("connect_host")
    outer = outer or by_role.get("host")
    names = ", ".join(f"{role}={info.host}" for role, info in seen.values())
    return [
        _event(
            "domain_fronting",
            "domain_fronting",
            3,
            f"Names one site to the network and another inside the encrypted connection "
            f"({names}): domain fronting, used by VPNs and Tor bridges to hide where "
            "traffic goes.",
            f,
            hi,
            wrapped_host=inner.host if inner else None,
            outer_site=outer.site if outer else None,
            inner_site=inner.site if inner else None,
            names=names,
        )
    ]


@register_detector("no_sni")
def _no_sni(det: Detectors, f: TrafficFacts, hi: HostInfo) -> list[CircumventionEvent] | None:
    """A TLS ClientHello on port 443 without SNI (when the client did not dial an IP)."""
    if f.stage != "tls" or f.sni is not None or f.port != 443 or hi.ip is not None:
        return None
    return [
        _event(
            "no_sni",
            "no_sni",
            1,
            f"Started an encrypted connection{' to ' + hi.host if hi.host else ''} without "
            "naming the site (no SNI), which hides the destination from the filter.",
            f,
            hi,
        )
    ]


@register_detector("wrapped_site")
def _wrapped_site(det: Detectors, f: TrafficFacts, hi: HostInfo) -> list[CircumventionEvent] | None:
    """A site shown through a translator, cache or archive; the policy checks ``wrapped_host``."""
    wrapper = hi.wrapper
    if wrapper is None:
        return None
    decoded = _WRAPPER_DECODERS[wrapper](hi.host, f.path)
    if decoded is None:
        return None
    wrapped, how = decoded
    severity = 1
    entry = None
    if wrapped and det.circumvention_lookup is not None:
        entry = det.circumvention_lookup(wrapped)
        if entry:
            severity = 2
    label = _WRAPPER_LABELS.get(wrapper, wrapper)
    return [
        _event(
            "wrapped_site",
            "wrapped_site",
            severity,
            f"Opened {wrapped or 'a page'} through {label} ({hi.host}), which fetches the "
            "site so the filter sees only the wrapper.",
            f,
            hi,
            wrapped_host=wrapped,
            wrapper=wrapper,
            decoded=how,
            wrapped_listed_entry=entry,
            wrapped_path=wrapped_path(f.path, wrapped, wrapper) if wrapped else None,
        )
    ]


_AFTER_HOST = re.compile(r"(?::\d{1,5})?(/[^\s&#]*)?")


def wrapped_path(path: str | None, wrapped: str, wrapper: str = "") -> str | None:
    """The path of the wrapped URL in a wrapper's request path, where it can be read (a plain
    or percent-encoded URL after the wrapped host; a translate.goog path is the site's own), so
    that the wrapped page is decided with its path. None when it cannot be read."""
    if not path:
        return None
    if wrapper == "google-translate-proxy":
        base, _, query = path.partition("?")
        kept = [p for p in query.split("&") if p and not p.startswith("_x_tr_")]
        return base + ("?" + "&".join(kept) if kept else "")
    text = unquote(path)
    at = text.lower().find(wrapped)
    if at < 0:
        return None
    found = _AFTER_HOST.match(text, at + len(wrapped))
    return (found.group(1) if found else None) or "/"


@register_detector("web_proxy")
def _web_proxy(det: Detectors, f: TrafficFacts, hi: HostInfo) -> list[CircumventionEvent] | None:
    """Web-proxy software recognised from its URL or headers (Glype, Ultraviolet, ...)."""
    headers = f.headers
    found: tuple[str | None, str] | None = None
    bare = headers.get("x-bare-url") or headers.get("x-bare-host")
    if bare:
        found = (_url_host(bare), "bare-server web proxy request (x-bare-* headers)")
    else:
        path = f.path
        if not path:
            return None
        if (
            "prox" in path
            or ".php" in path
            or "/service/" in path
            or "/scram" in path
            or "/bare/" in path
            or "/wisp" in path
            or "nph-" in path
            or "__cpo=" in path
            or "aHR0c" in path
            or "/main/" in path
            or "/go/" in path
            or "/p/" in path
            or "/surf/" in path
            or (len(path) > 34 and path[33] == "/")
        ):
            found = _match_web_proxy(path)
    if found is None:
        return None
    wrapped, how = found
    return [
        _event(
            "web_proxy",
            "proxy",
            2,
            f"Used a web proxy on {hi.host or f.host} ({how})"
            f"{' to reach ' + wrapped if wrapped else ''}, which hides sites from the filter.",
            f,
            hi,
            wrapped_host=wrapped,
            proxy=how,
        )
    ]


@register_detector("odd_port")
def _odd_port(det: Detectors, f: TrafficFacts, hi: HostInfo) -> list[CircumventionEvent] | None:
    """A tunnel (or plain HTTP request) to a port outside ``allowed_ports``."""
    port = f.port
    if port is None or port in det.allowed_ports or port == 853:
        return None
    if f.stage != "connect" and not (f.stage == "request" and f.scheme == "http"):
        return None
    if (hi.site, port) in _BENIGN_PORTS:
        return None
    if hi.ip is not None and det.ip_allowed(hi.ip):
        return None  # the school's own network: printers, internal apps on odd ports
    protocol, kind, severity = _port_protocol(port)
    likely = f" (likely {protocol})" if protocol != "unknown" else ""
    return [
        _event(
            "odd_port",
            kind,
            severity,
            f"Opened a connection to {hi.host or f.host} on unusual port {port}{likely}.",
            f,
            hi,
            likely_protocol=protocol,
        )
    ]


@register_detector("non_tls_tunnel")
def _non_tls_tunnel(
    det: Detectors, f: TrafficFacts, hi: HostInfo
) -> list[CircumventionEvent] | None:
    """A tunnel that carries neither TLS nor HTTP (any port), or plain HTTP on a TLS port."""
    if f.tls_seen is False:
        what = "something that is neither TLS nor HTTP"
    elif (
        f.port in (443, 8443) and f.stage == "request" and f.scheme == "http" and f.tls_seen is None
    ):
        what = "plain HTTP"
    else:
        return None
    return [
        _event(
            "non_tls_tunnel",
            "non_tls_tunnel",
            2,
            f"Sent {what} through a tunnel to {hi.host or f.host}:{f.port}, a trick VPNs and "
            "SSH tunnels use to pass as ordinary secure web traffic.",
            f,
            hi,
        )
    ]


@register_detector("vpn_client")
def _vpn_client(det: Detectors, f: TrafficFacts, hi: HostInfo) -> list[CircumventionEvent] | None:
    """A VPN or proxy application's User-Agent (not Tor Browser: it looks like Firefox ESR)."""
    ua = f.headers.get("user-agent")
    if not ua:
        return None
    found = _vpn_user_agent(ua)
    if found is None:
        return None
    token, severity = found
    return [
        _event(
            "vpn_client",
            "vpn_client",
            severity,
            f"A VPN or proxy app ({token}) is running on the device and contacted "
            f"{hi.host or f.host}.",
            f,
            hi,
            client=token,
        )
    ]


@register_detector("disguised_host")
def _disguised_host(
    det: Detectors, f: TrafficFacts, hi: HostInfo
) -> list[CircumventionEvent] | None:
    """A host written in a disguised way (percent-encoding, trailing dot, script mixing, ...)."""
    if (
        not hi.disguises
        and hi.skeleton is None
        and (f.sni is None or f.sni == f.host)
        and (f.http_host is None or f.http_host == f.host)
    ):
        return None
    events = None
    checked: list[HostInfo] = [hi]
    if f.sni and f.sni != f.host:
        checked.append(_analyse(f.sni))
    if f.http_host and f.http_host != f.host and f.http_host != f.sni:
        checked.append(_analyse(f.http_host))
    for info in checked:
        disguises = [d for d in info.disguises if d not in _IP_DISGUISES]
        listed = None
        if info.skeleton and det.circumvention_lookup is not None:
            listed = det.circumvention_lookup(info.skeleton)
            if listed:
                disguises.append("homograph-of-listed-host")
        if not disguises:
            continue
        events = events or []
        looks = f", made to look like {info.skeleton}" if info.skeleton else ""
        events.append(
            _event(
                "disguised_host",
                "disguised_host",
                2 if listed else 1,
                f"Wrote the site name {info.raw!r} in a disguised way "
                f"({', '.join(disguises)}){looks}.",
                f,
                hi,
                disguised_name=info.raw,
                normalised=info.host,
                disguises=", ".join(disguises),
                looks_like=info.skeleton,
                list_entry=listed,
            )
        )
    return events


_DESTINATION_SEVERITY = {"mismatch": 3, "malformed": 2, "unresolvable": 2, "no_name": 1}


@register_detector("unverified_destination")
def _unverified_destination(
    det: Detectors, f: TrafficFacts, hi: HostInfo
) -> list[CircumventionEvent] | None:
    """A destination the gateway refused because it cannot tell where it really goes: an
    address that is not the named site's, a name with no address, an address with no name, a
    Host or SNI that is not one host."""
    found = f.destination
    if found is None or found.verdict not in _DESTINATION_SEVERITY:
        return None
    return [
        _event(
            "unverified_destination",
            "unverified_destination",
            _DESTINATION_SEVERITY[found.verdict],
            f"Tried to reach somewhere the filter cannot check: {found.detail}.",
            f,
            hi,
            verdict=str(found.verdict),
            address=found.address,
            claimed_name=found.name,
        )
    ]


@register_detector("tor")
def _tor(det: Detectors, f: TrafficFacts, hi: HostInfo) -> list[CircumventionEvent] | None:
    """Tor: .onion names, tor2web gateways, bridge and snowflake infrastructure."""
    info = hi
    if info.tor is None and f.sni and f.sni != f.host:
        info = _analyse(f.sni)
    if info.tor is None:
        return None
    severity = 2 if "tor2web" in info.tor else 3
    return [
        _event(
            "tor",
            "tor",
            severity,
            f"Tried to reach {info.host}, {info.tor}.",
            f,
            hi,
            tor=info.tor,
        )
    ]


# --------------------------------------------------------------------------------------------
# The set of detectors the gateway runs
# --------------------------------------------------------------------------------------------


# Detectors that look only at where the traffic goes and how it is named (stage, host, port,
# SNI, Host header, scheme, TLS seen), never at the path or the headers: what they find for one
# such combination they find for every request with it.
_NAME_ONLY = frozenset(
    {
        "listed_host",
        "dot",
        "ip_literal",
        "domain_fronting",
        "no_sni",
        "odd_port",
        "non_tls_tunnel",
        "disguised_host",
        "tor",
    }
)
_CLEAN_NAMES_MAX = 65536
# Detectors that look only at a destination the gateway refused: run only when there is one.
_WHEN_REFUSED = frozenset({"unverified_destination"})


def wrapper_label(name: str) -> str:
    """How the e-safety team and the block page name a wrapper service."""
    return _WRAPPER_LABELS.get(name, name)


class DetectorsFailed(Exception):
    """Some detectors raised: what the others found is in ``events``, and the traffic must be
    refused (the filter could not check it)."""

    def __init__(self, events: list[CircumventionEvent], detectors: list[str]) -> None:
        super().__init__(f"circumvention detector(s) failed: {', '.join(detectors)}")
        self.events = events
        self.detectors = detectors


class Detectors:
    """The enabled detectors, configured once, run on every request by :meth:`inspect`."""

    __slots__ = (
        "names",
        "circumvention_lookup",
        "allowed_ports",
        "_allowed_nets",
        "_fns",
        "_request_fns",
        "_refused_fns",
        "_clean_names",
        "_ip_allowed",
    )

    def __init__(
        self,
        *,
        circumvention_lookup: Callable[[str], str | None] | None = None,
        allowed_ip_literals: Iterable[str] = (),
        allowed_ports: Iterable[int] = (80, 443, 8080, 8443),
        enabled: Iterable[str] | None = None,
    ) -> None:
        if enabled is None:
            names = tuple(_REGISTRY)
        else:
            wanted = set(enabled)
            unknown = sorted(wanted - set(_REGISTRY))
            if unknown:
                raise ValueError(
                    f"unknown circumvention detector(s): {', '.join(unknown)} "
                    f"(known: {', '.join(_REGISTRY)})"
                )
            names = tuple(n for n in _REGISTRY if n in wanted)
        self.names: tuple[str, ...] = names
        self.circumvention_lookup = circumvention_lookup
        self.allowed_ports = frozenset(int(p) for p in allowed_ports)
        self._allowed_nets = tuple(
            ipaddress.ip_network(c.strip(), strict=False) for c in allowed_ip_literals
        )
        self._fns = tuple((n, _REGISTRY[n]) for n in names if n not in _WHEN_REFUSED)
        self._request_fns = tuple((n, fn) for n, fn in self._fns if n not in _NAME_ONLY)
        self._refused_fns = tuple((n, _REGISTRY[n]) for n in names if n in _WHEN_REFUSED)
        # Destinations the name-only detectors found nothing in: a page's next requests to
        # the same site skip them (this set belongs to one configuration and its lists).
        self._clean_names: set[tuple] = set()
        self._ip_allowed: dict[IPAddress, bool] = {}
        _registrable("www.example.co.uk")  # load the public suffix list now, not mid-request

    def ip_allowed(self, ip: IPAddress) -> bool:
        allowed = self._ip_allowed.get(ip)
        if allowed is None:
            allowed = any(ip.version == n.version and ip in n for n in self._allowed_nets)
            if len(self._ip_allowed) < 65536:
                self._ip_allowed[ip] = allowed
        return allowed

    def inspect(self, facts: TrafficFacts) -> list[CircumventionEvent]:
        """Run the enabled detectors; [] for ordinary traffic. A failing detector is logged,
        the others still run, and then :class:`DetectorsFailed` is raised with their events."""
        hi = _analyse(facts.host) if facts.host else _NO_HOST
        names = (
            facts.stage,
            facts.host,
            facts.port,
            facts.sni,
            facts.http_host,
            facts.scheme,
            facts.tls_seen,
        )
        clean = names in self._clean_names
        events: list[CircumventionEvent] = []
        name_only_quiet = True
        failed: list[str] | None = None
        fns = self._request_fns if clean else self._fns
        if facts.destination is not None:
            fns += self._refused_fns
        for name, fn in fns:
            try:
                found = fn(self, facts, hi)
            except Exception:
                log.exception("circumvention detector %s failed on host %r", name, facts.host)
                name_only_quiet = False
                failed = [*(failed or ()), name]
                continue
            if found:
                events.extend(found)
                if name in _NAME_ONLY:
                    name_only_quiet = False
        if not clean and name_only_quiet:
            if len(self._clean_names) >= _CLEAN_NAMES_MAX:
                self._clean_names.clear()
            self._clean_names.add(names)
        if failed:
            raise DetectorsFailed(events, failed)
        return events
