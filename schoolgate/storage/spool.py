"""The event spool: a local append-only file every event reaches before its answer is sent.

The decision log writes to the database from a thread, in batches; while the database is
locked or down, events wait. Kept only in memory they would die with the process (a
``kill -9``, an OOM kill, a power cut). So each event is also written, as one JSON line, to a
segment file in a folder of the data dir before the hook that recorded it returns (a
``write(2)`` into the page cache: it survives the process being killed), and the files are
``fsync``-ed in batches by a thread (every :data:`SYNC_INTERVAL` seconds, at once for an event
that must be durable before it is answered): after a power cut at most the last second is
missing.

A segment is closed after :data:`SEGMENT_BYTES` or :data:`SEGMENT_SECONDS`, and deleted once
the database has every event in it: the spool holds personal data only until it is drained. A
restart finds the segments left over and replays them (events already in the database are
skipped by their reference).

Several gateway processes share a data dir (``--workers``): each claims a folder of its own
(``<root>/0``, ``<root>/1``, ... with an exclusive ``flock`` on its ``.lock`` file, released
when the process dies), and takes over the segments of any folder no running process holds.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SEGMENT_BYTES = 1 << 20
SEGMENT_SECONDS = 10.0
SYNC_INTERVAL = 0.2
SUFFIX = ".jsonl"
MAX_FOLDERS = 4096
WARN_EVERY = 30.0


def _lock(path: Path) -> int | None:
    """An open descriptor holding an exclusive lock on ``path``, or None if another process
    holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError:
        os.close(fd)
        raise
    return fd


def segments(folder: Path) -> list[Path]:
    """The segment files in ``folder``, oldest first."""
    try:
        return sorted(p for p in folder.iterdir() if p.suffix == SUFFIX and p.is_file())
    except FileNotFoundError:
        return []


def read_segment(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line number, event) for each line of a segment; (line number, the raw text) for a
    line that is not a JSON object (cut short by a power cut, say)."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            text = raw.decode("utf-8", "surrogateescape").rstrip("\n")
            try:
                event = json.loads(text)
            except (ValueError, RecursionError):
                yield number, text
                continue
            yield number, event if isinstance(event, dict) else text


class Spool:
    """The segment files of one gateway process. ``append`` is called with :attr:`lock`
    held (the caller keeps its queue in the same order as the files); ``sync`` from one
    thread, without it."""

    def __init__(
        self,
        root: Path,
        *,
        segment_bytes: int = SEGMENT_BYTES,
        segment_seconds: float = SEGMENT_SECONDS,
    ) -> None:
        self.root = Path(root)
        self.segment_bytes = segment_bytes
        self.segment_seconds = segment_seconds
        self.lock = threading.Lock()
        self.folder: Path | None = None
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0
        self._opened = 0.0
        self._seq = itertools.count(1)
        self._rotated: list[tuple[int, Path]] = []  # closed for writing; to fsync and close
        self._dirty = False
        self.woke = False
        self._last_warning = -WARN_EVERY
        self.failures = 0
        self.last_error: str | None = None

    # -- claiming a folder ----------------------------------------------------------------
    def open(self) -> list[Path]:
        """Claim a folder; the segments earlier runs left (in it, and in folders no running
        process holds, moved into it), oldest first."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for index in range(MAX_FOLDERS):
            folder = self.root / str(index)
            folder.mkdir(exist_ok=True, mode=0o700)
            fd = _lock(folder / ".lock")
            if fd is not None:
                self.folder, self._lock_fd = folder, fd
                break
        else:
            raise OSError(errno.EMFILE, f"no free spool folder under {self.root}")
        for other in sorted(self.root.iterdir()):
            if other == folder or not other.is_dir():
                continue
            self._adopt(other, folder)
        return segments(folder)

    def _adopt(self, other: Path, folder: Path) -> None:
        try:
            fd = _lock(other / ".lock")
        except OSError as exc:
            log.warning("event spool: cannot look at %s: %s", other, exc)
            return
        if fd is None:
            return  # a running process holds it
        try:
            for path in segments(other):
                path.rename(folder / path.name)
                log.info("event spool: took over %s from a process that is gone", path.name)
        except OSError as exc:
            log.warning("event spool: cannot take over the segments in %s: %s", other, exc)
        finally:
            os.close(fd)

    # -- writing ----------------------------------------------------------------------------
    def _new_segment(self) -> int:
        assert self.folder is not None
        name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._seq):06d}{SUFFIX}"
        path = self.folder / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_EXCL, 0o600)
        self._fd = fd
        self._path = path
        self._size = 0
        self._opened = time.monotonic()
        return fd

    def rotate(self) -> Path | None:
        """Close the segment being written (call with :attr:`lock` held): its path, once it
        holds events, for the caller to delete when they are all in the database."""
        if self._fd is None or self._path is None:  # both set, or neither
            return None
        closed = self._path
        self._rotated.append((self._fd, closed))
        self._fd, self._path, self._size = None, None, 0
        return closed

    @property
    def dirty(self) -> bool:
        """Written since the last sync."""
        return self._dirty

    def next_due(self) -> float | None:
        """Seconds until the sync thread has work (lock held): None when there is none until
        something is written."""
        if self._dirty or self._rotated:
            return 0.0
        if self._fd is not None:
            return max(0.0, self._opened + self.segment_seconds - time.monotonic())
        return None

    def rotate_if_idle(self) -> Path | None:
        """Close the segment if it is older than ``segment_seconds`` (lock held)."""
        if self._fd is not None and time.monotonic() - self._opened >= self.segment_seconds:
            return self.rotate()
        return None

    def append(self, line: bytes) -> tuple[bool, Path | None]:
        """Write one line (lock held). (whether it was written, a segment this closed).
        :attr:`woke` says whether this was the first since the last sync."""
        if self.folder is None:
            return False, None
        closed = None
        if self._fd is not None and (
            self._size >= self.segment_bytes
            or time.monotonic() - self._opened >= self.segment_seconds
        ):
            closed = self.rotate()
        try:
            fd = self._fd if self._fd is not None else self._new_segment()
            written = os.write(fd, line)
            if written != len(line):  # a full disk: never leave half a line behind
                os.ftruncate(fd, self._size)
                raise OSError(errno.ENOSPC, "short write to the event spool")
        except OSError as exc:
            self._failed("write", exc)
            return False, closed
        self._size += written
        self.woke = not self._dirty
        self._dirty = True
        return True, closed

    def _failed(self, what: str, exc: OSError) -> None:
        self.failures += 1
        self.last_error = f"{what}: {exc}"
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY:
            self._last_warning = now
            log.error(
                "event spool: cannot %s in %s (%s); events are kept in memory until the "
                "database has them, but a crash now would lose them",
                what,
                self.folder,
                exc,
            )

    def sync(self) -> bool:
        """``fsync`` what was written (without the lock); closes rotated segments. False if
        the disk refused."""
        with self.lock:
            rotated, self._rotated = self._rotated, []
            fd = self._fd if self._dirty else None
            self._dirty = False
        ok = True
        for old, _path in rotated:
            try:
                os.fsync(old)
            except OSError as exc:
                self._failed("sync", exc)
                ok = False
            finally:
                os.close(old)
        if fd is not None:
            try:
                os.fsync(fd)
            except OSError as exc:
                # A segment rotated meanwhile (its descriptor closed by a later sync) is
                # EBADF here; its data was synced when it was closed.
                if exc.errno != errno.EBADF:
                    self._failed("sync", exc)
                    ok = False
        return ok

    def remove(self, path: Path) -> None:
        """A segment whose events are all in the database (or the dead-letter file)."""
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("event spool: cannot delete %s: %s", path, exc)

    def close(self) -> None:
        """Sync and close everything, and release the folder."""
        with self.lock:
            self.rotate()
        self.sync()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def write_late(self, lines: list[bytes]) -> bool:
        """After :meth:`close`: lines in a segment of their own, synced, for the next start."""
        if self.folder is None:
            return False
        name = f"{time.time_ns():020d}-{os.getpid()}-late{SUFFIX}"
        try:
            fd = os.open(self.folder / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, b"".join(lines))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            self._failed("write", exc)
            return False
        return True
