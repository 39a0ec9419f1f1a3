"""Proxy logins remembered once they pass (schoolgate.gateway.auth_cache): with mitmproxy's own
``proxyauth`` addon and an htpasswd file, and through a real ``schoolgate run``."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from gateway_process import ROOT, Origin, free_port, run_cli, start_gateway, stop_gateway, wait_for
from mitmproxy import exceptions
from mitmproxy.addons.proxyauth import ProxyAuth
from mitmproxy.test import taddons, tflow

from schoolgate.gateway.auth_cache import CachedValidator, ProxyAuthCache


def sha_line(user: str, password: str) -> str:
    """An htpasswd line in Apache's {SHA} form, which mitmproxy 11 and 12 both read."""
    digest = base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()
    return f"{user}:{{SHA}}{digest}\n"


class Directory:
    """A user directory (LDAP, say) whose passwords can change, counting the checks."""

    def __init__(self, **passwords: str) -> None:
        self.passwords = passwords
        self.checks = 0

    def __call__(self, username: str, password: str) -> bool:
        self.checks += 1
        return self.passwords.get(username) == password


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_login_is_checked_once_then_remembered_until_its_time_ends() -> None:
    directory, clock = Directory(ali="pw1"), Clock()
    logins = CachedValidator(directory, 300, clock=clock)
    assert [logins("ali", "pw1") for _ in range(50)] == [True] * 50
    assert directory.checks == 1
    # The password is changed in the directory: the old one works until its entry ends...
    directory.passwords["ali"] = "pw2"
    clock.now += 299
    assert logins("ali", "pw1") and directory.checks == 1
    # ...and not after.
    clock.now += 2
    assert not logins("ali", "pw1") and directory.checks == 2
    assert logins("ali", "pw2") and directory.checks == 3


def test_failed_logins_are_checked_every_time_and_never_open_another() -> None:
    directory = Directory(ali="right")
    logins = CachedValidator(directory, 300)
    assert logins("ali", "right")
    assert not logins("ali", "wrong") and not logins("ali", "wrong")
    assert not logins("bea", "right")  # another user with a remembered password
    assert not logins("ali", "right ")
    assert directory.checks == 5


def test_remembered_logins_stay_bounded() -> None:
    directory, clock = Directory(**{f"u{n}": "pw" for n in range(250)}), Clock()
    logins = CachedValidator(directory, 300, clock=clock, max_logins=100)
    for n in range(250):
        assert logins(f"u{n}", "pw")
        clock.now += 0.01
    assert logins.remembered <= 100
    checks = directory.checks
    assert logins("u249", "pw") and directory.checks == checks  # the newest are kept


def test_the_password_itself_is_not_kept() -> None:
    logins = CachedValidator(Directory(ali="hunter2-secret"), 300)
    assert logins("ali", "hunter2-secret")
    kept = repr(logins._passed)
    assert "hunter2" not in kept and b"hunter2" not in repr(logins._passed).encode()


# -- wired to mitmproxy's proxyauth ------------------------------------------------------------


def proxy_request(user: str, password: str) -> tflow.HTTPFlow:
    flow = tflow.tflow()
    flow.request.headers["Proxy-Authorization"] = "Basic " + base64.b64encode(
        f"{user}:{password}".encode()
    ).decode("ascii")
    return flow


@pytest.fixture
def htpasswd(tmp_path: Path) -> Path:
    path = tmp_path / "htpasswd"
    path.write_text(sha_line("ali", "pw1") + sha_line("bea", "pw2"))
    return path


def test_proxyauth_with_htpasswd_uses_the_remembered_logins(htpasswd: Path) -> None:
    auth = ProxyAuth()
    with taddons.context(auth, ProxyAuthCache()) as tctx:
        tctx.configure(auth, proxyauth=f"@{htpasswd}")
        assert isinstance(auth.validator, CachedValidator)
        anonymous = tflow.tflow()  # nothing remembered yet: a login is still required
        auth.requestheaders(anonymous)
        assert anonymous.response is not None and anonymous.response.status_code == 407
        first = proxy_request("ali", "pw1")
        auth.requestheaders(first)
        assert first.response is None and first.metadata["proxyauth"][0] == "ali"
        # The file no longer has ali: the login that passed is still remembered...
        htpasswd.write_text(sha_line("bea", "pw2"))
        again = proxy_request("ali", "pw1")
        auth.requestheaders(again)
        assert again.response is None and again.metadata["proxyauth"][0] == "ali"
        wrong = proxy_request("ali", "nope")
        auth.requestheaders(wrong)
        assert wrong.response is not None and wrong.response.status_code == 407
        # ...until proxyauth is set again (as a reload of the gateway's options would).
        tctx.configure(auth, proxyauth=None)
        tctx.configure(auth, proxyauth=f"@{htpasswd}")
        later = proxy_request("ali", "pw1")
        auth.requestheaders(later)
        assert later.response is not None and later.response.status_code == 407


def test_nothing_is_remembered_when_turned_off_or_not_worth_it(htpasswd: Path) -> None:
    auth = ProxyAuth()
    with taddons.context(auth, ProxyAuthCache()) as tctx:
        tctx.configure(auth, proxyauth=f"@{htpasswd}", schoolgate_proxyauth_cache=0)
        assert auth.validator is not None and not isinstance(auth.validator, CachedValidator)
        tctx.configure(auth, schoolgate_proxyauth_cache=60)
        assert isinstance(auth.validator, CachedValidator) and auth.validator.seconds == 60
        tctx.configure(auth, proxyauth="any")  # any login passes: nothing to remember
        assert not isinstance(auth.validator, CachedValidator)
        with pytest.raises(exceptions.OptionsError, match="schoolgate_proxyauth_cache"):
            tctx.configure(auth, schoolgate_proxyauth_cache=-1)


# -- through the real gateway ------------------------------------------------------------------


@pytest.mark.e2e
def test_the_gateway_remembers_htpasswd_logins_and_still_refuses_wrong_ones(
    tmp_path: Path, htpasswd: Path
) -> None:
    folder = tmp_path / "config"
    shutil.copytree(ROOT / "tests" / "data" / "gateway", folder)
    config, data_dir, log = folder / "config.yaml", tmp_path / "var", tmp_path / "gateway.log"
    origin = ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    port = free_port()
    proc = start_gateway(
        config, data_dir, port, log, "--set", f"proxyauth=@{htpasswd}", quiet=False
    )
    try:

        def get(url: str, login: str) -> str:
            out = subprocess.run(
                ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-U", login]
                + ["-x", f"http://127.0.0.1:{port}", url],
                capture_output=True,
                text=True,
                timeout=30,
            )
            return out.stdout

        page = f"http://127.0.0.1:{origin.server_address[1]}/lesson"
        assert [get(page, "ali:pw1") for _ in range(5)] == ["200"] * 5
        assert get(page, "ali:wrong") == "407"
        assert get(page, "nobody:pw1") == "407"
        assert get("http://social.test/feed", "bea:pw2") == "403"

        def blocked() -> list[dict]:
            events = json.loads(run_cli(config, data_dir, "events", "--json"))
            return [e for e in events if e["host"] == "social.test"]

        found = wait_for(blocked, timeout=15)
        assert found and found[0]["user"] == "bea"  # the login is who the filter sees
        assert "proxy logins that pass are remembered for 300 s" in log.read_text()
    finally:
        stop_gateway(proc)
        origin.shutdown()
