"""List subscriptions through the real gateway: fetched at its first start from a local HTTP
"publisher", refreshed live, and a truncated download refused with the old list kept.

The publisher is a loopback HTTP server whose answer the test changes; the gateway
(``schoolgate run``, upstream mode in front of a loopback origin) has a ``gaming`` category
whose only list is that subscription (blocked for everyone). Requests go through the gateway
with httpx as the student (127.0.0.1).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from gateway_process import ROOT, Origin, free_port, start_gateway, stop_gateway

HOSTS = [f"game{i}.test" for i in range(200)]


class Publisher(BaseHTTPRequestHandler):
    """Serves ``self.server.lists[path]`` (bytes); counts the requests."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = self.server.lists.get(self.path)
        self.server.requests.append(self.path)
        if body is None:
            self.send_response(404)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def squidguard_tgz(domains: list[str]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, text in (("domains", "\n".join(domains) + "\n"), ("usage", "black\n")):
            data = text.encode()
            info = tarfile.TarInfo(f"adult/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.fixture
def setup(tmp_path: Path):
    publisher = ThreadingHTTPServer(("127.0.0.1", 0), Publisher)
    publisher.lists = {
        "/gaming.txt": "\n".join(HOSTS[:100]).encode() + b"\n",
        "/adult.tar.gz": squidguard_tgz(["adult0.test", "adult1.test", "adult2.test"]),
    }
    publisher.requests = []
    threading.Thread(target=publisher.serve_forever, daemon=True).start()
    origin = ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{publisher.server_address[1]}"
    folder = tmp_path / "config"
    shutil.copytree(ROOT / "tests" / "data" / "gateway", folder)
    config = folder / "config.yaml"
    text = config.read_text().replace(
        "categories:\n",
        "categories:\n"
        "  gaming:\n"
        "    description: Games (test)\n"
        "    subscriptions:\n"
        f'      - {{url: "{base}/gaming.txt", format: domains, schedule: daily,\n'
        "         min_entries: 50, max_shrink: 0.2, licence: CC0, attribution: the test}\n"
        "  adult:\n"
        "    description: Adult (test)\n"
        "    subscriptions:\n"
        f'      - {{url: "{base}/adult.tar.gz", format: squidguard-tgz, schedule: weekly}}\n',
    )
    config.write_text(text)
    data_dir = tmp_path / "var"
    port = free_port()
    proc = start_gateway(
        config,
        data_dir,
        port,
        tmp_path / "gateway.log",
        "--mode",
        f"upstream:http://127.0.0.1:{origin.server_address[1]}",
        "--set",
        "schoolgate_reload_interval=0.5",
        quiet=False,
    )
    try:
        yield publisher, config, data_dir, port, tmp_path / "gateway.log"
    finally:
        stop_gateway(proc, 20)
        publisher.shutdown()
        origin.shutdown()


def status(port: int, host: str) -> int:
    with httpx.Client(proxy=f"http://127.0.0.1:{port}", timeout=10) as client:
        return client.get(f"http://{host}/").status_code


def wait_status(port: int, host: str, wanted: int, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        got = status(port, host)
        if got == wanted or time.monotonic() > deadline:
            return got
        time.sleep(0.3)


def lists_update(config: Path, data_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "schoolgate.cli", "lists", "update", "--category", "gaming",
         "--config", str(config), "--data-dir", str(data_dir), "--no-progress"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip


def test_subscription_fetched_at_first_start_refreshed_live_and_truncation_refused(setup):
    publisher, config, data_dir, port, log = setup
    # Fetched at the gateway's first start (both lists, the archive unpacked), no command run.
    assert wait_status(port, HOSTS[5], 403) == 403, log.read_text()[-3000:]
    assert wait_status(port, "www.adult1.test", 403) == 403, log.read_text()[-3000:]
    assert status(port, HOSTS[150]) == 200  # not in the first list
    assert "/gaming.txt" in publisher.requests
    kept = data_dir / "subscriptions" / "gaming" / "gaming"
    assert (data_dir / "subscriptions" / "adult" / "adult" / "domains").is_file()

    # A refresh with more entries: the running gateway applies it without a restart.
    publisher.lists["/gaming.txt"] = "\n".join(HOSTS).encode() + b"\n"
    done = lists_update(config, data_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "100 -> 200 entries" in done.stdout
    assert wait_status(port, HOSTS[150], 403) == 403

    # A truncated download (a third of the list): refused, the old list stays in force.
    publisher.lists["/gaming.txt"] = "\n".join(HOSTS[:60]).encode() + b"\n"
    refused = lists_update(config, data_dir)
    assert refused.returncode == 1, refused.stdout
    assert "refused: the list shrank by 70%" in refused.stdout
    assert len(kept.read_text().split()) == 200
    time.sleep(2)  # several reload checks: nothing changed
    assert status(port, HOSTS[150]) == 403
    # An error page instead of a list: refused too.
    publisher.lists["/gaming.txt"] = b"<html><body>" + b"<p>Service unavailable</p>" * 300
    assert lists_update(config, data_dir).returncode == 1
    assert status(port, HOSTS[150]) == 403
    stats = subprocess.run(
        [sys.executable, "-m", "schoolgate.cli", "lists", "stats", "--config", str(config),
         "--data-dir", str(data_dir)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    ).stdout  # fmt: skip
    assert "subscription gaming" in stats and "refreshed" in stats and "refused" in stats
