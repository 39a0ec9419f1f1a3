"""The decision log writer: events go through a queue to a writer thread, in batches.

The mitmproxy event loop only ever calls :meth:`EventLog.record`, which appends a dict to a
:class:`collections.deque` (O(1), thread-safe, never blocks, never touches the database). A
single writer thread takes up to ``batch_size`` events at a time and inserts them with one
SQLAlchemy Core ``executemany`` in one transaction.

No event is dropped silently:

* database unavailable or locked (``OperationalError`` and friends): the batch is kept and
  retried with exponential backoff (0.1 s doubling to 5 s), with a warning in the log (at most
  one every 30 s while it lasts) and a note when writing resumes;
* a batch the database refuses for its content (``IntegrityError``/``DataError``): it is
  written row by row; a row whose ``ref`` already exists is kept under a new ref
  (``<ref>-<4 hex>``, the original in ``detail.original_ref``); a row that still cannot be
  written is logged at ERROR with its full content (and appended to ``spill_path``, if set)
  and counted in :attr:`EventLog.rejected`;
* the queue past ``high_water`` events: an ERROR is logged (once per crossing), the events are
  kept. Memory: a :func:`decision_event` dict of a block takes about 1.5 KB in the queue
  (1,432 bytes measured by ``bench/eventlog_bench.py`` with tracemalloc), so the default
  high-water mark of 1,000,000 events is about 1.4 GB: lower it on small machines;
* :meth:`EventLog.close` writes everything queued; if the database is still failing when its
  timeout runs out, what is left is written as JSON lines to ``spill_path`` (replayed by the
  next :meth:`EventLog.start`) or, without a spill file, logged at ERROR event by event;
* :meth:`EventLog.record` after :meth:`EventLog.close` goes to the spill file (or the ERROR log).

Values are normalised by the writer, not by :meth:`record`: missing columns become NULL, a
naive ``at`` is taken as UTC, an ISO string ``at`` is parsed, a dict ``detail`` is JSON-encoded,
strings longer than their column (PostgreSQL enforces ``String(n)``) are cut, NUL characters
(which PostgreSQL refuses in text) become U+FFFD, unknown keys are dropped with a warning (once
per key).
"""

from __future__ import annotations

import atexit
import json
import logging
import secrets
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import Engine, String, insert, select
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    StatementError,
)

from schoolgate.db import EventRow
from schoolgate.hosts import normalize_host
from schoolgate.model import Decision, RequestFacts
from schoolgate.monitoring.searches import capture

log = logging.getLogger(__name__)

EVENT_TABLE = EventRow.__table__
COLUMNS: tuple[str, ...] = tuple(c.name for c in EVENT_TABLE.columns if c.name != "id")
_COLUMN_SET = frozenset(COLUMNS)
# String(n) columns and their lengths: cut before writing (PostgreSQL refuses longer values).
_LIMITS: tuple[tuple[str, int], ...] = tuple(
    (c.name, c.type.length)
    for c in EVENT_TABLE.columns
    if isinstance(c.type, String) and c.type.length and c.name not in ("ref", "at")
)
# Every text column: PostgreSQL refuses a NUL character in text, which a decoded search term
# (``?q=%00``) can carry; unreplaced, the whole event would be refused and go unlogged. (Text
# is a String.)
_TEXT_COLUMNS: tuple[str, ...] = tuple(
    c.name for c in EVENT_TABLE.columns if isinstance(c.type, String)
)
SEARCH_TERM_MAX = 500

BACKOFF_START = 0.1
BACKOFF_MAX = 5.0
WARN_EVERY = 30.0


def new_ref() -> str:
    """A unique reference for one logged decision: 16 hex characters (64 random bits)."""
    return secrets.token_hex(8)


# -- building events ---------------------------------------------------------------------------


def search_term_of(host: str, path: str | None) -> str | None:
    """The search term in a search engine's results URL, or None: the engines and decoding of
    :func:`schoolgate.monitoring.searches.capture` (autocomplete requests, one per keystroke,
    are not search terms here). ``host`` may carry a port or capitals; the term is
    whitespace-collapsed and cut to 500 characters."""
    found = capture(host, path)
    return found.term[:SEARCH_TERM_MAX] if found is not None else None


def _strip_url(url: str, keep_paths: bool) -> str:
    """Never keep credentials in a URL; without ``keep_paths`` keep ``scheme://host[:port]/``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url if keep_paths else ""
    netloc = parts.netloc.rpartition("@")[2]
    if not keep_paths:
        return urlunsplit((parts.scheme, netloc, "/", "", ""))
    if netloc != parts.netloc or parts.fragment:
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    return url


def decision_event(
    decision: Decision,
    facts: RequestFacts,
    *,
    ref: str,
    url: str | None,
    device: str | None = None,
    search_term: str | None = None,
    keep_paths: bool = True,
    kind: str | None = None,
    detail: dict | None = None,
) -> dict[str, Any]:
    """The :class:`~schoolgate.db.EventRow` column values for one decision.

    ``kind`` defaults to ``"error"`` when the policy failed, else ``"block"``/``"allow"``.
    ``url`` None: built from the facts when the path is known (``scheme://host[:port]path``),
    else left empty (a CONNECT or SNI decision: ``host`` says it all). Credentials in a URL are
    never kept. ``keep_paths=False`` cuts the URL to ``scheme://host/``.

    ``search_term`` None: taken from the URL by :func:`search_term_of`. The search term is kept
    even when ``keep_paths`` is False, because the DfE filtering standard asks schools to log
    "the search term or content blocked"; a school that wants neither should not log allowed
    searches at all.

    ``detail`` (JSON text) carries the evidence that has no column: the list entry and its file,
    until when a block lasts, how the identity was found, the error; the ``detail`` argument is
    merged over it. (``Decision.reasons`` is not stored: it is rebuilt from these.)
    """
    ident = decision.identity
    if kind is None:
        kind = "error" if decision.error else ("allow" if decision.allowed else "block")
    host = normalize_host(facts.host) if facts.host else None
    if url is None and facts.path is not None and host:
        default_port = {"http": 80, "https": 443}.get(facts.scheme)
        netloc = host if ":" not in host else f"[{host}]"
        if facts.port and facts.port != default_port:
            netloc = f"{netloc}:{facts.port}"
        url = f"{facts.scheme}://{netloc}{facts.path}"
    if search_term is None and host and facts.path:
        search_term = search_term_of(host, facts.path)
    if url is not None:
        url = _strip_url(url, keep_paths)
    user = ident.user or facts.user
    window = decision.window
    extra: dict[str, Any] = {}
    if decision.match is not None:
        extra["list_entry"] = decision.match.entry
        extra["list_source"] = decision.match.source
    if decision.until is not None:
        extra["until"] = decision.until.isoformat()
    if ident.rule or ident.source != "default":
        extra["identity"] = f"{ident.source}: {ident.rule}" if ident.rule else ident.source
    if decision.error:
        extra["error"] = decision.error
    if detail:
        extra.update(detail)
    return {
        "ref": ref,
        "at": facts.at,
        "kind": kind,
        "action": str(decision.action),
        "client_ip": facts.client_ip or ident.client_ip,
        "device": device or ident.device,
        "user": user.lower() if user else None,
        "role": ident.role,
        "group": ident.group,
        "site": ident.site or None,
        "method": facts.method,
        "scheme": facts.scheme,
        "host": host,
        "url": url,
        "search_term": search_term,
        "category": decision.category,
        "window": window.kind if window else None,
        "window_name": window.name if window else None,
        "rule": decision.rule or None,
        "exception_id": decision.exception_id,
        "reason": decision.reason,
        "detail": json.dumps(extra, default=str, separators=(",", ":")) if extra else None,
    }


# -- the writer ---------------------------------------------------------------------------------


class _Marker:
    """Put in the queue by :meth:`EventLog.flush`: set once everything before it is written."""

    __slots__ = ("done", "then")

    def __init__(self, then: Callable[[], None] | None = None) -> None:
        self.done = threading.Event()
        self.then = then


def _transient(exc: BaseException) -> bool:
    """Whether a failed write is worth retrying as it is (the database, not the rows)."""
    if isinstance(exc, (IntegrityError, DataError)):
        return False
    if isinstance(exc, StatementError) and not isinstance(exc, DBAPIError):
        return False  # a value the column type refused before it reached the database
    return True


def _first_line(exc: BaseException, limit: int = 300) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:limit]


class EventLog:
    """Queue + writer thread for the ``events`` table. See the module docstring."""

    def __init__(
        self,
        session_factory: Any,
        *,
        batch_size: int = 500,
        flush_interval: float = 0.25,
        high_water: int = 1_000_000,
        spill_path: str | Path | None = None,
    ) -> None:
        """``session_factory``: the sessionmaker from :func:`schoolgate.db.open_database` (or an
        Engine). ``spill_path``: a JSON-lines file for events still unwritten at shutdown
        (replayed by the next :meth:`start`); None logs them at ERROR instead."""
        if isinstance(session_factory, Engine):
            self._engine: Engine | None = session_factory
            self._session_factory = None
        else:
            self._engine = (getattr(session_factory, "kw", None) or {}).get("bind")
            self._session_factory = session_factory
        self.batch_size = max(1, batch_size)
        self.flush_interval = flush_interval
        self.high_water = high_water
        self.spill_path = Path(spill_path) if spill_path else None
        self._queue: deque[Any] = deque()
        self._retry: list[dict[str, Any]] = []
        self._retry_markers: list[_Marker] = []
        self._markers = 0  # markers in the queue (flush requests)
        self._wake = threading.Event()
        self._give_up = threading.Event()
        self._lock = threading.Lock()  # start/close, marker count
        self._thread: threading.Thread | None = None
        self._atexit: Callable[[], None] | None = None
        self._stopping = False
        self._closed = False
        self._over_high_water = False
        self._unknown_keys: set[str] = set()
        self._in_flight = 0
        self.written = 0
        self.failures = 0
        self.rejected = 0
        self.peak = 0
        self.last_error: str | None = None

    # -- the hot path ---------------------------------------------------------------------------
    def record(self, event: dict[str, Any]) -> None:
        """Queue one event (a dict of column values). Non-blocking, thread-safe, O(1)."""
        if self._closed:
            self._after_close([event])
            return
        queue = self._queue
        queue.append(event)
        size = len(queue)
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

    @property
    def pending(self) -> int:
        """Events recorded and not yet written (queued, being written, or waiting to retry)."""
        return max(0, len(self._queue) - self._markers + len(self._retry) + self._in_flight)

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the writer thread (replaying the spill file first, if there is one)."""
        with self._lock:
            if self._thread is not None or self._closed:
                return
            self._replay_spill()
            self._start_thread()

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
        with self._lock:
            self._markers += 1
        self._queue.append(marker)
        self._wake.set()
        return marker.done.wait(timeout)

    def close(self, timeout: float = 30) -> None:
        """Write everything queued and stop the writer (idempotent). What the database still
        refuses after ``timeout`` seconds goes to the spill file, or to the ERROR log."""
        with self._lock:
            if self._closed:
                return
            if self._thread is None and self._queue:
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
            left = list(self._retry)
            self._retry = []
            for marker in self._retry_markers:
                marker.done.set()
            while self._queue:
                item = self._queue.popleft()
                if type(item) is _Marker:
                    item.done.set()
                else:
                    left.append(item)
            self._markers = 0
            if left:
                log.error(
                    "event log: %d events could not be written before shutdown (last error: %s)",
                    len(left),
                    self.last_error,
                )
                self._after_close(left)
            if self._atexit is not None:
                atexit.unregister(self._atexit)
                self._atexit = None

    # -- the writer thread ------------------------------------------------------------------------
    def _take(self) -> tuple[list[dict[str, Any]], list[_Marker]]:
        events: list[dict[str, Any]] = []
        markers: list[_Marker] = []
        queue = self._queue
        limit = self.batch_size
        append = events.append
        while len(events) < limit:
            try:
                item = queue.popleft()
            except IndexError:
                break
            if type(item) is _Marker:
                markers.append(item)
            else:
                append(item)
        self._in_flight = len(events)
        if markers:
            with self._lock:
                self._markers -= len(markers)
        return events, markers

    def _hurry(self) -> bool:
        return self._stopping or self._markers > 0

    def _run(self) -> None:
        backoff = BACKOFF_START
        failing_since: float | None = None
        last_warning = -WARN_EVERY
        while not self._give_up.is_set():
            if self._retry:
                events, markers = self._retry, self._retry_markers
                self._retry, self._retry_markers = [], []
                self._in_flight = len(events)
            else:
                if len(self._queue) < self.batch_size and not self._hurry():
                    self._wake.wait(self.flush_interval)
                    self._wake.clear()
                if not self._queue and self._stopping:
                    return
                events, markers = self._take()
            try:
                if events:
                    self._write(events)
            except Exception as exc:  # noqa: BLE001 - keep the events, whatever happened
                self.failures += 1
                self.last_error = _first_line(exc)
                if self._closed:  # close() gave up on this thread meanwhile: spill or log
                    self._after_close(events)
                    return
                self._retry, self._retry_markers = events, markers
                self._in_flight = 0
                now = time.monotonic()
                if failing_since is None:
                    failing_since = now
                if now - last_warning >= WARN_EVERY:
                    last_warning = now
                    log.warning(
                        "event log: writing %d events failed (%s); keeping them and retrying "
                        "(%d waiting)",
                        len(events),
                        self.last_error,
                        self.pending,
                    )
                self._give_up.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            self._in_flight = 0
            if failing_since is not None:
                log.warning(
                    "event log: writing again after %.1f s of failures (%d waiting)",
                    time.monotonic() - failing_since,
                    self.pending,
                )
                failing_since = None
                last_warning = -WARN_EVERY
            backoff = BACKOFF_START
            for marker in markers:
                if marker.then is not None:
                    try:
                        marker.then()
                    except Exception:  # noqa: BLE001
                        log.exception("event log: post-flush action failed")
                marker.done.set()
            if self._over_high_water and len(self._queue) < self.high_water // 2:
                self._over_high_water = False
                self.peak = len(self._queue)
                log.warning(
                    "event log: back under half the high-water mark (%d waiting)", len(self._queue)
                )

    def _rows(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rows = []
        for event in events:
            if not _COLUMN_SET.issuperset(event):
                unknown = set(event) - _COLUMN_SET - self._unknown_keys
                if unknown:
                    self._unknown_keys |= unknown
                    log.warning("event log: ignoring unknown event keys %s", sorted(unknown))
            row = {name: event.get(name) for name in COLUMNS}
            at = row["at"]
            if at is None:
                row["at"] = datetime.now(UTC)
            elif isinstance(at, str):
                at = datetime.fromisoformat(at)
                row["at"] = at if at.tzinfo else at.replace(tzinfo=UTC)
            elif at.tzinfo is None:
                row["at"] = at.replace(tzinfo=UTC)
            if not row["ref"]:
                row["ref"] = new_ref()
            if not row["kind"]:
                row["kind"] = "event"
            if row["action"] is None:
                row["action"] = ""
            detail = row["detail"]
            if detail is not None and not isinstance(detail, str):
                row["detail"] = json.dumps(detail, default=str, separators=(",", ":"))
            for name in _TEXT_COLUMNS:
                value = row[name]
                if type(value) is str and "\x00" in value:
                    row[name] = value.replace("\x00", "\ufffd")
            for name, length in _LIMITS:
                value = row[name]
                if type(value) is str and len(value) > length:
                    row[name] = value[:length]
            rows.append(row)
        return rows

    def _execute(self, rows: list[dict[str, Any]]) -> None:
        statement = insert(EVENT_TABLE)
        if self._engine is not None:
            with self._engine.begin() as connection:
                connection.execute(statement, rows)
        else:
            with self._session_factory() as session:
                session.execute(statement, rows)
                session.commit()

    def _write(self, events: list[dict[str, Any]]) -> None:
        """Write a batch; on a transient failure ``events`` holds what is left to retry."""
        rows = self._rows(events)
        try:
            self._execute(rows)
        except Exception as exc:
            if _transient(exc):
                raise
            log.warning(
                "event log: a batch of %d was refused (%s); writing row by row",
                len(rows),
                _first_line(exc, 200),
            )
            for index, row in enumerate(rows):
                try:
                    self._write_row(row)
                except Exception:
                    events[:] = rows[index:]  # the database went away meanwhile
                    raise
            return
        self.written += len(rows)

    def _write_row(self, row: dict[str, Any]) -> None:
        """Write one row of a refused batch; raises only on a transient failure."""
        try:
            self._execute([row])
            self.written += 1
            return
        except Exception as exc:
            if _transient(exc):
                raise
            error: BaseException = exc
        if isinstance(error, IntegrityError):
            existing = self._existing(row["ref"])
            if existing is not None:
                at, host = existing
                if at == row["at"] and host == row["host"]:
                    log.info("event log: event %s was already written", row["ref"])
                    return
                original = row["ref"]
                row = dict(row)
                row["ref"] = f"{original[:35]}-{secrets.token_hex(2)}"
                try:
                    detail = json.loads(row["detail"]) if row["detail"] else {}
                except ValueError:
                    detail = {"detail": row["detail"]}
                if not isinstance(detail, dict):
                    detail = {"detail": detail}
                detail["original_ref"] = original
                row["detail"] = json.dumps(detail, default=str, separators=(",", ":"))
                log.warning(
                    "event log: ref %s is already in the log; keeping this event as %s",
                    original,
                    row["ref"],
                )
                try:
                    self._execute([row])
                    self.written += 1
                    return
                except Exception as exc:
                    if _transient(exc):
                        raise
                    error = exc
        self.rejected += 1
        log.error(
            "event log: event refused by the database (%s): %s",
            _first_line(error, 200),
            json.dumps(row, default=_json_default),
        )
        self._spill([row])

    def _existing(self, ref: str) -> tuple[datetime, str | None] | None:
        statement = select(EVENT_TABLE.c.at, EVENT_TABLE.c.host).where(EVENT_TABLE.c.ref == ref)
        try:
            if self._engine is not None:
                with self._engine.connect() as connection:
                    found = connection.execute(statement).first()
            else:
                with self._session_factory() as session:
                    found = session.execute(statement).first()
        except Exception:  # noqa: BLE001
            return None
        return (found[0], found[1]) if found is not None else None

    # -- spill file --------------------------------------------------------------------------------
    def _after_close(self, events: list[dict[str, Any]]) -> None:
        if self._spill(events):
            log.warning(
                "event log: %d events kept in %s for the next start", len(events), self.spill_path
            )
            return
        for event in events:
            log.error("event log: unwritten event: %s", json.dumps(event, default=_json_default))

    def _spill(self, events: list[dict[str, Any]]) -> bool:
        if self.spill_path is None:
            return False
        try:
            self.spill_path.parent.mkdir(parents=True, exist_ok=True)
            with self.spill_path.open("a", encoding="utf-8") as handle:
                for event in events:
                    handle.write(json.dumps(event, default=_json_default) + "\n")
            return True
        except OSError:
            log.exception("event log: cannot write the spill file %s", self.spill_path)
            return False

    def _replay_spill(self) -> None:
        """Queue the events a previous run could not write; the file goes once they are."""
        path = self.spill_path
        if path is None:
            return
        replay = path.with_name(path.name + ".replaying")
        events: list[dict[str, Any]] = []
        for source in (replay, path):
            if source.exists():
                events += _read_spill(source)
        if not events:
            replay.unlink(missing_ok=True)
            path.unlink(missing_ok=True)
            return
        partial = replay.with_name(replay.name + ".tmp")
        with partial.open("w", encoding="utf-8") as handle:
            for event in events:
                handle.write(json.dumps(event, default=_json_default) + "\n")
        partial.replace(replay)
        path.unlink(missing_ok=True)
        log.warning("event log: replaying %d events from %s", len(events), path)
        self._queue.extend(events)
        self._markers += 1  # start() holds the lock; the thread is not running yet
        self._queue.append(_Marker(then=lambda: replay.unlink(missing_ok=True)))


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _read_spill(path: Path) -> list[dict[str, Any]]:
    events = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            line = line.strip()
            if not line:
                continue
            try:
                events.append(json.loads(line))
            except ValueError:
                log.error("event log: unreadable line %d in %s: %r", number, path, line[:500])
    return events
