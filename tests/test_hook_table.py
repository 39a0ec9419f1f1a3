"""The gateway's event dispatch (schoolgate/gateway/hook_table.py) calls the same hooks, in the
same order, with the same failure handling, as mitmproxy's own, and follows the chain as it
changes."""

from __future__ import annotations

import asyncio
import logging
import types

import pytest
from mitmproxy import addonmanager, exceptions, hooks
from mitmproxy.proxy.layers import http as http_layer
from mitmproxy.test import taddons, tflow

from schoolgate.gateway.hook_table import HookTableAddonManager, use_hook_table


class Recording:
    """An addon whose ``request`` hook notes its name (and may fail or halt)."""

    def __init__(self, name: str, calls: list, *, fail=None, children=()) -> None:
        self.name = name
        self.calls = calls
        self.fail = fail
        if children:
            self.addons = list(children)

    def request(self, flow) -> None:
        self.calls.append(self.name)
        if self.fail is not None:
            raise self.fail


class AsyncRecording(Recording):
    async def request(self, flow) -> None:
        await asyncio.sleep(0)
        self.calls.append(self.name)


class NoHooks:
    name = "nohooks"


class ModuleNamedLikeAHook:
    """``from mitmproxy import log``-style: an attribute named like a hook that is a module."""

    name = "modulehook"
    request = types.ModuleType("request")


def chain_of(calls: list) -> list:
    """A chain with every case: children, an async hook, a failing child (its later siblings
    skipped, the next addon not), a module under a hook's name, an addon without the hook,
    and AddonHalt (nothing after it)."""
    return [
        Recording("first", calls),
        Recording(
            "parent",
            calls,
            children=[
                AsyncRecording("async child", calls),
                Recording("failing child", calls, fail=ValueError("broken hook")),
                Recording("skipped sibling", calls),
            ],
        ),
        NoHooks(),
        ModuleNamedLikeAHook(),
        Recording("after the failure", calls),
        Recording("halting", calls, fail=exceptions.AddonHalt()),
        Recording("after the halt", calls),
    ]


async def dispatch(manager_class, caplog) -> tuple[list, list]:
    calls: list = []
    with taddons.context() as tctx:
        manager = manager_class(tctx.master)
        manager.add(*chain_of(calls))
        with caplog.at_level(logging.ERROR):
            caplog.clear()
            await manager.handle_lifecycle(http_layer.HttpRequestHook(tflow.tflow()))
            errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    return calls, errors


def test_calls_the_hooks_mitmproxy_would_in_its_order_with_its_failure_handling(caplog):
    expected_calls = ["first", "parent", "async child", "failing child"]
    expected_calls += ["after the failure", "halting"]

    # One event loop for both: mitmproxy's test masters log through the loop they were made in.
    async def both():
        stock = await dispatch(addonmanager.AddonManager, caplog)
        return stock, await dispatch(HookTableAddonManager, caplog)

    (stock_calls, stock_errors), (table_calls, table_errors) = asyncio.run(both())

    assert stock_calls == expected_calls  # what mitmproxy itself does
    assert table_calls == expected_calls
    assert table_errors == stock_errors == ["Addon error: broken hook"]


def test_an_options_error_from_a_hook_propagates():
    class Refusing:
        def request(self, flow) -> None:
            raise exceptions.OptionsError("no")

    with taddons.context() as tctx:
        manager = HookTableAddonManager(tctx.master)
        manager.add(Refusing())
        with pytest.raises(exceptions.OptionsError):
            asyncio.run(manager.trigger_event(http_layer.HttpRequestHook(tflow.tflow())))


def test_a_hook_that_is_not_callable_is_logged_as_mitmproxy_does(caplog):
    class Broken:
        request = "not a function"

    async def run() -> None:
        with taddons.context() as tctx:
            manager = HookTableAddonManager(tctx.master)
            manager.add(Broken())
            with caplog.at_level(logging.ERROR):
                await manager.trigger_event(http_layer.HttpRequestHook(tflow.tflow()))

    asyncio.run(run())
    messages = [r.getMessage() for r in caplog.records]
    assert any("request" in m and "not callable" in m for m in messages)


def request_once(manager) -> None:
    asyncio.run(manager.trigger_event(http_layer.HttpRequestHook(tflow.tflow())))


def test_follows_addons_added_and_removed_after_events_were_dispatched():
    calls: list = []
    with taddons.context() as tctx:
        manager = HookTableAddonManager(tctx.master)
        one = Recording("one", calls)
        manager.add(one)
        request_once(manager)
        two = Recording("two", calls)
        manager.add(two)
        request_once(manager)
        manager.remove(one)
        request_once(manager)
        manager.clear()
        request_once(manager)
    assert calls == ["one", "one", "two", "two"]


def test_follows_children_reordered_by_a_configure_event():
    """mitmproxy's script loader reorders its scripts (its ``addons``) when the ``scripts``
    option changes, without registering anything: the next event must see the new order."""
    calls: list = []

    class Reordering:
        name = "reordering"

        def __init__(self) -> None:
            self.addons = [Recording("a", calls), Recording("b", calls)]

        def load(self, loader) -> None:
            loader.add_option("reorder", bool, False, "Reverse the children.")

        def configure(self, updated) -> None:
            if "reorder" in updated:
                self.addons = self.addons[::-1]

    with taddons.context() as tctx:
        manager = HookTableAddonManager(tctx.master)
        tctx.master.addons = manager
        manager.add(Reordering())
        request_once(manager)
        tctx.options.update(reorder=True)
        request_once(manager)
    assert calls == ["a", "b", "b", "a"]


def test_hooks_changed_picks_up_a_chain_edited_by_hand():
    calls: list = []
    with taddons.context() as tctx:
        manager = HookTableAddonManager(tctx.master)
        manager.add(Recording("one", calls))
        request_once(manager)
        manager.chain.append(Recording("by hand", calls))
        manager.hooks_changed()
        request_once(manager)
    assert calls == ["one", "one", "by hand"]


def test_the_update_event_after_each_flow_event_reaches_update_hooks():
    seen: list = []

    class Watching:
        def update(self, flows) -> None:
            seen.append(len(flows))

    with taddons.context() as tctx:
        manager = HookTableAddonManager(tctx.master)
        manager.add(Watching())
        asyncio.run(manager.handle_lifecycle(http_layer.HttpRequestHook(tflow.tflow())))
        asyncio.run(manager.trigger_event(hooks.UpdateHook([])))
    assert seen == [1, 0]


def test_the_gateway_master_dispatches_through_the_table_and_keeps_its_addons():
    from mitmproxy import options

    from schoolgate.gateway.runner import make_master

    root = logging.getLogger()
    level = root.level

    async def build():
        master = make_master(options.Options(), quiet=True)
        return master, len(master.addons.chain)

    try:
        master, count = asyncio.run(build())
    finally:
        root.setLevel(level)
    assert isinstance(master.addons, HookTableAddonManager)
    assert master.addons.get("proxyserver") is not None and count > 20
    assert use_hook_table(master) is True  # twice is harmless


def test_an_unknown_addon_manager_keeps_mitmproxy_dispatch(caplog):
    class OwnManager(addonmanager.AddonManager):
        pass

    with taddons.context() as tctx:
        tctx.master.addons = OwnManager(tctx.master)
        with caplog.at_level(logging.WARNING):
            assert use_hook_table(tctx.master) is False
        assert type(tctx.master.addons) is OwnManager
    assert any("keeping its own event dispatch" in r.getMessage() for r in caplog.records)
