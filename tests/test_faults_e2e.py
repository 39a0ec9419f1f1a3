"""Faults against the real gateway: ``schoolgate run`` on a loopback port with its SQLite
database in the test's data dir, driven by httpx and curl.

Each test breaks one thing a school can meet (the database locked by another program, the
database's disk full, a category list file vanishing, an upstream server resetting connections,
SIGTERM in the middle of a burst) and checks what a user would notice: blocked sites stay
blocked, allowed sites still load, and every block page a pupil saw has its event in the
database once the fault is over.

127.0.0.1 is a student in a lesson (tests/data/gateway); the local origin on 127.0.0.1 is
uncategorised (allowed); social.test is social media (blocked, answered without any upstream
contact).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from gateway_process import ROOT, Origin, free_port, run_cli, start_gateway, stop_gateway, wait_for

HTML = {"Accept": "text/html", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
# Warnings too (Gateway.start): `--quiet` alone keeps only errors, and the event log warns
# while it retries.


class Gateway:
    """A copy of tests/data/gateway, a local origin and `schoolgate run` on them."""

    def __init__(self, tmp: Path, data_dir: Path | None = None) -> None:
        self.folder = tmp / "config"
        shutil.copytree(ROOT / "tests" / "data" / "gateway", self.folder)
        self.config = self.folder / "config.yaml"
        self.data_dir = data_dir or tmp / "var"
        self.data_dir.mkdir(exist_ok=True)
        self.db = self.data_dir / "schoolgate.db"
        self.log = tmp / "gateway.log"
        self.origin_server = ThreadingHTTPServer(("127.0.0.1", 0), Origin)
        threading.Thread(target=self.origin_server.serve_forever, daemon=True).start()
        self.origin = f"http://127.0.0.1:{self.origin_server.server_address[1]}"
        self.port = free_port()
        self.proxy = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, *extra: str, verbosity: str = "warn") -> None:
        self.proc = start_gateway(
            self.config, self.data_dir, self.port, self.log,
            "--set", f"termlog_verbosity={verbosity}", *extra, append_log=True,
        )  # fmt: skip

    def client(self) -> httpx.Client:
        return httpx.Client(proxy=self.proxy, timeout=30)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def events(self, marker: str) -> list[dict]:
        """The recorded events whose URL contains ``marker``."""
        out = run_cli(self.config, self.data_dir, "events", "--json", "--limit", "100000")
        return [e for e in json.loads(out) if marker in (e["url"] or "")]

    def refs(self, marker: str) -> set[str]:
        return {e["ref"] for e in self.events(marker)}

    def block_refs(self, marker: str, count: int) -> set[str]:
        """``count`` blocked requests (social.test/<marker>-i); the refs of their block pages."""
        refs = set()
        with self.client() as client:
            for i in range(count):
                response = client.get(f"http://social.test/{marker}-{i}", headers=HTML)
                assert response.status_code == 403, response.text
                assert "social media" in response.text.lower()
                refs.add(response.headers["x-schoolgate-ref"])
        assert len(refs) == count
        return refs

    def assert_allowed_reaches_origin(self, path: str) -> None:
        with self.client() as client:
            response = client.get(f"{self.origin}/{path}")
        assert response.status_code == 200, response.text
        assert response.text == f"origin GET /{path}"

    def stop(self) -> int | None:
        """SIGTERM and wait: the exit status (None if it had to be killed)."""
        return stop_gateway(self.proc, 60)

    def close(self) -> None:
        self.stop()
        self.origin_server.shutdown()
        self.origin_server.server_close()


@pytest.fixture
def gateway(tmp_path: Path):
    running = Gateway(tmp_path)
    running.start()
    yield running
    running.close()


# -- the database locked ----------------------------------------------------------------------


LOCKER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("COMMIT")
"""


@contextlib.contextmanager
def database_locked(db: Path) -> Iterator[None]:
    """Another program holds an exclusive write lock on ``db`` for the ``with`` block."""
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert locker.stdout.readline().strip() == "locked"
        yield
    finally:
        locker.communicate("\n", timeout=60)
    assert locker.returncode == 0


def test_database_locked_decisions_go_on_and_events_are_written_after(gateway: Gateway) -> None:
    """Another program (a backup script, an admin's `sqlite3` shell) holds an exclusive write
    lock on the database: pupils still get their block pages and allowed sites still load;
    the events wait in memory and are all written once the lock is released."""
    before = gateway.block_refs("before-lock", 3)
    assert wait_for(lambda: gateway.refs("before-lock") == before)
    with database_locked(gateway.db):
        blocked = gateway.block_refs("locked", 25)
        gateway.assert_allowed_reaches_origin("while-locked")
        # The writer gave up on this attempt (SQLite's 10 s busy timeout) and says so.
        assert wait_for(lambda: "database is locked" in gateway.log_text(), 90), gateway.log_text()
        assert "keeping them and retrying" in gateway.log_text()
        # Readers still work in WAL mode: nothing of the burst is in the database yet.
        assert gateway.refs("locked") == set()
        # Decisions still go on with the writer stuck.
        blocked |= gateway.block_refs("still-locked", 5)
        with gateway.client() as client:
            assert client.get("http://chat.social.test/", headers=HTML).status_code == 403
    # Released: every block page the clients saw is in the database, once.
    assert wait_for(lambda: gateway.refs("locked") == blocked), gateway.log_text()
    assert len(gateway.events("locked")) == len(blocked) == 30
    assert "writing again after" in gateway.log_text()
    gateway.assert_allowed_reaches_origin("after-lock")
    assert gateway.stop() == 0


# -- the disk full ----------------------------------------------------------------------------


def _can_mount_tmpfs() -> str | None:
    if os.geteuid() != 0:
        return "the disk-full test mounts a small tmpfs: it needs root"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "the disk-full test needs mount(8)"
    return None


def fill(folder: Path) -> Path:
    """Fill the file system under ``folder`` to the last byte; the filler file."""
    filler = folder / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb", buffering=0) as handle:
        for size in (65536, 4096, 512, 1):
            while True:
                try:
                    handle.write(chunk[:size])
                except OSError:
                    break
    return filler


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 24 MB tmpfs mounted as the gateway's data dir (unmounted afterwards)."""
    reason = _can_mount_tmpfs()
    if reason:
        pytest.skip(reason)
    mount = tmp_path / "var"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m,mode=0755", "schoolgate-test", str(mount)],
        check=True,
        capture_output=True,
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, capture_output=True)


def test_disk_full_decisions_go_on_and_events_are_written_when_space_returns(
    tmp_path: Path, small_disk: Path
) -> None:
    """The database's disk fills up (a real, full file system: a tmpfs filled to the last
    byte, so SQLite's writes fail with ENOSPC, "database or disk is full"): pupils still get
    their block pages; the log says why nothing is written; once space is freed every event
    is written."""
    gateway = Gateway(tmp_path, data_dir=small_disk)
    try:
        gateway.start()
        before = gateway.block_refs("before-full", 3)
        assert wait_for(lambda: gateway.refs("before-full") == before)
        filler = fill(small_disk)
        assert shutil.disk_usage(small_disk).free == 0
        blocked = gateway.block_refs("disk-full", 40)
        gateway.assert_allowed_reaches_origin("while-full")
        assert wait_for(lambda: "database or disk is full" in gateway.log_text()), (
            gateway.log_text()
        )
        assert "keeping them and retrying" in gateway.log_text()
        blocked |= gateway.block_refs("disk-full-still", 10)
        assert gateway.refs("disk-full") == set()
        filler.unlink()
        assert wait_for(lambda: gateway.refs("disk-full") == blocked), gateway.log_text()
        assert len(gateway.events("disk-full")) == 50
        assert "writing again after" in gateway.log_text()
        gateway.assert_allowed_reaches_origin("after-full")
        assert gateway.stop() == 0
    finally:
        gateway.close()


# -- a list file vanishing --------------------------------------------------------------------


def _refusals(gateway: Gateway) -> int:
    return gateway.log_text().count("refused")


def test_list_file_vanishing_keeps_the_category_blocked(gateway: Gateway) -> None:
    """social.txt (the social media list the config names) is deleted while the gateway runs
    (a list update gone wrong, a clumsy clean-up): the reload is refused with the reason, the
    last good policy stays in force, a forced reload (SIGHUP) while it is missing does not open
    the category up, and putting the file back (with a new entry) loads it."""
    listed = gateway.folder / "social.txt"
    original = listed.read_text()
    listed.unlink()
    assert wait_for(lambda: _refusals(gateway) >= 1), gateway.log_text()
    text = gateway.log_text()
    assert "the last good policy stays in force" in text
    assert "social.txt" in text
    with gateway.client() as client:
        assert client.get("http://social.test/gone", headers=HTML).status_code == 403
        assert client.get("http://chat.social.test/", headers=HTML).status_code == 403
    gateway.assert_allowed_reaches_origin("list-gone")

    refused = _refusals(gateway)
    gateway.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: _refusals(gateway) > refused), gateway.log_text()
    with gateway.client() as client:
        assert client.get("http://social.test/after-hup", headers=HTML).status_code == 403
    assert gateway.proc.poll() is None

    # Back, with one more entry: the reload loads it (the new entry is blocked too).
    listed.write_text(original + "127.0.0.1\n")

    def origin_blocked() -> bool:
        with gateway.client() as client:
            return client.get(f"{gateway.origin}/x").status_code == 403

    assert wait_for(origin_blocked), gateway.log_text()
    with gateway.client() as client:
        assert client.get("http://social.test/back", headers=HTML).status_code == 403
    assert {e["url"] for e in gateway.events("social.test/")} >= {
        "http://social.test/gone",
        "http://social.test/after-hup",
        "http://social.test/back",
    }


# -- the upstream resetting connections ----------------------------------------------------------


class Resetter:
    """An upstream that accepts, reads the request, then either resets the connection
    (SO_LINGER 0: the peer gets RST) before answering, or sends half a response and closes."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            try:
                conn.settimeout(10)
                data = b""
                while b"\r\n\r\n" not in data:
                    more = conn.recv(4096)
                    if not more:
                        break
                    data += more
                if self.mode == "half":
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
                        b"content-length: 100000\r\n\r\npartial body"
                    )
                    conn.shutdown(socket.SHUT_RDWR)
                else:
                    # Linger on, zero seconds: close() sends RST instead of FIN.
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            finally:
                conn.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()


@pytest.mark.parametrize("mode", ["reset", "half"])
def test_upstream_resetting_connections(gateway: Gateway, mode: str) -> None:
    """An upstream that resets connections (or closes half-way through a response): the client
    gets a 502 from the gateway, never a hang or a crash, and the gateway keeps deciding the
    next requests, allowed and blocked."""
    upstream = Resetter(mode)
    try:
        url = f"http://127.0.0.1:{upstream.port}/broken"
        with gateway.client() as client:
            for _ in range(5):
                response = client.get(url)
                assert response.status_code == 502, response.text
                gateway.assert_allowed_reaches_origin("after-reset")
                assert client.get("http://social.test/x", headers=HTML).status_code == 403
        # curl sees the same 502 (a separate connection through the proxy each time).
        out = subprocess.run(
            ["curl", "-s", "-x", gateway.proxy, "-o", "/dev/null", "-w", "%{http_code}", url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.stdout == "502"
        assert upstream.accepted >= 6
    finally:
        upstream.close()
    assert gateway.proc.poll() is None
    gateway.assert_allowed_reaches_origin("still-fine")
    assert gateway.stop() == 0


# -- SIGTERM in the middle of a burst ------------------------------------------------------------


def test_sigterm_mid_burst_loses_nothing(gateway: Gateway) -> None:
    """Twenty clients fire blocked requests as fast as they can; SIGTERM arrives while they
    are in flight. The gateway exits cleanly, and every block page a client received has its
    event in the database."""
    stop = threading.Event()
    started = threading.Barrier(21)
    answered: list[int] = []  # one item per block page received (list.append is atomic)

    def burst(worker: int) -> tuple[set[str], int]:
        refs: set[str] = set()
        failures = 0
        with gateway.client() as client:
            started.wait()
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    response = client.get(f"http://social.test/burst-{worker}-{i}", headers=HTML)
                except httpx.HTTPError:
                    failures += 1  # the gateway went away under this request
                    break
                if response.status_code == 403:
                    refs.add(response.headers["x-schoolgate-ref"])
                    answered.append(1)
                else:  # never anything but a block page (or no answer at all)
                    raise AssertionError(f"{response.status_code}: {response.text[:200]}")
        return refs, failures

    with ThreadPoolExecutor(20) as pool:
        futures = [pool.submit(burst, w) for w in range(20)]
        started.wait()
        # In flight: at least a few hundred answered already, and the clients still going.
        assert wait_for(lambda: len(answered) >= 300), gateway.log_text()
        gateway.proc.send_signal(signal.SIGTERM)
        code = gateway.proc.wait(60)
        stop.set()
        results = [f.result() for f in futures]
    assert code == 0, gateway.log_text()
    received = set().union(*(refs for refs, _ in results))
    assert len(received) >= 200
    recorded = gateway.refs("burst-")
    missing = received - recorded
    assert not missing, f"{len(missing)} block pages without an event: {sorted(missing)[:5]}"
    # Nor was anything decided during the shutdown dropped unseen by the clients.
    text = gateway.log_text()
    assert "not recorded" not in text and "unwritten event" not in text, text[-3000:]
