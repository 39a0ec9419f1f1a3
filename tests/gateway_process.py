"""The real gateway as end-to-end tests run it: `schoolgate run` as a subprocess on a loopback
port, and the `schoolgate` CLI on the same config and data dir."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"  # Debian's, driven by Playwright (never `playwright install`)
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_port(
    port: int, proc: subprocess.Popen, log: Path, timeout: float = 30, host: str = "127.0.0.1"
) -> None:
    """Until the gateway listens; its log in the failure if it exits or never listens."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"gateway exited ({proc.returncode}):\n{log.read_text()}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"gateway did not listen:\n{log.read_text()}")


def start_gateway(
    config: Path,
    data_dir: Path,
    port: int,
    log: Path,
    *extra: str,
    listen_host: str = "127.0.0.1",
    quiet: bool = True,
    append_log: bool = False,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen:
    """`schoolgate run` with ``extra`` arguments, returned once it listens (and, with
    ``--portal-port``, once the portal's own port does too: it opens a moment after the
    proxy's, later still on a busy machine)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "schoolgate.cli", "run", "--config", str(config)]
        + ["--data-dir", str(data_dir), "--listen-host", listen_host, "--listen-port", str(port)]
        + list(extra)
        + (["--quiet"] if quiet else []),
        stdout=log.open("ab" if append_log else "wb"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env=dict(env) if env is not None else None,
    )
    wait_port(port, proc, log, host=listen_host)
    if "--portal-port" in extra:
        portal_port = int(extra[extra.index("--portal-port") + 1])
        portal_host = extra[extra.index("--portal-host") + 1] if "--portal-host" in extra else None
        wait_port(portal_port, proc, log, host=portal_host or "127.0.0.1")
    return proc


def stop_gateway(proc: subprocess.Popen | None, timeout: float = 30) -> int | None:
    """SIGTERM (a gateway flushes its decision log on it) and wait: the exit status, or None
    if it had to be killed after ``timeout`` seconds."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            return None
    return proc.returncode


def run_cli(
    config: Path, data_dir: Path, *args: str, stdin: str | None = None, timeout: float = 60
) -> str:
    """A `schoolgate` command on the gateway's config and data dir; its output (must succeed)."""
    out = subprocess.run(
        [sys.executable, "-m", "schoolgate.cli", *args, "--config", str(config)]
        + ["--data-dir", str(data_dir)],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )
    assert out.returncode == 0, f"schoolgate {' '.join(args)}: {out.stderr}"
    return out.stdout


class Origin(BaseHTTPRequestHandler):
    """The test's "internet": answers any request with ``origin <METHOD> <path>``."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        body = f"origin {self.command} {self.path}".encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_HEAD = _answer

    def log_message(self, *args) -> None:
        pass


def wait_for(predicate: Callable[[], object], timeout: float = 60.0, step: float = 0.2):
    """``predicate()`` once it is truthy, or its last value after ``timeout``: a bound on a
    wait for something to happen, never a check of how fast it happened."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def spki_hash(ca_pem: Path) -> str:
    """The SHA-256 of the CA's public key, for Chromium's
    ``--ignore-certificate-errors-spki-list``: mitmproxy signs every certificate it makes with a
    key pair equal to the CA's, so the browser accepts the gateway's certificates and no
    others."""
    import base64
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(ca_pem.read_bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()
