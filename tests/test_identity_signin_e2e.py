"""The sign-in page for real: Debian's Chromium (Playwright) whose proxy is the real gateway,
on a network that requires sign-in, with passwords checked against Debian's slapd.

The device (Chromium, on 127.0.0.1) is known to no identity source: every page, plain HTTP and
intercepted HTTPS, sends it to ``http://schoolgate.internal/sign-in``. A wrong password and a
directory that cannot be reached are refused with their own words; a pupil who signs in meets
the pupil's policy (the roster's group in the decision log); signing out and a session that
lapses return the device to sign-in. The gateway runs in mitmproxy's ``upstream`` mode to a
local origin, as in test_portal_e2e, so nothing leaves loopback.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import playwright.sync_api as sync_api
import pytest
from gateway_process import wait_for
from identity_gateway import UpstreamGateway
from slapd_server import DIRECTORY_PASSWORDS, SERVICE_DN, SERVICE_PASSWORD, SUFFIX, SlapdServer
from test_portal_e2e import BROWSER_ARGS, CHROMIUM, shot, spki_hash

PORTAL = "schoolgate.internal"
SIGN_IN = f"http://{PORTAL}/sign-in"

if not os.path.exists(CHROMIUM):
    pytest.skip("Chromium is not installed (apt-get install chromium)", allow_module_level=True)


def with_sign_in(directory: SlapdServer) -> Callable[[dict, Path], None]:
    def edit(config: dict, folder: Path) -> None:
        config["identity"]["sources"] = ["sign_in"]
        config["identity"]["sign_in"] = {
            "networks": ["127.0.0.0/8"],
            "idle_minutes": 20,
            "directory": {
                "servers": [directory.ldaps_url],
                "ca_file": str(directory.ca_file),
                "bind_dn": SERVICE_DN,
                "bind_password": SERVICE_PASSWORD,
                "user_base": f"ou=people,{SUFFIX}",
                "user_filter": "(uid={user})",
                "timeout_seconds": 2,
                "roles": [
                    {"group": "staff", "role": "staff"},
                    {"group": f"cn=students,ou=groups,{SUFFIX}", "role": "student"},
                ],
            },
        }

    return edit


@pytest.fixture
def gateway(tmp_path: Path, school_directory: SlapdServer):
    running = UpstreamGateway(
        tmp_path, with_sign_in(school_directory), roster="pupil1,student,9B,2012-01-15\n"
    )
    yield running
    running.stop()


def sign_in(page, user: str, password: str) -> None:
    page.fill("#username", user)
    page.fill("#password", password)
    page.click("#sign-in")
    page.wait_for_load_state()


def lapse(gateway: UpstreamGateway, user: str) -> None:
    """The signed-in device's session as it is after ``idle_minutes`` without traffic: its
    renewal and expiry moved back in the database (as the clock would), a change every gateway
    and worker picks up. (The clock itself is not waited for: 20 minutes.)"""
    from sqlalchemy import select

    from schoolgate.storage import bindings as store
    from schoolgate.storage.db import open_database

    sessions = open_database(f"sqlite:///{gateway.data_dir / 'schoolgate.db'}")
    with sessions() as db:
        row = db.scalars(
            select(store.BindingRow).where(
                store.BindingRow.user == user, store.BindingRow.ended_at.is_(None)
            )
        ).one()
        back = timedelta(minutes=21)
        row.started_at -= back
        row.last_seen -= back
        row.expires_at -= back
        row.version = store.next_version(db)
        db.commit()


def test_unknown_device_signs_in_meets_its_policy_signs_out_and_lapses(
    gateway: UpstreamGateway, school_directory: SlapdServer
) -> None:
    # The captive-portal probe every OS makes over plain HTTP is redirected to sign-in.
    probe = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}"]
        + ["-x", gateway.proxy, "http://connectivitycheck.gstatic.com/generate_204"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert probe.stdout.split(" ", 1) == [
        "302",
        f"{SIGN_IN}?next=http%3A%2F%2Fconnectivitycheck.gstatic.com%2Fgenerate_204",
    ], probe.stderr

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=BROWSER_ARGS + [f"--ignore-certificate-errors-spki-list={spki_hash(gateway.ca)}"],
            proxy={"server": gateway.proxy},
        )
        page = browser.new_context(viewport={"width": 1000, "height": 800}).new_page()
        page.set_default_timeout(20000)

        # Plain HTTP and intercepted HTTPS both end on the sign-in page.
        page.goto("http://social.test/feed")
        assert page.url.startswith(f"{SIGN_IN}?next="), page.url
        assert "Sign in to use the internet" in page.content()
        page.goto("https://wiki.test/page")
        assert page.url.startswith(SIGN_IN), page.url
        shot(page, "signin-1-required")

        # A wrong password: refused, with words that do not say which part was wrong.
        sign_in(page, "pupil1", "not the password")
        assert "do not match" in page.inner_text("#sign-in-error")
        page.goto("http://social.test/still")
        assert page.url.startswith(SIGN_IN)

        # The pupil signs in and meets the pupil's policy.
        page.goto(f"{SIGN_IN}?next=http%3A%2F%2Fsocial.test%2Ffeed")
        sign_in(page, "pupil1", DIRECTORY_PASSWORDS["pupil1"][0])
        assert page.inner_text("#signed-in-user") == "pupil1", page.content()
        shot(page, "signin-2-signed-in")
        page.click("#continue")
        page.wait_for_load_state()
        assert page.url == "http://social.test/feed"
        assert "social media" in page.content().lower()  # blocked for students: the block page
        response = page.goto("http://wiki.test/read")
        assert response.status == 200 and "origin GET" in page.content()
        blocks = wait_for(
            lambda: [e for e in gateway.events() if (e["url"] or "").endswith("social.test/feed")],
            20,
        )
        assert blocks and (blocks[-1]["user"], blocks[-1]["group"]) == ("pupil1", "9B")
        assert blocks[-1]["role"] == "student"
        who = json.loads(gateway.cli("who", "pupil1", "--json"))
        assert [(b["address"], b["source"]) for b in who] == [("127.0.0.1", "sign_in")]

        # Signing out returns the device to sign-in at once.
        page.goto(SIGN_IN)
        page.click("#sign-out")
        page.wait_for_load_state()
        assert "You have signed out" in page.content()
        page.goto("http://wiki.test/after-sign-out")
        assert page.url.startswith(SIGN_IN), page.url

        # Staff sign in on the same device: the staff policy (social media allowed).
        sign_in(page, "staff1", DIRECTORY_PASSWORDS["staff1"][0])
        assert page.inner_text("#signed-in-user") == "staff1"
        response = page.goto("http://social.test/staff")
        assert response.status == 200 and "origin GET http://social.test/staff" in page.content()

        # The session lapses (idle): the device is sent to sign in again.
        lapse(gateway, "staff1")
        assert wait_for(lambda: page.goto("http://social.test/lapsed") and SIGN_IN in page.url, 20)
        # The lapse is recorded by the bindings' sweep (every few seconds), which may come just
        # after the device was first sent back to sign in.
        assert wait_for(lambda: "expired" in gateway.cli("who", "staff1", "--history"), 30)
        assert "signed out" in gateway.cli("who", "pupil1", "--history")

        # The directory goes away: nobody signs in, the page says why, and the device is
        # still sent to sign in (never the guest policy).
        school_directory.stop()
        page.goto(SIGN_IN)
        sign_in(page, "pupil1", DIRECTORY_PASSWORDS["pupil1"][0])
        assert "directory cannot be reached" in page.inner_text("#sign-in-error")
        shot(page, "signin-3-directory-down")
        page.goto("http://wiki.test/directory-down")
        assert page.url.startswith(SIGN_IN)
        browser.close()
