"""The bindings every process keeps: a change made by one process is honoured by another (a real
second process on the same SQLite file, and on a real PostgreSQL server), concurrent writers
never leave two bindings in force for one address, and a database that goes away keeps the
last copy without letting bindings outlive their time."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from schoolgate.bindings.cache import BindingCache
from schoolgate.storage import bindings as store
from schoolgate.storage.db import open_database

PEER = Path(__file__).resolve().parent / "binding_peer.py"


class Peer:
    """A second process with its own cache (tests/binding_peer.py)."""

    def __init__(self, url: str, order: str = "radius,sign_in") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(PEER), url, order],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline().strip()
        assert line == "ready", f"peer did not start: {line!r} {self.proc.stderr.read()}"

    def ask(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


def bind(sessions, address: str, user: str, *, source: str = "radius", minutes: int = 60):
    now = datetime.now(UTC)
    return store.in_transaction(
        sessions,
        lambda db: store.bind(
            db,
            address=address,
            source=source,
            user=user,
            now=now,
            expires_at=now + timedelta(minutes=minutes),
            actor="test",
        ),
    )


def end(sessions, address: str) -> None:
    now = datetime.now(UTC)
    store.in_transaction(
        sessions,
        lambda db: store.end_bindings(db, address=address, reason="test", actor="test", now=now),
    )


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'schoolgate.db'}"


def check_another_process_follows(url: str) -> None:
    sessions = open_database(url)
    bind(sessions, "10.20.1.5", "pupil1")
    peer = Peer(url)
    try:
        assert peer.ask("lookup 10.20.1.5") == "pupil1"  # read at start
        bind(sessions, "10.20.1.5", "pupil2")
        assert peer.ask("watch 10.20.1.5 pupil2 30").startswith("seen ")
        end(sessions, "10.20.1.5")
        assert peer.ask("watch 10.20.1.5 - 30").startswith("seen ")
        bind(sessions, "2001:db8::5", "pupil3")
        assert peer.ask("watch ::ffff:10.20.1.5 - 1").startswith("seen ")
        assert peer.ask("watch 2001:DB8:0::5 pupil3 30").startswith("seen ")
    finally:
        peer.close()


def test_another_process_follows_changes_sqlite(sqlite_url: str) -> None:
    check_another_process_follows(sqlite_url)


def test_another_process_follows_changes_postgresql(pg) -> None:
    check_another_process_follows(pg.create_database("bindings_follow"))


def test_concurrent_writers_leave_one_binding_per_address(pg) -> None:
    url = pg.create_database("bindings_race")
    sessions = open_database(url)
    cache = BindingCache(sessions, order=("radius",))
    cache.refresh()
    errors: list[BaseException] = []

    def writer(number: int) -> None:
        try:
            for round_ in range(15):
                bind(sessions, f"10.20.2.{round_ % 5}", f"pupil{number}-{round_}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    reader_stop = threading.Event()

    def reader() -> None:
        while not reader_stop.is_set():
            cache.refresh()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    reader_stop.set()
    watcher.join(30)
    assert errors == []
    cache.refresh()
    with sessions() as db:
        in_force = store.in_force(db, datetime.now(UTC))
        total = db.scalar(text("SELECT count(*) FROM bindings"))
    assert sorted(b.address for b in in_force) == [f"10.20.2.{n}" for n in range(5)]
    assert total == 60
    # The cache read while the writers wrote, and still ends with exactly the table's state.
    assert {b.address: b.user for b in cache.snapshot()} == {b.address: b.user for b in in_force}


def test_a_database_that_goes_away_keeps_the_copy_but_not_past_expiry(sqlite_url: str) -> None:
    sessions = open_database(sqlite_url)
    bind(sessions, "10.20.1.5", "pupil1", minutes=10)
    now = datetime.now(UTC).timestamp()
    cache = BindingCache(sessions, order=("radius",), clock=lambda: now)
    assert cache.refresh()
    with sessions() as db:
        db.execute(text("ALTER TABLE bindings RENAME TO bindings_away"))
        db.commit()
    assert not cache.refresh() and cache.failing
    assert cache.lookup("10.20.1.5").user == "pupil1"
    cache.clock = lambda: now + 11 * 60
    assert cache.lookup("10.20.1.5") is None
    with sessions() as db:
        db.execute(text("ALTER TABLE bindings_away RENAME TO bindings"))
        db.commit()
    assert cache.refresh() and not cache.failing


@pytest.fixture
def started_cache(sqlite_url: str) -> Iterator[tuple[BindingCache, object]]:
    sessions = open_database(sqlite_url)
    cache = BindingCache(sessions, order=("radius",), interval=0.5)
    cache.start()
    try:
        yield cache, sessions
    finally:
        cache.stop()


def test_the_background_thread_picks_changes_up(started_cache) -> None:
    cache, sessions = started_cache
    bind(sessions, "10.20.1.8", "pupil8")
    deadline = time.monotonic() + 30
    while cache.lookup("10.20.1.8", traffic=False) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cache.lookup("10.20.1.8", traffic=False).user == "pupil8"
