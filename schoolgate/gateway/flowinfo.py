"""Cheap facts about a request for the hot path.

mitmproxy's ``Headers`` look a name up by scanning every field and lower-casing it,
``Request.pretty_host``/``host_header`` re-parse and IDNA-check the Host header on every
access (~8 us), and ``method``, ``scheme`` and ``path`` decode their bytes on every access.
The pages, the circumvention guard and Enforcement each need the Host header and the request
line, and the guard needs the headers its detectors read, in the same ``request`` event:
:func:`request_view` reads them once and keeps the answer for as long as the request's
headers and request line are the same objects (mitmproxy replaces the ``fields`` tuple, and
the bytes of the request line, on every change, so an edit is never missed).

The Host header is read strictly (:mod:`schoolgate.core.authority`): a value that is not
exactly one host and optional port, or two Host headers, leaves ``named_host`` None and says
why in ``host_problem`` (the request gets 400).
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

from mitmproxy import connection, http

from schoolgate.circumvention import DETECTOR_HEADERS
from schoolgate.core.authority import AuthorityError, address_host, parse_authority
from schoolgate.core.hosts import lower_host


class RequestView(NamedTuple):
    # The headers the circumvention detectors read (DETECTOR_HEADERS) and those that say
    # whether a block page is HTML (PAGE_HEADERS): lower-case names, repeated headers joined
    # with ", ". Only those: a browser sends a dozen or more, and decoding them all would
    # cost more than every detector's checks together. Read in one pass, however many there
    # are: looking a name up in mitmproxy's Headers scans them all.
    headers: dict[str, str]
    host_header: str | None  # the Host header (HTTP/2 and 3: the :authority)
    named_host: str | None  # its host: lower case, no port, no trailing dot (None: unreadable)
    method: str  # as mitmproxy's Request gives them
    scheme: str
    host: str  # where the request goes: the URL's host, the CONNECT target or the address
    port: int
    path: str
    host_problem: str | None = None  # why the Host header cannot be read (a 400), if it cannot


# The last request looked at, what its view was made from, and the view. One slot is enough:
# a request's hooks run one after another on the event loop.
_last: tuple = (None, None, None)


def request_view(request: http.Request) -> RequestView:
    global _last
    data = request.data
    fields = data.headers.fields
    made_from = (
        fields,
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
    # The headers kept, the Host header and how many Host headers there are, from the raw
    # fields in one pass (``Headers.items()`` looks every name up again: quadratic, ~50 us
    # for ten headers). Here rather than in a function of its own: the call and the tuple it
    # would return cost as much as reading two headers.
    headers: dict[str, str] = {}
    host_header = None
    host_count = 0
    names = _field_names
    for raw_name, raw_value in fields:
        try:
            name = names[raw_name]
        except KeyError:
            name = _field_name(raw_name)
        if name is None:
            continue
        # decode() with no arguments is a third cheaper than naming the codec and the error
        # handler, and gives the same text for valid UTF-8 (what browsers send).
        try:
            value = raw_value.decode()
        except UnicodeDecodeError:
            value = raw_value.decode("utf-8", "surrogateescape")
        if not name:  # _HOST
            host_header = value if host_header is None else f"{host_header}, {value}"
            host_count += 1
        else:
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
    # The :authority (HTTP/2 and 3). Most requests have none: asked first, it spares the
    # version's comparison.
    if made_from[1] and data.http_version in _H2_H3:
        authority = request.authority
        if host_header is not None and host_header != authority:
            host_count = 2  # RFC 9113 8.3.1: a Host header must name the :authority
        host_header = authority
        host_count = max(host_count, 1)
    try:
        named, problem = _named_hosts[host_header]
    except KeyError:
        named, problem = _named_host(host_header)
    if host_count > 1:
        named, problem = None, "more than one Host header"
    method = _methods.get(data.method) or _text(_methods, data.method, upper=True)
    scheme = _schemes.get(data.scheme) or _text(_schemes, data.scheme)
    try:
        path = data.path.decode()
    except UnicodeDecodeError:
        path = data.path.decode("utf-8", "surrogateescape")
    # tuple.__new__ straight: a NamedTuple's own __new__ is a Python function.
    view = _make_view(
        RequestView,
        (
            headers,
            host_header,
            named,
            method,
            scheme,
            data.host,
            data.port,
            path,
            problem,
        ),
    )
    _last = (request, made_from, view)
    return view


_H2_H3 = (b"HTTP/2.0", b"HTTP/3")
_make_view = tuple.__new__


# Request methods and schemes as mitmproxy's Request gives them (decoded; the method upper
# case): a handful of values, decoded once each.
_methods: dict[bytes, str] = {}
_schemes: dict[bytes, str] = {}


def _text(known: dict[bytes, str], raw: bytes, *, upper: bool = False) -> str:
    text = raw.decode("utf-8", "surrogateescape")
    if upper:
        text = text.upper()
    if len(known) < 64:
        known[raw] = text
    return text


# What blockpage.wants_html reads (Accept is a detector header too).
PAGE_HEADERS = frozenset({"accept", "sec-fetch-dest", "sec-fetch-mode", "x-requested-with"})
# What a page approval reads to open the approved page's own calls (Enforcement).
APPROVAL_HEADERS = frozenset({"referer"})
# What the monitoring reads to ask for page encodings it can read titles from.
MONITORING_HEADERS = frozenset({"accept-encoding"})
_KEPT = frozenset(
    name.encode()
    for name in DETECTOR_HEADERS | PAGE_HEADERS | APPROVAL_HEADERS | MONITORING_HEADERS
)


_HOST = ""  # what _field_names gives for a Host header (a kept header: its name)
# A field's name as sent -> its lower-case name if it is kept, _HOST for Host, None for the rest:
# browsers send the same few spellings, and a look-up here costs less than lower-casing each
# name of each request. Bounded: a client inventing names only makes them be read the long way.
_field_names: dict[bytes, str | None] = {}


def _field_name(raw_name: bytes) -> str | None:
    lower = raw_name.lower()
    kind: str | None = None
    if lower in _KEPT:
        kind = lower.decode("ascii")
    elif lower == b"host":
        kind = _HOST
    if len(_field_names) < 1024:
        _field_names[raw_name] = kind
    return kind


def header_value(headers: http.Headers, name: bytes) -> str | None:
    """``headers.get(name)`` for a lower-case ``name`` (repeated headers joined with ", ", as
    mitmproxy joins them), read from the raw fields in one pass: mitmproxy's look-up goes
    through several calls and lower-cases every name on the way."""
    values = [value for key, value in headers.fields if key.lower() == name]
    if not values:
        return None
    if len(values) == 1:
        return values[0].decode("utf-8", "surrogateescape")
    return ", ".join(value.decode("utf-8", "surrogateescape") for value in values)


# Host header value -> (its host, why it cannot be read): the same few hundred sites, request
# after request.
_named_hosts: dict[str | None, tuple[str | None, str | None]] = {None: (None, None)}


def _named_host(value: str | None) -> tuple[str | None, str | None]:
    try:
        return _named_hosts[value]
    except KeyError:
        named: tuple[str | None, str | None]
        try:
            named = (parse_authority(value.strip(" \t")).host, None)  # type: ignore[union-attr]
        except AuthorityError as exc:
            named = (None, f"the Host header {value[:100]!r} is not one host: {exc}")  # type: ignore[index]
        if len(_named_hosts) >= 4096:
            _named_hosts.clear()
            _named_hosts[None] = (None, None)
        _named_hosts[value] = named
        return named


def header_host(request: http.Request) -> str | None:
    """The host named by the Host header (HTTP/2: ``:authority``), lower case, no port."""
    return request_view(request).named_host


def request_hosts(request: http.Request, sni: str | None = None) -> tuple[str, list[str]]:
    """The host to decide on (as the user sees it: the Host header, else the request's), and
    any other host this request also reaches or names: where the connection goes
    (``request.host``: an absolute URL, the CONNECT target or, transparent, the address) and
    the TLS SNI. Each is decided: a Host header cannot smuggle a request to a blocked host."""
    return view_hosts(request_view(request), sni)


def view_hosts(view: RequestView, sni: str | None = None) -> tuple[str, list[str]]:
    """:func:`request_hosts` of a request whose view is at hand."""
    target = target_host(view.host)
    named = view.named_host
    primary = named or target
    others = []
    if target != primary:
        others.append(target)
    if sni:
        try:
            sni = _sni_hosts[sni]
        except KeyError:
            sni = _sni_host(sni)
        if sni != primary and sni != target:
            others.append(sni)
    return primary, others


# A TLS SNI as sent -> its spelling as a decision reads it (every intercepted HTTPS request
# has one, the same few hundred again and again).
_sni_hosts: dict[str, str] = {}


def _sni_host(sni: str) -> str:
    spelled = lower_host(sni).rstrip(".")
    if len(_sni_hosts) >= 4096:
        _sni_hosts.clear()
    _sni_hosts[sni] = spelled
    return spelled


# Where a request goes (mitmproxy's request.host) -> its spelling as a decision reads it.
_targets: dict[str, str] = {}


def target_host(host: str) -> str:
    """``request.host`` as the policy reads it: lower case, no trailing dot, and an address in
    its one spelling (``::ffff:a.b.c.d`` is ``a.b.c.d``)."""
    try:
        return _targets[host]
    except KeyError:
        spelled = address_host(host) or lower_host(host).rstrip(".")
        if len(_targets) >= 4096:
            _targets.clear()
        _targets[host] = spelled
        return spelled


_addresses: dict[str, bool] = {}


def is_address(host: str) -> bool:
    """Whether a target (as :func:`target_host` spells it) is an IP address."""
    try:
        return _addresses[host]
    except KeyError:
        found = ":" in host or (host[-1:].isdigit() and address_host(host) is not None)
        if len(_addresses) >= 4096:
            _addresses.clear()
        _addresses[host] = found
        return found


# Where a request goes (mitmproxy's request.host) -> target_host's spelling if it is an IP
# address, else None.
_address_targets: dict[str, str | None] = {}


def address_target(host: str) -> str | None:
    """``target_host(host)`` if that is an IP address (:func:`is_address`), else None: what the
    destination check asks of every request, in one look-up."""
    try:
        return _address_targets[host]
    except KeyError:
        target = target_host(host)
        found = target if is_address(target) else None
        if len(_address_targets) >= 4096:
            _address_targets.clear()
        _address_targets[host] = found
        return found


def user_of(flow: http.HTTPFlow) -> str | None:
    """The proxy-authenticated user of a flow (never the password, which the tuple holds)."""
    auth = flow.metadata.get("proxyauth")
    return auth[0] if auth else None


# The proxy-authenticated user of each client connection, from its CONNECT, for the TLS
# ClientHello and raw tunnel that follow (which carry no credentials).
_tunnel_users: weakref.WeakKeyDictionary[connection.Client, str | None] = (
    weakref.WeakKeyDictionary()
)


def remember_tunnel_user(client: connection.Client, user: str | None) -> None:
    _tunnel_users[client] = user


def tunnel_user(client: connection.Client) -> str | None:
    return _tunnel_users.get(client)
