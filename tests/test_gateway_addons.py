"""The gateway's addons, driven with mitmproxy's test helpers (no sockets)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from mitmproxy import certs, connection, tls
from mitmproxy.proxy import context
from mitmproxy.test import taddons, tflow, tutils

from schoolgate.gateway import (
    AlertsAddon,
    CircumventionGuard,
    ConnectionLimits,
    DestinationCheck,
    Enforcement,
    ExceptionCache,
    FediverseWatch,
    GatewayPages,
    HealthAddon,
    IdentitySourcesAddon,
    JobsAddon,
    PolicyHolder,
    PortalAddon,
    ProxyAuthCache,
    Recorder,
    make_addons,
)
from schoolgate.gateway.flowmark import answered, flow_mark, for_portal, is_own
from schoolgate.gateway.holder import watched_files
from schoolgate.gateway.monitoring_addon import MonitoringAddon
from schoolgate.gateway.pages import pac_script

STUDENT_IP = "127.0.0.1"
VISITOR_IP = "127.0.0.2"


@dataclass
class Gateway:
    tctx: taddons.context
    holder: PolicyHolder
    recorder: Recorder
    limits: ConnectionLimits
    jobs: JobsAddon
    exceptions: ExceptionCache
    pages: GatewayPages
    portal: PortalAddon
    identity: IdentitySourcesAddon
    destinations: DestinationCheck
    guard: CircumventionGuard
    fediverse: FediverseWatch
    enforce: Enforcement
    alerts: AlertsAddon
    monitoring: MonitoringAddon
    logins: ProxyAuthCache
    health: HealthAddon
    config: Path

    def events(self) -> list[dict]:
        from schoolgate.storage.events import list_events

        assert self.recorder.eventlog.flush(10)
        with self.recorder.sessions() as session:
            return list_events(session, limit=None)


def _configured(parts: list, loaded: list, config: Path, data_dir: Path):
    """``loaded`` (the parts themselves, or the one addon around them) in a mitmproxy test
    context on the test config; yields the parts as a :class:`Gateway`."""
    with taddons.context(*loaded) as tctx:
        tctx.configure(
            loaded[0],
            schoolgate_config=str(config),
            schoolgate_data_dir=str(data_dir),
            confdir=str(data_dir / "ca"),
        )
        gateway = Gateway(tctx, *parts, config=config)
        gateway.exceptions.refresh()
        yield gateway
        gateway.recorder.done()


@pytest.fixture
def gw(gateway_config: Path, migrated_data_dir: Path):
    addons = make_addons()
    yield from _configured(addons, addons, gateway_config, migrated_data_dir)


def http_flow(
    host: str,
    path: str = "/",
    *,
    method: str = "GET",
    ip: str = STUDENT_IP,
    scheme: str = "http",
    port: int | None = None,
    user: str | None = None,
):
    port = port or (443 if scheme == "https" else 80)
    req = tutils.treq(
        method=method.encode(),
        scheme=scheme.encode(),
        host=host,
        port=port,
        path=path.encode(),
        authority=b"",
    )
    req.headers["Host"] = host
    flow = tflow.tflow(req=req)
    flow.client_conn.peername = (ip, 40000)
    flow.client_conn.sockname = ("127.0.0.1", 8080)
    if user:
        flow.metadata["proxyauth"] = (user, "s3cret-password")
    return flow


def connect_flow(host: str, *, ip: str = STUDENT_IP, port: int = 443):
    flow = http_flow(host, ip=ip, port=port)
    flow.request.method = "CONNECT"
    flow.request.path = ""
    flow.request.authority = f"{host}:{port}"
    return flow


class FakeHello:
    def __init__(self, sni: str | None) -> None:
        self.sni = sni


def hello(sni: str | None, *, ip: str, address: tuple[str, int]) -> tls.ClientHelloData:
    client = tflow.tclient_conn()
    client.peername = (ip, 40000)
    ctx = context.Context(client, taddons.context().options)
    ctx.server = connection.Server(address=address)
    return tls.ClientHelloData(ctx, FakeHello(sni))  # type: ignore[arg-type]


# -- requests ---------------------------------------------------------------------------------
def test_plain_http_block_page(gw: Gateway) -> None:
    flow = http_flow("social.test", "/feed")
    flow.request.headers["Accept"] = "text/html,application/xhtml+xml"
    flow.request.headers["Sec-Fetch-Mode"] = "navigate"
    flow.request.headers["Sec-Fetch-Dest"] = "document"
    gw.pages.request(flow)
    gw.enforce.request(flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert flow_mark(flow.metadata).action == "block"
    ref = flow_mark(flow.metadata).ref
    assert ref.encode() in flow.response.content
    assert flow.response.headers["content-type"].startswith("text/html")
    assert b"Social Media" in flow.response.content or b"social_media" in flow.response.content
    events = gw.events()
    assert [(e["ref"], e["kind"], e["host"], e["category"], e["role"]) for e in events] == [
        (ref, "block", "social.test", "social_media", "student")
    ]
    assert events[0]["client_ip"] == STUDENT_IP


def test_allowed_passes_untouched(gw: Gateway) -> None:
    flow = http_flow("example.org", "/page?x=1")
    before = flow.request.get_state()
    gw.pages.request(flow)
    gw.enforce.request(flow)
    assert flow.response is None
    assert flow.request.get_state() == before
    assert gw.events() == []


def test_read_only_post_blocked_get_passes(gw: Gateway) -> None:
    get = http_flow("wiki.test", "/wiki/Volcano")
    gw.enforce.request(get)
    assert get.response is None
    post = http_flow("wiki.test", "/wiki/Volcano", method="POST")
    gw.enforce.request(post)
    assert post.response is not None and post.response.status_code == 403
    edit = http_flow("wiki.test", "/w/index.php?title=Volcano&action=edit")
    gw.enforce.request(edit)
    assert edit.response is not None and edit.response.status_code == 403


def test_existing_response_is_left_alone(gw: Gateway) -> None:
    flow = http_flow("social.test")
    flow.response = tutils.tresp(status_code=407)
    gw.enforce.request(flow)
    assert flow.response.status_code == 407


def test_proxyauth_user_beats_network(gw: Gateway, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    flow = http_flow("social.test", user="alice")  # staff: social media allowed
    gw.enforce.request(flow)
    assert flow.response is None
    flow = http_flow("social.test", user="ben")  # a student
    gw.enforce.request(flow)
    assert flow.response is not None and flow.response.status_code == 403
    events = gw.events()
    assert events[-1]["user"] == "ben"
    assert "s3cret-password" not in caplog.text
    assert all("s3cret-password" not in str(e) for e in events)


def test_exception_from_cache_opens_site(gw: Gateway) -> None:
    from schoolgate.storage.exceptions import add_exception

    now = datetime.now(UTC)
    with gw.recorder.sessions() as session:
        add_exception(
            session,
            gw.holder.policy,
            scope="role",
            scope_value="student",
            target_kind="host",
            target="social.test",
            starts=now - timedelta(minutes=1),
            ends=now + timedelta(hours=1),
            created_by="itsupport",
            reason="project",
        )
        session.commit()
    flow = http_flow("social.test")
    gw.enforce.request(flow)
    assert flow.response is not None  # not re-read yet: the hook never reads the database
    assert gw.exceptions.refresh()
    flow = http_flow("social.test")
    gw.enforce.request(flow)
    assert flow.response is None


def test_policy_raising_blocks_with_failure_page(gw: Gateway, monkeypatch, caplog) -> None:
    def boom(*_a, **_k):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(gw.holder.policy, "decide", boom)
    flow = http_flow("example.org")
    gw.enforce.request(flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert b"the filter failed" in flow.response.content
    assert "kaboom" in caplog.text
    events = gw.events()
    assert events[-1]["kind"] == "error"
    assert "kaboom" in events[-1]["detail"]["error"]


def test_block_page_failure_still_blocks(gw: Gateway, monkeypatch) -> None:
    import schoolgate.gateway.enforce

    def boom(*_a, **_k):
        raise RuntimeError("no template")

    monkeypatch.setattr(schoolgate.gateway.enforce, "block_response_parts", boom)
    flow = http_flow("social.test")
    gw.enforce.request(flow)
    assert flow.response.status_code == 403
    assert b"Blocked by the school's web filter" in flow.response.content


def test_no_policy_fails_closed(gw: Gateway) -> None:
    gw.holder.policy = None
    flow = http_flow("example.org")
    gw.enforce.request(flow)
    assert flow.response is not None and flow.response.status_code == 403


def test_safe_search_applied_for_role(gw: Gateway) -> None:
    flow = http_flow("www.youtube.com", "/watch?v=abc")
    gw.enforce.request(flow)
    assert flow.response is None
    assert flow.request.headers.get("YouTube-Restrict", "").lower() == "strict"
    mark = flow_mark(flow.metadata)  # the rewrite is noted on the flow, which is not answered
    assert mark is not None and mark.safesearch and not answered(flow.metadata)
    flow = http_flow("www.youtube.com", "/watch?v=abc", user="alice")  # staff: moderate
    gw.enforce.request(flow)
    assert flow.request.headers.get("YouTube-Restrict", "").lower() == "moderate"


def test_https_sni_mismatch_is_decided_too(gw: Gateway) -> None:
    flow = http_flow("example.org", scheme="https")
    flow.client_conn.sni = "social.test"
    gw.enforce.request(flow)
    assert flow.response is not None and flow.response.status_code == 403


# -- CONNECT and TLS ----------------------------------------------------------------------------
def test_connect_refused_when_not_intercepting(gw: Gateway) -> None:
    flow = connect_flow("social.test", ip=VISITOR_IP)
    gw.enforce.http_connect(flow)
    assert flow.response is not None and flow.response.status_code == 403
    events = gw.events()
    assert events[-1]["host"] == "social.test" and events[-1]["role"] == "visitor"
    assert events[-1]["detail"]["stage"] == "connect"


def test_connect_let_through_when_intercepting(gw: Gateway) -> None:
    flow = connect_flow("social.test", ip=STUDENT_IP)
    gw.enforce.http_connect(flow)
    assert flow.response is None
    allowed = connect_flow("example.org", ip=VISITOR_IP)
    gw.enforce.http_connect(allowed)
    assert allowed.response is None


def test_read_only_without_interception_refused_at_connect(gw: Gateway) -> None:
    flow = connect_flow("wiki.test", ip=VISITOR_IP)
    gw.enforce.http_connect(flow)
    assert flow.response is not None and flow.response.status_code == 403


def test_sni_refusal_without_interception(gw: Gateway) -> None:
    # CONNECT to an allowed host, then a blocked SNI.
    data = hello("social.test", ip=VISITOR_IP, address=("example.org", 443))
    gw.enforce.tls_clienthello(data)
    assert data.ignore_connection
    assert data.context.server.error and "blocked" in data.context.server.error
    # Allowed SNI: passed through, not decrypted.
    data = hello("example.org", ip=VISITOR_IP, address=("example.org", 443))
    gw.enforce.tls_clienthello(data)
    assert data.ignore_connection and not data.context.server.error
    # No SNI (transparent mode, IP only): decided on the address.
    data = hello(None, ip=VISITOR_IP, address=("203.0.113.9", 443))
    gw.enforce.tls_clienthello(data)
    assert data.ignore_connection and not data.context.server.error


def test_sni_intercepted_for_students_and_not_for_no_intercept_hosts(gw: Gateway) -> None:
    data = hello("social.test", ip=STUDENT_IP, address=("social.test", 443))
    gw.enforce.tls_clienthello(data)
    assert not data.ignore_connection and not data.context.server.error


def test_connect_user_carries_to_tls(gw: Gateway) -> None:
    flow = connect_flow("social.test", ip=VISITOR_IP)
    flow.metadata["proxyauth"] = ("alice", "pw")
    gw.enforce.http_connect(flow)
    assert flow.response is None  # alice is staff
    client = flow.client_conn
    ctx = context.Context(client, gw.tctx.options)
    ctx.server = connection.Server(address=("social.test", 443))
    data = tls.ClientHelloData(ctx, FakeHello("social.test"))  # type: ignore[arg-type]
    gw.enforce.tls_clienthello(data)
    assert not data.context.server.error  # staff intercepted: decided per request


# -- reloading ---------------------------------------------------------------------------------
def test_reload_broken_keeps_old_then_fixed_takes_effect(gw: Gateway, caplog) -> None:
    old = gw.holder.policy
    good_text = gw.config.read_text()
    assert gw.holder.reload() is None  # nothing changed
    gw.config.write_text(good_text + "\nbogus_section: 1\nroles: 5\n")
    assert gw.holder.changed()
    with caplog.at_level(logging.ERROR):
        assert gw.holder.reload() is False
    assert gw.holder.policy is old
    assert "reload" in caplog.text and "refused" in caplog.text and "bogus_section" in caplog.text
    assert gw.holder.reload() is None  # not retried until a file changes again
    flow = http_flow("social.test")
    gw.enforce.request(flow)
    assert flow.response is not None

    # A valid edit to a list file the config names takes effect.
    (gw.config.parent / "social.txt").write_text("social.test\nnewsocial.test\n")
    gw.config.write_text(good_text)
    assert gw.holder.reload() is True
    assert gw.holder.policy is not old
    flow = http_flow("newsocial.test")
    gw.enforce.request(flow)
    assert flow.response is not None and flow.response.status_code == 403


def test_watched_files_include_named_files(gateway_config: Path) -> None:
    names = {p.name for p in watched_files(gateway_config)}
    assert {"config.yaml", "social.txt", "wiki.txt", "timetable.yaml", "roster.csv"} <= names


def test_broken_config_at_start_refuses(gateway_config: Path, gateway_data_dir: Path) -> None:
    from mitmproxy import exceptions

    gateway_config.write_text(gateway_config.read_text() + "\nrules: 7\nbogus: 1\n")
    holder = PolicyHolder()
    with taddons.context(holder) as tctx:
        with pytest.raises(exceptions.OptionsError) as info:
            tctx.configure(
                holder,
                schoolgate_config=str(gateway_config),
                schoolgate_data_dir=str(gateway_data_dir),
            )
    message = str(info.value)
    assert "not starting" in message and "rules" in message and "bogus" in message


# -- pages ---------------------------------------------------------------------------------------
def test_pac_file(gw: Gateway) -> None:
    flow = http_flow("schoolgate.internal", "/proxy.pac")
    gw.pages.request(flow)
    gw.enforce.request(flow)
    assert flow.response.status_code == 200
    assert flow.response.headers["content-type"] == "application/x-ns-proxy-autoconfig"
    text = flow.response.text
    assert 'return "PROXY 127.0.0.1:8080";' in text and "DIRECT" in text
    wpad = http_flow("wpad", "/wpad.dat")
    gw.pages.request(wpad)
    assert wpad.response.status_code == 200 and "FindProxyForURL" in wpad.response.text
    direct = http_flow("127.0.0.1", "/proxy.pac", port=8080)  # the gateway's own address
    gw.pages.request(direct)
    assert direct.response.status_code == 200


def test_pac_script_shape() -> None:
    text = pac_script("10.0.0.5:3128", ["school.lan", "10.0.0.0/8"])
    assert 'dnsDomainIs(host, ".school.lan")' in text
    assert 'isInNet(host, "10.0.0.0", "255.0.0.0")' in text
    assert text.rstrip().endswith('return "PROXY 10.0.0.5:3128";\n}')


def test_ca_page_and_files(gw: Gateway, gateway_data_dir: Path) -> None:
    certs.CertStore.from_store(gateway_data_dir / "ca", "mitmproxy", 2048)
    flow = http_flow("schoolgate.internal", "/ca")
    gw.pages.request(flow)
    assert flow.response.status_code == 200 and b"Windows" in flow.response.content
    pem = http_flow("schoolgate.internal", "/ca/schoolgate-ca.pem")
    gw.pages.request(pem)
    assert pem.response.content.startswith(b"-----BEGIN CERTIFICATE-----")
    der = http_flow("schoolgate.internal", "/ca/schoolgate-ca.crt")
    gw.pages.request(der)
    assert der.response.content[:1] == b"\x30"  # DER SEQUENCE


def test_portal_paths_go_to_the_app(gw: Gateway) -> None:
    import asyncio
    from urllib.parse import quote

    from schoolgate.gateway.blockpage import sign_ref

    signed = sign_ref(gw.recorder.secret, "SG-123")
    flow = http_flow(
        "schoolgate.internal", f"/request?url=http%3A%2F%2Fx.test%2F&ref={quote(signed)}"
    )
    gw.pages.request(flow)
    assert flow.response is None and for_portal(flow.metadata)
    asyncio.run(gw.portal.request(flow))
    assert flow.response.status_code == 200
    assert b"x.test" in flow.response.content
    assert flow.response.headers["x-frame-options"] == "DENY"
    # Anything else on the portal host is the app's too (its 404), never the internet.
    other = http_flow("schoolgate.internal", "/no-such-page")
    gw.pages.request(other)
    asyncio.run(gw.portal.request(other))
    assert other.response.status_code == 404
    # The gateway's own pages stay with GatewayPages.
    ca = http_flow("schoolgate.internal", "/ca")
    gw.pages.request(ca)
    assert ca.response is not None and is_own(ca.metadata) and not for_portal(ca.metadata)


def test_portal_user_header_only_from_proxy_login(gw: Gateway) -> None:
    from schoolgate.gateway.portal_addon import prepare

    flow = http_flow("schoolgate.internal", "/mine", user="ben")
    flow.request.headers["X-Schoolgate-User"] = "mallory"
    flow.request.headers["x_schoolgate_user"] = "eve"
    prepare(flow)
    assert flow.request.headers.get_all("x-schoolgate-user") == ["ben"]
    assert "x_schoolgate_user" not in flow.request.headers
    anonymous = http_flow("schoolgate.internal", "/mine")
    anonymous.request.headers["X-Schoolgate-User"] = "mallory"
    prepare(anonymous)
    assert "x-schoolgate-user" not in anonymous.request.headers
    # HTTP/2 has no Host header: the app gets one (Flask would otherwise see localhost).
    h2 = http_flow("schoolgate.internal", "/mine")
    del h2.request.headers["Host"]
    h2.request.http_version = "HTTP/2.0"
    prepare(h2)
    assert h2.request.headers["Host"] == "schoolgate.internal"


def test_portal_sees_the_reloaded_policy(gw: Gateway) -> None:
    import asyncio

    gw.portal.refresh()
    app = gw.portal.app
    gw.config.write_text(
        gw.config.read_text().replace(
            "  host: schoolgate.internal\n",
            "  host: schoolgate.internal\n  slt_required: {scopes: [everyone]}\n",
        )
    )
    assert gw.holder.reload(force=True) is True
    flow = http_flow("schoolgate.internal", "/request")
    gw.pages.request(flow)
    asyncio.run(gw.portal.request(flow))
    assert flow.response.status_code == 200
    assert gw.portal.app is not app  # rebuilt with the new settings
    state = gw.portal.app.extensions["schoolgate_portal"]
    assert state.slt_required.scopes == ("everyone",)
    assert state.policy is gw.holder.policy


def test_pages_do_not_answer_other_hosts(gw: Gateway) -> None:
    flow = http_flow("example.org", "/proxy.pac")
    gw.pages.request(flow)
    assert flow.response is None


# -- all parts as one addon (what `schoolgate run` and addons/schoolgate.py load) -------------
PART_FIELDS = ("holder", "recorder", "limits", "jobs", "exceptions", "pages", "portal", "guard",
               "fediverse", "enforce", "alerts")  # fmt: skip


def one_addon(gw: Gateway):
    """The parts of ``gw`` (as they are now, monkeypatched or not) as the one addon."""
    from schoolgate.gateway import make_chain

    (top,) = make_chain([getattr(gw, name) for name in PART_FIELDS])
    return top


@pytest.fixture
def chain(gateway_config: Path, migrated_data_dir: Path):
    from schoolgate.gateway import make_chain

    parts = make_addons()
    yield from _configured(parts, make_chain(parts), gateway_config, migrated_data_dir)


def _through_mitmproxy(gw: Gateway, hook_cls, subject) -> None:
    """Offer one event the way the proxy does: through mitmproxy's own addon manager."""
    asyncio.run(gw.tctx.master.addons.handle_lifecycle(hook_cls(subject)))


def test_one_addon_blocks_and_allows_through_mitmproxy(chain: Gateway) -> None:
    from mitmproxy.proxy.layers.http import HttpRequestHook

    names = [getattr(a, "name", "") for a in chain.tctx.master.addons.chain]
    assert [n for n in names if n.startswith("schoolgate")] == ["schoolgate"]
    blocked = http_flow("social.test", "/feed")
    allowed = http_flow("example.org", "/page")
    for flow in (blocked, allowed):
        flow.client_conn.sni = None  # plain HTTP: tflow's SNI would look like domain fronting
        _through_mitmproxy(chain, HttpRequestHook, flow)
    assert blocked.response is not None and blocked.response.status_code == 403
    assert allowed.response is None
    assert [(e["kind"], e["host"]) for e in chain.events()] == [("block", "social.test")]


def test_a_failing_part_refuses_what_it_failed_on(chain: Gateway, monkeypatch, caplog) -> None:
    def boom(_flow):
        raise RuntimeError("guard exploded")

    # The guard runs before Enforcement in the same event: its failure is logged with its
    # name, and the request, although allowed, is refused: it was not fully checked.
    monkeypatch.setattr(chain.guard, "request", boom)
    flow = http_flow("example.org", "/page")
    one_addon(chain).request(flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert b"the filter failed" in flow.response.content
    assert "guard exploded" in caplog.text and "schoolgate_circumvention" in caplog.text


def test_enforcement_failing_outright_refuses(chain: Gateway, monkeypatch, caplog) -> None:
    def boom(*_args):
        raise RuntimeError("enforcement exploded")

    for hook in ("request", "http_connect", "tls_clienthello"):
        monkeypatch.setattr(chain.enforce, hook, boom)
    top = one_addon(chain)
    # An allowed site: without a decision, nothing may pass.
    flow = http_flow("example.org", "/page")
    top.request(flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert b"the filter failed" in flow.response.content
    connect = connect_flow("example.org", ip=VISITOR_IP)
    top.http_connect(connect)
    assert connect.response is not None and connect.response.status_code == 403
    data = hello("example.org", ip=VISITOR_IP, address=("example.org", 443))
    top.tls_clienthello(data)
    assert data.ignore_connection and "blocked" in data.context.server.error
    for hook in ("request", "http_connect", "tls_clienthello"):
        assert f"schoolgate_enforce failed in its {hook} hook" in caplog.text


def test_portal_is_served_through_the_one_addon(chain: Gateway) -> None:
    from mitmproxy.proxy.layers.http import HttpRequestHook

    from schoolgate.gateway.blockpage import sign_ref

    signed = quote(sign_ref(chain.recorder.secret, "SG-123"))
    flow = http_flow("schoolgate.internal", f"/request?url=http%3A%2F%2Fx.test%2F&ref={signed}")
    flow.client_conn.sni = None
    _through_mitmproxy(chain, HttpRequestHook, flow)
    assert flow.response is not None and flow.response.status_code == 200
    assert b"x.test" in flow.response.content  # the access request form, from the app
    # The portal itself is never decided or logged: its flow carries no answer of the gateway.
    assert for_portal(flow.metadata) and answered(flow.metadata) is None


def test_the_gateway_master_skips_debug_records_and_quiet_drops_the_flow_printer():
    """What ``schoolgate run`` (and the benchmark's lean baseline) saves on mitmproxy's own
    work: no log record for mitmproxy's debug lines, and with ``--quiet`` no Dumper."""
    import logging

    from mitmproxy import options

    from schoolgate.gateway.runner import make_master

    root = logging.getLogger()
    level = root.level

    async def build(quiet: bool):
        return make_master(options.Options(), quiet=quiet)

    try:
        quiet = asyncio.run(build(True))
        loud = asyncio.run(build(False))
        assert quiet.addons.get("dumper") is None
        assert loud.addons.get("dumper") is not None
        assert not logging.getLogger("mitmproxy.proxy.server").isEnabledFor(logging.DEBUG)
        assert logging.getLogger("mitmproxy.proxy.server").isEnabledFor(logging.INFO)
    finally:
        root.setLevel(level)
