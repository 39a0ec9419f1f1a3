"""Connection limits, driven with mitmproxy's test helpers (the real gateway: test_hostile_e2e)."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import pytest
from mitmproxy import connection, exceptions, tls
from mitmproxy.proxy import context, layer, layers
from mitmproxy.test import taddons, tflow, tutils

from schoolgate.gateway.limits import ConnectionLimits, fd_headroom


class Task:
    """Stands in for the task mitmproxy runs a client connection in."""

    def __init__(self) -> None:
        self.cancelled: str | None = None

    def cancel(self, why: str) -> None:
        self.cancelled = why


class FakeProxyserver:
    """mitmproxy's proxyserver addon as far as closing a connection goes: its handlers by
    client id, each with the client's transport and the task reading it."""

    name = "proxyserver"

    def __init__(self) -> None:
        self.connections: dict[str, SimpleNamespace] = {}

    def add(self, client: connection.Client) -> Task:
        task = Task()
        io = SimpleNamespace(handler=task, writer=None)
        self.connections[client.id] = SimpleNamespace(client=client, transports={client: io})
        return task


def client(address: str = "10.20.1.5", port: int = 50000) -> connection.Client:
    return connection.Client(
        peername=(address, port), sockname=("10.20.0.1", 8080), timestamp_start=time.time()
    )


@pytest.fixture
def limits():
    addon = ConnectionLimits()
    server = FakeProxyserver()
    with taddons.context(addon, server) as tctx:
        addon.server = server
        addon.tctx = tctx
        yield addon


def request_flow(conn: connection.Client, headers: int = 10, value: str = "v") -> tflow.HTTPFlow:
    req = tutils.treq(host="social.test", port=80, path=b"/x", authority=b"")
    req.headers.clear()
    req.headers["Host"] = "social.test"
    for i in range(headers - 1):
        req.headers.add(f"X-Filler-{i}", value)
    flow = tflow.tflow(req=req)
    flow.client_conn = conn
    flow.response = None
    return flow


# -- request size ---------------------------------------------------------------------------


def test_too_many_headers_get_431(limits):
    conn = client()
    limits.client_connected(conn)
    ok = request_flow(conn, headers=100)
    limits.requestheaders(ok)
    assert ok.response is None
    big = request_flow(conn, headers=101)
    limits.requestheaders(big)
    assert big.response.status_code == 431
    assert big.response.reason == "Request Header Fields Too Large"
    assert b"101 headers (at most 100: schoolgate_max_request_headers)" in big.response.content
    assert big.response.headers["connection"] == "close"


def test_a_head_too_large_gets_431(limits):
    conn = client()
    limits.client_connected(conn)
    flow = request_flow(conn, headers=3, value="c" * 40_000)  # two 40 KB cookies, say
    limits.requestheaders(flow)
    assert flow.response.status_code == 431
    assert b"bytes of request line and headers (at most 65536" in flow.response.content


def test_a_connect_with_too_many_headers_is_refused(limits):
    conn = client()
    limits.client_connected(conn)
    flow = request_flow(conn, headers=500)
    flow.request.method = "CONNECT"
    limits.http_connect(flow)
    assert flow.response.status_code == 431


def test_the_limits_can_be_raised(limits):
    limits.tctx.configure(
        limits, schoolgate_max_request_headers=20_000, schoolgate_max_request_head=10_000_000
    )
    conn = client()
    limits.client_connected(conn)
    flow = request_flow(conn, headers=10_000)
    limits.requestheaders(flow)
    assert flow.response is None


# -- connections per address ----------------------------------------------------------------


def test_connections_past_the_cap_from_one_address_are_refused(limits):
    limits.tctx.configure(limits, schoolgate_max_client_connections=3)
    mine = [client(port=50000 + i) for i in range(4)]
    for conn in mine:
        limits.client_connected(conn)
    assert [conn.error for conn in mine[:3]] == [None, None, None]
    assert "more than 3 connections from 10.20.1.5" in mine[3].error
    other = client("10.20.1.6")
    limits.client_connected(other)  # another address is not affected
    assert other.error is None
    limits.client_disconnected(mine[3])  # the refused one leaves nothing behind
    limits.client_disconnected(mine[0])
    again = client(port=51000)
    limits.client_connected(again)
    assert again.error is None
    assert limits.open["10.20.1.5"] == 3


def test_no_cap_when_set_to_zero(limits):
    limits.tctx.configure(limits, schoolgate_max_client_connections=0)
    conns = [client(port=50000 + i) for i in range(2000)]
    for conn in conns:
        limits.client_connected(conn)
    assert all(conn.error is None for conn in conns)


# -- timeouts -------------------------------------------------------------------------------


def test_a_connection_that_sends_no_request_is_closed_after_the_header_timeout(limits):
    quiet, talking = client(port=1), client(port=2)
    tasks = [limits.server.add(quiet), limits.server.add(talking)]
    for conn in (quiet, talking):
        limits.client_connected(conn)
    flow = request_flow(talking)
    limits.requestheaders(flow)  # a complete request: no header timeout any more
    now = time.monotonic()
    assert limits.sweep(now + 29) == 0
    limits.sweep(now + 31)
    assert tasks[0].cancelled and tasks[1].cancelled is None
    assert quiet.peername in limits.quiet_peers  # mitmproxy's lines for it are left out
    # After its answer the next request is due within the idle timeout, bytes or no bytes.
    limits.response(flow)
    limits.sweep(now + 250)
    assert tasks[1].cancelled is None
    limits.sweep(now + 301 + 31)
    assert tasks[1].cancelled is not None


def test_a_request_in_progress_is_not_cut(limits):
    conn = client()
    task = limits.server.add(conn)
    limits.client_connected(conn)
    first, second = request_flow(conn), request_flow(conn)  # HTTP/2: two at once
    limits.requestheaders(first)
    limits.requestheaders(second)
    limits.response(first)
    limits.sweep(time.monotonic() + 10_000)
    assert task.cancelled is None  # the second is still being answered
    limits.error(second)
    limits.sweep(time.monotonic() + 10_000)
    assert task.cancelled is not None


def test_tunnels_are_left_to_the_inactivity_timeout(limits):
    conn = client()
    task = limits.server.add(conn)
    limits.client_connected(conn)
    connect = request_flow(conn)
    connect.request.method = "CONNECT"
    limits.http_connect(connect)
    limits.tcp_start(tflow.ttcpflow(client_conn=conn))
    limits.sweep(time.monotonic() + 10_000)
    assert task.cancelled is None


def _hello(conn: connection.Client, options) -> tls.ClientHelloData:
    ctx = context.Context(conn, options)
    ctx.server = connection.Server(address=("bank.example", 443))
    return tls.ClientHelloData(ctx, SimpleNamespace(sni="bank.example"))  # type: ignore


def test_a_tunnel_passed_through_after_its_clienthello_is_left_alone(limits):
    """A site that is not intercepted: Enforcement (after this part) passes the connection
    through, and mitmproxy starts no hook for it again. It is not a slow client."""
    passed, inspected = client(port=1), client(port=2)
    tasks = [limits.server.add(passed), limits.server.add(inspected)]
    for conn in (passed, inspected):
        limits.client_connected(conn)
        connect = request_flow(conn)
        connect.request.method = "CONNECT"
        limits.http_connect(connect)
    hellos = [_hello(conn, limits.tctx.options) for conn in (passed, inspected)]
    for hello in hellos:
        limits.tls_clienthello(hello)
    hellos[0].ignore_connection = True  # as Enforcement does for a site not intercepted
    limits.sweep(time.monotonic() + 10_000)
    assert tasks[0].cancelled is None
    assert tasks[1].cancelled is not None  # a ClientHello and then nothing: closed


def test_a_tunnel_mitmproxy_passes_through_is_left_alone(limits):
    conn = client()
    task = limits.server.add(conn)
    limits.client_connected(conn)
    ctx = context.Context(conn, limits.tctx.options)
    nextlayer = layer.NextLayer(ctx)
    nextlayer.layer = layers.TCPLayer(ctx, ignore=True)  # ignore_hosts: no tcp_start
    limits.next_layer(nextlayer)
    limits.sweep(time.monotonic() + 10_000)
    assert task.cancelled is None


def test_the_idle_timeout_is_mitmproxys(limits):
    limits.tctx.configure(limits, schoolgate_idle_timeout=42)
    from mitmproxy import ctx

    if "tcp_timeout" in ctx.options:  # mitmproxy 12
        assert ctx.options.tcp_timeout == 42
    else:  # mitmproxy 11 reads it for each new connection
        from mitmproxy.proxy import server

        assert server.TCP_TIMEOUT == 42
    limits.tctx.configure(limits, schoolgate_idle_timeout=300)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("schoolgate_max_client_connections", -1),
        ("schoolgate_header_timeout", 0),
        ("schoolgate_idle_timeout", 0),
        ("schoolgate_max_request_headers", 0),
        ("schoolgate_max_request_head", 100),
    ],
)
def test_options_are_checked(limits, option, value):
    with pytest.raises(exceptions.OptionsError, match=option):
        limits.tctx.configure(limits, **{option: value})


# -- what is logged -------------------------------------------------------------------------


def test_mitmproxys_lines_for_refused_connections_are_left_out(limits, caplog):
    limits.tctx.configure(limits, schoolgate_max_client_connections=1)
    logger = logging.getLogger("mitmproxy.proxy.server")
    logger.addFilter(limits._filter)
    try:
        caplog.set_level(logging.INFO, logger="mitmproxy.proxy.server")
        first, second = client(port=1), client(port=2)
        logger.info("client connect", extra={"client": first.peername})
        limits.client_connected(first)
        logger.info("client connect", extra={"client": second.peername})
        limits.client_connected(second)
        logger.info("client kill connection", extra={"client": second.peername})
        logger.info("client disconnect", extra={"client": second.peername})
        limits.client_disconnected(second)
    finally:
        logger.removeFilter(limits._filter)
    lines = [(r.getMessage(), r.client) for r in caplog.records]
    assert lines == [("client connect", first.peername)]


def test_refusals_are_reported_with_counts(limits, caplog):
    caplog.set_level(logging.WARNING, logger="schoolgate.gateway.limits")
    limits.tctx.configure(limits, schoolgate_max_client_connections=2)
    for port in range(10):
        limits.client_connected(client(port=port))
    limits._report()
    text = caplog.text
    assert "8 connection(s) refused: more than 2 open (schoolgate_max_client_connections)" in text
    assert "2 connection(s) open; most from 10.20.1.5 (2)" in text


# -- open files -----------------------------------------------------------------------------


def test_the_open_files_limit_is_raised_and_checked():
    script = textwrap.dedent(
        """
        import resource
        from schoolgate.gateway.limits import fd_headroom
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 1024))
        limit, warnings = fd_headroom(1200)
        print(limit, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        print("\\n".join(warnings))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    first, *warnings = out.splitlines()
    assert first == "1024 1024"  # the soft limit raised to the hard one
    assert any("only 1024 open files allowed" in w for w in warnings)
    assert any("one client address may hold 1200 connections" in w for w in warnings)
    limit, none = fd_headroom(1200)  # this machine's: enough for the tests
    assert limit >= 1024 and isinstance(none, list)
