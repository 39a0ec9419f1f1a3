"""A background thread that does one piece of work now and then, for the addons whose work
touches the database and so must stay off mitmproxy's event loop."""

from __future__ import annotations

import gc
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

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


class Serial:
    """One daemon thread that does ``work(item)`` for each item handed to it, in order.

    :meth:`offer` is what the event loop calls: an append to a deque and, when the thread is
    idle, one event set; it takes no lock and never waits. It answers False, and keeps
    nothing, when ``size`` items are waiting already: the caller decides what then (it can do
    the work itself while holding :attr:`lock`, which the thread holds for each item). The
    thread starts with the first item. An exception in ``work`` is logged and the thread goes
    on.
    """

    def __init__(self, name: str, work: Callable[[Any], object], *, size: int) -> None:
        self.name = name
        self.work = work
        self.size = size
        self.lock = threading.Lock()
        self._items: deque[Any] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()

    def offer(self, item: object) -> bool:
        items = self._items
        if len(items) >= self.size:
            return False
        items.append(item)
        if self._thread is None:
            self._start()
        if not self._wake.is_set():
            self._wake.set()
        return True

    def flush(self, timeout: float | None = 10) -> bool:
        """Wait until every item offered before this call is done; False on a timeout."""
        marker = threading.Event()
        self._items.append(marker)
        if self._thread is None:
            self._start()
        self._wake.set()
        return marker.wait(timeout)

    def stop(self, timeout: float = 10) -> None:
        """Finish what is queued, then end the thread."""
        thread = self._thread
        if thread is None:
            return
        self.flush(timeout)
        self._stopping = True
        self._wake.set()
        thread.join(timeout=timeout)
        self._thread = None
        self._stopping = False

    def _start(self) -> None:
        with self._starting:
            if self._thread is None:
                thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                thread.start()
                self._thread = thread

    def _run(self) -> None:
        items, wake = self._items, self._wake
        while True:
            wake.wait()
            wake.clear()
            while items:
                item = items.popleft()
                if type(item) is threading.Event:
                    item.set()
                    continue
                with self.lock:
                    try:
                        self.work(item)
                    except Exception:  # noqa: BLE001 - the thread must survive
                        log.exception("schoolgate: %s failed", self.name)
            if self._stopping:
                return


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
