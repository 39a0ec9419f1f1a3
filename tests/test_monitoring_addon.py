"""The monitoring part of the gateway: searches and page titles recorded as events, graded by
the risk-term library, and the DSL told (at once for severity 3, with the searches before and
after; lower severities in a digest)."""

from __future__ import annotations

import gzip
import inspect
import json
import logging
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from mitmproxy.test import taddons, tflow, tutils

from schoolgate.gateway import make_addons
from schoolgate.gateway.flowmark import BLOCK, WARN, FlowMark, put_mark
from schoolgate.gateway.monitoring_addon import MonitoringAddon
from schoolgate.jobs.dsl_alerts import DslAlerts, RiskFact, render
from schoolgate.storage.events import list_events
from tests.test_alerts import HEAD, IT, STUDENT_IP, Clock, smtp_server  # noqa: F401

DSL_ADDRESS = "safeguarding@school.example"
ESAFETY = "esafety@school.example"


def add_notifications(config: Path, port: int, *, dsl: bool = True) -> None:
    text = config.read_text(encoding="utf-8") + "notifications:\n  smtp:\n"
    text += f"    host: 127.0.0.1\n    port: {port}\n    esafety: [{ESAFETY}]\n"
    text += f"    slt: [{HEAD}]\n    it_support: [{IT}]\n"
    if dsl:
        text += f"    dsl: [{DSL_ADDRESS}]\n"
    config.write_text(text, encoding="utf-8")


@dataclass
class GW:
    tctx: taddons.context
    addons: list
    monitoring: MonitoringAddon
    clock: Clock

    def run(self, flow) -> None:
        for addon in self.addons:
            hook = getattr(addon, "request", None)
            if hook is not None and not inspect.iscoroutinefunction(hook):
                hook(flow)

    def events(self, kind: str) -> list[dict]:
        assert self.monitoring.flush(10)  # graded and recorded on the grading thread
        recorder = self.addons[1]
        assert recorder.eventlog.flush(10)
        with recorder.sessions() as session:
            return list_events(session, kind=kind)

    def mails(self, received) -> list[tuple[list[str], str]]:
        from schoolgate.jobs.notify import OutboxSender

        assert self.monitoring.flush(10)
        self.monitoring.pump()
        policy = self.addons[0].policy
        smtp = policy.settings.notifications.smtp
        OutboxSender(self.addons[1].sessions, smtp=smtp, clock=self.clock).send_due()
        return [m for m in received if m[1].count("[schoolgate] Safeguarding")]


def make_gw(config: Path, data_dir: Path, port: int, **notify):
    add_notifications(config, port, **notify)
    clock = Clock(datetime.now(UTC))
    addons = make_addons()
    monitoring = next(a for a in addons if isinstance(a, MonitoringAddon))
    monitoring.clock = clock
    return addons, monitoring, clock


@pytest.fixture
def gw(gateway_config: Path, migrated_data_dir: Path, smtp_server):  # noqa: F811
    port, _received = smtp_server
    addons, monitoring, clock = make_gw(gateway_config, migrated_data_dir, port)
    with taddons.context(*addons) as tctx:
        tctx.configure(
            addons[0],
            schoolgate_config=str(gateway_config),
            schoolgate_data_dir=str(migrated_data_dir),
            confdir=str(migrated_data_dir / "ca"),
        )
        yield GW(tctx, addons, monitoring, clock)
        monitoring.done()
        addons[1].done()


def search_flow(host: str, path: str, *, ip: str = STUDENT_IP, user: str | None = None):
    req = tutils.treq(
        method=b"GET", scheme=b"http", host=host, port=80, path=path.encode(), authority=b""
    )
    req.headers["Host"] = host
    flow = tflow.tflow(req=req)
    flow.response = None
    flow.client_conn.peername = (ip, 40000)
    flow.client_conn.sockname = ("127.0.0.1", 8080)
    flow.client_conn.sni = None
    if user:
        flow.metadata["proxyauth"] = (user, "pw")
    return flow


def test_a_search_is_an_event_with_its_engine_term_and_grade(gw: GW):
    gw.run(search_flow("www.google.com", "/search?q=maths+homework+help"))
    gw.run(search_flow("www.bing.com", "/search?q=how+to+kill+myself", user="pupil1"))
    events = gw.events("search")
    assert [e["detail"]["term"] for e in events] == ["maths homework help", "how to kill myself"]
    plain, risky = events
    assert plain["detail"]["engine"] == "google"
    assert plain["detail"]["severity"] == 0 and plain["detail"]["theme"] is None
    assert plain["detail"]["rule"] is None and plain["rule"] is None
    assert plain["role"] == "student" and plain["client_ip"] == STUDENT_IP
    assert plain["search_term"] == "maths homework help"
    assert risky["detail"]["engine"] == "bing" and risky["user"] == "pupil1"
    assert risky["detail"]["severity"] == 3 and risky["detail"]["theme"] == "suicide"
    assert risky["detail"]["rule"] and risky["rule"] == risky["detail"]["rule"]
    assert risky["detail"]["why"]  # the term's note, for the DSL: what it stands for
    assert "why" not in plain["detail"]


def test_a_request_that_is_no_search_is_not_recorded(gw: GW):
    gw.run(search_flow("example.com", "/search?q=how+to+kill+myself"))
    gw.run(search_flow("www.google.com", "/maps"))
    assert gw.events("search") == []


def test_a_further_page_of_the_same_search_is_recorded_once(gw: GW):
    gw.run(search_flow("www.google.com", "/search?q=volcanoes"))
    gw.run(search_flow("www.google.com", "/search?q=volcanoes&start=10"))
    gw.run(search_flow("www.google.com", "/search?q=volcanoes&tbm=isch"))
    assert len(gw.events("search")) == 1


def test_a_blocked_search_is_recorded_as_blocked(gw: GW):
    flow = search_flow("www.google.com", "/search?q=rivers")
    put_mark(flow.metadata, FlowMark(action=BLOCK, ref="x"))  # as Enforcement marks a block
    gw.monitoring.request(flow)
    (event,) = gw.events("search")
    assert event["action"] == "block"


def test_a_matching_failure_still_records_the_search_and_never_blocks(gw: GW, caplog):
    class Broken:
        def assess(self, text, search=False, alone=True):
            raise RuntimeError("automaton exploded")

    gw.monitoring.matcher = Broken()
    caplog.set_level(logging.ERROR)
    first = search_flow("www.google.com", "/search?q=one")
    gw.run(first)
    gw.run(search_flow("www.google.com", "/search?q=two"))
    assert first.response is None  # untouched: monitoring is not filtering
    events = gw.events("search")
    assert [e["detail"]["severity"] for e in events] == [None, None]
    assert "automaton exploded" in events[0]["detail"]["error"]
    assert events[0]["rule"]  # kept as long as a match: it could not be graded
    logged = [r for r in caplog.records if "could not be graded" in r.getMessage()]
    assert len(logged) == 1  # once a minute, not once a search


def test_grading_waits_for_no_request_and_a_full_queue_loses_no_search(gw: GW):
    real = gw.monitoring.matcher
    busy, release, graded_slow = threading.Event(), threading.Event(), threading.Event()

    class Slow:
        def assess(self, text, search=False, alone=True):
            if text == "slow one":
                busy.set()
                release.wait(10)
                graded_slow.set()
            return real.assess(text)

    gw.monitoring.matcher = Slow()
    gw.monitoring.grader.size = 1
    first = search_flow("www.google.com", "/search?q=slow+one")
    gw.run(first)  # returns while its search is still being graded
    assert not graded_slow.is_set() and first.response is None
    assert busy.wait(10)
    gw.run(search_flow("www.google.com", "/search?q=volcanoes"))  # waits in the queue
    overflow = threading.Thread(
        target=gw.run, args=(search_flow("www.bing.com", "/search?q=how+to+kill+myself"),)
    )
    overflow.start()  # the queue is full: this one is graded by the hook itself
    release.set()
    overflow.join(10)
    events = gw.events("search")
    assert sorted(e["detail"]["term"] for e in events) == [
        "how to kill myself",
        "slow one",
        "volcanoes",
    ]
    graded = {e["detail"]["term"]: e["detail"]["severity"] for e in events}
    assert graded == {"slow one": 0, "volcanoes": 0, "how to kill myself": 3}


def test_severity_3_reaches_the_dsl_at_once_with_the_searches_before_and_after(gw: GW, smtp_server):  # noqa: F811
    _port, received = smtp_server
    gw.run(search_flow("www.google.com", "/search?q=feeling+alone", user="pupil1"))
    gw.clock.advance(minutes=1)
    gw.run(search_flow("www.google.com", "/search?q=other+pupil+search", user="pupil2"))
    gw.run(search_flow("www.google.com", "/search?q=how+to+kill+myself", user="pupil1"))
    mails = gw.mails(received)
    assert len(mails) == 1
    to, text = mails[0]
    assert to == [DSL_ADDRESS]
    assert "pupil1" in text and "how to kill myself" in text and "feeling alone" in text
    assert "other pupil search" not in text and "Group:" in text and STUDENT_IP in text
    gw.clock.advance(minutes=2)
    gw.run(search_flow("www.google.com", "/search?q=samaritans+phone+number", user="pupil1"))
    gw.clock.advance(minutes=4)
    gw.run(search_flow("www.google.com", "/search?q=much+later", user="pupil1"))
    follow = gw.mails(received)[1:]
    assert len(follow) == 1
    assert "samaritans phone number" in follow[0][1] and "much later" not in follow[0][1]


def test_ordinary_and_lower_severity_searches_send_nothing_at_once(gw: GW, smtp_server):  # noqa: F811
    _port, received = smtp_server
    gw.run(search_flow("www.google.com", "/search?q=macbeth+suicide+scene+analysis"))
    gw.run(search_flow("www.google.com", "/search?q=photosynthesis"))
    assert gw.mails(received) == []


def test_without_a_dsl_address_the_esafety_team_is_told(
    gateway_config: Path,
    gateway_data_dir: Path,
    smtp_server,  # noqa: F811
):
    port, received = smtp_server
    addons, monitoring, clock = make_gw(gateway_config, gateway_data_dir, port, dsl=False)
    with taddons.context(*addons) as tctx:
        tctx.configure(
            addons[0],
            schoolgate_config=str(gateway_config),
            schoolgate_data_dir=str(gateway_data_dir),
            confdir=str(gateway_data_dir / "ca"),
        )
        gw = GW(tctx, addons, monitoring, clock)
        gw.run(search_flow("www.google.com", "/search?q=how+to+kill+myself"))
        mails = gw.mails(received)
        monitoring.done()
        addons[1].done()
    assert [m[0] for m in mails] == [[ESAFETY]]


def _page(
    gw: GW,
    body: bytes,
    *,
    encoding: str | None = None,
    ctype: str = "text/html",
    mark: FlowMark | None = None,
):
    flow = search_flow("news.test", "/story", user="pupil3")
    if mark is not None:
        put_mark(flow.metadata, mark)
    flow.response = tutils.tresp(content=b"")
    flow.response.headers["content-type"] = ctype
    if encoding:
        flow.response.headers["content-encoding"] = encoding
    gw.monitoring.responseheaders(flow)
    stream = flow.response.stream
    out = []
    if callable(stream):
        for i in range(0, len(body), 7):
            out.append(stream(body[i : i + 7]))
        out.append(stream(b""))
    return flow, b"".join(out)


def test_a_risky_page_title_is_a_page_risk_event_and_the_page_passes_unchanged(gw: GW):
    body = b"<html><head><title>Best ways to kill myself painlessly</title></head><body>x</body>"
    _flow, passed = _page(gw, gzip.compress(body), encoding="gzip")
    assert passed == gzip.compress(body)
    (event,) = gw.events("page_risk")
    assert event["detail"]["title"] == "Best ways to kill myself painlessly"
    assert event["detail"]["severity"] == 3 and event["detail"]["theme"] == "suicide"
    assert event["user"] == "pupil3" and event["host"] == "news.test"


def test_ordinary_titles_and_other_content_are_not_recorded(gw: GW):
    _page(gw, b"<title>Volcanoes for KS3</title>")
    flow, _ = _page(gw, b'{"title": "kill myself"}', ctype="application/json")
    assert not callable(flow.response.stream)
    assert gw.events("page_risk") == []


def test_a_title_is_read_unless_the_gateway_answered_the_request_itself(gw: GW):
    body = b"<html><head><title>Best ways to kill myself painlessly</title></head>"
    # Marked on the way (the safe-search rewrite) but answered by the site: its title is read.
    _page(gw, body, mark=FlowMark(safesearch="YouTube restricted"))
    # The gateway's own answer (a warning page) is not the site's page.
    flow, _ = _page(gw, body, mark=FlowMark(action=WARN, ref="x"))
    assert not callable(flow.response.stream)
    (event,) = gw.events("page_risk")
    assert event["detail"]["title"] == "Best ways to kill myself painlessly"


def test_page_requests_ask_for_encodings_the_title_reader_can_read(gw: GW):
    flow = search_flow("news.test", "/story")
    flow.request.headers["accept-encoding"] = "gzip, deflate, br, zstd"
    flow.request.headers["sec-fetch-dest"] = "document"
    image = search_flow("news.test", "/a.png")
    image.request.headers["accept-encoding"] = "gzip, deflate, br, zstd"
    image.request.headers["sec-fetch-dest"] = "image"
    gw.monitoring.request(flow)
    gw.monitoring.request(image)
    assert flow.request.headers["accept-encoding"] == "gzip, deflate"
    assert image.request.headers["accept-encoding"] == "gzip, deflate, br, zstd"


# -- the pure part ----------------------------------------------------------------------------
T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def risk(severity: int, n: int = 0, at: datetime = T0) -> RiskFact:
    return RiskFact("search", at, f"ref{n}", f"term {n}", severity, "drugs", "x", "pupil")


def test_lower_severities_are_batched_into_one_digest_per_period():
    alerts = DslAlerts(batch_minutes=15)
    for n in range(5):
        alerts.offer(risk(2, n, T0 + timedelta(minutes=n)))
    alerts.offer(risk(1, 9))
    assert alerts.due(T0 + timedelta(minutes=10)) == []
    (digest,) = alerts.due(T0 + timedelta(minutes=15))
    assert digest.kind == "digest" and len(digest.facts) == 5
    subject, body = render(digest)
    assert "5 risk matches" in subject and "term 4" in body and "term 9" not in body


def test_a_burst_of_risky_searches_is_one_alert_and_one_follow_up(gw: GW, smtp_server):  # noqa: F811
    _port, received = smtp_server
    gw.run(search_flow("www.google.com", "/search?q=how+to+kill+myself", user="pupil4"))
    gw.run(search_flow("www.google.com", "/search?q=i+want+to+die", user="pupil4"))
    gw.run(search_flow("www.google.com", "/search?q=how+to+hang+myself", user="pupil4"))
    assert len(gw.mails(received)) == 1
    assert len(gw.events("search")) == 3  # every one is in the log
    gw.clock.advance(minutes=6)
    mails = gw.mails(received)
    assert len(mails) == 2
    follow = mails[1][1]
    assert "i want to die" in follow and "how to hang myself" in follow and "severity 3" in follow


def test_the_monitoring_section_is_read_and_its_mistakes_named(tmp_path: Path):
    from schoolgate.core.configfile import Issues, Section, load_yaml
    from schoolgate.core.monitoring_settings import MonitoringSettings, read_monitoring

    (tmp_path / "local").mkdir()
    path = tmp_path / "mitm_config.yaml"
    path.write_text(
        "monitoring:\n  titles: false\n  library: [local]\n  context_minutes: 10\n"
        "  immediate_severity: 4\n  librar: [x]\n  dedupe_minutes: 0\n",
        encoding="utf-8",
    )
    issues = Issues()
    root = Section(load_yaml(path, issues), file="mitm_config.yaml", path="", issues=issues)
    settings = read_monitoring(root.section("monitoring"), tmp_path)
    assert settings.titles is False and settings.context_minutes == 10
    assert settings.library == (str(tmp_path / "local"),) and settings.dedupe_minutes == 0
    assert settings.immediate_severity == 3  # the wrong value is reported, the default kept
    found = {(i.file, i.line, i.field): i.message for i in issues.items}
    assert "at most 3" in found["mitm_config.yaml", 5, "monitoring.immediate_severity"]
    assert "unknown key" in found["mitm_config.yaml", 6, "monitoring.librar"]
    assert read_monitoring(None) == MonitoringSettings()
    # second_opinion and reader: true, false or flagged; anything else named, the default kept.
    for key in ("second_opinion", "reader"):
        for value, expected in (("flagged", "flagged"), ("false", False), ("sometimes", True)):
            path.write_text(f"monitoring:\n  {key}: {value}\n", encoding="utf-8")
            issues = Issues()
            root = Section(load_yaml(path, issues), file="mitm_config.yaml", path="", issues=issues)
            assert getattr(read_monitoring(root.section("monitoring")), key) == expected
            found = {(i.line, i.field): i.message for i in issues.items}
            if value == "sometimes":
                assert "true, false or flagged" in found[2, f"monitoring.{key}"]
            else:
                assert not found


def test_a_search_the_reader_reads_as_severe_is_raised_to_3_unless_the_school_turns_it_off(
    gw: GW,
):
    from schoolgate.monitoring.library import default_root

    school = gw.addons[0].config_path.parent / "school-terms" / "en"
    school.mkdir(parents=True)
    (school / "local.yaml").write_text(
        "theme: sexual_exploitation\nterms:\n  - {term: owe him, severity: 2}\n"
    )
    for name in ("reader.json", "reader.onnx", "reader_vocab.txt"):
        (school / name).symlink_to(default_root() / "en" / name)
    config = gw.addons[0].config_path
    config.write_text(config.read_text() + "monitoring:\n  library: [school-terms]\n")
    assert gw.addons[0].reload() is True
    gw.run(search_flow("www.google.com", "/search?q=he+sent+me+money+and+now+says+i+owe+him+pics"))
    gw.run(search_flow("www.google.com", "/search?q=i+owe+him+a+birthday+card"))
    graded = {e["detail"]["term"]: e["detail"] for e in gw.events("search")}
    risk = graded["he sent me money and now says i owe him pics"]
    assert risk["severity"] == 3 and risk["rule"] == "reader"
    assert risk["theme"] == "sexual_exploitation" and "the reader's score" in risk["why"]
    assert graded["i owe him a birthday card"]["severity"] == 2
    # A school that turns it off: the library's grade.
    config.write_text(config.read_text() + "  reader: false\n")
    assert gw.addons[0].reload() is True
    gw.run(search_flow("www.google.com", "/search?q=he+sent+me+cash+and+now+says+i+owe+him+pics"))
    graded = {e["detail"]["term"]: e["detail"] for e in gw.events("search")}
    assert graded["he sent me cash and now says i owe him pics"]["severity"] == 2
    assert graded["he sent me cash and now says i owe him pics"]["rule"] == "owe him"


def test_a_failure_in_the_hook_never_refuses_the_request(gw: GW, monkeypatch):
    import schoolgate.gateway.monitoring_addon as addon_module

    def broken(*args, **kwargs):
        raise RuntimeError("capture exploded")

    monkeypatch.setattr(addon_module, "capture", broken)
    chain = __import__("schoolgate.gateway", fromlist=["make_chain"]).make_chain(gw.addons)[0]
    flow = search_flow("www.google.com", "/search?q=rivers")
    chain.request(flow)
    assert flow.response is None  # allowed, unanswered: on its way upstream


def test_a_school_library_edited_on_disk_grades_by_its_new_terms_after_a_reload(gw: GW):
    school = gw.addons[0].config_path.parent / "school-terms"
    terms = school / "en" / "local.yaml"
    terms.parent.mkdir(parents=True)
    terms.write_text("theme: bullying\nterms:\n  - {term: zorblax, severity: 2}\n")
    config = gw.addons[0].config_path
    config.write_text(config.read_text() + "monitoring:\n  library: [school-terms]\n")
    assert gw.addons[0].reload() is True
    gw.run(search_flow("www.google.com", "/search?q=zorblax"))
    terms.write_text("theme: bullying\nterms:\n  - {term: quuxle, severity: 2}\n")
    os.utime(terms, ns=(1, 1))  # a changed time whatever the clock's resolution
    assert gw.addons[0].reload() is True
    gw.run(search_flow("www.google.com", "/search?q=quuxle"))
    gw.run(search_flow("www.google.com", "/search?q=zorblax+again"))
    graded = {e["detail"]["term"]: e["detail"]["severity"] for e in gw.events("search")}
    assert graded == {"zorblax": 2, "quuxle": 2, "zorblax again": 0}


def test_a_gateway_without_the_c_loops_says_so_and_grades_the_same(gw: GW, monkeypatch, caplog):
    """Installed without a C compiler, the matcher runs its loops in Python: the network
    manager is told at load, and searches are graded as before."""
    from schoolgate.monitoring import normaliser, terms
    from schoolgate.monitoring.library import default_root

    monkeypatch.setattr(terms, "speedups", None)
    monkeypatch.setattr(normaliser, "speedups", None)
    school = gw.addons[0].config_path.parent / "school-terms"
    (school / "en").mkdir(parents=True)
    (school / "en" / "local.yaml").write_text(
        "theme: bullying\nterms:\n  - {term: zorblax, severity: 2}\n"
    )
    config = gw.addons[0].config_path
    shipped = default_root()
    config.write_text(config.read_text() + f"monitoring:\n  library: [{shipped}, school-terms]\n")
    with caplog.at_level(logging.WARNING):
        assert gw.addons[0].reload() is True
    assert "C loops are not built" in caplog.text
    gw.run(search_flow("www.google.com", "/search?q=zorblax"))
    gw.run(search_flow("www.google.com", "/search?q=how+to+kill+myself"))
    graded = {e["detail"]["term"]: e["detail"]["severity"] for e in gw.events("search")}
    assert graded == {"zorblax": 2, "how to kill myself": 3}


def test_a_search_the_second_opinion_reads_as_severe_is_raised_to_3(gw: GW):
    school = gw.addons[0].config_path.parent / "school-terms" / "en"
    school.mkdir(parents=True)
    (school / "local.yaml").write_text("theme: bullying\nterms:\n  - {term: zorb, severity: 2}\n")
    model = {
        "format": 1,
        "trained_on": {"searches": 2, "severe": 1, "ordinary": 1},
        "threshold": 0.9,
        "alone_threshold": 0.99,
        "bias": -3.0,
        "themes": ["bullying", "suicide"],
        "theme_bias": [0.0, 0.0],
        "weights": {"blorf": 2.0, "blorf tonight": 4.0, "late": 3.0},
        "theme_weights": {"tonight": [0.0, 1.0]},
    }
    (school / "second_opinion.json").write_text(json.dumps(model))
    config = gw.addons[0].config_path
    config.write_text(config.read_text() + "monitoring:\n  library: [school-terms]\n")
    assert gw.addons[0].reload() is True
    gw.run(search_flow("www.google.com", "/search?q=zorb+blorf+tonight"))
    gw.run(search_flow("www.google.com", "/search?q=zorb+blorf+homework"))
    gw.run(search_flow("www.google.com", "/search?q=blorf+tonight"))  # nothing the library knows
    gw.run(search_flow("www.google.com", "/search?q=blorf+tonight+late"))  # likewise
    graded = {e["detail"]["term"]: e["detail"] for e in gw.events("search")}
    assert graded["zorb blorf tonight"]["severity"] == 3
    assert graded["zorb blorf tonight"]["theme"] == "bullying"  # the theme the library found
    assert graded["zorb blorf tonight"]["rule"] == "second opinion"
    assert graded["zorb blorf homework"]["severity"] == 2
    # Found in nothing: raised only above the stricter threshold (0.95 is not; 0.9975 is),
    # in the theme the model reads.
    assert graded["blorf tonight"]["severity"] == 0
    assert graded["blorf tonight late"]["severity"] == 3
    assert graded["blorf tonight late"]["theme"] == "suicide"
    assert graded["blorf tonight late"]["rule"] == "second opinion"
    # A school that keeps it to what the library flags.
    config.write_text(config.read_text() + "  second_opinion: flagged\n")
    assert gw.addons[0].reload() is True
    gw.run(search_flow("www.google.com", "/search?q=zorb+blorf+tonight+now"))
    gw.run(search_flow("www.google.com", "/search?q=blorf+tonight+late+now"))
    graded = {e["detail"]["term"]: e["detail"] for e in gw.events("search")}
    assert graded["zorb blorf tonight now"]["severity"] == 3
    assert graded["blorf tonight late now"]["severity"] == 0
    # A school that turns it off: the library's terms and rules alone.
    config.write_text(
        config.read_text().replace("second_opinion: flagged", "second_opinion: false")
    )
    assert gw.addons[0].reload() is True
    gw.run(search_flow("www.google.com", "/search?q=zorb+blorf+tonight+again"))
    graded = {e["detail"]["term"]: e["detail"] for e in gw.events("search")}
    assert graded["zorb blorf tonight again"]["severity"] == 2
