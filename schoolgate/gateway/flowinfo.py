"""Cheap facts about a request for the hot path.

mitmproxy's ``Headers`` look a name up by scanning every field and lower-casing it,
``Request.pretty_host``/``host_header`` re-parse and IDNA-check the Host header on every
access (~8 us), and ``method``, ``scheme`` and ``path`` decode their bytes on every access.
The pages, the circumvention guard and Enforcement each need the Host header and the request
line, and the guard needs the headers its detectors read, in the same ``request`` event:
:func:`request_view` reads them once and keeps the answer for as long as the request's
headers and request line are the same objects (mitmproxy replaces the ``fields`` tuple, and
the bytes of the request line, on every change, so an edit is never missed).
"""

from __future__ import annotations

from typing import NamedTuple

from mitmproxy import http

from schoolgate.circumvention import DETECTOR_HEADERS
from schoolgate.hosts import lower_host


class RequestView(NamedTuple):
    # The headers the circumvention detectors read (DETECTOR_HEADERS) and those that say
    # whether a block page is HTML (PAGE_HEADERS): lower-case names, repeated headers joined
    # with ", ". Only those: a browser sends a dozen or more, and decoding them all would
    # cost more than every detector's checks together. Read in one pass, however many there
    # are: looking a name up in mitmproxy's Headers scans them all.
    headers: dict[str, str]
    host_header: str | None  # the Host header (HTTP/2 and 3: the :authority)
    named_host: str | None  # its host: lower case, no port, no trailing dot
    method: str  # as mitmproxy's Request gives them
    scheme: str
    host: str  # where the request goes: the URL's host, the CONNECT target or the address
    port: int
    path: str


# The last request looked at, what its view was made from, and the view. One slot is enough:
# a request's hooks run one after another on the event loop.
_last: tuple = (None, None, None)


def request_view(request: http.Request) -> RequestView:
    global _last
    data = request.data
    made_from = (
        data.headers.fields,
        data.authority,
        data.method,
        data.scheme,
        data.host,
        data.port,
        data.path,
        data.http_version,
    )
    last_request, last_made_from, view = _last
    # Tuples compare their items by identity first, so this is cheap; and the view is made
    # from nothing else, so equal items would give an equal view.
    if last_request is request and last_made_from == made_from:
        return view
    headers, host_header = _read_headers(made_from[0])
    if data.http_version in (b"HTTP/2.0", b"HTTP/3"):  # the :authority
        host_header = request.authority or host_header
    view = RequestView(
        headers,
        host_header,
        _named_host(host_header),
        data.method.decode("utf-8", "surrogateescape").upper(),  # as Request.method
        data.scheme.decode("utf-8", "surrogateescape"),
        data.host,
        data.port,
        data.path.decode("utf-8", "surrogateescape"),
    )
    _last = (request, made_from, view)
    return view


# What blockpage.wants_html reads (Accept is a detector header too).
PAGE_HEADERS = frozenset({"accept", "sec-fetch-dest", "sec-fetch-mode", "x-requested-with"})
_KEPT = frozenset(name.encode() for name in DETECTOR_HEADERS | PAGE_HEADERS)


def _read_headers(fields: tuple[tuple[bytes, bytes], ...]) -> tuple[dict[str, str], str | None]:
    """The detectors' headers, and the Host header, from the raw fields in one pass
    (``Headers.items()`` looks every name up again: quadratic, ~50 us for ten headers)."""
    out: dict[str, str] = {}
    host = None
    for raw_name, raw_value in fields:
        raw_name = raw_name.lower()
        if raw_name in _KEPT:
            name = raw_name.decode("ascii")
            value = raw_value.decode("utf-8", "surrogateescape")
            out[name] = f"{out[name]}, {value}" if name in out else value
        elif raw_name == b"host":
            value = raw_value.decode("utf-8", "surrogateescape")
            host = value if host is None else f"{host}, {value}"
    return out, host


# Host header value -> its host: the same few hundred sites, request after request.
_named_hosts: dict[str, str | None] = {}


def _named_host(value: str | None) -> str | None:
    try:
        return _named_hosts[value]
    except KeyError:
        named = authority_host(value)
        if len(_named_hosts) >= 4096:
            _named_hosts.clear()
        _named_hosts[value] = named
        return named


def header_host(request: http.Request) -> str | None:
    """The host named by the Host header (HTTP/2: ``:authority``), lower case, no port."""
    return request_view(request).named_host


def authority_host(value: str | None) -> str | None:
    """The host of a Host header or ``:authority`` value, lower case, no port."""
    if not value:
        return None
    value = lower_host(value.strip())
    if value.startswith("["):  # [v6]:port
        end = value.find("]")
        return value[1:end] if end > 0 else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".") or None


def request_hosts(request: http.Request, sni: str | None = None) -> tuple[str, list[str]]:
    """The host to decide on (as the user sees it: the Host header, else the request's), and
    any other host this request also reaches or names: where the connection goes
    (``request.host``: an absolute URL, the CONNECT target or, transparent, the address) and
    the TLS SNI. Each is decided: a Host header cannot smuggle a request to a blocked host."""
    view = request_view(request)
    target = lower_host(view.host).rstrip(".")  # as the Host header is lowered
    named = view.named_host
    primary = named or target
    others = []
    if target != primary:
        others.append(target)
    if sni:
        sni = lower_host(sni).rstrip(".")
        if sni != primary and sni != target:
            others.append(sni)
    return primary, others
