"""The pages pupils meet pass an automated accessibility check (axe-core in Chromium, WCAG 2.1
A and AA and axe's best practices) and read without sideways scrolling, at 1280 px and at
320 px, in light and dark mode: the block page in each variant, the suspension and warning
pages, and the portal's request form as the block page opens it."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from accessibility import axe_violations, chromium, describe
from test_blockpage import AGE, ERROR, LOCKED, LONDON, NOW, READ_ONLY, _decision, _page
from werkzeug.serving import make_server

from schoolgate.core.config import load_policy
from schoolgate.core.sanctions import BanState
from schoolgate.gateway.suspension import render_suspended_page, render_warning_page
from schoolgate.portal.app import create_app, make_identify
from schoolgate.storage.db import open_database

pytestmark = pytest.mark.e2e  # every test renders in Chromium

SECRET = b"k" * 32
URL = "https://www.facebook.com/groups/year9-chat/posts/1234567890?ref=share&utm_source=x"
# Both widths in light mode; dark mode changes colours only, so once (at 1280 px).
VIEWS = [(1280, 900, "light"), (320, 640, "light"), (1280, 900, "dark")]
VARIANTS = {"rule": {}, "read_only": READ_ONLY, "locked": LOCKED, "age": AGE, "error": ERROR}


def _block_page(variant: str) -> str:
    return _page(_decision(**VARIANTS[variant]), url=URL)


def _ban(kind: str) -> BanState:
    return BanState(
        id=7,
        ref="B-7",
        kind=kind,
        subject="user:ben",
        starts=NOW - timedelta(hours=1),
        ends=NOW + timedelta(days=6),
        reason="repeated attempts to use a web proxy",
    )


PAGES = {
    **{f"block-{v}": (lambda v=v: _block_page(v)) for v in VARIANTS},
    "suspended-ban": lambda: render_suspended_page(
        _ban("ban"),
        url=URL,
        ref="abc",
        portal_host="schoolgate.internal",
        appeal="Speak to your Head of Year.",
        essentials=["classroom.google.com"],
        tz=LONDON,
        now=NOW,
    ),  # fmt: skip
    "suspended-lockout": lambda: render_suspended_page(
        _ban("lockout"),
        url=URL,
        ref="abc",
        portal_host="schoolgate.internal",
        appeal="Speak to your Head of Year.",
        tz=LONDON,
        now=NOW,
    ),  # fmt: skip
    "warning": lambda: render_warning_page(
        "A web proxy (proxy.example) was used to get round the filter.",
        ref="abc",
        portal_host="schoolgate.internal",
        continue_url=URL,
        next_step="More attempts lead to a short lockout.",
        who="ben",
        tz=LONDON,
        now=NOW,
        url=URL,
    ),  # fmt: skip
}


@pytest.fixture(scope="module")
def browser():
    with chromium() as found:
        yield found


@pytest.mark.parametrize(("width", "height", "scheme"), VIEWS)
@pytest.mark.parametrize("name", sorted(PAGES))
def test_gateway_pages_pass_axe(browser, name, width, height, scheme):
    found = axe_violations(
        browser, html=PAGES[name](), width=width, height=height, color_scheme=scheme
    )
    assert not found, f"{name} at {width}px ({scheme}):\n{describe(found)}"


@pytest.fixture(scope="module")
def portal_url(tmp_path_factory):
    import shutil
    from pathlib import Path

    folder = tmp_path_factory.mktemp("portal")
    shutil.copytree(Path(__file__).parent / "data" / "gateway", folder / "config")
    policy = load_policy(folder / "config" / "config.yaml", data_dir=folder / "var")
    app = create_app(
        policy_getter=lambda: policy,
        session_factory=open_database(policy.settings.database_url),
        secret=SECRET,
        data_dir=folder / "var",
        identify=make_identify(lambda: policy, trust_user_header=False),
        start_sender=False,
        clock=lambda: datetime.now(UTC),
    )
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join(10)


@pytest.mark.parametrize(("width", "height", "scheme"), VIEWS)
def test_the_request_form_from_a_block_page_passes_axe(browser, portal_url, width, height, scheme):
    query = "url=https%3A%2F%2Fsocial.test%2Fpage&category=social_media&purpose=erroneous"
    found = axe_violations(
        browser, url=f"{portal_url}/request?{query}", width=width, height=height,
        color_scheme=scheme,
    )  # fmt: skip
    assert not found, f"/request at {width}px ({scheme}):\n{describe(found)}"


def test_the_check_finds_what_is_wrong(browser):
    """The rig itself: a page with known faults is not passed."""
    bad = (
        "<!doctype html><html><head><title>x</title></head><body>"
        "<img src='data:image/gif;base64,R0lGODlhAQABAAAAACw='>"
        "<p style='color:#777;background:#888'>faint</p>"
        "<div style='width:900px'>wide</div></body></html>"
    )
    found = {v["id"] for v in axe_violations(browser, html=bad, width=320)}
    assert {"image-alt", "color-contrast", "html-has-lang", "horizontal-scroll"} <= found


# -- the console and the staff pages --------------------------------------------------------------

STAFF_PASSWORD = "correct horse battery"
STAFF_PAGES = {
    # name: (who, path)
    "console-dashboard": ("it", "/console/"),
    "console-live": ("it", "/console/live"),
    "console-history": ("it", "/console/history?user=ben"),
    "console-explain": ("it", "/console/explain?url=http%3A%2F%2Fsocial.test%2F&user=ben"),
    "console-reports": ("it", "/console/reports"),
    "console-who": ("it", "/console/who?history=1"),
    "supervision-it": ("it", "/supervision/"),
    "staff-home": ("it", "/staff/"),
    "two-factor-setup": ("it", "/staff/two-factor/setup"),
    "teacher-classes": ("teacher", "/teacher/"),
    "supervision-teacher": ("teacher", "/supervision/"),
    "two-factor-code": ("second-step", "/staff/two-factor"),
    "login-with-provider": ("anyone", "/staff/login"),
    "dsl-queue": ("dsl", "/dsl/"),
    "dsl-timeline": ("dsl", "/dsl/pupil/ben"),
    "dsl-cases": ("dsl", "/dsl/cases"),
    "dsl-case": ("dsl", "/dsl/cases/1"),
}


@pytest.fixture(scope="module")
def staff_portal(tmp_path_factory, browser):
    """The portal with a school's worth of state (blocks, a ban, a kept report, a sign-in
    provider), and the signed-in browser state of each kind of visitor."""
    import shutil
    from pathlib import Path

    from schoolgate.portal import totp
    from schoolgate.portal.auth import add_staff
    from schoolgate.storage.bans import add_ban
    from schoolgate.storage.models import EventRow

    folder = tmp_path_factory.mktemp("console")
    shutil.copytree(Path(__file__).parent / "data" / "gateway", folder / "config")
    config = folder / "config" / "config.yaml"
    config.write_text(
        config.read_text().replace(
            "  host: schoolgate.internal\n",
            "  host: schoolgate.internal\n"
            "  oidc:\n"
            "    providers:\n"
            "      - {name: entra, kind: entra, label: Sign in with Microsoft,"
            " issuer: 'http://127.0.0.1:9/tenant/v2.0', client_id: x, client_secret: y,"
            " allowed_tenants: [tenant]}\n",
        )
        + "school_name: Hillside Academy\n"
    )
    policy = load_policy(config, data_dir=folder / "var")
    sessions = open_database(policy.settings.database_url)
    now = datetime.now(UTC)
    with sessions() as s:
        add_staff(s, username="it", password=STAFF_PASSWORD, roles=["it_support"])
        add_staff(s, username="teacher", password=STAFF_PASSWORD, roles=["teacher"], groups=["9B"])
        second = add_staff(s, username="second", password=STAFF_PASSWORD, roles=["slt"])
        enrolment = totp.begin_enrolment(second, secret_key=SECRET, issuer="x")
        import pyotp

        totp.confirm_enrolment(
            s, second, pyotp.TOTP(enrolment.secret).now(), secret_key=SECRET, at=now
        )
        for n, host in enumerate(["social.test", "social.test", "wiki.test", "proxy.test"]):
            s.add(
                EventRow(ref=f"a11y{n}", at=now - timedelta(minutes=n), kind="block",
                         action="block", user="ben", role="student", group="9B", site="main",
                         host=host, url=f"http://{host}/page?with=a+long+query+string+{n}",
                         category="social_media", window="lesson", window_name="All day",
                         rule="rules[0]", reason="social_media is blocked for student in lesson.")
            )  # fmt: skip
        add_ban(s, "ben", by="schoolgate", minutes=600, reason="web proxy used")
        add_staff(s, username="dsl", password=STAFF_PASSWORD, roles=["dsl"])
        _risk_matches(s, now)
        from schoolgate.storage import bindings as store

        store.bind(s, address="10.20.1.5", source="radius", user="ben", device="laptop-7",
                   mac="aa:bb:cc:dd:ee:07", origin="radius 10.0.0.2 (wlc-1)", now=now,
                   expires_at=now + timedelta(hours=1), actor="radius")  # fmt: skip
        s.commit()
    reports = folder / "var" / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "report-day-2026-12-07.html").write_text("<h1>Report</h1>")
    (reports / "report-day-2026-12-07.csv").write_text("section,item\n")
    app = create_app(
        policy_getter=lambda: policy,
        session_factory=sessions,
        secret=SECRET,
        data_dir=folder / "var",
        identify=make_identify(lambda: policy, trust_user_header=False),
        start_sender=False,
    )
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    states = {"anyone": None}
    for who, user in (
        ("it", "it"),
        ("teacher", "teacher"),
        ("second-step", "second"),
        ("dsl", "dsl"),
    ):
        context = browser.new_context()
        page = context.new_page()
        page.goto(f"{base}/staff/login")
        page.fill("#username", user)
        page.fill("#password", STAFF_PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_load_state()
        states[who] = context.storage_state()
        context.close()
    yield base, states
    server.shutdown()
    server.server_close()
    thread.join(10)


def _risk_matches(session, now: datetime) -> None:
    """Searches that matched the risk-term library, one of them already in a case with a note."""
    import json

    from schoolgate.storage import cases
    from schoolgate.storage.models import EventRow

    terms = [("how to kill myself without pain tonight", 3, "suicide"),
             ("best pro ana thinspiration diet", 2, "eating_disorders"),
             ("vape shop that sells to under 18s", 1, "drugs")]  # fmt: skip
    for n, (term, severity, theme) in enumerate(terms):
        detail = {"engine": "google", "term": term, "severity": severity, "theme": theme,
                  "rule": "en/x.yaml:1"}  # fmt: skip
        session.add(
            EventRow(ref=f"risk{n}", at=now - timedelta(minutes=10 + n), kind="search",
                     action="allow", user="ben", role="student", group="9B", site="main",
                     host="www.google.com", url="https://www.google.com/search?q=x",
                     search_term=term, detail=json.dumps(detail))
        )  # fmt: skip
    session.flush()
    case, _ = cases.open_case(session, "risk2", actor="dsl", now=now)
    cases.add_note(session, case, "Spoke to Ben's tutor; no concern at home.", actor="dsl",
                   now=now)  # fmt: skip


def test_a_case_export_passes_axe(browser, staff_portal):
    """The export is a download (so not opened as a page above): checked as the file it is."""
    base, states = staff_portal
    context = browser.new_context(storage_state=states["dsl"])
    try:
        answer = context.request.get(f"{base}/dsl/cases/1/export.html")
        assert answer.ok
        html = answer.text()
    finally:
        context.close()
    assert "Spoke to Ben" in html
    for width, height, scheme in VIEWS:
        found = axe_violations(browser, html=html, width=width, height=height,
                               color_scheme=scheme)  # fmt: skip
        assert not found, f"case export at {width}px ({scheme}):\n{describe(found)}"


@pytest.mark.parametrize(("width", "height", "scheme"), VIEWS)
@pytest.mark.parametrize("name", sorted(STAFF_PAGES))
def test_console_and_staff_pages_pass_axe(browser, staff_portal, name, width, height, scheme):
    base, states = staff_portal
    who, path = STAFF_PAGES[name]
    found = axe_violations(
        browser, url=f"{base}{path}", width=width, height=height, color_scheme=scheme,
        storage_state=states[who],
    )  # fmt: skip
    assert not found, f"{name} ({path}) at {width}px ({scheme}):\n{describe(found)}"
