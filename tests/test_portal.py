"""The portal with Flask's test client: every audience, every action and every refusal."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from policy_fixtures import today_for

from schoolgate.core.config import load_policy
from schoolgate.core.model import RequestFacts
from schoolgate.gateway.blockpage import sign_ref
from schoolgate.portal.app import SltRequired, create_app, make_identify
from schoolgate.portal.auth import add_staff, hash_password, set_password, verify_password
from schoolgate.storage.db import open_database
from schoolgate.storage.exceptions import exceptions_current
from schoolgate.storage.models import AuditRow, EventRow, ExceptionRow, PortalRequestRow, StaffRow

SECRET = b"s" * 32
PASSWORD = "correct horse battery"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
STUDENT_IP = "10.20.0.7"
STAFF_IP = "10.10.0.9"


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs) -> None:
        self.now += timedelta(**kwargs)


class Ticker:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Portal:
    """The app, its database and helpers for one test."""

    def __init__(self, tmp_path: Path, gateway_config: Path, **options) -> None:
        data = yaml.safe_load(gateway_config.read_text())
        data["categories"]["social_media"]["teachers_may_open"] = True
        data["categories"]["illegal"] = {"locked": True, "entries": ["bad.test"]}
        data["identity"]["networks"].append({"cidr": "10.10.0.0/16", "role": "staff"})
        gateway_config.write_text(yaml.safe_dump(data))
        roster = gateway_config.parent / "roster.csv"
        roster.write_text(roster.read_text() + "cara,student,9C,2012-02-20\n")
        self.config = gateway_config
        self.data_dir = tmp_path / "var"
        self.policy = load_policy(gateway_config, data_dir=self.data_dir)
        self.sessions = open_database(self.policy.settings.database_url)
        self.clock = Clock()
        self.ticker = Ticker()
        self.app = create_app(
            policy_getter=lambda: self.policy,
            session_factory=self.sessions,
            secret=SECRET,
            data_dir=self.data_dir,
            identify=make_identify(lambda: self.policy),
            clock=self.clock,
            monotonic=self.ticker,
            start_sender=False,
            **options,
        )
        self.app.testing = True
        with self.sessions() as s:
            add_staff(
                s,
                username="alice",
                password=PASSWORD,
                roles=["it_support"],
                email="alice@school.test",
            )
            add_staff(s, username="sam", password=PASSWORD, roles=["slt"], email="sam@school.test")
            add_staff(s, username="tina", password=PASSWORD, roles=["teacher"], groups=["9B"])
            add_staff(s, username="nina", password=PASSWORD, roles=["network_manager"])
            s.commit()

    def client(self, ip: str = STUDENT_IP, user: str | None = None):
        client = self.app.test_client()
        client.environ_base["REMOTE_ADDR"] = ip
        if user:
            client.environ_base["HTTP_X_SCHOOLGATE_USER"] = user
        return client

    def staff(self, username: str):
        client = self.client(STAFF_IP)
        token = csrf(client, "/staff/login")
        answer = client.post(
            "/staff/login", data={"username": username, "password": PASSWORD, "csrf_token": token}
        )
        assert answer.status_code == 303, answer.text
        return client

    def event(self, ref: str = "abc123", url: str = "http://social.test/page", **fields) -> str:
        with self.sessions() as s:
            values = dict(
                ref=ref,
                at=self.clock(),
                kind="block",
                action="block",
                client_ip=STUDENT_IP,
                user="ben",
                role="student",
                group="9B",
                site="main",
                host="social.test",
                url=url,
                category="social_media",
                window="lesson",
                window_name="All day",
                rule="rules[0]",
                reason="social_media is blocked for student in lesson.",
            )
            values.update(fields)
            s.add(EventRow(**values))
            s.commit()
        return sign_ref(SECRET, ref)

    def rows(self) -> list[PortalRequestRow]:
        with self.sessions() as s:
            return list(s.query(PortalRequestRow).order_by(PortalRequestRow.id))

    def row(self, ref: str) -> PortalRequestRow:
        with self.sessions() as s:
            return s.query(PortalRequestRow).filter_by(ref=ref).one()

    def audit(self) -> list[tuple[str, str, str]]:
        with self.sessions() as s:
            return [(a.actor, a.action, a.subject) for a in s.query(AuditRow).order_by(AuditRow.id)]

    def exceptions(self) -> list[ExceptionRow]:
        with self.sessions() as s:
            return list(s.query(ExceptionRow).order_by(ExceptionRow.id))

    def ask(self, user: str | None = "ben", ip: str = STUDENT_IP, **form) -> str:
        """A student's access request from the block page; returns its reference."""
        client = self.client(ip, user)
        signed = form.pop("ref", None)
        if signed is None:
            signed = self.event(ref=f"ev{len(self.rows())}", user=user)
        token = csrf(client, "/request?url=http://social.test/page&ref=" + signed)
        data = {
            "csrf_token": token,
            "ref": signed,
            "url": "http://social.test/page",
            "purpose": "curriculum",
            "message": "Geography homework",
        }
        data.update(form)
        answer = client.post("/request", data=data)
        assert answer.status_code == 303, answer.text
        return answer.headers["Location"].split("/")[2]

    def report(self, client=None, **form) -> str:
        client = client or self.client(user="ben")
        token = csrf(client, "/report?url=http://nasty.test/x")
        data = {"csrf_token": token, "url": "http://nasty.test/x", "message": "Horrible pictures"}
        data.update(form)
        answer = client.post("/report", data=data, content_type="multipart/form-data")
        assert answer.status_code == 303, answer.text
        return answer.headers["Location"].split("/")[2]


def csrf(client, path: str) -> str:
    page = client.get(path)
    assert page.status_code == 200, page.text
    return re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)


def post(client, page: str, action: str, **form):
    """Post a form found on ``page`` (so the CSRF token is the real one)."""
    form.setdefault("csrf_token", csrf(client, page))
    return client.post(action, data=form)


def item_id(portal: Portal, ref: str) -> int:
    return portal.row(ref).id


@pytest.fixture
def portal(tmp_path, gateway_config) -> Portal:
    return Portal(tmp_path, gateway_config)


# -- passwords and accounts --------------------------------------------------------------------


def test_passwords_are_scrypt_hashed_and_verified():
    stored = hash_password("a long password")
    assert stored.startswith("scrypt$") and "a long password" not in stored
    assert verify_password("a long password", stored)
    assert not verify_password("a long passworD", stored)
    assert not verify_password("x", "bcrypt$nonsense")


# -- requesting access -------------------------------------------------------------------------


def test_request_form_is_filled_from_the_block_page_link(portal):
    signed = portal.event()
    page = portal.client(user="ben").get(
        f"/request?url=http://social.test/page&category=social_media&ref={signed}"
    )
    assert page.status_code == 200
    assert "http://social.test/page" in page.text and "social media" in page.text
    assert "abc123" in page.text  # the verified block reference is shown


def test_a_request_is_stored_with_the_gateways_identity_and_the_logged_decision(portal):
    signed = portal.event(url="http://chat.social.test/room")
    client = portal.client(user="ben")
    token = csrf(client, "/request?ref=" + signed)
    answer = client.post(
        "/request",
        data={
            "csrf_token": token,
            "ref": signed,
            "url": "http://elsewhere.test/",  # ignored: the logged decision is the evidence
            "purpose": "erroneous",
            "message": "It is a school club page",
            "requester_user": "headteacher",  # no such field: identity is never from a form
        },
    )
    assert answer.status_code == 303
    status_path = answer.headers["Location"]
    (row,) = portal.rows()
    assert (row.kind, row.status, row.requester_user, row.requester_group) == (
        "access",
        "open",
        "ben",
        "9B",
    )
    assert row.client_ip == STUDENT_IP and row.requester_role == "student"
    assert row.url == "http://chat.social.test/room" and row.host == "chat.social.test"
    assert row.category == "social_media" and row.event_ref == "abc123"
    assert ("ben", "request.create", f"request {row.ref}") in portal.audit()
    status = portal.client().get(status_path)
    assert status.status_code == 200 and row.ref in status.text and "open" in status.text
    assert portal.client().get(f"/status/{row.ref}/wrongtoken").status_code == 404
    mine = portal.client(user="ben").get("/mine")
    assert row.ref in mine.text
    assert row.ref not in portal.client(user="cara").get("/mine").text


def test_a_forged_reference_links_no_decision(portal):
    portal.event()
    ref = portal.ask(ref="abc123.forgedmac")
    assert portal.row(ref).event_ref is None
    assert portal.row(ref).category == "social_media"  # from the policy, not the form


def test_a_request_without_csrf_token_is_refused(portal):
    client = portal.client(user="ben")
    client.get("/request")
    answer = client.post(
        "/request", data={"url": "http://social.test/", "purpose": "other", "message": "x"}
    )
    assert answer.status_code == 400
    answer = client.post(
        "/request",
        data={
            "url": "http://social.test/",
            "purpose": "other",
            "message": "x",
            "csrf_token": "guessed",
        },
    )
    assert answer.status_code == 400
    assert portal.rows() == []


def test_incomplete_requests_and_locked_sites_are_refused(portal):
    client = portal.client(user="ben")
    token = csrf(client, "/request")
    answer = client.post(
        "/request",
        data={
            "csrf_token": token,
            "url": "http://social.test/",
            "purpose": "curriculum",
            "message": "",
        },
    )
    assert answer.status_code == 400 and "Say what you need" in answer.text
    answer = client.post(
        "/request",
        data={
            "csrf_token": token,
            "url": "not a url at all",
            "purpose": "curriculum",
            "message": "x",
        },
    )
    assert answer.status_code == 400
    answer = client.post(
        "/request",
        data={
            "csrf_token": token,
            "url": "http://www.bad.test/",
            "purpose": "erroneous",
            "message": "please",
        },
    )
    assert answer.status_code == 400 and "no one can open it" in answer.text
    assert portal.rows() == []


def test_submissions_are_rate_limited(tmp_path, gateway_config):
    portal = Portal(tmp_path, gateway_config, submit_limit=(2, 600.0))
    portal.ask()
    portal.ask()
    client = portal.client(user="ben")
    token = csrf(client, "/request")
    answer = client.post(
        "/request",
        data={
            "csrf_token": token,
            "url": "http://social.test/",
            "purpose": "curriculum",
            "message": "third",
        },
    )
    assert answer.status_code == 429
    assert len(portal.rows()) == 2
    portal.ticker.now += 601
    portal.ask()
    assert len(portal.rows()) == 3


def test_user_text_is_escaped_everywhere(portal):
    ref = portal.ask(message="<script>alert(1)</script>")
    page = portal.staff("alice").get(f"/it/item/{item_id(portal, ref)}")
    assert "<script>alert(1)" not in page.text and "&lt;script&gt;alert(1)" in page.text
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]


# -- reporting content -------------------------------------------------------------------------


def test_a_report_keeps_url_time_and_screenshot_for_staff_only(portal):
    import io

    ref = portal.report(screenshot=(io.BytesIO(PNG), "shot.html", "text/html"))
    row = portal.row(ref)
    assert (row.kind, row.url, row.host, row.requester_user) == (
        "report",
        "http://nasty.test/x",
        "nasty.test",
        "ben",
    )
    assert row.screenshot_type == "image/png" and row.created_at is not None
    path = f"/it/item/{row.id}/screenshot"
    assert portal.client(user="ben").get(path).status_code == 302  # to the sign-in page
    assert portal.staff("tina").get(path).status_code == 403
    answer = portal.staff("alice").get(path)
    assert answer.status_code == 200 and answer.data == PNG
    assert answer.headers["Content-Type"] == "image/png"
    assert answer.headers["Content-Disposition"].startswith("attachment")
    assert answer.headers["X-Content-Type-Options"] == "nosniff"


def test_screenshots_must_be_small_images(tmp_path, gateway_config):
    import io

    portal = Portal(tmp_path, gateway_config, max_upload_bytes=1000)
    client = portal.client(user="ben")
    token = csrf(client, "/report")
    base = {"csrf_token": token, "url": "http://nasty.test/", "message": "bad"}
    html = io.BytesIO(b"<html><script>alert(1)</script></html>")
    answer = client.post(
        "/report",
        data={**base, "screenshot": (html, "x.png", "image/png")},
        content_type="multipart/form-data",
    )
    assert answer.status_code == 400 and "must be a PNG" in answer.text
    big = io.BytesIO(PNG + b"\x00" * 2000)
    answer = client.post(
        "/report",
        data={**base, "screenshot": (big, "x.png", "image/png")},
        content_type="multipart/form-data",
    )
    assert answer.status_code == 413
    assert portal.rows() == []


# -- staff sign-in and sessions ----------------------------------------------------------------


def sign_in_status(client, username: str, password: str = PASSWORD) -> int:
    token = csrf(client, "/staff/login")
    answer = client.post(
        "/staff/login", data={"username": username, "password": password, "csrf_token": token}
    )
    return answer.status_code


def test_sign_in_needs_the_right_password_and_is_rate_limited(portal):
    # A pupil (ben, on a pupils' address) guesses IT Support's password.
    pupil = portal.client(STUDENT_IP, "ben")
    for _ in range(5):
        assert sign_in_status(pupil, "alice", "wrong") == 401
    assert sign_in_status(pupil, "alice") == 429  # even the right password, from there
    assert ("alice", "staff.login_failed", "portal") in portal.audit()
    # The account is locked for every pupils' address (the count is in the database) ...
    assert sign_in_status(portal.client("10.20.0.8"), "alice") == 429
    # ... but not from the staff network.
    assert sign_in_status(portal.client(STAFF_IP), "alice") == 303
    # After the window, the pupil's device may try again.
    portal.clock.advance(seconds=901)
    assert sign_in_status(pupil, "alice") == 303


def test_sign_in_is_limited_per_address_whatever_the_account(portal):
    device = portal.client("10.20.0.9")
    for name in ("a1", "a2", "a3", "sam", "a5"):
        assert sign_in_status(device, name, "wrong") == 401
    assert sign_in_status(device, "nina") == 429  # no failure for nina: the address is out
    assert sign_in_status(portal.client(STAFF_IP), "sam") == 303
    # Another app on the same database (another worker or gateway) refuses it too.
    other = create_app(
        policy_getter=lambda: portal.policy,
        session_factory=portal.sessions,
        secret=SECRET,
        data_dir=portal.data_dir,
        identify=make_identify(lambda: portal.policy),
        clock=portal.clock,
        start_sender=False,
    )
    client = other.test_client()
    client.environ_base["REMOTE_ADDR"] = "10.20.0.9"
    assert sign_in_status(client, "nina") == 429


def test_sign_in_without_csrf_is_refused_and_next_must_be_local(portal):
    client = portal.client(STAFF_IP)
    client.get("/staff/login")
    answer = client.post("/staff/login", data={"username": "alice", "password": PASSWORD})
    assert answer.status_code == 400
    token = csrf(client, "/staff/login")
    answer = client.post(
        "/staff/login",
        data={
            "username": "alice",
            "password": PASSWORD,
            "csrf_token": token,
            "next": "//evil.test/x",
        },
    )
    assert answer.headers["Location"] == "/staff/"


def test_sessions_expire_when_idle_and_after_a_password_change(portal):
    ref = portal.ask()
    client = portal.staff("alice")
    page = f"/it/item/{item_id(portal, ref)}"
    token = csrf(client, page)
    assert client.get("/it/").status_code == 200
    portal.clock.advance(minutes=31)
    answer = client.get("/it/")
    assert answer.status_code == 302 and "expired=1" in answer.headers["Location"]
    answer = client.post(f"{page}/reject", data={"csrf_token": token, "reason": "no"})
    assert answer.status_code == 403
    assert portal.row(ref).status == "open"

    client = portal.staff("alice")
    assert client.get("/it/").status_code == 200
    with portal.sessions() as s:
        set_password(s, "alice", "a brand new password")
        s.commit()
    assert client.get("/it/").status_code == 302


def test_sessions_end_after_the_maximum_even_when_busy(portal):
    client = portal.staff("alice")
    for _ in range(21):
        portal.clock.advance(minutes=29)
        client.get("/it/")
    assert client.get("/it/").status_code == 302


def test_sign_out(portal):
    client = portal.staff("alice")
    copy = portal.client(STAFF_IP)
    cookie = client.get_cookie("schoolgate_portal")
    copy.set_cookie("schoolgate_portal", cookie.value)
    assert copy.get("/it/").status_code == 200  # a copied cookie works while signed in
    answer = post(client, "/staff/", "/staff/logout")
    assert answer.status_code == 303
    assert client.get("/it/").status_code == 302
    assert copy.get("/it/").status_code == 302  # and not once signed out: ended on the server
    assert ("alice", "staff.logout", "portal") in portal.audit()


def test_a_new_password_ends_every_session(portal):
    client = portal.staff("alice")
    with portal.sessions() as s:
        set_password(s, "alice", "a brand new password")
        s.commit()
    answer = client.get("/it/")
    assert answer.status_code == 302 and "expired=1" in answer.headers["Location"]


def test_cookies_are_strict_and_secure_over_https_with_hsts(portal):
    client = portal.client(STAFF_IP)
    answer = client.get("/staff/login", base_url="https://schoolgate.internal")
    cookie = answer.headers["Set-Cookie"]
    assert "; Secure" in cookie and "; HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert answer.headers["Strict-Transport-Security"] == "max-age=31536000"
    answer = portal.client(STAFF_IP).get("/staff/login")  # plain HTTP
    cookie = answer.headers["Set-Cookie"]
    assert "Secure" not in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Strict-Transport-Security" not in answer.headers


# -- IT Support --------------------------------------------------------------------------------


def test_the_queue_is_for_reviewers_oldest_first_and_filterable(portal):
    first = portal.ask()
    portal.clock.advance(minutes=5)
    report = portal.report()
    portal.clock.advance(minutes=5)
    last = portal.ask(user="cara", message="Science")
    assert portal.client().get("/it/").status_code == 302
    assert portal.staff("tina").get("/it/").status_code == 403
    page = portal.staff("alice").get("/it/").text
    assert page.index(first) < page.index(report) < page.index(last)
    page = portal.staff("alice").get("/it/?kind=report").text
    assert report in page and first not in page
    page = portal.staff("nina").get("/it/?q=cara").text
    assert last in page and first not in page


def test_the_item_shows_the_logged_decision_and_recent_events(portal):
    ref = portal.ask()
    portal.event(
        ref="circ1",
        kind="circumvention",
        action="block",
        host="vpn.test",
        reason="VPN client detected",
    )
    page = portal.staff("alice").get(f"/it/item/{item_id(portal, ref)}").text
    assert "social_media is blocked for student in lesson." in page
    assert "vpn.test" in page and "VPN client detected" in page


def test_it_support_approves_for_the_user_for_a_week(portal):
    ref = portal.ask()
    client = portal.staff("alice")
    page = f"/it/item/{item_id(portal, ref)}"
    answer = post(
        client,
        page,
        f"{page}/approve",
        scope="user",
        scope_value="ben",
        target_kind="host",
        target="social.test",
        duration="7d",
        note="homework",
    )
    assert answer.status_code == 303
    row = portal.row(ref)
    assert row.status == "approved" and row.decided_by == "alice"
    (exc,) = portal.exceptions()
    assert (exc.scope, exc.scope_value, exc.target, exc.created_by) == (
        "user",
        "ben",
        "social.test",
        "alice",
    )
    assert exc.ends - portal.clock() == timedelta(days=7)
    actions = [a[1] for a in portal.audit()]
    assert "exception.add" in actions and "request.approve" in actions
    # the gateway now lets ben in
    with portal.sessions() as s:
        current = exceptions_current(s, datetime.now(UTC))
    facts = RequestFacts(host="social.test", at=datetime.now(UTC), client_ip=STUDENT_IP, user="ben")
    assert portal.policy.decide(facts, current).allowed
    assert "Approved" in portal.client().get(f"/status/{row.ref}/{row.token}").text
    # decided once only
    answer = post(client, page, f"{page}/reject", reason="changed my mind")
    assert answer.status_code == 400


def test_nobody_decides_their_own_request(portal):
    ref = portal.ask(user="alice", ip=STAFF_IP)
    client = portal.staff("alice")
    page = f"/it/item/{item_id(portal, ref)}"
    assert "your own request" in client.get(page).text
    token = csrf(client, page)
    for action, form in (
        (
            "approve",
            {
                "scope": "user",
                "scope_value": "alice",
                "target_kind": "host",
                "target": "social.test",
                "duration": "7d",
            },
        ),
        ("reject", {"reason": "no"}),
        ("escalate", {"note": "hmm"}),
        ("unlist", {}),
    ):
        answer = client.post(f"{page}/{action}", data={"csrf_token": token, **form})
        assert answer.status_code == 403, action
        assert "cannot decide your own request" in answer.text, action
    assert portal.row(ref).status == "open" and portal.exceptions() == []


def test_wider_or_longer_exceptions_wait_for_slt(portal):
    ref = portal.ask()
    client = portal.staff("alice")
    page = f"/it/item/{item_id(portal, ref)}"
    answer = post(
        client,
        page,
        f"{page}/approve",
        scope="role",
        scope_value="student",
        target_kind="host",
        target="social.test",
        duration="7d",
    )
    assert answer.status_code == 303
    assert portal.row(ref).status == "awaiting_slt" and portal.exceptions() == []
    # IT Support cannot now approve or reject it themselves
    assert (
        post(
            client,
            page,
            f"{page}/approve",
            scope="user",
            scope_value="ben",
            target_kind="host",
            target="social.test",
            duration="7d",
        ).status_code
        == 400
    )
    assert post(client, page, f"{page}/reject", reason="x").status_code == 403
    assert (
        post(client, page, f"/slt/item/{item_id(portal, ref)}/approve-proposal").status_code == 403
    )
    slt = portal.staff("sam")
    assert ref in slt.get("/slt/").text
    answer = post(slt, page, f"/slt/item/{item_id(portal, ref)}/approve-proposal", note="fine")
    assert answer.status_code == 303
    (exc,) = portal.exceptions()
    assert (exc.scope, exc.scope_value) == ("role", "student")
    assert exc.created_by == "alice, approved by sam"
    assert portal.row(ref).status == "approved"
    assert ("sam", "request.slt_approve", f"request {ref}") in portal.audit()

    ref = portal.ask()
    page = f"/it/item/{item_id(portal, ref)}"
    post(
        client,
        page,
        f"{page}/approve",
        scope="user",
        scope_value="ben",
        target_kind="host",
        target="social.test",
        duration="permanent",
    )
    assert portal.row(ref).status == "awaiting_slt"


def test_a_config_cannot_let_it_support_unlist_alone(gateway_config, tmp_path):
    data = yaml.safe_load(gateway_config.read_text())
    data["portal"]["slt_required"] = {"scopes": ["everyone"], "unlist": False}
    gateway_config.write_text(yaml.safe_dump(data))
    policy = load_policy(gateway_config, data_dir=tmp_path / "var")
    (warning,) = [w for w in policy.warnings if "unlist" in w]
    assert "portal.slt_required.unlist" in warning and "ignored" in warning
    slt = policy.settings.portal.slt_required  # the scopes as given, nothing of 'unlist'
    assert slt == SltRequired(scopes=("everyone",), longer_than_days=91)
    assert slt.reason(scope="user", ends=None, now=datetime.now(UTC), kind="unlist")
    data["portal"]["slt_required"]["unlist"] = True
    gateway_config.write_text(yaml.safe_dump(data))
    assert not load_policy(gateway_config, data_dir=tmp_path / "var").warnings


def test_slt_limits_are_configurable(tmp_path, gateway_config):
    portal = Portal(
        tmp_path, gateway_config, slt_required={"scopes": ["everyone"], "longer_than_days": None}
    )
    ref = portal.ask()
    client = portal.staff("alice")
    page = f"/it/item/{item_id(portal, ref)}"
    post(
        client,
        page,
        f"{page}/approve",
        scope="role",
        scope_value="student",
        target_kind="host",
        target="social.test",
        duration="permanent",
    )
    assert portal.row(ref).status == "approved"
    # Un-listing and categorising need SLT, whatever the limits say.
    relaxed = SltRequired(scopes=(), longer_than_days=None)
    for kind in ("unlist", "categorise"):
        assert relaxed.reason(scope="everyone", ends=None, now=portal.clock(), kind=kind)


def test_unlisting_is_the_requests_own_host_for_everyone_once_slt_approve(portal):
    ref = portal.ask(purpose="erroneous")
    client = portal.staff("alice")
    page = f"/it/item/{item_id(portal, ref)}"
    # The form cannot name another site than the request's (social.test).
    for other in ("chat.social.test", "google.com", "test"):
        answer = post(client, page, f"{page}/unlist", host=other, note="a school club")
        assert answer.status_code == 400, other
    assert portal.exceptions() == []
    # IT Support alone only propose it.
    answer = post(client, page, f"{page}/unlist", note="a school club")
    assert answer.status_code == 303
    assert portal.exceptions() == [] and portal.row(ref).status == "awaiting_slt"
    assert ("alice", "request.propose", f"request {ref}") in portal.audit()
    # SLT approve; nobody approves their own proposal.
    assert (
        post(client, page, f"/slt/item/{item_id(portal, ref)}/approve-proposal").status_code == 403
    )
    answer = post(portal.staff("sam"), page, f"/slt/item/{item_id(portal, ref)}/approve-proposal")
    assert answer.status_code == 303
    (exc,) = portal.exceptions()
    assert (exc.kind, exc.scope, exc.target_kind, exc.target, exc.ends) == (
        "unlist",
        "everyone",
        "host",
        "social.test",
        None,
    )
    assert exc.created_by == "alice, approved by sam"
    # A member of SLT un-lists directly (the same form, from a request of its own).
    ref = portal.ask(purpose="erroneous")
    page = f"/it/item/{item_id(portal, ref)}"
    assert post(portal.staff("sam"), page, f"{page}/unlist", host="social.test").status_code == 303
    assert portal.row(ref).status == "approved"


def test_unlisting_needs_a_listed_host(portal):
    """(A request for a host in a locked category cannot even be made.)"""
    client = portal.staff("sam")
    url = "http://nowhere.test/"
    ref = portal.ask(ref=portal.event(ref="ev-nowhere", url=url, host="nowhere.test"), url=url)
    page = f"/it/item/{item_id(portal, ref)}"
    answer = post(client, page, f"{page}/unlist")
    assert answer.status_code == 400 and "nothing to un-list" in answer.text
    assert portal.exceptions() == []


def test_reject_needs_a_reason_that_the_requester_sees(portal):
    ref = portal.ask()
    client = portal.staff("alice")
    page = f"/it/item/{item_id(portal, ref)}"
    assert post(client, page, f"{page}/reject", reason=" ").status_code == 400
    assert (
        post(client, page, f"{page}/reject", reason="Use the school's video library").status_code
        == 303
    )
    row = portal.row(ref)
    assert row.status == "rejected"
    assert (
        "school&#39;s video library" in portal.client().get(f"/status/{row.ref}/{row.token}").text
    )
    assert ("alice", "access.reject", f"access {ref}") in portal.audit()


def test_escalated_requests_are_for_slt(portal):
    ref = portal.ask()
    it = portal.staff("alice")
    page = f"/it/item/{item_id(portal, ref)}"
    assert post(it, page, f"{page}/escalate", note="").status_code == 400
    assert post(it, page, f"{page}/escalate", note="Whole-year access?").status_code == 303
    assert portal.row(ref).status == "escalated"
    assert (
        post(
            it,
            page,
            f"{page}/approve",
            scope="user",
            scope_value="ben",
            target_kind="host",
            target="social.test",
            duration="7d",
        ).status_code
        == 403
    )
    assert portal.staff("tina").get("/slt/").status_code == 403
    assert portal.staff("alice").get("/slt/").status_code == 403
    slt = portal.staff("sam")
    assert "Whole-year access?" in slt.get("/slt/").text
    answer = post(
        slt,
        page,
        f"{page}/approve",
        scope="group",
        scope_value="9B",
        target_kind="category",
        target="social_media",
        duration="28d",
    )
    assert answer.status_code == 303
    assert portal.row(ref).status == "approved"
    assert portal.exceptions()[0].created_by == "sam"


def test_slt_refuses_with_a_reason(portal):
    ref = portal.ask()
    page = f"/it/item/{item_id(portal, ref)}"
    post(portal.staff("alice"), page, f"{page}/escalate", note="?")
    slt = portal.staff("sam")
    assert post(slt, page, f"{page}/reject", reason="Not appropriate").status_code == 303
    assert portal.row(ref).outcome == "Not approved: Not appropriate"


def test_slt_ends_or_confirms_standing_exceptions(portal):
    ref = portal.ask()
    page = f"/it/item/{item_id(portal, ref)}"
    post(
        portal.staff("alice"),
        page,
        f"{page}/approve",
        scope="user",
        scope_value="ben",
        target_kind="host",
        target="social.test",
        duration="7d",
    )
    (exc,) = portal.exceptions()
    slt = portal.staff("sam")
    assert "social.test" in slt.get("/slt/").text
    assert post(slt, "/slt/", f"/slt/exception/{exc.id}/confirm", reason="ok").status_code == 303
    assert ("sam", "exception.confirm", f"exception #{exc.id}") in portal.audit()
    assert post(slt, "/slt/", f"/slt/exception/{exc.id}/revoke", reason="").status_code == 400
    assert (
        post(
            portal.staff("alice"), "/it/", f"/slt/exception/{exc.id}/revoke", reason="x"
        ).status_code
        == 403
    )
    assert (
        post(slt, "/slt/", f"/slt/exception/{exc.id}/revoke", reason="term ended").status_code
        == 303
    )
    assert portal.exceptions()[0].revoked_by == "sam"


def test_a_report_adds_its_site_to_a_category_file_once_slt_approve(portal):
    ref = portal.report()
    client = portal.staff("alice")
    page = f"/it/item/{item_id(portal, ref)}"
    listed = portal.config.parent / "blocklists" / "local" / "social_media.txt"

    def add(staff_client, entry: str, category: str = "social_media") -> int:
        return post(
            staff_client, page, f"{page}/add-to-category", category=category, entry=entry
        ).status_code

    assert add(client, "nasty.test\nevil.test") == 400
    assert add(client, "nasty.test", category="nope") == 400
    # Only the report's own site (or a page on it): not another one, nor its parent domain.
    assert add(client, "google.com") == 400
    assert add(client, "test") == 400
    assert add(client, "www.nasty.test") == 400
    assert not listed.exists()
    # IT Support propose; nothing is written until SLT approve.
    assert add(client, "https://Nasty.test/") == 303
    assert portal.row(ref).status == "awaiting_slt" and not listed.exists()
    assert ("alice", "report.propose", f"report {ref}") in portal.audit()
    slt = portal.staff("sam")
    answer = post(slt, page, f"/slt/item/{item_id(portal, ref)}/approve-proposal")
    assert answer.status_code == 303
    lines = listed.read_text().splitlines()
    assert lines[0].startswith("# added by alice, approved by sam at ")
    assert lines[0].endswith(f"report {ref}")
    assert lines[1] == "nasty.test"
    assert portal.row(ref).status == "actioned"
    assert ("sam", "report.slt_approve", f"report {ref}") in portal.audit()
    # A member of SLT adds a page of the reported site directly.
    other = portal.report()
    other_page = f"/it/item/{item_id(portal, other)}"
    answer = post(
        slt,
        other_page,
        f"{other_page}/add-to-category",
        category="social_media",
        entry="nasty.test/x",
    )
    assert answer.status_code == 303
    assert listed.read_text().splitlines()[-1] == "nasty.test/x"
    assert portal.row(other).status == "actioned"
    # Teachers cannot; a request is not a report
    assert (
        post(
            portal.staff("tina"),
            "/teacher/",
            f"{other_page}/add-to-category",
            category="social_media",
            entry="nasty.test",
        ).status_code
        == 403
    )
    access = portal.ask()
    p = f"/it/item/{item_id(portal, access)}"
    assert (
        post(client, p, f"{p}/add-to-category", category="social_media", entry="x.test").status_code
        == 400
    )


def test_reports_cannot_be_approved_as_exceptions(portal):
    ref = portal.report()
    page = f"/it/item/{item_id(portal, ref)}"
    answer = post(
        portal.staff("alice"),
        page,
        f"{page}/approve",
        scope="user",
        scope_value="ben",
        target_kind="host",
        target="nasty.test",
        duration="7d",
    )
    assert answer.status_code == 400


# -- teachers ----------------------------------------------------------------------------------


def test_a_teacher_opens_a_category_for_their_class_until_the_end_of_the_lesson(portal):
    client = portal.staff("tina")
    assert "9B" in client.get("/teacher/").text
    answer = post(
        client,
        "/teacher/",
        "/teacher/open",
        group="9B",
        target_kind="category",
        category="social_media",
        until="lesson",
        reason="Media studies",
    )
    assert answer.status_code == 303
    (exc,) = portal.exceptions()
    window = portal.policy.window("main", portal.clock())
    assert (exc.kind, exc.scope, exc.scope_value, exc.target, exc.ends) == (
        "curriculum",
        "group",
        "9B",
        "social_media",
        window.end,
    )
    with portal.sessions() as s:
        current = exceptions_current(s, datetime.now(UTC))
    facts = RequestFacts(host="social.test", at=datetime.now(UTC), client_ip=STUDENT_IP, user="ben")
    decision = portal.policy.decide(facts, current)
    assert (
        decision.allowed and "curriculum" in decision.reason and "Media studies" in decision.reason
    )
    cara = RequestFacts(host="social.test", at=datetime.now(UTC), client_ip=STUDENT_IP, user="cara")
    assert not portal.policy.decide(cara, current).allowed
    # end it early
    answer = post(client, "/teacher/", f"/teacher/end/{exc.id}")
    assert answer.status_code == 303
    assert portal.exceptions()[0].revoked_by == "tina"


def test_a_teacher_opens_a_host_until_a_time(portal):
    client = portal.staff("tina")
    end = (today_for(timedelta(minutes=2)) + timedelta(minutes=2)).strftime("%H:%M")
    answer = post(
        client,
        "/teacher/",
        "/teacher/open",
        group="9b",
        target_kind="host",
        host="chat.social.test",
        until=end,
    )
    assert answer.status_code == 303
    (exc,) = portal.exceptions()
    assert exc.target_kind == "host" and exc.target == "chat.social.test"
    assert exc.ends.strftime("%H:%M") == end


def test_teachers_are_limited_to_their_groups_and_open_categories(portal):
    client = portal.staff("tina")
    checks = [
        ({"group": "9C", "target_kind": "category", "category": "social_media"}, 403),
        ({"group": "9B", "target_kind": "category", "category": "wikipedia"}, 403),
        ({"group": "9B", "target_kind": "category", "category": "illegal"}, 403),
        ({"group": "9B", "target_kind": "host", "host": "wiki.test"}, 403),
        ({"group": "9B", "target_kind": "host", "host": "unlisted.test"}, 400),
        (
            {
                "group": "9B",
                "target_kind": "category",
                "category": "social_media",
                "until": "00:00",
            },
            400,
        ),
    ]
    for form, code in checks:
        form.setdefault("until", "lesson")
        assert post(client, "/teacher/", "/teacher/open", **form).status_code == code, form
    assert portal.exceptions() == []
    assert portal.staff("alice").get("/teacher/").status_code == 403
    # another teacher's override cannot be ended by someone else
    post(
        client,
        "/teacher/",
        "/teacher/open",
        group="9B",
        target_kind="category",
        category="social_media",
        until="lesson",
    )
    with portal.sessions() as s:
        add_staff(s, username="tom", password=PASSWORD, roles=["teacher"], groups=["9B"])
        s.commit()
    exc = portal.exceptions()[0]
    assert post(portal.staff("tom"), "/teacher/", f"/teacher/end/{exc.id}").status_code == 403


def test_a_teacher_form_without_csrf_is_refused(portal):
    client = portal.staff("tina")
    answer = client.post(
        "/teacher/open",
        data={
            "group": "9B",
            "target_kind": "category",
            "category": "social_media",
            "until": "lesson",
        },
    )
    assert answer.status_code == 400
    assert portal.exceptions() == []


# -- the staff command -------------------------------------------------------------------------


def test_staff_command_adds_lists_and_changes_passwords(portal, capsys, monkeypatch):
    import io

    import schoolgate.cli.staff as commands
    from schoolgate.cli.common import add_common_options as _common

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    commands.register(sub, _common)

    def run(*argv: str, stdin: str = "") -> int:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        args = parser.parse_args(
            [*argv, "--config", str(portal.config), "--data-dir", str(portal.data_dir)]
        )
        return args.handler(args)

    assert (
        run(
            "staff",
            "add",
            "mrs.khan",
            "--role",
            "teacher",
            "--group",
            "9B",
            "--group",
            "10C",
            "--email",
            "khan@school.test",
            "--password-stdin",
            stdin="a good long password\n",
        )
        == 0
    )
    assert (
        run(
            "staff",
            "add",
            "mrs.khan",
            "--role",
            "teacher",
            "--password-stdin",
            stdin="a good long password\n",
        )
        == 1
    )
    with pytest.raises(SystemExit):  # argparse knows the roles
        run("staff", "add", "x", "--role", "wizard", "--password-stdin", stdin="long password!\n")
    assert run("staff", "add", "y", "--role", "slt", "--password-stdin", stdin="short\n") == 1
    capsys.readouterr()
    assert run("staff", "list") == 0
    out = capsys.readouterr().out
    assert "mrs.khan" in out and "teacher" in out and "9B,10C" in out
    assert (
        run("staff", "passwd", "mrs.khan", "--password-stdin", stdin="another long password\n") == 0
    )
    with portal.sessions() as s:
        row = s.query(StaffRow).filter_by(username="mrs.khan").one()
        assert verify_password("another long password", row.password_hash)
    assert run("staff", "list", "--json") == 0
    assert '"username": "mrs.khan"' in capsys.readouterr().out


# -- mounted in mitmproxy ----------------------------------------------------------------------


def test_the_app_answers_through_mitmproxys_wsgi_adapter(portal):
    """How the gateway mounts it: ``asgiapp.WSGIApp(app, portal_host, None)``; the client's
    address and the gateway's X-Schoolgate-User header identify the requester."""
    import asyncio

    from mitmproxy.addons.asgiapp import WSGIApp
    from mitmproxy.test import taddons, tflow

    addon = WSGIApp(portal.app, "schoolgate.internal", None)
    signed = portal.event()

    def flow(method: str, path: str, body: bytes = b"", headers: dict | None = None):
        f = tflow.tflow()
        f.client_conn.peername = (STUDENT_IP, 50000)
        f.request.method = method
        f.request.host = "schoolgate.internal"
        f.request.port = 80
        f.request.scheme = "http"
        f.request.path = path
        f.request.headers.clear()
        f.request.headers["host"] = "schoolgate.internal"
        f.request.headers["x-schoolgate-user"] = "ben"
        for name, value in (headers or {}).items():
            f.request.headers[name] = value
        f.request.content = body
        return f

    async def go():
        with taddons.context(addon):
            get = flow("GET", f"/request?url=http%3A%2F%2Fsocial.test%2Fpage&ref={signed}")
            await addon.request(get)
            assert get.response.status_code == 200
            token = re.search(rb'name="csrf_token" value="([^"]+)"', get.response.content)
            cookie = get.response.headers["set-cookie"].split(";")[0]
            from urllib.parse import urlencode

            body = urlencode(
                {
                    "csrf_token": token.group(1).decode(),
                    "ref": signed,
                    "purpose": "curriculum",
                    "message": "through the gateway",
                }
            ).encode()
            post_ = flow(
                "POST",
                "/request",
                body,
                {"content-type": "application/x-www-form-urlencoded", "cookie": cookie},
            )
            await addon.request(post_)
            assert post_.response.status_code == 303, post_.response.text

    asyncio.run(go())
    (row,) = portal.rows()
    assert (row.requester_user, row.client_ip, row.event_ref) == ("ben", STUDENT_IP, "abc123")


def test_the_queue_shows_a_page_of_the_oldest_with_links_to_the_rest(portal):
    """A school year of requests is too many for one page: 100 at a time, oldest first, with
    the total, and next/previous links that keep the filters."""
    start = portal.clock() - timedelta(days=30)
    with portal.sessions() as s:
        for n in range(250):
            at = start + timedelta(minutes=n)
            s.add(
                PortalRequestRow(
                    ref=f"A-Q{n:05d}",
                    token="t",
                    kind="report" if n % 50 == 7 else "access",
                    status="approved" if n % 10 == 3 else "open",
                    created_at=at,
                    updated_at=at,
                    requester_user="ben",
                    requester_role="student",
                    requester_site="main",
                    url=f"http://site{n}.test/",
                    host=f"site{n}.test",
                )
            )
        s.commit()
    open_refs = [f"A-Q{n:05d}" for n in range(250) if n % 10 != 3]  # 225, oldest first
    client = portal.staff("alice")

    def refs_on(page_text: str) -> list[str]:
        return re.findall(r">(A-Q\d{5})</a>", page_text)

    def link(page_text: str, rel: str) -> str | None:
        found = re.search(rf'<a href="([^"]+)" rel="{rel}">', page_text)
        return found.group(1).replace("&amp;", "&") if found else None

    first = client.get("/it/").text
    assert "225 item(s)" in first
    assert refs_on(first) == open_refs[:100]
    assert link(first, "prev") is None
    second = client.get(link(first, "next")).text
    assert refs_on(second) == open_refs[100:200]
    assert refs_on(client.get(link(second, "prev")).text) == open_refs[:100]
    third = client.get(link(second, "next")).text
    assert refs_on(third) == open_refs[200:] and link(third, "next") is None
    # past the end shows the last page; nonsense shows the first
    assert refs_on(client.get("/it/?page=99").text) == open_refs[200:]
    assert refs_on(client.get("/it/?page=x").text) == open_refs[:100]
    # filters carry through the links, and the existing filter URLs still work
    approved = client.get("/it/?status=approved&kind=access").text
    assert "25 item(s)" in approved and link(approved, "next") is None
    everything = client.get("/it/?status=all&q=ben").text
    assert "250 item(s)" in everything
    last = client.get(link(client.get(link(everything, "next")).text, "next")).text
    assert refs_on(last) == [f"A-Q{n:05d}" for n in range(200, 250)]


def test_this_page_is_the_narrowest_choice_when_asking_and_approving(portal):
    client = portal.client(STUDENT_IP, "ben")
    form = client.get("/request?url=http://www.social.test/@bbcnews/video/1").text
    narrow = form.index('value="page"')
    assert narrow < form.index('value="site"') and "Only this page (social.test/@bbcnews" in form
    assert 'id="wants-page" name="wants" value="page" checked' in form
    ref = portal.ask(url="http://www.social.test/@bbcnews", wants="page", ref="")
    assert portal.row(ref).wants == "page"
    staff = portal.staff("alice")
    page = f"/it/item/{item_id(portal, ref)}"
    item = staff.get(page).text
    assert '<option value="page" selected>this page only' in item
    assert 'name="target" value="social.test/@bbcnews"' in item
    answer = post(staff, page, f"{page}/approve", scope="user", scope_value="ben",
                  target_kind="page", target="social.test/@bbcnews", duration="7d")  # fmt: skip
    assert answer.status_code == 303, answer.text
    (exc,) = portal.exceptions()
    assert (exc.target_kind, exc.target) == ("page", "social.test/@bbcnews")
    with portal.sessions() as s:
        current = exceptions_current(s, datetime.now(UTC))

    def allowed(path: str) -> bool:
        facts = RequestFacts("www.social.test", datetime.now(UTC), path, "GET", 80, "http",
                             STUDENT_IP, "ben")  # fmt: skip
        return portal.policy.decide(facts, current).allowed

    assert allowed("/@bbcnews") and not allowed("/@other")
