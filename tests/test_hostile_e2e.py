"""Hostile input against the real gateway: ``schoolgate run`` on a loopback port, driven by raw
sockets and httpx, with its SQLite database in the test's data dir.

A pupil is an adversary: bytes that are not UTF-8 in a Host header, a request with ten
thousand headers, thousands of connections that send half a request line and wait, and the
gateway killed (``kill -9``) while another program holds the database locked. Each test
checks what everyone else would notice: others are still served, every block page a pupil saw
is in the decision log, and the log says what was refused. No test times anything: how long
these take is measured by ``bench/hostile_bench.py``.

127.0.0.1 is a student in a lesson (tests/data/gateway); social.test is blocked social media;
127.0.0.5 is the attacker's address (not in the config: a guest).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from gateway_process import wait_for
from test_faults_e2e import HTML, Gateway, database_locked

ATTACKER = "127.0.0.5"


@pytest.fixture
def gateway(tmp_path: Path):
    running = Gateway(tmp_path)
    yield running
    running.close()


def raw_request(port: int, head: bytes, *, source: str = "127.0.0.1", timeout: float = 60) -> bytes:
    """Send ``head`` (a whole request) on a new connection; the answer, up to the close."""
    with socket.create_connection(("127.0.0.1", port), timeout, (source, 0)) as sock:
        sock.sendall(head)
        answer = b""
        while b"\r\n\r\n" not in answer or not _complete(answer):
            more = sock.recv(65536)
            if not more:
                break
            answer += more
        return answer


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    found = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return found is None or len(body) >= int(found[1])


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _ref(answer: bytes) -> str:
    return re.search(rb"(?im)^x-schoolgate-ref:\s*(\w+)", answer)[1].decode()


# -- bytes that are not UTF-8 -------------------------------------------------------------------


def test_invalid_bytes_then_ordinary_blocks_are_all_written(gateway: Gateway) -> None:
    """A Host header with a byte that is not UTF-8 (0xFF) and one with a NUL (which PostgreSQL
    refuses in text) name no host: refused as malformed (400). A User-Agent with such bytes is
    blocked as its site. (mitmproxy itself refuses such bytes in the request line.) Before, the
    first such event stopped the decision log for everyone. Each event, and every ordinary block
    after them, is in the log, the odd bytes kept as escapes."""
    gateway.start()
    hostile = {
        "odd": b"GET http://social.test/odd HTTP/1.1\r\nHost: social.test\xff\r\n"
        b"Accept: text/html\r\n\r\n",
        "nul": b"GET http://social.test/nul HTTP/1.1\r\nHost: social.test\x00\r\n\r\n",
        "agent": b"GET http://social.test/agent HTTP/1.1\r\nHost: social.test\r\n"
        b"User-Agent: curl/\xff\xfe\x00\r\n\r\n",
    }
    statuses = {"odd": 400, "nul": 400, "agent": 403}
    refs = {}
    for name, head in hostile.items():
        answer = raw_request(gateway.port, head)
        assert _status(answer) == statuses[name], answer[:300]
        refs[name] = _ref(answer)
    ordinary = gateway.block_refs("after-hostile", 20)
    wanted = set(refs.values()) | ordinary
    assert wait_for(lambda: wanted <= set(_refs(gateway))), gateway.log_text()
    recorded = {e["ref"]: e for e in _events(gateway)}
    odd, nul = recorded[refs["odd"]], recorded[refs["nul"]]
    assert "social.test\\udcff" in odd["reason"]  # the Host that was refused, escaped
    assert "social.test\\x00" in nul["reason"]
    assert odd["rule"] == nul["rule"] == "destination check (malformed)"
    assert "event log: writing" not in gateway.log_text()  # nothing waited to be retried
    assert gateway.stop() == 0


def _events(gateway: Gateway) -> list[dict]:
    return json.loads(
        subprocess.run(
            [sys.executable, "-m", "schoolgate.cli", "events", "--json", "--limit", "100000"]
            + ["--config", str(gateway.config), "--data-dir", str(gateway.data_dir)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
    )


def _refs(gateway: Gateway) -> list[str]:
    return [e["ref"] for e in _events(gateway)]


# -- ten thousand headers -------------------------------------------------------------------


def _many_headers(url: str, count: int) -> bytes:
    host = url.split("/")[2]
    filler = "".join(f"X-Filler-{i}: value-{i}\r\n" for i in range(count))
    return (
        f"GET {url} HTTP/1.1\r\nHost: {host}\r\n{filler}"
        "Accept: text/html\r\nConnection: close\r\n\r\n"
    ).encode()


def _browse(gateway: Gateway, stop: threading.Event, answers: list[int]) -> None:
    with gateway.client() as client:
        while not stop.is_set():
            answers.append(client.get(f"{gateway.origin}/lesson").status_code)
            answers.append(client.get("http://social.test/x", headers=HTML).status_code)


def test_ten_thousand_headers_while_another_client_browses(gateway: Gateway) -> None:
    """A request with 10,000 headers (about 200 KB) is refused with 431 at the first hook;
    another pupil browsing at the same time gets every answer."""
    gateway.start()
    stop, answers = threading.Event(), []
    browser = threading.Thread(target=_browse, args=(gateway, stop, answers))
    browser.start()
    try:
        answer = raw_request(gateway.port, _many_headers("http://social.test/big", 10_000))
        assert _status(answer) == 431, answer[:300]
        assert b"10003 headers (at most 100:" in answer  # with Host, Accept, Connection
        ten = raw_request(gateway.port, _many_headers("http://social.test/small", 10))
        assert _status(ten) == 403
        assert wait_for(lambda: len(answers) >= 20)
    finally:
        stop.set()
        browser.join(120)
    assert set(answers) == {200, 403} and answers.count(200) >= 10
    assert gateway.stop() == 0


def test_ten_thousand_headers_under_raised_limits_get_their_block_page(gateway: Gateway) -> None:
    """With the limits raised past them, the 10,000 headers go through every hook (each
    header looked up once): the request gets its block page, logged, and the other pupil is
    served meanwhile."""
    gateway.start(
        "--set", "schoolgate_max_request_headers=20000",
        "--set", "schoolgate_max_request_head=1000000",
    )  # fmt: skip
    stop, answers = threading.Event(), []
    browser = threading.Thread(target=_browse, args=(gateway, stop, answers))
    browser.start()
    try:
        answers_big = [raw_request(gateway.port, _many_headers("http://social.test/big", 10_000))]
        assert _status(answers_big[0]) == 403, answers_big[0][:300]
        assert b"<!doctype html>" in answers_big[0].lower()  # Accept: text/html, found once
        assert wait_for(lambda: len(answers) >= 20)
    finally:
        stop.set()
        browser.join(120)
    assert set(answers) == {200, 403}
    ref = _ref(answers_big[0])
    assert wait_for(lambda: ref in _refs(gateway)), gateway.log_text()
    assert gateway.stop() == 0


# -- thousands of idle connections ------------------------------------------------------------


def _half_request(port: int) -> socket.socket | None:
    sock = socket.socket()
    sock.settimeout(30)
    try:
        sock.bind((ATTACKER, 0))
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET http://social.test/ HT")  # half a request line, then nothing
    except OSError:
        sock.close()
        return None
    return sock


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_thousands_of_idle_connections_from_one_address_while_another_is_served(
    gateway: Gateway,
) -> None:
    """One address opens 3,000 connections that each send half a request line and wait.
    Past the cap per address (default 1,200) they are closed at once; the rest are closed
    when the header timeout runs out. Another pupil is served all along, and the log says
    what happened in a few lines, not three per connection."""
    gateway.start("--set", "schoolgate_header_timeout=20", verbosity="info")
    stop, answers = threading.Event(), []
    browser = threading.Thread(target=_browse, args=(gateway, stop, answers))
    browser.start()
    try:
        with ThreadPoolExecutor(16) as pool:
            socks = [s for s in pool.map(lambda _: _half_request(gateway.port), range(3000)) if s]
        assert len(socks) >= 2900
        before = len(answers)
        assert wait_for(lambda: len(answers) >= before + 20), gateway.log_text()[-2000:]
        # Every connection is closed by the gateway: the ones past the cap at once, the
        # others after the header timeout (the recv waits are bounds, not measurements).
        with ThreadPoolExecutor(16) as pool:
            closed = list(pool.map(_closed_by_peer, socks))
        assert all(closed), f"{closed.count(False)} connections still open"
        for sock in socks:
            sock.close()
    finally:
        stop.set()
        browser.join(120)
    assert set(answers) == {200, 403}
    assert gateway.stop() == 0  # the counts not yet reported are, on the way out
    text = gateway.log_text()
    assert re.search(r"\d+ connection\(s\) refused: more than 1200 open", text), text[-3000:]
    assert re.search(r"\d+ connection\(s\) closed: no complete request within 20 s", text)
    attacker_lines = [line for line in text.splitlines() if f"[{ATTACKER}:" in line]
    assert len(attacker_lines) <= 1300, attacker_lines[-5:]  # the refused ones leave no line


class Echo:
    """A TCP server that sends back whatever it receives (the far end of a tunnel)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)


def _client_hello(name: str) -> bytes:
    tls = ssl.create_default_context().wrap_bio(
        ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname=name
    )
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def _read(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size and (more := sock.recv(size - len(data))):
        data += more
    return data


def test_a_tunnel_passed_through_outlives_the_header_timeout(gateway: Gateway) -> None:
    """A visitor's HTTPS is not intercepted: after its ClientHello the bytes pass through and
    no request is ever seen. A pause longer than the header timeout is not a slow client:
    the tunnel stays open."""
    echo = Echo()
    # The destination check: the SNI's name must lead to the CONNECT's address.
    hosts = gateway.folder / "hosts"
    hosts.write_text("127.0.0.1 echo.test\n")
    gateway.start(
        "--set", "schoolgate_header_timeout=2", "--set", f"schoolgate_hosts_file={hosts}"
    )  # fmt: skip
    with socket.create_connection(("127.0.0.1", gateway.port), 30, ("127.0.0.2", 0)) as sock:
        target = f"127.0.0.1:{echo.port}"
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        assert b" 200 " in sock.recv(4096).split(b"\r\n")[0]
        hello = _client_hello("echo.test")
        sock.sendall(hello)
        assert _read(sock, len(hello)) == hello  # passed through to the far end and back
        time.sleep(5)  # a pause past the header timeout (this waits; it measures nothing)
        sock.sendall(b"still here")
        assert _read(sock, 10) == b"still here"
    echo.sock.close()
    assert gateway.stop() == 0


# -- kill -9 with the database locked -------------------------------------------------------------


def test_kill_9_under_an_exclusive_database_lock_then_restart_logs_every_answered_block(
    gateway: Gateway,
) -> None:
    """Another program holds the database's write lock; 300 blocks are answered (their events
    wait for the lock); the gateway is killed with SIGKILL straight after the last answer.
    Restarted, it writes every one of them once the lock is gone."""
    gateway.start()
    with database_locked(gateway.db):
        answered = gateway.block_refs("killed", 300)
        os.kill(gateway.proc.pid, signal.SIGKILL)
        assert gateway.proc.wait(60) == -signal.SIGKILL
        assert gateway.refs("killed") == set()  # none of them reached the database
        gateway.start()  # with the lock still held
        with gateway.client() as client:
            after = client.get("http://social.test/killed-after-restart", headers=HTML)
        assert after.status_code == 403
        answered.add(after.headers["x-schoolgate-ref"])
    assert wait_for(lambda: gateway.refs("killed") == answered), gateway.log_text()[-3000:]
    assert len(gateway.events("killed")) == 301  # each once
    assert gateway.stop() == 0
    assert "the 300 event(s) an earlier run left in the spool are in the database" in (
        gateway.log_text()
    )
    assert not list(gateway.data_dir.glob("eventlog/spool/*/*.jsonl"))  # drained: deleted


def test_a_sanction_is_on_disk_before_the_pupil_is_answered(gateway: Gateway) -> None:
    """Circumvention attempts that put a warning and a lockout in force, the gateway killed
    straight after the answers: after the restart both events are in the log."""
    from test_circumvention_addon import add_circumvention_config

    add_circumvention_config(gateway.config)
    gateway.start()
    refs = []
    with gateway.client() as client:
        for host in ("proxy1.test", "proxy2.test"):
            answer = client.get(f"http://{host}/", headers=HTML)
            assert answer.status_code == 403
            refs.append(answer.headers["x-schoolgate-ref"])
    os.kill(gateway.proc.pid, signal.SIGKILL)
    gateway.proc.wait(60)
    gateway.start()

    def sanctions() -> set[str]:
        return {
            e["action"]
            for e in _events(gateway)
            if e["kind"] == "circumvention" and e["action"] in ("warn", "lockout")
        }

    assert wait_for(lambda: sanctions() == {"warn", "lockout"}), gateway.log_text()[-3000:]
    assert gateway.stop() == 0


def test_hostile_requests_leave_the_gateway_serving(gateway: Gateway) -> None:
    """Requests the gateway cannot even parse (a request line of garbage, a NUL in the
    method, a Host header that is no host) each get an error answer or a close, and the
    gateway goes on serving."""
    gateway.start()
    for head in (
        b"\x16\x03\x01\x00\xff garbage\r\n\r\n",
        b"G\x00T http://social.test/ HTTP/1.1\r\nHost: social.test\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
        b"GET http://social.test/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    ):
        answer = raw_request(gateway.port, head)
        assert answer == b"" or _status(answer) in (400, 403, 431, 502), answer[:200]
    gateway.assert_allowed_reaches_origin("still-serving")
    with gateway.client() as client:
        assert client.get("http://social.test/still", headers=HTML).status_code == 403
    assert gateway.proc.poll() is None
    assert gateway.stop() == 0
