"""The console with Flask's test client and a real SQLite file: who sees it, what the dashboard
shows, searchable history with pages, the live view's cursor, the explain form (the same text as
the command), reports, supervision from the portal and the teacher page's choices."""

from __future__ import annotations

import io
import json
import re
from contextlib import redirect_stdout
from datetime import timedelta

import pytest
from test_portal import PASSWORD, Portal, csrf, post

from schoolgate.portal.app import create_app, make_identify
from schoolgate.portal.auth import add_staff
from schoolgate.portal.services.events import EventFilter, history
from schoolgate.storage.bans import add_ban
from schoolgate.storage.events import LiveCursor, follow_events
from schoolgate.storage.heartbeats import Beat, record_beat
from schoolgate.storage.models import AuditRow, BanAuditRow, EventRow, SupervisionRow


@pytest.fixture
def portal(tmp_path, gateway_config) -> Portal:
    portal = Portal(tmp_path, gateway_config)
    with portal.sessions() as s:
        add_staff(s, username="hana", password=PASSWORD, roles=["teacher"], groups=["9C"])
        s.commit()
    return portal


def _events(portal: Portal, n: int, **fields) -> list[str]:
    refs = []
    for i in range(n):
        ref = f"{fields.get('user', 'ben')}-{i:04d}-{len(refs)}"
        portal.event(ref=ref, **fields)
        refs.append(ref)
    return refs


def _text(answer) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", answer.text))


# -- who sees what ------------------------------------------------------------------------------


def test_the_console_is_for_it_support_and_network_managers(portal):
    for user in ("alice", "nina"):
        assert portal.staff(user).get("/console/").status_code == 200
    assert portal.staff("tina").get("/console/").status_code == 403  # a teacher
    slt = portal.staff("sam")
    assert slt.get("/console/").status_code == 403
    assert slt.get("/console/reports").status_code == 200  # SLT read the reports
    anonymous = portal.client()
    assert anonymous.get("/console/").status_code == 302
    assert anonymous.get("/console/live/poll").status_code == 302


# -- the dashboard ------------------------------------------------------------------------------


def test_the_dashboard_shows_todays_blocks_and_what_is_switched_off(portal):
    portal.event(ref="blk1", host="social.test")
    portal.event(ref="blk2", host="social.test", user="cara", group="9C")
    portal.event(ref="blk3", host="wiki.test", category="wikipedia")
    portal.event(ref="old1", host="old.test", at=portal.clock() - timedelta(days=3))
    page = portal.staff("alice").get("/console/")
    assert page.status_code == 200
    text = _text(page)
    top = page.text[page.text.index('id="top-sites"') :]
    top = top[: top.index("</table>")]
    assert "social.test" in top and ">2<" in top.replace(" ", "")
    assert "old.test" not in top  # three days ago is not today
    assert "3 blocks today" in text
    assert "blk3" in page.text  # the latest blocks, with their references
    # In words: the category, the people and the part of the day, not internal names.
    assert "Blocked: social media, for pupils during lessons (All day)." in text
    assert "social_media is blocked" not in text
    # Switched off: this test config has no mail relay and no webhook.
    assert "No mail relay or webhook is set up" in text
    assert "illegal" not in text.split("Switched off")[1].split("At a glance")[0]  # has an entry


def test_the_dashboard_shows_each_gateway_process_and_says_which_are_down(portal):
    now = portal.clock()
    base = dict(host="gw1", port=8080, pid=42, started_at=now - timedelta(hours=1), interval=10.0)
    record_beat(
        portal.sessions,
        Beat(worker=1, seen_at=now - timedelta(seconds=5), requests=1200, blocks=30,
             minutes=[(int(now.timestamp()) // 60, 55, 4)], **base),
    )  # fmt: skip
    record_beat(portal.sessions, Beat(worker=2, seen_at=now - timedelta(minutes=10), **base))
    page = portal.staff("nina").get("/console/")
    rows = page.text[page.text.index('id="processes"') :]
    rows = rows[: rows.index("</table>")]
    first, second = rows.split("gw1:8080 worker 2")
    assert "gw1:8080 worker 1" in first and "running" in first and "1200" in first
    assert "not seen" in second
    assert "55 requests this minute" in _text(page)


# -- history -------------------------------------------------------------------------------------


def test_history_pages_through_a_filter_newest_first_without_repeats(portal):
    _events(portal, 120, user="ben")
    _events(portal, 30, user="cara", group="9C")
    client = portal.staff("alice")
    seen: list[str] = []
    url = "/console/history?user=ben"
    for _ in range(5):
        page = client.get(url)
        assert page.status_code == 200
        seen += re.findall(r"<code>(ben-\d{4}-\d+)</code>", page.text)
        found = re.search(r'<a href="([^"]+)" rel="next">Older</a>', page.text)
        if not found:
            break
        url = found.group(1).replace("&amp;", "&")
    assert len(seen) == 120 and len(set(seen)) == 120  # every one, once
    assert seen == sorted(seen, reverse=True)  # newest first
    assert "cara" not in "".join(seen)
    group = _text(client.get("/console/history?group=9C"))
    assert "cara" in group and "ben-" not in group


def test_what_pupils_search_for_is_not_in_the_console(portal):
    """Searches and risky page titles are for the safeguarding lead's pages only: IT Support
    and network managers see the blocks, never the terms."""
    portal.event(ref="searched1", kind="search", action="allow", search_term="secret term")
    portal.event(ref="risky1", kind="page_risk", action="allow")
    portal.event(ref="blocked1")
    client = portal.staff("alice")
    for url in ("/console/history", "/console/history?ref=searched1"):
        page = client.get(url).text
        assert "<code>searched1</code>" not in page and "<code>risky1</code>" not in page
        assert "secret term" not in page
    poll = client.get("/console/live/poll").text  # the live view's JSON
    assert "searched1" not in poll and "risky1" not in poll and "secret term" not in poll
    assert "<code>blocked1</code>" in client.get("/console/history").text


def test_history_filters_are_checked(portal):
    client = portal.staff("alice")
    assert "category: one of" in client.get("/console/history?category=nope").text
    wide = client.get("/console/history?host=*.test&since=2020-01-01T00:00").text
    assert "at most 31 days" in wide
    assert "letters, digits" in client.get("/console/history?user=a%20b").text


def test_history_finds_a_site_with_its_subdomains_and_a_reference(portal):
    portal.event(ref="sub1", host="m.social.test")
    portal.event(ref="top1", host="social.test")
    portal.event(ref="other", host="notsocial.test")
    client = portal.staff("alice")
    both = client.get("/console/history?host=*.social.test").text
    assert "sub1" in both and "top1" in both and "other" not in both
    exact = client.get("/console/history?host=social.test").text
    assert "top1" in exact and "sub1" not in exact
    assert "sub1" in client.get("/console/history?ref=sub1").text


def test_history_uses_indexes_not_a_scan(portal):
    """The filters the console offers each have an index (SQLite's plan says so)."""
    from sqlalchemy import select

    with portal.sessions() as s:
        for where in (
            EventFilter(user="ben"),
            EventFilter(group="9B"),
            EventFilter(category="social_media"),
            EventFilter(kind="block"),
            EventFilter(host="social.test"),
        ):
            statement = select(EventRow).where(*where.conditions()).order_by(EventRow.id.desc())
            sql = str(statement.compile(compile_kwargs={"literal_binds": True}))
            plan = " ".join(
                str(r) for r in s.connection().exec_driver_sql("EXPLAIN QUERY PLAN " + sql)
            )
            assert "USING INDEX" in plan or "USING COVERING INDEX" in plan, (where, plan)
        page = history(s, EventFilter(user="ben"))
        assert page.rows == []


# -- the live view --------------------------------------------------------------------------------


def test_the_live_view_polls_new_events_after_its_cursor(portal):
    portal.event(ref="before")
    client = portal.staff("alice")
    page = client.get("/console/live")
    assert page.headers["Content-Security-Policy"].startswith(
        "default-src 'none'; script-src 'self'"
    )
    cursor = re.search(r'data-after="(\d+)"', page.text).group(1)
    assert 'data-stream=""' in page.text  # not on the portal's own port: it polls
    portal.event(ref="after1")
    portal.event(ref="after2", user="cara", group="9C")
    answer = client.get(f"/console/live/poll?start={cursor}&after={cursor}")
    refs = [e["ref"] for e in answer.get_json()["events"]]
    assert refs == ["after1", "after2"]
    # The next poll again gives a row committed late (below what the page has), never one
    # that was there when the page was made.
    last = answer.get_json()["events"][-1]["id"]
    again = client.get(f"/console/live/poll?start={cursor}&after={last}").get_json()["events"]
    assert [e["ref"] for e in again] == ["after1", "after2"]  # the page skips ids it shows
    query = f"/console/live/poll?start={cursor}&after={cursor}&user=cara"
    only_cara = client.get(query).get_json()["events"]
    assert [e["ref"] for e in only_cara] == ["after2"]
    assert only_cara[0]["category_words"] == "social media"  # words, not internal names
    assert client.get("/console/static/live.js").status_code == 200


def test_the_live_cursor_catches_a_row_committed_late(portal):
    """Two writers on PostgreSQL can make id 5 visible after id 6: the cursor still gives it."""
    with portal.sessions() as s:
        for i in (1, 2, 3):
            s.add(EventRow(id=i, ref=f"r{i}", at=portal.clock(), kind="block", action="block"))
        s.commit()
        cursor = LiveCursor.start(s)
        assert cursor.take(s) == []
        s.add(EventRow(id=6, ref="r6", at=portal.clock(), kind="block", action="block"))
        s.commit()
        assert [r.ref for r in cursor.take(s)] == ["r6"]
        s.add(EventRow(id=5, ref="r5", at=portal.clock(), kind="block", action="block"))
        s.commit()
        assert [r.ref for r in cursor.take(s)] == ["r5"]
        assert cursor.take(s) == []


def test_events_follow_gives_new_events_as_they_come(portal):
    portal.event(ref="old")
    feed = follow_events(portal.sessions, kind="block", sleep=lambda _s: None, rounds=3)
    portal.event(ref="new1")
    portal.event(ref="new2", kind="allow", action="allow")
    got = [e["ref"] for e in feed]
    assert got == ["new1"]  # only new ones, only blocks


def test_the_stream_is_only_on_the_portals_own_port(portal, tmp_path):
    assert portal.staff("alice").get("/console/live/stream").status_code == 404
    admin = create_app(
        policy_getter=lambda: portal.policy,
        session_factory=portal.sessions,
        secret=b"s" * 32,
        data_dir=tmp_path / "var",
        identify=make_identify(lambda: portal.policy, trust_user_header=False),
        start_sender=False,
        admin=True,
    )
    client = admin.test_client()
    token = csrf(client, "/staff/login")
    client.post(
        "/staff/login", data={"username": "alice", "password": PASSWORD, "csrf_token": token}
    )
    page = client.get("/console/live")
    stream_url = re.search(r'data-stream="([^"]+)"', page.text).group(1)
    answer = client.get(stream_url, buffered=False)
    assert answer.mimetype == "text/event-stream"
    chunks = iter(answer.response)
    assert next(chunks).startswith(b"retry:")
    portal.event(ref="streamed")
    body = b""
    while b"streamed" not in body:
        body += next(chunks)
    answer.close()
    data = json.loads(body.split(b"data: ", 1)[1].split(b"\n", 1)[0])
    assert data["ref"] == "streamed" and data["host"] == "social.test"


# -- explain --------------------------------------------------------------------------------------


def test_explain_in_the_console_says_what_the_command_says(portal):
    import schoolgate.cli.main as cli

    out = io.StringIO()
    with redirect_stdout(out):
        code = cli.main(
            ["explain", "http://social.test/feed", "--user", "ben", "--at", "2026-11-24T10:30",
             "--config", str(portal.config), "--data-dir", str(portal.data_dir)]
        )  # fmt: skip
    assert code == 0
    page = portal.staff("alice").get(
        "/console/explain?url=http://social.test/feed&user=ben&at=2026-11-24T10:30"
    )
    shown = re.search(r'<pre class="explain" id="explain-text">(.*?)</pre>', page.text, re.S)
    import html

    assert html.unescape(shown.group(1)).splitlines() == out.getvalue().splitlines()
    assert "BLOCK  http://social.test/feed" in out.getvalue()
    asked = portal.staff("alice").get("/console/explain?url=http://social.test/")
    assert "say whose request it is" in asked.text


# -- reports --------------------------------------------------------------------------------------


def test_reports_are_listed_downloaded_and_made_on_request(portal):
    portal.event(ref="rep1")
    folder = portal.data_dir / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report-day-2026-11-23.html").write_text("<h1>Monday</h1>")
    (folder / "report-day-2026-11-23.csv").write_text("section,item\n")
    (folder / "secret.txt").write_text("not a report")
    client = portal.staff("sam")  # SLT
    listing = client.get("/console/reports").text
    assert "report-day-2026-11-23.html" in listing and "secret.txt" not in listing
    html_file = client.get("/console/reports/file/report-day-2026-11-23.html")
    assert html_file.status_code == 200 and b"Monday" in html_file.data
    csv_file = client.get("/console/reports/file/report-day-2026-11-23.csv")
    assert "attachment" in csv_file.headers["Content-Disposition"]
    for name in ("secret.txt", "..%2Fschoolgate.db", "report-x.html"):
        assert client.get(f"/console/reports/file/{name}").status_code == 404
    day = portal.clock().date().isoformat()
    made = client.get(f"/console/reports/build?period=day&date={day}")
    assert made.status_code == 200 and "social.test" in made.text
    as_csv = client.get(f"/console/reports/build?period=day&date={day}&format=csv")
    assert as_csv.mimetype == "text/csv" and "social.test" in as_csv.text


# -- supervision -----------------------------------------------------------------------------------


def _ban(portal: Portal, who: str) -> int:
    with portal.sessions() as s:
        row = add_ban(s, who, by="schoolgate", minutes=600, reason="web proxy", now=portal.clock())
        s.commit()
        return row.id


def _sessions(portal: Portal) -> list[SupervisionRow]:
    with portal.sessions() as s:
        return list(s.query(SupervisionRow).order_by(SupervisionRow.id))


def test_a_teacher_supervises_a_banned_pupil_of_their_group_only(portal):
    ben = _ban(portal, "ben")  # 9B in the roster
    cara = _ban(portal, "cara")  # 9C
    tina = portal.staff("tina")  # teaches 9B
    page = tina.get("/supervision/").text
    assert "ben" in page and "cara" not in page
    answer = post(tina, "/supervision/", f"/supervision/start/{cara}", minutes="30", reason="x")
    assert answer.status_code == 403 and "9C" in answer.text
    answer = post(tina, "/supervision/", f"/supervision/start/{ben}", minutes="30",
                  reason="Year 9 computing")  # fmt: skip
    assert answer.status_code == 303
    [running] = _sessions(portal)
    assert running.subject == "user:ben" and running.staff == "tina"
    assert running.ends - running.starts == timedelta(minutes=30)
    post(tina, "/supervision/", f"/supervision/{running.id}/extend", minutes="15")
    assert _sessions(portal)[0].ends - running.starts == timedelta(minutes=45)
    post(tina, "/supervision/", f"/supervision/{running.id}/end")
    assert _sessions(portal)[0].ended_at is not None
    with portal.sessions() as s:
        actions = [(a.actor, a.action) for a in s.query(BanAuditRow).order_by(BanAuditRow.id)]
        general = [a.action for a in s.query(AuditRow).filter(AuditRow.actor == "tina")]
    assert ("tina", "supervision.start") in actions
    assert ("tina", "supervision.extend") in actions
    assert ("tina", "supervision.end") in actions
    assert {"supervision.start", "supervision.extend", "supervision.end"} <= set(general)
    # Another teacher (9C) cannot end or extend it, SLT can supervise anyone.
    assert "cara" in portal.staff("hana").get("/supervision/").text
    slt = portal.staff("sam")
    assert post(slt, "/supervision/", f"/supervision/start/{cara}", minutes="30",
                reason="SLT office").status_code == 303  # fmt: skip


def test_a_device_ban_is_supervised_by_slt_or_it_only(portal):
    device = _ban(portal, "device:10.20.0.99")
    tina = portal.staff("tina")
    assert "10.20.0.99" not in tina.get("/supervision/").text
    refused = post(tina, "/supervision/", f"/supervision/start/{device}", minutes="30", reason="x")
    assert refused.status_code == 403
    alice = portal.staff("alice")
    assert "10.20.0.99" in alice.get("/supervision/").text
    assert post(alice, "/supervision/", f"/supervision/start/{device}", minutes="30",
                reason="library").status_code == 303  # fmt: skip


def test_supervision_needs_a_reason_and_a_ban(portal):
    ben = _ban(portal, "ben")
    tina = portal.staff("tina")
    assert post(tina, "/supervision/", f"/supervision/start/{ben}", minutes="30",
                reason="").status_code == 400  # fmt: skip
    assert post(tina, "/supervision/", f"/supervision/start/{ben}", minutes="9999",
                reason="x").status_code == 400  # fmt: skip
    assert post(tina, "/supervision/", "/supervision/start/999", minutes="30",
                reason="x").status_code == 404  # fmt: skip
    assert _sessions(portal) == []


# -- the teacher page and words -------------------------------------------------------------------


def test_the_teacher_page_does_not_choose_a_category_for_the_teacher(portal):
    tina = portal.staff("tina")
    page = tina.get("/teacher/").text
    start = page.index('action="/teacher/open"')
    form = page[start : page.index("</form>", start)]
    assert not re.search(r'<input[^>]*name="target_kind"[^>]*checked', form)
    category = re.search(r'<select aria-label="Category" name="category">(.*?)</select>', form)
    assert re.match(r'<option value="" selected>', category.group(1))
    # Submitted as it comes (nothing chosen): nothing is opened.
    answer = post(tina, "/teacher/", "/teacher/open", group="9B", category="", until="lesson")
    assert answer.status_code == 400
    chose_kind_only = post(tina, "/teacher/", "/teacher/open", group="9B",
                           target_kind="category", category="", until="lesson")  # fmt: skip
    assert chose_kind_only.status_code == 400 and "Choose which category" in chose_kind_only.text
    assert portal.exceptions() == []


def test_the_schools_name_is_on_every_portal_page(tmp_path, gateway_config):
    text = gateway_config.read_text() + "school_name: Hillside Academy\n"
    gateway_config.write_text(text)
    portal = Portal(tmp_path, gateway_config)
    for page in ("/request?url=http://social.test/", "/staff/login", "/mine"):
        answer = portal.client(user="ben").get(page)
        assert "<title>" in answer.text and "Hillside Academy web filter</title>" in answer.text
        assert "<strong>Hillside Academy web filter</strong>" in answer.text
    assert "Hillside Academy" in portal.staff("alice").get("/console/").text


# -- who is on which address --------------------------------------------------------------------


def test_who_is_on_which_address_is_read_from_the_bindings(portal):
    from schoolgate.storage import bindings as store

    at = portal.clock()
    with portal.sessions() as s:
        for address, user, device in (
            ("10.20.1.5", "pupil1", "laptop-7"),
            ("10.20.1.9", "cara", None),
        ):
            store.bind(
                s,
                address=address,
                source="radius",
                user=user,
                device=device,
                origin="radius 10.0.0.2 (wlc-1)",
                now=at - timedelta(minutes=5),
                expires_at=at + timedelta(hours=1),
                actor="radius",
            )
        store.end_bindings(s, address="10.20.1.9", reason="left the Wi-Fi", actor="radius", now=at)
        s.commit()
    alice = portal.staff("alice")
    rows = _text(alice.get("/console/who"))
    assert "10.20.1.5 pupil1 radius" in rows and "laptop-7" in rows
    assert "cara" not in rows  # ended: only with the history
    one = _text(alice.get("/console/who?q=pupil1"))
    assert "10.20.1.5" in one and "10.20.1.9" not in one
    ended = _text(alice.get("/console/who?q=10.20.1.9&history=1"))
    assert "cara" in ended and "left the Wi-Fi" in ended
    assert "Nobody is bound to 10.20.1.9." in _text(alice.get("/console/who?q=10.20.1.9"))
    page = alice.get("/console/who").text
    assert "<form" not in page.split('id="bindings"')[1]  # read only: nothing to end here
    assert portal.staff("tina").get("/console/who").status_code == 403
