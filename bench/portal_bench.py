"""Response times of the portal's staff pages with a school year of requests in the database.

    python3 bench/portal_bench.py [--requests 100000] [--events 300000] [--repeat 30]

Builds a fresh SQLite database in a temporary folder with the real migrations, fills it with
``--requests`` access requests and content reports spread over a school year (most decided,
a backlog still open, a few with SLT) and ``--events`` logged decisions (the blocks and
circumvention events the request page shows for a requester), then times the pages through the
real Flask app (its test client), signed in as IT Support and as SLT: the IT Support queue
and its filters, a request's page, the SLT page. Prints median/p95/p99 per page.

    python3 bench/portal_bench.py --idle 3000 [--samples 200] [--root DIR]

instead runs a real ``schoolgate run --portal-port`` and opens ``--idle`` connections to the
portal's own port, each sending half a request line: first none, then all from one address,
then spread over 100 addresses (127.0.1.x). In each phase it times ``--samples`` block pages
through the proxy (one keep-alive connection) and ``--samples`` portal sign-in pages on the
portal port from a staff address (a new connection each), and prints p50/p99, failures, and
what the gateway process holds: the idle connections still open, threads, file descriptors
and memory. ``--root DIR`` runs the ``schoolgate`` of another checkout (to compare with an
older version); ``--nofile N`` gives the gateway that open files limit (1,024 is a Linux
service's default without ``LimitNOFILE``).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, insert, select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from schoolgate.core.config import load_policy  # noqa: E402
from schoolgate.portal.app import create_app, make_identify  # noqa: E402
from schoolgate.portal.auth import add_staff  # noqa: E402
from schoolgate.portal.blueprints.public import new_ref  # noqa: E402
from schoolgate.storage.db import open_database  # noqa: E402
from schoolgate.storage.models import (  # noqa: E402
    EventRow,
    PortalRequestRow,  # noqa: E402
)

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


# -- the portal's own port under idle connections (--idle) ----------------------------------------

STAFF_ADDRESS = "127.0.0.3"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the gateway exited ({proc.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def _open_idle(port: int, count: int, sources: list[str]) -> list[socket.socket]:
    """Up to ``count`` connections with half a request line (stopping after 10 connection
    attempts in a row time out: the server no longer takes any)."""
    out, timed_out = [], 0
    for n in range(count):
        if timed_out >= 10:
            break
        sock = socket.socket()
        sock.settimeout(2)
        out.append(sock)
        try:
            sock.bind((sources[n % len(sources)], 0))
            sock.connect(("127.0.0.1", port))
            sock.sendall(b"GET /staff/login HT")
            timed_out = 0
        except TimeoutError:
            timed_out += 1
        except OSError:
            timed_out = 0
    return out


def _held(socks: list[socket.socket]) -> int:
    count = 0
    for sock in socks:
        sock.setblocking(False)
        try:
            count += sock.recv(1, socket.MSG_PEEK) != b""
        except BlockingIOError:
            count += 1
        except OSError:
            pass
    return count


def _status(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("Threads", "VmRSS"):
            fields[name] = float(value.split()[0])
    fields["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return fields


def _http(sock: socket.socket, request: bytes) -> int:
    """Send a request and read its response to the end; its status code."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise OSError("closed")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise OSError("closed")
        body += chunk
    return int(head.split(b" ", 2)[1])


def _sample(proxy_port: int, portal_port: int, samples: int) -> dict[str, tuple]:
    """p50, p99 (ms) and failures of block pages through the proxy and portal pages (a side
    that fails 5 times in a row is not tried further: its other samples count as failed)."""
    block = b"GET http://social.test/feed HTTP/1.1\r\nHost: social.test\r\n\r\n"
    page = b"GET /staff/login HTTP/1.1\r\nHost: portal\r\nConnection: close\r\n\r\n"
    results = {}
    for name in ("proxy", "portal"):
        times, failed, in_a_row, proxy = [], 0, 0, None
        for _ in range(samples):
            if in_a_row >= 5:
                failed += 1
                continue
            started = time.perf_counter()
            try:
                if name == "proxy":
                    proxy = proxy or socket.create_connection(("127.0.0.1", proxy_port), 5)
                    ok = _http(proxy, block) == 403
                else:
                    with socket.create_connection(
                        ("127.0.0.1", portal_port), timeout=5, source_address=(STAFF_ADDRESS, 0)
                    ) as sock:
                        ok = _http(sock, page) == 200
            except (OSError, AttributeError):
                ok = False
                if proxy is not None:
                    proxy.close()
                    proxy = None
            times.append((time.perf_counter() - started) * 1000)
            failed += not ok
            in_a_row = 0 if ok else in_a_row + 1
        if proxy is not None:
            proxy.close()
        times = times or [float("nan")]
        results[name] = (statistics.median(times), percentile(times, 0.99), failed)
    return results


def idle_bench(args) -> int:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.idle + 2000)), hard))
    root = Path(args.root).resolve() if args.root else ROOT
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "config"
        shutil.copytree(ROOT / "tests" / "data" / "gateway", conf)
        proxy_port, portal_port = _free_port(), _free_port()
        env = dict(os.environ, PYTHONPATH=str(root))
        cmd = [sys.executable, "-m", "schoolgate.cli", "run", "--config", str(conf / "config.yaml")]
        cmd += ["--data-dir", str(Path(tmp) / "var"), "--listen-host", "127.0.0.1"]
        cmd += ["--listen-port", str(proxy_port), "--portal-port", str(portal_port), "--quiet"]
        limit = args.nofile

        def gateway_limits() -> None:  # in the gateway's process, before it starts
            if limit:
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, max(limit, hard)))

        proc = subprocess.Popen(
            cmd,
            cwd=root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=gateway_limits,
        )
        try:
            _wait_port(proxy_port, proc)
            _wait_port(portal_port, proc)
            _sample(proxy_port, portal_port, 20)  # warm up
            print(
                f"schoolgate from {root}; {args.idle} idle connections; {args.samples} samples; "
                f"gateway's open files limit {limit or soft}"
            )
            print(
                f"{'phase':<28} {'proxy p50':>9} {'p99':>8} {'fail':>5} {'portal p50':>10} "
                f"{'p99':>8} {'fail':>5} {'held':>6} {'threads':>7} {'fds':>6} {'RSS MB':>7}"
            )
            phases = [
                ("no idle connections", []),
                ("from one address", ["127.0.0.1"]),
                ("from 100 addresses", [f"127.0.1.{n}" for n in range(1, 101)]),
            ]
            for name, sources in phases:
                idle = _open_idle(portal_port, args.idle, sources) if sources else []
                time.sleep(2)  # let the server take them off its listening queue
                try:
                    result = _sample(proxy_port, portal_port, args.samples)
                    status = _status(proc.pid)
                    held = _held(idle)
                finally:
                    for sock in idle:
                        sock.close()
                (pp50, pp99, pfail), (op50, op99, ofail) = result["proxy"], result["portal"]
                print(
                    f"{name:<28} {pp50:7.1f}ms {pp99:6.1f}ms {pfail:5d} {op50:8.1f}ms "
                    f"{op99:6.1f}ms {ofail:5d} {held:6d} {status['Threads']:7.0f} "
                    f"{status['fds']:6.0f} {status['VmRSS'] / 1024:7.1f}"
                )
                time.sleep(3)  # the gateway closes what the clients left
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


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
    parser.add_argument("--idle", type=int, help="the portal port under N idle connections")
    parser.add_argument("--samples", type=int, default=200, help="with --idle")
    parser.add_argument("--root", help="with --idle: the checkout whose schoolgate to run")
    parser.add_argument(
        "--nofile", type=int, help="with --idle: the gateway's open files limit (ulimit -n)"
    )
    args = parser.parse_args()
    if args.idle:
        return idle_bench(args)
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
