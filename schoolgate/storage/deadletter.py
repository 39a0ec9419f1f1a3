"""The dead-letter file: events the database refused even alone, kept with the reason.

One JSON line per event: ``{"failed_at": ..., "error": ..., "event": {...}}`` (the event as the
writer tried to store it, or ``"raw"``: a spool line that could not be read). Appended and
``fsync``-ed under an exclusive ``flock``, so the gateway processes that share a data dir can
all write to it. Nothing removes it: it is evidence, for IT Support to look at (and put right)
once the alert has told them it exists.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from schoolgate.storage.storable import FIELD_MAX, escape_text, json_default

log = logging.getLogger(__name__)


class DeadLetters:
    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self.count = 0

    def add(self, items: list[tuple[dict[str, Any] | str, str]]) -> None:
        """Keep each (event or raw line, error). Where the file cannot be written, each one
        is logged at ERROR in full instead: never dropped unseen."""
        if not items:
            return
        now = datetime.now(UTC).isoformat()
        lines = []
        for item, error in items:
            entry: dict[str, Any] = {"failed_at": now, "error": error}
            entry["raw" if isinstance(item, str) else "event"] = item
            lines.append(_line(entry))
        self.count += len(items)
        if self.path is not None and self._append(self.path, lines):
            return
        for line in lines:
            log.error("event log: event refused by the database: %s", line.rstrip("\n"))

    def _append(self, path: Path, lines: list[str]) -> bool:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                os.write(fd, "".join(lines).encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            log.exception("event log: cannot write the dead-letter file %s", self.path)
            return False
        return True


def _line(entry: dict[str, Any]) -> str:
    """One line of ASCII JSON; what JSON cannot hold (a cycle, a key that is not text) is
    kept as its ``repr``."""
    try:
        return json.dumps(entry, default=json_default, separators=(",", ":")) + "\n"
    except (ValueError, TypeError, RecursionError):
        item = entry.pop("event", None) or entry.pop("raw", None)
        entry["repr"] = escape_text(repr(item))[:FIELD_MAX]
        return json.dumps(entry, separators=(",", ":")) + "\n"
