"""A fresh clone, the README's first command (``./gateway``), one ``schoolgate staff add``, and
the console shows the school's state: the gateway running, its lists, what is switched off in
the shipped config, and a block made a moment before. In Debian's Chromium, whose proxy is the
clone's gateway, as the README's quick start has it.

The clone is made with ``git clone`` of this checkout (its committed state). Its ``./gateway``
runs as written; only the virtual environment is this test run's own (linked in as the clone's
``.venv-<version>``, marked up to date, with the clone's code first on the path), so the test
does not download and install everything again. The browser is a guest of the shipped config
(127.0.0.1 is on no school network): its blocked HTTPS site fails as the README says (and the
refusal is on the console).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from gateway_process import ROOT, free_port, wait_for, wait_port
from test_portal_e2e import BROWSER_ARGS, CHROMIUM

PASSWORD = "correct horse battery"
ARTIFACTS = ROOT / "test-artifacts" / "fresh-clone"


def _clone(into: Path) -> Path:
    clone = into / "schoolgate"
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.fail("a fresh clone needs git and this checkout's repository")
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=300)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    venv = clone / f".venv-{version}"
    venv.symlink_to(Path(sys.prefix))
    (venv / ".installed").touch()  # newer than the clone's pyproject.toml: nothing to install
    return clone


def test_a_fresh_clone_gateway_and_one_staff_account_show_the_school_in_the_console(tmp_path):
    clone = _clone(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(clone), PYTHON=sys.executable)
    for name in ("SCHOOLGATE_CONFIG", "SCHOOLGATE_DATA_DIR"):
        env.pop(name, None)
    port = free_port()
    log = tmp_path / "gateway.log"
    gateway = subprocess.Popen(
        ["./gateway", "--listen-host", "127.0.0.1", "--listen-port", str(port)],
        cwd=clone,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_port(port, gateway, log, timeout=60)
        said = log.read_text()
        assert f"config {clone / 'mitm_config.yaml'} (the checkout's default)" in said, said
        # The one step: a staff account, with the gateway's own database (found, not given).
        made = subprocess.run(
            [str(clone / f".venv-{sys.version_info.major}.{sys.version_info.minor}" / "bin"
                 / "schoolgate"), "staff", "add", "head.of.it", "--role", "network_manager",
             "--password-stdin"],
            input=PASSWORD + "\n", capture_output=True, text=True, cwd=clone, env=env, timeout=120,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        assert str(clone / "var" / "schoolgate.db") in made.stderr  # the gateway's database

        from playwright.sync_api import Error, sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM, args=BROWSER_ARGS, proxy={"server": f"http://127.0.0.1:{port}"}
            )  # fmt: skip
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.set_default_timeout(20000)
            # A guest's blocked HTTPS site: no block page, the tunnel is refused (README). The
            # browser tries HTTPS first even for an http:// address of such a site.
            for address in ("https://www.facebook.com/", "http://www.facebook.com/"):
                with pytest.raises(Error, match="ERR_TUNNEL_CONNECTION_FAILED"):
                    page.goto(address)
            # A fresh tab: the refused page's own error navigation may land late in that one.
            page.close()
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.set_default_timeout(20000)
            page.goto("http://schoolgate.internal/console/")
            page.fill("#username", "head.of.it")
            page.fill("#password", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_load_state()
            assert page.url.endswith("/console/"), page.url
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "console.png"), full_page=True)
            text = page.inner_text("main")
            assert "www.facebook.com" in page.inner_text("#top-sites")
            assert "running" in page.inner_text("#processes")
            lists = page.inner_text("#lists")
            assert "social media" in lists and "illegal (locked)" in lists
            assert "No mail relay or webhook is set up" in text
            assert "The locked category illegal has no entries" in text
            assert "There is no staff account yet" not in text
            browser.close()
    finally:
        if gateway.poll() is None:
            os.killpg(gateway.pid, signal.SIGTERM)
            gateway.wait(30)
    assert wait_for(lambda: gateway.poll() is not None, 5)
    assert "Traceback" not in log.read_text(errors="replace")
