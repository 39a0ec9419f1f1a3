"""Each process's copy of the bindings in force, read by the event loop without a database call.

A background thread (never the event loop) keeps it current: every ``interval`` seconds (0.5 by
default) it asks for the rows changed since the last change number it has seen
(:func:`schoolgate.storage.bindings.changed_since`, one indexed query that usually returns
nothing), so a binding made by any worker or gateway on the same database is honoured
everywhere within about one interval. The same thread writes renewals for bindings that last
while in use, and notes lapsed bindings in the audit trail.

Reads are a dictionary look-up and a few comparisons. When the database cannot be read the
copy is kept, but expiry is still checked against the clock: a binding never outlives its time
because the database is down (students fall back to sign-in, fail closed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy.orm import sessionmaker

if TYPE_CHECKING:
    from schoolgate.gateway.background import Periodic

from schoolgate.bindings.names import normalise_address
from schoolgate.core.binding import SOURCES, Binding

log = logging.getLogger(__name__)

REFRESH_INTERVAL = 0.5  # seconds between looks for changes
SWEEP_EVERY = 5.0  # seconds between notes of lapsed bindings in the audit trail
INF = float("inf")


class _Entry:
    """A binding with its times as numbers (seconds since the epoch) for cheap comparisons."""

    __slots__ = ("binding", "rank", "expires", "idle", "ends_by", "stored_seen")

    def __init__(self, binding: Binding, rank: int) -> None:
        self.binding = binding
        self.rank = rank
        self.expires = binding.expires_at.timestamp() if binding.expires_at else INF
        self.idle = float(binding.idle_seconds or 0)
        self.ends_by = binding.ends_by.timestamp() if binding.ends_by else INF
        self.stored_seen = binding.last_seen.timestamp()


class BindingCache:
    """Bindings in force by address; the first of the configured ``order`` of sources wins.

    ``sessions`` may be a factory (opening a database is slow; it is called on the thread).
    """

    def __init__(
        self,
        sessions: sessionmaker | Callable[[], sessionmaker] | None,
        *,
        order: Sequence[str] = SOURCES,
        interval: float = REFRESH_INTERVAL,
        sweep_every: float = SWEEP_EVERY,
        clock: Callable[[], float] = time.time,
        name: str = "schoolgate-bindings",
    ) -> None:
        self._sessions_or_factory = sessions
        self.sessions: sessionmaker | None = (
            sessions if isinstance(sessions, sessionmaker) else None
        )
        self.order = tuple(order)
        self._rank = {source: index for index, source in enumerate(self.order)}
        self.interval = interval
        self.sweep_every = sweep_every
        self.clock = clock
        self.version = -1  # the last change number applied; -1 until the first full read
        self.refreshed_at: float | None = None
        self.failing = False
        self._by_address: dict[str, tuple[_Entry, ...]] = {}
        self._pending: dict[int, float] = {}  # binding id -> traffic time to write
        self._last_sweep = 0.0
        self.name = name
        self._worker: Periodic | None = None

    # -- the event loop's side ----------------------------------------------------------------
    def lookup(self, address: str, *, traffic: bool = True) -> Binding | None:
        """The binding in force for ``address`` (first source in the configured order), or None.

        ``traffic`` counts this look-up as use of the address: bindings that last while in use
        (sign-in, Negotiate) are renewed locally at once and in the database soon after.
        """
        entries = self._by_address.get(address)
        if entries is None:
            if ":" not in address:
                return None
            try:
                entries = self._by_address.get(normalise_address(address))
            except ValueError:
                return None
            if entries is None:
                return None
        now = self.clock()
        for entry in entries:
            if now >= entry.expires:
                continue
            if traffic and entry.idle:
                renewed = min(now + entry.idle, entry.ends_by)
                if renewed > entry.expires:
                    entry.expires = renewed
                # Written back when a quarter of the idle time has passed since the stored
                # renewal: about four writes per idle period for an address in constant use.
                if now - entry.stored_seen >= entry.idle / 4:
                    self._pending[entry.binding.id] = now
            return entry.binding
        return None

    def addresses(self) -> int:
        return len(self._by_address)

    def snapshot(self) -> list[Binding]:
        """Every binding in force in this copy, by address then source order."""
        now = self.clock()
        out: list[Binding] = []
        for address in sorted(self._by_address):
            out.extend(e.binding for e in self._by_address[address] if now < e.expires)
        return out

    # -- the thread's side --------------------------------------------------------------------
    def _resolve(self) -> sessionmaker | None:
        if self.sessions is None and self._sessions_or_factory is not None:
            factory = self._sessions_or_factory
            assert callable(factory)
            self.sessions = factory()  # type: ignore[call-arg]
        return self.sessions

    def refresh(self) -> bool:
        """One round: write renewals, note lapsed bindings, read what changed. Blocking: the
        thread (or a test) calls it. Whether the database answered."""
        from schoolgate.storage import bindings as store

        try:
            sessions = self._resolve()
        except Exception:  # noqa: BLE001 - tried again next round
            self._failed("cannot open the database for bindings")
            return False
        if sessions is None:
            return False
        try:
            self._write_renewals(sessions)
            now = self.clock()
            if now - self._last_sweep >= self.sweep_every:
                self._last_sweep = now
                store.in_transaction(
                    sessions, lambda db: store.expire_due(db, datetime.fromtimestamp(now, UTC))
                )
            with sessions() as db:
                if self.version < 0:
                    version, rows = store.not_ended(db)
                    self._replace(rows)
                    self.version = version
                else:
                    while True:
                        rows = store.changed_since(db, self.version)
                        if not rows:
                            break
                        self._apply(rows)
                        self.version = rows[-1].version
        except Exception:  # noqa: BLE001 - keep the last copy; expiry still applies
            self._failed("cannot read bindings; keeping the last ones read")
            return False
        if self.failing:
            log.info("schoolgate: reading bindings again")
        self.failing = False
        self.refreshed_at = self.clock()
        return True

    def _failed(self, message: str) -> None:
        if not self.failing:
            log.exception("schoolgate: %s", message)
        self.failing = True

    def _write_renewals(self, sessions: sessionmaker) -> None:
        if not self._pending:
            return
        from schoolgate.storage import bindings as store

        pending, self._pending = self._pending, {}
        seen = {key: datetime.fromtimestamp(at, UTC) for key, at in pending.items()}
        try:
            store.in_transaction(sessions, lambda db: store.touch(db, seen))
        except Exception:
            # Kept for the next round (newer traffic wins).
            for key, at in pending.items():
                self._pending[key] = max(at, self._pending.get(key, 0.0))
            raise

    def _entry(self, binding: Binding) -> _Entry | None:
        rank = self._rank.get(binding.source)
        if rank is None or binding.ended_at is not None:
            return None  # a source the config no longer lists does not count
        return _Entry(binding, rank)

    def _replace(self, rows: Iterable[Binding]) -> None:
        table: dict[str, list[_Entry]] = {}
        for binding in rows:
            entry = self._entry(binding)
            if entry is not None:
                table.setdefault(binding.address, []).append(entry)
        self._by_address = {
            address: tuple(sorted(entries, key=lambda e: e.rank))
            for address, entries in table.items()
        }

    def _apply(self, rows: Iterable[Binding]) -> None:
        for binding in rows:
            kept = [
                e for e in self._by_address.get(binding.address, ()) if e.binding.id != binding.id
            ]
            entry = self._entry(binding)
            if entry is not None:
                kept.append(entry)
            if kept:
                # One assignment: the event loop sees the old tuple or the new one.
                self._by_address[binding.address] = tuple(sorted(kept, key=lambda e: e.rank))
            else:
                self._by_address.pop(binding.address, None)

    def reorder(self, order: Sequence[str]) -> None:
        """A new order of sources (a reload): every binding is read again, ranked by it."""
        order = tuple(order)
        if order != self.order:
            self.order = order
            self._rank = {source: index for index, source in enumerate(order)}
            self.version = -1  # the next refresh reads every binding not ended
            self.wake()

    def start(self) -> None:
        from schoolgate.gateway.background import Periodic

        if self._worker is None:
            self._worker = Periodic(self.name, self.refresh, first=True)
        self._worker.start(self.interval)

    def wake(self) -> None:
        """Look for changes now (after this process wrote one)."""
        if self._worker is not None:
            self._worker.wake()

    def stop(self, timeout: float = 10) -> None:
        if self._worker is not None:
            self._worker.stop(timeout)
