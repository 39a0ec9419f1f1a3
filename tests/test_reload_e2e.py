"""A reload reaches every part of a running gateway (``schoolgate run`` in a subprocess, on
loopback): a changed job schedule reschedules the jobs, and a changed ``database.url`` moves the
decision log and the job lease to the new database."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import httpx
from gateway_process import free_port, run_cli, start_gateway, stop_gateway, wait_for


def _jobs(config: Path, data_dir: Path) -> dict[str, dict]:
    out = run_cli(config, data_dir, "jobs", "list", "--json")
    return {job["name"]: job for job in json.loads(out)}


def _stored_purge_at(config: Path, data_dir: Path) -> str | None:
    """The purge job's stored next run (HH:MM, UTC as the test timetable is), if stored."""
    purge = _jobs(config, data_dir).get("purge")
    if not purge or not purge["next_run_stored"]:
        return None
    return datetime.fromisoformat(purge["next_run"]).strftime("%H:%M")


def _stored_jobs(db: Path) -> set[str]:
    from schoolgate.jobs.scheduler import stored_next_runs
    from schoolgate.storage.db import database_exists, open_database

    url = f"sqlite:///{db}"
    if not database_exists(url):
        return set()
    try:
        return set(stored_next_runs(open_database(url)))
    except Exception:  # noqa: BLE001 - the gateway is still creating it
        return set()


def test_a_changed_schedule_reschedules_the_running_jobs(
    gateway_config: Path, gateway_data_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "gateway.log"
    proc = start_gateway(gateway_config, gateway_data_dir, port, log)
    try:
        assert wait_for(lambda: _stored_purge_at(gateway_config, gateway_data_dir)) == "02:30", (
            log.read_text(errors="replace")
        )
        assert "report_day" in _stored_jobs(gateway_data_dir / "schoolgate.db")
        text = gateway_config.read_text()
        gateway_config.write_text(
            text + '\nretention:\n  purge_at: "04:15"\nreports:\n  daily_at: false\n'
        )
        # The purge moves to its new time, and the daily report, switched off, is unscheduled,
        # in the running gateway (no restart).
        moved = wait_for(lambda: _stored_purge_at(gateway_config, gateway_data_dir) == "04:15")
        assert moved, log.read_text(errors="replace")
        jobs = _jobs(gateway_config, gateway_data_dir)
        assert "report_day" not in jobs and "report_week" in jobs
        assert wait_for(
            lambda: "report_day" not in _stored_jobs(gateway_data_dir / "schoolgate.db")
        ), log.read_text(errors="replace")
        assert proc.poll() is None
    finally:
        stop_gateway(proc)


def _urls(db: Path) -> set[str]:
    from schoolgate.storage.db import open_database
    from schoolgate.storage.events import list_events

    with open_database(f"sqlite:///{db}")() as session:
        return {e["url"] for e in list_events(session, limit=None)}


def _lease_holder(db: Path) -> str | None:
    from schoolgate.storage.db import database_exists, open_database
    from schoolgate.storage.leases import Lease

    url = f"sqlite:///{db}"
    if not database_exists(url):
        return None
    try:
        current = Lease(open_database(url), "jobs").current()
    except Exception:  # noqa: BLE001 - the gateway is still creating it
        return None
    return current[0] if current else None


def test_a_changed_database_url_moves_the_decision_log_and_the_job_lease(
    gateway_config: Path, gateway_data_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "gateway.log"
    first, second = gateway_data_dir / "schoolgate.db", gateway_data_dir / "second.db"
    proc = start_gateway(gateway_config, gateway_data_dir, port, log, quiet=False)
    proxy = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(proxy=proxy, timeout=10) as client:
            assert client.get("http://social.test/before").status_code == 403
        assert wait_for(lambda: _lease_holder(first)), log.read_text(errors="replace")
        text = gateway_config.read_text()
        gateway_config.write_text(text.replace("{data_dir}/schoolgate.db", "{data_dir}/second.db"))
        assert wait_for(
            lambda: (
                "recording decisions to sqlite:///" in log.read_text(errors="replace")
                and "second.db" in log.read_text(errors="replace")
            )
        ), log.read_text(errors="replace")
        with httpx.Client(proxy=proxy, timeout=10) as client:
            assert client.get("http://social.test/after").status_code == 403
        # The jobs follow: the lease and the schedule are now the new database's.
        assert wait_for(lambda: _lease_holder(second)), log.read_text(errors="replace")
        assert wait_for(lambda: "purge" in _stored_jobs(second)), log.read_text(errors="replace")
    finally:
        assert stop_gateway(proc) == 0, log.read_text(errors="replace")
    assert _urls(second) == {"http://social.test/after"}
    assert _urls(first) == {"http://social.test/before"}
