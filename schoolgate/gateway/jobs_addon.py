"""The scheduled jobs inside the gateway process (see :mod:`schoolgate.jobs`).

Wire it after the recorder: ``JobsAddon(holder, recorder)``. The gateways of a trust (and the
workers of ``--workers N``) share one database, and the jobs must run once per database, not
once per process: when mitmproxy is running, the addon keeps trying to hold the database's
``jobs`` lease (:mod:`schoolgate.leases`) and runs APScheduler's background thread only while
it holds it. Losing the lease (another process took it after it expired, or renewals failed)
stops the scheduler here; a job already running finishes. With ``schoolgate_jobs=false`` the
process never tries, which pins the jobs to the gateways that keep it on.

Jobs always read the policy in force (``holder.policy``), so a reloaded config reschedules
them. Nothing here runs on the event loop: the lease, the scheduler's start and stop and the
rescheduling run on background threads.
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
        self.jobs: Any = None  # a running schoolgate.jobs.Jobs while this process holds the lease
        self.keeper: Any = None
        self._policy: Any = None
        # Held while the scheduler is started, stopped or rescheduled (keeper and reload threads).
        self._lock = threading.Lock()

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
        from schoolgate.leases import LeaseKeeper

        self.keeper = LeaseKeeper(
            self._lease,
            on_acquired=self._take,
            on_lost=self._drop,
            name="schoolgate-jobs-lease",
        )
        self.keeper.start()

    def _sessions(self) -> Any:
        sessions = getattr(self.recorder, "sessions", None)
        if sessions is None:
            from schoolgate.db import open_database

            sessions = open_database(self.holder.policy.settings.database_url)
        return sessions

    def _lease(self) -> Any:
        from schoolgate.leases import Lease

        return Lease(self._sessions(), LEASE_NAME)

    def _take(self) -> None:
        """This process took the lease: start the scheduler (on the keeper's thread)."""
        from schoolgate.jobs import Jobs

        log.info("schoolgate: this process (%s) took the job lease", self.keeper.lease.holder)
        with self._lock:
            policy = self.holder.policy
            jobs = Jobs(lambda: self.holder.policy, sessions=self.keeper.lease.sessions)
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

    def configure(self, updated: Any) -> None:
        # The holder reloads the policy; reschedule if the config changed job times (off the
        # event loop: rescheduling writes to the job store).
        if self.jobs is not None and self.holder.policy is not self._policy:
            threading.Thread(target=self._resync, name="schoolgate-jobs-sync", daemon=True).start()

    def _resync(self) -> None:
        with self._lock:
            policy = self.holder.policy
            if self.jobs is None or policy is self._policy:
                return
            self._policy = policy
            try:
                self.jobs.sync()
                _fetch_missing_lists(self.jobs, policy)  # a subscription the reload added
            except Exception:  # noqa: BLE001 - a bad reload must not stop the gateway
                log.exception("could not reschedule jobs after a reload")

    def done(self) -> None:
        # Stops the scheduler if held and releases the lease, so another gateway takes over at
        # its next attempt rather than when the lease expires.
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
