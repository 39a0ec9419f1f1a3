"""The decision log writer: batches, bursts, shutdown, a locked database, privacy."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from schoolgate.core.model import Action, Decision, Identity, ListMatch, RequestFacts, Window
from schoolgate.storage.db import open_database
from schoolgate.storage.eventlog import (
    COLUMNS,
    EventLog,
    EventRecord,
    decision_event,
    new_ref,
    search_term_of,
)
from schoolgate.storage.events import list_events
from schoolgate.storage.models import EventRow

AT = datetime(2026, 11, 30, 10, 15, tzinfo=UTC)
WINDOW = Window("lesson", "P2", AT - timedelta(minutes=15), AT + timedelta(minutes=45), "main")


def _decision(**kw) -> Decision:
    values = dict(
        action=Action.BLOCK,
        identity=Identity(
            role="student",
            site="main",
            user="Ben",
            group="9B",
            client_ip="10.20.1.5",
            source="roster",
            rule="roster",
        ),
        window=WINDOW,
        category="social_media",
        reason="social_media is blocked for student in lesson (P2).",
        rule="rules[0] (mitm_config.yaml:80)",
        match=ListMatch("social_media", "facebook.com", "blocklists/social.txt:3", "domain"),
        until=AT + timedelta(minutes=45),
    )
    values.update(kw)
    return Decision(**values)


def _facts(path: str = "/groups/x?id=7", host: str = "www.Facebook.com", **kw) -> RequestFacts:
    values = dict(
        host=host,
        at=AT,
        path=path,
        method="GET",
        port=443,
        scheme="https",
        client_ip="10.20.1.5",
        user="ben",
    )
    values.update(kw)
    return RequestFacts(**values)


def _event(i: int = 0, **kw) -> EventRecord:
    event = decision_event(
        _decision(), _facts(f"/p/{i}?q={i}"), ref=new_ref(), url=None, device=f"laptop-{i % 30}"
    )
    return replace(event, **kw)


def _count(factory) -> int:
    with factory() as session:
        return session.scalar(select(func.count()).select_from(EventRow))


@pytest.fixture
def db(tmp_path):
    return open_database(f"sqlite:///{tmp_path / 'events.db'}")


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "events.db"


def test_new_ref_is_unique_hex():
    refs = {new_ref() for _ in range(10_000)}
    assert len(refs) == 10_000
    assert all(len(ref) == 16 and int(ref, 16) >= 0 for ref in refs)


def test_events_written_and_read_back(db):
    log = EventLog(db, flush_interval=0.05)
    log.start()
    ref = new_ref()
    event = decision_event(
        _decision(),
        _facts("/search?q=how+to+vape"),
        ref=ref,
        url="https://www.facebook.com/search?q=how+to+vape",
        device="LAPTOP-07",
    )
    log.record(event)
    assert log.flush(5)
    log.close()
    with db() as session:
        [row] = list_events(session)
    assert row["ref"] == ref
    assert row["kind"] == "block" and row["action"] == "block"
    assert row["user"] == "ben" and row["role"] == "student" and row["group"] == "9B"
    assert row["client_ip"] == "10.20.1.5" and row["device"] == "LAPTOP-07"
    assert row["host"] == "www.facebook.com"
    assert row["url"] == "https://www.facebook.com/search?q=how+to+vape"
    assert row["category"] == "social_media"
    assert row["window"] == "lesson" and row["window_name"] == "P2"
    assert row["at"] == AT.isoformat()
    assert row["detail"]["list_entry"] == "facebook.com"
    assert row["detail"]["until"] == (AT + timedelta(minutes=45)).isoformat()
    assert row["detail"]["identity"] == "roster: roster"
    assert log.written == 1 and log.failures == 0 and log.pending == 0


def test_a_record_is_the_row_the_spool_and_the_database_take():
    """One field per column of the events table, in its order: a decision's record becomes
    the same dict of column values (and so the same spool line) as before records."""
    assert [f.name for f in fields(EventRecord)] == list(COLUMNS)
    event = _event(3)
    row = event.as_row()
    assert list(row) == list(COLUMNS)
    assert row["device"] == "laptop-3" and row["host"] == "www.facebook.com"
    assert row["url"] == "https://www.facebook.com/p/3?q=3" and row["window_name"] == "P2"
    assert json.loads(row["detail"])["list_entry"] == "facebook.com"


def test_kinds_from_the_decision():
    allow = decision_event(_decision(action=Action.ALLOW), _facts(), ref="a", url=None)
    error = decision_event(
        _decision(error="KeyError: 'main'", window=None), _facts(), ref="b", url=None
    )
    block = decision_event(_decision(), _facts(), ref="c", url=None, kind="circumvention")
    assert allow.kind == "allow"
    assert error.kind == "error" and json.loads(error.detail)["error"] == "KeyError: 'main'"
    assert error.window is None
    assert block.kind == "circumvention"
    # The URL is built from the facts when not given; a CONNECT decision has none.
    assert allow.url == "https://www.facebook.com/groups/x?id=7"
    connect = decision_event(_decision(), _facts(path=None), ref="d", url=None)
    assert connect.url is None and connect.host == "www.facebook.com"
    odd_port = decision_event(_decision(), _facts(port=8443), ref="e", url=None)
    assert odd_port.url == "https://www.facebook.com:8443/groups/x?id=7"


def test_keep_paths_false_drops_path_and_query_but_keeps_search_term():
    facts = _facts("/search?q=self+harm&safe=active", host="www.google.co.uk")
    event = decision_event(_decision(), facts, ref="r", url=None, keep_paths=False)
    assert event.url == "https://www.google.co.uk/"
    assert event.search_term == "self harm"
    given = decision_event(
        _decision(),
        facts,
        ref="r",
        keep_paths=False,
        url="https://user:secret@www.google.co.uk:8443/a/b?c=d#frag",
    )
    assert given.url == "https://www.google.co.uk:8443/"
    kept = decision_event(
        _decision(),
        facts,
        ref="r",
        keep_paths=True,
        url="https://user:secret@www.google.co.uk/a/b?c=d#frag",
    )
    assert kept.url == "https://www.google.co.uk/a/b?c=d"  # never credentials


@pytest.mark.parametrize(
    ("host", "path", "term"),
    [
        ("www.google.com", "/search?q=how+to+make+a+bomb&hl=en", "how to make a bomb"),
        ("www.google.co.uk:443", "/search?hl=en&q=caf%C3%A9", "café"),
        ("images.google.com", "/images?q=cats", "cats"),
        ("www.google.com", "/url?q=https://example.com/", None),  # a redirect, not a search
        ("www.googleapis.com", "/search?q=x", None),
        ("www.bing.com", "/search?q=vpn+free&form=QBLH", "vpn free"),
        ("www.bing.com", "/images/search?q=knife", "knife"),
        ("duckduckgo.com", "/?q=proxy+site&ia=web", "proxy site"),
        ("html.duckduckgo.com", "/html/?q=proxy", "proxy"),
        ("uk.search.yahoo.com", "/search?p=free+games&fr=yfp", "free games"),
        ("www.ecosia.org", "/search?method=index&q=trees", "trees"),
        ("www.youtube.com", "/results?search_query=minecraft+mods", "minecraft mods"),
        ("m.youtube.com", "/results?search_query=%20%20", None),
        (
            "en.wikipedia.org",
            "/w/index.php?search=Ada+Lovelace&title=Special:Search",
            "Ada Lovelace",
        ),
        ("www.facebook.com", "/search?q=x", None),
        ("www.google.com", "/search", None),
        ("www.google.com", None, None),
    ],
)
def test_search_terms(host, path, term):
    assert search_term_of(host, path) == term


def test_search_term_is_bounded():
    assert len(search_term_of("www.bing.com", "/search?q=" + "a" * 5000)) == 500


def test_burst_of_20000_all_written(db):
    log = EventLog(db, batch_size=500, flush_interval=0.05)
    log.start()
    for i in range(20_000):
        log.record(_event(i))
    assert log.flush(60)
    log.close()
    assert _count(db) == 20_000
    assert log.written == 20_000 and log.pending == 0 and log.rejected == 0
    # What record() costs is measured by bench/eventlog_bench.py, not here.


def test_record_from_many_threads(db):
    log = EventLog(db, batch_size=200, flush_interval=0.02)
    log.start()

    def burst(offset: int) -> None:
        for i in range(2_000):
            log.record(_event(offset + i))

    threads = [threading.Thread(target=burst, args=(n * 10_000,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    assert _count(db) == 8_000


def test_close_flushes_everything_queued(db):
    log = EventLog(db, batch_size=10_000, flush_interval=30)  # would not flush by itself soon
    log.start()
    for i in range(1_234):
        log.record(_event(i))
    log.close()
    assert _count(db) == 1_234 and log.pending == 0
    log.close()  # idempotent


def test_close_without_start_still_writes(db):
    log = EventLog(db)
    for i in range(10):
        log.record(_event(i))
    log.close()
    assert _count(db) == 10


def test_locked_database_loses_nothing(db, db_path, caplog):
    log = EventLog(db, batch_size=100, flush_interval=0.05)
    log.start()
    for i in range(50):
        log.record(_event(i))
    assert log.flush(5)

    holder = sqlite3.connect(db_path, timeout=0, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        for i in range(50, 550):
            log.record(_event(i))
        time.sleep(3)
        assert log.pending == 500  # waiting for the lock, kept
        assert _count_raw(db_path) == 50  # WAL: readers still see the old rows
    finally:
        holder.rollback()
        holder.close()
    assert log.flush(30)
    log.close()
    assert _count(db) == 550


def _count_raw(path):
    try:
        other = sqlite3.connect(path, timeout=0)
        return other.execute("SELECT count(*) FROM events").fetchone()[0]
    except sqlite3.OperationalError:
        return None


class FlakyFactory:
    """A session factory whose database fails the first ``failures`` writes."""

    def __init__(self, real, failures: int) -> None:
        self.real = real
        self.failures = failures
        self.kw = {}  # no engine: go through sessions

    def __call__(self):
        if self.failures > 0:
            self.failures -= 1
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        return self.real()


def test_database_down_retries_with_backoff_and_warns(db, caplog):
    caplog.set_level(logging.WARNING, logger="schoolgate.storage.eventlog")
    log = EventLog(FlakyFactory(db, failures=4), batch_size=50, flush_interval=0.02)
    log.start()
    for i in range(120):
        log.record(_event(i))
    assert log.flush(30)
    log.close()
    assert _count(db) == 120
    assert log.failures == 4
    messages = [r.getMessage() for r in caplog.records]
    assert any("failed" in m and "retrying" in m for m in messages)
    assert any("writing again" in m for m in messages)


def test_database_down_at_shutdown_keeps_events_in_the_spool_for_the_next_start(db, tmp_path):
    spool = tmp_path / "spool"
    log = EventLog(FlakyFactory(db, failures=10_000), flush_interval=0.02, spool_dir=spool)
    log.start()
    for i in range(30):
        log.record(_event(i))
    log.close(timeout=1)
    assert _count(db) == 0
    assert _spooled(spool) == 30
    log.record(_event(99))  # after close: kept in the spool too
    assert _spooled(spool) == 31

    again = EventLog(db, flush_interval=0.02, spool_dir=spool)
    again.start()
    assert again.flush(10)
    again.close()
    assert _count(db) == 31
    assert _spooled(spool) == 0  # drained: deleted


def _spooled(root) -> int:
    """Events in the spool's segment files under ``root``."""
    return sum(len(p.read_text().splitlines()) for p in root.glob("*/*.jsonl"))


def test_duplicate_ref_is_kept_under_a_new_ref(db):
    log = EventLog(db, flush_interval=0.02)
    log.start()
    first = _event(1, ref="0123456789abcdef")
    second = _event(2, ref="0123456789abcdef", host="other.example")
    log.record(first)
    assert log.flush(5)
    log.record(second)
    log.record(_event(3))
    assert log.flush(5)
    log.close()
    with db() as session:
        rows = list_events(session)
    assert len(rows) == 3
    renamed = [r for r in rows if r["ref"].startswith("0123456789abcdef-")]
    assert len(renamed) == 1 and renamed[0]["detail"]["original_ref"] == "0123456789abcdef"
    assert log.rejected == 0


def test_odd_values_are_normalised(db):
    log = EventLog(db, flush_interval=0.02)
    log.start()
    log.record(
        {
            "ref": new_ref(),
            "at": "2026-11-30T10:00:00",
            "kind": "circumvention",
            "action": "block",
            "host": "x" * 900,
            "detail": {"doh": True},
        }
    )
    log.record({"kind": "block", "action": "block"})  # no ref, no time: given ones
    assert log.flush(5)
    log.close()
    with db() as session:
        rows = list_events(session)
    assert len(rows) == 2
    odd = next(r for r in rows if r["kind"] == "circumvention")
    assert odd["at"] == "2026-11-30T10:00:00+00:00"
    # Cut to its column; the whole value kept beside it, never dropped.
    assert odd["host"] == "x" * 500
    assert odd["detail"]["doh"] is True
    assert odd["detail"]["overlong"]["host"]["value"] == "x" * 900
    assert odd["detail"]["overlong"]["host"]["length"] == 900


def test_high_water_mark_warns_but_keeps(db, caplog):
    caplog.set_level(logging.ERROR, logger="schoolgate.storage.eventlog")
    log = EventLog(db, high_water=100, batch_size=50)  # not started: everything stays queued
    for i in range(300):
        log.record(_event(i))
    assert log.pending == 300 and log.peak == 300
    highs = [r for r in caplog.records if "high-water" in r.getMessage()]
    assert len(highs) == 1
    log.start()
    log.close()
    assert _count(db) == 300
