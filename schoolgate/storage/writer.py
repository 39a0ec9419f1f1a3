"""The decision log's writer: every event to the spool at once, then to the database in batches.

The mitmproxy event loop only calls :meth:`EventLog.record`: it writes the event as one JSON
line to the spool (:mod:`schoolgate.storage.spool`; a ``write(2)``, no ``fsync``: that is a
thread's job, every 0.2 s) and appends it to a :class:`collections.deque`; it never touches
the database. A writer thread takes up to ``batch_size`` events at a time, makes them storable
(:func:`~schoolgate.storage.storable.storable_row`) and inserts them with one ``executemany``
(:class:`~schoolgate.storage.batches.BatchWriter`); a spool segment is deleted once all its
events are in the database.

No event is dropped, silently or otherwise:

* the database unavailable or locked: the batch is kept and retried with exponential backoff
  (0.1 s doubling to 5 s), with a warning (at most one every 30 s while it lasts) and a note
  when writing resumes. The events are in the spool meanwhile: a crash or ``kill -9`` loses
  none of them (a power cut: at most the last 0.2 s), and the next start replays them;
* a batch the database refuses for what it holds: split until the rows refused are alone;
  those go to the dead-letter file (:mod:`schoolgate.storage.deadletter`) with the error, the
  rest are written, and ``on_dead_letter`` is told (the gateway alerts IT Support);
* ``durable=True`` (circumvention events that put a sanction in force): :meth:`record` returns
  a future that the sync thread resolves once the event is ``fsync``-ed, for the gateway to
  wait on before it answers;
* the queue past ``high_water`` events: an ERROR is logged (once per crossing), the events are
  kept. Memory: the row dict of a :func:`~schoolgate.storage.eventlog.decision_event` block takes
  about 1.5 KB in the queue (1,432 bytes measured by ``bench/eventlog_bench.py`` with tracemalloc),
  so the default high-water mark of 1,000,000 events is about 1.4 GB: lower it on small
  machines;
* :meth:`EventLog.close` writes everything queued; what the database still refuses when its
  timeout runs out stays in the spool for the next start (without a spool: logged at ERROR,
  event by event), as does anything recorded after it.
"""

from __future__ import annotations

import atexit
import json
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Engine, Integer, String, Table

from schoolgate.storage.batches import BatchWriter, TransientFailure, first_line
from schoolgate.storage.deadletter import DeadLetters
from schoolgate.storage.models import EventRow
from schoolgate.storage.records import EventRecord
from schoolgate.storage.spool import SYNC_INTERVAL, Spool, read_segment
from schoolgate.storage.storable import Columns, json_default, new_ref, storable_row

log = logging.getLogger(__name__)

EVENT_TABLE = cast(Table, EventRow.__table__)  # a mapped class's table is a Table
COLUMNS: tuple[str, ...] = tuple(c.name for c in EVENT_TABLE.columns if c.name != "id")
COLUMN_LAYOUT = Columns(
    names=COLUMNS,
    text=frozenset(c.name for c in EVENT_TABLE.columns if isinstance(c.type, String)),
    # PostgreSQL refuses a value longer than a String(n) column.
    limits={
        c.name: c.type.length
        for c in EVENT_TABLE.columns
        if isinstance(c.type, String) and c.type.length
    },
    integers=frozenset(
        c.name for c in EVENT_TABLE.columns if isinstance(c.type, Integer) and c.name != "id"
    ),
)

BACKOFF_START = 0.1
BACKOFF_MAX = 5.0
WARN_EVERY = 30.0


# -- the writer ---------------------------------------------------------------------------------


class _Marker:
    """Put in the queue by :meth:`EventLog.flush`: set once everything before it is written."""

    __slots__ = ("done", "then")

    def __init__(self, then: Callable[[], None] | None = None) -> None:
        self.done = threading.Event()
        self.then = then


class _SegmentDone:
    """In the queue after the last event of a spool segment: delete it once they are written."""

    __slots__ = ("path",)

    def __init__(self, path: Path) -> None:
        self.path = path


_MARKERS = (_Marker, _SegmentDone)
# A batch to write: storable rows, the markers after them, whether they are replayed.
_Batch = tuple[list[dict[str, Any]], list[Any], bool]


def _resolved(value: bool) -> Future[bool]:
    future: Future[bool] = Future()
    future.set_result(value)
    return future


class EventLog:
    """Spool + queue + writer thread for the ``events`` table. See the module docstring."""

    def __init__(
        self,
        session_factory: Any,
        *,
        batch_size: int = 500,
        flush_interval: float = 0.25,
        high_water: int = 1_000_000,
        spool_dir: str | Path | None = None,
        dead_letter_path: str | Path | None = None,
        on_dead_letter: Callable[[int, str], None] | None = None,
        sync_interval: float = SYNC_INTERVAL,
    ) -> None:
        """``session_factory``: the sessionmaker from :func:`schoolgate.storage.db.open_database`
        (or an Engine). ``spool_dir``: where the spool's folders go (None: events wait in memory
        only). ``dead_letter_path``: the JSON-lines file for events the database refuses
        (None: logged at ERROR). ``on_dead_letter(count, error)`` is called from the writer
        thread when events went there."""
        if isinstance(session_factory, Engine):
            self._engine: Engine | None = session_factory
            self._session_factory = None
        else:
            self._engine = (getattr(session_factory, "kw", None) or {}).get("bind")
            self._session_factory = session_factory
        self.batch_size = max(1, batch_size)
        self.flush_interval = flush_interval
        self.high_water = high_water
        self.sync_interval = sync_interval
        self.on_dead_letter = on_dead_letter
        self.spool = Spool(Path(spool_dir)) if spool_dir else None
        self.dead_letters = DeadLetters(dead_letter_path)
        self._batches = BatchWriter(EVENT_TABLE, self._transaction, self.dead_letters)
        # The spool's lock, so that the queue is in the order of the spool's lines.
        self._qlock = self.spool.lock if self.spool is not None else threading.Lock()
        self._queue: deque[Any] = deque()
        self._replay_paths: deque[Path] = deque()
        self._replay: deque[Any] = deque()
        self._retry: _Batch | None = None
        self._waiters: list[Future[bool]] = []
        self._markers = 0  # markers in the queue
        self._recorded = 0
        self._handled = 0  # written, skipped as already written, or dead-lettered
        self._replay_count = 0
        self._wake = threading.Event()
        self._give_up = threading.Event()
        self._sync_wake = threading.Event()
        self._sync_stop = threading.Event()
        self._lock = threading.Lock()  # start/close
        self._thread: threading.Thread | None = None
        self._syncer: threading.Thread | None = None
        self._atexit: Callable[[], None] | None = None
        self._stopping = False
        self._closed = False
        self._over_high_water = False
        self._unspoolable_logged = False
        self.failures = 0
        self.peak = 0
        self.last_error: str | None = None

    @property
    def written(self) -> int:
        return self._batches.written

    @property
    def rejected(self) -> int:
        """Events that went to the dead-letter file (or, without one, the ERROR log)."""
        return self.dead_letters.count

    # -- the hot path ---------------------------------------------------------------------------
    def record(
        self, record: EventRecord | dict[str, Any], *, durable: bool = False
    ) -> Future[bool] | None:
        """Queue one event, after writing it to the spool. Non-blocking (a write into the page
        cache), thread-safe, O(size of the event).

        The gateway's events are :class:`~schoolgate.storage.records.EventRecord` objects;
        from here on (spool, queue, dead-letter file, database) an event is the dict of its
        column values, made here and nowhere else. A dict is taken as such column values, as
        the spool holds them (whatever keys and values it has are kept, see
        :func:`~schoolgate.storage.storable.storable_row`).

        ``durable``: a future resolved (True) once the event is ``fsync``-ed, or (False) when
        it cannot be (no spool, a failing disk)."""
        event = record.as_row() if type(record) is EventRecord else cast(dict[str, Any], record)
        if not event.get("ref") or event.get("at") is None:
            # Given here, not by the writer: a replay must find the same event again.
            event = {**event, "ref": event.get("ref") or new_ref()}
            if event.get("at") is None:
                event["at"] = datetime.now(UTC)
        if self._closed:
            self._after_close([event])
            return _resolved(False) if durable else None
        spool = self.spool
        line = None
        if spool is not None:
            try:
                line = (_dumps(event) + "\n").encode("ascii")
            except (TypeError, ValueError, RecursionError):
                self._unspoolable(event)
        waiter: Future[bool] | None = None
        queue = self._queue
        woke = False
        with self._qlock:
            spooled = False
            if spool is not None and line is not None:
                spooled, closed = spool.append(line)
                woke = spool.woke
                if closed is not None:
                    queue.append(_SegmentDone(closed))
                    self._markers += 1
            queue.append(event)
            self._recorded += 1
            size = len(queue)
            if durable:
                waiter = Future()
                if spooled:
                    self._waiters.append(waiter)
                else:
                    waiter.set_result(False)
        if spooled and (waiter is not None or woke):
            self._sync_wake.set()  # the sync thread sleeps while there is nothing to sync
        if size > self.peak:
            self.peak = size
            if size > self.high_water and not self._over_high_water:
                self._over_high_water = True
                log.error(
                    "event log: %d events waiting to be written (high-water mark %d); they are "
                    "kept in memory (about 1.5 KB each). Is the database down? Last error: %s",
                    size,
                    self.high_water,
                    self.last_error,
                )
        if size >= self.batch_size and not self._wake.is_set():
            self._wake.set()
        return waiter

    def _unspoolable(self, event: dict[str, Any]) -> None:
        if not self._unspoolable_logged:
            self._unspoolable_logged = True
            log.error(
                "event log: event %s cannot be written to the spool (not JSON); it is kept "
                "in memory until the database has it",
                event.get("ref"),
            )

    @property
    def pending(self) -> int:
        """Events recorded (or replayed) and not yet written, skipped or dead-lettered."""
        return max(0, self._recorded - self._handled)

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Claim a spool folder (finding what earlier runs left, to replay) and start the
        writer and the spool's sync thread."""
        with self._lock:
            if self._thread is not None or self._closed:
                return
            if self.spool is not None:
                self._open_spool(self.spool)
            self._start_thread()

    def _open_spool(self, spool: Spool) -> None:
        try:
            left = spool.open()
        except OSError as exc:
            log.error(
                "event log: cannot use the spool in %s (%s); events wait in memory only",
                spool.root,
                exc,
            )
            self.spool = None  # its lock stays the queue's lock
            return
        if left:
            log.warning(
                "event log: replaying %d spool segment(s) left by an earlier run (%s)",
                len(left),
                spool.folder,
            )
            self._replay_paths.extend(left)
        self._syncer = threading.Thread(
            target=self._sync_loop, args=(spool,), name="schoolgate-eventlog-sync", daemon=True
        )
        self._syncer.start()

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name="schoolgate-eventlog", daemon=True)
        self._thread.start()
        ref = weakref.ref(self)

        def _at_exit() -> None:  # daemon threads still run while atexit handlers do
            event_log = ref()
            if event_log is not None:
                event_log.close()

        self._atexit = _at_exit
        atexit.register(_at_exit)

    def flush(self, timeout: float = 10) -> bool:
        """Wait until everything recorded before this call is written; False on timeout
        (or when the writer is not running and events are waiting)."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return self.pending == 0
        marker = _Marker()
        with self._qlock:
            self._markers += 1
            self._queue.append(marker)
        self._wake.set()
        return marker.done.wait(timeout)

    def close(self, timeout: float = 30) -> None:
        """Write everything queued and stop (idempotent). What the database still refuses
        after ``timeout`` seconds stays in the spool for the next start (without a spool, it
        is logged at ERROR)."""
        with self._lock:
            if self._closed:
                return
            spool = self.spool
            if spool is not None:
                with self._qlock:
                    closed = spool.rotate()
                    if closed is not None:
                        self._queue.append(_SegmentDone(closed))
                        self._markers += 1
            if self._thread is None and (self._queue or self._replay_paths):
                self._start_thread()
            thread = self._thread
            if thread is not None and thread.is_alive():
                self._stopping = True
                self._wake.set()
                thread.join(timeout)
                if thread.is_alive():
                    self._give_up.set()
                    self._wake.set()
                    thread.join(5)
            self._closed = True
            self._stop_syncer()
            left = self._left_over()
            if left:
                self._leave(left)
            if self._atexit is not None:
                atexit.unregister(self._atexit)
                self._atexit = None

    def _stop_syncer(self) -> None:
        if self._syncer is not None:
            self._sync_stop.set()
            self._sync_wake.set()
            self._syncer.join(10)
            self._syncer = None
        if self.spool is not None and self.spool.folder is not None:
            self.spool.close()
        with self._qlock:
            waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(False)

    def _left_over(self) -> list[dict[str, Any]]:
        left: list[dict[str, Any]] = []
        if self._retry is not None:
            left.extend(self._retry[0])
            self._finish(self._retry[1], delete=False)
            self._retry = None
        for source in (self._replay, self._queue):
            while source:
                item = source.popleft()
                if type(item) is _Marker:
                    item.done.set()
                elif type(item) is not _SegmentDone:
                    left.append(item)
        self._markers = 0
        return left

    def _leave(self, left: list[dict[str, Any]]) -> None:
        spool = self.spool
        where = f"in the spool ({spool.folder})" if spool and spool.folder else "nowhere"
        log.error(
            "event log: %d events could not be written before shutdown (last error: %s); "
            "they are kept %s and written at the next start",
            len(left),
            self.last_error,
            where,
        )
        if spool is not None and spool.folder is not None and spool.failures:
            # Some never reached the spool: keep them all (a replay skips the others).
            self._after_close(left)
        elif spool is None or spool.folder is None:
            self._after_close(left)

    def _after_close(self, events: list[dict[str, Any]]) -> None:
        spool = self.spool
        if spool is not None and spool.folder is not None:
            try:
                lines = [(_dumps(e) + "\n").encode("ascii") for e in events]
            except (TypeError, ValueError, RecursionError):
                lines = None
            if lines is not None and spool.write_late(lines):
                log.warning(
                    "event log: %d events kept in %s for the next start", len(events), spool.folder
                )
                return
        for event in events:
            log.error("event log: unwritten event: %s", _dumps(event, safe=True))

    # -- the spool's sync thread ------------------------------------------------------------------
    def _sync_loop(self, spool: Spool) -> None:
        wake = self._sync_wake
        while True:
            stopping = self._sync_stop.is_set()
            if not stopping:
                with self._qlock:
                    due, dirty, waiting = spool.next_due(), spool.dirty, bool(self._waiters)
                if not waiting:
                    if due is None or due > 0:  # nothing to sync: sleep until written
                        wake.wait(due)
                        wake.clear()
                        continue
                    if dirty:  # batch: what is recorded meanwhile goes in the same fsync
                        wake.wait(self.sync_interval)
                        wake.clear()
            with self._qlock:
                waiters, self._waiters = self._waiters, []
                closed = spool.rotate_if_idle()
                if closed is not None:
                    self._queue.append(_SegmentDone(closed))
                    self._markers += 1
            ok = spool.sync()
            for waiter in waiters:
                waiter.set_result(ok)
            if stopping:
                return

    # -- the writer thread ------------------------------------------------------------------------
    def _transaction(self, fn: Callable[[Any], Any]) -> Any:
        if self._engine is not None:
            with self._engine.begin() as connection:
                return fn(connection.execute)
        factory = self._session_factory
        if factory is None:  # never: without an Engine, there is a session factory
            raise RuntimeError("event log: no database to write to")
        with factory() as session:
            result = fn(session.execute)
            session.commit()
            return result

    def _hurry(self) -> bool:
        return self._stopping or self._markers > 0

    def _take(self, source: deque[Any]) -> tuple[list[dict[str, Any]], list[Any]]:
        events: list[dict[str, Any]] = []
        markers: list[Any] = []
        limit = self.batch_size
        # Without the lock: popleft is atomic, and record() must never wait for this loop.
        while len(events) < limit:
            try:
                item = source.popleft()
            except IndexError:
                break
            if type(item) in _MARKERS:
                markers.append(item)
            else:
                events.append(item)
        if markers and source is self._queue:
            with self._qlock:
                self._markers -= len(markers)
        return events, markers

    def _next_batch(self) -> _Batch | None:
        if not self._replay and self._replay_paths:
            self._load_replay(self._replay_paths.popleft())
        if self._replay:
            events, markers = self._take(self._replay)
            return self._storable(events), markers, True
        if len(self._queue) < self.batch_size and not self._hurry():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
        if not self._queue and self._stopping:
            return None
        events, markers = self._take(self._queue)
        return self._storable(events), markers, False

    def _load_replay(self, path: Path) -> None:
        events: list[Any] = []
        unreadable: list[tuple[dict[str, Any] | str, str]] = []
        try:
            for number, item in read_segment(path):
                if isinstance(item, str):
                    unreadable.append((item, f"unreadable line {number} of {path.name}"))
                else:
                    events.append(item)
        except OSError as exc:
            log.error("event log: cannot read the spool segment %s (%s); left there", path, exc)
            return
        events.append(_SegmentDone(path))
        with self._qlock:
            self._recorded += len(events) - 1 + len(unreadable)
        self._replay.extend(events)
        if unreadable:
            self._dead_letter(unreadable)

    def _storable(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rows = []
        refused: list[tuple[dict[str, Any] | str, str]] = []
        now = datetime.now(UTC)
        for event in events:
            try:
                rows.append(storable_row(event, COLUMN_LAYOUT, now))
            except Exception as exc:  # noqa: BLE001 - kept in the dead-letter file
                refused.append((event, f"cannot be made storable: {first_line(exc, 200)}"))
        if refused:
            self._dead_letter(refused)
        return rows

    def _dead_letter(self, items: list[tuple[dict[str, Any] | str, str]]) -> None:
        self.dead_letters.add(items)
        self._handled += len(items)
        self._tell(len(items), items[0][1])

    def _tell(self, count: int, error: str) -> None:
        log.error(
            "event log: %d event(s) refused by the database (%s); kept in %s",
            count,
            error,
            self.dead_letters.path or "the log above",
        )
        if self.on_dead_letter is not None:
            try:
                self.on_dead_letter(count, error)
            except Exception:  # noqa: BLE001
                log.exception("event log: could not report refused events")

    def _finish(self, markers: list[Any], *, delete: bool = True) -> None:
        for marker in markers:
            if type(marker) is _SegmentDone:
                if delete and self.spool is not None:
                    self.spool.remove(marker.path)
                continue
            if marker.then is not None and delete:
                try:
                    marker.then()
                except Exception:  # noqa: BLE001
                    log.exception("event log: post-flush action failed")
            marker.done.set()

    def _replayed(self, count: int) -> None:
        self._replay_count += count
        if not self._replay and not self._replay_paths:
            log.warning(
                "event log: the %d event(s) an earlier run left in the spool are in the database "
                "(%d of them were already)",
                self._replay_count,
                self._batches.skipped,
            )
            self._replay_count = 0

    def _run(self) -> None:
        backoff = BACKOFF_START
        failing_since: float | None = None
        last_warning = -WARN_EVERY
        while not self._give_up.is_set():
            batch = self._retry or self._next_batch()
            if batch is None:
                return
            rows, markers, replay = batch
            try:
                rejected = self._batches.write(rows, replay=replay) if rows else 0
            except TransientFailure as failure:
                self._handled += len(rows) - len(failure.remaining)
                self.failures += 1
                self.last_error = str(failure)
                self._retry = (failure.remaining, markers, replay)
                now = time.monotonic()
                if failing_since is None:
                    failing_since = now
                if now - last_warning >= WARN_EVERY:
                    last_warning = now
                    log.warning(
                        "event log: writing %d events failed (%s); keeping them and retrying "
                        "(%d waiting)",
                        len(failure.remaining),
                        self.last_error,
                        self.pending,
                    )
                self._give_up.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            self._retry = None
            self._handled += len(rows)
            if rejected:
                self._tell(rejected, self._batches.last_rejection or "refused")
            if failing_since is not None:
                log.warning(
                    "event log: writing again after %.1f s of failures (%d waiting)",
                    time.monotonic() - failing_since,
                    self.pending,
                )
                failing_since = None
                last_warning = -WARN_EVERY
            backoff = BACKOFF_START
            self._finish(markers)
            if replay:
                self._replayed(len(rows))
            if self._over_high_water and len(self._queue) < self.high_water // 2:
                self._over_high_water = False
                self.peak = len(self._queue)
                log.warning(
                    "event log: back under half the high-water mark (%d waiting)", len(self._queue)
                )


def _dumps(event: dict[str, Any], *, safe: bool = False) -> str:
    """One event as a line of ASCII JSON (``safe``: whatever it holds)."""
    if not safe:
        return json.dumps(event, default=json_default, separators=(",", ":"))
    try:
        return json.dumps(event, default=json_default, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        return repr(event)
