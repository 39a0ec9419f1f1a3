"""Host name normalisation: one spelling for every way a host can be written.

Lists and requests both go through :func:`normalize_host`, so that ``WWW.Facebook.com.``,
``www.facebook.com:443`` and an IDN and its punycode all compare equal.
"""

from __future__ import annotations

import ipaddress
import re
from functools import cache, lru_cache
from urllib.parse import unquote

import idna
from publicsuffixlist import PublicSuffixList

# Most hosts on the wire are already normal: a fast check saves the full work (and the cache).
_ALREADY_NORMAL = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*").fullmatch
# Public for the hot path: a true answer means ``normalize_host(raw) == raw``, so a caller
# that tests this first saves the call.
is_normal_host = _ALREADY_NORMAL
# The cheapest such test, for the policy's every request: a host with none of these
# characters and no final dot is its own normal form (``normalize_host`` changes a host only
# for a capital, a non-ASCII letter, space, ``%``, ``/``, ``@``, ``:``, ``[`` or a final
# dot). A search that finds nothing builds no match object: half the instructions of
# ``is_normal_host``.
find_odd_host_char = re.compile(r"[^a-z0-9_.-]").search


def lower_host(text: str) -> str:
    """Lower case as IDNA does it: Python's ``str.lower`` turns a capital sigma at the end of a
    word into the final form ``ς``, where UTS 46 always gives ``σ`` (``AΣ中`` is ``aσ中``)."""
    if text.isascii():
        return text.lower()
    return text.replace("\u03a3", "\u03c3").lower()


def normalize_host(raw: str) -> str:
    """Lower-case ASCII (punycode) host without port, brackets or trailing dot.

    Returns "" for something that is not a host at all.
    """
    if find_odd_host_char(raw) is None and raw[-1:] != ".":
        return raw
    return _normalize_host(raw)


@lru_cache(maxsize=65536)
def _normalize_host(raw: str) -> str:
    # Run to a fixed point, so that normalising twice changes nothing: one pass can uncover
    # what only a second pass removes ("fa%2563ebook.com" -> "fa%63ebook.com"; a fullwidth
    # "／" or "＠" that IDNA maps to "/" or "@").
    host = _normalize_once(raw)
    for _ in range(4):
        if _ALREADY_NORMAL(host):
            break
        again = _normalize_once(host)
        if again == host:
            break
        host = again
    return host


def _normalize_once(raw: str) -> str:
    host = raw.strip()
    if "%" in host:
        host = unquote(host)
    if "://" in host:
        host = host.split("://", 1)[1]
    host = host.split("/", 1)[0]
    if "@" in host:
        host = host.rsplit("@", 1)[1]
    if host.startswith("["):  # [::1]:443
        end = host.find("]")
        return _ipv6(host[1:end]) if end > 0 else ""
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    elif host.count(":") > 1:  # bare IPv6
        return _ipv6(host)
    host = lower_host(host.rstrip("."))
    if not host:
        return ""
    if not host.isascii():
        host = _to_ascii(host)
    return host


def _to_ascii(host: str) -> str:
    """Punycode as browsers write it: UTS 46, non-transitional (``faß`` stays ``faß``, not
    IDNA 2003's ``fass``), label by label so that one odd label does not spoil the rest."""
    try:
        return idna.encode(host, uts46=True, transitional=False).decode("ascii")
    except idna.IDNAError:
        pass
    labels = []
    for label in host.split("."):
        if not label or label.isascii():
            labels.append(label)
            continue
        try:
            labels.append(idna.encode(label, uts46=True, transitional=False).decode("ascii"))
        except idna.IDNAError:
            try:
                labels.append(label.encode("idna").decode("ascii"))
            except UnicodeError:
                labels.append(label)
    return ".".join(labels)


def _ipv6(text: str) -> str:
    """One spelling for an IPv6 address (compressed, lower case), so lists match it."""
    try:
        return ipaddress.IPv6Address(text.split("%", 1)[0]).compressed
    except ValueError:
        return text.lower()


def is_google_host(host: str) -> bool:
    """``google.com``, ``www.google.co.uk``, ``images.google.com.au``; not ``googleapis.com``."""
    parts = host.split(".")
    try:
        index = parts.index("google")
    except ValueError:
        return False
    tail = parts[index + 1 :]
    return 1 <= len(tail) <= 2 and all(0 < len(label) <= 3 for label in tail)


def host_suffixes(host: str) -> list[str]:
    """``a.b.c`` -> ``["a.b.c", "b.c", "c"]``: the names a domain rule can match on."""
    parts = host.split(".")
    return [".".join(parts[i:]) for i in range(len(parts))]


@cache
def _public_suffix_list(*, only_icann: bool = False) -> PublicSuffixList:
    # The snapshot bundled with the installed package: nothing is fetched.
    return PublicSuffixList(only_icann=only_icann)


def is_registry_suffix(host: str) -> bool:
    """Whether a normalised host name is a suffix under which a registry hands out names to
    unrelated owners (the Public Suffix List's ICANN section: ``co.uk``, ``kent.sch.uk``,
    ``com.au``), rather than one owner's domain. Shared hosting domains (``github.io``, the
    list's private section) are not registries."""
    return bool(host) and _public_suffix_list(only_icann=True).is_public(host)


@lru_cache(maxsize=16384)
def registrable_domain(host: str) -> str:
    """The registrable domain of a normalised host name: ``www.bbc.co.uk`` -> ``bbc.co.uk``,
    ``www.stmarys.kent.sch.uk`` -> ``stmarys.kent.sch.uk``.

    By the Public Suffix List, its private section included: each user's site on a shared
    hosting domain is its own (``relay.appspot.com``, ``someone.github.io``). Under a
    top-level domain the list does not know, the last label is the suffix (``a.b.test`` ->
    ``b.test``). A name that is itself a public suffix (``co.uk``, ``github.io``), a single
    label (``localhost``) or not a host name at all is its own registrable domain.
    """
    if not host:
        return ""
    return _public_suffix_list().privatesuffix(host) or host
