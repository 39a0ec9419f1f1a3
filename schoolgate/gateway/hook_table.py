"""mitmproxy's event dispatch with each event's hooks looked up once, not on every event.

mitmproxy's ``AddonManager.trigger_event`` offers every event to every addon in its chain
(about 35 in the gateway), each offer through a coroutine, a ``safecall`` context manager and
two generators, about 1.6 us whether or not the addon has a hook for it. An HTTP request
has eight events (four hooks, each followed by ``update``), so that is some 450 us of every
request's CPU spent finding the 20 or so hooks that exist: more than a third of what the
proxy spends on a keep-alive request. :class:`HookTableAddonManager` keeps, for each event
name, the hooks that exist, in mitmproxy's order, and calls just those.

What it keeps from mitmproxy's dispatch, exactly:

* the order: the chain's order, each addon followed by its ``addons`` children, depth first;
* an exception in a hook is logged as mitmproxy logs it ("Addon error: ...") and skips the
  rest of that top-level addon's children, not the addons after it;
  ``AddonHalt`` stops the event, ``OptionsError`` propagates;
* a hook that returns an awaitable is awaited before the next hook runs;
* a hook attribute that is a module is skipped, one that is not callable is an error.

The table is rebuilt when the addons can have changed: an addon added, registered or removed
(that is also how a script reload changes the chain), the chain cleared, and options
configured (a change of ``scripts`` can reorder scripts without registering them). An addon's
hooks are the attributes it had when the table was built: code that edits ``chain`` by hand,
or gives an addon a hook later, must call :meth:`HookTableAddonManager.hooks_changed`.

``schoolgate run`` uses it (:func:`use_hook_table`); mitmproxy loading the addons as a script
(``mitmdump -s addons/schoolgate.py``) keeps its own dispatch. It is built on mitmproxy's
internals, so it is used only on the mitmproxy versions the tests cover, and only if the
manager still has the shape it was written against (:mod:`schoolgate.borrowed`); otherwise
mitmproxy's own dispatch is kept, with a warning.
"""

from __future__ import annotations

import inspect
import logging
import types
from collections.abc import Callable
from typing import Any

from mitmproxy import addonmanager, exceptions, hooks
from mitmproxy.master import Master

from schoolgate import borrowed

log = logging.getLogger(__name__)

# For each top-level addon that has the hook: its hooks and its children's, in order.
HookTable = tuple[tuple[Callable[..., Any], ...], ...]


def _not_callable(name: str, addon: Any) -> Callable[..., None]:
    def fail(*_args: Any) -> None:
        raise exceptions.AddonManagerError(f"Addon handler {name} ({addon}) not callable")

    return fail


def hook_table(chain: list, name: str) -> HookTable:
    """The hooks called ``name`` of ``chain`` and its addons' children, grouped by top-level
    addon, in the order mitmproxy calls them."""
    table = []
    for top in chain:
        group = []
        for addon in addonmanager.traverse([top]):
            fn = getattr(addon, name, None)
            if not fn or isinstance(fn, types.ModuleType):
                continue  # as mitmproxy: a module imported under a hook's name is no hook
            group.append(fn if callable(fn) else _not_callable(name, addon))
        if group:
            table.append(tuple(group))
    return tuple(table)


class HookTableAddonManager(addonmanager.AddonManager):
    """mitmproxy's ``AddonManager`` dispatching events through a table of the hooks that
    exist (see the module's documentation for what is kept the same)."""

    _tables: dict[str, HookTable]

    def __init__(self, master: Any) -> None:
        self._tables = {}
        super().__init__(master)

    def hooks_changed(self) -> None:
        """Forget the tables: the chain or an addon's children changed."""
        self._tables = {}

    def register(self, addon: Any) -> Any:
        try:
            return super().register(addon)
        finally:
            self.hooks_changed()

    def remove(self, addon: Any) -> None:
        try:
            super().remove(addon)
        finally:
            self.hooks_changed()

    def add(self, *addons: Any) -> None:
        try:
            super().add(*addons)
        finally:
            self.hooks_changed()

    def clear(self) -> None:
        try:
            super().clear()
        finally:
            self.hooks_changed()

    def trigger(self, event: hooks.Hook) -> None:
        try:
            super().trigger(event)
        finally:
            if isinstance(event, hooks.ConfigureHook):
                self.hooks_changed()

    async def trigger_event(self, event: hooks.Hook) -> None:
        table = self._tables.get(event.name)
        if table is None:
            table = self._tables[event.name] = hook_table(self.chain, event.name)
        if not table:
            return
        args = event.args()
        for group in table:
            try:
                for fn in group:
                    result = fn(*args)
                    if result is not None and inspect.isawaitable(result):
                        await result
            except exceptions.AddonHalt:
                return
            except exceptions.OptionsError:
                raise
            except Exception as exc:  # noqa: BLE001 - as mitmproxy's safecall
                tb = addonmanager.cut_traceback(exc.__traceback__, "trigger_event")
                addonmanager.logger.error(f"Addon error: {exc}", exc_info=(type(exc), exc, tb))


def manager_shape_problem(addons: Any) -> str | None:
    """What in mitmproxy's addon manager ``addons`` differs from what the hook table relies
    on, or None."""
    manager = addonmanager.AddonManager
    if type(addons) is not manager:
        return f"the addon manager is a {type(addons).__name__}, not mitmproxy's AddonManager"
    if not isinstance(getattr(addons, "chain", None), list):
        return "AddonManager.chain is not a list"
    if not inspect.iscoroutinefunction(getattr(manager, "trigger_event", None)):
        return "AddonManager.trigger_event is not a coroutine function"
    for name in ("register", "remove", "add", "clear", "trigger"):
        if not callable(getattr(manager, name, None)):
            return f"AddonManager has no {name}()"
    for name in ("traverse", "cut_traceback"):
        if not callable(getattr(addonmanager, name, None)):
            return f"mitmproxy.addonmanager has no {name}()"
    if len(inspect.signature(addonmanager.cut_traceback).parameters) != 2:
        return "mitmproxy.addonmanager.cut_traceback() does not take (traceback, function name)"
    if not isinstance(getattr(addonmanager, "logger", None), logging.Logger):
        return "mitmproxy.addonmanager.logger is not a logger"
    if not isinstance(getattr(hooks, "ConfigureHook", None), type):
        return "mitmproxy.hooks has no ConfigureHook"
    return None


def use_hook_table(master: Master) -> bool:
    """Make ``master`` dispatch events through a hook table (before or after addons are
    added). False, and mitmproxy's own dispatch kept (with a warning), on a mitmproxy version
    the tests do not cover or an addon manager that is not the plain ``AddonManager`` this was
    written against."""
    addons = master.addons
    if type(addons) is HookTableAddonManager:
        return True
    if not borrowed.borrow(
        "the hook table (mitmproxy's addon manager internals)",
        "mitmproxy",
        lambda: manager_shape_problem(addons),
        "mitmproxy is keeping its own event dispatch (every event offered to every addon, "
        "which costs CPU on every request)",
    ):
        return False
    addons.__class__ = HookTableAddonManager
    assert isinstance(addons, HookTableAddonManager)
    addons.hooks_changed()
    return True
