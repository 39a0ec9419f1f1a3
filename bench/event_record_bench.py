"""Instructions per recorded decision, under valgrind: ``python3 bench/event_record_bench.py``.

Two costs the gateway pays on every block and every search: building the event
(``decision_event``: a block of social media, its search term looked for, its URL cut, its
detail as JSON) and building it then handing it to ``EventLog.record`` (without a spool and
not started: the record turned into its row and queued, nothing written). Each is run under
``valgrind --tool=callgrind`` at two counts of events; the difference over the difference in
events is the instructions per event, start-up cancelled out.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

AT = datetime(2026, 11, 30, 10, 15, tzinfo=UTC)


def run(mode: str, count: int) -> None:
    from sqlalchemy import create_engine

    from schoolgate.core.model import Action, Decision, Identity, ListMatch, RequestFacts, Window
    from schoolgate.storage.eventlog import EventLog, decision_event

    decision = Decision(
        Action.BLOCK,
        Identity(
            role="student",
            site="main",
            user="ben.smith",
            group="9B",
            client_ip="10.20.1.5",
            source="roster",
            rule="roster",
        ),
        Window("lesson", "P2", AT, AT + timedelta(hours=1), "main"),
        "social_media",
        "social_media is blocked for student in lesson (P2).",
        rule="rules[0] (mitm_config.yaml:80)",
        match=ListMatch("social_media", "facebook.com", "blocklists/social_media.txt:3", "domain"),
        until=AT + timedelta(hours=1),
    )
    facts = RequestFacts(
        host="www.facebook.com",
        at=AT,
        path="/groups/1?ref=bookmarks",
        scheme="https",
        port=443,
        client_ip="10.20.1.5",
        user="ben.smith",
    )
    log = EventLog(create_engine("sqlite://"), spool_dir=None) if mode == "record" else None
    for i in range(count):
        event = decision_event(decision, facts, ref=f"r{i}", url=None, device="LAPTOP-1")
        if log is not None:
            log.record(event)


def instructions(mode: str, count: int) -> int:
    with tempfile.TemporaryDirectory() as folder:
        out = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={folder}/out",
                sys.executable,
                __file__,
                "--child",
                mode,
                str(count),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    found = re.search(r"refs:\s+([\d,]+)", out.stderr)
    if found is None:
        raise SystemExit(f"no count from valgrind:\n{out.stderr}")
    return int(found.group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--low", type=int, default=2000)
    parser.add_argument("--high", type=int, default=12000)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run(args.child[0], int(args.child[1]))
        return
    run("build", 1)  # compile what is imported first: not counted below
    for mode in ("build", "record"):
        low, high = instructions(mode, args.low), instructions(mode, args.high)
        per = (high - low) / (args.high - args.low)
        print(f"{mode}: {per:,.0f} instructions per event")


if __name__ == "__main__":
    main()
