"""``/metrics`` in Prometheus text format (``prometheus-client``), on the portal's own port.

**Several workers (and several gateways on one database) are aggregated through the database,
not with prometheus-client's multiprocess mode.** Each process writes its counters into its
heartbeat row every few seconds (:mod:`schoolgate.gateway.health`); the process that serves
``/metrics`` (worker 1, which holds the portal's port) reads every row and exposes one sample
per process, labelled ``gateway`` (host:port) and ``worker``. Why: the workers are separate
processes started by the supervisor and only one can serve the port; multiprocess mode would
need a shared folder set up before the first import, clean-up of dead workers' files, and would
still not show the other gateways of a trust. Figures from the database are at most one
heartbeat interval old (10 s by default), well within a scrape interval; this process's own
figures are always current, and are shown even when the database is down.

Each scrape builds the samples afresh with a custom collector in a registry of its own (no
global state), and reads the school's state: open requests, the outbox, bans in force, list
sizes and freshness, each job's last run, and what is switched off.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger(__name__)

PROCESS_LABELS = ("gateway", "worker")


def _labels(host: str, port: int, worker: int) -> list[str]:
    return [f"{host}:{port}", str(worker)]


class SchoolgateCollector:
    """One scrape's samples (see the module docstring)."""

    def __init__(self, health: Any, now: datetime | None = None) -> None:
        self.health = health
        self.now = now or datetime.now(UTC)

    def collect(self):
        health = self.health
        now = self.now
        sessions = health.recorder.sessions
        ready, checks = health.readiness()
        up = GaugeMetricFamily(
            "schoolgate_ready", "1 when this gateway is ready (/healthz), else 0"
        )
        up.add_metric([], 1.0 if ready else 0.0)
        yield up
        database_ok = checks.get("database", {}).get("ok", False)
        db_up = GaugeMetricFamily("schoolgate_database_up", "1 when the database takes writes")
        db_up.add_metric([], 1.0 if database_ok else 0.0)
        yield db_up
        rows = []
        if sessions is not None and database_ok:
            rows = self._rows(sessions)
        yield from self._processes(rows, now)
        if sessions is not None and database_ok:
            try:
                with sessions() as session:
                    yield from _school(session, health.holder.policy, now)
            except SQLAlchemyError as exc:
                log.warning("metrics: cannot read the school's state: %s", exc)
        policy = health.holder.policy
        if policy is not None:
            yield from _lists(policy, now)

    def _rows(self, sessions: Any) -> list:
        from schoolgate.storage.heartbeats import recent_beats

        try:
            with sessions() as session:
                rows = recent_beats(session, self.now)
                session.expunge_all()
                return rows
        except SQLAlchemyError as exc:
            log.warning("metrics: cannot read the heartbeats: %s", exc)
            return []

    def _processes(self, rows: list, now: datetime):
        mine = self.health.snapshot(now)
        families = {
            "up": GaugeMetricFamily(
                "schoolgate_gateway_up",
                "1 while a gateway process is seen (its heartbeat is recent), else 0",
                labels=PROCESS_LABELS,
            ),
            "seen": GaugeMetricFamily(
                "schoolgate_gateway_last_seen_timestamp_seconds",
                "When a gateway process last reported (Unix time)",
                labels=PROCESS_LABELS,
            ),
            "requests": CounterMetricFamily(
                "schoolgate_requests",
                "Requests decided by a gateway process since it started",
                labels=PROCESS_LABELS,
            ),
            "blocks": CounterMetricFamily(
                "schoolgate_blocks",
                "Requests blocked by a gateway process since it started",
                labels=PROCESS_LABELS,
            ),
            "backlog": GaugeMetricFamily(
                "schoolgate_event_backlog",
                "Events waiting to be written to the decision log",
                labels=PROCESS_LABELS,
            ),
            "written": CounterMetricFamily(
                "schoolgate_events_written",
                "Events written to the decision log since the process started",
                labels=PROCESS_LABELS,
            ),
            "rejected": CounterMetricFamily(
                "schoolgate_events_rejected",
                "Events the database refused (kept in the spill file or the error log)",
                labels=PROCESS_LABELS,
            ),
            "reload": GaugeMetricFamily(
                "schoolgate_policy_reload_failing",
                "1 when the last reload of the config was refused (the last good policy stays)",
                labels=PROCESS_LABELS,
            ),
        }
        for row in rows:
            if row.instance == mine.instance:
                continue  # this process's own figures are the live ones below
            labels = _labels(row.host, row.port, row.worker)
            _add(families, labels, row, up=row.is_up(now), seen=row.seen_at)
        _add(families, _labels(mine.host, mine.port, mine.worker), mine, up=True, seen=now)
        yield from families.values()


def _add(families: dict, labels: list[str], beat: Any, *, up: bool, seen: datetime) -> None:
    """One process's samples, from its heartbeat row or its live :class:`Beat`."""
    families["up"].add_metric(labels, 1.0 if up else 0.0)
    families["seen"].add_metric(labels, seen.timestamp())
    families["requests"].add_metric(labels, float(beat.requests))
    families["blocks"].add_metric(labels, float(beat.blocks))
    families["backlog"].add_metric(labels, float(beat.events_pending))
    families["written"].add_metric(labels, float(beat.events_written))
    families["rejected"].add_metric(labels, float(beat.events_rejected))
    families["reload"].add_metric(labels, 1.0 if beat.policy_error else 0.0)


def _school(session: Any, policy: Any, now: datetime):
    from schoolgate.portal.services.console import school_state

    state = school_state(session, policy, now)
    requests = GaugeMetricFamily(
        "schoolgate_portal_requests_open",
        "Access requests and content reports waiting for a decision",
        labels=("kind", "status"),
    )
    for (kind, status), count in sorted(state["requests"].items()):
        requests.add_metric([kind, status], float(count))
    yield requests
    outbox = GaugeMetricFamily(
        "schoolgate_outbox_messages",
        "Notifications not sent yet (failing: tried at least once)",
        labels=("state",),
    )
    outbox.add_metric(["waiting"], float(state["outbox"]["waiting"]))
    outbox.add_metric(["failing"], float(state["outbox"]["failing"]))
    yield outbox
    oldest = GaugeMetricFamily(
        "schoolgate_outbox_oldest_seconds", "Age of the oldest notification not sent yet"
    )
    oldest.add_metric([], float(state["outbox"]["oldest_seconds"]))
    yield oldest
    bans = GaugeMetricFamily(
        "schoolgate_bans_in_force", "Bans and lockouts in force", labels=("kind",)
    )
    for kind in ("ban", "lockout"):
        bans.add_metric([kind], float(state["bans"].get(kind, 0)))
    yield bans
    supervised = GaugeMetricFamily(
        "schoolgate_supervision_sessions", "Supervision sessions running now"
    )
    supervised.add_metric([], float(state["supervisions"]))
    yield supervised
    jobs = GaugeMetricFamily(
        "schoolgate_job_last_run_timestamp_seconds",
        "When each scheduled job last ran (Unix time), by how it went",
        labels=("job", "outcome"),
    )
    for name, run in sorted(state["jobs"].items()):
        jobs.add_metric([name, run.outcome], run.started_at.timestamp())
    yield jobs
    off = GaugeMetricFamily(
        "schoolgate_switched_off",
        "1 for each thing switched off in the setup (see the console or check-config)",
        labels=("what",),
    )
    for item in state["switched_off"]:
        off.add_metric([item.key], 1.0)
    yield off


def _lists(policy: Any, now: datetime):
    from schoolgate.portal.services.console import list_freshness

    entries = GaugeMetricFamily(
        "schoolgate_list_entries", "Entries in force per category", labels=("category",)
    )
    updated = GaugeMetricFamily(
        "schoolgate_list_updated_timestamp_seconds",
        "When a category's newest list file changed (Unix time)",
        labels=("category",),
    )
    for row in list_freshness(policy, now):
        entries.add_metric([row["category"]], float(row["entries"]))
        if row["updated"] is not None:
            updated.add_metric([row["category"]], row["updated"].timestamp())
    yield entries
    yield updated


def metrics_text(health: Any) -> tuple[bytes, str]:
    """The exposition and its content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SchoolgateCollector(health))
    return generate_latest(registry), CONTENT_TYPE_LATEST


__all__ = ["SchoolgateCollector", "metrics_text"]
