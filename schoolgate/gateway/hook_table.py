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
(``mitmdump -s addons/schoolgate.py``) keeps its own dispatch.
"""

from __future__ import annotations

import inspect
import logging
import sys
import types
from collections.abc import Callable
from typing import Any

from mitmproxy import addonmanager, exceptions, hooks
from mitmproxy.master import Master

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
                etype, value, tb = sys.exc_info()
                tb = addonmanager.cut_traceback(tb, "trigger_event")
                addonmanager.logger.error(f"Addon error: {exc}", exc_info=(etype, value, tb))


def use_hook_table(master: Master) -> bool:
    """Make ``master`` dispatch events through a hook table (before or after addons are
    added). False, and mitmproxy's own dispatch kept, if its addon manager is not the plain
    ``AddonManager`` this was written against."""
    addons = master.addons
    if type(addons) is HookTableAddonManager:
        return True
    if type(addons) is not addonmanager.AddonManager:
        log.warning(
            "schoolgate: mitmproxy's addon manager is a %s: keeping its own event dispatch",
            type(addons).__name__,
        )
        return False
    addons.__class__ = HookTableAddonManager
    addons.hooks_changed()
    return True
