"""The circumvention guard's side that talks to the database, from a background thread.

The guard decides on the event loop from memory; this mixin keeps that memory in step with the
database: the bans made here are written (and retried until they are), the e-safety team's
alerts are queued in the portal's outbox, and every ``schoolgate_bans_interval`` seconds the
bans and supervision sessions in force are read again, with the attempts that other gateway
processes on the same database recorded (and the warnings they showed), so that a pupil's
attempts count together wherever they land. Hooks never touch the database.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from schoolgate.core.sanctions import BanBook, BanState, Ladder, SanctionSettings
from schoolgate.storage.records import CIRCUMVENTION_KIND, WARNED_KIND

if TYPE_CHECKING:
    from schoolgate.gateway.background import Periodic
    from schoolgate.gateway.holder import PolicyHolder
    from schoolgate.gateway.recorder import Recorder
    from schoolgate.gateway.tunnels import OpenTunnels

log = logging.getLogger(__name__)

EVENT_KIND = CIRCUMVENTION_KIND
ALERT_TEXT = (
    "An attempt to get round the school's web filter reached the '{action}' stage.\n\n"
    "Who: {subject} ({role})\nWhen: {at}\nWhat: {summary} (detector {detector})\n"
    "Event reference: {ref}\nBan reference: {ban_ref}\n\n"
    "The evidence is in the decision log: schoolgate events --kind circumvention"
)


class BanSync:
    """Mixed into :class:`~schoolgate.gateway.circumvention_addon.CircumventionGuard`, whose
    state (book, ladder, queues, lock, worker) it reads and writes."""

    # The guard's state, set by its __init__.
    holder: PolicyHolder
    recorder: Recorder
    clock: Callable[[], datetime]
    book: BanBook
    sanctions: SanctionSettings
    ladder: Ladder
    tunnels: OpenTunnels
    refreshed_at: datetime | None
    _alerts: deque[dict[str, str]]
    _unsaved: deque[tuple[BanState, str | None, str | None]]
    _saving: list[tuple[BanState, str | None, str | None]]
    _lock: threading.Lock
    _worker: Periodic
    _failing: bool
    _replayed: bool
    _counted: dict[str, datetime]
    _remote_since: datetime | None
    _loop: asyncio.AbstractEventLoop | None

    def cut_suspended(self) -> int:
        raise NotImplementedError  # the guard's own

    def save_pending(self) -> bool:
        """Write the bans made here that are not in the database yet (blocking)."""
        sessions = self.recorder.sessions
        if sessions is None:
            return False
        with self._lock:
            while self._unsaved:
                self._saving.append(self._unsaved.popleft())
            items = list(self._saving)
        if not items:
            return True
        from schoolgate.storage.bans import save_bans

        try:
            with sessions() as session:
                save_bans(session, items)
                session.commit()
        except Exception:  # noqa: BLE001 - kept and retried
            log.exception("schoolgate: cannot save %d ban(s) yet; will retry", len(items))
            return False
        with self._lock:
            self._saving = [i for i in self._saving if i not in items]
        return True

    def send_alerts(self) -> bool:
        """Queue e-mails/webhooks to the e-safety team for the stages reached (blocking).

        They go into the portal's outbox in one transaction; its sender retries failures, and
        alerts that cannot even be queued stay here for the next round.
        """
        sessions = self.recorder.sessions
        policy = self.holder.policy
        if sessions is None or policy is None or not self._alerts:
            return True
        from schoolgate.jobs.notify import notifier_for

        notifier = notifier_for(policy.settings.notifications, clock=self.clock)
        alerts = list(self._alerts)
        if notifier is None:
            log.warning(
                "schoolgate: %d circumvention alert(s) not sent: no notifications "
                "configured (notifications.smtp or notifications.webhook)",
                len(alerts),
            )
            for _ in alerts:
                self._alerts.popleft()
            return True
        try:
            with sessions() as session:
                for alert in alerts:
                    notifier.notify(
                        session,
                        audience="esafety",
                        event=f"circumvention.{alert['action']}",
                        subject=f"schoolgate: circumvention {alert['action']} for "
                        f"{alert['subject']}",
                        body=ALERT_TEXT.format(**alert),
                        ref=alert["ref"],
                    )
                session.commit()
        except Exception:  # noqa: BLE001 - kept and retried
            log.exception("schoolgate: cannot queue %d alert(s) yet; will retry", len(alerts))
            return False
        for _ in alerts:
            self._alerts.popleft()
        return True

    def refresh(self) -> bool:
        """Save what is pending, then read the bans and supervision sessions in force."""
        sessions = self.recorder.sessions
        if sessions is None:
            return False
        self.save_pending()
        self.send_alerts()
        from schoolgate.storage.bans import bans_current, note_expired, supervisions_current

        now = self.clock()
        try:
            with sessions() as session:
                bans = bans_current(session, now)
                sups = supervisions_current(session, now)
                if note_expired(session, now):
                    session.commit()
        except Exception:  # noqa: BLE001 - keep the last good book
            if not self._failing:
                log.exception("schoolgate: cannot read bans; keeping the last ones read")
            self._failing = True
            return False
        if self._failing:
            log.info("schoolgate: reading bans again")
        self._failing = False
        with self._lock:
            stored = {b.ref for b in bans}
            local = [b for b, _, _ in (*self._saving, *self._unsaved) if b.ref not in stored]
            book = BanBook((*bans, *local), sups)
            if (book.bans, book.supervisions) != (self.book.bans, self.book.supervisions):
                log.info(
                    "schoolgate: %d ban(s) and %d supervision session(s) in force",
                    len(book.bans),
                    len(book.supervisions),
                )
            changed = book.bans != self.book.bans or book.supervisions != self.book.supervisions
            self.book = book
        if changed and self.tunnels.subjects():
            self._on_loop(self.cut_suspended)
        self.refreshed_at = now
        self._read_others_attempts(sessions, now)
        return True

    def _read_others_attempts(self, sessions, now: datetime) -> None:
        """Circumvention events recorded since the last look (by any process on this
        database), handed to the event loop to be counted: the ladder is the loop's alone."""
        window_start = now - timedelta(minutes=self.sanctions.window_minutes)
        since = window_start
        if self._remote_since is not None:
            # events are written a moment after they happen: look back a little
            since = max(window_start, self._remote_since - timedelta(minutes=2))
        rows = self._recorded_attempts(sessions, since)
        if rows is None:
            return  # counted at the next look
        self._remote_since = now
        if rows:
            self._on_loop(self.count_recorded, rows, now)

    def _on_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` on the event loop (the ladder, the tunnels and the book's readers are
        the loop's alone); at once when there is no loop running."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(fn, *args)
        else:
            fn(*args)

    @staticmethod
    def _recorded_attempts(sessions, since: datetime) -> list | None:
        """(ref, at, detail, kind) of the circumvention events, and of the warnings shown,
        since ``since``; None if unreadable."""
        from sqlalchemy import select

        from schoolgate.storage.models import EventRow

        try:
            with sessions() as session:
                return session.execute(
                    select(EventRow.ref, EventRow.at, EventRow.detail, EventRow.kind)
                    .where(EventRow.kind.in_((EVENT_KIND, WARNED_KIND)), EventRow.at >= since)
                    .order_by(EventRow.at, EventRow.id)
                ).all()
        except Exception:  # noqa: BLE001
            log.exception("schoolgate: cannot read recent circumvention events")
            return None

    def count_recorded(self, rows, now: datetime | None = None) -> int:
        """Count (quietly: no stage fires for them) the recorded attempts in ``rows`` (ref, at,
        detail JSON[, kind]) that this process has not counted yet; the next attempt, wherever
        it is made, meets the stage the total reaches. A warning shown (or a lockout or ban
        reached, which only follow one) tells this ladder the subject has been warned.
        Returns how many attempts were new."""
        import json

        now = now or self.clock()
        counted = self._counted
        new = warned = 0
        for ref, at, text, *kind in rows:
            if ref in counted:
                continue
            counted[ref] = at
            try:
                detail = json.loads(text or "{}")
                if kind and kind[0] == WARNED_KIND:
                    self.ladder.warning_shown(detail["subject"], at)
                    warned += 1
                    continue
                sanction = detail["sanction"]
                if sanction.get("counted") is False:
                    continue  # a repeat, or a finding its attempt already counted with
                self.ladder.observe(
                    sanction["subject"],
                    tuple(detail.get("key") or ()),
                    int(detail.get("severity", 2)),
                    at=at,
                    quiet=True,
                    points=sanction.get("points"),  # what it counted (part of an attempt's)
                )
                if sanction.get("sanction") in ("lockout", "ban", "already"):
                    self.ladder.warning_shown(sanction["subject"], at)
                new += 1
            except (ValueError, KeyError, TypeError):
                continue
        cutoff = now - timedelta(minutes=self.sanctions.window_minutes + 5)
        if len(counted) > 256:
            self._counted = {r: at for r, at in counted.items() if at > cutoff}
        if new:
            log.info(
                "schoolgate: counted %d circumvention attempt(s) recorded by another gateway "
                "process (or before a restart)",
                new,
            )
        if warned:
            # Written apart from the attempt it follows (it can reach the database in a later
            # batch): until it is read here, this process's next stage for the subject is a
            # warning again, never a lockout the pupil was not warned of.
            log.info(
                "schoolgate: read %d circumvention warning(s) shown by another gateway process",
                warned,
            )
        return new

    def replay_recent(self) -> int:
        """After a restart: count the circumvention events of the last window again (quietly:
        no stage fires for them), so that a restart does not reset the ladder."""
        sessions = self.recorder.sessions
        if sessions is None or self._replayed:
            return 0
        now = self.clock()
        since = now - timedelta(minutes=self.sanctions.window_minutes)
        rows = self._recorded_attempts(sessions, since)
        if rows is None:
            return 0
        count = self.count_recorded(rows, now)
        self._remote_since = now
        self._replayed = True
        return count

    def wake(self) -> None:
        self._worker.wake()
