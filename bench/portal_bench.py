"""Response times of the portal's staff pages with a school year of requests in the database.

    python3 bench/portal_bench.py [--requests 100000] [--events 300000] [--repeat 30]

Builds a fresh SQLite database in a temporary folder with the real migrations, fills it with
``--requests`` access requests and content reports spread over a school year (most decided,
a backlog still open, a few with SLT) and ``--events`` logged decisions (the blocks and
circumvention events the request page shows for a requester), then times the pages through the
real Flask app (its test client), signed in as IT Support and as SLT: the IT Support queue
and its filters, a request's page, the SLT page. Prints median/p95/p99 per page.
"""

from __future__ import annotations

import argparse
import random
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, insert, select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from schoolgate.config import load_policy  # noqa: E402
from schoolgate.db import EventRow, open_database  # noqa: E402
from schoolgate.portal.app import create_app, make_identify  # noqa: E402
from schoolgate.portal.auth import add_staff  # noqa: E402
from schoolgate.portal.models import PortalRequestRow  # noqa: E402
from schoolgate.portal.views_public import new_ref  # noqa: E402

PASSWORD = "correct horse battery"
YEAR_START = datetime(2025, 9, 3, 8, 30, tzinfo=UTC)
YEAR_DAYS = 320  # September to July
# Of a year's requests most are long decided; what is still open is the recent backlog.
DECIDED = (("approved", 0.46), ("rejected", 0.38), ("actioned", 0.16))
GROUPS = [f"{year}{form}" for year in range(7, 14) for form in "ABCDEF"]
PURPOSES = ("curriculum", "erroneous", "homework", "club", "other")


def school_time(rng: random.Random, newest: float = 1.0) -> datetime:
    """A time in the school day, on a day of the year (weighted to the first ``newest``)."""
    day = int(rng.random() * newest * YEAR_DAYS)
    at = YEAR_START + timedelta(days=day)
    if at.weekday() >= 5:  # weekends: move to the Friday
        at -= timedelta(days=at.weekday() - 4)
    return at + timedelta(seconds=rng.randrange(0, 7 * 3600))


def make_hosts(rng: random.Random, count: int) -> list[str]:
    words = ["learn", "maths", "news", "game", "video", "chat", "wiki", "science", "art", "code"]
    tlds = ["com", "co.uk", "org", "net", "io", "ac.uk"]
    return [f"{rng.choice(words)}{i}.{rng.choice(tlds)}" for i in range(count)]


def zipf_pick(rng: random.Random, items: list, skew: float = 1.2):
    """Few hosts/users account for most requests, as in any school."""
    index = int(len(items) * (rng.random() ** (skew * 2)))
    return items[min(index, len(items) - 1)]


def fill(sessions, args, categories: list[str]) -> dict:
    rng = random.Random(7)
    users = [f"s{n:05d}" for n in range(args.users)]
    user_group = {u: rng.choice(GROUPS) for u in users}
    hosts = make_hosts(rng, 4000)
    started = time.perf_counter()
    open_count = int(args.requests * args.open_share)
    slt_count = max(args.requests // 500, 10)
    with sessions() as s:
        events = []
        event_refs = []
        for n in range(args.events):
            user = zipf_pick(rng, users)
            circ = rng.random() < 0.03
            ref = f"ev{n:08d}"
            host = zipf_pick(rng, hosts)
            events.append(
                {
                    "ref": ref,
                    "at": school_time(rng),
                    "kind": "circumvention" if circ else "block",
                    "action": "block",
                    "client_ip": f"10.20.{n % 250}.{n % 200 + 1}",
                    "user": user,
                    "role": "student",
                    "group": user_group[user],
                    "site": "main",
                    "host": host,
                    "url": f"https://{host}/page/{n % 97}",
                    "category": rng.choice(categories) if not circ else "circumvention",
                    "window": "lesson",
                    "window_name": "Period 2",
                    "rule": "rules[0]",
                    "reason": "VPN client detected" if circ else "blocked in lessons",
                }
            )
            event_refs.append(ref)
            if len(events) == 20000:
                s.execute(insert(EventRow), events)
                events.clear()
        if events:
            s.execute(insert(EventRow), events)
        rows = []
        for n in range(args.requests):
            kind = "report" if rng.random() < 0.2 else "access"
            if n < open_count:
                status = "open"
                created = school_time(rng) if rng.random() < 0.1 else None
                # the open backlog is mostly recent: the last few weeks of the year
                created = created or YEAR_START + timedelta(
                    days=YEAR_DAYS - rng.random() * 21, seconds=rng.randrange(7 * 3600)
                )
            elif n < open_count + slt_count:
                status = rng.choice(("escalated", "awaiting_slt"))
                created = school_time(rng)
            else:
                roll, status = rng.random(), "approved"
                for name, share in DECIDED:
                    if roll < share:
                        status = name
                        break
                    roll -= share
                if kind == "report" and status == "approved":
                    status = "actioned"
                created = school_time(rng)
            user = zipf_pick(rng, users) if rng.random() < 0.95 else None
            host = zipf_pick(rng, hosts)
            decided = status not in ("open", "escalated", "awaiting_slt")
            rows.append(
                {
                    "ref": new_ref(kind),
                    "token": secrets.token_urlsafe(24),
                    "kind": kind,
                    "status": status,
                    "created_at": created,
                    "updated_at": created + timedelta(hours=rng.random() * 48),
                    "requester_user": user,
                    "requester_role": "student" if user else "guest",
                    "requester_group": user_group[user] if user else None,
                    "requester_site": "main",
                    "client_ip": f"10.20.{n % 250}.{n % 200 + 1}",
                    "url": f"https://{host}/page/{n % 97}",
                    "host": host,
                    "category": rng.choice(categories) if rng.random() < 0.7 else None,
                    "event_ref": (
                        rng.choice(event_refs) if event_refs and kind == "access" else None
                    ),
                    "purpose": rng.choice(PURPOSES) if kind == "access" else "",
                    "message": "Needed for my coursework on this topic",
                    "escalated_by": "alice" if status == "escalated" else None,
                    "escalation_note": "Needs SLT" if status == "escalated" else None,
                    "proposed_by": "alice" if status == "awaiting_slt" else None,
                    "decided_by": "alice" if decided else None,
                    "decided_at": created + timedelta(hours=4) if decided else None,
                    "outcome": "Decided" if decided else None,
                }
            )
            if len(rows) == 20000:
                s.execute(insert(PortalRequestRow), rows)
                rows.clear()
        if rows:
            s.execute(insert(PortalRequestRow), rows)
        s.commit()
    return {"seconds": time.perf_counter() - started, **describe(sessions)}


def describe(sessions) -> dict:
    """What the benchmark needs to know about a filled database."""
    with sessions() as s:
        counts = dict(
            s.execute(
                select(PortalRequestRow.status, func.count()).group_by(PortalRequestRow.status)
            ).all()
        )
        open_ids = list(
            s.scalars(
                select(PortalRequestRow.id)
                .where(
                    PortalRequestRow.status == "open",
                    PortalRequestRow.requester_user.is_not(None),
                )
                .order_by(PortalRequestRow.created_at)
                .limit(200)
            )
        )
        events = s.scalar(select(func.count(EventRow.id)))
        # searches for the busiest user and host: the most rows to show
        user, host = (
            s.scalar(
                select(column)
                .where(column.is_not(None))
                .group_by(column)
                .order_by(func.count().desc())
                .limit(1)
            )
            for column in (PortalRequestRow.requester_user, PortalRequestRow.host)
        )
    return {"counts": counts, "events": events, "open_ids": open_ids, "user": user, "host": host}


def sign_in(app, username: str):
    import re

    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = "10.10.0.9"
    page = client.get("/staff/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    answer = client.post(
        "/staff/login", data={"username": username, "password": PASSWORD, "csrf_token": token}
    )
    if answer.status_code != 303:
        raise SystemExit(f"sign-in as {username} failed: {answer.status_code}")
    return client


def timed(client, paths: list[str], repeat: int) -> tuple[list[float], int]:
    """Milliseconds per GET over ``repeat`` rounds of ``paths`` (after one warm-up round)."""
    size = 0
    for path in paths:
        answer = client.get(path)
        if answer.status_code != 200:
            raise SystemExit(f"GET {path}: {answer.status_code}")
        size = len(answer.data)
    times = []
    for n in range(repeat):
        path = paths[n % len(paths)]
        started = time.perf_counter()
        answer = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 200
    return times, size


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--users", type=int, default=1500)
    parser.add_argument("--open-share", type=float, default=0.015)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument(
        "--keep",
        metavar="DIR",
        help="build the database in DIR and keep it; a later run with the same DIR reuses it "
        "(upgraded by any newer migrations) instead of filling a new one",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "config"
        shutil.copytree(ROOT / "tests" / "data" / "gateway", conf)
        data_dir = Path(args.keep).resolve() if args.keep else Path(tmp) / "var"
        reuse = (data_dir / "schoolgate.db").exists()
        policy = load_policy(conf / "config.yaml", data_dir=data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        sessions = open_database(policy.settings.database_url)
        migrated = time.perf_counter() - started
        categories = list(policy.categories)
        if reuse:
            filled = describe(sessions)
            print(f"reusing {data_dir / 'schoolgate.db'} (opened and migrated in {migrated:.1f}s)")
        else:
            filled = fill(sessions, args, categories)
            with sessions() as s:
                add_staff(s, username="alice", password=PASSWORD, roles=["it_support"])
                add_staff(s, username="sam", password=PASSWORD, roles=["slt"])
                s.commit()
            print(f"inserted in {filled['seconds']:.1f}s")
        print(
            f"{sum(filled['counts'].values())} requests/reports ({filled['counts']}), "
            f"{filled['events']} events; {args.repeat} timed GETs per page"
        )
        app = create_app(
            policy_getter=lambda: policy,
            session_factory=sessions,
            secret=b"s" * 32,
            data_dir=Path(tmp) / "var",
            identify=make_identify(lambda: policy),
            clock=lambda: YEAR_START + timedelta(days=YEAR_DAYS),
            start_sender=False,
            session_idle_minutes=24 * 60,
        )
        alice = sign_in(app, "alice")
        sam = sign_in(app, "sam")
        items = [f"/it/item/{i}" for i in filled["open_ids"][:50]]
        pages = [
            ("IT queue: open (default)", alice, ["/it/"]),
            ("IT queue: open, 2nd page", alice, ["/it/?page=2"]),
            ("IT queue: kind=report", alice, ["/it/?kind=report"]),
            ("IT queue: kind=report, status=all", alice, ["/it/?kind=report&status=all"]),
            ("IT queue: status=approved", alice, ["/it/?status=approved"]),
            ("IT queue: status=approved, page 300", alice, ["/it/?status=approved&page=300"]),
            ("IT queue: status=all", alice, ["/it/?status=all"]),
            (f"IT queue: category={categories[0]}", alice, [f"/it/?category={categories[0]}"]),
            (f"IT queue: q={filled['user']} (all)", alice, [f"/it/?status=all&q={filled['user']}"]),
            (f"IT queue: q={filled['host']} (all)", alice, [f"/it/?status=all&q={filled['host']}"]),
            ("request page (open, evidence)", alice, items),
            ("SLT review page", sam, ["/slt/"]),
        ]
        print(f"{'page':<40} {'median':>9} {'p95':>9} {'p99':>9}   bytes")
        for name, client, paths in pages:
            times, size = timed(client, paths, args.repeat)
            print(
                f"{name:<40} {statistics.median(times):7.1f}ms {percentile(times, 0.95):7.1f}ms "
                f"{percentile(times, 0.99):7.1f}ms   {size}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
