"""The console end to end: Debian's Chromium (Playwright) through a real ``schoolgate run`` on
loopback, as ``tests/test_portal_e2e.py`` drives it (upstream mode to a local origin, the
gateway CA's key the only one trusted).

* a pupil is blocked; the live view receives the block, both streamed on the portal's own port
  (``--portal-port``) and polled through the proxy, and the dashboard shows it;
* a pupil is banned: their page says to ask their teacher; their teacher starts a supervision
  session in the portal and the pupil browses; the teacher ends it and the pupil is suspended
  again; all of it in the ban's audit trail;
* staff sign in through the school's identity provider (an OpenID Connect provider the test
  starts on loopback) and, for a role that must, with a two-factor code (set up by reading the QR
  code the portal draws, as a phone's camera would); wrong codes and other tenants are refused.

Screenshots: ``test-artifacts/console-e2e/``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from pathlib import Path

import pyotp
import pytest
from gateway_process import ROOT, free_port, run_cli, start_gateway, stop_gateway
from oidc_provider import TENANT, Provider
from test_portal_e2e import BROWSER_ARGS, CHROMIUM, Origin, spki_hash, until_page

from schoolgate.storage.bans import add_ban
from schoolgate.storage.db import open_database

ARTIFACTS = ROOT / "test-artifacts" / "console-e2e"
PORTAL = "schoolgate.internal"
PASSWORD = "correct horse battery"
STAFF = {
    "it.tech": (["it_support"], []),
    "mr.jones": (["teacher"], ["9B"]),
    "mrs.head": (["slt"], []),
}
CALLBACK = f"http://{PORTAL}/staff/oidc/entra/callback"


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


class Gateway:
    """The gateway test config (``portal_keys``: more YAML under ``portal:``), staff accounts
    made with the CLI before
    the first start (``--init``), a local origin, and ``schoolgate run`` with the portal's own
    port."""

    def __init__(self, tmp: Path, portal_keys: str = "") -> None:
        folder = tmp / "config"
        shutil.copytree(ROOT / "tests" / "data" / "gateway", folder)
        self.config = folder / "config.yaml"
        host = "  host: schoolgate.internal\n"
        self.config.write_text(self.config.read_text().replace(host, host + portal_keys, 1))
        self.data_dir = tmp / "var"
        self.origin = ThreadingHTTPServer(("127.0.0.1", 0), Origin)
        threading.Thread(target=self.origin.serve_forever, daemon=True).start()
        for user, (roles, groups) in STAFF.items():
            args = ["staff", "add", user, "--password-stdin", "--init"]
            for role in roles:
                args += ["--role", role]
            for group in groups:
                args += ["--group", group]
            run_cli(self.config, self.data_dir, *args, stdin=PASSWORD + "\n")
        self.port, self.admin_port = free_port(), free_port()
        self.log = tmp / "gateway.log"
        self.proc = start_gateway(
            self.config,
            self.data_dir,
            self.port,
            self.log,
            "--mode",
            f"upstream:http://127.0.0.1:{self.origin.server_address[1]}",
            "--portal-port",
            str(self.admin_port),
            "--set",
            "proxyauth=any",
            "--set",
            "schoolgate_bans_interval=1",
            "--set",
            "schoolgate_heartbeat_interval=1",
        )
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.ca = self.data_dir / "ca" / "mitmproxy-ca-cert.pem"

    def stop(self) -> str:
        stop_gateway(self.proc, 20)
        self.origin.shutdown()
        return self.log.read_text(errors="replace")


@pytest.fixture
def browser(tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        yield pw


def _launch(pw, gateway: Gateway):
    return pw.chromium.launch(
        executable_path=CHROMIUM,
        args=BROWSER_ARGS + [f"--ignore-certificate-errors-spki-list={spki_hash(gateway.ca)}"],
        proxy={"server": f"http://127.0.0.1:{gateway.port}"},
    )


def _context(browser, gateway: Gateway, user: str):
    """A browser whose proxy is the gateway, signed in to it as ``user`` (any password); the
    portal's own port and the identity provider (loopback) are reached directly."""
    proxy = {
        "server": f"http://127.0.0.1:{gateway.port}",
        "bypass": "127.0.0.1",
        "username": user,
        "password": "x",
    }
    ctx = browser.new_context(proxy=proxy, viewport={"width": 1100, "height": 900})
    ctx.set_default_timeout(20000)
    return ctx


def sign_in(page, base: str, user: str) -> None:
    page.goto(f"{base}/staff/login")
    page.fill("#username", user)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    assert "/staff/login" not in page.url, page.content()


def test_the_live_view_and_the_dashboard_show_a_block_made_a_moment_before(tmp_path, browser):
    gateway = Gateway(tmp_path)
    try:
        chromium = _launch(browser, gateway)
        # IT Support: the live view on the portal's own port (streamed) and through the proxy
        # (polled).
        streamed = _context(chromium, gateway, "staff").new_page()
        sign_in(streamed, gateway.admin, "it.tech")
        streamed.goto(f"{gateway.admin}/console/live")
        streamed.wait_for_selector("#live-state:has-text('Streaming')")
        polled = _context(chromium, gateway, "staff").new_page()
        sign_in(polled, f"http://{PORTAL}", "it.tech")
        polled.goto(f"http://{PORTAL}/console/live")
        assert polled.get_attribute("#live-state", "data-stream") == ""
        shot(streamed, "01-live-before")

        student = _context(chromium, gateway, "ben").new_page()
        response = student.goto("http://social.test/feed?topic=rivers")
        assert response.status == 403
        ref = response.headers["x-schoolgate-ref"]

        row = f"#live-events tbody tr:has(code:text-is('{ref}'))"
        streamed.wait_for_selector(row, timeout=30000)
        assert "social.test" in streamed.inner_text(row) and "ben" in streamed.inner_text(row)
        polled.wait_for_selector(row, timeout=30000)
        shot(streamed, "02-live-streamed")
        shot(polled, "03-live-polled")

        dashboard = polled
        dashboard.goto(f"http://{PORTAL}/console/")
        assert "social.test" in dashboard.inner_text("#top-sites")
        assert ref in dashboard.inner_text("#recent-blocks")
        assert "running" in dashboard.inner_text("#processes")
        shot(dashboard, "04-dashboard")
        # The block is findable in the history by its reference, as the block page gives it.
        dashboard.click(f"#recent-blocks a:has(code:text-is('{ref}'))")
        dashboard.wait_for_load_state()
        assert "/feed?topic=rivers" not in dashboard.url and ref in dashboard.inner_text("#history")
        chromium.close()
    finally:
        log = gateway.stop()
    assert "Traceback" not in log, log


def test_a_teacher_supervises_a_banned_pupil_who_then_browses(tmp_path, browser):
    gateway = Gateway(tmp_path)
    try:
        sessions = open_database(f"sqlite:///{gateway.data_dir / 'schoolgate.db'}")
        with sessions() as s:
            ban = add_ban(s, "ben", by="schoolgate", minutes=600, reason="web proxy used")
            s.commit()
            ban_id = ban.id
        chromium = _launch(browser, gateway)
        student = _context(chromium, gateway, "ben").new_page()
        page = "http://origin.test/lesson"
        response = until_page(student, page, lambda r, p: r.status == 403, 30)
        assert response.status == 403
        text = student.inner_text("main")
        assert "ask your teacher" in text and "A teacher of 9B" in text
        shot(student, "10-pupil-suspended")

        teacher = _context(chromium, gateway, "mr.jones").new_page()
        sign_in(teacher, f"http://{PORTAL}", "mr.jones")
        teacher.goto(f"http://{PORTAL}/supervision/")
        shot(teacher, "11-teacher-supervision")
        teacher.select_option(f"#minutes-{ban_id}", "30")
        teacher.fill(f"#reason-{ban_id}", "Year 9 computing, room 12")
        teacher.click("button:text-is('Start supervising')")
        teacher.wait_for_load_state()
        assert "Supervision session #" in teacher.inner_text("main")
        shot(teacher, "12-teacher-started")

        response = until_page(student, page, lambda r, p: r.status == 200, 30)
        assert (
            response.status == 200 and "origin GET http://origin.test/lesson" in student.content()
        )
        shot(student, "13-pupil-supervised")

        teacher.goto(f"http://{PORTAL}/supervision/")
        teacher.click("button:text-is('End now')")
        teacher.wait_for_load_state()
        response = until_page(student, page, lambda r, p: r.status == 403, 30)
        assert response.status == 403
        chromium.close()
        shown = json.loads(
            run_cli(gateway.config, gateway.data_dir, "bans", "show", str(ban_id), "--json")
        )
        actions = [(h["actor"], h["action"]) for h in shown["history"]]
        assert ("mr.jones", "supervision.start") in actions
        assert ("mr.jones", "supervision.end") in actions
        assert shown["supervision_sessions"][0]["staff"] == "mr.jones"
    finally:
        log = gateway.stop()
    assert "Traceback" not in log, log


# -- sign-in: the identity provider and two-factor codes ------------------------------------------


def _read_qr(page, tmp_path: Path) -> str:
    image = tmp_path / "qr.png"
    page.locator("#qr svg").screenshot(path=str(image))
    read = subprocess.run(
        ["zbarimg", "--quiet", "--raw", str(image)], capture_output=True, text=True, timeout=60
    )
    assert read.returncode == 0, read.stderr
    return read.stdout.strip()


def test_staff_sign_in_with_the_identity_provider_and_with_a_two_factor_code(tmp_path, browser):
    provider = Provider(client_id="schoolgate", client_secret="s3cret", redirect_uris=[CALLBACK])
    provider.start()
    keys = (
        "  totp: {required_for: [it_support], issuer: Test School web filter}\n"
        "  oidc:\n"
        "    providers:\n"
        "      - {name: entra, kind: entra, label: Sign in with Microsoft, "
        f"issuer: '{provider.issuer}', client_id: schoolgate, client_secret: s3cret, "
        f"allowed_tenants: ['{TENANT}']}}\n"
    )
    gateway = None
    try:
        gateway = Gateway(tmp_path, keys)
        chromium = _launch(browser, gateway)

        # 1. The school's identity provider: mr.jones signs in with his school account.
        provider.user = {
            "sub": "jones1",
            "tid": TENANT,
            "preferred_username": "Mr.Jones@school.example",
            "email": "mr.jones@school.example",
            "name": "Mr Jones",
        }
        staff = _context(chromium, gateway, "staff").new_page()
        staff.goto(f"http://{PORTAL}/staff/login")
        shot(staff, "20-login-with-provider")
        staff.click("text=Sign in with Microsoft")
        staff.wait_for_url(re.compile(r".*/staff/$"))
        assert "Hello" in staff.inner_text("main") and "mr.jones" in staff.inner_text("header")
        shot(staff, "21-signed-in-through-provider")

        # Someone of another tenant is refused, and nothing is signed in.
        provider.user = dict(provider.user, tid="99999999-0000-0000-0000-000000000000")
        other = _context(chromium, gateway, "staff").new_page()
        other.goto(f"http://{PORTAL}/staff/login")
        other.click("text=Sign in with Microsoft")
        other.wait_for_selector(".error")
        assert "not one of the school's" in other.inner_text(".error")
        other.goto(f"http://{PORTAL}/staff/")
        assert "/staff/login" in other.url

        # 2. Two-factor: IT Support must use a code. The first sign-in sets it up.
        it = _context(chromium, gateway, "staff").new_page()
        sign_in(it, f"http://{PORTAL}", "it.tech")
        assert it.url.endswith("/staff/two-factor/setup"), it.url
        shot(it, "22-two-factor-setup")
        uri = _read_qr(it, tmp_path)  # as a phone's camera reads it
        assert uri.startswith("otpauth://totp/") and "Test%20School" in uri
        secret = pyotp.parse_uri(uri).secret
        assert secret == it.text_content("#totp-secret").strip()  # to type in by hand
        totp = pyotp.TOTP(secret)
        it.fill("#code", "000000" if totp.now() != "000000" else "111111")
        it.click("button[type=submit]")
        assert "not right" in it.inner_text(".error")
        it.goto(f"http://{PORTAL}/staff/two-factor/setup")
        secret = pyotp.parse_uri(_read_qr(it, tmp_path)).secret
        totp = pyotp.TOTP(secret)
        it.fill("#code", totp.now())
        it.click("button[type=submit]")
        it.wait_for_selector("#recovery-codes")
        assert len(it.locator("#recovery-codes li").all()) == 10
        shot(it, "23-recovery-codes")
        it.click("text=Continue")
        it.wait_for_url(re.compile(r".*/staff/$"))
        assert "Hello" in it.inner_text("main")
        it.click("text=Sign out")

        # 3. The next sign-in asks for the code: a wrong one is refused, the right one works.
        sign_in(it, f"http://{PORTAL}", "it.tech")
        assert it.url.endswith("/staff/two-factor"), it.url
        it.fill("#code", "123456" if totp.now() != "123456" else "654321")
        it.click("button[type=submit]")
        assert "not right" in it.inner_text(".error")
        assert it.goto(f"http://{PORTAL}/console/").url.endswith("/staff/login?next=/console/")
        sign_in(it, f"http://{PORTAL}", "it.tech")
        # The code of the next 30-second step (the one used to set up is never accepted again).
        it.fill("#code", totp.at(datetime.now(UTC) + timedelta(seconds=30)))
        it.click("button[type=submit]")
        it.wait_for_url(re.compile(r".*/staff/$"))
        assert it.goto(f"http://{PORTAL}/console/").status == 200
        shot(it, "24-console-after-two-factor")
        chromium.close()
    finally:
        provider.stop()
        log = gateway.stop() if gateway is not None else ""
    assert "Traceback" not in log, log
