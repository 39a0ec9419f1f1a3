"""Reports from a seeded database of a realistic school week (1,500 students, 150 staff), checked
figure by figure against counts made independently in Python; the HTML is looked at in Chromium."""

from __future__ import annotations

import csv
import io
import json
import random
import shutil
import subprocess
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert

from schoolgate.core.config import load_policy
from schoolgate.reports.build import build_report, period_for, report_as_dict
from schoolgate.reports.render import render_csv, render_html
from schoolgate.storage.db import open_database
from schoolgate.storage.models import EventRow, ExceptionRow, PortalRequestRow

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
MONDAY = datetime(2026, 11, 16, tzinfo=UTC)  # the test timetable is UTC
HOSTS = {
    "social_media": ["www.tiktok.com", "www.instagram.com", "www.snapchat.com", "discord.com"],
    "wikipedia": ["en.wikipedia.org"],
    "blogs": ["medium.com", "wordpress.com"],
    "circumvention": ["proxysite.com", "hide.me"],
}
WINDOWS = ["lesson"] * 6 + ["registration", "before_school", "after_school"]


def _seed_week(sessions) -> list[dict]:
    rng = random.Random(20261116)
    rows: list[dict] = []

    def add(at: datetime, **kw) -> None:
        base = dict(ref=f"e{len(rows)}", at=at, kind="block", action="block",
                    client_ip=f"10.20.{len(rows) % 250}.{len(rows) % 200 + 1}", site="main",
                    method="GET")  # fmt: skip
        base.update(kw)
        rows.append(base)

    students = [(f"s{i:04d}", f"{7 + i // 300}{'ABCDEFGHIJ'[i % 300 // 30]}") for i in range(1500)]
    staff = [f"t{i:03d}" for i in range(150)]
    for day in [*range(-7, -2), *range(0, 5), 7]:  # last week, this week, next Monday
        start = MONDAY + timedelta(days=day)
        for user, group in students:
            for _ in range(rng.choice([0, 0, 1, 1, 2, 3, 5])):
                cat = rng.choices(list(HOSTS), weights=[70, 15, 10, 5])[0]
                at = start + timedelta(hours=rng.randint(8, 15), minutes=rng.randint(0, 59))
                add(at, user=user, role="student", group=group, category=cat,
                    host=rng.choice(HOSTS[cat]), window=rng.choice(WINDOWS))  # fmt: skip
        for user in staff:
            if rng.random() < 0.25:
                add(start + timedelta(hours=11), user=user, role="staff", category="social_media",
                    host="www.facebook.com", window="lesson")  # fmt: skip
        for user, group in rng.sample(students, 8):
            add(start + timedelta(hours=13), kind="circumvention", user=user, role="student",
                group=group, host="vpn.example", category="circumvention",
                detail=json.dumps({"detector": rng.choice(["listed_host", "doh"])}))  # fmt: skip
    tue = MONDAY + timedelta(days=1, hours=20)
    # planted: three students a designated safeguarding lead should hear about
    for n in range(2):
        add(tue + timedelta(minutes=n), kind="allow", action="allow", user="s0007", role="student",
            group="7A", host="www.google.com", search_term="how to die painlessly")  # fmt: skip
    for n in range(6):
        add(tue + timedelta(minutes=n), kind="circumvention", user="s0042", role="student",
            group="7B", host="hide.me", detail='{"detector": "wrapped_site"}')  # fmt: skip
    for n in range(3):
        add(tue + timedelta(minutes=n), user="s0099", role="student", group="7D",
            category="illegal", host="bad.example", window="after_school")  # fmt: skip
    with sessions.begin() as s:
        s.execute(insert(EventRow), rows)
    return rows


def _seed_portal(sessions) -> None:
    with sessions.begin() as s:
        conn = s.connection()
        requests = PortalRequestRow.__table__
        t = MONDAY + timedelta(days=2, hours=9)
        for n, (kind, hours, status) in enumerate(
            [("access", 1, "approved"), ("access", 2, "rejected"), ("access", 5, "approved"),
             ("access", None, "open"), ("report", None, "open"), ("report", 3, "actioned")]
        ):  # fmt: skip
            conn.execute(
                requests.insert().values(
                    ref=f"R{n}",
                    token="x",
                    kind=kind,
                    status=status,
                    created_at=t,
                    updated_at=t,
                    requester_user="t001",
                    requester_role="staff",
                    requester_site="main",
                    url="https://www.bbc.co.uk/bitesize",
                    host="bbc.co.uk",
                    purpose="curriculum",
                    message="",
                    decided_at=t + timedelta(hours=hours) if hours else None,
                    decided_by="itsupport" if hours else None,
                )  # fmt: skip
            )
        s.add(ExceptionRow(kind="override", scope="group", scope_value="10C",
                           target_kind="category", target="social_media",
                           starts=MONDAY, ends=MONDAY + timedelta(days=30),
                           created_by="t010", reason="media studies"))  # fmt: skip
        s.add(ExceptionRow(kind="exception", scope="user", scope_value="s0001",
                           target_kind="host", target="old.example",
                           starts=MONDAY - timedelta(days=9),
                           ends=MONDAY - timedelta(days=8), created_by="it"))  # fmt: skip


@pytest.fixture(scope="module")
def week(tmp_path_factory):
    folder = tmp_path_factory.mktemp("school")
    shutil.copytree(ROOT / "tests" / "data" / "gateway", folder / "config")
    policy = load_policy(folder / "config" / "config.yaml", data_dir=folder / "var")
    sessions = open_database(policy.settings.database_url)
    rows = _seed_week(sessions)
    _seed_portal(sessions)
    period = period_for("week", policy, on=date(2026, 11, 18))
    with sessions() as s:
        report = build_report(s, period, policy=policy, now=MONDAY + timedelta(days=7, hours=7))
    inside = [r for r in rows if period.start <= r["at"] < period.end]
    return policy, sessions, report, inside, folder


def test_period():
    p = period_for("week", None, on=date(2026, 11, 18), tz=UTC)
    assert (p.start, p.end) == (MONDAY, MONDAY + timedelta(days=7))
    assert p.label == "week beginning Monday 16 November 2026"


def test_figures_match_an_independent_count(week):
    _policy, _sessions, report, inside, _ = week
    blocks = [r for r in inside if r["kind"] == "block"]
    assert report.totals["events"] == len(inside)
    assert report.totals["blocks"] == len(blocks) > 10_000
    assert report.totals["circumvention"] == sum(r["kind"] == "circumvention" for r in inside)
    assert report.totals["people blocked"] == len({r["user"] for r in blocks})
    assert dict(report.blocks_by_category) == Counter(r["category"] for r in blocks)
    assert dict(report.blocks_by_window) == Counter(r["window"] for r in blocks)
    assert dict(report.blocks_by_role) == Counter(r["role"] for r in blocks)
    assert report.blocks_by_role[0][0] == "student"
    groups = Counter(r.get("group") or "(none)" for r in blocks)
    assert report.blocks_by_group[:5] == sorted(groups.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
    assert len(report.blocks_by_day) == 7
    assert sum(n for _, n in report.blocks_by_day) == len(blocks)
    assert report.blocks_by_day[5:] == [("Sat 21 Nov", 0), ("Sun 22 Nov", 0)]
    hosts = Counter(r["host"] for r in blocks)
    top = report.top_hosts[0]
    assert (top["host"], top["blocks"]) == hosts.most_common(1)[0]
    assert top["people"] == len({r["user"] for r in blocks if r["host"] == top["host"]})


def test_circumvention_requests_reports_exceptions(week):
    _policy, _sessions, report, inside, _ = week
    circ = [r for r in inside if r["kind"] == "circumvention"]
    assert report.circumvention["count"] == len(circ) == 5 * 8 + 6
    assert ("wrapped_site", 6) in report.circumvention["by_detector"]
    assert report.circumvention["top_people"][0] == ("s0042", 6)
    assert report.requests.recorded and report.content_reports.recorded
    summary = report.requests.summary
    assert summary["received"] == 4 and summary["approved"] == 2 and summary["open"] == 1
    assert summary["median hours"] == 2.0 and summary["longest hours"] == 5.0
    assert summary["open and overdue"] == 1
    assert report.content_reports.summary == {"received": 2, "open": 1, "actioned": 1}
    assert [e["for"] for e in report.exceptions] == ["group=10C"]  # the ended one is not listed


def test_students_who_may_be_at_risk(week):
    _policy, _sessions, report, _inside, _ = week
    listed = {row["user"]: row for row in report.at_risk}
    assert {"s0007", "s0042", "s0099"} <= set(listed)
    assert "searches for 'how to die' x2" in listed["s0007"]["reasons"]
    assert "6 attempt(s) to get round the filter" in listed["s0042"]["reasons"]
    assert "3 block(s) in illegal" in listed["s0099"]["reasons"]
    assert [row["user"] for row in report.at_risk[:3]].count("s0007") == 1
    assert all(not row["user"].startswith("t") for row in report.at_risk)  # students only
    assert len(report.at_risk) == 3  # one attempt at a proxy is not enough to be listed


def test_csv(week):
    _policy, _sessions, report, inside, _ = week
    table = list(csv.DictReader(io.StringIO(render_csv(report))))
    blocks = {r["item"]: int(r["count"]) for r in table if r["section"] == "blocks by category"}
    assert blocks["social_media"] == sum(
        r["kind"] == "block" and r["category"] == "social_media" for r in inside
    )
    assert any(r["section"] == "may be at risk" and r["item"] == "s0007" for r in table)
    assert any(r["section"] == "access requests" and r["item"] == "median hours" for r in table)


@pytest.mark.e2e
def test_html_is_self_contained_and_looks_right_in_chromium(week, tmp_path):
    _policy, _sessions, report, _inside, _ = week
    html = render_html(report)
    assert "<svg" in html and "Students who may be at risk" in html
    for external in ("<script", "<link", "src=", "url(", "@import"):
        assert external not in html
    assert "http://www.w3.org/2000/svg" in html  # the only URL: the SVG namespace
    ARTIFACTS.mkdir(exist_ok=True)
    page = ARTIFACTS / "report-week.html"
    page.write_text(html, encoding="utf-8")
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is not installed")
    shot = ARTIFACTS / "report-week.png"
    shot.unlink(missing_ok=True)
    subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'chromium'}",
            f"--screenshot={shot}",
            "--window-size=1200,2000",
            page.as_uri(),
        ],  # fmt: skip
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert shot.exists() and shot.stat().st_size > 20_000


def test_empty_database_gives_an_honest_empty_report(tmp_path):
    sessions = open_database(f"sqlite:///{tmp_path}/empty.db")
    period = period_for("day", None, on=date(2026, 11, 24), tz=UTC)
    with sessions() as s:
        report = build_report(s, period)
    assert report.empty and report.totals["blocks"] == 0 and report.at_risk == []
    html = render_html(report)
    assert "No events were recorded in this period" in html
    assert "No exceptions in force." in html
    data = report_as_dict(report)
    assert data["top_hosts"] == [] and data["requests"]["recorded"] is True
    assert "totals,blocks,0," in render_csv(report)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "report-empty.html").write_text(html, encoding="utf-8")


def test_report_command(week, capsys):
    from schoolgate.cli.main import main

    policy, _sessions, _report, _inside, folder = week
    common = ["--config", str(folder / "config" / "config.yaml"), "--data-dir", str(folder / "var")]
    assert main(["report", "--period", "week", "--date", "2026-11-18", "--out",
                 str(folder / "out"), *common]) == 0  # fmt: skip
    [path] = capsys.readouterr().out.split()
    assert Path(path).name == "report-week-2026-11-16.html"
    assert "Top blocked sites" in Path(path).read_text()
    assert main(["report", "--period", "term", "--format", "csv", *common]) == 0
    assert capsys.readouterr().out.startswith("section,item,count,detail\nperiod,term,")
    assert main(["report", "--period", "day", "--date", "18/11/2026", *common]) == 1
