"""Response times of the console's pages with a term of decisions in the database.

    python3 bench/console_bench.py [--events 1000000] [--repeat 20]

Builds a fresh SQLite database in a temporary folder with the real migrations, fills it with
``--events`` logged decisions over 90 days (1,500 pupils in 42 groups, 20,000 sites, 5
categories, a few circumvention attempts; one row in 50 today), and times the console's pages
through the real Flask app (its test client) signed in as IT Support: the dashboard, the
history with each filter (first page and a page deep in the log), a site with its subdomains,
a block page's reference, and the live view's poll. Then it drops the indexes migration 0010
adds (``group``, ``category``) and times those filters again (a small group is where the
index counts: without it, every row is read to find its 200). Prints median/p95 per page.
"""

from __future__ import annotations

import argparse
import itertools
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from schoolgate.core.config import load_policy  # noqa: E402
from schoolgate.portal.app import create_app, make_identify  # noqa: E402
from schoolgate.portal.auth import add_staff  # noqa: E402
from schoolgate.storage.db import open_database  # noqa: E402
from schoolgate.storage.models import EventRow  # noqa: E402

PASSWORD = "correct horse battery"
CATEGORIES = ("social_media", "wikipedia", "circumvention", "blogs", "games")  # 2 configured
GROUPS = [f"{year}{form}" for year in range(7, 14) for form in "ABCDEF"]


def fill(sessions, count: int, now: datetime, rng: random.Random) -> None:
    """``count`` events in the order a gateway writes them: one in 50 today (20,000 of a
    million: a busy day in a large secondary school), the rest over the 90 days before."""
    hosts = [f"site{i}.com" for i in range(20_000)] + [f"m.site{i}.com" for i in range(200)]
    users = [(f"pupil{i:04d}", rng.choice(GROUPS)) for i in range(1500)]
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    start = midnight - timedelta(days=90)
    today = count // 50
    earlier = count - today
    times = (start + (midnight - start) * (n / earlier) for n in range(earlier))
    today_times = sorted(midnight + (now - midnight) * rng.random() for _ in range(today))
    batch = []
    with sessions.kw["bind"].begin() as connection:
        for n, at in enumerate(itertools.chain(times, today_times)):
            user, group = rng.choice(users)
            if n % 5000 == 0:
                group = "SEN1"  # a small group: 200 rows in a million
            circumvention = rng.random() < 0.01
            batch.append(
                {
                    "ref": f"{n:016x}",
                    "at": at,
                    "kind": "circumvention" if circumvention else "block",
                    "action": "block",
                    "client_ip": f"10.20.{n % 250}.{n % 200}",
                    "user": user,
                    "role": "student",
                    "group": group,
                    "site": "main",
                    "host": rng.choice(hosts),
                    "url": f"https://{rng.choice(hosts)}/page/{n}",
                    "category": rng.choice(CATEGORIES),
                    "window": "lesson",
                    "window_name": "P2",
                    "rule": "rules[0]",
                    "reason": "social_media is blocked for student in lesson.",
                }
            )
            if len(batch) == 20_000:
                connection.execute(insert(EventRow.__table__), batch)
                batch = []
        if batch:
            connection.execute(insert(EventRow.__table__), batch)


def timed(client, path: str, repeat: int) -> tuple[float, float, int]:
    times = []
    size = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        answer = client.get(path)
        times.append((time.perf_counter() - t0) * 1000)
        assert answer.status_code == 200, (path, answer.status_code, answer.text[:500])
        size = len(answer.data)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1], size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="console-bench-"))
    try:
        shutil.copytree(ROOT / "tests" / "data" / "gateway", folder / "config")
        policy = load_policy(folder / "config" / "config.yaml", data_dir=folder / "var")
        sessions = open_database(policy.settings.database_url)
        now = datetime.now(UTC)
        rng = random.Random(7)
        t0 = time.perf_counter()
        fill(sessions, args.events, now, rng)
        print(f"{args.events:,} events written in {time.perf_counter() - t0:.0f} s")
        with sessions() as s:
            add_staff(s, username="it", password=PASSWORD, roles=["it_support"])
            s.commit()
        app = create_app(
            policy_getter=lambda: policy,
            session_factory=sessions,
            secret=b"b" * 32,
            data_dir=folder / "var",
            identify=make_identify(lambda: policy, trust_user_header=False),
            start_sender=False,
        )
        client = app.test_client()
        page = client.get("/staff/login").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        client.post("/staff/login", data={"username": "it", "password": PASSWORD,
                                          "csrf_token": token})  # fmt: skip
        deep = args.events // 2
        week_ago = (now - timedelta(days=7)).strftime("%Y-%m-%dT%H:%M")
        pages = [
            ("dashboard", "/console/"),
            ("history: newest", "/console/history"),
            ("history: newest, a page half-way down", f"/console/history?before={deep}"),
            ("history: a pupil", "/console/history?user=pupil0042"),
            ("history: a pupil, deep", f"/console/history?user=pupil0042&before={deep}"),
            ("history: a group", "/console/history?group=9B"),
            ("history: a category", "/console/history?category=wikipedia"),
            ("history: a small group", "/console/history?group=SEN1"),
            ("history: circumvention", "/console/history?kind=circumvention"),
            ("history: a site", "/console/history?host=site77.com"),
            ("history: a site and subdomains, 7 days",
             f"/console/history?host=*.site7.com&since={week_ago}"),
            ("history: a reference", f"/console/history?ref={deep:016x}"),
            ("live: page", "/console/live"),
            ("live: poll", f"/console/live/poll?start={args.events}&after={args.events}"),
        ]  # fmt: skip
        print(f"\n{'page':<44} {'median':>9} {'p95':>9} {'size':>9}")
        for name, path in pages:
            median, p95, size = timed(client, path, args.repeat)
            print(f"{name:<44} {median:>7.1f}ms {p95:>7.1f}ms {size // 1024:>7} KB")
        with sessions.kw["bind"].begin() as connection:
            connection.execute(text("DROP INDEX ix_events_category"))
            connection.execute(text("DROP INDEX ix_events_group"))
        print("\nwithout the indexes of migration 0010:")
        for name, path in pages[5:8]:
            median, p95, size = timed(client, path, max(3, args.repeat // 4))
            print(f"{name:<44} {median:>7.1f}ms {p95:>7.1f}ms {size // 1024:>7} KB")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
