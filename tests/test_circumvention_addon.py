"""The circumvention addon driven with mitmproxy's test helpers (no sockets): detection,
events, the sanction ladder, suspension and warning pages, supervision, lifting, bursts and
restarts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from mitmproxy.test import taddons, tflow, tutils

from schoolgate.gateway import make_addons
from schoolgate.gateway.circumvention_addon import CircumventionGuard
from schoolgate.gateway.enforce import Enforcement

STUDENT_IP = "127.0.0.1"
VISITOR_IP = "127.0.0.2"

CATEGORY = """
  circumvention:
    description: Proxies and VPNs (test)
    lists: [circumvention.txt]
"""
SECTIONS = """
circumvention:
  detectors: all
bans:
  window_minutes: 10
  repeat_minutes: 2
  stages:
    - {points: 1, action: warn}
    - {points: 2, action: lockout, minutes: 5}
    - {points: 3, action: ban, minutes: 10080}
  essentials: [essential.test]
  roles: [student]
"""
CIRCUMVENTION_RULE = '  - {roles: "*", windows: "*", categories: [circumvention], action: block}\n'


def add_circumvention_config(config: Path) -> None:
    """The gateway test config plus a circumvention list (proxyN.test, vpn.test), its rule,
    and the circumvention and bans sections."""
    (config.parent / "circumvention.txt").write_text(
        "proxy1.test\nproxy2.test\nproxy3.test\nproxy4.test\nvpn.test\n", encoding="utf-8"
    )
    text = config.read_text(encoding="utf-8")
    text = text.replace("categories:\n", "categories:" + CATEGORY, 1)
    text = text.replace("rules:\n", "rules:\n" + CIRCUMVENTION_RULE, 1)
    config.write_text(text + SECTIONS, encoding="utf-8")


@dataclass
class GW:
    tctx: taddons.context
    addons: list
    guard: CircumventionGuard
    enforce: Enforcement

    def events(self, kind: str | None = None) -> list[dict]:
        from schoolgate.storage.events import list_events

        recorder = self.guard.recorder
        assert recorder.eventlog.flush(30)
        with recorder.sessions() as session:
            return list_events(session, kind=kind, limit=None)

    def run(self, flow) -> None:
        """The request through the addons in their order (pages, guard, enforcement)."""
        for addon in self.addons:
            hook = getattr(
                addon, "http_connect" if flow.request.method == "CONNECT" else "request", None
            )
            if hook is None or isinstance(addon, type):
                continue
            # As the dispatch calls an app's async request hook: only for what it serves.
            if hasattr(addon, "should_serve") and not addon.should_serve(flow):
                continue
            hook(flow)
        if flow.request.method != "CONNECT":
            self.guard.response(flow)


@pytest.fixture
def gw(gateway_config: Path, migrated_data_dir: Path):
    add_circumvention_config(gateway_config)
    addons = make_addons()
    guard = next((a for a in addons if isinstance(a, CircumventionGuard)), None)
    if guard is None:  # not wired into make_addons yet: place it before Enforcement
        guard = CircumventionGuard(addons[0], addons[1])
        index = next(i for i, a in enumerate(addons) if isinstance(a, Enforcement))
        addons.insert(index, guard)
    enforce = next(a for a in addons if isinstance(a, Enforcement))
    with taddons.context(*addons) as tctx:
        tctx.configure(
            addons[0],
            schoolgate_config=str(gateway_config),
            schoolgate_data_dir=str(migrated_data_dir),
            confdir=str(migrated_data_dir / "ca"),
        )
        guard.refresh()
        yield GW(tctx, addons, guard, enforce)
        guard.done()
        addons[1].done()


def http_flow(
    host: str,
    path: str = "/",
    *,
    ip: str = STUDENT_IP,
    scheme: str = "http",
    port: int | None = None,
    user: str | None = None,
    page: bool = True,
):
    port = port or (443 if scheme == "https" else 80)
    req = tutils.treq(
        method=b"GET",
        scheme=scheme.encode(),
        host=host,
        port=port,
        path=path.encode(),
        authority=b"",
    )
    req.headers["Host"] = host
    if page:
        req.headers["Accept"] = "text/html,application/xhtml+xml"
        req.headers["Sec-Fetch-Mode"] = "navigate"
        req.headers["Sec-Fetch-Dest"] = "document"
    flow = tflow.tflow(req=req)
    flow.response = None
    flow.client_conn.peername = (ip, 40000)
    flow.client_conn.sockname = ("127.0.0.1", 8080)
    flow.client_conn.sni = host if scheme == "https" else None
    if user:
        flow.metadata["proxyauth"] = (user, "pw")
    return flow


def connect_flow(host: str, *, ip: str = STUDENT_IP, port: int = 443):
    flow = http_flow(host, ip=ip, port=port, page=False)
    flow.request.method = "CONNECT"
    flow.request.path = ""
    flow.request.authority = f"{host}:{port}"
    return flow


def test_event_recorded_with_evidence_and_warning_once(gw: GW):
    flow = http_flow("proxy1.test", "/browse.php?u=x")
    gw.run(flow)
    # the first stage: a warning page (403: the page itself is blocked), shown once
    assert flow.response.status_code == 403
    assert flow.response.headers["x-schoolgate-warning"] == "circumvention"
    assert b"get round the school" in flow.response.content
    events = gw.events("circumvention")
    assert len(events) == 1
    e = events[0]
    assert (e["user"], e["client_ip"], e["role"], e["host"], e["action"]) == (
        None,
        STUDENT_IP,
        "student",
        "proxy1.test",
        "warn",
    )
    assert e["url"] == "http://proxy1.test/browse.php?u=x"
    assert e["detail"]["detector"] == "listed_host" and e["detail"]["severity"] == 2
    assert e["detail"]["evidence"]["list_entry"] == "proxy1.test"
    assert e["detail"]["sanction"]["subject"] == "device:127.0.0.1"
    assert e["at"] and e["reason"]
    again = http_flow("example.org")
    gw.run(again)
    assert again.response is None  # no second warning; normal policy (allowed)


@pytest.mark.parametrize(
    ("name", "value", "detector"),
    [
        ("User-Agent", "NordVPN/6.1 (Windows NT 10.0)", "vpn_client"),
        ("X-Bare-URL", "https://www.instagram.com/", "web_proxy"),
        ("Accept", "application/dns-message", "doh"),
    ],
)
def test_headers_reach_the_detectors_whatever_their_case(gw: GW, name, value, detector):
    flow = http_flow("www.example.org", "/", page=False)
    flow.request.headers[name] = value
    gw.run(flow)
    found = {e["detail"]["detector"] for e in gw.events("circumvention")}
    assert detector in found


def test_dedup_per_connection(gw: GW):
    first = http_flow("proxy1.test", page=False)
    gw.run(first)
    second = http_flow("proxy1.test", "/other", page=False)
    second.client_conn = first.client_conn
    gw.run(second)
    assert len(gw.events("circumvention")) == 1


def _found(gw: GW) -> list[tuple[str, str]]:
    return [(e["host"], e["detail"]["detector"]) for e in gw.events("circumvention")]


def test_ordinary_requests_leave_a_site_flagged_when_it_is_used_to_get_round(gw: GW):
    """A site's ordinary requests teach the guard that its name holds nothing; a request to
    it that uses it as a web proxy, or from a VPN app, is still found, and a listed site is
    found on every new connection, however many ordinary requests came before."""
    for _ in range(3):
        ordinary = http_flow("www.example.org", "/news", page=False)
        gw.run(ordinary)
        assert ordinary.response is None
    assert _found(gw) == []
    gw.run(http_flow("www.example.org", "/browse.php?u=https%3A%2F%2Fwww.instagram.com%2F"))
    assert _found(gw) == [("www.example.org", "web_proxy")]
    vpn = http_flow("www.example.org", "/news", page=False)
    vpn.request.headers["User-Agent"] = "NordVPN/6.1 (Windows NT 10.0)"
    gw.run(vpn)
    assert _found(gw)[-1] == ("www.example.org", "vpn_client")
    for _ in range(2):
        gw.run(http_flow("proxy2.test", "/", page=False))
    assert _found(gw)[-2:] == [("proxy2.test", "listed_host")] * 2
    # the same site spelt otherwise, or named otherwise inside the encryption
    # (upper case is no disguise; a trailing dot is)
    for host in ("WWW.EXAMPLE.ORG", "www.example.org."):
        gw.run(http_flow(host, "/news", page=False))
    assert _found(gw)[-1] == ("www.example.org", "disguised_host")
    assert len(_found(gw)) == 5
    fronted = http_flow("www.example.org", "/news", scheme="https", page=False)
    fronted.request.http_version = "HTTP/2.0"
    del fronted.request.headers["Host"]
    fronted.request.authority = "www.torproject.org"
    gw.run(fronted)
    assert _found(gw)[-1] == ("www.example.org", "domain_fronting")


def test_a_site_listed_by_a_reload_is_found_at_once(gw: GW):
    for _ in range(2):
        gw.run(http_flow("newproxy.test", "/", page=False))
    assert _found(gw) == []
    lists = Path(gw.guard.holder.config_path).parent / "circumvention.txt"
    lists.write_text(lists.read_text(encoding="utf-8") + "newproxy.test\n", encoding="utf-8")
    assert gw.guard.holder.reload(force=True)
    flow = http_flow("newproxy.test", "/", page=False)
    gw.run(flow)
    assert _found(gw) == [("newproxy.test", "listed_host")]


def _attempts(gw: GW, hosts, *, ip: str = STUDENT_IP, user: str | None = None):
    """Attempts made with page loads: the first shows the warning page, so the next may
    lock the pupil out."""
    for host in hosts:
        gw.run(http_flow(host, ip=ip, user=user))


def test_ladder_to_ban_then_suspension_supervision_lift(gw: GW):
    from schoolgate.storage.bans import (
        ban_history,
        lift_ban,
        list_bans,
        start_supervision,
    )

    _attempts(gw, ["proxy1.test", "proxy2.test"])
    locked = http_flow("example.org")
    gw.run(locked)
    assert locked.response.status_code == 403
    assert locked.response.headers["x-schoolgate-suspended"] == "lockout"
    _attempts(gw, ["proxy3.test"])
    actions = [e["action"] for e in gw.events("circumvention")]
    assert actions == ["warn", "lockout", "ban"]

    # an otherwise allowed site: the suspension page, naming the reason and the appeal
    flow = http_flow("example.org", "/homework")
    gw.run(flow)
    assert flow.response.status_code == 403
    assert flow.response.headers["x-schoolgate-suspended"] == "ban"
    body = flow.response.content.decode()
    assert "suspended" in body and "supervis" in body and "appeal" in body.lower()
    assert "stage 3" in body
    # text for non-page requests
    xhr = http_flow("example.org", "/api", page=False)
    gw.run(xhr)
    assert xhr.response.status_code == 403
    assert xhr.response.headers["content-type"].startswith("text/plain")
    # essentials and the portal stay open
    ok = http_flow("essential.test")
    gw.run(ok)
    assert ok.response is None
    portal = http_flow("schoolgate.internal", "/")
    gw.guard.request(portal)
    assert portal.response is None or "x-schoolgate-suspended" not in portal.response.headers
    assert gw.events("suspended")  # page loads while suspended are recorded

    # the ban reaches the database (with its audit) and survives a refresh
    assert gw.guard.save_pending()
    with gw.guard.recorder.sessions() as s:
        bans = list_bans(s)
        assert [(b.kind, b.subject) for b in bans] == [
            ("lockout", "device:127.0.0.1"),
            ("ban", "device:127.0.0.1"),
        ]
        ban_id = bans[1].id
        assert len(json_list(bans[1].events)) == 3
    assert gw.guard.refresh()
    assert gw.guard.book.ban_for("device:127.0.0.1", datetime.now(UTC)).id == ban_id

    # supervision: browse under the normal policy, every request logged against the session
    with gw.guard.recorder.sessions() as s:
        sup = start_supervision(
            s, "device:127.0.0.1", by="mr.jones", minutes=30, reason="ICT lesson"
        )
        s.commit()
        sup_id = sup.id
    gw.guard.refresh()
    allowed = http_flow("example.org", "/lesson")
    gw.run(allowed)
    assert allowed.response is None
    blocked = http_flow("social.test", "/")
    gw.run(blocked)
    assert blocked.response.status_code == 403  # the normal policy still applies
    supervised = gw.events("supervised")
    assert [(e["host"], e["action"], e["detail"]["supervision_id"]) for e in supervised] == [
        ("example.org", "allow", sup_id),
        ("social.test", "block", sup_id),
    ]
    assert supervised[0]["rule"] == f"supervision #{sup_id} by mr.jones"

    # lifted: access returns
    with gw.guard.recorder.sessions() as s:
        lift_ban(s, ban_id, by="it.support", reason="appeal upheld")
        s.commit()
        history = [a.action for a in ban_history(s, ban_id)]
    assert history == ["ban.create", "supervision.start", "ban.lift", "supervision.end"]
    with gw.guard.recorder.sessions() as s:  # the lockout ended with the ban
        assert [a.action for a in ban_history(s, bans[0].id)][-1] == "lockout.lift"
    gw.guard.refresh()
    back = http_flow("example.org")
    gw.run(back)
    assert back.response is None


def json_list(text: str) -> list:
    import json

    return json.loads(text)


def test_ban_expires(gw: GW):
    _attempts(gw, ["proxy1.test", "proxy2.test", "proxy3.test"])
    later = datetime.now(UTC) + timedelta(days=7, minutes=1)
    gw.guard.clock = lambda: later
    flow = http_flow("example.org")
    gw.run(flow)
    assert flow.response is None


def test_staff_are_alerted_not_banned(gw: GW):
    _attempts(gw, ["proxy1.test", "proxy2.test", "proxy3.test", "proxy4.test"], user="alice")
    events = gw.events("circumvention")
    assert {e["action"] for e in events} == {"alert"}
    assert {e["user"] for e in events} == {"alice"} and events[0]["role"] == "staff"
    assert len(gw.guard.book) == 0


def test_user_ban_follows_the_user_not_the_device(gw: GW):
    _attempts(gw, ["proxy1.test", "proxy2.test", "proxy3.test"], user="ben")
    assert gw.guard.book.ban_for("user:ben", datetime.now(UTC)) is not None
    other = http_flow("example.org", ip="10.20.0.9", user="ben")
    gw.run(other)
    assert other.response.status_code == 403
    anon = http_flow("example.org")  # same device, nobody signed in
    gw.run(anon)
    assert anon.response is None


def test_suspended_device_not_intercepted_is_refused_at_connect(gw: GW):
    from schoolgate.storage.bans import add_ban

    with gw.guard.recorder.sessions() as s:
        add_ban(s, VISITOR_IP, by="it.support", minutes=60, reason="by hand")
        s.commit()
    gw.guard.refresh()
    flow = connect_flow("example.org", ip=VISITOR_IP)
    gw.run(flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert b"suspended" in flow.response.content


def test_connect_stage_detection(gw: GW):
    flow = connect_flow("vpn.test", port=1194)
    gw.run(flow)
    kinds = {(e["detail"]["detector"], e["detail"]["stage"]) for e in gw.events("circumvention")}
    assert ("listed_host", "connect") in kinds and ("odd_port", "connect") in kinds


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/2.0"])
def test_domain_fronting_inside_an_intercepted_tunnel(gw: GW, version: str):
    """A tunnel to an allowed site (CONNECT and SNI www.bbc.co.uk) whose request names another
    (Host, or HTTP/2's :authority, www.torproject.org): recorded as domain fronting."""
    flow = http_flow("www.bbc.co.uk", "/news", scheme="https")
    flow.request.http_version = version
    if version == "HTTP/2.0":  # as mitmproxy gives an HTTP/2 request: no Host header
        del flow.request.headers["Host"]
        flow.request.authority = "www.torproject.org"
    else:
        flow.request.headers["Host"] = "www.torproject.org"
    gw.run(flow)
    events = [e for e in gw.events("circumvention") if e["detail"]["detector"] == "domain_fronting"]
    assert len(events) == 1, gw.events("circumvention")
    assert events[0]["detail"]["evidence"]["http_host"] == "www.torproject.org"
    assert events[0]["detail"]["evidence"]["sni"] == "www.bbc.co.uk"
    # Severity 3 reaches the lockout stage at once, but a pupil is warned first.
    assert flow.response is not None
    assert flow.response.headers["x-schoolgate-warning"] == "circumvention"
    assert events[0]["action"] == "warn"


def test_burst_of_thousands_of_events_nothing_lost(gw: GW):
    n = 3000
    for i in range(n):
        gw.guard.request(http_flow(f"proxy{1 + i % 4}.test", f"/p{i}", page=False))
    events = gw.events("circumvention")
    assert len(events) == n
    assert len({e["ref"] for e in events}) == n


def test_restart_keeps_ladder_and_bans(gw: GW):
    _attempts(gw, ["proxy1.test", "proxy2.test"])  # warn, lockout: 2 points
    gw.guard.done()  # writes the lockout
    fresh = CircumventionGuard(gw.guard.holder, gw.guard.recorder)
    gw.guard.recorder.eventlog.flush(10)
    assert fresh.replay_recent() == 2
    assert fresh.ladder.total("device:127.0.0.1") == 2.0
    assert fresh.refresh()
    assert fresh.book.ban_for("device:127.0.0.1", datetime.now(UTC)).kind == "lockout"
    gw.guard = fresh
    gw.addons = [fresh if isinstance(a, CircumventionGuard) else a for a in gw.addons]
    _attempts(gw, ["proxy3.test"])
    assert fresh.book.ban_for("device:127.0.0.1", datetime.now(UTC)).kind == "ban"


def test_guard_api_for_enforcement(gw: GW):
    policy = gw.guard.holder.policy
    identity = policy.identify(STUDENT_IP, None)
    assert gw.guard.suspended(identity, "example.org") is None
    _attempts(gw, ["proxy1.test", "proxy2.test", "proxy3.test"])
    assert gw.guard.suspended(identity, "example.org").kind == "ban"
    assert gw.guard.suspended(identity, "essential.test") is None
    assert gw.guard.suspended(identity, "schoolgate.internal") is None
    assert gw.guard.supervision_for(identity) is None


def test_the_esafety_team_is_told_by_email(gateway_config: Path, gateway_data_dir: Path):
    """The warning stage e-mails the e-safety address through the outbox (real SMTP server)."""
    import socket

    from aiosmtpd.controller import Controller

    from schoolgate.jobs.notify import OutboxSender

    received = []

    class Inbox:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
            received.append((envelope.rcpt_tos, envelope.content.decode("utf-8", "replace")))
            return "250 OK"

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    controller = Controller(Inbox(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        add_circumvention_config(gateway_config)
        gateway_config.write_text(
            gateway_config.read_text(encoding="utf-8")
            + "notifications:\n  smtp:\n"
            + f"    host: 127.0.0.1\n    port: {port}\n"
            + "    esafety: [dsl@school.example]\n    slt: [head@school.example]\n",
            encoding="utf-8",
        )
        addons = make_addons()
        guard = next(a for a in addons if isinstance(a, CircumventionGuard))
        with taddons.context(*addons) as tctx:
            tctx.configure(
                addons[0],
                schoolgate_config=str(gateway_config),
                schoolgate_data_dir=str(gateway_data_dir),
                confdir=str(gateway_data_dir / "ca"),
            )
            guard.refresh()
            gw = GW(tctx, addons, guard, next(a for a in addons if isinstance(a, Enforcement)))
            gw.run(http_flow("proxy1.test"))  # severity 2 = 1 point: the warn stage
            assert guard.send_alerts()
            policy = addons[0].policy
            smtp = policy.settings.notifications.smtp
            sender = OutboxSender(guard.recorder.sessions, smtp=smtp)
            assert sender.send_due() == (1, 0)
            guard.done()
            addons[1].done()
    finally:
        controller.stop()
    assert len(received) == 1
    recipients, message = received[0]
    assert recipients == ["dsl@school.example"]
    assert "reached the 'warn' stage" in message
    assert "Who: device:127.0.0.1 (student)" in message
    assert "circumvention warn for device:127.0.0.1" in message  # the subject line


def test_attempts_count_together_across_gateway_processes(gw: GW):
    """Workers or gateways on one database: a pupil's attempts count on one ladder wherever
    they land, and none counts twice."""
    first = gw.guard
    _attempts(gw, ["proxy1.test"])  # a warning, recorded by the first process
    first.recorder.eventlog.flush(10)
    other = CircumventionGuard(first.holder, first.recorder)  # a second process's guard
    assert other.refresh()
    assert other.ladder.total("device:127.0.0.1") == 1.0
    gw.guard = other
    gw.addons = [other if isinstance(a, CircumventionGuard) else a for a in gw.addons]
    _attempts(gw, ["proxy2.test"])  # the second attempt, at the other process: a lockout
    assert [e["action"] for e in gw.events("circumvention")] == ["warn", "lockout"]
    first.recorder.eventlog.flush(10)
    assert first.refresh() and other.refresh()
    assert first.ladder.total("device:127.0.0.1") == 2.0  # its own attempt once, the other's
    assert other.ladder.total("device:127.0.0.1") == 2.0
