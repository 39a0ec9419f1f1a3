"""The designated safeguarding lead in Chromium: signs in, sees a severity-3 search in the queue,
opens the pupil's timeline, opens a case, adds a note and closes it with an outcome."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from accessibility import chromium, serving
from sqlalchemy import select

from schoolgate.core.config import load_policy
from schoolgate.portal.app import create_app, make_identify
from schoolgate.portal.auth import add_staff
from schoolgate.storage.db import open_database
from schoolgate.storage.models import AuditRow, CaseRow, EventRow

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery"
TERM = "how to kill myself tonight"


@pytest.fixture
def portal(tmp_path):
    shutil.copytree(Path(__file__).parent / "data" / "gateway", tmp_path / "config")
    policy = load_policy(tmp_path / "config" / "config.yaml", data_dir=tmp_path / "var")
    sessions = open_database(policy.settings.database_url)
    now = datetime.now(UTC)
    with sessions() as s:
        add_staff(s, username="dara", password=PASSWORD, roles=["dsl"])
        for ref, term, severity, ago in (
            ("s-risk", TERM, 3, 2),
            ("s-before", "maths homework", 0, 4),
        ):
            theme = "suicide" if severity else ""
            detail = {"engine": "google", "term": term, "severity": severity, "theme": theme,
                      "rule": "how to kill myself",
                      "why": "asking how to end one's life"}  # fmt: skip
            s.add(
                EventRow(ref=ref, at=now - timedelta(minutes=ago), kind="search", action="allow",
                         user="ben", role="student", group="9B", site="main",
                         host="www.google.com", url="https://www.google.com/search?q=x",
                         search_term=term, detail=json.dumps(detail))
            )  # fmt: skip
        s.commit()
    app = create_app(
        policy_getter=lambda: policy,
        session_factory=sessions,
        secret=b"e" * 32,
        data_dir=tmp_path / "var",
        identify=make_identify(lambda: policy, trust_user_header=False),
        start_sender=False,
    )
    with serving(app) as base:
        yield base, sessions


def test_the_dsl_reviews_a_severe_search_and_closes_the_case(portal):
    from playwright.sync_api import expect

    # Each check after a click is a waiting assertion: it reads the page the click led to,
    # never the page it left (which may hold the same ids).
    base, sessions = portal
    with chromium() as browser:
        page = browser.new_page()
        page.goto(f"{base}/staff/login")
        page.fill("#username", "dara")
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        page.get_by_role("link", name="Safeguarding").first.click()
        row = page.locator("#match-s-risk")
        expect(row).to_contain_text("3 (high)")
        expect(row).to_contain_text(TERM)
        expect(row).to_contain_text("Matched how to kill myself: asking how to end one's life")
        expect(page.locator("#match-s-before")).to_have_count(0)  # an ordinary search is no match
        row.get_by_role("link", name="ben").click()
        timeline = page.locator("#timeline")
        for text in (TERM, "maths homework", "not reviewed"):
            expect(timeline).to_contain_text(text)
        page.get_by_role("link", name="Matches to review").click()
        page.locator("#match-s-risk").get_by_role("button", name="Open case").click()
        expect(page.locator("#case-status")).to_have_text("new")
        page.fill("#note-text", "Spoke to Ben with his Head of Year; parents called.")
        page.get_by_role("button", name="Add note").click()
        expect(page.locator("#case-notes")).to_contain_text("parents called")
        page.select_option("#new-status", "closed")
        page.fill("#status-outcome", "Referred to CAMHS; safety plan agreed with parents.")
        page.get_by_role("button", name="Change status").click()
        expect(page.locator("#case-status")).to_have_text("closed")
        expect(page.locator("#case-outcome")).to_contain_text("safety plan")
        page.get_by_role("link", name="Matches to review").click()
        expect(page.get_by_text("Nothing to review.")).to_be_visible()
    with sessions() as s:
        case = s.scalars(select(CaseRow)).one()
        assert (case.subject, case.status, case.closed_by) == ("user:ben", "closed", "dara")
        views = s.scalars(select(AuditRow).where(AuditRow.action == "dsl.timeline_view")).all()
        assert [(v.actor, v.subject) for v in views] == [("dara", "user:ben")]
