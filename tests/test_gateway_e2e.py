"""The real gateway (``schoolgate run`` in a subprocess) driven by curl and httpx, on loopback.

One gateway serves the whole module (tests run in file order; the reload and shutdown tests
come last). Allowed traffic goes to local origin servers: 127.0.0.1 (uncategorised) and
127.0.0.3 (listed as a read-only wiki). Blocked hosts such as social.test never resolve: they
are answered before any upstream contact.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from gateway_process import (
    ROOT,
    Origin,
    free_port,
    run_cli,
    start_gateway,
    stop_gateway,
    wait_for,
    wait_port,
)

# mitmproxy's own command, from the environment the tests run in (a dependency: always there).
MITMDUMP = str(Path(sys.executable).with_name("mitmdump"))

HTML = {
    "Accept": "text/html,application/xhtml+xml",
    "Sec-Fetch-Mode": "navigate",
    "Sec-Fetch-Dest": "document",
}


class Running:
    def __init__(self, tmp: Path) -> None:
        self.folder = tmp / "config"
        shutil.copytree(ROOT / "tests" / "data" / "gateway", self.folder)
        self.config = self.folder / "config.yaml"
        with (self.folder / "wiki.txt").open("a") as fh:
            fh.write("127.0.0.3\n")
        self.good_config = self.config.read_text()
        self.data_dir = tmp / "var"
        self.log = tmp / "gateway.log"
        self.port = free_port()
        self.origins = []
        for host in ("127.0.0.1", "127.0.0.3"):
            server = ThreadingHTTPServer((host, 0), Origin)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self.origins.append(server)
        self.origin = f"http://127.0.0.1:{self.origins[0].server_address[1]}"
        self.wiki = f"http://127.0.0.3:{self.origins[1].server_address[1]}"
        self.proxy = f"http://127.0.0.1:{self.port}"
        self.proc = start_gateway(self.config, self.data_dir, self.port, self.log)
        self.ca = self.data_dir / "ca" / "mitmproxy-ca-cert.pem"

    def client(self, *, http2: bool = False, local_address: str | None = None) -> httpx.Client:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.set_alpn_protocols(["h2", "http/1.1"] if http2 else ["http/1.1"])
        transport = httpx.HTTPTransport(
            proxy=self.proxy, verify=context, http2=http2, local_address=local_address
        )
        return httpx.Client(transport=transport, timeout=10)

    def events(self) -> list[dict]:
        out = run_cli(self.config, self.data_dir, "events", "--json", "--limit", "1000")
        return json.loads(out)

    def stop(self) -> None:
        stop_gateway(self.proc, 20)
        for server in self.origins:
            server.shutdown()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    running = Running(tmp_path_factory.mktemp("gateway"))
    yield running
    running.stop()


def test_blocked_http_gets_block_page(gateway: Running) -> None:
    with gateway.client() as client:
        response = client.get("http://social.test/feed", headers=HTML)
    assert response.status_code == 403
    assert response.headers["content-type"].startswith("text/html")
    assert "social media" in response.text.lower()
    ref = response.headers["x-schoolgate-ref"]
    assert ref in response.text
    events = wait_for(lambda: [e for e in gateway.events() if e["ref"] == ref])
    assert events, "the block was not recorded"
    assert events[0]["kind"] == "block" and events[0]["category"] == "social_media"
    assert events[0]["client_ip"] == "127.0.0.1" and events[0]["role"] == "student"


def test_curl_blocked_http(gateway: Running) -> None:
    out = subprocess.run(
        [
            "curl",
            "-s",
            "-x",
            gateway.proxy,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://chat.social.test/",
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.stdout == "403"


def test_https_block_page_over_tls_http2(gateway: Running) -> None:
    with gateway.client(http2=True) as client:
        response = client.get("https://social.test/", headers=HTML)
    assert response.status_code == 403
    assert "social media" in response.text.lower()
    # httpx's tunnel offers http/1.1 first; curl asks for HTTP/2 and gets it.
    out = subprocess.run(
        [
            "curl",
            "-s",
            "--http2",
            "-x",
            gateway.proxy,
            "--cacert",
            str(gateway.ca),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
            "https://social.test/x",
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.stdout == "403 2"


def test_not_intercepted_refused_at_connect(gateway: Running) -> None:
    out = subprocess.run(
        [
            "curl",
            "-sv",
            "--interface",
            "127.0.0.2",
            "-x",
            gateway.proxy,
            "--cacert",
            str(gateway.ca),
            "https://social.test/",
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 56, out.stderr  # CONNECT refused: no tunnel, no TLS
    assert "403" in out.stderr
    # The refusal is recorded with the client and its role.
    events = wait_for(lambda: [e for e in gateway.events() if e["client_ip"] == "127.0.0.2"])
    assert events and events[-1]["role"] == "visitor" and events[-1]["host"] == "social.test"


def test_allowed_reaches_origin(gateway: Running) -> None:
    with gateway.client() as client:
        response = client.get(f"{gateway.origin}/hello?x=1")
    assert response.status_code == 200
    assert response.text == "origin GET /hello?x=1"


def test_read_only_post_blocked_get_passes(gateway: Running) -> None:
    with gateway.client() as client:
        get = client.get(f"{gateway.wiki}/wiki/Volcano")
        post = client.post(f"{gateway.wiki}/wiki/Volcano", content=b"edit=1")
    assert get.status_code == 200 and get.text == "origin GET /wiki/Volcano"
    assert post.status_code == 403


def test_websocket_handshake_blocked(gateway: Running) -> None:
    headers = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    with gateway.client() as client:
        response = client.get("http://social.test/socket", headers=headers)
    assert response.status_code == 403


def test_gateway_pages(gateway: Running) -> None:
    with gateway.client() as client:
        pac = client.get("http://schoolgate.internal/proxy.pac")
        ca = client.get("http://schoolgate.internal/ca/schoolgate-ca.pem")
    assert pac.status_code == 200 and f"PROXY 127.0.0.1:{gateway.port}" in pac.text
    assert ca.content == gateway.ca.read_bytes()


def test_broken_reload_keeps_policy_then_valid_edit_applies(gateway: Running) -> None:
    gateway.config.write_text(gateway.good_config + "\nnot_a_section: 1\n")
    assert wait_for(lambda: "refused" in gateway.log.read_text(errors="replace"), 10), (
        gateway.log.read_text()
    )
    assert "not_a_section" in gateway.log.read_text(errors="replace")
    with gateway.client() as client:
        assert client.get("http://social.test/").status_code == 403
        assert client.get(f"{gateway.origin}/").status_code == 200
    # A valid edit: the config back, and the origin's address added to a list it names.
    with (gateway.folder / "social.txt").open("a") as fh:
        fh.write("127.0.0.1\n")
    gateway.config.write_text(gateway.good_config)

    def origin_blocked() -> bool:
        with gateway.client() as client:
            return client.get(f"{gateway.origin}/").status_code == 403

    assert wait_for(origin_blocked, 10), gateway.log.read_text()


def test_sigterm_flushes_event_log(gateway: Running) -> None:
    count = 40
    with gateway.client() as client:
        for i in range(count):
            assert client.get(f"http://social.test/flush-{i}").status_code == 403
    gateway.proc.send_signal(signal.SIGTERM)
    assert gateway.proc.wait(20) == 0, gateway.log.read_text()
    urls = {e["url"] for e in gateway.events() if "flush-" in (e["url"] or "")}
    assert len(urls) == count


def test_mitmdump_script_refuses_broken_config(tmp_path: Path) -> None:
    folder = tmp_path / "config"
    shutil.copytree(ROOT / "tests" / "data" / "gateway", folder)
    config = folder / "config.yaml"
    config.write_text(config.read_text() + "\nrules: 3\n")
    out = subprocess.run(
        [
            MITMDUMP,
            "-q",
            "-s",
            str(ROOT / "addons" / "schoolgate.py"),
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            str(free_port()),
            "--set",
            f"confdir={tmp_path / 'ca'}",
            "--set",
            f"schoolgate_config={config}",
            "--set",
            f"schoolgate_data_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ},
    )
    assert out.returncode != 0


def test_mitmdump_script_enforces(tmp_path: Path) -> None:
    folder = tmp_path / "config"
    shutil.copytree(ROOT / "tests" / "data" / "gateway", folder)
    port = free_port()
    log = tmp_path / "mitmdump.log"
    proc = subprocess.Popen(
        [
            MITMDUMP,
            "-q",
            "-s",
            str(ROOT / "addons" / "schoolgate.py"),
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            str(port),
            "--set",
            f"confdir={tmp_path / 'ca'}",
            "--set",
            f"schoolgate_config={folder}/config.yaml",
            "--set",
            f"schoolgate_data_dir={tmp_path / 'var'}",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_port(port, proc, log)
        out = subprocess.run(
            [
                "curl",
                "-s",
                "-x",
                f"http://127.0.0.1:{port}",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "http://social.test/",
            ],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert out.stdout == "403", log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
