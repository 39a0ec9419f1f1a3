"""The exceptions in force, re-read from the database in a background thread.

Hooks read :attr:`ExceptionCache.current` (an :class:`ExceptionSet`) and never touch the
database. A database that cannot be read keeps the last set read (exceptions only ever open
sites, so a stale set errs towards what IT Support last approved, and ends are still checked by
the decision itself).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from mitmproxy import ctx, exceptions

from schoolgate.core.policy import ExceptionSet
from schoolgate.gateway.background import Periodic
from schoolgate.gateway.recorder import Recorder

log = logging.getLogger(__name__)


class ExceptionCache:
    name = "schoolgate_exceptions"

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.current = ExceptionSet()
        self.refreshed_at: datetime | None = None
        self._worker = Periodic("schoolgate-exceptions", self.refresh)
        self._failing = False

    def load(self, loader) -> None:
        loader.add_option(
            "schoolgate_exceptions_interval",
            float,
            3.0,
            "Seconds between re-reads of the exceptions in force from the database.",
        )

    def configure(self, updated) -> None:
        if "schoolgate_exceptions_interval" in updated:
            if ctx.options.schoolgate_exceptions_interval <= 0:
                raise exceptions.OptionsError("schoolgate_exceptions_interval must be positive")

    def refresh(self) -> bool:
        """Read the exceptions in force now (blocking; the thread calls it)."""
        sessions = self.recorder.sessions
        if sessions is None:
            return False
        from schoolgate.storage.exceptions import exceptions_current

        now = datetime.now(UTC)
        try:
            with sessions() as session:
                items = exceptions_current(session, now)
        except Exception:  # noqa: BLE001 - keep the last good set
            if not self._failing:
                log.exception("schoolgate: cannot read exceptions; keeping the last ones read")
            self._failing = True
            return False
        if self._failing:
            log.info("schoolgate: reading exceptions again")
        self._failing = False
        if tuple(items) != self.current.items:
            self.current = ExceptionSet(items)
            log.info("schoolgate: %d exception(s) in force or scheduled", len(items))
        self.refreshed_at = now
        return True

    def wake(self) -> None:
        self._worker.wake()

    def running(self) -> None:
        if not self._worker.started:
            self.refresh()  # right away, before the first request is decided
            self._worker.start(ctx.options.schoolgate_exceptions_interval)

    def done(self) -> None:
        self._worker.stop(timeout=5)
