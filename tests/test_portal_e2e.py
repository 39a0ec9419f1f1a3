"""The portal end to end, in a real browser (Debian's Chromium driven by Playwright) whose
proxy is the real gateway (``schoolgate run`` in a subprocess, on loopback).

The scenario of the issue: a student (proxy login ``ben``, roster group 9B) hits a block page,
asks for access from it; IT Support signs in and escalates; SLT signs in and approves for the
student's group for one day; the student reloads and gets through. Then a teacher opens YouTube
for 9B until the end of the lesson: the student gets through, the recorded end is the lesson's
end (a minute or two away; ``schoolgate explain`` shows the site closed at that time), and the
teacher ends it early, which blocks it again at once.

How traffic stays on loopback: the gateway runs in mitmproxy's ``upstream`` mode, pointed at a
local "origin" that answers every request it is sent (absolute-form, any host). The gateway
decides on the host the browser asked for (``social.test``, ``youtube.test``); what it allows
reaches the local origin, what it blocks never leaves the gateway (``connection_strategy``
lazy: nothing is contacted before the decision). ``map_remote`` would not do: it runs before
schoolgate's addons and would change the host they decide on.

HTTPS: the browser trusts the gateway's CA key only (``--ignore-certificate-errors-spki-list``
with the SHA-256 of the CA's public key: mitmproxy signs every certificate it makes with a key
pair equal to the CA's, so this accepts the gateway's certificates and nothing else), rather
than ``ignore_https_errors`` (which would accept any certificate at all). The student opens
``https://schoolgate.internal/mine`` to check that the portal over TLS sees their proxy login.

E-mail goes to a real local SMTP server (aiosmtpd). Screenshots of each page are saved under
``test-artifacts/portal-e2e/``.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import aiosmtpd.controller as aiosmtpd_controller
import playwright.sync_api as sync_api
import pytest
from gateway_process import (
    BROWSER_ARGS,
    CHROMIUM,
    ROOT,
    free_port,
    run_cli,
    spki_hash,
    start_gateway,
    stop_gateway,
)
from policy_fixtures import today_for

if not os.path.exists(CHROMIUM):
    pytest.skip("Chromium is not installed (apt-get install chromium)", allow_module_level=True)

ARTIFACTS = ROOT / "test-artifacts" / "portal-e2e"
PORTAL = "schoolgate.internal"
PASSWORD = "correct horse battery"
STAFF = {
    # user name: (roles, groups, e-mail)
    "it.tech": (["it_support"], [], "it.tech@school.test"),
    "mrs.head": (["slt"], [], "mrs.head@school.test"),
    "mr.jones": (["teacher"], ["9B"], "mr.jones@school.test"),
}


class Origin(BaseHTTPRequestHandler):
    """The "internet": answers any request (the gateway's upstream proxy) with a small page."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        body = f"<!doctype html><title>origin</title><p>origin {self.command} {self.path}</p>"
        data = body.encode()
        self.send_response(200)
        self.send_header("content-type", "text/html; charset=utf-8")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_HEAD = _answer

    def log_message(self, *args) -> None:
        pass


class Mailbox:
    """A real SMTP server on loopback that keeps what it receives."""

    def __init__(self) -> None:
        self.messages: list = []
        self._lock = threading.Lock()
        self.port = free_port()
        self.controller = aiosmtpd_controller.Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
        message = message_from_bytes(envelope.content)
        with self._lock:
            self.messages.append((list(envelope.rcpt_tos), message))
        return "250 OK"

    def start(self) -> int:
        self.controller.start()
        return self.port

    def stop(self) -> None:
        self.controller.stop()

    def wait(self, to: str, subject: str, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for rcpts, message in self.messages:
                    if to in rcpts and subject in str(message["subject"]):
                        return message
            time.sleep(0.2)
        with self._lock:
            seen = [(r, str(m["subject"])) for r, m in self.messages]
        raise AssertionError(f"no mail to {to} about {subject!r}; got {seen}")


def cli(*args: str, config: Path, data_dir: Path, stdin: str | None = None) -> str:
    return run_cli(config, data_dir, *args, stdin=stdin, timeout=30)


def write_config(folder: Path, smtp_port: int, lesson_end: str) -> Path:
    """The gateway test config plus: a YouTube category teachers may open, notifications to
    the local SMTP server, and a timetable whose current lesson ends at ``lesson_end``."""
    shutil.copytree(ROOT / "tests" / "data" / "gateway", folder)
    (folder / "youtube.txt").write_text("youtube.test\n")
    (folder / "timetable.yaml").write_text(
        "timezone: UTC\n"
        "week:\n"
        "  monday-sunday:\n"
        f'    - {{name: Period 1, kind: lesson, start: "00:00", end: "{lesson_end}"}}\n'
        f'    - {{name: Period 2, kind: lesson, start: "{lesson_end}", end: "24:00"}}\n'
        "terms:\n"
        "  - {name: Test term, start: 2020-01-01, end: 2040-12-31}\n"
    )
    config = folder / "config.yaml"
    text = config.read_text()
    text = text.replace(
        "  wikipedia:\n",
        "  youtube:\n"
        "    description: Video sharing (test)\n"
        "    lists: [youtube.txt]\n"
        "    teachers_may_open: true\n"
        "  wikipedia:\n",
    )
    text = text.replace(
        "rules:\n",
        "rules:\n"
        '  - {roles: [student, visitor, guest], windows: "*", categories: [youtube], '
        "action: block}\n",
    )
    text = text.replace(
        "  host: schoolgate.internal\n",
        "  host: schoolgate.internal\n"
        "  slt_required: {scopes: [role, site, everyone], longer_than_days: 91}\n",
    )
    text += (
        "notifications:\n"
        "  smtp:\n"
        "    host: 127.0.0.1\n"
        f"    port: {smtp_port}\n"
        "    from: web-filter@school.test\n"
    )
    config.write_text(text)
    return config


class Scenario:
    def __init__(self, tmp: Path) -> None:
        # The current lesson ends at the next whole minute at least 70 s away (the teacher's
        # "end of this lesson"); never across midnight.
        ahead = timedelta(seconds=130)
        end = (today_for(ahead) + ahead).replace(second=0, microsecond=0)
        self.lesson_end = end
        self.mailbox = Mailbox()
        smtp_port = self.mailbox.start()
        self.config = write_config(tmp / "config", smtp_port, end.strftime("%H:%M"))
        self.data_dir = tmp / "var"
        self.log = tmp / "gateway.log"
        self.origin = ThreadingHTTPServer(("127.0.0.1", 0), Origin)
        threading.Thread(target=self.origin.serve_forever, daemon=True).start()
        for user, (roles, groups, email) in STAFF.items():
            # before the gateway's first start: these make the school's database (--init)
            args = ["staff", "add", user, "--email", email, "--password-stdin", "--init"]
            for role in roles:
                args += ["--role", role]
            for group in groups:
                args += ["--group", group]
            cli(*args, config=self.config, data_dir=self.data_dir, stdin=PASSWORD + "\n")
        self.port = free_port()
        self.proc = start_gateway(
            self.config,
            self.data_dir,
            self.port,
            self.log,
            "--mode",
            f"upstream:http://127.0.0.1:{self.origin.server_address[1]}",
            "--set",
            "proxyauth=any",  # the user name is the proxy login (any password)
            "--set",
            "schoolgate_exceptions_interval=1",
        )
        self.ca = self.data_dir / "ca" / "mitmproxy-ca-cert.pem"

    def explain(self, url: str, user: str, at: datetime) -> dict:
        out = cli(
            "explain",
            url,
            "--user",
            user,
            "--at",
            at.isoformat(),
            "--json",
            config=self.config,
            data_dir=self.data_dir,
        )
        return json.loads(out)

    def stop(self) -> None:
        stop_gateway(self.proc, 20)
        self.origin.shutdown()
        self.mailbox.stop()


@pytest.fixture
def scenario(tmp_path: Path):
    running = Scenario(tmp_path)
    yield running
    running.stop()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def sign_in(page, user: str) -> None:
    page.goto(f"http://{PORTAL}/staff/login")
    page.fill("#username", user)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    assert "/staff/login" not in page.url, page.content()


def until_page(page, url: str, predicate, timeout: float = 15.0):
    """Load ``url`` until ``predicate(response, page)`` holds (the gateway applies new
    exceptions within its refresh interval)."""
    deadline = time.monotonic() + timeout
    while True:
        response = page.goto(url)
        if predicate(response, page) or time.monotonic() > deadline:
            return response
        time.sleep(0.5)


def test_request_escalate_approve_and_teacher_override(scenario: Scenario) -> None:
    sync_playwright = sync_api.sync_playwright
    proxy = f"http://127.0.0.1:{scenario.port}"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=BROWSER_ARGS + [f"--ignore-certificate-errors-spki-list={spki_hash(scenario.ca)}"],
            proxy={"server": proxy},
        )

        def context(user: str):
            ctx = browser.new_context(
                proxy={"server": proxy, "username": user, "password": "x"},
                viewport={"width": 1100, "height": 900},
            )
            ctx.set_default_timeout(15000)
            return ctx

        student = context("ben").new_page()

        # 1. The student hits a block page.
        blocked_url = "http://social.test/feed?topic=rivers"
        response = student.goto(blocked_url)
        assert response.status == 403
        assert "social media" in student.content().lower()
        shot(student, "01-student-block-page")

        # 2. ... and asks for access from it.
        student.click("text=Request access to this page")
        student.wait_for_load_state()
        assert student.url.startswith(f"http://{PORTAL}/request?")
        assert "social.test/feed" in student.content()
        shot(student, "02-student-request-form")
        student.check("#purpose-curriculum")
        student.fill("#message", "Year 9 geography: the river Severn page our teacher set.")
        student.click("text=Send request")
        student.wait_for_load_state()
        assert "/status/" in student.url
        status_url = student.url
        ref = student.locator(".ref").first.inner_text().strip()
        assert ref
        shot(student, "03-student-request-sent")
        mail = scenario.mailbox.wait("it.tech@school.test", f"Access request {ref}")
        assert "social.test" in str(mail["subject"])

        # Over HTTPS, the portal sees the proxy login too (the request is listed as ben's).
        student.goto(f"https://{PORTAL}/mine")
        assert ref in student.content()
        shot(student, "04-student-mine-https")

        # 3. IT Support signs in and escalates to SLT.
        it = context("it.tech").new_page()
        sign_in(it, "it.tech")
        it.goto(f"http://{PORTAL}/it/")
        shot(it, "05-it-queue")
        it.click(f"text={ref}")
        it.wait_for_load_state()
        assert "social.test" in it.content()
        shot(it, "06-it-item")
        it.fill("#esc-note", "Curriculum use for a whole group: SLT to decide.")
        it.click("text=Escalate to SLT")
        it.wait_for_load_state()
        assert "Escalated to SLT" in it.content()
        shot(it, "07-it-escalated")
        scenario.mailbox.wait("mrs.head@school.test", f"Escalated to SLT: {ref}")

        # 4. SLT signs in and approves for the student's group (9B) for one day.
        slt = context("mrs.head").new_page()
        sign_in(slt, "mrs.head")
        slt.goto(f"http://{PORTAL}/slt/")
        shot(slt, "08-slt-review")
        slt.click(f"text={ref}")
        slt.wait_for_load_state()
        slt.select_option("#scope", "group")
        slt.fill("#scope_value", "9B")
        slt.select_option("#target_kind", "host")
        slt.fill("#target", "social.test")
        slt.select_option("#duration", "until")
        one_day = datetime.now(UTC) + timedelta(days=1)
        slt.fill("#until", one_day.strftime("%Y-%m-%dT%H:%M"))
        slt.fill("#note", "Geography, one day")
        shot(slt, "09-slt-approve-form")
        slt.click("button:text-is('Approve')")
        slt.wait_for_load_state()
        assert "Approved: exception #" in slt.content(), slt.content()
        shot(slt, "10-slt-approved")

        # 5. The student reloads and gets through (to the local origin).
        response = until_page(student, blocked_url, lambda r, p: r.status == 200)
        assert response.status == 200, student.content()
        assert "origin GET http://social.test/feed?topic=rivers" in student.content()
        shot(student, "11-student-through")
        student.goto(status_url)
        assert "approved" in student.content().lower()
        shot(student, "12-student-status-approved")

        # 6. A teacher opens YouTube for 9B until the end of the lesson, then ends it early.
        video = "http://youtube.test/watch?v=rivers"
        assert student.goto(video).status == 403
        shot(student, "13-student-youtube-blocked")
        teacher = context("mr.jones").new_page()
        sign_in(teacher, "mr.jones")
        teacher.goto(f"http://{PORTAL}/teacher/")
        teacher.select_option("#group", "9B")
        teacher.check("#tk-cat")
        teacher.select_option("select[name=category]", "youtube")
        teacher.select_option("#until", "lesson")
        teacher.fill("#reason", "Year 9 geography: river documentary")
        shot(teacher, "14-teacher-form")
        teacher.click("button:text-is('Open')")
        teacher.wait_for_load_state()
        end_text = scenario.lesson_end.strftime("%H:%M")
        assert f"until {end_text}" in teacher.content(), teacher.content()
        shot(teacher, "15-teacher-opened")

        response = until_page(student, video, lambda r, p: r.status == 200)
        assert response.status == 200 and "origin GET" in student.content()
        shot(student, "16-student-youtube-open")
        # It closes on time: open just before the lesson ends, blocked from its end.
        before = scenario.explain(video, "ben", scenario.lesson_end - timedelta(seconds=5))
        after = scenario.explain(video, "ben", scenario.lesson_end + timedelta(seconds=1))
        assert before["action"] == "allow", before
        assert after["action"] == "block", after

        teacher.goto(f"http://{PORTAL}/teacher/")
        teacher.click("text=End now")
        teacher.wait_for_load_state()
        assert "Ended." in teacher.content()
        shot(teacher, "17-teacher-ended")
        response = until_page(student, video, lambda r, p: r.status == 403)
        assert response.status == 403
        shot(student, "18-student-youtube-closed")
        # The group's SLT-approved exception still stands.
        assert student.goto(blocked_url).status == 200
        browser.close()

    # Requests for the portal never went anywhere but the gateway.
    log_text = scenario.log.read_text(errors="replace")
    assert "Traceback" not in log_text, log_text
