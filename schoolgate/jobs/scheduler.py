"""Scheduled jobs: expire exceptions, escalate slow requests, refresh lists, reports, purge.

APScheduler 3.x runs them inside the gateway (``BackgroundScheduler``) with a
``SQLAlchemyJobStore`` on the gateway's own database, so each job's next run time survives a
restart: a purge due at 02:30 while the gateway was down runs once when it comes back
(``coalesce``, no misfire limit). Gateways sharing a database share the job store too, and only
the process holding the database's job lease runs the scheduler
(:mod:`schoolgate.gateway.jobs_addon`): the scheduler stores a job's next run time as it starts
the job, so a process taking over neither repeats a job that ran nor loses one that fell due
in between (it runs once, however late). The CLI runs the same job functions directly
(``schoolgate jobs run NAME``, ``schoolgate purge``, ``schoolgate report``...).

Time comes from a :class:`Clock`. In production that is the system clock and APScheduler's own
thread decides when jobs are due; tests use :class:`FakeClock` and call :meth:`Jobs.run_due`,
which runs what is due at the clock's time and stores the next run times exactly as the
scheduler would.

Exceptions and curriculum overrides end by themselves (the decision engine compares their end
time with the request time); the ``expire`` job only records the end in the audit trail and
cleans up, and it is scheduled to run at the earliest coming end time as well as every minute.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_STOPPED
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from schoolgate import borrowed
from schoolgate.core.notification_settings import (  # noqa: F401 - read here by callers
    SMTP_KEYS,
    NotificationSettings,
    read_notifications,
)
from schoolgate.storage.db import open_database
from schoolgate.storage.exceptions import to_plain
from schoolgate.storage.models import AuditRow, ExceptionRow, OutboxRow, PortalRequestRow

log = logging.getLogger(__name__)

ACTOR = "schoolgate"
JOBSTORE_TABLE = "schoolgate_jobs"


# -- clocks -------------------------------------------------------------------------------------
class Clock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FakeClock(Clock):
    """A clock for tests: stands still until set or advanced."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at

    def set(self, at: datetime) -> None:
        self.at = at

    def advance(self, **delta: float) -> datetime:
        self.at += timedelta(**delta)
        return self.at


def notifications_of(policy: Any) -> NotificationSettings:
    """The policy's ``notifications`` settings (the defaults without a policy)."""
    return policy.settings.notifications if policy is not None else NotificationSettings()


# -- the jobs' work (plain functions, usable without a scheduler) --------------------------------
ExpireHook = Callable[[Session, datetime], int]
# Other features register what else ends at a time (bans): fn(session, now) -> how many ended.
EXPIRE_HOOKS: list[ExpireHook] = []


def expire_due(session: Session, now: datetime) -> list[int]:
    """Audit every exception or override that has ended and not been audited as ended yet."""
    window = now - timedelta(days=30)
    rows = list(
        session.scalars(
            select(ExceptionRow)
            .where(ExceptionRow.revoked_at.is_(None))
            .where(ExceptionRow.ends.is_not(None))
            .where(ExceptionRow.ends <= now, ExceptionRow.ends > window)
            .order_by(ExceptionRow.ends)
        )
    )
    if not rows:
        return []
    subjects = [f"exception #{row.id}" for row in rows]
    done = set(
        session.scalars(
            select(AuditRow.subject)
            .where(AuditRow.subject.in_(subjects))
            .where(AuditRow.action.like("%.expire"))
        )
    )
    ended = []
    for row in rows:
        subject = f"exception #{row.id}"
        if subject in done or row.ends is None:  # (the query has only rows with an end)
            continue
        session.add(
            AuditRow(
                at=now,
                actor=ACTOR,
                action=f"{row.kind}.expire",
                subject=subject,
                detail=f"ended at {row.ends.isoformat()}: {to_plain(row).describe()}",
            )
        )
        ended.append(row.id)
    return ended


def next_end(session: Session, now: datetime) -> datetime | None:
    return session.scalar(
        select(ExceptionRow.ends)
        .where(ExceptionRow.revoked_at.is_(None), ExceptionRow.ends > now)
        .order_by(ExceptionRow.ends)
        .limit(1)
    )


def escalate_overdue(
    session: Session,
    now: datetime,
    after: timedelta,
    *,
    notify: Callable[[Session, dict[str, Any]], None] | None = None,
) -> list[str]:
    """Access requests still ``open`` (IT Support has not acted) after ``after``: to SLT.

    The interface, on the portal's ``portal_requests`` table: ``kind == "access"``,
    ``status == "open"`` and ``created_at <= now - after`` become ``status = "escalated"``,
    ``escalated_by = "schoolgate"`` with an ``escalation_note``; each is audited
    (``request.escalate``) and ``notify(session, row)`` is called (SLT's e-mail).
    """
    requests = PortalRequestRow
    due = list(
        session.execute(
            select(requests.__table__).where(
                requests.kind == "access",
                requests.status == "open",
                requests.created_at <= now - after,
            )
        ).mappings()
    )
    hours = after.total_seconds() / 3600
    note = f"IT Support had not acted within {hours:g} hours: escalated to SLT automatically."
    refs = []
    for row in due:
        session.execute(
            update(requests)
            .where(requests.id == row["id"], requests.status == "open")
            .values(status="escalated", escalated_by=ACTOR, escalation_note=note, updated_at=now)
        )
        session.add(
            AuditRow(
                at=now,
                actor=ACTOR,
                action="request.escalate",
                subject=f"request {row['ref']}",
                detail=note,
            )  # fmt: skip
        )
        if notify is not None:
            notify(session, dict(row))
        refs.append(row["ref"])
    return refs


def _slt_notifier(policy: Any, now: datetime) -> Callable[[Session, dict[str, Any]], None] | None:
    from schoolgate.jobs.notify import notifier_for

    notifier = notifier_for(notifications_of(policy), clock=lambda: now)
    if notifier is None:
        return None

    def send(session: Session, row: dict[str, Any]) -> None:
        notifier.notify(
            session,
            audience="slt",
            event="request.escalated",
            subject=f"Access request {row['ref']} needs SLT: not handled in time",
            body=(
                f"Access request {row['ref']} for {row.get('host')} "
                f"({row.get('purpose') or 'no purpose given'}) from "
                f"{row.get('requester_user') or row.get('requester_role')} has waited since "
                f"{row['created_at']:%a %d %b %H:%M} UTC without action by IT Support."
            ),
            ref=row["ref"],
        )

    return send


# -- context: what a job needs -------------------------------------------------------------------
@dataclass
class JobContext:
    policy: Callable[[], Any]  # the policy in force (the gateway's holder, or loaded)
    sessions: sessionmaker
    clock: Clock = field(default_factory=Clock)
    jobs: Jobs | None = None
    progress: bool | None = False

    def now(self) -> datetime:
        return self.clock.now()


_CONTEXTS: dict[str, JobContext] = {}


def _context_from_key(key: str) -> JobContext:
    """Build a context from the key stored with the job (config path and data dir)."""
    from schoolgate.core.config import load_policy
    from schoolgate.storage import check_database_url

    config, data_dir = json.loads(key)
    policy = load_policy(Path(config) if config else None,
                         data_dir=Path(data_dir) if data_dir else None,
                         check_database_url=check_database_url)  # fmt: skip
    return JobContext(policy=lambda: policy, sessions=open_database(policy.settings.database_url))


def job_expire(ctx: JobContext) -> dict[str, Any]:
    now = ctx.now()
    with ctx.sessions.begin() as session:
        ended = expire_due(session, now)
        hooked = sum(hook(session, now) for hook in EXPIRE_HOOKS)
        upcoming = next_end(session, now)
    if upcoming is not None and ctx.jobs is not None:
        ctx.jobs.run_no_later_than("expire", upcoming)
    return {"ended": ended, "other": hooked, "next_end": upcoming}


def job_escalate(ctx: JobContext) -> dict[str, Any]:
    now = ctx.now()
    policy = ctx.policy()
    settings = notifications_of(policy)
    if settings.escalate_after_hours is None:
        return {"escalated": []}
    after = timedelta(hours=settings.escalate_after_hours)
    with ctx.sessions.begin() as session:
        refs = escalate_overdue(session, now, after, notify=_slt_notifier(policy, now))
    return {"escalated": refs}


def job_lists(ctx: JobContext) -> dict[str, Any]:
    from schoolgate.jobs.listupdate import list_updates_of, refresh_lists

    settings = list_updates_of(ctx.policy())
    with ctx.sessions.begin() as session:
        results = refresh_lists(settings, now=ctx.now(), session=session, progress=ctx.progress)
    for r in results:
        (log.info if r.accepted else log.warning)("list %s: %s", r.category, r.message)
    return {"results": [r.as_dict() for r in results]}


def make_report(ctx: JobContext, kind: str, *, previous: bool = True, send: bool = True):
    """Build the day's or week's report, keep it under the reports folder, queue the e-mail."""
    from schoolgate.reports.build import build_report, period_for, previous_period, reports_of
    from schoolgate.reports.render import write_report

    policy = ctx.policy()
    now = ctx.now()
    settings = reports_of(policy)
    period = previous_period(kind, policy, now) if previous else period_for(kind, policy)
    with ctx.sessions() as session:
        report = build_report(session, period, policy=policy, settings=settings, now=now)
    paths = write_report(report, reports_folder(policy, settings))
    if send and settings.email:
        with ctx.sessions.begin() as session:
            queue_report_email(session, report, paths, settings.email, now)
    return {"period": period.label, "files": [str(p) for p in paths]}


def reports_folder(policy: Any, settings: Any) -> Path:
    folder = Path(settings.folder).expanduser()
    return folder if folder.is_absolute() else Path(policy.settings.data_dir) / folder


def queue_report_email(session: Session, report: Any, paths: list[Path], to: tuple[str, ...],
                       now: datetime) -> None:  # fmt: skip
    """Queue the report's summary in the portal's outbox (sent by its sender)."""
    lines = [f"Online safety report: {report.period.label}", ""]
    lines += [f"  {k}: {v}" for k, v in report.totals.items()]
    lines.append(f"  students to review: {len(report.at_risk)}")
    lines.append(f"  exceptions in force: {len(report.exceptions)}")
    lines += ["", "The full report (HTML and CSV) is kept on the gateway:"]
    lines += [f"  {p}" for p in paths]
    session.add(
        OutboxRow(
            channel="email",
            recipient=", ".join(to),
            subject=f"Online safety report: {report.period.label}",
            body="\n".join(lines) + "\n",
            created_at=now,
            next_attempt_at=now,
            attempts=0,
        )
    )


def job_report_day(ctx: JobContext) -> dict[str, Any]:
    return make_report(ctx, "day")


def job_report_week(ctx: JobContext) -> dict[str, Any]:
    return make_report(ctx, "week")


def job_purge(ctx: JobContext) -> dict[str, Any]:
    from schoolgate.jobs.retention import purge, retention_of
    from schoolgate.reports.build import reports_of

    policy = ctx.policy()
    with ctx.sessions.begin() as session:
        result = purge(
            session,
            retention_of(policy),
            now=ctx.now(),
            policy=policy,
            reports_dir=reports_folder(policy, reports_of(policy)),
        )
    return {"deleted": result.deleted}


JOBS: dict[str, Callable[[JobContext], dict[str, Any]]] = {
    "expire": job_expire,
    "escalate": job_escalate,
    "lists": job_lists,
    "report_day": job_report_day,
    "report_week": job_report_week,
    "purge": job_purge,
}


def run_job(name: str, key: str) -> dict[str, Any]:
    """What the job store keeps a reference to (module-level and picklable)."""
    ctx = _CONTEXTS.get(key) or _context_from_key(key)
    return run_recorded(name, ctx)


def run_recorded(name: str, ctx: JobContext) -> dict[str, Any]:
    """Run a job and keep how it went as its last run (``job_runs``); a failure is kept and
    raised again."""
    import socket

    from schoolgate.storage.job_runs import FAILED, OK, record_run

    started = ctx.now()
    host = f"{socket.gethostname()}:{os.getpid()}"
    try:
        result = JOBS[name](ctx)
    except Exception as exc:
        record_run(ctx.sessions, name, started=started, finished=ctx.now(), outcome=FAILED,
                   error=f"{type(exc).__name__}: {exc}", host=host)  # fmt: skip
        raise
    record_run(ctx.sessions, name, started=started, finished=ctx.now(), outcome=OK,
               summary=summarise(name, result), host=host)  # fmt: skip
    return result


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}" + ("" if n == 1 else "s")


def summarise(name: str, result: dict[str, Any]) -> str:
    """What a job did, in a line: "2 exceptions ended", "deleted 14 events"."""
    if name == "expire":
        ended = len(result.get("ended") or []) + int(result.get("other") or 0)
        return f"{ended} recorded as ended" if ended else "nothing had ended"
    if name == "escalate":
        return _count(len(result.get("escalated") or []), "request") + " escalated to SLT"
    if name == "lists":
        results = result.get("results") or []
        refused = [r for r in results if not r.get("accepted")]
        text = _count(len(results) - len(refused), "list") + " updated"
        if refused:
            text += f", {len(refused)} refused ({', '.join(r['category'] for r in refused)})"
        return text
    if name.startswith("report"):
        return (
            f"report for {result.get('period')}: {_count(len(result.get('files') or []), 'file')}"
        )
    if name == "purge":
        deleted = result.get("deleted") or {}
        if not any(deleted.values()):
            return "nothing past its retention period"
        return "deleted " + ", ".join(f"{n} {key}" for key, n in deleted.items() if n)
    return ""


# -- the scheduler ------------------------------------------------------------------------------
def _clock_of(text: str) -> tuple[int, int]:
    hours, minutes = text.split(":")
    return int(hours), int(minutes)


class _Scheduler(BackgroundScheduler):
    """APScheduler's background scheduler, except that it starts no job once told to stop.

    On ``shutdown`` APScheduler 3 marks itself stopped, shuts its executors down and wakes its
    thread, which then processes the due jobs once more (it skips that only when paused): each
    due job fails to start ("cannot schedule new futures after shutdown") but its next run
    time is moved on in the job store all the same, so a job due as the gateway stops is lost
    until its next time, and that stored time comes from the real clock, not :class:`Clock`.
    """

    def _process_jobs(self) -> float | None:  # seconds until the next round, as APScheduler
        if self.state == STATE_STOPPED:
            return None
        return super()._process_jobs()


def scheduler_class() -> type[BackgroundScheduler]:
    """:class:`_Scheduler` on the APScheduler versions the tests cover, while APScheduler has
    the ``_process_jobs(self)`` it overrides; APScheduler's own (with a warning) otherwise."""

    def shape() -> str | None:
        process = getattr(BackgroundScheduler, "_process_jobs", None)
        if callable(process) and list(inspect.signature(process).parameters) == ["self"]:
            return None
        return "BackgroundScheduler has no _process_jobs(self)"

    if borrowed.borrow(
        "the scheduler that starts no job once stopped (APScheduler's _process_jobs)",
        "APScheduler",
        shape,
        "APScheduler's own scheduler is used: a job falling due as the gateway stops may be "
        "skipped until its next time",
    ):
        return _Scheduler
    return BackgroundScheduler


# Interval jobs run on whole minutes (a fixed start, so the schedule is the same every time).
_EPOCH = datetime(2020, 1, 6, tzinfo=UTC)
_WEEKDAYS = {"mon": "Monday"}


@dataclass(frozen=True)
class Schedule:
    """When a job runs: every N minutes, or daily (or weekly) at a local time."""

    every_minutes: int | None = None
    at: str | None = None  # "02:30", the default site's local time
    weekday: str | None = None  # "mon" for weekly

    def words(self) -> str:
        if self.every_minutes is not None:
            n = self.every_minutes
            return "every minute" if n == 1 else f"every {n} minutes"
        if self.weekday:
            return f"every {_WEEKDAYS.get(self.weekday, self.weekday)} at {self.at}"
        return f"every day at {self.at}"

    def trigger(self, tz: Any) -> Any:
        if self.every_minutes is not None:
            return IntervalTrigger(minutes=self.every_minutes, start_date=_EPOCH, timezone=UTC)
        h, m = _clock_of(self.at or "00:00")
        if self.weekday:
            return CronTrigger(day_of_week=self.weekday, hour=h, minute=m, timezone=tz)
        return CronTrigger(hour=h, minute=m, timezone=tz)


# What each job does, for people (``schoolgate jobs list``).
JOB_PURPOSES = {
    "expire": "records exceptions, overrides and bans that have ended",
    "escalate": "sends access requests IT Support have not handled in time to SLT",
    "lists": "refreshes category lists from their URLs (subscriptions when due)",
    "report_day": "the e-safety report for the day before",
    "report_week": "the e-safety report for the week before",
    "purge": "deletes records past their retention period",
}


def job_schedules(policy: Any) -> dict[str, Schedule]:
    """Each job's schedule from the config (jobs switched off by the config are left out)."""
    from schoolgate.jobs.listupdate import list_updates_of
    from schoolgate.jobs.retention import retention_of
    from schoolgate.reports.build import reports_of

    schedules: dict[str, Schedule] = {"expire": Schedule(every_minutes=1)}
    if notifications_of(policy).escalate_after_hours is not None:
        schedules["escalate"] = Schedule(every_minutes=5)
    lists = list_updates_of(policy)
    if lists.subscriptions:  # each is fetched when due: looked at every quarter of an hour
        schedules["lists"] = Schedule(every_minutes=15)
    elif lists.sources:
        schedules["lists"] = Schedule(at=lists.at)
    reports = reports_of(policy)
    if reports.daily_at:
        schedules["report_day"] = Schedule(at=reports.daily_at)
    if reports.weekly_at:
        schedules["report_week"] = Schedule(at=reports.weekly_at, weekday="mon")
    schedules["purge"] = Schedule(at=retention_of(policy).purge_at)
    return schedules


def job_triggers(policy: Any) -> dict[str, Any]:
    """Each job's trigger from the config (times are the default site's local time)."""
    tz = policy.timetables[policy.resolver.default_site].tz
    return {name: schedule.trigger(tz) for name, schedule in job_schedules(policy).items()}


def stored_next_runs(sessions: sessionmaker) -> dict[str, datetime]:
    """The next run time of each job as the gateway's scheduler stored it (none before the
    gateway first scheduled them)."""
    from sqlalchemy import Column, Float, MetaData, String, Table, inspect

    with sessions() as session:
        if not inspect(session.connection()).has_table(JOBSTORE_TABLE):
            return {}
        table = Table(
            JOBSTORE_TABLE, MetaData(), Column("id", String), Column("next_run_time", Float)
        )
        rows = session.execute(select(table.c.id, table.c.next_run_time)).all()
    return {name: datetime.fromtimestamp(ts, UTC) for name, ts in rows if ts is not None}


class Jobs:
    """The scheduler with schoolgate's jobs, on the policy's database."""

    def __init__(
        self,
        policy: Callable[[], Any],
        *,
        sessions: sessionmaker | None = None,
        clock: Clock | None = None,
        progress: bool | None = False,
    ) -> None:
        current = policy()
        self.key = json.dumps([current.settings.config_path, current.settings.data_dir])
        self.clock = clock or Clock()
        self.sessions = sessions or open_database(current.settings.database_url)
        self.context = JobContext(policy=policy, sessions=self.sessions, clock=self.clock,
                                  jobs=self, progress=progress)  # fmt: skip
        engine = self.sessions.kw["bind"]
        self.scheduler = scheduler_class()(
            jobstores={"default": SQLAlchemyJobStore(engine=engine, tablename=JOBSTORE_TABLE)},
            executors={"default": ThreadPoolExecutor(1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
        )
        self.results: dict[str, Any] = {}

    # lifecycle
    def start(self, *, paused: bool = False) -> None:
        """Start (``paused``: tests drive it with :meth:`run_due`) and schedule the jobs."""
        _CONTEXTS[self.key] = self.context
        self.scheduler.start(paused=paused)
        self.sync()

    def shutdown(self, *, wait: bool = True) -> None:
        """Stop scheduling; ``wait``: also wait for a job that is running to finish."""
        if self.scheduler.running:
            self.scheduler.shutdown(wait=wait)
        if _CONTEXTS.get(self.key) is self.context:
            del _CONTEXTS[self.key]

    def sync(self) -> None:
        """Add missing jobs, keep stored run times, reschedule jobs whose trigger changed."""
        now = self.clock.now()
        wanted = job_triggers(self.context.policy())
        for job in self.scheduler.get_jobs():
            if job.id not in wanted:
                job.remove()
        for name, trigger in wanted.items():
            job = self.scheduler.get_job(name)
            if job is not None and str(job.trigger) == str(trigger):
                continue  # keeps its stored next run time (a restart does not reset it)
            first = trigger.get_next_fire_time(None, now)
            if job is not None:
                self.scheduler.modify_job(name, trigger=trigger, next_run_time=first)
            else:
                self.scheduler.add_job(run_job, trigger, args=[name, self.key], id=name,
                                       name=name, next_run_time=first)  # fmt: skip

    # inspection
    def next_runs(self) -> dict[str, datetime | None]:
        return {job.id: job.next_run_time for job in self.scheduler.get_jobs()}

    def run_no_later_than(self, name: str, at: datetime) -> None:
        job = self.scheduler.get_job(name)
        if job is not None and (job.next_run_time is None or at < job.next_run_time):
            self.scheduler.modify_job(name, next_run_time=at)

    # driving by the clock (tests, and `schoolgate jobs run-due`)
    def run_due(self) -> list[str]:
        """Run every job due at the clock's time (once, however late), store the next times."""
        now = self.clock.now()
        ran = []
        for job in sorted(self.scheduler.get_jobs(), key=lambda j: (j.next_run_time, j.id)):
            due = job.next_run_time
            if due is None or due > now:
                continue
            following = job.trigger.get_next_fire_time(due, now)
            while following is not None and following <= now:
                following = job.trigger.get_next_fire_time(following, now)
            # Store the next time first, so a job that reschedules itself (expire) wins.
            self.scheduler.modify_job(job.id, next_run_time=following)
            self.run(job.id)
            ran.append(job.id)
        return ran

    def run(self, name: str) -> Any:
        try:
            self.results[name] = run_recorded(name, self.context)
        except Exception as exc:  # a failing job must not stop the others
            log.exception("job %s failed", name)
            self.results[name] = {"error": str(exc)}
        return self.results[name]
