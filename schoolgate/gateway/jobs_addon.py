"""The scheduled jobs inside the gateway process (see :mod:`schoolgate.jobs`).

Wire it after the recorder: ``JobsAddon(holder, recorder)``. It starts APScheduler's background
thread when mitmproxy is running and stops it when mitmproxy is done. Jobs always read the
policy in force (``holder.policy``), so a reloaded config reschedules them on the next reload.
Nothing here runs on the event loop: jobs run on the scheduler's own thread.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


class JobsAddon:
    def __init__(self, holder: Any, recorder: Any = None) -> None:
        self.holder = holder
        self.recorder = recorder
        self.jobs = None
        self._policy = None

    def load(self, loader: Any) -> None:
        loader.add_option(
            "schoolgate_jobs", bool, True, "Run schoolgate's scheduled jobs in this process."
        )

    def running(self) -> None:
        from mitmproxy import ctx

        if self.jobs is not None or not ctx.options.schoolgate_jobs:
            return
        if self.holder.policy is None:
            return
        from schoolgate.jobs import Jobs

        sessions = getattr(self.recorder, "sessions", None)
        self.jobs = Jobs(lambda: self.holder.policy, sessions=sessions)
        self.jobs.start()
        self._policy = self.holder.policy
        log.info("schoolgate jobs scheduled: %s", self.jobs.next_runs())

    def configure(self, updated: Any) -> None:
        # The holder reloads the policy; reschedule if the config changed job times.
        if self.jobs is not None and self.holder.policy is not self._policy:
            self._policy = self.holder.policy
            try:
                self.jobs.sync()
            except Exception:  # noqa: BLE001 - a bad reload must not stop the gateway
                log.exception("could not reschedule jobs after a reload")

    def done(self) -> None:
        if self.jobs is not None:
            self.jobs.shutdown()
            self.jobs = None
