"""A background thread that does one piece of work now and then, for the addons whose work
touches the database and so must stay off mitmproxy's event loop."""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Periodic:
    """Runs ``work`` on a daemon thread every ``interval`` seconds, or as soon as woken.

    An exception in ``work`` is logged and the thread goes on: a failed round must never stop
    the refreshing for good. ``first`` runs the work as soon as the thread starts (otherwise
    the first round is after one interval, or a wake).
    """

    def __init__(self, name: str, work: Callable[[], object], *, first: bool = False) -> None:
        self.name = name
        self.work = work
        self.first = first
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self, interval: float) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, args=(interval,), name=self.name, daemon=True
        )
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None

    def _round(self) -> None:
        try:
            self.work()
        except Exception:  # noqa: BLE001 - the thread must survive
            log.exception("schoolgate: %s round failed", self.name)

    def _run(self, interval: float) -> None:
        if self.first and not self._stop.is_set():
            self._round()
        while not self._stop.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            if not self._stop.is_set():
                self._round()


def settle_heap() -> None:
    """Take what is built to last (the policy and its lists, the database engine, the portal
    app) out of the cyclic garbage collector's way: a full collection otherwise walks all of
    it, every so many requests (~100,000 instructions a request measured by
    ``bench/hooks_bench.py --callgrind`` with the test policy; more with big lists).

    Unfrozen and collected first, so that what a reload replaced is freed rather than kept
    forever. Blocks the event loop for one full collection: call it at start and after a
    policy reload, not per request."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
