"""Retention: the config, the purge, and subject access / erasure end to end through the CLI
on a real SQLite file (with the safeguarding-evidence exemption)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from schoolgate.core.config import load_policy
from schoolgate.core.configfile import Issues, Section, load_yaml
from schoolgate.jobs.retention import RetentionSettings, purge, read_retention
from schoolgate.storage.db import open_database, utcnow
from schoolgate.storage.models import (
    AuditRow,
    BanRow,
    EventRow,
    ExceptionRow,
    PortalRequestRow,
    SupervisionRow,
)

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def _event(n: int, at: datetime, user: str | None = "ben", **kw) -> EventRow:
    values = dict(
        ref=f"ev{n}", at=at, kind="block", action="block", client_ip="10.20.1.5", user=user,
        role="student", group="9B", site="main", method="GET", host="social.test",
        url="https://social.test/feed", category="social_media", window="lesson",
        reason="social_media is blocked for student in lesson",
    )  # fmt: skip
    values.update(kw)
    return EventRow(**values)


def test_retention_validator_reports_every_mistake(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "retention:\n"
        "  decisions_days: ninety\n"
        "  safeguarding_days: 30\n"
        "  purge_at: '25:00'\n"
        "  audit_dayz: 5\n"
    )
    issues = Issues()
    root = Section(load_yaml(path, issues), file=path, path="", issues=issues)
    settings = read_retention(root.section("retention"))
    text = "\n".join(str(i) for i in issues.items)
    assert f"{path}:2: retention.decisions_days: expected a whole number" in text
    assert f"{path}:3: retention.safeguarding_days: safeguarding evidence must be kept" in text
    assert f"{path}:4: retention.purge_at: expected a time such as 02:30" in text
    assert f"{path}:5: retention.audit_dayz: unknown key (did you mean 'audit_days'?)" in text
    assert settings.decisions_days == 90  # the default stands in for a bad value
    assert read_retention(None) == RetentionSettings()


def test_purge_keeps_each_kind_for_its_own_period(tmp_path):
    sessions = open_database(f"sqlite:///{tmp_path}/db.sqlite")
    settings = RetentionSettings(decisions_days=30, safeguarding_days=365, exceptions_days=60,
                                 audit_days=400)  # fmt: skip
    old, older, ancient = (
        NOW - timedelta(days=31),
        NOW - timedelta(days=200),
        NOW - timedelta(days=366),
    )
    with sessions.begin() as s:
        s.add_all(
            [
                _event(1, NOW - timedelta(days=29)),  # recent: kept
                _event(2, old),  # an old block: purged
                _event(3, old, kind="circumvention", category=None),  # evidence: kept
                _event(4, older, category="illegal"),  # evidence: kept
                _event(5, ancient, kind="circumvention"),  # evidence past its period
                _event(6, old, user=None),
            ]
        )
        for i, ends in enumerate((NOW - timedelta(days=61), NOW - timedelta(days=59), None)):
            s.add(ExceptionRow(kind="exception", scope="user", scope_value="ben",
                               target_kind="host", target=f"h{i}.test", starts=ancient,
                               ends=ends))  # fmt: skip
        s.add(AuditRow(at=NOW - timedelta(days=401), actor="a", action="x", subject="s"))
        s.add(AuditRow(at=NOW - timedelta(days=10), actor="a", action="y", subject="s"))
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "report-day-old.html").write_text("x")
    (reports / "report-day-new.html").write_text("x")
    stamp = (NOW - timedelta(days=500)).timestamp()
    os.utime(reports / "report-day-old.html", (stamp, stamp))
    with sessions.begin() as s:
        result = purge(s, settings, now=NOW, reports_dir=reports)
    assert result.deleted == {
        "decision events": 2,
        "safeguarding events": 1,
        "exceptions": 1,
        "audit entries": 1,
        "report files": 1,
    }
    with sessions() as s:
        assert sorted(s.scalars(select(EventRow.ref))) == ["ev1", "ev3", "ev4"]
        assert sorted(s.scalars(select(ExceptionRow.target))) == ["h1.test", "h2.test"]
        [entry] = s.scalars(select(AuditRow).where(AuditRow.action == "retention.purge"))
        assert json.loads(entry.detail)["deleted"]["decision events"] == 2
    assert [p.name for p in reports.iterdir()] == ["report-day-new.html"]


# -- end to end through the CLI --------------------------------------------------------------
def test_searches_and_risk_matches_are_kept_for_their_own_periods(tmp_path):
    sessions = open_database(f"sqlite:///{tmp_path}/db.sqlite")
    settings = RetentionSettings(decisions_days=90, search_days=30, page_risk_days=365)
    search = dict(kind="search", action="allow", category=None, search_term="volcanoes")
    with sessions.begin() as s:
        s.add_all(
            [
                _event(1, NOW - timedelta(days=29), **search),  # recent: kept
                _event(2, NOW - timedelta(days=31), **search),  # an old plain search: purged
                _event(3, NOW - timedelta(days=200), **search, rule="kill myself"),  # a match
                _event(4, NOW - timedelta(days=366), **search, rule="kill myself"),  # too old
                _event(5, NOW - timedelta(days=200), kind="page_risk", category=None,
                       rule="kill myself"),  # a risky title: kept
                _event(6, NOW - timedelta(days=60)),  # a block: the log's own 90 days
            ]
        )  # fmt: skip
    with sessions.begin() as s:
        result = purge(s, settings, now=NOW)
    assert result.deleted == {"searches": 1, "risk matches": 1}
    with sessions() as s:
        assert sorted(s.scalars(select(EventRow.ref))) == ["ev1", "ev3", "ev5", "ev6"]


def _cli(config: Path, data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "schoolgate.cli",
            *args,
            "--config",
            str(config),
            "--data-dir",
            str(data_dir),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


@pytest.fixture
def seeded(gateway_config: Path, gateway_data_dir: Path):
    policy = load_policy(gateway_config, data_dir=gateway_data_dir)
    db_file = gateway_data_dir / "schoolgate.db"
    sessions = open_database(policy.settings.database_url)
    now = utcnow()
    with sessions.begin() as s:
        s.add_all(
            [
                _event(1, now - timedelta(hours=3)),
                _event(2, now - timedelta(hours=2), search_term="homework help"),
                _event(3, now - timedelta(hours=1), kind="circumvention", category=None,
                       host="vpn.test", detail=json.dumps({"detector": "listed_host"})),
                _event(4, now - timedelta(hours=1), ref="ev-reported"),
                _event(5, now, user="cara", group="9C"),
            ]
        )  # fmt: skip
        s.add(ExceptionRow(kind="exception", scope="user", scope_value="ben", target_kind="host",
                           target="wiki.test", starts=now - timedelta(days=2),
                           ends=now - timedelta(days=1), created_by="alice"))  # fmt: skip
        s.add(ExceptionRow(kind="exception", scope="user", scope_value="ben", target_kind="host",
                           target="maps.test", starts=now - timedelta(days=1),
                           ends=now + timedelta(days=1), created_by="alice"))  # fmt: skip
        s.add(AuditRow(at=now, actor="alice", action="exception.add", subject="exception #1",
                       detail="host wiki.test for user=ben"))  # fmt: skip
        s.add(BanRow(ref="B1", subject="user:ben", kind="ban", starts=now - timedelta(hours=1),
                     ends=now + timedelta(days=7), reason="VPN attempts", events='["ev3"]',
                     role="student"))  # fmt: skip
        s.add(BanRow(ref="B2", subject="user:cara", kind="lockout", starts=now,
                     ends=now + timedelta(minutes=5), reason="proxy"))  # fmt: skip
        s.flush()
        s.add(SupervisionRow(ref="S1", subject="user:ben", staff="mr.lee", starts=now,
                             ends=now + timedelta(hours=1), reason="ICT lesson"))  # fmt: skip
        conn = s.connection()
        requests = PortalRequestRow.__table__
        base = dict(token="secret-token", created_at=now, updated_at=now, requester_user="ben",
                    requester_role="student", requester_site="main", url="https://x.test/",
                    host="x.test", purpose="curriculum", message="for my project")  # fmt: skip
        conn.execute(requests.insert().values(ref="A1", kind="access", status="approved", **base))
        conn.execute(requests.insert().values(ref="A2", kind="access", status="open", **base))
        conn.execute(
            requests.insert().values(
                ref="C1", kind="report", status="open", **{**base, "event_ref": "ev-reported"}
            )
        )
    assert db_file.exists()
    return gateway_config, gateway_data_dir, sessions


def test_export_json_and_html_through_the_cli(seeded):
    config, data_dir, _ = seeded
    done = _cli(config, data_dir, "export", "--user", "Ben")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["subject"] == "ben"
    assert data["roster"]["group"] == "9B"
    assert [e["ref"] for e in data["events"]] == ["ev1", "ev2", "ev3", "ev-reported"]
    assert {e["target"] for e in data["exceptions"]} == {"wiki.test", "maps.test"}
    assert [a["subject"] for a in data["audit"]] == ["exception #1"]
    assert sorted(r["ref"] for r in data["requests_and_reports"]) == ["A1", "A2", "C1"]
    assert [b["ref"] for b in data["bans"]] == ["B1"]  # ben's ban, not cara's lockout
    assert [v["ref"] for v in data["supervision_sessions"]] == ["S1"]
    assert "secret-token" not in done.stdout  # credentials are never exported
    assert "cara" not in json.dumps(data["events"])
    html = _cli(config, data_dir, "export", "--user", "ben", "--html")
    assert html.returncode == 0, html.stderr
    assert "<h1>Data held about ben</h1>" in html.stdout
    assert "vpn.test" in html.stdout and "for my project" in html.stdout
    Path(ROOT / "test-artifacts").mkdir(exist_ok=True)
    (ROOT / "test-artifacts" / "export-ben.html").write_text(html.stdout)


def test_erase_through_the_cli_keeps_safeguarding_evidence(seeded):
    config, data_dir, sessions = seeded
    dry = _cli(config, data_dir, "erase", "--user", "ben")
    assert dry.returncode == 0, dry.stderr
    assert "Would erase for ben:" in dry.stdout and "Nothing was changed" in dry.stdout
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(EventRow)) == 5

    done = _cli(config, data_dir, "erase", "--user", "ben", "--yes", "--json", "--by", "dpo")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["applied"] is True
    assert plan["erased"] == {
        "events": 2,
        "exceptions for this person (ended)": 1,
        "access requests (closed)": 1,
    }
    kept = plan["kept"]
    assert kept["safeguarding events"]["count"] == 2  # the circumvention + the reported one
    assert "safeguarding evidence" in kept["safeguarding events"]["why"]
    assert kept["exceptions in force"]["count"] == 1
    assert kept["access requests (open)"]["count"] == 1
    assert kept["content reports"]["count"] == 1
    assert kept["bans"]["count"] == 1 and "safeguarding evidence" in kept["bans"]["why"]
    assert kept["supervision sessions"]["count"] == 1
    assert "audit trail" in kept["audit entries"]["why"]

    after = json.loads(_cli(config, data_dir, "export", "--user", "ben").stdout)
    assert [e["ref"] for e in after["events"]] == ["ev3", "ev-reported"]
    assert [e["target"] for e in after["exceptions"]] == ["maps.test"]
    assert sorted(r["ref"] for r in after["requests_and_reports"]) == ["A2", "C1"]
    with sessions() as s:
        assert s.scalar(select(func.count()).where(EventRow.user == "cara")) == 1  # untouched
        [entry] = s.scalars(select(AuditRow).where(AuditRow.action == "data.erase"))
        assert entry.actor == "dpo" and entry.subject == "user ben"


def test_purge_command(seeded):
    config, data_dir, sessions = seeded
    with sessions.begin() as s:
        s.add(_event(99, utcnow() - timedelta(days=400)))
    done = _cli(config, data_dir, "purge")
    assert done.returncode == 0, done.stderr
    assert "deleted 1 decision events" in done.stdout
    assert _cli(config, data_dir, "purge").stdout.strip() == "nothing past its retention period"
