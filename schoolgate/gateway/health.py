"""The gateway's own health: a heartbeat in the database, ``/healthz`` and ``/metrics``.

:class:`HealthAddon` counts the requests this process decides and the blocks among them (two
integer increments a request, on the event loop), notices whether the event loop is turning
(a task that ticks every second), and from a background thread (never the event loop) writes
this process's heartbeat row (:mod:`schoolgate.storage.heartbeats`) every
``schoolgate_heartbeat_interval`` seconds. At its first beat it logs what is switched off
(:mod:`schoolgate.core.switched_off`).

:func:`ops_app` is the WSGI app of ``/healthz`` and ``/metrics``, served only on the portal's
own port (``schoolgate run --portal-port``), never at the portal host through the proxy (a
pupil's device has no business reading the gateway's figures):

* ``/healthz`` (also ``/healthz/ready``): **readiness**, 200 or 503 with a JSON body naming
  each check: the policy is loaded; the database takes a write (for SQLite, a write lock got
  within a second: another program holding the database locked makes the gateway unready, and
  ready again once it lets go); the decision log's backlog is under
  ``schoolgate_health_max_backlog`` (this process, and the other workers by their heartbeats);
  the event loop is turning.
* ``/healthz/live``: **liveness**, 200 while the event loop turns (a stuck loop is 503).
* ``/metrics``: Prometheus text (:mod:`schoolgate.gateway.metrics`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from schoolgate import __version__
from schoolgate.gateway.background import Periodic
from schoolgate.gateway.flowmark import flow_mark, hello_mark

log = logging.getLogger(__name__)

INTERVAL_OPTION = "schoolgate_heartbeat_interval"
BACKLOG_OPTION = "schoolgate_health_max_backlog"
WORKER_OPTION = "schoolgate_worker"
LOOP_STALLED_AFTER = 30.0  # seconds without a tick: the event loop is stuck
PROBE_TIMEOUT = 1.0  # seconds to wait for the database's write lock
MINUTES_KEPT = 60


def _utcnow() -> datetime:
    return datetime.now(UTC)


class MinuteSeries:
    """Requests and blocks per minute of the last hour, from running totals sampled now and
    then (each sample's increase goes to the minute it was taken in)."""

    def __init__(self, keep: int = MINUTES_KEPT) -> None:
        self.keep = keep
        self._minutes: deque[list[int]] = deque()
        self._last: tuple[int, int] | None = None

    def sample(self, at: datetime, requests: int, blocks: int) -> None:
        minute = int(at.timestamp()) // 60
        if self._last is None:
            self._last = (requests, blocks)
        added = (max(0, requests - self._last[0]), max(0, blocks - self._last[1]))
        self._last = (requests, blocks)
        if self._minutes and self._minutes[-1][0] == minute:
            self._minutes[-1][1] += added[0]
            self._minutes[-1][2] += added[1]
        else:
            self._minutes.append([minute, added[0], added[1]])
        while self._minutes and self._minutes[0][0] <= minute - self.keep:
            self._minutes.popleft()

    def as_list(self) -> list[tuple[int, int, int]]:
        return [(m, r, b) for m, r, b in self._minutes]


def probe_database(engine: Any, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None when the database takes a write now; else why not (``locked``, or the error).
    SQLite: a write lock (``BEGIN IMMEDIATE``) got within ``timeout``, then given back.
    PostgreSQL: the lock an insert into ``events`` takes, got within ``timeout``."""
    try:
        if engine.dialect.name == "sqlite":
            raw = engine.raw_connection()
            try:
                db = raw.driver_connection
                db.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
                try:
                    db.execute("BEGIN IMMEDIATE")
                    db.execute("ROLLBACK")
                finally:
                    db.execute("PRAGMA busy_timeout = 10000")
            finally:
                raw.close()
            return None
        with engine.connect() as connection:
            transaction = connection.begin()
            try:
                ms = int(timeout * 1000)
                connection.exec_driver_sql(f"SET LOCAL lock_timeout = {ms}")
                connection.exec_driver_sql(f"SET LOCAL statement_timeout = {ms * 2}")
                connection.exec_driver_sql("LOCK TABLE events IN ROW EXCLUSIVE MODE")
            finally:
                transaction.rollback()
        return None
    except (SQLAlchemyError, OSError) as exc:
        text = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:300]
        return "locked" if "lock" in text.lower() else text
    except Exception as exc:  # noqa: BLE001 - sqlite3's own errors through the raw connection
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        return "locked" if "lock" in text.lower() else text


class HealthAddon:
    """Counts, the event loop's pulse, the heartbeat thread; see the module docstring."""

    name = "schoolgate_health"

    def __init__(self, holder: Any, recorder: Any, jobs: Any = None, portal: Any = None) -> None:
        self.holder = holder
        self.recorder = recorder
        self.jobs = jobs
        self.portal = portal
        self.requests = 0
        self.blocks = 0
        self.started_at = _utcnow()
        self.loop_seen: float | None = None  # time.monotonic() of the event loop's last tick
        self.series = MinuteSeries()
        self.host = socket.gethostname()
        self.port = 0
        self.worker = 0
        self.interval = 10.0
        self.max_backlog = 10_000
        self.policy_loaded_at: datetime | None = None
        holder.subscribe(self)
        self._beats = 0
        self._lock = threading.Lock()
        self._ticker: asyncio.Task | None = None
        self._thread = Periodic("schoolgate-heartbeat", self._beat, first=True)

    # -- mitmproxy ------------------------------------------------------------------------------
    def load(self, loader: Any) -> None:
        loader.add_option(
            INTERVAL_OPTION,
            float,
            10.0,
            "Seconds between this process's heartbeats in the database (the console's health "
            "view, /healthz and /metrics read them).",
        )
        loader.add_option(
            BACKLOG_OPTION,
            int,
            10_000,
            "Events waiting to be written to the decision log above which /healthz says the "
            "gateway is not ready.",
        )
        loader.add_option(
            WORKER_OPTION,
            int,
            0,
            "Which worker of `--workers N` this process is (0: the only one).",
        )

    def configure(self, updated: Any) -> None:
        from mitmproxy import ctx, exceptions

        if INTERVAL_OPTION in updated:
            value = ctx.options.schoolgate_heartbeat_interval
            if value <= 0:
                raise exceptions.OptionsError(f"{INTERVAL_OPTION} must be positive, got {value}")
            self.interval = float(value)
        if BACKLOG_OPTION in updated:
            if ctx.options.schoolgate_health_max_backlog < 1:
                raise exceptions.OptionsError(f"{BACKLOG_OPTION} must be at least 1")
            self.max_backlog = ctx.options.schoolgate_health_max_backlog
        if WORKER_OPTION in updated:
            self.worker = max(0, ctx.options.schoolgate_worker)
        if "listen_port" in updated:
            self.port = int(ctx.options.listen_port or 0)

    def running(self) -> None:
        self.loop_seen = time.monotonic()
        loop = asyncio.get_running_loop()
        if self._ticker is None:
            self._ticker = loop.create_task(self._tick())
        self._thread.start(self.interval)

    async def _tick(self) -> None:
        while True:
            self.loop_seen = time.monotonic()
            await asyncio.sleep(1.0)

    def done(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        self._thread.stop(5)
        self._beat(stopped=True)  # the console says "stopped", not "not seen"

    # Counting: the last part of the chain, so the decision is made (and any block set).
    def request(self, flow: Any) -> None:
        self.requests += 1
        if flow.response is not None and _blocked(flow.metadata):
            self.blocks += 1

    def http_connect(self, flow: Any) -> None:
        self.requests += 1
        if flow.response is not None and _blocked(flow.metadata):
            self.blocks += 1

    def tls_clienthello(self, data: Any) -> None:
        mark = hello_mark(data)
        if mark is not None and mark.blocked:
            self.blocks += 1

    # -- the heartbeat (background thread) -------------------------------------------------
    def _beat(self, *, stopped: bool = False) -> None:
        sessions = self.recorder.sessions
        if sessions is None:
            return
        from schoolgate.storage.heartbeats import record_beat

        now = _utcnow()
        with self._lock:
            self.series.sample(now, self.requests, self.blocks)
            beat = self.snapshot(now, stopped=stopped)
            self._beats += 1
            first = self._beats == 1
        record_beat(sessions, beat, prune=first)
        if first and not stopped:
            self._log_switched_off(sessions)

    def policy_changed(self, old: Any, new: Any) -> None:
        """A policy was loaded: its time goes into the next heartbeat."""
        self.policy_loaded_at = _utcnow()

    def snapshot(self, now: datetime | None = None, *, stopped: bool = False):
        """This process's heartbeat now (what :func:`record_beat` stores)."""
        from schoolgate.storage.heartbeats import Beat

        now = now or _utcnow()
        eventlog = self.recorder.eventlog
        error = self.holder.last_error
        return Beat(
            host=self.host,
            port=self.port,
            worker=self.worker,
            pid=os.getpid(),
            started_at=self.started_at,
            seen_at=now,
            interval=self.interval,
            version=__version__,
            stopped=stopped,
            policy_loaded_at=self.policy_loaded_at if self.holder.policy is not None else None,
            policy_error=f"reload refused: {error}" if error is not None else None,
            runs_jobs=bool(self.jobs is not None and getattr(self.jobs, "jobs", None)),
            sends_mail=self._sends_mail(),
            requests=self.requests,
            blocks=self.blocks,
            events_pending=eventlog.pending if eventlog is not None else 0,
            events_written=eventlog.written if eventlog is not None else 0,
            events_rejected=eventlog.rejected if eventlog is not None else 0,
            events_error=_failing(eventlog),
            minutes=self.series.as_list(),
        )

    def _sends_mail(self) -> bool:
        """Whether this process sends the portal's notifications (and there is somewhere to
        send them)."""
        app = getattr(self.portal, "app", None)
        policy = self.holder.policy
        if app is None or policy is None:
            return False
        notifications = policy.settings.notifications
        if not (notifications.smtp or notifications.webhook):
            return False
        sender = app.extensions["schoolgate_portal"].sender
        thread = getattr(sender, "_thread", None)
        return bool(thread is not None and thread.is_alive())

    def _log_switched_off(self, sessions: Any) -> None:
        from schoolgate.portal.services.console import read_switched_off

        policy = self.holder.policy
        if policy is None or self.worker > 1:  # once per gateway, not once per worker
            return
        for item in read_switched_off(policy, sessions):
            log.warning("schoolgate: %s %s", item.what, item.fix)

    # -- readiness and liveness (any thread) ------------------------------------------------
    def loop_turning(self) -> bool:
        seen = self.loop_seen
        return seen is not None and time.monotonic() - seen < LOOP_STALLED_AFTER

    def checks(self) -> dict[str, dict[str, Any]]:
        """Each readiness check: ``{"ok": bool, "detail": str}``."""
        out: dict[str, dict[str, Any]] = {}
        policy = self.holder.policy
        error = self.holder.last_error
        if policy is None:
            out["policy"] = {"ok": False, "detail": "no policy loaded"}
        else:
            detail = f"loaded from {self.holder.config_path}"
            if error is not None:
                detail += f"; the last reload was refused ({len(error.issues)} error(s)): the " \
                    "last good policy is in force"  # fmt: skip
            out["policy"] = {"ok": True, "detail": detail}
        sessions = self.recorder.sessions
        engine = (getattr(sessions, "kw", None) or {}).get("bind") if sessions else None
        problem = probe_database(engine) if engine is not None else "no database open"
        if problem is None:
            out["database"] = {"ok": True, "detail": "takes writes"}
        elif problem == "locked":
            out["database"] = {
                "ok": False,
                "detail": "locked by another program: the decision log cannot be written",
            }
        else:
            out["database"] = {"ok": False, "detail": f"unreachable: {problem}"}
        out["event_backlog"] = self._backlog_check(sessions if problem is None else None)
        turning = self.loop_turning()
        out["event_loop"] = {
            "ok": turning,
            "detail": "turning" if turning else f"no tick for {LOOP_STALLED_AFTER:.0f} s or more",
        }
        return out

    def _backlog_check(self, sessions: Any) -> dict[str, Any]:
        eventlog = self.recorder.eventlog
        mine = eventlog.pending if eventlog is not None else 0
        worst, where = mine, "this process"
        if sessions is not None:
            worst, where = self._others_backlog(sessions, worst, where)
        ok = worst <= self.max_backlog
        detail = f"{worst} event(s) waiting ({where}); the bound is {self.max_backlog}"
        failing = _failing(eventlog)
        if failing:
            detail += f"; writing fails: {failing}"
        return {"ok": ok, "detail": detail, "pending": mine}

    def _others_backlog(self, sessions: Any, worst: int, where: str) -> tuple[int, str]:
        from schoolgate.storage.heartbeats import instance_key, recent_beats

        me = instance_key(self.host, self.port, self.worker)
        now = _utcnow()
        try:
            with sessions() as session:
                for row in recent_beats(session, now):
                    same = row.host == self.host and row.port == self.port
                    if row.instance == me or not same or not row.is_up(now):
                        continue
                    if row.events_pending > worst:
                        worst, where = row.events_pending, f"worker {row.worker}"
        except SQLAlchemyError:
            pass
        return worst, where

    def readiness(self) -> tuple[bool, dict[str, dict[str, Any]]]:
        checks = self.checks()
        return all(c["ok"] for c in checks.values()), checks


def _blocked(metadata: dict[str, Any]) -> bool:
    mark = flow_mark(metadata)
    return mark is not None and mark.blocked


def _failing(eventlog: Any) -> str | None:
    """The decision log's last error while it is failing (events waiting and an error)."""
    if eventlog is None or not getattr(eventlog, "last_error", None):
        return None
    return eventlog.last_error if eventlog.pending else None


# -- the WSGI app of /healthz and /metrics -----------------------------------------------------

OPS_PATHS = ("/healthz", "/healthz/ready", "/healthz/live", "/metrics")


def ops_app(health: HealthAddon):
    """``/healthz``, ``/healthz/ready``, ``/healthz/live`` and ``/metrics`` as a WSGI app."""

    def app(environ: dict, start_response: Any) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            return _answer(start_response, 405, "text/plain", b"GET only\n")
        if path == "/healthz/live":
            live = health.loop_turning()
            body: dict[str, Any] = {"status": "live" if live else "stalled", "live": live}
            return _json(start_response, 200 if live else 503, body)
        if path in ("/healthz", "/healthz/ready"):
            ready, checks = health.readiness()
            body = {
                "status": "ready" if ready else "unready",
                "ready": ready,
                "live": health.loop_turning(),
                "checks": checks,
            }
            return _json(start_response, 200 if ready else 503, body)
        if path == "/metrics":
            from schoolgate.gateway.metrics import metrics_text

            data, content_type = metrics_text(health)
            return _answer(start_response, 200, content_type, data)
        return _answer(start_response, 404, "text/plain", b"not found\n")

    return app


def _json(start_response: Any, status: int, body: dict) -> list[bytes]:
    data = (json.dumps(body, indent=2) + "\n").encode()
    return _answer(start_response, status, "application/json", data)


def _answer(start_response: Any, status: int, content_type: str, data: bytes) -> list[bytes]:
    reasons = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
    start_response(
        f"{status} {reasons.get(status, 'OK')}",
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(data))),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
        ],
    )
    return [data]
