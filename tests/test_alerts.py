"""Alerts to the e-safety team: the batcher on a controllable clock, the ``alerts`` config
section, the gateway addon (mitmproxy's test helpers, a real SQLite file and a real SMTP
server) and content reports from the portal."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from mitmproxy.test import taddons, tflow, tutils

from schoolgate.core.configfile import ConfigError, Issues, Section, load_yaml
from schoolgate.gateway import make_addons
from schoolgate.gateway.alerts_addon import AlertsAddon
from schoolgate.gateway.enforce import Enforcement
from schoolgate.gateway.flowmark import flow_mark
from schoolgate.jobs.alerts import (
    MAX_LISTED,
    AlertBatcher,
    AlertSettings,
    BlockFact,
    read_alerts,
    render,
)

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
STUDENT_IP = "127.0.0.1"
VISITOR_IP = "127.0.0.2"
DSL = "dsl@school.example"
HEAD = "head@school.example"
IT = "it@school.example"


class Clock:
    def __init__(self, at: datetime = T0) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at

    def advance(self, **delta: float) -> datetime:
        self.at += timedelta(**delta)
        return self.at


def fact(category: str, at: datetime, n: int = 0, **kw) -> BlockFact:
    values = {"host": "harm.test", "client_ip": STUDENT_IP, "role": "student"}
    values.update(kw)
    return BlockFact(category=category, at=at, ref=f"ref{n:04d}", **values)


# -- the batcher ----------------------------------------------------------------------------------
def test_first_block_is_immediate_with_its_details():
    clock = Clock()
    batcher = AlertBatcher(["self_harm"], 15, clock=clock)
    assert batcher.offer(fact("self_harm", clock(), user="ben", search_term="how to"))
    [alert] = batcher.due()
    assert (alert.kind, alert.category, alert.count, alert.ref) == (
        "immediate",
        "self_harm",
        1,
        "ref0000",
    )
    assert alert.end == T0 + timedelta(minutes=15)
    subject, body = render(alert)
    assert "self harm blocked for ben (student)" in subject  # words, not internal names
    assert "harm.test" in body and "Searched: how to" in body and "ref0000" in body
    assert "When:     10:00:00 on Tuesday 24 November 2026" in body
    assert "self_harm" not in subject + body
    assert batcher.due() == []  # sent once


def test_a_burst_of_500_in_15_minutes_is_one_immediate_and_one_digest():
    clock = Clock()
    batcher = AlertBatcher(["self_harm"], 15, clock=clock)
    sent = []
    for n in range(500):
        batcher.offer(
            fact("self_harm", clock(), n, user=f"user{n % 7}", search_term=f"term{n % 3}")
        )
        sent += batcher.due()
        clock.advance(seconds=1.7)  # 500 blocks in about 14 minutes
    assert [a.kind for a in sent] == ["immediate"]
    clock.at = T0 + timedelta(minutes=15)
    digests = batcher.due()
    assert [a.kind for a in digests] == ["digest"]
    digest = digests[0]
    assert digest.count == 499 and digest.lead_ref == "ref0000"
    assert sum(count for _, count in digest.who) == 499
    assert len(digest.who) == 7 and {name for name, _ in digest.search_terms} == {
        "term0",
        "term1",
        "term2",
    }
    assert digest.hosts == (("harm.test", 499),)
    assert len(digest.refs) == MAX_LISTED and digest.refs[0] == "ref0001"
    assert digest.first.at == T0 + timedelta(seconds=1.7)
    subject, body = render(digest)
    assert "499 more blocks in self harm (10:00 to 10:15 on Tuesday 24 November 2026)" in subject
    assert "Count: 499" in body and "user1 (127.0.0.1)" in body and "term2" in body
    assert "ref0001" in body and "reference ref0000" in body
    # nothing more, ever, for that burst
    clock.advance(hours=2)
    assert batcher.due() == []


def test_categories_are_batched_separately_and_others_ignored():
    clock = Clock()
    batcher = AlertBatcher(["self_harm", "extremism"], 15, clock=clock)
    assert not batcher.offer(fact("social_media", clock()))
    batcher.offer(fact("self_harm", clock(), 1))
    batcher.offer(fact("extremism", clock(), 2))
    batcher.offer(fact("self_harm", clock.advance(minutes=1), 3))
    assert [(a.kind, a.category) for a in batcher.due()] == [
        ("immediate", "self_harm"),
        ("immediate", "extremism"),
    ]
    clock.advance(minutes=15)
    assert [(a.kind, a.category, a.count) for a in batcher.due()] == [
        ("digest", "self_harm", 1)
    ]  # extremism gathered nothing: no digest


def test_quiet_period_resets_and_a_long_burst_gets_one_digest_per_period():
    clock = Clock()
    batcher = AlertBatcher(["self_harm"], 15, clock=clock)
    batcher.offer(fact("self_harm", clock(), 1))
    batcher.offer(fact("self_harm", clock.advance(minutes=5), 2))
    assert [a.kind for a in batcher.due()] == ["immediate"]
    clock.advance(minutes=11)  # 10:16
    assert [a.kind for a in batcher.due()] == ["digest"]
    # 10:20: still inside the next (chained) period: gathered, not immediate
    batcher.offer(fact("self_harm", clock.advance(minutes=4), 3))
    assert batcher.due() == []
    clock.at = T0 + timedelta(minutes=30)
    [digest] = batcher.due()
    assert digest.kind == "digest" and digest.count == 1
    assert digest.start == T0 + timedelta(minutes=15)
    # 10:45 passes with nothing: quiet again, so the next block is immediate
    clock.at = T0 + timedelta(minutes=45)
    assert batcher.due() == [] and batcher.next_due() is None
    batcher.offer(fact("self_harm", clock.advance(minutes=1), 4))
    assert [a.kind for a in batcher.due()] == ["immediate"]


def test_a_late_offer_ends_the_period_it_missed():
    """Blocks are batched by their own time even if due() was not called in between."""
    clock = Clock()
    batcher = AlertBatcher(["self_harm"], 15, clock=clock)
    batcher.offer(fact("self_harm", T0, 1))
    batcher.offer(fact("self_harm", T0 + timedelta(minutes=3), 2))
    batcher.offer(fact("self_harm", T0 + timedelta(minutes=40), 3))
    clock.at = T0 + timedelta(minutes=40)
    assert [(a.kind, a.count) for a in batcher.due()] == [
        ("immediate", 1),
        ("digest", 1),
        ("immediate", 1),
    ]


def test_flush_sends_what_was_gathered():
    clock = Clock()
    batcher = AlertBatcher(["illegal"], 15, clock=clock)
    batcher.offer(fact("illegal", clock(), 1))
    batcher.offer(fact("illegal", clock.advance(minutes=2), 2))
    assert batcher.gathering == {"illegal": 1}
    alerts = batcher.flush()
    assert [(a.kind, a.count) for a in alerts] == [("immediate", 1), ("digest", 1)]
    assert batcher.gathering == {} and batcher.flush() == []


# -- the config section ---------------------------------------------------------------------------
def _section(tmp_path: Path, text: str) -> tuple[Section, Issues]:
    path = tmp_path / "mitm_config.yaml"
    path.write_text(text, encoding="utf-8")
    issues = Issues()
    root = Section(load_yaml(path, issues), file="mitm_config.yaml", path="", issues=issues)
    return root.section("alerts"), issues


def test_read_alerts_settings_and_defaults(tmp_path: Path):
    sec, issues = _section(
        tmp_path,
        "alerts:\n  categories: [illegal, self_harm]\n  batch_minutes: 10\n"
        "  content_reports: false\n",
    )
    settings = read_alerts(sec, ["illegal", "self_harm", "social_media"])
    assert not issues
    assert settings == AlertSettings(frozenset({"illegal", "self_harm"}), 10, False)
    assert read_alerts(None) == AlertSettings(frozenset(), 15, True)


def test_read_alerts_errors_name_file_line_and_field(tmp_path: Path):
    sec, issues = _section(
        tmp_path,
        "school_name: X\n"
        "alerts:\n"
        "  categories:\n"
        "    - self_harm\n"
        "    - self-harm\n"
        "  batch_minutes: 0\n"
        "  content_reports: sometimes\n"
        "  batchminutes: 5\n",
    )
    read_alerts(sec, {"self_harm": None, "illegal": None})
    with pytest.raises(ConfigError) as err:
        issues.raise_if_any()
    text = str(err.value)
    assert (
        "mitm_config.yaml:5: alerts.categories[1]: unknown category 'self-harm'; "
        "expected one of: illegal, self_harm" in text
    )
    assert "mitm_config.yaml:6: alerts.batch_minutes: expected a whole number of at least 1" in text
    assert "mitm_config.yaml:7: alerts.content_reports: expected true or false" in text
    assert (
        "mitm_config.yaml:8: alerts.batchminutes: unknown key (did you mean 'batch_minutes'?)"
        in text
    )


# -- the gateway ----------------------------------------------------------------------------------
ALERT_CATEGORIES = """
  self_harm:
    description: Self-harm (test)
    entries: [harm.test]
  extremism:
    description: Extremism (test)
    entries: [extreme.test, bing.com]
  illegal:
    description: IWF (test)
    entries: [iwf.test]
    locked: true
  gambling:
    description: Gambling (test; blocked, not alerted)
    entries: [bet.test]
"""


@pytest.fixture
def alerts_config(gateway_config: Path) -> Path:
    """The gateway test config with alert categories, alerts and notifications sections."""
    text = gateway_config.read_text(encoding="utf-8")
    text = text.replace("categories:\n", "categories:" + ALERT_CATEGORIES, 1)
    text += "alerts:\n  categories: [self_harm, extremism]\n  batch_minutes: 15\n"
    gateway_config.write_text(text, encoding="utf-8")
    return gateway_config


@pytest.fixture
def smtp_server():
    """A real SMTP server (aiosmtpd) on a free port: yields (port, received)."""
    from aiosmtpd.controller import Controller

    received: list[tuple[list[str], str]] = []

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
        yield port, received
    finally:
        controller.stop()


def add_notifications(config: Path, port: int) -> None:
    config.write_text(
        config.read_text(encoding="utf-8")
        + "notifications:\n  smtp:\n"
        + f"    host: 127.0.0.1\n    port: {port}\n"
        + f"    esafety: [{DSL}]\n    slt: [{HEAD}]\n    it_support: [{IT}]\n",
        encoding="utf-8",
    )


@dataclass
class GW:
    tctx: taddons.context
    addons: list
    alerts: AlertsAddon
    clock: Clock

    def run(self, flow) -> None:
        hook_name = "http_connect" if flow.request.method == "CONNECT" else "request"
        for addon in self.addons:
            hook = getattr(addon, hook_name, None)
            if hook is not None and not isinstance(addon, type):
                hook(flow)

    def send(self) -> tuple[int, int]:
        """What the outbox sender would deliver now (through the real SMTP server)."""
        from schoolgate.jobs.notify import OutboxSender

        policy = self.addons[0].policy
        smtp = policy.settings.notifications.smtp
        return OutboxSender(self.alerts.recorder.sessions, smtp=smtp, clock=self.clock).send_due()


@pytest.fixture
def gw(alerts_config: Path, migrated_data_dir: Path, smtp_server):
    port, _received = smtp_server
    add_notifications(alerts_config, port)
    clock = Clock(datetime.now(UTC))
    addons = make_addons()
    existing = next((a for a in addons if isinstance(a, AlertsAddon)), None)
    if existing is not None:
        addons.remove(existing)
    alerts = AlertsAddon(addons[0], addons[1], clock=clock)
    index = next(i for i, a in enumerate(addons) if isinstance(a, Enforcement))
    addons.insert(index + 1, alerts)  # after Enforcement
    with taddons.context(*addons) as tctx:
        tctx.configure(
            addons[0],
            schoolgate_config=str(alerts_config),
            schoolgate_data_dir=str(migrated_data_dir),
            confdir=str(migrated_data_dir / "ca"),
        )
        yield GW(tctx, addons, alerts, clock)
        alerts.done()
        addons[1].done()


def http_flow(host: str, path: str = "/", *, ip: str = STUDENT_IP, user: str | None = None):
    req = tutils.treq(
        method=b"GET", scheme=b"http", host=host, port=80, path=path.encode(), authority=b""
    )
    req.headers["Host"] = host
    req.headers["Accept"] = "text/html"
    flow = tflow.tflow(req=req)
    flow.response = None
    flow.client_conn.peername = (ip, 40000)
    flow.client_conn.sockname = ("127.0.0.1", 8080)
    flow.client_conn.sni = None
    if user:
        flow.metadata["proxyauth"] = (user, "pw")
    return flow


def connect_flow(host: str, *, ip: str = VISITOR_IP):
    flow = http_flow(host, ip=ip)
    flow.request.method = "CONNECT"
    flow.request.path = ""
    flow.request.port = 443
    flow.request.authority = f"{host}:443"
    return flow


def test_a_block_in_an_alert_category_emails_the_esafety_team(gw: GW, smtp_server):
    _port, received = smtp_server
    flow = http_flow("harm.test", "/page")
    gw.run(flow)
    assert flow.response.status_code == 403
    meta = flow_mark(flow.metadata)
    assert (meta.category, meta.client_ip, meta.host, meta.role) == (
        "self_harm",
        STUDENT_IP,
        "harm.test",
        "student",
    )
    assert gw.alerts.pump()
    assert gw.send() == (1, 0)
    [(recipients, message)] = received
    assert recipients == [DSL]
    assert "Alert: self harm blocked for device 127.0.0.1 (student)" in message
    assert meta.ref in message and "harm.test" in message


def test_a_burst_is_one_immediate_mail_and_one_digest(gw: GW, smtp_server):
    _port, received = smtp_server
    start = gw.clock()
    for n in range(500):
        gw.run(http_flow("harm.test", f"/p{n}", user=f"pupil{n % 5}"))
        gw.clock.advance(seconds=1.5)
        if n in (0, 250):
            assert gw.alerts.pump()
    assert gw.alerts.pump()
    assert gw.send() == (1, 0)  # only the first so far
    gw.clock.at = start + timedelta(minutes=15, seconds=1)
    assert gw.alerts.pump()
    assert gw.send() == (1, 0)
    assert len(received) == 2
    first, digest = (message for _, message in received)
    assert "Alert: self harm blocked for pupil0" in first
    assert "499 more blocks in self harm" in digest and "Count: 499" in digest
    assert "pupil3 (127.0.0.1): 100" in digest
    gw.clock.advance(hours=1)
    assert gw.alerts.pump() and gw.send() == (0, 0)


def test_search_terms_and_users_reach_the_alert(gw: GW, smtp_server):
    _port, received = smtp_server
    flow = http_flow("bing.com", "/search?q=join+the+cause", user="Ben")
    gw.run(flow)
    assert flow_mark(flow.metadata).search_term == "join the cause"
    assert gw.alerts.pump() and gw.send() == (1, 0)
    message = received[0][1]
    assert "extremism blocked for ben" in message and "Searched: join the cause" in message


def test_blocks_in_other_categories_send_nothing(gw: GW, smtp_server):
    _port, received = smtp_server
    for host in ("bet.test", "social.test"):
        flow = http_flow(host)
        gw.run(flow)
        assert flow.response.status_code == 403  # blocked, but not alerted
    allowed = http_flow("example.org")
    gw.run(allowed)
    assert allowed.response is None
    assert gw.alerts.pump()
    gw.alerts.done()
    assert gw.send() == (0, 0) and received == []


def test_locked_categories_are_always_alerted_and_connect_refusals_count(gw: GW, smtp_server):
    _port, received = smtp_server
    flow = connect_flow("iwf.test")  # a visitor: not intercepted, refused at the CONNECT
    gw.run(flow)
    assert flow.response.status_code == 403
    assert flow_mark(flow.metadata).stage == "connect"
    assert gw.alerts.pump() and gw.send() == (1, 0)
    assert "Alert: illegal blocked for device 127.0.0.2 (visitor)" in received[0][1]


def test_database_down_keeps_alerts_until_it_is_back(gw: GW, smtp_server):
    _port, received = smtp_server
    sessions = gw.alerts.recorder.sessions

    def broken():
        raise OSError("database unavailable")

    gw.run(http_flow("harm.test"))
    gw.alerts.recorder.sessions = broken
    try:
        assert not gw.alerts.pump()
        assert not gw.alerts.pump()  # still kept
    finally:
        gw.alerts.recorder.sessions = sessions
    assert gw.alerts.pump()
    assert gw.send() == (1, 0) and len(received) == 1


def test_done_sends_the_digest_still_gathering(gw: GW, smtp_server):
    _port, received = smtp_server
    for _ in range(3):
        gw.run(http_flow("harm.test"))
        gw.clock.advance(seconds=10)
    gw.alerts.done()
    assert gw.send() == (2, 0)
    assert "2 more blocks in self harm" in received[1][1]


def test_the_background_thread_queues_an_alert(gw: GW, smtp_server):
    import time

    gw.alerts.running()
    gw.run(http_flow("harm.test"))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and gw.send() == (0, 0):
        time.sleep(0.05)
    _port, received = smtp_server
    assert len(received) == 1 and received[0][0] == [DSL]


# -- content reports ---------------------------------------------------------------------------
def _portal(tmp_path: Path, config: Path, port: int, content_reports: bool):
    from schoolgate.core.config import load_policy
    from schoolgate.jobs.notify import OutboxSender
    from schoolgate.portal.app import create_app, make_identify
    from schoolgate.storage.db import open_database

    data = yaml.safe_load(config.read_text())
    data["alerts"]["content_reports"] = content_reports
    config.write_text(yaml.safe_dump(data))
    policy = load_policy(config, data_dir=tmp_path / "var")
    sessions = open_database(policy.settings.database_url)
    smtp = policy.settings.notifications.smtp
    app = create_app(
        policy_getter=lambda: policy,
        session_factory=sessions,
        secret=b"s" * 32,
        data_dir=tmp_path / "var",
        identify=make_identify(lambda: policy),
        smtp=smtp,
        start_sender=False,
    )
    app.testing = True
    return app, OutboxSender(sessions, smtp=smtp)


def _report(app) -> None:
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = "10.20.0.7"
    client.environ_base["HTTP_X_SCHOOLGATE_USER"] = "ben"
    page = client.get("/report?url=http://nasty.test/x")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    answer = client.post(
        "/report",
        data={"csrf_token": token, "url": "http://nasty.test/x", "message": "Horrible pictures"},
        content_type="multipart/form-data",
    )
    assert answer.status_code == 303, answer.text


def test_a_content_report_reaches_the_esafety_address(tmp_path, alerts_config, smtp_server):
    port, received = smtp_server
    add_notifications(alerts_config, port)
    app, sender = _portal(tmp_path, alerts_config, port, content_reports=True)
    _report(app)
    assert sender.send_due() == (2, 0)
    by_recipient = {tuple(to): message for to, message in received}
    assert set(by_recipient) == {(IT,), (DSL,)}
    assert "for the e-safety team" in by_recipient[(DSL,)]
    assert "nasty.test/x" in by_recipient[(DSL,)] and "Horrible pictures" in by_recipient[(DSL,)]


def test_content_reports_false_tells_it_support_only(tmp_path, alerts_config, smtp_server):
    port, received = smtp_server
    add_notifications(alerts_config, port)
    app, sender = _portal(tmp_path, alerts_config, port, content_reports=False)
    _report(app)
    assert sender.send_due() == (1, 0)
    assert [to for to, _ in received] == [[IT]]
