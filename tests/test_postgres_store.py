"""schoolgate's database code on a real PostgreSQL server (``tests/pg_server.py``), each test on
a fresh database: what SQLite lets pass and PostgreSQL does not (the length of String columns,
a transaction aborted by a refused row, concurrent migrations, two gateways claiming
the same row, the job store), and the errors a school sees for a database URL that is wrong or
a server that is down."""

from __future__ import annotations

import secrets
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from gateway_process import ROOT, free_port
from pg_server import PostgresServer
from sqlalchemy import inspect, select, text

from schoolgate.core.config import load_policy
from schoolgate.jobs.retention import RetentionSettings, export_user, purge
from schoolgate.jobs.scheduler import FakeClock, Jobs
from schoolgate.reports.build import build_report, period_for
from schoolgate.storage.bans import add_ban, note_expired
from schoolgate.storage.db import MIGRATIONS_DIR, open_database
from schoolgate.storage.eventlog import EventLog, EventRecord, new_ref
from schoolgate.storage.events import list_events
from schoolgate.storage.exceptions import add_exception, exceptions_current, revoke_exception
from schoolgate.storage.models import AuditRow, EventRow, ExceptionRow

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


@pytest.fixture
def url(pg: PostgresServer) -> str:
    return pg.create_database(f"t_{secrets.token_hex(4)}")


@pytest.fixture
def sessions(url: str):
    factory = open_database(url)
    yield factory
    factory.kw["bind"].dispose()


@pytest.fixture
def policy(gateway_config: Path, gateway_data_dir: Path, url: str):
    text_ = gateway_config.read_text()
    gateway_config.write_text(text_.replace("sqlite:///{data_dir}/schoolgate.db", url, 1))
    return load_policy(gateway_config, data_dir=gateway_data_dir)


def _event(**values) -> EventRecord:
    event = {"ref": new_ref(), "at": T0, "kind": "block", "action": "block", "host": "x.test",
             "user": None, "client_ip": None, "category": None, "device": None}  # fmt: skip
    event.update(values)
    return EventRecord(**event)


def _row(**values) -> dict:
    """An event's row, inserted as it is."""
    return _event(**values).as_row()


def test_gateways_starting_together_migrate_once(url: str) -> None:
    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    errors: list[BaseException] = []
    factories = []

    def start() -> None:
        try:
            factories.append(open_database(url))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    with factories[0]() as session:
        assert session.scalar(text("SELECT version_num FROM alembic_version")) == head
        tables = set(inspect(session.connection()).get_table_names())
    assert {"events", "exceptions", "audit", "bans", "portal_requests"} <= tables
    for factory in factories:
        factory.kw["bind"].dispose()


def test_event_log_keeps_long_values_a_duplicate_ref_and_unstorable_text(sessions) -> None:
    taken = new_ref()
    with sessions.begin() as session:
        first = _row(ref=taken, host="first.test")
        session.execute(EventRow.__table__.insert(), [first])
    log = EventLog(sessions, flush_interval=0.05)
    log.start()
    long_device = "d" * 500  # String(200): PostgreSQL refuses it whole
    log.record(_event(device=long_device, host="long.test"))
    log.record(_event(ref=taken, host="second.test", at=T0 + timedelta(seconds=1)))
    log.record(_event(host="third.test", at=(T0 + timedelta(seconds=2)).replace(tzinfo=None)))
    # a search for "vape%00shop": PostgreSQL refuses NUL in text; the search is still logged
    log.record(_event(host="www.google.com", search_term="vape\x00shop"))
    # a Host header with a byte that is not UTF-8 (read as a surrogate): stored escaped
    log.record(_event(host="odd.test\udcff", url="http://odd.test\udcff/"))
    assert log.flush(30)
    log.close()
    assert log.rejected == 0 and log.written == 5
    with sessions() as session:
        rows = {r["host"]: r for r in list_events(session, limit=None)}
    assert rows["long.test"]["device"] == "d" * 200
    assert rows["first.test"]["ref"] == taken
    assert rows["second.test"]["ref"].startswith(taken + "-")
    assert rows["second.test"]["detail"]["original_ref"] == taken
    assert rows["third.test"]["at"] == (T0 + timedelta(seconds=2)).isoformat()
    assert rows["www.google.com"]["search_term"] == "vape\\x00shop"  # kept, escaped
    assert rows["www.google.com"]["detail"]["escaped"] == ["search_term"]
    assert rows["long.test"]["detail"]["overlong"]["device"]["value"] == long_device
    assert rows["odd.test\\xff"]["url"] == "http://odd.test\\xff/"


def test_exceptions_added_listed_and_revoked(sessions, policy) -> None:
    now = datetime.now(UTC)
    with sessions.begin() as session:
        row = add_exception(
            session, policy, scope="user", scope_value="ben", target_kind="host",
            target="Social.Test", starts=now, ends=now + timedelta(hours=1),
            created_by="it.support", reason="project",
        )  # fmt: skip
        exception_id = row.id
    with sessions() as session:
        [current] = exceptions_current(session, now)
    assert current.target == "social.test" and current.ends == now + timedelta(hours=1)
    with sessions.begin() as session:
        revoke_exception(session, exception_id, by="it.support", reason="done")
    with sessions() as session:
        assert exceptions_current(session, now) == []
        actions = session.scalars(select(AuditRow.action).order_by(AuditRow.id)).all()
    assert actions == ["exception.add", "exception.revoke"]


def test_an_ended_ban_is_noted_once_by_two_gateways_at_once(sessions) -> None:
    with sessions.begin() as session:
        add_ban(session, "device:10.20.1.5", by="mr.jones", minutes=5, reason="vpn",
                now=T0)  # fmt: skip
    later = T0 + timedelta(minutes=10)
    counts: list[int] = []
    first = sessions()
    counts.append(note_expired(first, later))  # holds the row until it commits

    def other_gateway() -> None:
        with sessions() as session:
            counts.append(note_expired(session, later))
            session.commit()

    thread = threading.Thread(target=other_gateway)
    thread.start()
    first.commit()
    first.close()
    thread.join(30)
    assert sorted(counts) == [0, 1]
    with sessions() as session:
        expired = session.scalars(select(AuditRow).where(AuditRow.action == "ban.expire")).all()
    assert len(expired) == 1


def test_purge_and_subject_access_on_postgres(sessions) -> None:
    old = T0 - timedelta(days=200)
    with sessions.begin() as session:
        session.execute(
            EventRow.__table__.insert(),
            [
                _row(at=old, user="ben"),  # no category (e.g. an error)
                _row(at=old, user="ben", category="social_media"),
                _row(at=old, user="ben", kind="circumvention", category="circumvention"),
                _row(at=T0, user="ben"),
            ],
        )
        session.add(
            ExceptionRow(
                scope="user",
                scope_value="ben",
                target_kind="host",
                target="old.test",
                starts=old,
                ends=old + timedelta(hours=1),
                created_by="it",
                reason="",
            )  # fmt: skip
        )
    with sessions.begin() as session:
        result = purge(session, RetentionSettings(), now=T0)
    assert result.deleted == {"decision events": 2}  # safeguarding evidence is kept longer
    with sessions() as session:
        data = export_user(session, "ben", now=T0)
    assert [e["kind"] for e in data["events"]] == ["circumvention", "block"]


def test_report_counts_on_postgres(sessions, policy) -> None:
    day = period_for("day", policy, on=T0.date())
    with sessions.begin() as session:
        session.execute(
            EventRow.__table__.insert(),
            [
                _row(user="ben", category="social_media", client_ip="10.0.0.1"),
                _row(user="ben", category="social_media", client_ip="10.0.0.1"),
                _row(user="cara", category="gaming", client_ip="10.0.0.2"),
                _row(kind="allow", action="allow"),
            ],
        )
    with sessions() as session:
        report = build_report(session, day, policy=policy, now=T0 + timedelta(days=1))
    assert report.totals["blocks"] == 3 and report.totals["allowed (logged)"] == 1
    assert report.totals["people blocked"] == 2 and report.totals["devices blocked"] == 2
    assert dict(report.blocks_by_category)["social_media"] == 2


def test_job_schedule_is_kept_in_postgres_across_a_restart(sessions, policy) -> None:
    jobs = Jobs(lambda: policy, sessions=sessions, clock=FakeClock(T0))
    jobs.start(paused=True)
    purge_at = jobs.next_runs()["purge"]
    jobs.shutdown()
    assert purge_at == datetime(2026, 11, 25, 2, 30, tzinfo=UTC)
    # back the next morning, after the purge time it missed: it runs once
    later = FakeClock(datetime(2026, 11, 25, 3, 0, tzinfo=UTC))
    again = Jobs(lambda: policy, sessions=open_database(sessions.kw["bind"].url), clock=later)
    again.start(paused=True)
    try:
        assert again.next_runs()["purge"] == purge_at
        assert again.run_due().count("purge") == 1
        assert again.next_runs()["purge"] == datetime(2026, 11, 26, 2, 30, tzinfo=UTC)
    finally:
        again.shutdown()
    with sessions() as session:
        purges = session.scalars(select(AuditRow).where(AuditRow.action == "retention.purge"))
        assert len(purges.all()) == 1


def _cli(config: Path, data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "schoolgate.cli", *args, "--config", str(config)]
        + ["--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_server_down_is_a_clear_error(gateway_config: Path, gateway_data_dir: Path) -> None:
    nobody = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/schoolgate"
    text_ = gateway_config.read_text()
    gateway_config.write_text(text_.replace("sqlite:///{data_dir}/schoolgate.db", nobody, 1))
    out = _cli(gateway_config, gateway_data_dir, "events")
    assert out.returncode == 1
    assert "cannot open the database postgresql+psycopg://postgres@127.0.0.1" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql+psycopg2://u@db/schoolgate", "pip install 'schoolgate[postgres]'"),
        ("oracle9://u@db/schoolgate", "unknown database kind 'oracle9'"),
    ],
)
def test_a_wrong_database_url_names_the_file_and_line(
    gateway_config: Path, gateway_data_dir: Path, url: str, message: str
) -> None:
    text_ = gateway_config.read_text()
    gateway_config.write_text(text_.replace("sqlite:///{data_dir}/schoolgate.db", url, 1))
    out = _cli(gateway_config, gateway_data_dir, "check-config")
    assert out.returncode == 1
    assert f"{gateway_config}:4" in out.stderr and "database.url" in out.stderr
    assert message in out.stderr
