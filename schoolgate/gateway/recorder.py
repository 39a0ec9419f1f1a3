"""The database and the decision log of the running gateway.

Opens the policy's database when the policy is (re)loaded, starts the background
:class:`~schoolgate.storage.eventlog.EventLog` writer with its spool in the data dir
(``<data-dir>/eventlog/spool``) and its dead-letter file (``<data-dir>/eventlog/
dead-letter.jsonl``), and on shutdown flushes everything queued. Hooks only ever call
:meth:`Recorder.record`, which never waits for the database.

* A circumvention event that puts a sanction in force (a warning, a lockout, a ban) must be
  on disk before the pupil is answered: :meth:`record` asks the log for an ``fsync``, and
  :meth:`durable_barrier` (which :class:`~schoolgate.gateway.dispatch.Schoolgate` calls at the
  end of each hook) gives the hook an awaitable that ends once it is done.
* Events the database refuses even alone go to the dead-letter file; IT Support is told
  through the portal's outbox (at most one message every :data:`DEAD_LETTER_ALERT_EVERY`,
  counting what came since the last).

A new policy that names another database (``database.url``) moves the log there: the
decisions from then on are recorded in the new database, and what was queued for the old one
is written there first.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from mitmproxy import exceptions

from schoolgate.core.policy import Policy
from schoolgate.gateway.background import Periodic
from schoolgate.gateway.holder import PolicyHolder
from schoolgate.storage.records import CIRCUMVENTION_KIND, EventRecord

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from schoolgate.storage.writer import EventLog

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 15.0
# Circumvention stages that are a sanction: their events are synced before the answer.
SANCTIONS = frozenset({"warn", "lockout", "ban"})
DURABLE_WAIT = 5.0  # seconds a hook waits for the spool's sync at most
MAX_WAITING = 1000
DEAD_LETTER_ALERT_EVERY = timedelta(minutes=15)


def eventlog_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "eventlog"


class Recorder:
    name = "schoolgate_recorder"

    def __init__(self, holder: PolicyHolder) -> None:
        self.holder = holder
        self.sessions: sessionmaker[Session] | None = None  # once the database is open
        self.eventlog: EventLog | None = None
        self.secret: bytes = b""
        self._url: str | None = None
        self._data_dir: Path | None = None
        # Sanction events written and not yet synced. The same list all along (emptied, never
        # replaced): the dispatch holds it, and asks for a barrier only while it has any.
        self.durable: list[Future] = []
        self._sync_slow_logged = False
        self._dead = _DeadLetterAlerts(self)
        holder.subscribe(self)

    def configure(self, updated) -> None:
        policy = self.holder.policy
        if policy is None:
            return
        if self.eventlog is None:
            # At start-up a database that cannot be opened stops the gateway starting.
            self._open(policy.settings.database_url)
        if self._data_dir != self.holder.data_dir:
            from schoolgate.gateway.blockpage import load_or_create_secret

            try:
                self.holder.data_dir.mkdir(parents=True, exist_ok=True)
                self.secret = load_or_create_secret(self.holder.data_dir)
            except OSError as exc:
                raise exceptions.OptionsError(
                    f"schoolgate: cannot use the data folder {self.holder.data_dir}: {exc}"
                ) from None
            self._data_dir = self.holder.data_dir

    @property
    def url(self) -> str | None:
        """The URL of the database the decisions are recorded in (None: none open yet)."""
        return self._url

    def policy_changed(self, old: Policy | None, new: Policy) -> None:
        """Follow a changed database URL (a failure keeps the old database)."""
        if self.eventlog is None:
            return  # nothing open yet: configure opens it, and refuses to start without it
        try:
            self._open(new.settings.database_url)
        except exceptions.OptionsError as exc:
            log.error("%s; still recording to the previous database", exc)

    def _open(self, url: str) -> None:
        if url == self._url:
            return
        from schoolgate.storage.db import open_database
        from schoolgate.storage.eventlog import EventLog

        try:
            sessions = open_database(url)
        except Exception as exc:  # noqa: BLE001 - any driver error means no log: refuse
            raise exceptions.OptionsError(
                f"schoolgate: cannot open the database {_safe_url(url)}: {exc}"
            ) from None
        old = self.eventlog
        self.sessions = sessions
        folder = eventlog_dir(self.holder.data_dir)
        self.eventlog = EventLog(
            sessions,
            spool_dir=folder / "spool",
            dead_letter_path=folder / "dead-letter.jsonl",
            on_dead_letter=self._dead.note,
        )
        self.eventlog.start()
        self._url = url
        if old is not None:
            old.close(CLOSE_TIMEOUT)
        log.info("schoolgate: recording decisions to %s", _safe_url(url))

    def record(self, event: EventRecord) -> None:
        eventlog = self.eventlog
        if eventlog is None:
            log.warning("schoolgate: no decision log open; event %s not recorded", event.ref)
            return
        if event.kind == CIRCUMVENTION_KIND and event.action in SANCTIONS:
            waiting = eventlog.record(event, durable=True)
            if waiting is not None and not waiting.done() and len(self.durable) < MAX_WAITING:
                self.durable.append(waiting)
            return
        eventlog.record(event)

    def durable_barrier(self) -> Awaitable | None:
        """What the hook that recorded a sanction must wait for before it answers (None:
        nothing to wait for). Called on the event loop after every hook: O(1)."""
        if not self.durable:
            return None
        waiting = self.durable[:]
        self.durable.clear()
        return self._synced(waiting)

    async def _synced(self, waiting: list[Future]) -> None:
        try:
            done = await asyncio.wait_for(
                asyncio.gather(*(asyncio.wrap_future(f) for f in waiting)), DURABLE_WAIT
            )
        except TimeoutError:
            done = [False]
        if not all(done) and not self._sync_slow_logged:
            self._sync_slow_logged = True
            log.error(
                "schoolgate: a sanction's event could not be synced to the spool within %.0f s "
                "(is the disk of %s failing?); answered anyway",
                DURABLE_WAIT,
                self.holder.data_dir,
            )

    def done(self) -> None:
        self._dead.stop()
        eventlog = self.eventlog
        if eventlog is None:
            return
        log.info("schoolgate: flushing the decision log")
        if eventlog.flush(CLOSE_TIMEOUT):
            # Left open: requests still in flight are decided, and recorded, until the event
            # loop stops after this hook; closing here dropped those events. The log's own
            # exit handler closes it, writing them, when the process exits.
            return
        eventlog.close(0)  # the database is still failing: the spool keeps what is left


class _DeadLetterAlerts:
    """Tells IT Support (the portal's outbox) that events went to the dead-letter file: at
    once for the first, then at most once every :data:`DEAD_LETTER_ALERT_EVERY`."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.count = 0
        self.error = ""
        self.since: datetime | None = None
        self.last_sent: datetime | None = None
        self._lock = threading.Lock()
        self._worker = Periodic("schoolgate-deadletter-alerts", self.send)

    def note(self, count: int, error: str) -> None:
        """From the writer thread: ``count`` more events went to the dead-letter file."""
        with self._lock:
            self.count += count
            self.error = error
            self.since = self.since or datetime.now(UTC)
        if not self._worker.started:
            self._worker.start(60.0)
        self.send()

    def stop(self) -> None:
        self._worker.stop(timeout=5)
        self.send(final=True)

    def send(self, final: bool = False) -> bool:
        now = datetime.now(UTC)
        with self._lock:
            if not self.count or self.since is None:  # (events counted: since is set)
                return True
            due = self.last_sent is None or now - self.last_sent >= DEAD_LETTER_ALERT_EVERY
            if not (due or final):
                return True
            count, error, since = self.count, self.error, self.since
        recorder = self.recorder
        policy, sessions = recorder.holder.policy, recorder.sessions
        if policy is None or sessions is None:
            return False
        from schoolgate.jobs.notify import notifier_for

        notifier = notifier_for(policy.settings.notifications, clock=lambda: now)
        path = eventlog_dir(recorder.holder.data_dir) / "dead-letter.jsonl"
        if notifier is not None:
            try:
                with sessions() as session:
                    notifier.notify(
                        session,
                        audience="it_support",
                        event="eventlog.dead_letter",
                        subject=f"schoolgate: {count} event(s) could not be stored in the log",
                        body=DEAD_LETTER_TEXT.format(
                            count=count, since=since.isoformat(), error=error, path=path
                        ),
                        ref=f"dead-letter-{now:%Y%m%d%H%M%S}",
                    )
                    session.commit()
            except Exception:  # noqa: BLE001 - kept, sent at the next round
                log.exception("schoolgate: cannot queue the dead-letter alert yet; will retry")
                return False
        else:
            log.warning(
                "schoolgate: %d event(s) are in %s; no notifications configured to say so "
                "(notifications.smtp or notifications.webhook)",
                count,
                path,
            )
        with self._lock:
            self.count -= count
            self.since = None if not self.count else now
            self.last_sent = now
        return True


DEAD_LETTER_TEXT = (
    "The web filter's decision log refused {count} event(s) since {since}, even one by one.\n"
    "They are kept, with the database's error, in the dead-letter file on the gateway:\n\n"
    "  {path}\n\nLast error: {error}\n\n"
    "The rest of the log is written as usual. Reports and the portal do not show these events "
    "until they are put into the database; see docs/gateway.md (the decision log)."
)


def _safe_url(url: str) -> str:
    """A database URL without its password, for logs."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return url.split("@")[-1]
