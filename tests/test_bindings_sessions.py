"""Sign-in sessions as a binding source: a real slapd checks the passwords, a real SQLite file
holds the bindings, the cache every process keeps decides; time is moved by the tests' clocks."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from gateway_process import free_port
from slapd_server import DIRECTORY_PASSWORDS, SlapdServer, directory_settings
from sqlalchemy import select

from schoolgate.bindings.cache import BindingCache
from schoolgate.bindings.dhcp import Lease, LeaseWatcher
from schoolgate.bindings.directory import Directory, DirectoryUnavailable, WrongPassword
from schoolgate.bindings.names import Principal
from schoolgate.bindings.sessions import (
    SignInService,
    TooManyAttempts,
    apply_lease_changes,
    record_negotiate,
)
from schoolgate.core.identity_settings import LeaseFile, NegotiateSettings, SignInSettings
from schoolgate.storage import bindings as store
from schoolgate.storage.db import open_database
from schoolgate.storage.models import AuditRow

T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
PUPIL_PASSWORD = DIRECTORY_PASSWORDS["pupil1"][0]
ADDRESS = "10.20.1.5"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def epoch(self) -> float:
        return self.now.timestamp()

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def world(tmp_path: Path, school_directory: SlapdServer):
    sessions = open_database(f"sqlite:///{tmp_path / 'schoolgate.db'}")
    clock = Clock()
    leases = tmp_path / "dnsmasq.leases"
    leases.write_text(f"4102444800 aa:bb:cc:dd:ee:01 {ADDRESS} LAPTOP-12 *\n")
    watcher = LeaseWatcher([LeaseFile("dnsmasq", leases, str(leases))], clock=clock)
    watcher.check()
    cache = BindingCache(sessions, order=("negotiate", "radius", "sign_in"), clock=clock.epoch)
    settings = SignInSettings(
        directory_settings(school_directory), idle_minutes=45, max_minutes=480
    )
    service = SignInService(
        sessions,
        settings,
        directory=Directory(settings.directory),
        devices=watcher.lease,
        clock=clock,
        on_change=cache.wake,
    )
    return sessions, clock, cache, service, watcher, leases


def audit(sessions) -> list[tuple[str, str, str]]:
    with sessions() as db:
        rows = db.scalars(select(AuditRow).order_by(AuditRow.id))
        return [(row.actor, row.action, row.detail) for row in rows]


def test_sign_in_binds_the_address_to_the_pupil_and_sign_out_ends_it(world) -> None:
    sessions, clock, cache, service, _, _ = world
    signed = service.sign_in(ADDRESS, "pupil1", PUPIL_PASSWORD)
    assert (signed.binding.user, signed.binding.role) == ("pupil1", "student")
    assert (signed.binding.mac, signed.binding.device) == ("aa:bb:cc:dd:ee:01", "LAPTOP-12")
    cache.refresh()
    assert cache.lookup(ADDRESS).user == "pupil1"
    assert service.current(ADDRESS).user == "pupil1"
    assert [(a, b) for a, b, _ in audit(sessions)] == [("pupil1", "binding.start")]

    # Another session's reference signs out nothing; the page's own does.
    assert service.sign_out(ADDRESS, session_id="someone-else") == []
    assert [b.user for b in service.sign_out(ADDRESS, session_id=signed.session_id)] == ["pupil1"]
    cache.refresh()
    assert cache.lookup(ADDRESS) is None and service.current(ADDRESS) is None
    assert "signed out (sign-in page)" in audit(sessions)[-1][2]


def test_idle_session_lapses_and_traffic_keeps_it(world, tmp_path: Path) -> None:
    sessions, clock, cache, service, _, _ = world
    service.sign_in(ADDRESS, "pupil1", PUPIL_PASSWORD)
    cache.refresh()
    clock.advance(minutes=20)
    assert cache.lookup(ADDRESS).user == "pupil1"  # traffic: renewed here at once ...
    cache.refresh()  # ... and in the database
    with sessions() as db:
        (stored,) = store.find(db, address=ADDRESS)
    assert stored.expires_at == T0 + timedelta(minutes=65)

    # Another process that saw no traffic honours the renewal, then the lapse.
    other = BindingCache(sessions, order=("sign_in",), clock=clock.epoch)
    clock.advance(minutes=44)
    other.refresh()
    assert other.lookup(ADDRESS, traffic=False).user == "pupil1"
    clock.advance(minutes=2)
    assert other.lookup(ADDRESS, traffic=False) is None
    other.sweep_every = 0
    other.refresh()
    with sessions() as db:
        (ended,) = store.find(db, address=ADDRESS, include_ended=True)
    assert ended.end_reason == "expired (no traffic)"
    assert audit(sessions)[-1][:2] == ("schoolgate", "binding.expire")
    # Lapsed is lapsed: traffic afterwards does not bring it back; the device signs in again.
    cache.refresh()
    assert cache.lookup(ADDRESS) is None


def test_a_session_never_outlasts_its_maximum(world) -> None:
    sessions, clock, cache, service, _, _ = world
    service.sign_in(ADDRESS, "pupil1", PUPIL_PASSWORD)
    for _ in range(480 // 15):
        cache.refresh()
        assert cache.lookup(ADDRESS) is not None
        clock.advance(minutes=15)
    cache.refresh()
    assert cache.lookup(ADDRESS) is None


def test_wrong_password_and_unreachable_directory_bind_nobody(world, school_directory) -> None:
    sessions, clock, cache, service, _, _ = world
    with pytest.raises(WrongPassword):
        service.sign_in(ADDRESS, "pupil1", "not it")
    down = dataclasses.replace(
        service.settings.directory, servers=(f"ldaps://127.0.0.1:{free_port()}",)
    )
    unreachable = SignInService(sessions, service.settings, directory=Directory(down))
    for _ in range(10):  # never counted as the person's failures
        with pytest.raises(DirectoryUnavailable) as caught:
            unreachable.sign_in(ADDRESS, "pupil1", PUPIL_PASSWORD)
    assert "cannot be reached" in caught.value.message
    cache.refresh()
    assert cache.lookup(ADDRESS) is None and audit(sessions) == []


def test_password_guessing_is_throttled_before_the_directory(world, school_directory) -> None:
    sessions, clock, cache, service, _, _ = world
    for _ in range(5):
        with pytest.raises(WrongPassword):
            service.sign_in("10.20.1.66", "staff1", "guess")
    binds = school_directory.log_text().count('BIND dn="uid=staff1')
    with pytest.raises(TooManyAttempts) as caught:
        service.sign_in("10.20.1.67", "staff1", DIRECTORY_PASSWORDS["staff1"][0])
    assert "Wait up to 10 minutes" in caught.value.message
    with pytest.raises(TooManyAttempts):  # the guessing address, for any user
        service.sign_in("10.20.1.66", "pupil1", PUPIL_PASSWORD)
    assert school_directory.log_text().count('BIND dn="uid=staff1') == binds
    assert service.sign_in(ADDRESS, "pupil1", PUPIL_PASSWORD).binding.user == "pupil1"


def test_another_device_on_the_address_ends_the_session(world) -> None:
    sessions, clock, cache, service, watcher, leases = world
    service.sign_in(ADDRESS, "pupil1", PUPIL_PASSWORD)
    changes = []
    watcher.on_change = lambda old, new: changes.append((old, new))
    leases.write_text(f"4102444800 aa:bb:cc:dd:ee:77 {ADDRESS} PHONE-7 *\n")
    import os

    os.utime(leases, ns=(1, 2))
    assert watcher.check()
    old, new = changes[-1]
    ended = store.in_transaction(sessions, lambda db: apply_lease_changes(db, old, new, T0))
    assert [b.user for b in ended] == ["pupil1"]
    assert "now leased to another device (PHONE-7)" in audit(sessions)[-1][2]
    cache.refresh()
    assert cache.lookup(ADDRESS) is None


def test_a_released_lease_ends_the_session(world) -> None:
    sessions, clock, cache, service, watcher, _ = world
    service.sign_in(ADDRESS, "pupil1", PUPIL_PASSWORD)
    held = watcher.lease(ADDRESS)
    released = {ADDRESS: Lease(ADDRESS, held.mac, held.hostname, held.expires, active=False)}
    ended = store.in_transaction(
        sessions, lambda db: apply_lease_changes(db, {ADDRESS: held}, released, T0)
    )
    assert [b.user for b in ended] == ["pupil1"]
    # The same lease seen again changes nothing.
    assert (
        store.in_transaction(sessions, lambda db: apply_lease_changes(db, released, released, T0))
        == []
    )


def test_radius_naming_another_device_ends_the_sign_in(world) -> None:
    sessions, clock, cache, service, _, _ = world
    service.sign_in(ADDRESS, "pupil1", PUPIL_PASSWORD)
    store.in_transaction(
        sessions,
        lambda db: store.bind(
            db,
            address=ADDRESS,
            source="radius",
            user="pupil2",
            mac="aa:bb:cc:dd:ee:02",
            now=T0,
            expires_at=T0 + timedelta(hours=2),
            actor="radius 10.0.0.2",
        ),
    )
    cache.refresh()
    assert cache.lookup(ADDRESS).user == "pupil2"
    with sessions() as db:
        sign_in = [
            b for b in store.find(db, address=ADDRESS, include_ended=True) if b.source == "sign_in"
        ]
    assert "now used by another device (aa:bb:cc:dd:ee:02, radius)" in sign_in[0].end_reason


def test_the_configured_order_decides_between_sources(world, tmp_path: Path) -> None:
    sessions, clock, cache, service, watcher, _ = world
    service.sign_in(ADDRESS, "pupil1", PUPIL_PASSWORD)
    negotiate = NegotiateSettings(keytab=tmp_path / "none.keytab")
    store.in_transaction(
        sessions,
        lambda db: record_negotiate(
            db,
            address=ADDRESS,
            principal=Principal("person", "staff1", "school.test"),
            protocol="kerberos",
            settings=negotiate,
            now=T0,
            lease=watcher.lease(ADDRESS),
        ),
    )
    cache.refresh()
    assert cache.lookup(ADDRESS).user == "staff1"  # negotiate is first in the order
    sign_in_first = BindingCache(sessions, order=("sign_in", "negotiate"), clock=clock.epoch)
    assert sign_in_first.refresh()
    assert sign_in_first.lookup(ADDRESS).user == "pupil1"
    only_radius = BindingCache(sessions, order=("radius",), clock=clock.epoch)
    assert only_radius.refresh()
    assert only_radius.lookup(ADDRESS) is None  # sources not configured do not count
