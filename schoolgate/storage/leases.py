"""Leases in the shared database: one process in the whole trust does a thing at a time.

The gateways of a trust (and the workers of ``schoolgate run --workers N``) share one
database. Work that must happen once per database, not once per process (the scheduled jobs:
reports, escalation e-mails, the purge), is done only by the process holding its lease, a row
of the ``leases`` table (migration 0005):

* **acquire or renew** is one atomic ``UPDATE leases SET holder=me, expires_at=now+ttl ...
  WHERE name=? AND (holder=me OR expires_at < now)``; when no row matched and none exists, an
  ``INSERT`` (two processes inserting at once: the primary key refuses the second, which then
  does not hold the lease). SQLite and PostgreSQL both serialise the ``UPDATE`` on the row, so
  two processes never both see a match.
* **now** is the database server's clock on PostgreSQL (the gateways' own clocks may differ a
  little; the server's is the one they share) and the system clock on SQLite (one host).
* :class:`LeaseKeeper` renews every :data:`RENEW_EVERY` seconds from a background thread, never
  the event loop. A process whose renewals fail (the database is unreachable) gives the lease
  up by itself :data:`RENEW_EVERY` seconds before it could expire, measured from the moment its
  last successful renewal *started* (the server's "now" for that renewal was no earlier), so it
  has stopped before another process can take the lease over. A renewal that hangs counts as
  failed: the keeper's deadline does not wait for the database.
* A process that stops cleanly releases its lease, so another takes over at its next attempt
  rather than after the lease expires.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime, timedelta
from typing import cast

from sqlalchemy import Connection, Table, insert, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.storage.models import LeaseRow

log = logging.getLogger(__name__)

LEASE_TTL = 30.0  # seconds a lease lasts without renewal
RENEW_EVERY = 10.0  # seconds between renewals (and the safety margin before expiry)


LEASES = cast(Table, LeaseRow.__table__)  # a mapped class's table is a Table
DatabaseClock = Callable[[Connection], datetime]


def holder_id() -> str:
    """``host:pid:random``: unique per process (and per start, should a pid be reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def database_now(connection: Connection) -> datetime:
    """The time every process of the trust agrees on: the PostgreSQL server's clock (in UTC,
    whatever the server's time zone), or this host's clock for SQLite (a file on one host)."""
    if connection.dialect.name == "postgresql":
        value: datetime = connection.scalar(text("SELECT now() AT TIME ZONE 'UTC'"))
        return value.replace(tzinfo=UTC)
    return datetime.now(UTC)


class Lease:
    """One named lease, held (or wanted) by this process as :attr:`holder`."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        name: str,
        *,
        ttl: float = LEASE_TTL,
        holder: str | None = None,
        clock: DatabaseClock = database_now,
    ) -> None:
        self.sessions = sessions
        self.engine = sessions.kw["bind"]
        self.name = name
        self.ttl = ttl
        self.holder = holder or holder_id()
        self.clock = clock
        self.seen_holder: str | None = None  # who held it at the last attempt, if known

    def try_acquire(self) -> bool:
        """Take the lease if it is free or expired, renew it if this process holds it; whether
        this process holds it now. Database errors are raised (the caller decides)."""
        with self.engine.begin() as connection:
            now = self.clock(connection)
            renewed = connection.execute(
                update(LEASES)
                .where(LEASES.c.name == self.name)
                .where(or_(LEASES.c.holder == self.holder, LEASES.c.expires_at < now))
                .values(
                    holder=self.holder,
                    expires_at=now + timedelta(seconds=self.ttl),
                    renewed_at=now,
                )
            )
            if renewed.rowcount == 1:
                self.seen_holder = self.holder
                return True
            other = connection.scalar(select(LEASES.c.holder).where(LEASES.c.name == self.name))
            if other is not None:
                self.seen_holder = other
                return False  # held by another process, and not expired
        try:
            # A transaction of its own: on PostgreSQL a refused INSERT aborts the transaction.
            with self.engine.begin() as connection:
                now = self.clock(connection)
                connection.execute(
                    insert(LEASES).values(
                        name=self.name,
                        holder=self.holder,
                        expires_at=now + timedelta(seconds=self.ttl),
                        renewed_at=now,
                    )
                )
        except IntegrityError:
            self.seen_holder = None  # another process created the row first: it holds it
            return False
        self.seen_holder = self.holder
        return True

    def release(self) -> bool:
        """Give the lease up now if this process holds it (others may take it at once)."""
        with self.engine.begin() as connection:
            now = self.clock(connection)
            result = connection.execute(
                update(LEASES)
                .where(LEASES.c.name == self.name, LEASES.c.holder == self.holder)
                .values(expires_at=now - timedelta(seconds=1))
            )
        return bool(result.rowcount == 1)

    def current(self) -> tuple[str, datetime] | None:
        """Who holds the lease and until when (possibly expired); None if never taken."""
        with self.engine.connect() as connection:
            row = connection.execute(
                select(LEASES.c.holder, LEASES.c.expires_at).where(LEASES.c.name == self.name)
            ).first()
        return (row.holder, row.expires_at) if row is not None else None


class LeaseKeeper:
    """Keeps trying to hold ``lease`` from a background thread; calls ``on_acquired()`` when
    this process takes it and ``on_lost(reason)`` when it no longer holds it (taken by another
    process after it expired, renewals failing, or :meth:`stop`). Both are called on the
    keeper's thread, one at a time.

    ``lease`` may be a factory, called on the keeper's thread (opening a database is slow).
    ``monotonic`` is for tests, which drive the keeper with :meth:`step` instead of
    :meth:`start`.
    """

    def __init__(
        self,
        lease: Lease | Callable[[], Lease],
        *,
        on_acquired: Callable[[], None],
        on_lost: Callable[[str], None],
        interval: float = RENEW_EVERY,
        monotonic: Callable[[], float] = time.monotonic,
        name: str = "schoolgate-lease",
    ) -> None:
        self._lease_or_factory = lease
        self.lease: Lease | None = lease if isinstance(lease, Lease) else None
        self.on_acquired = on_acquired
        self.on_lost = on_lost
        self.interval = interval
        self.monotonic = monotonic
        self.name = name
        self.held = False
        self.valid_until = 0.0  # monotonic time by which this process stops if not renewed
        self._attempts = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-db")
        self._pending: Future[bool] | None = None
        self._pending_started = 0.0
        self._failing = False
        self._announced: str | None = None  # the other holder last logged
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one step (the thread's loop, or a test) -----------------------------------------------
    def _resolve(self) -> Lease:
        if self.lease is None:
            factory = self._lease_or_factory
            assert callable(factory)
            self.lease = factory()
        return self.lease

    def _attempt(self) -> bool:
        return self._resolve().try_acquire()

    def _submit(self) -> None:
        self._pending_started = self.monotonic()
        self._pending = self._attempts.submit(self._attempt)
        self._pending.add_done_callback(lambda _: self._wake.set())

    def step(self, wait: float | None = None) -> bool:
        """One acquire-or-renew attempt (waiting at most ``wait`` seconds for the database, and
        never past the end of a held lease's validity); whether this process holds the lease."""
        if self._pending is None:
            self._submit()
        return self._collect(wait)

    def _collect(self, wait: float | None) -> bool:
        assert self._pending is not None
        timeout = wait
        if self.held:
            left = max(self.valid_until - self.monotonic(), 0.0)
            timeout = left if timeout is None else min(timeout, left)
        try:
            ok = self._pending.result(timeout=timeout)
        except FutureTimeout:
            # The database has not answered: the attempt goes on, but a held lease must not
            # outlive its validity while waiting for it.
            self._check_validity("renewing the lease is taking too long")
            return self.held
        except Exception as exc:  # noqa: BLE001 - e.g. the database is unreachable
            self._pending = None
            if not self._failing:
                log.warning("schoolgate: could not renew the %s lease: %s", self._label(), exc)
            self._failing = True
            self._check_validity(f"the lease could not be renewed ({type(exc).__name__})")
            return self.held
        self._pending = None
        if self._failing:
            log.info("schoolgate: the %s lease can be renewed again", self._label())
        self._failing = False
        lease = self._resolve()
        if ok:
            until = self._pending_started + lease.ttl - self.interval
            if self.monotonic() >= until:
                # The answer came too late to count on: the next attempt renews it in time.
                self._check_validity("renewing the lease took too long")
                return self.held
            self.valid_until = until
            if not self.held:
                self.held = True
                try:
                    self.on_acquired()
                except Exception:
                    # Holding the lease without doing its work would starve the others: let
                    # one of them have it (this process tries again at its next attempt).
                    self.held = False
                    self._attempts.submit(lease.release)
                    raise
        else:
            if lease.seen_holder is not None and lease.seen_holder != self._announced:
                log.info("schoolgate: the %s lease is held by %s", lease.name, lease.seen_holder)
                self._announced = lease.seen_holder
            if self.held:
                self._lose("another process holds it now")
        return self.held

    def _label(self) -> str:
        return self.lease.name if self.lease is not None else "?"

    def _check_validity(self, reason: str) -> None:
        if self.held and self.monotonic() >= self.valid_until:
            self._lose(reason)

    def _lose(self, reason: str) -> None:
        self.held = False
        self.on_lost(reason)

    def next_wait(self) -> float:
        """Seconds until the next attempt: the interval, or sooner when a held lease's
        validity ends first."""
        wait = self.interval
        if self.held:
            wait = min(wait, max(self.valid_until - self.monotonic(), 0.0))
        return wait

    # -- the thread -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def _sleep(self, seconds: float | None) -> None:
        # Woken early by stop() and by an attempt finishing.
        self._wake.wait(seconds)
        self._wake.clear()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._pending is None:
                    self._submit()
                # Until the database answers, or (holding the lease) until its validity ends.
                self._sleep(self.next_wait() if self.held else None)
                if self._stop.is_set():
                    break
                self._collect(0)
            except Exception:  # noqa: BLE001 - e.g. on_acquired failed; try again later
                log.exception("schoolgate: the %s lease keeper failed; trying again", self._label())
            if self._pending is None:
                self._sleep(self.next_wait())
        self._finish()

    def _finish(self) -> None:
        if self.held:
            self._lose("this process is stopping")
        if self.lease is not None and (self._pending is None or self._pending.done()):
            try:
                self.lease.release()
            except Exception as exc:  # noqa: BLE001 - it expires by itself
                log.warning("schoolgate: could not release the %s lease: %s", self._label(), exc)
        self._attempts.shutdown(wait=False)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop trying; ``on_lost`` if held, and the lease is released for another process."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        else:
            self._finish()
