"""A real ``schoolgate run`` on mitmproxy and APScheduler releases the tests have never seen:
every borrowed internal (schoolgate/borrowed.py) falls back to the library's own behaviour,
each says so once, and the gateway still decides every request."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from gateway_process import ROOT, Origin, free_port, stop_gateway, wait_for, wait_port

pytestmark = pytest.mark.e2e

# Run the gateway's CLI with the installed versions of both libraries reported as 99.0.0.
UNTESTED_VERSIONS = """
import importlib.metadata, sys
real = importlib.metadata.version
def version(name):
    return "99.0.0" if name.lower() in ("mitmproxy", "apscheduler") else real(name)
importlib.metadata.version = version
from schoolgate.cli.main import main
sys.exit(main())
"""


def curl(port: int, url: str, login: str) -> str:
    out = subprocess.run(
        ["curl", "-s", "-k", "-o", "/dev/null", "-w", "%{http_code}", "-U", login]
        + ["-x", f"http://127.0.0.1:{port}", url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return out.stdout


def test_a_gateway_on_untested_library_versions_falls_back_and_still_decides(
    gateway_config: Path, gateway_data_dir: Path, tmp_path: Path
) -> None:
    digest = base64.b64encode(hashlib.sha1(b"pw1").digest()).decode()
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"ali:{{SHA}}{digest}\n")
    origin = ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    port, log = free_port(), tmp_path / "gateway.log"
    argv = [sys.executable, "-c", UNTESTED_VERSIONS, "run", "--config", str(gateway_config)]
    argv += ["--data-dir", str(gateway_data_dir), "--listen-host", "127.0.0.1"]
    argv += ["--listen-port", str(port), "--workers", "2", "--set", f"proxyauth=@{htpasswd}"]
    proc = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_port(port, proc, log)
        page = f"http://127.0.0.1:{origin.server_address[1]}/lesson"
        assert curl(port, page, "ali:pw1") == "200"
        assert curl(port, page, "ali:wrong") == "407"  # logins are still checked
        assert curl(port, "http://social.test/feed", "ali:pw1") == "403"  # and policy applies
        assert curl(port, "https://social.test/feed", "ali:pw1") == "403"  # over TLS too
        assert wait_for(lambda: "schoolgate jobs scheduled" in log.read_text(), timeout=60)
    finally:
        status = stop_gateway(proc)
        origin.shutdown()
    text = log.read_text()
    assert status == 0, text
    for fallback in (
        "not using the hook table",
        "not using several worker processes",
        "not using the proxy login cache",
        "not using the scheduler that starts no job once stopped",
    ):
        lines = [line for line in text.splitlines() if fallback in line]
        assert len(lines) == 1, f"{fallback!r} said {len(lines)} times:\n{text}"
        assert "99.0.0 is not a version schoolgate is tested with" in lines[0]
    assert "worker 1 of 2" not in text  # one process served everything
