"""A new policy is an event: the holder tells its listeners, and the parts follow it (driven
with mitmproxy's test helpers; the end-to-end tests are in test_reload_e2e.py)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from mitmproxy.test import taddons, tflow, tutils

from schoolgate.core.policy import Policy
from schoolgate.gateway import AlertsAddon, PolicyHolder, PortalAddon, Recorder, make_addons
from schoolgate.gateway.flowmark import FlowMark, put_mark


class Listener:
    """Writes down what it is told, and what the holder had in force at the time."""

    def __init__(self, name: str, holder: PolicyHolder, told: list) -> None:
        self.name = name
        self.holder = holder
        self.told = told

    def policy_changed(self, old: Policy | None, new: Policy) -> None:
        self.told.append((self.name, old, new, self.holder.policy, threading.current_thread()))


class Broken:
    name = "broken_part"

    def policy_changed(self, old: Policy | None, new: Policy) -> None:
        raise RuntimeError("cannot follow")


def _load(tctx: taddons.context, holder: PolicyHolder, config: Path, data_dir: Path) -> None:
    tctx.configure(holder, schoolgate_config=str(config), schoolgate_data_dir=str(data_dir))


def test_listeners_are_told_in_order_from_the_first_load(
    gateway_config: Path, gateway_data_dir: Path
) -> None:
    holder = PolicyHolder()
    told: list = []
    for name in ("first", "second", "third"):
        holder.subscribe(Listener(name, holder, told))
    with taddons.context(holder) as tctx:
        _load(tctx, holder, gateway_config, gateway_data_dir)
        first = holder.policy
        assert first is not None
        # The first load: old is None; each is told before the policy is in force.
        assert [(n, old, new, now) for n, old, new, now, _t in told] == [
            ("first", None, first, None),
            ("second", None, first, None),
            ("third", None, first, None),
        ]
        told.clear()
        assert holder.reload(force=True) is True
        second = holder.policy
        assert second is not first
        assert [(n, old, new, now) for n, old, new, now, _t in told] == [
            ("first", first, second, first),
            ("second", first, second, first),
            ("third", first, second, first),
        ]


def test_a_failing_listener_is_named_and_stops_nothing(
    gateway_config: Path, gateway_data_dir: Path, caplog
) -> None:
    holder = PolicyHolder()
    told: list = []
    holder.subscribe(Listener("before", holder, told))
    holder.subscribe(Broken())
    holder.subscribe(Listener("after", holder, told))
    with taddons.context(holder) as tctx:
        with caplog.at_level(logging.ERROR):
            _load(tctx, holder, gateway_config, gateway_data_dir)
        assert holder.policy is not None
        assert [t[0] for t in told] == ["before", "after"]
        assert "broken_part failed to follow the new policy" in caplog.text
        assert "cannot follow" in caplog.text
        caplog.clear()
        told.clear()
        first = holder.policy
        with caplog.at_level(logging.ERROR):
            assert holder.reload(force=True) is True
        assert holder.policy is not first  # the reload went ahead
        assert [t[0] for t in told] == ["before", "after"]
        assert "broken_part failed to follow the new policy" in caplog.text


def test_a_late_listener_hears_of_the_policy_in_force_and_refusals_tell_nobody(
    gateway_config: Path, gateway_data_dir: Path
) -> None:
    holder = PolicyHolder()
    told: list = []
    with taddons.context(holder) as tctx:
        _load(tctx, holder, gateway_config, gateway_data_dir)
        holder.subscribe(Listener("late", holder, told))
        assert [(n, old, new) for n, old, new, _now, _t in told] == [("late", None, holder.policy)]
        told.clear()
        good = gateway_config.read_text()
        gateway_config.write_text(good + "\nnot_a_section: 1\n")
        assert holder.reload() is False
        assert told == []


def test_the_watcher_tells_listeners_off_the_event_loop(
    gateway_config: Path, gateway_data_dir: Path
) -> None:
    import asyncio

    holder = PolicyHolder()
    told: list = []
    holder.subscribe(Listener("part", holder, told))

    async def reload_by_sighup() -> threading.Thread:
        loop_thread = threading.current_thread()
        holder.running()
        try:
            told.clear()
            holder.request_reload()
            for _ in range(600):  # a bound on the wait, not a measure of it
                if told:
                    break
                await asyncio.sleep(0.05)
        finally:
            holder.done()
        return loop_thread

    with taddons.context(holder) as tctx:
        _load(tctx, holder, gateway_config, gateway_data_dir)
        tctx.options.schoolgate_reload_interval = 0
        loop_thread = asyncio.run(reload_by_sighup())
    assert told, "the watcher did not reload"
    assert told[0][4] is not loop_thread


def test_the_recorder_and_the_portal_follow_a_changed_database(
    gateway_config: Path, gateway_data_dir: Path
) -> None:
    from test_gateway_addons import http_flow

    from schoolgate.gateway import Enforcement
    from schoolgate.storage.events import list_events

    addons = make_addons()
    holder, recorder = addons[0], addons[1]
    enforce = next(a for a in addons if isinstance(a, Enforcement))
    assert isinstance(recorder, Recorder)
    with taddons.context(*addons) as tctx:
        tctx.configure(
            holder,
            schoolgate_config=str(gateway_config),
            schoolgate_data_dir=str(gateway_data_dir),
            confdir=str(gateway_data_dir / "ca"),
        )
        first = recorder.sessions
        enforce.request(http_flow("social.test", "/before"))
        text = gateway_config.read_text()
        gateway_config.write_text(text.replace("{data_dir}/schoolgate.db", "{data_dir}/second.db"))
        assert holder.reload() is True
        assert recorder.url is not None and recorder.url.endswith("second.db")
        portal = next(a for a in addons if isinstance(a, PortalAddon))
        assert portal.app.extensions["schoolgate_portal"].sessions is recorder.sessions
        enforce.request(http_flow("social.test", "/after"))
        assert recorder.eventlog.flush(10)
        with first() as session:
            in_first = {e["url"] for e in list_events(session, limit=None)}
        with recorder.sessions() as session:
            in_second = {e["url"] for e in list_events(session, limit=None)}
        recorder.done()
    assert in_first == {"http://social.test/before"}
    assert in_second == {"http://social.test/after"}


def test_alerts_follow_the_new_policy_without_polling(
    gateway_config: Path, gateway_data_dir: Path
) -> None:
    holder = PolicyHolder()
    recorder = Recorder(holder)
    alerts = AlertsAddon(holder, recorder)
    with taddons.context(holder, recorder, alerts) as tctx:
        _load(tctx, holder, gateway_config, gateway_data_dir)
        assert "social_media" not in alerts._wanted
        gateway_config.write_text(
            gateway_config.read_text() + "\nalerts:\n  categories: [social_media]\n"
        )
        assert holder.reload() is True
        flow = tflow.tflow(req=tutils.treq())
        put_mark(flow.metadata, FlowMark(action="block", category="social_media", ref="A1"))
        alerts.request(flow)
        recorder.done()
    assert [fact.ref for fact in alerts._inbox] == ["A1"]


def test_the_bindings_follow_a_changed_database(tmp_path: Path) -> None:
    from test_identity_live import SIGN_IN, bind, identity_config

    from schoolgate.core.identity import SIGN_IN_REQUIRED
    from schoolgate.gateway import IdentitySourcesAddon

    config = identity_config(tmp_path, sign_in=SIGN_IN, sources=["sign_in"])
    addons = make_addons()
    holder, recorder = addons[0], addons[1]
    identity = next(a for a in addons if isinstance(a, IdentitySourcesAddon))
    with taddons.context(holder, recorder, identity) as tctx:
        _load(tctx, holder, config, tmp_path)
        identity.running()
        try:
            assert holder.policy.identify("10.30.1.5", None).source == SIGN_IN_REQUIRED
            # Ben signs in on the new database's gateway; this one is told to move there.
            config.write_text(config.read_text().replace("schoolgate.db", "second.db"))
            bind(config, "10.30.1.5", "ben", source="sign_in")
            assert holder.reload() is True
            assert recorder.url is not None and recorder.url.endswith("second.db")
            assert holder.policy.identify("10.30.1.5", None).user == "ben"
        finally:
            identity.done()
            recorder.done()
