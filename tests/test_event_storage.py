"""Every event is written: unstorable text escaped, refused rows split out to the dead-letter
file, the spool on disk before the database, a crash replayed (real SQLite files throughout)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError, OperationalError

from schoolgate.storage.batches import BatchWriter, TransientFailure
from schoolgate.storage.db import open_database
from schoolgate.storage.deadletter import DeadLetters
from schoolgate.storage.eventlog import EVENT_TABLE, EventLog, EventRecord, new_ref
from schoolgate.storage.events import list_events
from schoolgate.storage.models import EventRow
from schoolgate.storage.storable import FIELD_MAX, escape_text

ROOT = Path(__file__).resolve().parents[1]
AT = datetime(2026, 11, 30, 10, 15, tzinfo=UTC)


def _event(i: int = 0, **kw) -> EventRecord:
    values = {
        "ref": new_ref(),
        "at": AT,
        "kind": "block",
        "action": "block",
        "client_ip": "10.20.1.5",
        "host": "social.test",
        "url": f"http://social.test/{i}",
        "reason": "social_media is blocked",
    }
    values.update(kw)
    return EventRecord(**values)


def _count(factory) -> int:
    with factory() as session:
        return session.scalar(select(func.count()).select_from(EventRow))


def _rows(factory) -> list[dict]:
    with factory() as session:
        return list_events(session, limit=None)


def _segments(root: Path) -> list[Path]:
    return sorted(root.glob("*/*.jsonl"))


class FailingFactory:
    """A session factory whose database is always locked."""

    kw: dict = {}

    def __call__(self):
        raise OperationalError("INSERT", {}, Exception("database is locked"))


@pytest.fixture
def db(tmp_path):
    return open_database(f"sqlite:///{tmp_path / 'events.db'}")


# -- text from the network --------------------------------------------------------------------


def test_escape_text_is_faithful_and_leaves_ordinary_text_alone():
    ordinary = "https://www.bbc.co.uk/news?q=café"
    assert escape_text(ordinary) is ordinary
    # A Host header byte 0xFF read with surrogateescape, a NUL, a lone surrogate, a backslash.
    assert escape_text("social.test\udcff") == "social.test\\xff"
    assert escape_text("vape\x00shop") == "vape\\x00shop"
    assert escape_text("a\ud800b") == "a\\ud800b"
    assert escape_text("C:\\temp\x00") == "C:\\\\temp\\x00"  # unambiguous once escaped


def test_unstorable_text_is_escaped_and_the_events_after_it_are_written(db):
    """The issue's fault: one event with a byte that is not UTF-8 stopped the log. Now it is
    written, escaped, and so is everything after it."""
    log = EventLog(db, flush_interval=0.02)
    log.start()
    bad = _event(
        host="social.test\udcff",
        url="http://social.test\udcff/x",
        search_term="vape\x00shop",
        user="ben\ud800",
        detail={"evidence": {"http_host": "social.test\udcff"}},
    )
    log.record(bad)
    for i in range(50):
        log.record(_event(i))
    assert log.flush(30)
    log.close()
    assert _count(db) == 51 and log.rejected == 0 and log.pending == 0
    [row] = [r for r in _rows(db) if r["ref"] == bad.ref]
    assert row["host"] == "social.test\\xff"
    assert row["url"] == "http://social.test\\xff/x"
    assert row["search_term"] == "vape\\x00shop"
    assert row["user"] == "ben\\ud800"
    assert row["detail"]["evidence"]["http_host"] == "social.test\\xff"
    assert set(row["detail"]["escaped"]) == {"host", "url", "search_term", "user"}


def test_overlong_values_keep_their_start_length_and_hash(db):
    url = "http://social.test/" + "a" * 200_000
    device = "d" * 500  # a String(200) column
    log = EventLog(db, flush_interval=0.02)
    log.start()
    event = _event(url=url, device=device)
    log.record(event)
    assert log.flush(10)
    log.close()
    [row] = _rows(db)
    assert row["url"] == url[:FIELD_MAX]
    overlong = row["detail"]["overlong"]
    assert overlong["url"]["length"] == 200_019
    assert overlong["url"]["sha256"] == hashlib.sha256(url.encode()).hexdigest()
    assert row["device"] == "d" * 200 and overlong["device"]["value"] == device


def test_values_of_the_wrong_kind_are_kept(db):
    log = EventLog(db, flush_interval=0.02)
    log.start()
    # A dict of column values, as a spool line holds them: whatever it has is kept.
    row = _event(at="not a time", exception_id="abc", detail="plain words").as_row()
    log.record({**row, "colour": "red"})
    assert log.flush(10)
    log.close()
    [row] = _rows(db)
    assert row["exception_id"] is None
    assert row["detail"]["original_at"] == "not a time"
    assert row["detail"]["original_exception_id"] == "abc"
    assert row["detail"]["extra"] == {"colour": "red"}
    assert row["detail"]["detail"] == "plain words"


# -- refused rows -------------------------------------------------------------------------------


REFUSE = """
CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.host = 'refused.test'
BEGIN SELECT RAISE(ABORT, 'refused by the test trigger'); END
"""


def test_refused_rows_go_to_the_dead_letter_file_and_the_rest_are_written(db, tmp_path):
    with db() as session:
        session.execute(text(REFUSE))
        session.commit()
    told = []
    dead = tmp_path / "dead-letter.jsonl"
    log = EventLog(
        db,
        batch_size=100,
        flush_interval=0.02,
        dead_letter_path=dead,
        on_dead_letter=lambda count, error: told.append((count, error)),
    )
    log.start()
    refused = set()
    for i in range(100):
        host = "refused.test" if i in (3, 50, 97) else "social.test"
        event = _event(i, host=host)
        log.record(event)
        if host == "refused.test":
            refused.add(event.ref)
    assert log.flush(30)
    log.record(_event(100))  # the writer goes on
    assert log.flush(10)
    log.close()
    assert _count(db) == 98
    lines = [json.loads(line) for line in dead.read_text().splitlines()]
    assert {line["event"]["ref"] for line in lines} == refused
    assert all("refused by the test trigger" in line["error"] for line in lines)
    assert sum(count for count, _ in told) == 3 and log.rejected == 3
    assert log.pending == 0


def _integrity() -> IntegrityError:
    return IntegrityError("INSERT", {}, Exception("refused"))


class FakeDatabase:
    """Stands in for a transaction: refuses rows whose host is "bad", and fails as a locked
    database would on the calls numbered in ``locked_on``."""

    def __init__(self, locked_on=()) -> None:
        self.rows: list[dict] = []
        self.calls = 0
        self.locked_on = set(locked_on)

    def run(self, fn):
        self.calls += 1
        if self.calls in self.locked_on:
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        return fn(self.execute)

    def execute(self, statement, rows):
        if rows is None:  # a look-up of a ref

            class Nothing:
                def first(self):
                    return None

                def all(self):
                    return []

            return Nothing()
        if any(row["host"] == "bad" for row in rows):
            raise _integrity()
        self.rows.extend(rows)


def test_a_split_batch_interrupted_by_the_database_loses_and_repeats_nothing(tmp_path):
    rows = [dict(ref=f"r{i}", at=AT, host="bad" if i in (2, 9) else "ok") for i in range(12)]
    database = FakeDatabase(locked_on={4})
    writer = BatchWriter(EVENT_TABLE, database.run, DeadLetters(tmp_path / "dead.jsonl"))
    with pytest.raises(TransientFailure) as failed:
        writer.write(rows)
    remaining = failed.value.remaining
    handled = {r["ref"] for r in database.rows} | {f"r{i}" for i in (2, 9) if writer.rejected}
    assert [r["ref"] for r in remaining] == [r["ref"] for r in rows if r["ref"] not in handled]
    writer.write(remaining)  # the database is back
    assert sorted(r["ref"] for r in database.rows) == sorted(
        f"r{i}" for i in range(12) if i not in (2, 9)
    )
    assert len(database.rows) == 10 and writer.rejected == 2
    dead = [json.loads(x) for x in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert {d["event"]["ref"] for d in dead} == {"r2", "r9"}


# -- the spool ----------------------------------------------------------------------------------


def test_events_are_in_the_spool_before_the_database_has_them(tmp_path):
    spool = tmp_path / "spool"
    log = EventLog(FailingFactory(), flush_interval=0.02, spool_dir=spool)
    log.start()
    event = _event(1)
    log.record(event)
    # No waiting: record() has written the line before it returned.
    lines = [json.loads(x) for p in _segments(spool) for x in p.read_text().splitlines()]
    assert [line["ref"] for line in lines] == [event.ref]
    log.close(timeout=0.5)


def test_durable_events_are_confirmed_once_synced(db, tmp_path):
    with_spool = EventLog(db, spool_dir=tmp_path / "spool")
    with_spool.start()
    assert with_spool.record(_event(1), durable=True).result(10) is True
    with_spool.close()
    without = EventLog(db)
    without.start()
    assert without.record(_event(2), durable=True).result(10) is False  # nowhere to sync
    without.close()
    assert _count(db) == 2


CRASH = """
import json, os, signal, sys
from datetime import UTC, datetime
from sqlalchemy.exc import OperationalError
from schoolgate.storage.eventlog import EventLog, EventRecord, new_ref

class Locked:
    kw = {}
    def __call__(self):
        raise OperationalError("INSERT", {}, Exception("database is locked"))

log = EventLog(Locked(), flush_interval=0.02, spool_dir=sys.argv[1])
log.start()
refs = []
for i in range(int(sys.argv[2])):
    ref = new_ref()
    log.record(EventRecord(ref=ref, at=datetime.now(UTC), kind="block", action="block",
                           host="social.test", url=f"http://social.test/crash-{i}"))
    refs.append(ref)
print(json.dumps(refs), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_process_loses_no_recorded_event(db, tmp_path):
    """The database is locked and the process is killed (``kill -9``) straight after
    recording: the next start writes every event from the spool, once."""
    spool = tmp_path / "spool"
    out = subprocess.run(
        [sys.executable, "-c", CRASH, str(spool), "300"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == -9, out.stderr
    refs = set(json.loads(out.stdout))
    assert len(refs) == 300
    log = EventLog(db, flush_interval=0.02, spool_dir=spool)
    log.start()
    assert log.flush(30)
    log.close()
    assert {r["ref"] for r in _rows(db)} == refs
    assert _segments(spool) == []


def test_a_replay_skips_events_already_written(db, tmp_path):
    """A crash after the database had a segment's events but before the segment was deleted:
    the replay does not write them twice."""
    spool = tmp_path / "spool"
    log = EventLog(db, flush_interval=0.02, spool_dir=spool)
    log.start()
    for i in range(20):
        log.record(_event(i))
    assert log.flush(10)
    kept = tmp_path / "kept"
    kept.mkdir()
    for path in _segments(spool):
        shutil.copy(path, kept / path.name)
    log.close()
    assert _segments(spool) == []
    for path in kept.iterdir():
        shutil.copy(path, spool / "0" / path.name)
    again = EventLog(db, flush_interval=0.02, spool_dir=spool)
    again.start()
    assert again.flush(10)
    again.close()
    assert _count(db) == 20 and again.written == 0
    assert _segments(spool) == []


def test_segments_left_by_a_process_that_is_gone_are_taken_over(db, tmp_path):
    spool = tmp_path / "spool"
    orphan = spool / "3"
    orphan.mkdir(parents=True)
    event = _event(7)
    lines = json.dumps(event.as_row(), default=str) + "\n" + '{"ref": "cut short by a power c\n'
    (orphan / "00000000000000000001-99-000001.jsonl").write_text(lines)
    dead = tmp_path / "dead-letter.jsonl"
    log = EventLog(db, flush_interval=0.02, spool_dir=spool, dead_letter_path=dead)
    log.start()
    assert log.spool.folder == spool / "0"
    assert log.flush(10)
    log.close()
    assert [r["ref"] for r in _rows(db)] == [event.ref]
    [line] = [json.loads(x) for x in dead.read_text().splitlines()]
    assert line["raw"].startswith('{"ref": "cut short') and "unreadable line 2" in line["error"]
    assert _segments(spool) == []


def test_processes_sharing_a_data_dir_each_have_a_folder(db, tmp_path):
    spool = tmp_path / "spool"
    first = EventLog(db, spool_dir=spool)
    second = EventLog(db, spool_dir=spool)
    first.start()
    second.start()
    assert {first.spool.folder.name, second.spool.folder.name} == {"0", "1"}
    first.record(_event(1))
    second.record(_event(2))
    first.close()
    second.close()
    assert _count(db) == 2
    assert not any(p.suffix == ".jsonl" for p in spool.rglob("*"))
    assert all(oct(os.stat(p).st_mode)[-3:] == "700" for p in spool.iterdir())


def test_a_spool_that_cannot_be_made_leaves_the_log_working(db, tmp_path, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the spool should go")
    log = EventLog(db, flush_interval=0.02, spool_dir=blocker / "spool")
    log.start()
    assert log.record(_event(1), durable=True).result(10) is False  # nowhere to sync
    log.record(_event(2))
    assert log.flush(10)
    log.close()
    assert _count(db) == 2
    assert "cannot use the spool" in caplog.text
