"""The recorder in the running gateway: the spool in the data dir, sanction events synced before
the answer goes, events the database refuses reported to IT Support (real SQLite files)."""

from __future__ import annotations

import asyncio
import inspect
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from mitmproxy.test import taddons
from sqlalchemy import select, text
from test_circumvention_addon import add_circumvention_config, http_flow

from schoolgate.gateway import make_addons, make_chain
from schoolgate.gateway.recorder import Recorder
from schoolgate.storage.eventlog import EventRecord, new_ref
from schoolgate.storage.models import OutboxRow


@pytest.fixture
def chain(gateway_config: Path, gateway_data_dir: Path):
    """All the parts as the one addon mitmproxy loads, on the test config with circumvention
    detection and sanctions, and a webhook for notifications."""
    add_circumvention_config(gateway_config)
    with gateway_config.open("a", encoding="utf-8") as handle:
        handle.write("notifications:\n  webhook: http://127.0.0.1:9/hook\n")
    parts = make_addons()
    (top,) = make_chain(parts)
    with taddons.context(top) as tctx:
        tctx.configure(
            top,
            schoolgate_config=str(gateway_config),
            schoolgate_data_dir=str(gateway_data_dir),
            confdir=str(gateway_data_dir / "ca"),
        )
        recorder = next(p for p in parts if isinstance(p, Recorder))
        yield top, recorder, gateway_data_dir
        recorder.done()


def _spooled(data_dir: Path) -> dict[str, dict]:
    lines = [
        json.loads(line)
        for path in sorted(data_dir.glob("eventlog/spool/*/*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    return {line["ref"]: line for line in lines}


def test_the_spool_is_in_the_data_dir_and_holds_each_block(chain):
    top, recorder, data_dir = chain
    flow = http_flow("social.test", "/x")
    assert top.request(flow) is None  # an ordinary block: nothing to wait for
    ref = flow.response.headers["x-schoolgate-ref"]
    assert ref in _spooled(data_dir)
    assert recorder.eventlog.spool.folder == data_dir / "eventlog" / "spool" / "0"


def test_a_sanction_is_synced_before_the_answer_goes(chain):
    """The first attempt reaches the warning stage: the request hook gives mitmproxy
    something to wait for, and that ends once the event is synced to the spool."""
    top, recorder, data_dir = chain
    flow = http_flow("proxy1.test", "/")
    waiting = top.request(flow)
    assert inspect.isawaitable(waiting)  # mitmproxy awaits it before sending the answer
    assert flow.response is not None and flow.response.status_code == 403
    asyncio.run(waiting)
    warned = [e for e in _spooled(data_dir).values() if e["kind"] == "circumvention"]
    assert [e["action"] for e in warned] == ["warn"]
    assert recorder.durable_barrier() is None  # nothing left to wait for


def test_events_the_database_refuses_are_reported_to_it_support(chain):
    top, recorder, data_dir = chain
    with recorder.sessions() as session:
        session.execute(
            text(
                "CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.host = 'refused.test' "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test trigger'); END"
            )
        )
        session.commit()
    for host in ("refused.test", "fine.test"):
        at = datetime.now(UTC)
        recorder.record(EventRecord(ref=new_ref(), at=at, kind="block", action="block", host=host))
    assert recorder.eventlog.flush(30)
    dead = data_dir / "eventlog" / "dead-letter.jsonl"
    [line] = [json.loads(x) for x in dead.read_text().splitlines()]
    assert line["event"]["host"] == "refused.test"
    with recorder.sessions() as session:
        [message] = session.scalars(select(OutboxRow)).all()
    assert message.channel == "webhook"
    assert message.subject == "schoolgate: 1 event(s) could not be stored in the log"
    payload = json.loads(message.body)
    assert payload["audience"] == "it_support" and payload["event"] == "eventlog.dead_letter"
    assert str(dead) in payload["text"] and "refused by the test trigger" in payload["text"]
