"""Safeguarding monitoring through the real gateway: ``schoolgate run`` on a loopback port,
Google and Bing standing on loopback origins (``schoolgate_hosts_file``), searches made with
httpx and curl through the proxy, the events read with ``schoolgate events --kind search``, and
a real SMTP server (aiosmtpd) that must receive the DSL's alert for a severity-3 search at once,
and nothing for ordinary searches."""

from __future__ import annotations

import email
import email.policy
import json
import shutil
import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from gateway_process import ROOT, free_port, run_cli, start_gateway, stop_gateway, wait_for
from marker_origins import write_hosts

pytestmark = pytest.mark.e2e

DSL_ADDRESS = "dsl@school.example"
RISKY_PAGE = b"<html><head><title>How to kill myself without pain</title></head><body>x</body>"


class _Origin(BaseHTTPRequestHandler):
    """A search engine's results page, and a news site's page with a risky title."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        if self.path.startswith("/story"):
            body, ctype = RISKY_PAGE, "text/html; charset=utf-8"
        else:
            body, ctype = b"<html><title>Results</title>results</html>", "text/html"
        self.send_response(200)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


class Net:
    def __init__(self, tmp: Path) -> None:
        self.received: list[tuple[list[str], str]] = []
        from aiosmtpd.controller import Controller

        received = self.received

        class Inbox:
            async def handle_DATA(self, server, session, envelope):  # noqa: N802
                received.append((envelope.rcpt_tos, envelope.content.decode("utf-8", "replace")))
                return "250 OK"

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            smtp_port = sock.getsockname()[1]
        self.smtp = Controller(Inbox(), hostname="127.0.0.1", port=smtp_port)
        self.smtp.start()
        self.origin = ThreadingHTTPServer(("127.0.0.1", 0), _Origin)
        self.origin_port = self.origin.server_address[1]
        threading.Thread(target=self.origin.serve_forever, daemon=True).start()
        folder = tmp / "config"
        shutil.copytree(ROOT / "tests" / "data" / "gateway", folder)
        self.config = folder / "config.yaml"
        student = "    - {cidr: 127.0.0.1/32, role: student}\n"
        pupils = student + "".join(  # more pupils, on 127.0.0.3 and 127.0.0.4
            student.replace("127.0.0.1", f"127.0.0.{n}") for n in (3, 4)
        )
        self.config.write_text(
            self.config.read_text().replace(student, pupils)
            + "notifications:\n  smtp:\n"
            + f"    host: 127.0.0.1\n    port: {smtp_port}\n"
            + f"    dsl: [{DSL_ADDRESS}]\n    esafety: [esafety@school.example]\n"
        )
        self.data_dir = tmp / "var"
        here = ["127.0.0.1"]
        hosts = write_hosts(
            tmp / "hosts",
            {"www.google.com": here, "www.bing.com": here, "news.test": here,
             "schoolgate.internal": []},
        )  # fmt: skip
        self.port = free_port()
        self.proc = start_gateway(
            self.config,
            self.data_dir,
            self.port,
            tmp / "gateway.log",
            "--set",
            f"schoolgate_hosts_file={hosts}",
            quiet=False,
        )

    def url(self, host: str, path: str) -> str:
        return f"http://{host}:{self.origin_port}{path}"

    def get(self, host: str, path: str) -> httpx.Response:
        with httpx.Client(proxy=f"http://127.0.0.1:{self.port}", timeout=30) as client:
            return client.get(self.url(host, path))

    def events(self, kind: str) -> list[dict]:
        return json.loads(run_cli(self.config, self.data_dir, "events", "--kind", kind, "--json"))

    def alerts(self) -> list[tuple[list[str], str]]:
        return [m for m in self.received if "[schoolgate] Safeguarding" in m[1]]

    def stop(self) -> None:
        stop_gateway(self.proc, 20)
        self.origin.shutdown()
        self.smtp.stop()


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    running = Net(tmp_path_factory.mktemp("monitoring"))
    yield running
    running.stop()


def test_ordinary_searches_are_recorded_with_their_term_and_send_nothing(net: Net) -> None:
    assert net.get("www.google.com", "/search?q=photosynthesis+diagram").status_code == 200
    out = subprocess.run(
        ["curl", "-s", "-x", f"http://127.0.0.1:{net.port}",
         net.url("www.bing.com", "/search?q=macbeth+suicide+scene+analysis")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "results" in out.stdout
    events = wait_for(lambda: len(net.events("search")) >= 2 and net.events("search"))
    terms = {e["detail"]["engine"]: e["detail"]["term"] for e in events}
    assert terms == {"google": "photosynthesis diagram", "bing": "macbeth suicide scene analysis"}
    assert all(e["detail"]["severity"] < 3 for e in events)
    assert all(e["role"] == "student" and e["client_ip"] == "127.0.0.1" for e in events)
    assert net.alerts() == []


def test_a_severity_3_search_reaches_the_dsl_at_once_with_its_context(net: Net) -> None:
    net.get("www.google.com", "/search?q=everyone+at+school+hates+me")  # severity 2: context
    net.get("www.google.com", "/search?q=how+to+kill+myself")
    mails = wait_for(net.alerts, timeout=60)
    assert len(mails) == 1, mails
    to, text = mails[0]
    assert to == [DSL_ADDRESS]
    assert "how to kill myself" in text and "everyone at school hates me" in text
    assert "127.0.0.1" in text and "student" in text
    (event,) = [e for e in net.events("search") if e["detail"]["term"] == "how to kill myself"]
    assert event["detail"]["severity"] == 3 and event["detail"]["theme"] == "suicide"


def test_a_risky_page_title_is_recorded_and_the_page_arrives_whole(net: Net) -> None:
    answer = net.get("news.test", "/story")
    assert answer.content == RISKY_PAGE
    events = wait_for(lambda: net.events("page_risk"))
    assert [e["detail"]["title"] for e in events] == ["How to kill myself without pain"]
    assert events[0]["detail"]["severity"] == 3


def _alert_for(net: Net, client: str, search: str) -> tuple[list[str], str]:
    """``search`` on Google with curl from ``client`` (a pupil of its own: a pupil's alerts
    after the first wait for a follow-up); the one alert it sends (recipients, text)."""
    before = len(net.alerts())
    out = subprocess.run(
        ["curl", "-s", "--interface", client, "-x", f"http://127.0.0.1:{net.port}",
         net.url("www.google.com", "/search?q=" + search.replace(" ", "+"))],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "results" in out.stdout
    mails = wait_for(lambda: len(net.alerts()) > before and net.alerts(), timeout=60)
    assert len(mails) == before + 1, mails
    to, text = mails[-1]
    return to, email.message_from_string(text, policy=email.policy.default).get_content()


def test_a_risk_in_words_no_term_holds_reaches_the_dsl_through_the_second_opinion(
    net: Net,
) -> None:
    """The terms and rules find nothing in it; the shipped model reads it as self-harm."""
    search = "went too deep and it wont stop bleeding"
    to, body = _alert_for(net, "127.0.0.3", search)
    assert to == [DSL_ADDRESS] and search in body
    # The DSL reads why: no term matched, and the model's score against its threshold.
    assert 'matched "second opinion"): no term or rule found; the learned model' in body
    (event,) = [e for e in net.events("search") if e["detail"]["term"] == search]
    assert event["detail"]["severity"] == 3 and event["detail"]["theme"] == "self_harm"
    assert event["detail"]["rule"] == "second opinion" and event["client_ip"] == "127.0.0.3"
    assert "no term or rule found" in event["detail"]["why"]


def test_a_risk_only_the_reader_reads_as_severe_reaches_the_dsl(net: Net) -> None:
    """Neither the terms and rules nor the second opinion raise it; the library's neural
    reader (onnxruntime, on the gateway's grading thread) does."""
    search = "a grown man keeps sending me explicit photos and wants mine in return"
    to, body = _alert_for(net, "127.0.0.4", search)
    assert to == [DSL_ADDRESS] and search in body
    assert 'matched "reader"): no term or rule found; the reader\'s score' in body
    (event,) = [e for e in net.events("search") if e["detail"]["term"] == search]
    assert event["detail"]["severity"] == 3 and event["detail"]["rule"] == "reader"
    assert event["detail"]["theme"] == "sexual_exploitation" and event["client_ip"] == "127.0.0.4"
