"""Writing batches of event rows: retried when the database is the problem, split when a row is.

:meth:`BatchWriter.write` inserts rows (already made storable by
:func:`~schoolgate.storage.storable.storable_row`) with one ``executemany`` per batch:

* a failure of the database itself (locked, disk full, connection lost: :func:`transient`)
  raises :class:`TransientFailure` carrying every row not yet written, for the caller to keep
  and retry later, as they are;
* any other failure is about what is in the rows: the batch is split in halves, and the halves
  written, until the row (or rows) refused are alone. A row whose reference is already in the
  log is either that same event written before (skipped: a replay after a crash) or another
  one (kept under a new reference, the original in ``detail.original_ref``); any other row
  that is still refused goes to the dead-letter file with the error, and the rest are written.

Replayed rows (from the spool after a restart) are first checked against the references in the
database, so that a segment written just before a crash is not inserted twice.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from sqlalchemy import Table, insert, select
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    InterfaceError,
    InternalError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from schoolgate.storage.deadletter import DeadLetters

log = logging.getLogger(__name__)

Row = dict[str, Any]
Execute = Callable[[Any, Any], Any]  # (statement, parameters) -> result, in a transaction
LOOKUP_CHUNK = 500

# The database, not the rows: locked or busy, disk full, gone away, failing over, pool empty.
_TRANSIENT = (
    OperationalError,
    InterfaceError,
    InternalError,
    DisconnectionError,
    PoolTimeout,
    OSError,
    MemoryError,
)


def transient(exc: BaseException) -> bool:
    """Whether a failed write is worth retrying as it is (the database, not the rows)."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, _TRANSIENT)


def first_line(exc: BaseException, limit: int = 300) -> str:
    return (f"{type(exc).__name__}: {exc}".splitlines() or [""])[0][:limit]


class TransientFailure(Exception):
    """The database failed; ``remaining`` are the rows not written, in order."""

    def __init__(self, remaining: list[Row], cause: BaseException) -> None:
        super().__init__(first_line(cause))
        self.remaining = remaining
        self.cause = cause


class BatchWriter:
    """Inserts event rows into ``table`` through ``run(fn)``, which calls ``fn(execute)``
    inside one transaction and commits it."""

    def __init__(
        self,
        table: Table,
        run: Callable[[Callable[[Execute], Any]], Any],
        dead_letters: DeadLetters,
    ) -> None:
        self.table = table
        self.run = run
        self.dead_letters = dead_letters
        self.written = 0
        self.skipped = 0  # already in the log (a replay)
        self.rejected = 0  # to the dead-letter file
        self.last_rejection: str | None = None

    def _insert(self, rows: list[Row]) -> None:
        statement = insert(self.table)
        self.run(lambda execute: execute(statement, rows))

    def write(self, rows: list[Row], *, replay: bool = False) -> int:
        """Write ``rows``; how many went to the dead-letter file. Raises
        :class:`TransientFailure` when the database fails."""
        if replay:
            rows = self._not_yet_written(rows)
        rejected_before = self.rejected
        chunks: deque[list[Row]] = deque([rows]) if rows else deque()
        refused_once = False
        while chunks:
            chunk = chunks.popleft()
            try:
                self._insert(chunk)
            except Exception as exc:  # noqa: BLE001 - sorted below, never lost
                if transient(exc):
                    raise TransientFailure(_flatten([chunk, *chunks]), exc) from None
                if not refused_once:
                    refused_once = True
                    log.warning(
                        "event log: a batch of %d was refused (%s); splitting it",
                        len(rows),
                        first_line(exc, 200),
                    )
                if len(chunk) > 1:
                    middle = len(chunk) // 2
                    chunks.appendleft(chunk[middle:])
                    chunks.appendleft(chunk[:middle])
                    continue
                try:
                    self._alone(chunk[0], exc)
                except TransientFailure as failure:  # the row is tried again, as it was
                    raise TransientFailure(_flatten([chunk, *chunks]), failure.cause) from None
                continue
            self.written += len(chunk)
        return self.rejected - rejected_before

    def _alone(self, row: Row, error: BaseException) -> None:
        """A row the database refused on its own."""
        if isinstance(error, IntegrityError):
            existing = self._stored(row["ref"])
            if existing is not None:
                at, host = existing
                if at == row["at"] and host == row["host"]:
                    self.skipped += 1
                    log.info("event log: event %s was already written", row["ref"])
                    return
                row = _renamed(row)
                try:
                    self._insert([row])
                except Exception as exc:  # noqa: BLE001
                    if transient(exc):
                        raise TransientFailure([row], exc) from None
                    error = exc
                else:
                    self.written += 1
                    return
        self.rejected += 1
        self.last_rejection = first_line(error, 200)
        self.dead_letters.add([(row, self.last_rejection)])

    def _stored(self, ref: str) -> tuple[Any, Any] | None:
        """(at, host) of the event already logged under ``ref``, if any."""
        table = self.table
        statement = select(table.c.at, table.c.host).where(table.c.ref == ref)
        try:
            found = self.run(lambda execute: execute(statement, None).first())
        except Exception as exc:  # noqa: BLE001
            if transient(exc):
                raise TransientFailure([], exc) from None
            return None
        return (found[0], found[1]) if found is not None else None

    def _not_yet_written(self, rows: list[Row]) -> list[Row]:
        """``rows`` without those already in the log (same reference, time and host)."""
        table = self.table
        stored: dict[str, tuple[Any, Any]] = {}
        for start in range(0, len(rows), LOOKUP_CHUNK):
            refs = [row["ref"] for row in rows[start : start + LOOKUP_CHUNK]]
            statement = select(table.c.ref, table.c.at, table.c.host).where(table.c.ref.in_(refs))
            try:
                found = self.run(partial(_all_rows, statement))
            except Exception as exc:  # noqa: BLE001
                if transient(exc):
                    raise TransientFailure(rows, exc) from None
                return rows  # the inserts sort it out, row by row
            stored.update((ref, (at, host)) for ref, at, host in found)
        if not stored:
            return rows
        fresh = [row for row in rows if stored.get(row["ref"]) != (row["at"], row["host"])]
        self.skipped += len(rows) - len(fresh)
        return fresh


def _all_rows(statement: Any, execute: Execute) -> Any:
    return execute(statement, None).all()


def _renamed(row: Row) -> Row:
    original = row["ref"]
    renamed = dict(row)
    renamed["ref"] = f"{original[:35]}-{secrets.token_hex(2)}"
    try:
        detail = json.loads(row["detail"]) if row["detail"] else {}
    except ValueError:
        detail = {"detail": row["detail"]}
    if not isinstance(detail, dict):
        detail = {"detail": detail}
    detail["original_ref"] = original
    renamed["detail"] = json.dumps(detail, separators=(",", ":"))
    log.warning(
        "event log: ref %s is already in the log; keeping this event as %s",
        original,
        renamed["ref"],
    )
    return renamed


def _flatten(chunks: Iterable[list[Row]]) -> list[Row]:
    return [row for chunk in chunks for row in chunk]
