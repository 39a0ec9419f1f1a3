"""What schoolgate borrows from inside mitmproxy and APScheduler (schoolgate/borrowed.py) is used
only on the versions the tests cover and while it has the shape it was written against; on any
other version, or with the internal gone, the library's own behaviour is kept, with one
warning, and everything still works."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from gateway_process import wait_for
from mitmproxy import addonmanager, options
from mitmproxy.addons import proxyauth
from mitmproxy.proxy.layers import http as http_layer
from mitmproxy.test import taddons, tflow

from schoolgate import borrowed
from schoolgate.gateway import workers
from schoolgate.gateway.auth_cache import CachedValidator, ProxyAuthCache
from schoolgate.gateway.hook_table import (
    HookTableAddonManager,
    manager_shape_problem,
    use_hook_table,
)
from schoolgate.gateway.runner import set_options


@pytest.fixture
def untested_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    """mitmproxy and APScheduler report a release the tests have never seen."""
    real = borrowed.installed_version

    def version(distribution: str) -> str | None:
        return "99.0.0" if distribution in ("mitmproxy", "APScheduler") else real(distribution)

    monkeypatch.setattr(borrowed, "installed_version", version)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# -- the tested ranges -------------------------------------------------------------------------


def test_the_installed_libraries_are_versions_the_tests_cover() -> None:
    # A new release installed here fails this first: run the suite on it, then widen the range.
    assert borrowed.untested("mitmproxy") is None
    assert borrowed.untested("APScheduler") is None


@pytest.mark.parametrize(
    ("version", "covered"),
    [
        ("11.0.2", True),
        ("12.3.1", True),
        ("12.3.0rc1", True),
        ("10.4.2", False),
        ("12.4.0", False),
        ("13.0", False),
        ("twelve", False),
        (None, False),
    ],
)
def test_only_versions_in_the_tested_range_are_covered(
    monkeypatch: pytest.MonkeyPatch, version: str | None, covered: bool
) -> None:
    monkeypatch.setattr(borrowed, "installed_version", lambda _name: version)
    reason = borrowed.untested("mitmproxy")
    assert (reason is None) is covered
    if not covered:
        assert "mitmproxy" in reason and "11.0 to 12.3" in reason


# -- the hook table ----------------------------------------------------------------------------


class Deciding:
    """An addon that answers every request, as schoolgate's enforcement does."""

    def request(self, flow) -> None:
        flow.response = flow.response or tflow.tresp(status_code=403)


def _dispatching(caplog: pytest.LogCaptureFixture) -> tuple[type, int]:
    """use_hook_table on a master, then a request through it: (the manager's class, the
    status the request was answered with)."""

    async def run() -> tuple[type, int]:
        with taddons.context() as tctx:
            use_hook_table(tctx.master)
            tctx.master.addons.add(Deciding())
            flow = tflow.tflow()
            await tctx.master.addons.handle_lifecycle(http_layer.HttpRequestHook(flow))
            return type(tctx.master.addons), flow.response.status_code

    with caplog.at_level(logging.WARNING):
        return asyncio.run(run())


def test_the_hook_table_is_used_on_a_tested_mitmproxy(caplog) -> None:
    with taddons.context() as tctx:
        assert manager_shape_problem(addonmanager.AddonManager(tctx.master)) is None
    assert _dispatching(caplog) == (HookTableAddonManager, 403)
    assert not [w for w in warnings_of(caplog) if "hook table" in w]


def test_an_untested_mitmproxy_keeps_its_own_dispatch_and_requests_are_decided(
    untested_versions, caplog
) -> None:
    # The request is still decided, by mitmproxy's own dispatch; a second master: no more said.
    assert _dispatching(caplog) == (addonmanager.AddonManager, 403)
    assert _dispatching(caplog) == (addonmanager.AddonManager, 403)
    [warning] = [w for w in warnings_of(caplog) if "hook table" in w]
    assert "mitmproxy 99.0.0 is not a version schoolgate is tested with" in warning
    assert "keeping its own event dispatch" in warning


def test_a_missing_internal_keeps_mitmproxy_dispatch(monkeypatch, caplog) -> None:
    monkeypatch.delattr(addonmanager, "cut_traceback")
    assert _dispatching(caplog) == (addonmanager.AddonManager, 403)
    [warning] = [w for w in warnings_of(caplog) if "hook table" in w]
    assert "mitmproxy.addonmanager has no cut_traceback()" in warning


# -- the proxy login cache ---------------------------------------------------------------------


def _login(user: str, password: str) -> tflow.HTTPFlow:
    flow = tflow.tflow()
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    flow.request.headers["Proxy-Authorization"] = f"Basic {token}"
    return flow


def _checked_by_mitmproxy(tmp_path: Path, caplog) -> proxyauth.ProxyAuth:
    digest = base64.b64encode(hashlib.sha1(b"pw1").digest()).decode()
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"ali:{{SHA}}{digest}\n")
    auth = proxyauth.ProxyAuth()
    with caplog.at_level(logging.WARNING), taddons.context(auth, ProxyAuthCache()) as tctx:
        tctx.configure(auth, proxyauth=f"@{htpasswd}")
        tctx.configure(auth, schoolgate_proxyauth_cache=60)  # asked again: no second warning
        assert auth.validator is not None and not isinstance(auth.validator, CachedValidator)
        good, wrong = _login("ali", "pw1"), _login("ali", "nope")
        auth.requestheaders(good)
        auth.requestheaders(wrong)
        assert good.response is None and good.metadata["proxyauth"][0] == "ali"
        assert wrong.response is not None and wrong.response.status_code == 407
    return auth


def test_an_untested_mitmproxy_checks_every_login_itself(untested_versions, tmp_path, caplog):
    _checked_by_mitmproxy(tmp_path, caplog)
    [warning] = [w for w in warnings_of(caplog) if "proxy login cache" in w]
    assert "mitmproxy checks every proxy login itself" in warning


def test_a_proxyauth_without_its_validator_attribute_is_left_alone(
    monkeypatch, tmp_path, caplog
) -> None:
    monkeypatch.setattr(proxyauth.ProxyAuth, "__annotations__", {})
    _checked_by_mitmproxy(tmp_path, caplog)
    [warning] = [w for w in warnings_of(caplog) if "proxy login cache" in w]
    assert "ProxyAuth has no validator attribute" in warning


# -- several workers on one port ---------------------------------------------------------------


def test_workers_share_the_port_only_on_a_tested_mitmproxy(monkeypatch, caplog) -> None:
    assert workers.listening_shape_problem() is None
    assert workers.can_share_port() is True
    with caplog.at_level(logging.WARNING):
        monkeypatch.setattr(workers, "listening_shape_problem", lambda: "it listens otherwise")
        assert workers.can_share_port() is False
    [warning] = warnings_of(caplog)
    assert "it listens otherwise" in warning and "--workers 1" in warning


# -- the job scheduler -------------------------------------------------------------------------


def test_an_untested_apscheduler_runs_the_jobs_with_its_own_scheduler(
    untested_versions, gateway_config, gateway_data_dir, caplog
) -> None:
    from schoolgate.core.config import load_policy
    from schoolgate.jobs.scheduler import Jobs
    from schoolgate.storage.db import open_database
    from schoolgate.storage.job_runs import last_runs

    policy = load_policy(gateway_config, data_dir=gateway_data_dir)
    sessions = open_database(policy.settings.database_url)
    with caplog.at_level(logging.WARNING):
        jobs = Jobs(lambda: policy, sessions=sessions)
    assert type(jobs.scheduler) is BackgroundScheduler
    [warning] = [w for w in warnings_of(caplog) if "_process_jobs" in w]
    assert "APScheduler 99.0.0 is not a version schoolgate is tested with" in warning
    jobs.start()
    try:
        jobs.run_no_later_than("expire", datetime.now(UTC))  # APScheduler's thread runs it

        def expired():
            with sessions() as session:
                return last_runs(session).get("expire")

        run = wait_for(expired, timeout=60)
        assert run is not None and run.outcome == "ok"
    finally:
        jobs.shutdown()


def test_the_scheduler_that_stops_cleanly_needs_apschedulers_process_jobs(
    monkeypatch, caplog
) -> None:
    from apscheduler.schedulers.base import BaseScheduler

    from schoolgate.jobs.scheduler import _Scheduler, scheduler_class

    assert scheduler_class() is _Scheduler  # a tested APScheduler, as it is
    monkeypatch.delattr(BaseScheduler, "_process_jobs")
    with caplog.at_level(logging.WARNING):
        assert scheduler_class() is BackgroundScheduler
    [warning] = warnings_of(caplog)
    assert "BackgroundScheduler has no _process_jobs(self)" in warning


# -- options set on the command line -----------------------------------------------------------


def test_set_reads_numbers_for_float_options_through_public_options() -> None:
    from mitmproxy import exceptions

    opts = options.Options()
    with taddons.context(ProxyAuthCache(), options=opts):
        set_options(opts, ["schoolgate_proxyauth_cache=12.5", "listen_port=8081"])
        assert opts.schoolgate_proxyauth_cache == 12.5
        assert opts.listen_port == 8081  # the others as mitmproxy's CLI reads them
        with pytest.raises(exceptions.OptionsError, match="must be a number, not 'soon'"):
            set_options(opts, ["schoolgate_proxyauth_cache=soon"])
