"""Limits that keep one client from freezing the gateway for everyone else.

mitmproxy itself bounds none of this (its HTTP/1 reader says "FIXME: protect against header
size DoS"), so :class:`ConnectionLimits` does, with options a network manager can tune:

* ``schoolgate_max_client_connections`` (default 1200): open connections from one client
  address. A classroom behind one NAT address is 35 browsers; through a proxy Chrome and
  Firefox open at most 32 connections each (usually 6-10), so 35 x 32 = 1,120 is the very
  most a class needs. Past it, a new connection is closed at once (``client_connected``).
  0: no cap.
* ``schoolgate_header_timeout`` (default 30 s): a new connection must send a complete request
  (or, through a tunnel, its TLS ClientHello and then its first request) within this time: a
  client that connects and sends nothing, or half a request line, is closed. A tunnel passed
  through uninspected (a site not intercepted, ``ignore_hosts``, a protocol that is neither
  TLS nor HTTP) is left to the idle timeout.
* ``schoolgate_idle_timeout`` (default 300 s): a connection with no traffic for this long is
  closed (mitmproxy's own timeout, 600 s by default: ``tcp_timeout`` on mitmproxy 12); and
  after an answer, the next request must be complete within it, however slowly its bytes
  trickle in.
* ``schoolgate_max_request_headers`` (default 100) and ``schoolgate_max_request_head``
  (default 65536 bytes: the request line and headers): a bigger request is answered ``431
  Request Header Fields Too Large`` in the first hook that sees it (``requestheaders``,
  ``http_connect`` for a CONNECT), before any other part looks at it. Browsers send 10 to 30
  headers and a few KB (cookies make the most of it).

Refusals and closes are logged as they start and then once a minute, with counts, and
mitmproxy's own per-connection lines for those connections are left out: a flood of
connections must not become a flood of log. At start the soft limit on open files is raised
to the hard limit, and a warning says when it leaves too little room (each connection may
take two descriptors).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections import Counter
from typing import Any

from mitmproxy import connection, ctx, exceptions, http, tcp, tls
from mitmproxy.proxy import layer, layers

from schoolgate.gateway.flowmark import marked

log = logging.getLogger(__name__)

MAX_CONNECTIONS = "schoolgate_max_client_connections"
HEADER_TIMEOUT = "schoolgate_header_timeout"
IDLE_TIMEOUT = "schoolgate_idle_timeout"
MAX_HEADERS = "schoolgate_max_request_headers"
MAX_HEAD = "schoolgate_max_request_head"

SWEEP_EVERY = 1.0  # seconds between looks for connections past their deadline
REPORT_EVERY = 60.0
# Descriptors the gateway needs besides connections: its database, spool, lists, logs.
BASE_FDS = 256
MIN_CONNECTIONS = 2000  # the gateway should hold at least this many connections
_NO_NEXT_REQUEST = "no next request"
_monotonic = time.monotonic
_TEXT = {"content-type": "text/plain; charset=utf-8", "cache-control": "no-store"}


def fd_headroom(per_client: int) -> tuple[int, list[str]]:
    """Raise the soft limit on open files to the hard limit; (the limit, warnings)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        try:
            hard = int(open("/proc/sys/fs/nr_open").read())  # noqa: SIM115 - one read
        except (OSError, ValueError):
            hard = 1 << 20
    if soft == resource.RLIM_INFINITY or soft > hard:
        soft = hard
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.debug("cannot raise RLIMIT_NOFILE: %s", exc)
    warnings = []
    connections = max(0, (soft - BASE_FDS) // 2)
    if connections < MIN_CONNECTIONS:
        warnings.append(
            f"only {soft} open files allowed (ulimit -n): room for about {connections} "
            f"connections; raise it (LimitNOFILE= in the systemd unit, 65536 or more)"
        )
    if per_client and 2 * per_client > connections // 2:
        warnings.append(
            f"one client address may hold {per_client} connections "
            f"({MAX_CONNECTIONS}), more than half of the about {connections} this process "
            f"has room for; raise the open-files limit or lower {MAX_CONNECTIONS}"
        )
    return soft, warnings


class _QuietRefused(logging.Filter):
    """Leaves out mitmproxy's per-connection lines for connections refused or closed here."""

    def __init__(self, limits: ConnectionLimits) -> None:
        super().__init__()
        self.limits = limits

    def filter(self, record: logging.LogRecord) -> bool:
        peer = getattr(record, "client", None)
        if peer is None:
            return True
        limits = self.limits
        if peer in limits.quiet_peers:
            return False
        if record.msg == "client connect" and limits.at_cap(peer[0]):
            return False
        return True


class ConnectionLimits:
    name = "schoolgate_limits"

    def __init__(self) -> None:
        self.max_connections = 1200
        self.header_timeout = 30.0
        self.idle_timeout = 300
        self.max_headers = 100
        self.max_head = 65536
        self.open: Counter[str] = Counter()  # client address -> open connections
        self.quiet_peers: set[Any] = set()
        # client id -> (deadline, why): connections waiting for a (next) request
        self._waiting: dict[str, tuple[float, str]] = {}
        self._refused_ids: set[str] = set()
        # client id -> requests started and not yet answered. A plain dict: assigning to a
        # Counter (a dict subclass) goes through a slot wrapper, on every request.
        self._in_flight: dict[str, int] = {}
        self._tunnels: set[str] = set()
        self._hellos: dict[str, tls.ClientHelloData] = {}
        self._clients: dict[str, connection.Client] = {}
        self._counts: Counter[str] = Counter()  # what was refused or closed, to report
        self._reported = -REPORT_EVERY  # the first at once, then once a minute
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._filter = _QuietRefused(self)

    # -- options --------------------------------------------------------------------------
    def load(self, loader) -> None:
        loader.add_option(
            MAX_CONNECTIONS,
            int,
            1200,
            "Open connections allowed from one client address (0: no cap). The default lets "
            "a classroom of 35 behind one NAT address work.",
        )
        loader.add_option(
            HEADER_TIMEOUT,
            float,
            30.0,
            "Seconds a new connection has to send a complete request.",
        )
        loader.add_option(
            IDLE_TIMEOUT,
            int,
            300,
            "Seconds a connection may stay without traffic, or take to send its next request.",
        )
        loader.add_option(MAX_HEADERS, int, 100, "Headers allowed in one request (more: 431).")
        loader.add_option(
            MAX_HEAD,
            int,
            65536,
            "Bytes allowed in a request's line and headers together (more: 431).",
        )

    def configure(self, updated) -> None:
        options = ctx.options
        for name, minimum in ((MAX_CONNECTIONS, 0), (MAX_HEADERS, 1), (MAX_HEAD, 1024)):
            if name in updated and getattr(options, name) < minimum:
                raise exceptions.OptionsError(f"{name} must be at least {minimum}")
        for name in (HEADER_TIMEOUT, IDLE_TIMEOUT):
            if name in updated and getattr(options, name) <= 0:
                raise exceptions.OptionsError(f"{name} must be positive")
        self.max_connections = options.schoolgate_max_client_connections
        self.header_timeout = options.schoolgate_header_timeout
        self.max_headers = options.schoolgate_max_request_headers
        self.max_head = options.schoolgate_max_request_head
        if IDLE_TIMEOUT in updated:
            self.idle_timeout = options.schoolgate_idle_timeout
            _set_mitmproxy_idle_timeout(self.idle_timeout)

    def running(self) -> None:
        limit, warnings = fd_headroom(self.max_connections)
        for warning in warnings:
            log.warning("schoolgate: %s", warning)
        log.info("schoolgate: up to %d open files", limit)
        logging.getLogger("mitmproxy.proxy.server").addFilter(self._filter)
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None

    def done(self) -> None:
        logging.getLogger("mitmproxy.proxy.server").removeFilter(self._filter)
        self._loop = None
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._report(force=True)

    # -- connections ----------------------------------------------------------------------
    def at_cap(self, address: str) -> bool:
        return bool(self.max_connections) and self.open[address] >= self.max_connections

    def client_connected(self, client: connection.Client) -> None:
        address = client.peername[0] if client.peername else ""
        if self.at_cap(address):
            client.error = f"more than {self.max_connections} connections from {address}"
            self._refused_ids.add(client.id)
            self.quiet_peers.add(client.peername)
            self._counts[f"refused: more than {self.max_connections} open ({MAX_CONNECTIONS})"] += 1
            if self._sweeper is None and self._loop is not None:
                self._sweeper = self._loop.call_later(0, self._sweep)  # report it now
            return
        self.open[address] += 1
        self._clients[client.id] = client
        self._wait(client.id, self.header_timeout, "no complete request")

    def client_disconnected(self, client: connection.Client) -> None:
        cid = client.id
        self.quiet_peers.discard(client.peername)  # mitmproxy has logged its last line
        if cid in self._refused_ids:
            self._refused_ids.discard(cid)
            return
        if self._clients.pop(cid, None) is None:
            return
        address = client.peername[0] if client.peername else ""
        self.open[address] -= 1
        if self.open[address] <= 0:
            del self.open[address]
        self._waiting.pop(cid, None)
        self._in_flight.pop(cid, None)
        self._tunnels.discard(cid)
        self._hellos.pop(cid, None)

    def _wait(self, cid: str, seconds: float, why: str) -> None:
        self._waiting[cid] = (_monotonic() + seconds, why)
        if self._sweeper is None and self._loop is not None:
            self._sweeper = self._loop.call_later(SWEEP_EVERY, self._sweep)

    # -- requests -------------------------------------------------------------------------
    def _refuse_if_too_large(self, flow: http.HTTPFlow) -> None:
        """Answer 431 if the request has too many headers, or too many bytes in its request
        line and headers (what a browser sends is far within both)."""
        data = flow.request.data
        fields = data.headers.fields
        count = len(fields)
        if count <= self.max_headers:
            # A loop rather than sum(map(len, chain.from_iterable(fields))): cheaper for the
            # ten or so headers of a request.
            size = len(data.path) + len(data.authority) + 4 * count
            for name, value in fields:
                size += len(name) + len(value)
            if size <= self.max_head:
                return
            what = f"{size} bytes of request line and headers (at most {self.max_head}: {MAX_HEAD})"
        else:
            what = f"{count} headers (at most {self.max_headers}: {MAX_HEADERS})"
        headers = dict(_TEXT)
        if data.http_version.startswith(b"HTTP/1"):
            headers["connection"] = "close"
        flow.response = http.Response.make(
            431, f"Request Header Fields Too Large: {what}\n", headers
        )
        flow.response.reason = "Request Header Fields Too Large"  # not in mitmproxy's table
        marked(flow.metadata).refused = what
        self._counts["answered 431: request headers too large"] += 1

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        cid = flow.client_conn.id
        self._waiting.pop(cid, None)
        if self._hellos:  # (empty but for a handshake in progress: no call then)
            self._hellos.pop(cid, None)
        in_flight = self._in_flight
        in_flight[cid] = in_flight.get(cid, 0) + 1
        if flow.response is None:
            self._refuse_if_too_large(flow)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        cid = flow.client_conn.id
        # The tunnel's first bytes (a ClientHello, or a request) are due as a request is.
        self._wait(cid, self.header_timeout, "no complete request")
        if flow.response is None:
            self._refuse_if_too_large(flow)

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        cid = data.context.client.id
        if cid in self._clients and cid not in self._tunnels and not self._in_flight.get(cid, 0):
            self._wait(cid, self.header_timeout, "no complete request")
            # Enforcement, after this part, may pass the connection through uninspected
            # (``ignore_connection``): mitmproxy then starts no hook for it; the sweep looks.
            self._hellos[cid] = data

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        """Bytes passed through as they are (mitmproxy's ``ignore_hosts``, a tunnel that is
        neither TLS nor HTTP): no request will come."""
        if isinstance(nextlayer.layer, (layers.TCPLayer, layers.UDPLayer)):
            self._tunnel(nextlayer.context.client.id)

    def _answered(self, flow: http.HTTPFlow) -> None:
        cid = flow.client_conn.id
        # The requests still open on the connection (HTTP/2 has several at once): a missing
        # count is one, so that this answer leaves none.
        left = self._in_flight.pop(cid, 1) - 1
        if left > 0:
            self._in_flight[cid] = left
        elif cid in self._clients and cid not in self._tunnels:
            self._wait(cid, self.idle_timeout, _NO_NEXT_REQUEST)

    response = _answered

    error = _answered

    def _tunnel(self, cid: str) -> None:
        """Bytes passed through (an uninspected TLS tunnel, a WebSocket): mitmproxy's own
        inactivity timeout is all that applies."""
        self._tunnels.add(cid)
        self._waiting.pop(cid, None)
        self._hellos.pop(cid, None)

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        self._tunnel(flow.client_conn.id)

    def websocket_start(self, flow: http.HTTPFlow) -> None:
        self._tunnel(flow.client_conn.id)

    # -- the sweep ------------------------------------------------------------------------
    def _sweep(self) -> None:
        """Every second while connections wait (or counts wait to be reported)."""
        try:
            self.sweep(time.monotonic())
            self._report()
        except Exception:  # noqa: BLE001 - the sweep must go on
            log.exception("schoolgate: connection limits sweep failed")
        self._sweeper = None
        if self._loop is not None and (self._waiting or self._counts):
            self._sweeper = self._loop.call_later(SWEEP_EVERY, self._sweep)

    def sweep(self, now: float) -> int:
        """Close the connections past their deadline; how many."""
        late = [(cid, why) for cid, (deadline, why) in self._waiting.items() if deadline <= now]
        for cid, why in late:
            del self._waiting[cid]
            hello = self._hellos.pop(cid, None)
            if hello is not None and hello.ignore_connection:
                self._tunnels.add(cid)  # passed through after its ClientHello
                continue
            client = self._clients.get(cid)
            if client is not None and _close(client):
                self.quiet_peers.add(client.peername)
                if why == "no complete request":
                    reason = f"closed: {why} within {self.header_timeout:g} s ({HEADER_TIMEOUT})"
                else:
                    reason = f"closed: {why} within {self.idle_timeout} s ({IDLE_TIMEOUT})"
                self._counts[reason] += 1
        return len(late)

    def _report(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self._counts or (not force and now - self._reported < REPORT_EVERY):
            return
        self._reported = now
        for what, count in sorted(self._counts.items()):
            log.warning("schoolgate: %d connection(s) %s", count, what)
        busiest = self.open.most_common(1)
        if busiest:
            log.warning(
                "schoolgate: %d connection(s) open; most from %s (%d)",
                sum(self.open.values()),
                busiest[0][0],
                busiest[0][1],
            )
        self._counts.clear()


def _close(client: connection.Client) -> bool:
    """Close a client connection as mitmproxy's own inactivity timeout does."""
    try:
        proxyserver = ctx.master.addons.get("proxyserver")
        handler = proxyserver.connections.get(client.id) if proxyserver else None
        io = handler.transports.get(handler.client) if handler is not None else None
    except AttributeError:  # another mitmproxy's internals: leave it to its own timeout
        return False
    if io is None:
        return False
    if io.handler is not None:
        io.handler.cancel("schoolgate: connection limits")
    elif io.writer is not None:
        io.writer.close()
    else:
        return False
    return True


def _set_mitmproxy_idle_timeout(seconds: int) -> None:
    """mitmproxy 12's ``tcp_timeout`` option; on 11, the module's constant that each new
    connection reads."""
    if "tcp_timeout" in ctx.options:
        ctx.options.update(tcp_timeout=int(seconds))
        return
    from mitmproxy.proxy import server

    # mitmproxy 11 only (12 has the option above), so unknown to 12's types.
    server.TCP_TIMEOUT = int(seconds)  # type: ignore[attr-defined]
