"""All of schoolgate's addons as one mitmproxy addon, with each part's failures kept apart.

mitmproxy offers every event (about eight for each HTTP request, counting the ``update``
after each flow event) to every top-level addon, and each offer costs a coroutine, a
``safecall`` context manager and a generator, about 1.4 us, whether or not the addon has
that hook; an addon's ``addons`` children are walked by a generator for every event too. So
the parts are not children: :class:`Schoolgate` is the one addon mitmproxy sees, it has an
attribute only for the hooks its parts define, and it calls those parts itself, in order.

That also gives what mitmproxy's own dispatch does not: an exception in one part is logged
and the next part still runs (mitmproxy skips the rest of an addon's children), and if any part
fails on the way to a decision (the hooks in :data:`DECISION_HOOKS`), the part that decides
(:class:`~schoolgate.gateway.enforce.Enforcement`) refuses the request or connection, with the
page that says the filter failed and an event, rather than let it through undecided.

After the parts have run for a flow's event, ``barrier()`` (the recorder's
:meth:`~schoolgate.gateway.recorder.Recorder.durable_barrier`) may give something to wait for:
an event that put a sanction in force is then on disk before mitmproxy sends the answer.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence, Sized
from typing import Any

# Importing these registers every hook mitmproxy has in ``hooks.all_hooks``.
import mitmproxy.addonmanager  # noqa: F401
import mitmproxy.proxy.layers  # noqa: F401
import mitmproxy.proxy.server_hooks  # noqa: F401
from mitmproxy import exceptions, hooks

from schoolgate.gateway.background import settle_heap

log = logging.getLogger(__name__)

Call = tuple[Any, Callable[..., Any]]

# Hooks whose exceptions mitmproxy must see: an option a part refuses (OptionsError) rolls
# the option back, and a part that cannot load should stop the gateway starting.
_PROPAGATE = frozenset({"load", "configure"})
# Hooks on the way to a decision: a failure in any part refuses what the hook is about.
DECISION_HOOKS = frozenset(
    {
        "requestheaders",
        "request",
        "http_connect",
        "tls_clienthello",
        "tcp_start",
        "websocket_start",
        "server_connect",
    }
)
# Hooks that are not about a flow or a connection: nothing is answered after them.
_LIFECYCLE = frozenset({"load", "configure", "running", "done", "update"})


def _part_name(part: Any) -> str:
    return getattr(part, "name", None) or type(part).__name__


class Schoolgate:
    """The parts, in order (each reads the ones before it); ``decider`` is the part whose
    failure must refuse the flow (``decider.fail_closed(hook, *args)``); ``barrier()``, after
    the parts of a flow's event, returns None or an awaitable to finish before the answer
    (not called while ``pending``, if given, is empty)."""

    name = "schoolgate"

    def __init__(
        self,
        parts: Sequence[Any],
        *,
        decider: Any = None,
        barrier: Callable[[], Awaitable | None] | None = None,
        pending: Sized | None = None,
    ) -> None:
        # Not called `addons`: mitmproxy would then offer every event to every part.
        self.parts = tuple(parts)
        self.decider = decider
        self.barrier = barrier
        # While ``pending`` (the recorder's list of sanction events not yet synced: the same
        # list object all along) is empty, ``barrier()`` has nothing to give and is not called.
        self.pending = pending
        names = {
            n for n in hooks.all_hooks if n != "add_log" and any(hasattr(p, n) for p in self.parts)
        }
        for name in sorted(names):
            calls = self._calls(name)
            if name == "running":
                setattr(self, name, self._running(calls))
            elif name in _PROPAGATE:
                setattr(self, name, self._propagating(calls))
            elif name == "done":  # the reverse of start-up: the recorder closes last
                setattr(self, name, self._isolated(name, calls[::-1]))
            else:
                setattr(self, name, self._isolated(name, calls))

    def _calls(self, name: str) -> tuple[Call, ...]:
        calls = []
        for part in self.parts:
            fn = getattr(part, name, None)
            if not callable(fn):
                continue
            if name == "request" and hasattr(part, "should_serve"):
                fn = _only_when_served(part, fn)
            calls.append((part, fn))
        return tuple(calls)

    @staticmethod
    def _propagating(calls: tuple[Call, ...]) -> Callable[..., None]:
        def dispatch(*args: Any) -> None:
            for _part, fn in calls:
                fn(*args)

        return dispatch

    def _running(self, calls: tuple[Call, ...]) -> Callable[..., None]:
        def dispatch(*args: Any) -> None:
            self._run("running", calls, 0, args)  # every part's hook here is synchronous
            settle_heap()  # everything is built: keep the garbage collector off it

        return dispatch

    def _isolated(self, name: str, calls: tuple[Call, ...]) -> Callable[..., Awaitable | None]:
        barrier = self.barrier if name not in _LIFECYCLE else None
        if barrier is None:

            def dispatch(*args: Any) -> Awaitable | None:
                return self._run(name, calls, 0, args)

            return dispatch

        failed = self._failed
        isawaitable = inspect.isawaitable
        pending = self.pending
        if pending is None:
            pending = _ALWAYS

        def dispatch_then_wait(subject: Any) -> Awaitable | None:
            # self._run(name, calls, 0, (subject,)), inline, and without an index: a flow's
            # events come here, about ten parts each, and this is the loop they all go round.
            # One argument (every flow and connection event has one), passed as it is: a call
            # with ``*args`` costs a third more, for each part.
            for part, fn in calls:
                try:
                    result = fn(subject)
                except exceptions.AddonHalt:
                    raise
                except Exception:  # noqa: BLE001 - one part's failure must not skip the rest
                    failed(part, name, (subject,))
                    continue
                if result is not None and isawaitable(result):
                    i = next(k for k, call in enumerate(calls) if call[1] is fn)
                    return _then(self._resume(name, calls, i, (subject,), result), barrier)
            return barrier() if pending else None

        return dispatch_then_wait

    def _run(self, name: str, calls: tuple[Call, ...], start: int, args: tuple) -> Awaitable | None:
        for i in range(start, len(calls)):
            part, fn = calls[i]
            try:
                result = fn(*args)
            except exceptions.AddonHalt:
                raise
            except Exception:  # noqa: BLE001 - one part's failure must not skip the rest
                self._failed(part, name, args)
                continue
            if result is not None and inspect.isawaitable(result):
                # mitmproxy awaits what a hook returns: the later parts run after this one.
                return self._resume(name, calls, i, args, result)
        return None

    async def _resume(
        self, name: str, calls: tuple[Call, ...], i: int, args: tuple, pending: Awaitable
    ) -> None:
        try:
            await pending
        except Exception:  # noqa: BLE001
            self._failed(calls[i][0], name, args)
        rest = self._run(name, calls, i + 1, args)
        if rest is not None:
            await rest

    def _failed(self, part: Any, name: str, args: tuple) -> None:
        log.exception("schoolgate: %s failed in its %s hook", _part_name(part), name)
        if self.decider is not None and (part is self.decider or name in DECISION_HOOKS):
            try:
                self.decider.fail_closed(name, *args)
            except Exception:  # noqa: BLE001
                log.exception("schoolgate: could not refuse after %s failed", _part_name(part))


# What ``pending`` is when none was given: never empty, so ``barrier()`` is always asked.
_ALWAYS = (True,)


async def _then(pending: Awaitable, barrier: Callable[[], Awaitable | None]) -> None:
    await pending
    wait = barrier()
    if wait is not None:
        await wait


def _only_when_served(part: Any, request: Callable[..., Any]) -> Callable[..., Any]:
    """An app addon's async ``request`` hook, called only for the flows it serves: creating
    and awaiting a coroutine for every other request costs the event loop for nothing."""
    should_serve = part.should_serve

    def maybe_serve(flow: Any) -> Awaitable | None:
        return request(flow) if should_serve(flow) else None

    return maybe_serve
