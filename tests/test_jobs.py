"""Scheduled jobs on a controllable clock: each does its work at the right time, and the
schedule survives a restart (APScheduler's SQLAlchemy job store on the gateway's database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from schoolgate.core.config import load_policy
from schoolgate.core.configfile import ConfigError, Issues, MarkedDict, Section
from schoolgate.jobs.scheduler import FakeClock, Jobs, read_notifications
from schoolgate.storage.db import open_database
from schoolgate.storage.models import AuditRow, ExceptionRow, OutboxRow, PortalRequestRow

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)  # a Tuesday (the test timetable is UTC)

EXTRA = """
retention:
  decisions_days: 30
  purge_at: "02:30"
reports:
  email: [esafety@school.example]
  daily_at: "07:00"
  weekly_at: "07:30"
notifications:
  escalate_after_hours: 2
"""


@pytest.fixture
def school(gateway_config: Path, gateway_data_dir: Path):
    gateway_config.write_text(gateway_config.read_text() + EXTRA)
    policy = load_policy(gateway_config, data_dir=gateway_data_dir)
    sessions = open_database(policy.settings.database_url)
    return policy, sessions


def _jobs(policy, sessions, clock) -> Jobs:
    jobs = Jobs(lambda: policy, sessions=sessions, clock=clock)
    jobs.start(paused=True)
    return jobs


def _audit(sessions, action: str) -> list[AuditRow]:
    with sessions() as session:
        return list(session.scalars(select(AuditRow).where(AuditRow.action == action)))


def _exception(sessions, ends: datetime, kind: str = "exception") -> int:
    with sessions.begin() as session:
        row = ExceptionRow(
            kind=kind, scope="user", scope_value="ben", target_kind="host",
            target="social.test", starts=T0 - timedelta(hours=1), ends=ends,
            created_by="alice", reason="curriculum",
        )  # fmt: skip
        session.add(row)
        session.flush()
        return row.id


def test_schedule_from_config(school):
    policy, sessions = school
    jobs = _jobs(policy, sessions, FakeClock(T0))
    try:
        runs = jobs.next_runs()
        assert runs["expire"] == T0  # whole minutes
        assert runs["escalate"] == T0
        assert runs["report_day"] == datetime(2026, 11, 25, 7, 0, tzinfo=UTC)
        assert runs["report_week"] == datetime(2026, 11, 30, 7, 30, tzinfo=UTC)  # Monday
        assert runs["purge"] == datetime(2026, 11, 25, 2, 30, tzinfo=UTC)
        assert "lists" not in runs  # no sources configured
        assert sorted(jobs.run_due()) == ["escalate", "expire"]
        assert jobs.next_runs()["expire"] == T0 + timedelta(minutes=1)
        assert jobs.next_runs()["escalate"] == T0 + timedelta(minutes=5)
        assert jobs.run_due() == []  # nothing more due at T0
    finally:
        jobs.shutdown()


def test_expire_at_the_end_time_once(school):
    policy, sessions = school
    clock = FakeClock(T0)
    ends = T0 + timedelta(minutes=10, seconds=30)
    override = _exception(sessions, ends, kind="override")
    jobs = _jobs(policy, sessions, clock)
    try:
        clock.set(T0 + timedelta(minutes=1))
        assert "expire" in jobs.run_due()
        assert jobs.results["expire"]["ended"] == []
        clock.set(T0 + timedelta(minutes=10))
        jobs.run_due()
        # the job is brought forward to the end time itself, not the next minute
        assert jobs.next_runs()["expire"] == ends
        assert _audit(sessions, "override.expire") == []
        clock.set(ends)
        assert jobs.run_due() == ["expire"]
        assert jobs.results["expire"]["ended"] == [override]
        [row] = _audit(sessions, "override.expire")
        assert row.subject == f"exception #{override}" and row.at == ends
        clock.advance(minutes=5)
        jobs.run_due()
        assert len(_audit(sessions, "override.expire")) == 1  # audited once
    finally:
        jobs.shutdown()


def test_schedule_survives_a_restart_and_runs_missed_jobs_once(school):
    policy, sessions = school
    clock = FakeClock(T0)
    jobs = _jobs(policy, sessions, clock)
    purge_at = jobs.next_runs()["purge"]
    jobs.shutdown()  # the gateway stops at 10:00 ...

    # ... and comes back the next day at 03:00, after the purge time it missed
    clock2 = FakeClock(datetime(2026, 11, 25, 3, 0, tzinfo=UTC))
    sessions2 = open_database(policy.settings.database_url)
    jobs2 = _jobs(policy, sessions2, clock2)
    try:
        assert jobs2.next_runs()["purge"] == purge_at  # kept, not recomputed from 03:00
        ran = jobs2.run_due()
        assert ran.count("purge") == 1 and ran.count("expire") == 1  # coalesced, once each
        assert len(_audit(sessions2, "retention.purge")) == 1
        assert jobs2.next_runs()["purge"] == datetime(2026, 11, 26, 2, 30, tzinfo=UTC)
        assert jobs2.run_due() == []
    finally:
        jobs2.shutdown()
    # a third start keeps the moved-on schedule too
    jobs3 = _jobs(policy, open_database(policy.settings.database_url), clock2)
    try:
        assert jobs3.next_runs()["purge"] == datetime(2026, 11, 26, 2, 30, tzinfo=UTC)
    finally:
        jobs3.shutdown()


def test_reports_are_built_kept_and_emailed_on_schedule(school):
    policy, sessions = school
    clock = FakeClock(datetime(2026, 11, 30, 6, 59, tzinfo=UTC))  # Monday
    jobs = _jobs(policy, sessions, clock)
    try:
        assert "report_day" not in jobs.run_due()
        clock.set(datetime(2026, 11, 30, 7, 31, tzinfo=UTC))
        ran = jobs.run_due()
        assert "report_day" in ran and "report_week" in ran
        folder = Path(policy.settings.data_dir) / "reports"
        names = sorted(p.name for p in folder.iterdir())
        assert names == [
            "report-day-2026-11-29.csv",
            "report-day-2026-11-29.html",
            "report-week-2026-11-23.csv",
            "report-week-2026-11-23.html",
        ]
        with sessions() as session:
            outbox = OutboxRow.__table__
            mails = list(session.execute(select(outbox.c.recipient, outbox.c.subject)))
        assert ("esafety@school.example", "Online safety report: Sunday 29 November 2026") in mails
        assert len(mails) == 2
    finally:
        jobs.shutdown()


def test_escalation_to_slt_after_the_configured_time(school):
    policy, sessions = school
    with sessions.begin() as session:
        conn = session.connection()
        requests = PortalRequestRow.__table__
        created = T0 - timedelta(hours=1)
        base = dict(
            token="t", status="open", created_at=created, updated_at=created,
            requester_user="ben", requester_role="student", requester_site="main",
            url="https://social.test/", host="social.test", purpose="curriculum", message="",
        )  # fmt: skip
        conn.execute(requests.insert().values(ref="R1", kind="access", **base))
        conn.execute(requests.insert().values(ref="R2", kind="report", **base))
        conn.execute(
            requests.insert().values(ref="R3", kind="access", **{**base, "status": "rejected"})
        )
    clock = FakeClock(T0)
    jobs = _jobs(policy, sessions, clock)
    try:
        clock.set(T0 + timedelta(minutes=55))  # 1 h 55 min after the request
        jobs.run_due()
        assert jobs.results["escalate"]["escalated"] == []
        clock.set(T0 + timedelta(hours=1, minutes=5))
        jobs.run_due()
        assert jobs.results["escalate"]["escalated"] == ["R1"]
        with sessions() as session:
            conn = session.connection()
            requests = PortalRequestRow.__table__
            status = dict(conn.execute(select(requests.c.ref, requests.c.status)).all())
        assert status == {"R1": "escalated", "R2": "open", "R3": "rejected"}
        assert [r.subject for r in _audit(sessions, "request.escalate")] == ["request R1"]
        clock.advance(minutes=10)
        jobs.run_due()
        assert jobs.results["escalate"]["escalated"] == []
    finally:
        jobs.shutdown()


def test_a_failing_job_does_not_stop_the_others(school, monkeypatch):
    policy, sessions = school
    import schoolgate.jobs.scheduler as jobs_module

    def boom(ctx):
        raise RuntimeError("disk full")

    monkeypatch.setitem(jobs_module.JOBS, "escalate", boom)
    clock = FakeClock(T0)
    jobs = _jobs(policy, sessions, clock)
    try:
        clock.set(T0 + timedelta(minutes=5))
        assert set(jobs.run_due()) == {"expire", "escalate"}
        assert jobs.results["escalate"] == {"error": "disk full"}
        assert "ended" in jobs.results["expire"]
    finally:
        jobs.shutdown()


def test_notifications_validator_reports_file_line_and_field(tmp_path):
    from schoolgate.core.configfile import load_yaml

    path = tmp_path / "c.yaml"
    path.write_text(
        "notifications:\n  escalate_after_hours: soon\n  smtp:\n    host: mail\n"
        "    slt: [nobody]\n  webhok: x\n"
    )
    issues = Issues()
    root = Section(load_yaml(path, issues), file=path, path="", issues=issues)
    read_notifications(root.section("notifications"))
    text = "\n".join(str(i) for i in issues.items)
    assert f"{path}:2: notifications.escalate_after_hours: expected a number of hours" in text
    assert f"{path}:5: notifications.smtp.slt[0]: not an e-mail address" in text
    assert "notifications.webhok: unknown key (did you mean 'webhook'?)" in text
    with pytest.raises(ConfigError):
        issues.raise_if_any()
    assert read_notifications(None).escalate_after_hours == 24.0
    off = MarkedDict({"escalate_after_hours": False})
    assert (
        read_notifications(Section(off, file="x", path="n", issues=Issues())).escalate_after_hours
        is None
    )


def test_the_mail_relay_is_read_when_the_config_is_loaded(tmp_path):
    from schoolgate.core.configfile import load_yaml
    from schoolgate.core.notification_settings import SmtpSettings

    path = tmp_path / "c.yaml"
    relay = "notifications:\n  smtp:\n    host: mail\n    port: 2525\n    from: f@school.test\n"
    path.write_text(relay + "    timeout: soon\n")
    issues = Issues()
    root = Section(load_yaml(path, issues), file=path, path="", issues=issues)
    assert read_notifications(root.section("notifications")).smtp is None
    text = "\n".join(str(i) for i in issues.items)
    assert f"{path}:6: notifications.smtp.timeout: expected a number of seconds" in text

    path.write_text(relay + "    slt: [slt@school.test]\n    password: s3cret\n")
    issues = Issues()
    root = Section(load_yaml(path, issues), file=path, path="", issues=issues)
    smtp = read_notifications(root.section("notifications")).smtp
    assert not issues
    assert smtp == SmtpSettings(
        host="mail", port=2525, sender="f@school.test", slt=("slt@school.test",), password="s3cret"
    )
    assert "s3cret" not in repr(smtp)  # settings may be logged; the password never is


def test_the_jobs_use_the_settings_read_with_the_policy(school):
    import dataclasses

    from schoolgate.jobs.scheduler import job_schedules

    policy, _ = school
    settings = policy.settings
    assert settings.retention.decisions_days == 30
    assert settings.reports.email == ("esafety@school.example",)
    assert settings.notifications.escalate_after_hours == 2.0
    assert settings.list_updates.data_dir == Path(settings.data_dir)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.retention = settings.retention  # type: ignore[misc]
    schedules = job_schedules(policy)
    assert schedules["purge"].at == "02:30" and schedules["report_day"].at == "07:00"


def test_stopping_the_gateway_neither_skips_nor_moves_a_due_job(school):
    """Every job is due by the real clock (the schedule is in 2001): stopping must leave each
    stored run time as it was, for the next start to run the job, not move it on unrun."""
    policy, sessions = school
    clock = FakeClock(datetime(2001, 3, 5, 10, 0, tzinfo=UTC))
    jobs = _jobs(policy, sessions, clock)
    planned = jobs.next_runs()
    jobs.shutdown()
    again = _jobs(policy, open_database(policy.settings.database_url), clock)
    try:
        assert again.next_runs() == planned
        assert planned["purge"] == datetime(2001, 3, 6, 2, 30, tzinfo=UTC)
    finally:
        again.shutdown()
