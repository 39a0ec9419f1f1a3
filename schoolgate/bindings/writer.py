"""A thread that does the identity sources' database writes, one at a time, off the event loop.

Sources that receive on an event loop (RADIUS accounting, the proxy's Negotiate handshake) hand
their writes here and learn the outcome through a callback on this thread. The queue is bounded:
when the database is slower than the packets arrive, new work is refused at once (RADIUS then
does not answer and the controller resends) rather than held in memory without end.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Done = Callable[[BaseException | None], None]
QUEUE_LIMIT = 10_000


class BindingWriter:
    def __init__(
        self,
        *,
        limit: int = QUEUE_LIMIT,
        after_write: Callable[[], None] | None = None,
        name: str = "schoolgate-binding-writer",
    ) -> None:
        self._queue: queue.Queue[tuple[Callable[[], Any], Done | None] | None] = queue.Queue(limit)
        self.after_write = after_write
        self.name = name
        self.failures = 0
        self._failing = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def submit(self, work: Callable[[], Any], done: Done | None = None) -> bool:
        """Queue ``work``; False (nothing queued) when the queue is full or stopped."""
        if self._thread is None:
            return False
        try:
            self._queue.put_nowait((work, done))
        except queue.Full:
            return False
        return True

    def pending(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            work, done = item
            error: BaseException | None = None
            try:
                work()
            except Exception as exc:  # noqa: BLE001 - reported to the source, thread goes on
                error = exc
                self.failures += 1
                if not self._failing:
                    log.exception("schoolgate: cannot store an identity binding")
                self._failing = True
            else:
                if self._failing:
                    log.info("schoolgate: storing identity bindings again")
                self._failing = False
                if self.after_write is not None:
                    try:
                        self.after_write()
                    except Exception:  # noqa: BLE001
                        log.exception("schoolgate: after a binding write")
            if done is not None:
                try:
                    done(error)
                except Exception:  # noqa: BLE001
                    log.exception("schoolgate: binding write callback failed")

    def stop(self, timeout: float = 10) -> None:
        """Finish what is queued, then stop."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)
        self._thread = None
