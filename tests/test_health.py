"""Operations through a real gateway (``schoolgate run`` with ``--portal-port`` on loopback):
``/healthz`` turns unready while another program holds the SQLite database locked and ready
again after; ``/metrics`` is read by Prometheus's own text parser; the heartbeat shows in the
database; what is switched off is said at start and by ``check-config``; ``schoolgate events
--follow`` prints events as they are recorded."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from gateway_process import ROOT, free_port, start_gateway, stop_gateway, wait_for
from prometheus_client.parser import text_string_to_metric_families

from schoolgate.core.config import load_policy
from schoolgate.core.switched_off import switched_off
from schoolgate.gateway.health import MinuteSeries
from schoolgate.storage.heartbeats import Beat, minutes_total

HOLD_LOCK = textwrap.dedent(
    """
    import sqlite3, sys
    db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
    db.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    sys.stdin.readline()  # until the test says so
    db.execute("ROLLBACK")
    print("released", flush=True)
    """
)


@pytest.fixture
def gateway(gateway_config: Path, gateway_data_dir: Path, tmp_path: Path):
    port, admin = free_port(), free_port()
    log = tmp_path / "gateway.log"
    proc = start_gateway(
        gateway_config,
        gateway_data_dir,
        port,
        log,
        "--portal-port",
        str(admin),
        "--set",
        "schoolgate_heartbeat_interval=1",
        quiet=False,
    )
    # The admin port opens a moment after the proxy's.
    assert wait_for(lambda: _get(f"http://127.0.0.1:{admin}/healthz/live") is not None, 30)
    yield {"port": port, "admin": f"http://127.0.0.1:{admin}", "log": log, "proc": proc,
           "db": gateway_data_dir / "schoolgate.db", "config": gateway_config,
           "data_dir": gateway_data_dir}  # fmt: skip
    stop_gateway(proc)


def _get(url: str, **kwargs):
    try:
        return httpx.get(url, timeout=15, **kwargs)
    except httpx.HTTPError:
        return None


def _through(gw: dict, url: str) -> httpx.Response:
    with httpx.Client(proxy=f"http://127.0.0.1:{gw['port']}", timeout=15) as client:
        return client.get(url)


@pytest.mark.e2e
def test_healthz_turns_unready_while_the_database_is_locked_and_ready_after(gateway):
    ready = httpx.get(f"{gateway['admin']}/healthz", timeout=15)
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["ready"] and set(body["checks"]) == {
        "policy",
        "database",
        "event_backlog",
        "event_loop",
    }
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(gateway["db"])],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        locked = httpx.get(f"{gateway['admin']}/healthz", timeout=15)
        assert locked.status_code == 503, locked.text
        checks = locked.json()["checks"]
        assert not checks["database"]["ok"] and "locked" in checks["database"]["detail"]
        assert checks["policy"]["ok"] and checks["event_loop"]["ok"]
        # Still alive: the event loop turns; only readiness is lost.
        assert httpx.get(f"{gateway['admin']}/healthz/live", timeout=15).status_code == 200
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "released"
    finally:
        holder.kill() if holder.poll() is None else None
        holder.wait(10)
    again = wait_for(lambda: _get(f"{gateway['admin']}/healthz").status_code == 200, 30)
    assert again, httpx.get(f"{gateway['admin']}/healthz", timeout=15).text


@pytest.mark.e2e
def test_metrics_parse_and_count_requests_and_blocks(gateway):
    def samples() -> dict:
        text = httpx.get(f"{gateway['admin']}/metrics", timeout=15).text
        found = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return found

    before = samples()
    mine = [key for key in before if key[0] == "schoolgate_requests_total"]
    assert len(mine) == 1, before  # this process, labelled by gateway and worker
    labels = mine[0][1]
    assert dict(labels)["worker"] == "0"
    assert _through(gateway, "http://social.test/feed").status_code == 403
    assert _through(gateway, "http://social.test/other").status_code == 403
    after = samples()
    assert after[("schoolgate_requests_total", labels)] >= before[mine[0]] + 2
    blocks = ("schoolgate_blocks_total", labels)
    assert after[blocks] == before.get(blocks, 0) + 2
    assert after[("schoolgate_ready", ())] == 1.0
    assert after[("schoolgate_database_up", ())] == 1.0
    assert after[("schoolgate_gateway_up", labels)] == 1.0
    assert after[("schoolgate_switched_off", (("what", "notifications"),))] == 1.0
    assert after[("schoolgate_list_entries", (("category", "social_media"),))] >= 1
    # Not for pupils: through the proxy, the portal host has no /metrics.
    assert _through(gateway, "http://schoolgate.internal/metrics").status_code == 404


@pytest.mark.e2e
def test_each_process_writes_a_heartbeat_and_the_start_log_says_what_is_switched_off(gateway):
    import sqlite3

    def beat():
        with sqlite3.connect(gateway["db"]) as db:
            return db.execute(
                "SELECT instance, requests, blocks, stopped_at FROM gateway_heartbeats"
            ).fetchall()

    assert _through(gateway, "http://social.test/x").status_code == 403
    rows = wait_for(lambda: [r for r in beat() if r[2] >= 1], 30)
    assert rows and rows[0][0].endswith(f":{gateway['port']}/0") and rows[0][3] is None
    text = gateway["log"].read_text()
    assert "No mail relay or webhook is set up" in text
    assert "There is no staff account yet" in text
    assert stop_gateway(gateway["proc"]) == 0
    assert beat()[0][3] is not None  # a clean stop is marked, not "not seen"


def test_check_config_says_what_is_switched_off():
    out = subprocess.run(
        [sys.executable, "-m", "schoolgate.cli", "check-config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "SCHOOLGATE_DATA_DIR": "/nonexistent/schoolgate-data"},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "switched off: No mail relay or webhook is set up" in out.stderr
    assert "The locked category illegal has no entries" in out.stderr
    assert "There is no staff account yet" in out.stderr and "no database yet" in out.stderr


@pytest.mark.e2e
def test_events_follow_prints_events_as_they_are_recorded(gateway):
    follower = subprocess.Popen(
        [sys.executable, "-m", "schoolgate.cli", "events", "--follow", "--json", "--limit", "5"]
        + ["--config", str(gateway["config"]), "--data-dir", str(gateway["data_dir"])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    lines: list[dict] = []

    def read() -> None:
        for line in follower.stdout:
            lines.append(json.loads(line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        for n in range(3):
            assert _through(gateway, f"http://social.test/follow-{n}").status_code == 403
        got = wait_for(lambda: [e for e in lines if (e.get("url") or "").endswith("/follow-2")], 60)
        assert got, (lines, follower.stderr.read() if follower.poll() is not None else "")
        urls = [e["url"] for e in lines]
        assert [u for u in urls if "/follow-" in u] == [
            "http://social.test/follow-0",
            "http://social.test/follow-1",
            "http://social.test/follow-2",
        ]
    finally:
        follower.terminate()
        follower.wait(10)


# -- the parts, on their own ---------------------------------------------------------------------


def test_minutes_add_up_over_processes():
    series = MinuteSeries()
    t0 = datetime(2026, 12, 9, 10, 0, 5, tzinfo=UTC)
    series.sample(t0, 100, 10)  # the first sample sets the base
    series.sample(t0 + timedelta(seconds=20), 130, 12)
    series.sample(t0 + timedelta(seconds=70), 150, 12)
    assert [(r, b) for _, r, b in series.as_list()] == [(30, 2), (20, 0)]
    beat = Beat(host="a", port=1, worker=1, pid=1, started_at=t0, seen_at=t0, interval=10,
                minutes=series.as_list())  # fmt: skip

    class Row:
        def __init__(self, minutes):
            self._m = minutes

        def per_minute(self):
            return self._m

    total = minutes_total([Row(beat.minutes), Row(beat.minutes)], t0 + timedelta(seconds=70), 3)
    assert [(r, b) for _, r, b in total] == [(0, 0), (60, 4), (40, 0)]


def test_switched_off_names_each_thing(tmp_path, gateway_config):
    policy = load_policy(gateway_config, data_dir=tmp_path)
    keys = [w.key for w in switched_off(policy, staff_roles=None)]
    assert keys == ["notifications", "staff"]
    assert [w.key for w in switched_off(policy, staff_roles={"teacher"})] == [
        "notifications",
        "it_support",
    ]
    text = gateway_config.read_text()
    text += "notifications:\n  webhook: https://chat.example/hook\n"
    text = text.replace("categories:\n", "categories:\n  illegal: {locked: true, lists: []}\n", 1)
    gateway_config.write_text(text)
    policy = load_policy(gateway_config, data_dir=tmp_path)
    assert [w.key for w in switched_off(policy, staff_roles={"it_support"})] == ["locked:illegal"]
