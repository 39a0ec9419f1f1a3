"""The gateways of a trust share one database and do once-per-database work once: exactly one
process holds the job lease (``schoolgate.storage.leases``) and another takes over when it stops,
and several notification senders deliver each queued message exactly once. On SQLite files and on a
real PostgreSQL server (``tests/pg_server.py``), with a real SMTP server (aiosmtpd) and, at the
end, two real ``schoolgate run`` gateways.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from gateway_process import ROOT, free_port, start_gateway, stop_gateway
from mail import Inbox
from pg_server import PostgresServer, wait_until
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from schoolgate.core.config import load_policy
from schoolgate.jobs.notify import CLAIM_FOR, OutboxSender, SmtpSettings
from schoolgate.jobs.scheduler import FakeClock, Jobs
from schoolgate.storage.db import open_database
from schoolgate.storage.leases import Lease, LeaseKeeper
from schoolgate.storage.models import AuditRow, LeaseRow, OutboxRow

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
TAKEOVER_DEADLINE = 90.0  # seconds: generous, for a loaded machine (not a speed check)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.e2e)])
def db_url(request, tmp_path: Path) -> str:
    """A fresh, empty database of each kind (the PostgreSQL server starts on first use)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    server = request.getfixturevalue("pg")
    return server.create_database(f"t_{secrets.token_hex(4)}")


@pytest.fixture
def gateways(db_url: str) -> Iterator[Callable[[], sessionmaker]]:
    """Opens the shared database as one more gateway would (an engine of its own)."""
    opened: list[sessionmaker] = []

    def open_one() -> sessionmaker:
        opened.append(open_database(db_url))
        return opened[-1]

    yield open_one
    for factory in opened:
        factory.kw["bind"].dispose()


class DbClock:
    """The database's "now" for leases, set by the test."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self, _connection) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)

    def set(self, at: datetime) -> None:
        self.at = at


# -- the lease ---------------------------------------------------------------------------------
def test_one_holder_at_a_time_and_a_takeover_only_after_expiry(gateways) -> None:
    clock = DbClock(T0)
    a = Lease(gateways(), "jobs", ttl=30, holder="gateway-a", clock=clock)
    b = Lease(gateways(), "jobs", ttl=30, holder="gateway-b", clock=clock)
    assert a.try_acquire() is True
    assert b.try_acquire() is False
    clock.advance(10)
    assert a.try_acquire() is True  # renewed: good for 30 s from now
    clock.advance(29)
    assert b.try_acquire() is False  # 39 s after a took it, but only 29 s after its renewal
    # a stops renewing (its gateway hung or died)
    clock.advance(2)
    assert b.try_acquire() is True
    assert a.try_acquire() is False  # a, back, finds it taken
    assert a.current() == ("gateway-b", clock.at + timedelta(seconds=30))
    # b stops cleanly: a takes it at its next attempt, without waiting for the expiry
    assert b.release() is True
    assert a.try_acquire() is True
    assert b.release() is False  # no longer b's to release


def test_gateways_starting_together_get_exactly_one_holder(gateways) -> None:
    """The first ever attempt races to create the row: one INSERT wins, the others see it."""
    leases = [Lease(gateways(), "jobs", holder=f"gateway-{n}") for n in range(6)]
    barrier = threading.Barrier(len(leases))
    results: dict[str, bool | BaseException] = {}

    def attempt(lease: Lease) -> None:
        barrier.wait()
        try:
            results[lease.holder] = lease.try_acquire()
        except BaseException as exc:  # noqa: BLE001 - reported below
            results[lease.holder] = exc

    threads = [threading.Thread(target=attempt, args=(lease,)) for lease in leases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(map(str, results.values())) == ["False"] * 5 + ["True"], results
    (winner,) = [holder for holder, held in results.items() if held is True]
    with leases[0].sessions() as session:
        assert session.scalars(select(LeaseRow.holder)).all() == [winner]


HOLDER_SCRIPT = """
import sys, time
from schoolgate.core.config import load_policy
from schoolgate.storage.db import open_database
from schoolgate.storage.models import AuditRow
from schoolgate.jobs.scheduler import FakeClock, Jobs
from schoolgate.storage.leases import Lease, LeaseKeeper

lease = Lease(open_database(sys.argv[1]), "jobs", ttl=10, holder="doomed-gateway")
keeper = LeaseKeeper(lease, interval=1, on_acquired=lambda: print("held", flush=True),
                     on_lost=lambda reason: print("lost", reason, flush=True))
keeper.start()
time.sleep(600)
"""


@pytest.mark.e2e
def test_a_killed_holder_is_taken_over_after_its_lease_expires(db_url: str, gateways) -> None:
    """A gateway killed outright (no chance to release) holds the lease until it expires;
    then the other takes it and starts the jobs."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER_SCRIPT, db_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        taken: list[str] = []
        lease = Lease(gateways(), "jobs", ttl=10, holder="surviving-gateway")
        keeper = LeaseKeeper(
            lease, interval=1, on_acquired=lambda: taken.append("jobs started"), on_lost=print
        )
        assert keeper.step(wait=60) is False  # renewed every second by the other process
        assert keeper.step(wait=60) is False
        assert taken == []
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
        deadline = time.monotonic() + TAKEOVER_DEADLINE
        assert wait_until(lambda: keeper.step(wait=60), deadline, step=0.5)
        assert taken == ["jobs started"]
        assert lease.current()[0] == "surviving-gateway"
        keeper.stop()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(30)


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.e2e
def test_a_holder_that_cannot_renew_stops_before_its_lease_could_expire(tmp_path: Path) -> None:
    """The database stops answering (here: the PostgreSQL server goes down): the holder keeps
    its jobs through a short outage, and stops them RENEW margin before the lease runs out, so
    that another gateway taking it over after expiry never runs them at the same time."""
    server = PostgresServer()  # its own server: this test stops it
    try:
        server.start()
        sessions = open_database(server.url)
        events: list[str] = []
        monotonic = FakeMonotonic()
        lease = Lease(sessions, "jobs", ttl=30, holder="gateway-a")
        keeper = LeaseKeeper(
            lease,
            interval=10,
            monotonic=monotonic,
            on_acquired=lambda: events.append("started"),
            on_lost=lambda reason: events.append(f"stopped: {reason}"),
        )
        assert keeper.step(wait=60) is True and events == ["started"]
        server.stop()
        monotonic.now += 10
        assert keeper.step(wait=60) is True  # one failed renewal: 20 s of the lease are left
        assert events == ["started"]
        monotonic.now += 10  # 20 s since the last renewal began; the lease ends at 30 s
        assert keeper.step(wait=60) is False
        assert len(events) == 2 and events[1].startswith("stopped: ")
        assert "could not be renewed" in events[1] or "taking too long" in events[1]
        server.start()
        monotonic.now += 1
        # Back: it is still this process's lease (not expired), so it simply renews it.
        assert wait_until(lambda: keeper.step(wait=60), time.monotonic() + 60, step=0.2)
        assert events[2:] == ["started"]
        keeper.stop()
        assert events[3:] == ["stopped: this process is stopping"]
        sessions.kw["bind"].dispose()
    finally:
        server.remove()


def test_the_schedule_moves_with_the_lease_without_repeating_jobs(
    db_url: str, gateways, gateway_config: Path, gateway_data_dir: Path
) -> None:
    """The job store is in the shared database: the gateway taking the lease over finds the
    next run times its predecessor stored, so what ran is not run again and what fell due in
    between runs once."""
    config = gateway_config.read_text().replace("sqlite:///{data_dir}/schoolgate.db", db_url, 1)
    gateway_config.write_text(config)
    policy = load_policy(gateway_config, data_dir=gateway_data_dir)
    db_clock = DbClock(T0)
    a_lease = Lease(gateways(), "jobs", holder="gateway-a", clock=db_clock)
    b_lease = Lease(gateways(), "jobs", holder="gateway-b", clock=db_clock)
    assert a_lease.try_acquire() and not b_lease.try_acquire()
    purge_time = datetime(2026, 11, 28, 2, 30, tzinfo=UTC)  # the config's purge_at

    a = Jobs(lambda: policy, sessions=a_lease.sessions, clock=FakeClock(purge_time))
    a.start(paused=True)
    assert a.run_due().count("purge") == 1
    a.shutdown(wait=False)  # gateway a stops renewing: its lease runs out

    db_clock.set(T0 + timedelta(days=1))
    assert b_lease.try_acquire()
    b_clock = FakeClock(purge_time + timedelta(minutes=30))
    b = Jobs(lambda: policy, sessions=b_lease.sessions, clock=b_clock)
    b.start(paused=True)
    try:
        ran = b.run_due()
        assert "purge" not in ran and ran.count("expire") == 1  # expire: due once since 02:30
        assert b.next_runs()["purge"] == purge_time + timedelta(days=1)
        b_clock.set(purge_time + timedelta(days=1, hours=1))  # the next day's purge time
        assert b.run_due().count("purge") == 1
    finally:
        b.shutdown()
    with b_lease.sessions() as session:
        purges = session.scalars(select(AuditRow).where(AuditRow.action == "retention.purge"))
        assert len(purges.all()) == 2  # one a day, never twice


# -- the outbox --------------------------------------------------------------------------------
def smtp(port: int) -> SmtpSettings:
    return SmtpSettings(host="127.0.0.1", port=port, sender="filter@school.test", timeout=10)


def queue(sessions: sessionmaker, subjects: list[str], at: datetime) -> None:
    with sessions.begin() as session:
        for subject in subjects:
            session.add(
                OutboxRow(
                    channel="email",
                    recipient="it@school.test",
                    subject=subject,
                    body=f"{subject}\n",
                    created_at=at,
                    next_attempt_at=at,
                    attempts=0,
                )
            )


def unsent(sessions: sessionmaker) -> int:
    with sessions() as session:
        return len(session.scalars(select(OutboxRow.id).where(OutboxRow.sent_at.is_(None))).all())


def test_two_senders_deliver_each_message_exactly_once(gateways, smtp_inbox) -> None:
    inbox, port = smtp_inbox
    first, second = gateways(), gateways()
    subjects = [f"Access request R{n:03d}" for n in range(40)]
    queue(first, subjects, datetime.now(UTC))
    senders = [OutboxSender(s, smtp(port), interval=0.05) for s in (first, second)]
    for sender in senders:
        sender.start()
    try:
        assert wait_until(lambda: unsent(first) == 0, time.monotonic() + 120), unsent(first)
    finally:
        for sender in senders:
            sender.stop(60)  # waits for a send in progress
    delivered = sorted(message["Subject"] for _, message in inbox.messages)
    assert delivered == subjects  # every message, none twice
    with first() as session:
        rows = session.scalars(select(OutboxRow)).all()
    assert {(row.attempts, row.last_error, row.claimed_by) for row in rows} == {(1, None, None)}


class SenderDied(BaseException):
    """What a sender's thread dying mid-send looks like to the outbox (nothing is recorded)."""


def test_a_message_whose_sender_died_mid_send_is_sent_by_another_after_the_claim_ends(
    gateways, smtp_inbox
) -> None:
    inbox, port = smtp_inbox
    now = [T0]
    first, second = gateways(), gateways()
    queue(first, ["Escalated to SLT: R001"], T0)

    def die(*_args) -> None:
        raise SenderDied

    dying = OutboxSender(first, smtp(port), clock=lambda: now[0], send_email_fn=die)
    with pytest.raises(SenderDied):
        dying.send_due()
    other = OutboxSender(second, smtp(port), clock=lambda: now[0])
    assert other.send_due() == (0, 0)  # claimed: perhaps still being sent
    now[0] = T0 + CLAIM_FOR - timedelta(seconds=1)
    assert other.send_due() == (0, 0)
    now[0] = T0 + CLAIM_FOR + timedelta(seconds=1)
    assert other.send_due() == (1, 0)
    assert [message["Subject"] for _, message in inbox.messages] == ["Escalated to SLT: R001"]
    assert other.send_due() == (0, 0)
    assert dying.send_due() == (0, 0)  # back: nothing left to send


def test_a_failed_send_is_retried_by_whichever_sender_finds_it_due(gateways) -> None:
    """Retry and backoff are the outbox's, not one sender's: a failure recorded by one is
    retried by the other once due, and a claim does not outlive the attempt."""
    port = free_port()  # nothing listens yet
    now = [T0]
    first, second = gateways(), gateways()
    queue(first, ["Report: week 48"], T0)
    a = OutboxSender(first, smtp(port), clock=lambda: now[0])
    b = OutboxSender(second, smtp(port), clock=lambda: now[0])
    assert a.send_due() == (0, 1)
    assert b.send_due() == (0, 0)  # backing off
    with second() as session:
        (row,) = session.scalars(select(OutboxRow)).all()
    assert (row.attempts, row.claimed_by, row.claimed_until) == (1, None, None)
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        now[0] = T0 + timedelta(seconds=31)
        assert b.send_due() == (1, 0)
        assert a.send_due() == (0, 0)
        assert [message["Subject"] for _, message in inbox.messages] == ["Report: week 48"]
    finally:
        controller.stop()


# -- two real gateways on one PostgreSQL database ------------------------------------------------
@pytest.mark.e2e
def test_two_gateways_run_the_jobs_once_and_the_other_takes_over(
    tmp_path: Path, pg: PostgresServer
) -> None:
    url = pg.create_database(f"t_{secrets.token_hex(4)}")
    folder = tmp_path / "config"
    shutil.copytree(ROOT / "tests" / "data" / "gateway", folder)
    config = folder / "config.yaml"
    text = config.read_text()
    config.write_text(text.replace("url: sqlite:///{data_dir}/schoolgate.db", f"url: {url}", 1))
    assert url in config.read_text()
    logs = {name: tmp_path / f"gateway-{name}.log" for name in ("a", "b")}
    procs: dict[str, subprocess.Popen] = {}

    def log_of(name: str) -> str:
        return logs[name].read_text(errors="replace")

    def holders() -> list[str]:
        return [name for name in procs if "took the job lease" in log_of(name)]

    try:
        for name in ("a", "b"):
            procs[name] = start_gateway(
                config, tmp_path / f"var-{name}", free_port(), logs[name], quiet=False
            )

        def both_tried() -> bool:
            seen = ("took the job lease", "the jobs lease is held by")
            return all(any(line in log_of(name) for line in seen) for name in procs)

        # Both have tried for the lease: one holds it, the other was refused.
        deadline = time.monotonic() + TAKEOVER_DEADLINE
        assert wait_until(both_tried, deadline, step=0.2), {n: log_of(n) for n in procs}
        (first,) = holders()
        (other,) = [name for name in procs if name != first]
        scheduled = "schoolgate jobs scheduled"  # logged once the scheduler has started
        assert wait_until(lambda: scheduled in log_of(first), deadline, step=0.2), log_of(first)
        assert scheduled not in log_of(other)
        assert f"the jobs lease is held by {socket.gethostname()}:{procs[first].pid}:" in log_of(
            other
        )

        procs[first].send_signal(signal.SIGTERM)
        assert procs[first].wait(60) == 0, log_of(first)
        assert "gave up the job lease" in log_of(first)
        deadline = time.monotonic() + TAKEOVER_DEADLINE
        assert wait_until(lambda: scheduled in log_of(other), deadline, step=0.2), log_of(other)
        assert "took the job lease" in log_of(other)
    finally:
        for proc in procs.values():
            stop_gateway(proc, 60)
