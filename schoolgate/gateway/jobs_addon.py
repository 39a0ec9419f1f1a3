"""The scheduled jobs inside the gateway process (see :mod:`schoolgate.jobs.scheduler`).

Wire it after the recorder: ``JobsAddon(holder, recorder)``. The gateways of a trust (and the
workers of ``--workers N``) share one database, and the jobs must run once per database, not
once per process: when mitmproxy is running, the addon keeps trying to hold the database's
``jobs`` lease (:mod:`schoolgate.storage.leases`) and runs APScheduler's background thread only
while it holds it. Losing the lease (another process took it after it expired, or renewals failed)
stops the scheduler here; a job already running finishes. With ``schoolgate_jobs=false`` the
process never tries, which pins the jobs to the gateways that keep it on.

Jobs read the policy in force (``holder.policy``) when they run. A new policy
(:meth:`JobsAddon.policy_changed`) reschedules them: a changed time moves the job's next run,
a job switched off is removed, one switched on is added. A new policy that names another
database (``database.url``) moves the lease and the scheduler there: this process gives up the
lease on the old database and competes for the new one's. Nothing here runs on the event loop:
the lease, the scheduler's start and stop and the rescheduling run on background threads.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)

LEASE_NAME = "jobs"


class JobsAddon:
    def __init__(self, holder: Any, recorder: Any = None) -> None:
        self.holder = holder
        self.recorder = recorder
        self.jobs: Any = (
            None  # a running schoolgate.jobs.scheduler.Jobs while this process holds the lease
        )
        self.keeper: Any = None
        self._policy: Any = None  # the policy the scheduler was last synced with
        self._latest: Any = None  # the newest policy (told before it is in force)
        self._enabled = False  # running() started a keeper (schoolgate_jobs)
        self._database: str | None = None  # the database URL of the keeper's lease
        # Held while the scheduler is started, stopped or rescheduled (keeper and reload threads).
        self._lock = threading.Lock()
        self._move_lock = threading.Lock()  # one move of the lease at a time
        holder.subscribe(self)

    def load(self, loader: Any) -> None:
        loader.add_option(
            "schoolgate_jobs",
            bool,
            True,
            "Run schoolgate's scheduled jobs in this process when it holds the database's job "
            "lease (false: never, leaving them to the other gateways).",
        )

    def running(self) -> None:
        from mitmproxy import ctx

        if self.keeper is not None or not ctx.options.schoolgate_jobs:
            return
        if self.holder.policy is None:
            return
        self._enabled = True
        self._start_keeper(self.holder.policy.settings.database_url)

    def _start_keeper(self, database: str) -> None:
        from schoolgate.storage.leases import LeaseKeeper

        self._database = database
        keeper = LeaseKeeper(
            lambda: self._lease(database),
            on_acquired=lambda: self._take(keeper),
            on_lost=self._drop,
            name="schoolgate-jobs-lease",
        )
        self.keeper = keeper
        keeper.start()

    def _policy_now(self) -> Any:
        return self._latest or self.holder.policy

    def _sessions(self, database: str) -> Any:
        # The recorder's, when it has that database open (one engine per database).
        sessions = getattr(self.recorder, "sessions", None)
        if sessions is None or getattr(self.recorder, "url", None) != database:
            from schoolgate.storage.db import open_database

            sessions = open_database(database)
        return sessions

    def _lease(self, database: str) -> Any:
        from schoolgate.storage.leases import Lease

        return Lease(self._sessions(database), LEASE_NAME)

    def _take(self, keeper: Any) -> None:
        """This process took the lease: start the scheduler (on the keeper's thread)."""
        from schoolgate.jobs.scheduler import Jobs

        log.info("schoolgate: this process (%s) took the job lease", keeper.lease.holder)
        with self._lock:
            policy = self._policy_now()
            jobs = Jobs(self._policy_now, sessions=keeper.lease.sessions)
            jobs.start()
            self.jobs, self._policy = jobs, policy
            _fetch_missing_lists(jobs, policy)
        log.info("schoolgate jobs scheduled: %s", jobs.next_runs())

    def _drop(self, reason: str) -> None:
        """The lease is no longer this process's: stop scheduling at once (a running job
        finishes; its next run time is already stored, so the new holder does not repeat it)."""
        with self._lock:
            jobs, self.jobs = self.jobs, None
            if jobs is not None:
                jobs.shutdown(wait=False)
        log.info("schoolgate: this process gave up the job lease (%s); jobs stopped here", reason)

    def policy_changed(self, old: Any, new: Any) -> None:
        """Reschedule for ``new``, or move to its database (on a thread of its own: both
        write to the database, and this may be called on the event loop)."""
        self._latest = new
        if not self._enabled:
            return
        if new.settings.database_url != self._database:
            target, name = self._move, "schoolgate-jobs-move"
        elif self.jobs is not None:
            target, name = self._resync, "schoolgate-jobs-sync"
        else:
            return
        threading.Thread(target=target, args=(new,), name=name, daemon=True).start()

    def _resync(self, policy: Any) -> None:
        with self._lock:
            if self.jobs is None or policy is self._policy:
                return
            self._policy = policy
            try:
                self.jobs.sync()  # reads the newest policy (_policy_now)
                _fetch_missing_lists(self.jobs, policy)  # a subscription the reload added
                log.info("schoolgate jobs rescheduled: %s", self.jobs.next_runs())
            except Exception:  # noqa: BLE001 - a bad reload must not stop the gateway
                log.exception("could not reschedule jobs after a reload")

    def _move(self, policy: Any) -> None:
        """The database changed: release the old one's lease (stopping the scheduler) and
        compete for the new one's, whose scheduler takes its job times from its own store."""
        with self._move_lock:
            url = policy.settings.database_url
            if url == self._database or not self._enabled:
                return
            old, self.keeper = self.keeper, None
            if old is not None:
                old.stop()
            log.info("schoolgate: the database changed; the job lease follows it")
            self._start_keeper(url)

    def done(self) -> None:
        # Stops the scheduler if held and releases the lease, so another gateway takes over at
        # its next attempt rather than when the lease expires.
        with self._move_lock:
            self._enabled = False
            if self.keeper is not None:
                self.keeper.stop()
                self.keeper = None


def _fetch_missing_lists(jobs: Any, policy: Any) -> None:
    """A subscription never fetched (a new gateway, a new subscription) is an empty list:
    run the lists job now rather than at its next quarter hour."""
    from datetime import UTC, datetime

    from schoolgate.core.subscriptions import state_of

    now = datetime.now(UTC)
    missing = [s for s in getattr(policy, "subscriptions", ()) if not state_of(s, now).present]
    if missing:
        log.warning(
            "schoolgate: %d list subscription(s) not fetched yet (%s): fetching now",
            len(missing),
            ", ".join(f"{s.category}/{s.name}" for s in missing),
        )
        try:
            jobs.run_no_later_than("lists", now)
        except Exception:  # noqa: BLE001 - the quarter-hourly run still fetches them
            log.exception("schoolgate: could not bring the list subscriptions' fetch forward")
