"""Platform approvals through the real gateway, in a real browser (Debian's Chromium driven by
Playwright).

A made-up platform, "VidShare", is a family: its site ``www.vidshare.test`` (in the social
media list) and its static host ``img.vidcdn.test`` (in no list: only the family says it is
VidShare's). Its pages show an image from the static host and call the site's own
``/api/feed`` from a script, as TikTok's do. The gateway runs in ``upstream`` mode in front of
a loopback "origin" that answers for every host (see ``tests/test_portal_e2e.py``); the
student is 127.0.0.1, for whom social media is blocked all day.

* A page-level approval (``vidshare.test/@bbcnews``) opens that page, its image and its own
  script call; another page of the platform stays blocked.
* An approval of the platform's site opens the whole family: any page loads, with its image.

Chromium sends ``Sec-Fetch-Dest`` only to secure origins: the test marks the made-up origin as
one (``--unsafely-treat-insecure-origin-as-secure``), as HTTPS would be.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import playwright.sync_api as sync_api
import pytest
from gateway_process import (
    BROWSER_ARGS,
    CHROMIUM,
    ROOT,
    free_port,
    run_cli,
    start_gateway,
    stop_gateway,
)

if not os.path.exists(CHROMIUM):
    pytest.skip("Chromium is not installed (apt-get install chromium)", allow_module_level=True)

SITE = "www.vidshare.test"
STATIC = "img.vidcdn.test"
# A 1x1 PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


class Platform(BaseHTTPRequestHandler):
    """The "internet": VidShare's pages, its API and its CDN, by Host and path."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        host = (self.headers.get("host") or "").split(":")[0]
        path = self.path.split("://", 1)[-1].split("/", 1)[-1]
        path = "/" + path if not path.startswith("/") else path
        if host == STATIC:
            self._send(200, "image/png", PNG)
        elif host == SITE and path.startswith("/api/"):
            self._send(200, "application/json", b'{"feed": "ok"}')
        elif host == SITE:
            page = (
                f"<!doctype html><title>VidShare {path}</title><h1>{path}</h1>"
                f'<img id="pic" src="http://{STATIC}/pic.png" alt="">'
                "<p id='api'>pending</p><script>fetch('/api/feed').then(r => r.json())"
                ".then(d => document.getElementById('api').textContent = d.feed)"
                ".catch(() => document.getElementById('api').textContent = 'failed');</script>"
            )
            self._send(200, "text/html; charset=utf-8", page.encode())
        else:
            self._send(404, "text/plain", b"no such site")

    def _send(self, status: int, kind: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        self.send_header("cache-control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


PLATFORMS = """\
platforms:
  vidshare:
    name: VidShare
    category: social_media
    hosts: [vidshare.test]
    static: [vidcdn.test]
"""


@pytest.fixture
def gateway(tmp_path: Path):
    folder = tmp_path / "config"
    shutil.copytree(ROOT / "tests" / "data" / "gateway", folder)
    (folder / "social.txt").write_text("vidshare.test\n")
    (folder / "platforms.yaml").write_text(PLATFORMS)
    config = folder / "config.yaml"
    config.write_text(config.read_text() + "platforms: platforms.yaml\n")
    data_dir = tmp_path / "var"
    origin = ThreadingHTTPServer(("127.0.0.1", 0), Platform)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    port = free_port()
    proc = start_gateway(
        config,
        data_dir,
        port,
        tmp_path / "gateway.log",
        "--mode",
        f"upstream:http://127.0.0.1:{origin.server_address[1]}",
        "--set",
        "schoolgate_exceptions_interval=1",
    )
    try:
        yield config, data_dir, port
    finally:
        stop_gateway(proc, 20)
        origin.shutdown()


def allow(config: Path, data_dir: Path, *target: str) -> int:
    out = run_cli(config, data_dir, "allow", "add", *target, "--for", "role=student",
                  "--minutes", "30", "--by", "it.tech")  # fmt: skip
    return int(re.search(r"added exception #(\d+)", out).group(1))


def revoke(config: Path, data_dir: Path, ident: int) -> None:
    run_cli(config, data_dir, "allow", "revoke", str(ident), "--by", "it.tech",
            "--reason", "test")  # fmt: skip


def load(page, url: str, *, until_allowed: bool, timeout: float = 15.0):
    """Load ``url`` until it is (or is not) the platform's page: exceptions reach the gateway
    within its refresh interval."""
    deadline = time.monotonic() + timeout
    while True:
        response = page.goto(url)
        served = response is not None and response.status == 200 and "VidShare" in page.title()
        if served == until_allowed or time.monotonic() > deadline:
            return response
        time.sleep(0.5)


def image_loaded(page) -> bool:
    page.wait_for_function("document.getElementById('pic').complete")
    return page.evaluate("document.getElementById('pic').naturalWidth") == 1


def test_page_and_platform_approvals_in_a_browser(gateway):
    config, data_dir, port = gateway
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[*BROWSER_ARGS, f"--unsafely-treat-insecure-origin-as-secure=http://{SITE}"],
            proxy={"server": f"http://127.0.0.1:{port}"},
        )
        page = browser.new_context().new_page()
        try:
            blocked = load(page, f"http://{SITE}/@bbcnews", until_allowed=False)
            assert blocked.status == 403, page.content()

            # "This page": the page, its image from the static host, its own script call.
            page_id = allow(config, data_dir, "--page", "vidshare.test/@bbcnews")
            response = load(page, f"http://{SITE}/@bbcnews", until_allowed=True)
            assert response.status == 200 and page.title() == "VidShare /@bbcnews"
            assert image_loaded(page)
            page.wait_for_function("document.getElementById('api').textContent !== 'pending'")
            assert page.inner_text("#api") == "ok"
            # ... and not the platform's other pages
            other = page.goto(f"http://{SITE}/@someoneelse")
            assert other.status == 403 and "VidShare" not in page.title()
            revoke(config, data_dir, page_id)
            assert load(page, f"http://{SITE}/@bbcnews", until_allowed=False).status == 403

            # The platform: every page of its site, with its static host.
            allow(config, data_dir, "--host", SITE)
            response = load(page, f"http://{SITE}/@someoneelse", until_allowed=True)
            assert response.status == 200 and page.title() == "VidShare /@someoneelse"
            assert image_loaded(page)
        finally:
            browser.close()
