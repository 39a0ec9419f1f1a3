"""The designated safeguarding lead's pages with Flask's test client and a real SQLite file: only
the ``dsl`` role sees them, the queue's order, opening and closing a case, every timeline view
in the audit trail, and what a case's export holds."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import timedelta

import pytest
from sqlalchemy import select
from test_portal import PASSWORD, Portal, csrf, post

from schoolgate.jobs.retention import RetentionSettings, erase_user, export_user, purge
from schoolgate.portal.auth import add_staff
from schoolgate.storage.bans import add_ban
from schoolgate.storage.models import AuditRow, CaseNoteRow, CaseRow, EventRow, MatchRow


@pytest.fixture
def portal(tmp_path, gateway_config) -> Portal:
    portal = Portal(tmp_path, gateway_config)
    with portal.sessions() as s:
        add_staff(s, username="dara", password=PASSWORD, roles=["dsl"])
        s.commit()
    return portal


def search(portal: Portal, ref: str, term: str, severity: int, *, ago: int = 0, **fields):
    """A ``search`` event as the gateway records it (``detail``: engine, term, severity...)."""
    detail = {"engine": "google", "term": term, "severity": severity,
              "theme": "suicide" if severity else "", "rule": "en/suicide.yaml:3"}  # fmt: skip
    values = dict(kind="search", action="allow", host="www.google.com", category=None,
                  url=f"https://www.google.com/search?q={term.replace(' ', '+')}",
                  search_term=term, detail=json.dumps(detail), reason=None,
                  rule=detail["rule"] if severity else None,  # as the gateway: the term matched
                  at=portal.clock() - timedelta(minutes=ago))  # fmt: skip
    values.update(fields)
    portal.event(ref=ref, **values)


def page_risk(portal: Portal, ref: str, title: str, severity: int, **fields):
    detail = {"title": title, "severity": severity, "theme": "self_harm", "rule": "r"}
    portal.event(ref=ref, kind="page_risk", action="allow", host="forum.test",
                 url="https://forum.test/t/1", category=None, detail=json.dumps(detail),
                 **fields)  # fmt: skip


def _text(answer) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", answer.text))


def _audit(portal: Portal, action: str) -> list[AuditRow]:
    with portal.sessions() as s:
        return list(s.scalars(select(AuditRow).where(AuditRow.action == action)))


# -- who sees it ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/dsl/", "/dsl/pupil/ben", "/dsl/cases", "/dsl/cases/1", "/dsl/cases/1/export.csv"]
)
def test_only_the_dsl_role_sees_the_safeguarding_pages(portal, path):
    search(portal, "s1", "how to kill myself", 3)
    dsl = portal.staff("dara")
    case = post(dsl, "/dsl/", "/dsl/match/s1/case")
    assert case.status_code == 303
    for user in ("alice", "tina", "sam", "nina"):  # IT Support, teacher, SLT, network manager
        assert portal.staff(user).get(path).status_code == 403, user
    assert portal.client().get(path).status_code == 302  # not signed in: to the sign-in page
    assert dsl.get(path).status_code == 200
    # Nobody else may act on a match or a case either.
    it = portal.staff("alice")
    token = csrf(it, "/staff/")
    assert it.post("/dsl/cases/1/note", data={"text": "x", "csrf_token": token}).status_code == 403


def test_staff_home_and_the_menu_lead_the_dsl_to_the_queue_and_no_one_else(portal):
    assert "/dsl/" in portal.staff("dara").get("/staff/").text
    assert "/dsl/" not in portal.staff("alice").get("/staff/").text


# -- the queue -------------------------------------------------------------------------------------


def test_the_queue_lists_unreviewed_matches_most_severe_then_newest_first(portal):
    search(portal, "low-new", "vape shop near me", 1, ago=1)
    search(portal, "high-old", "how to kill myself", 3, ago=50, user="cara", group="9C")
    search(portal, "high-new", "painless suicide methods", 3, ago=5)
    page_risk(portal, "title-2", "Cutting forum: share your scars", 2, user="cara", group="9C")
    search(portal, "ordinary", "macbeth act 5 summary", 0)  # no match: not in the queue
    portal.event(ref="blk1")  # a block is not a match
    page = portal.staff("dara").get("/dsl/")
    order = re.findall(r'<tr id="match-([^"]+)"', page.text)
    assert order == ["high-new", "high-old", "title-2", "low-new"]
    row = page.text[page.text.index('id="match-high-old"') :]
    row = _text_of(row[: row.index("</tr>")])
    assert "3 (high)" in row and "how to kill myself" in row and "cara" in row and "9C" in row
    assert "Cutting forum: share your scars" in page.text


def _text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_a_match_whose_detail_cannot_be_read_is_shown_as_severe(portal):
    portal.event(ref="odd", kind="search", action="allow", detail="{not json", search_term="x y")
    page = portal.staff("dara").get("/dsl/")
    assert 'id="match-odd"' in page.text and "detail could not be read" in page.text


def test_no_concern_takes_a_match_off_the_queue_and_is_audited(portal):
    search(portal, "s1", "shoot a video", 1)
    dsl = portal.staff("dara")
    assert post(dsl, "/dsl/", "/dsl/match/s1/no-concern").status_code == 303
    assert 'id="match-s1"' not in dsl.get("/dsl/").text
    assert [a.subject for a in _audit(portal, "dsl.match_no_concern")] == ["user:ben"]
    again = post(dsl, "/dsl/", "/dsl/match/s1/no-concern")
    assert again.status_code == 400 and "already been reviewed" in again.text


def test_a_second_match_joins_the_pupils_open_case(portal):
    search(portal, "s1", "how to kill myself", 3, ago=10)
    search(portal, "s2", "painless suicide methods", 3)
    search(portal, "c1", "self harm", 2, user="cara", group="9C")
    dsl = portal.staff("dara")
    first = post(dsl, "/dsl/", "/dsl/match/s1/case")
    second = post(dsl, "/dsl/", "/dsl/match/s2/case")
    third = post(dsl, "/dsl/", "/dsl/match/c1/case")
    assert first.headers["Location"] == second.headers["Location"] == "/dsl/cases/1"
    assert third.headers["Location"] == "/dsl/cases/2"  # another pupil, another case
    case = dsl.get("/dsl/cases/1")
    assert "how to kill myself" in case.text and "painless suicide methods" in case.text
    assert "self harm" not in case.text
    assert "Nothing to review." in dsl.get("/dsl/").text


# -- the timeline ----------------------------------------------------------------------------------


def test_each_view_of_a_timeline_is_audited_and_shows_what_the_pupil_did(portal):
    search(portal, "s1", "how to kill myself", 3)
    search(portal, "s2", "macbeth act 5 summary", 0)
    portal.event(ref="blk1", host="social.test")
    portal.event(ref="circ1", kind="circumvention", action="block", host="proxy.test",
                 category="circumvention")  # fmt: skip
    portal.event(ref="old", at=portal.clock() - timedelta(days=40))
    portal.event(ref="cara1", user="cara", group="9C")
    with portal.sessions() as s:
        add_ban(s, "ben", by="schoolgate", minutes=60, reason="web proxy used")
        s.commit()
    dsl = portal.staff("dara")
    page = dsl.get("/dsl/pupil/ben")
    assert page.status_code == 200
    refs = re.findall(r"<code>([^<]+)</code>", page.text)
    assert {"s1", "s2", "blk1", "circ1"} <= set(refs)
    assert "old" not in refs and "cara1" not in refs  # 40 days ago; another pupil
    text = _text(page)
    assert "how to kill myself" in text and "macbeth act 5 summary" in text
    assert "web proxy used" in text and "Getting round the filter" in text
    assert "old" in re.findall(r"<code>([^<]+)</code>", dsl.get("/dsl/pupil/ben?days=90").text)
    views = _audit(portal, "dsl.timeline_view")
    assert [(v.actor, v.subject, v.detail) for v in views] == [
        ("dara", "user:ben", "days=30"),
        ("dara", "user:ben", "days=90"),
    ]
    # A refused look is not a view: nothing more is recorded.
    assert portal.staff("alice").get("/dsl/pupil/cara").status_code == 403
    assert len(_audit(portal, "dsl.timeline_view")) == 2


# -- a case's life ---------------------------------------------------------------------------------


def _status(dsl, case_id: int, status: str, **form):
    page = f"/dsl/cases/{case_id}"
    return post(dsl, page, f"{page}/status", status=status, **form)


def test_a_case_moves_through_its_statuses_and_closing_needs_an_outcome(portal):
    search(portal, "s1", "how to kill myself", 3)
    dsl = portal.staff("dara")
    post(dsl, "/dsl/", "/dsl/match/s1/case")
    assert _status(dsl, 1, "reviewed").status_code == 303
    assert _status(dsl, 1, "new").status_code == 400  # never back to new
    assert _status(dsl, 1, "escalated", note="Referred to Early Help").status_code == 303
    refused = _status(dsl, 1, "closed")
    assert refused.status_code == 400 and "outcome" in refused.text
    outcome = "Spoke with parents; CAMHS referral."
    assert _status(dsl, 1, "closed", outcome=outcome).status_code == 303
    with portal.sessions() as s:
        case = s.get(CaseRow, 1)
        assert (case.status, case.closed_by) == ("closed", "dara")
        assert case.outcome == "Spoke with parents; CAMHS referral."
        history = [n.status for n in s.scalars(select(CaseNoteRow).order_by(CaseNoteRow.id))]
    assert [h for h in history if h] == ["new", "reviewed", "escalated", "closed"]
    # Reopening says why.
    assert _status(dsl, 1, "reviewed").status_code == 400
    assert _status(dsl, 1, "reviewed", note="New concern raised by tutor").status_code == 303
    actions = [a.action for a in _audit(portal, "dsl.case_closed")]
    assert actions == ["dsl.case_closed"]


def test_notes_are_kept_with_who_wrote_them(portal):
    search(portal, "s1", "how to kill myself", 3)
    dsl = portal.staff("dara")
    post(dsl, "/dsl/", "/dsl/match/s1/case")
    answer = post(dsl, "/dsl/cases/1", "/dsl/cases/1/note", text="Spoke to Ben at break.")
    assert answer.status_code == 303
    assert post(dsl, "/dsl/cases/1", "/dsl/cases/1/note", text="  ").status_code == 400
    page = _text(dsl.get("/dsl/cases/1"))
    assert "dara Spoke to Ben at break." in page.replace(",", "")


# -- export ----------------------------------------------------------------------------------------


def test_a_case_exports_as_csv_and_as_a_self_contained_page_and_both_are_audited(portal):
    search(portal, "s1", "how to kill myself", 3)
    search(portal, "s2", '=HYPERLINK("http://x")', 2)  # a pupil's term is not a formula
    dsl = portal.staff("dara")
    post(dsl, "/dsl/", "/dsl/match/s1/case")
    post(dsl, "/dsl/", "/dsl/match/s2/case")
    post(dsl, "/dsl/cases/1", "/dsl/cases/1/note", text="Spoke to Ben at break.")
    _status(dsl, 1, "closed", outcome="Parents informed")
    answer = dsl.get("/dsl/cases/1/export.csv")
    assert answer.status_code == 200 and answer.mimetype == "text/csv"
    assert "safeguarding-case-1.csv" in answer.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    searches = [r for r in rows if r["entry"] == "search"]
    assert [r["what"] for r in searches] == ["how to kill myself", '\'=HYPERLINK("http://x")']
    assert searches[0]["severity"] == "3" and searches[0]["pupil"] == "ben"
    assert searches[0]["event_ref"] == "s1" and searches[0]["group"] == "9B"
    assert any(r["entry"] == "note" and r["text"] == "Spoke to Ben at break." for r in rows)
    assert rows[-1]["entry"] == "outcome" and rows[-1]["text"] == "Parents informed"
    html = dsl.get("/dsl/cases/1/export.html")
    assert html.status_code == 200
    assert "how to kill myself" in html.text and "Parents informed" in html.text
    assert "<link" not in html.text and "<script" not in html.text and "src=" not in html.text
    assert "@media print" in html.text
    exports = [a.detail for a in _audit(portal, "dsl.case_export")]
    assert exports == ["case=1 as=csv", "case=1 as=html"]


# -- data protection -------------------------------------------------------------------------------


def test_a_cases_matches_outlive_the_decision_log_and_closed_cases_go_after_their_period(portal):
    search(portal, "s1", "how to kill myself", 3)
    search(portal, "s2", "macbeth act 5 summary", 0)
    dsl = portal.staff("dara")
    post(dsl, "/dsl/", "/dsl/match/s1/case")
    _status(dsl, 1, "closed", outcome="Parents informed")
    # Searches that matched nothing have their own period (search_days), shorter here too.
    settings = RetentionSettings(decisions_days=1, search_days=1, safeguarding_cases_days=30)
    with portal.sessions() as s:
        purge(s, settings, now=portal.clock() + timedelta(days=2), policy=portal.policy)
        s.commit()
        left = set(s.scalars(select(EventRow.ref)))
        assert "s1" in left and "s2" not in left  # the case's match is evidence
        assert s.get(CaseRow, 1) is not None
        purge(s, settings, now=portal.clock() + timedelta(days=31), policy=portal.policy)
        s.commit()
        assert s.get(CaseRow, 1) is None and not list(s.scalars(select(MatchRow)))
        assert not list(s.scalars(select(CaseNoteRow)))


def test_subject_access_shows_the_case_and_erasure_keeps_it(portal):
    search(portal, "s1", "how to kill myself", 3)
    post(portal.staff("dara"), "/dsl/", "/dsl/match/s1/case")
    with portal.sessions() as s:
        held = export_user(s, "ben", policy=portal.policy)
        assert [c["status"] for c in held["safeguarding_cases"]] == ["new"]
        plan = erase_user(s, "ben", policy=portal.policy, apply=True)
        s.commit()
        assert "safeguarding cases" in plan.keep
        assert s.get(CaseRow, 1) is not None
        assert "s1" in set(s.scalars(select(EventRow.ref)))
