"""RADIUS accounting from a real pyrad client, over real UDP on loopback, into a real SQLite
database, read back through the bindings cache every process keeps."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from gateway_process import free_port
from pyrad.client import Client, Timeout
from pyrad.packet import AccountingResponse, StatusServer
from sqlalchemy import select, text

from schoolgate.bindings.cache import BindingCache
from schoolgate.bindings.radius import RadiusListener, accounting_store, radius_dictionary
from schoolgate.bindings.writer import BindingWriter
from schoolgate.core.identity_settings import RadiusSettings
from schoolgate.storage import bindings as store
from schoolgate.storage.db import open_database
from schoolgate.storage.models import AuditRow

SECRET = b"a-long-shared-secret-for-tests-0123"


@dataclass
class Rig:
    listener: RadiusListener
    cache: BindingCache
    sessions: object
    port: int

    def client(self, secret: bytes = SECRET, retries: int = 3, timeout: float = 3) -> Client:
        client = Client(
            server="127.0.0.1",
            acctport=self.port,
            secret=secret,
            dict=radius_dictionary(),
            retries=retries,
            timeout=timeout,
        )
        return client

    def who(self, address: str) -> str | None:
        assert self.cache.refresh()
        binding = self.cache.lookup(address, traffic=False)
        return binding.who() if binding else None


def start_rig(tmp_path: Path, clients: tuple[str, ...] = ("127.0.0.0/8",)) -> Rig:
    sessions = open_database(f"sqlite:///{tmp_path / 'schoolgate.db'}")
    port = free_port()
    settings = RadiusSettings(
        host="127.0.0.1",
        port=port,
        secret=SECRET,
        clients=tuple(ipaddress.ip_network(c) for c in clients),
        idle_minutes=120,
    )
    cache = BindingCache(sessions, order=("radius",))
    writer = BindingWriter(after_write=cache.wake)
    writer.start()
    listener = RadiusListener(settings, accounting_store(writer, sessions, settings))
    listener.start()
    rig = Rig(listener, cache, sessions, port)
    rig._writer = writer  # type: ignore[attr-defined]
    return rig


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = start_rig(tmp_path)
    try:
        yield rig
    finally:
        rig.listener.stop()
        rig._writer.stop()  # type: ignore[attr-defined]


def accounting(client: Client, status: str, **attributes: object):
    packet = client.CreateAcctPacket()
    packet["Acct-Status-Type"] = status
    for name, value in attributes.items():
        packet[name.replace("_", "-")] = value
    return client.SendPacket(packet)


def audit_actions(rig: Rig) -> list[tuple[str, str]]:
    with rig.sessions() as db:
        rows = db.scalars(select(AuditRow).order_by(AuditRow.id))
        return [(row.action, row.detail) for row in rows]


def wait_for(predicate, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def test_start_binds_the_address_and_stop_ends_it(rig: Rig) -> None:
    client = rig.client()
    session = dict(
        User_Name="SCHOOL\\Pupil1",
        Framed_IP_Address="10.20.1.5",
        Acct_Session_Id="sess-1",
        NAS_IP_Address="10.0.0.2",
        NAS_Identifier="wlc-1",
    )
    reply = accounting(client, "Start", Calling_Station_Id="AA-BB-CC-DD-EE-01", **session)
    assert reply.code == AccountingResponse
    binding = (rig.cache.refresh(), rig.cache.lookup("10.20.1.5"))[1]
    assert binding is not None
    assert (binding.user, binding.kind, binding.mac) == ("pupil1", "person", "aa:bb:cc:dd:ee:01")
    assert binding.origin == "radius 10.0.0.2 (wlc-1)"
    assert binding.device == "aa:bb:cc:dd:ee:01"
    assert rig.who("10.20.1.6") is None

    reply = accounting(client, "Stop", Acct_Terminate_Cause="User-Request", **session)
    assert reply.code == AccountingResponse
    assert rig.who("10.20.1.5") is None
    actions = audit_actions(rig)
    assert [a for a, _ in actions] == ["binding.start", "binding.end"]
    assert "pupil1 on 10.20.1.5 by radius" in actions[0][1]
    assert "session stopped (User-Request)" in actions[1][1]
    assert rig.listener.counters.recorded == 2


def test_interim_update_binds_when_start_had_no_address(rig: Rig) -> None:
    client = rig.client()
    accounting(client, "Start", User_Name="pupil2@school.org.uk", Acct_Session_Id="s2")
    assert rig.listener.counters.answered_without_binding == 1
    assert rig.cache.refresh() and rig.cache.snapshot() == []
    accounting(
        client,
        "Interim-Update",
        User_Name="pupil2@school.org.uk",
        Framed_IP_Address="10.20.1.7",
        Acct_Session_Id="s2",
    )
    assert rig.who("10.20.1.7") == "pupil2"
    # Renewals are not changes of who is there: one start in the audit trail.
    accounting(
        client,
        "Interim-Update",
        User_Name="pupil2@school.org.uk",
        Framed_IP_Address="10.20.1.7",
        Acct_Session_Id="s2",
    )
    assert [a for a, _ in audit_actions(rig)] == ["binding.start"]


def test_wrong_secret_changes_nothing_and_is_counted(rig: Rig) -> None:
    good = rig.client()
    accounting(good, "Start", User_Name="pupil1", Framed_IP_Address="10.20.1.5")
    assert rig.who("10.20.1.5") == "pupil1"

    forged = rig.client(secret=b"guessed-secret", retries=1, timeout=1)
    with pytest.raises(Timeout):
        accounting(forged, "Start", User_Name="headteacher", Framed_IP_Address="10.20.1.5")
    with pytest.raises(Timeout):
        accounting(forged, "Stop", User_Name="pupil1", Framed_IP_Address="10.20.1.5")
    assert wait_for(lambda: rig.listener.counters.dropped_bad_authenticator == 2)
    assert rig.who("10.20.1.5") == "pupil1"
    assert [a for a, _ in audit_actions(rig)] == ["binding.start"]


def test_packets_from_outside_clients_are_dropped(tmp_path: Path) -> None:
    rig = start_rig(tmp_path, clients=("10.0.0.0/24",))
    try:
        client = rig.client(retries=1, timeout=1)
        with pytest.raises(Timeout):
            accounting(client, "Start", User_Name="pupil1", Framed_IP_Address="10.20.1.5")
        assert wait_for(lambda: rig.listener.counters.dropped_unknown_client == 1)
        assert rig.who("10.20.1.5") is None
    finally:
        rig.listener.stop()
        rig._writer.stop()  # type: ignore[attr-defined]


def test_a_new_person_on_the_address_replaces_the_old(rig: Rig) -> None:
    client = rig.client()
    accounting(client, "Start", User_Name="pupil1", Framed_IP_Address="10.20.1.5")
    accounting(client, "Start", User_Name="pupil3", Framed_IP_Address="10.20.1.5")
    assert rig.who("10.20.1.5") == "pupil3"
    # A late Stop of the first session (roaming) must not end the new person's binding.
    accounting(client, "Stop", User_Name="pupil1", Framed_IP_Address="10.20.1.5")
    assert rig.who("10.20.1.5") == "pupil3"
    details = [d for a, d in audit_actions(rig) if a == "binding.end"]
    assert details and "replaced by pupil3 (radius)" in details[0]


def test_a_stop_ends_only_its_own_session(rig: Rig) -> None:
    client = rig.client()
    common = dict(User_Name="pupil1", Framed_IP_Address="10.20.1.5")
    accounting(client, "Start", Acct_Session_Id="first", **common)
    # The device roams to another access point: a new session for the same pupil, and the
    # old session's Stop arrives late.
    accounting(client, "Start", Acct_Session_Id="second", **common)
    accounting(client, "Stop", Acct_Session_Id="first", **common)
    assert rig.who("10.20.1.5") == "pupil1"
    accounting(client, "Stop", Acct_Session_Id="second", **common)
    assert rig.who("10.20.1.5") is None


def test_machine_accounts_bind_a_device_not_a_person(rig: Rig) -> None:
    client = rig.client()
    accounting(
        client,
        "Start",
        User_Name="host/LAPTOP-12.school.local",
        Framed_IP_Address="10.20.1.9",
        Calling_Station_Id="aa:bb:cc:dd:ee:09",
    )
    rig.cache.refresh()
    binding = rig.cache.lookup("10.20.1.9")
    assert binding is not None and binding.kind == "machine" and binding.user is None
    assert binding.device == "laptop-12.school.local"
    # The pupil logs on: user authentication replaces the machine's.
    accounting(
        client,
        "Start",
        User_Name="SCHOOL\\pupil4",
        Framed_IP_Address="10.20.1.9",
        Calling_Station_Id="aa:bb:cc:dd:ee:09",
    )
    assert rig.who("10.20.1.9") == "pupil4"


def test_anonymous_identity_is_answered_but_binds_nobody(rig: Rig) -> None:
    client = rig.client()
    reply = accounting(
        client, "Start", User_Name="anonymous@school.org.uk", Framed_IP_Address="10.20.1.5"
    )
    assert reply.code == AccountingResponse
    assert rig.listener.counters.unusable_user == 1
    assert rig.who("10.20.1.5") is None


def test_accounting_on_ends_what_that_controller_reported(rig: Rig) -> None:
    client = rig.client()
    accounting(
        client, "Start", User_Name="pupil1", Framed_IP_Address="10.20.1.5", NAS_Identifier="ap-1"
    )
    accounting(
        client, "Start", User_Name="pupil2", Framed_IP_Address="10.20.1.6", NAS_Identifier="ap-2"
    )
    accounting(client, "Accounting-On", NAS_Identifier="ap-1")
    assert rig.who("10.20.1.5") is None
    assert rig.who("10.20.1.6") == "pupil2"


def test_status_server_is_answered(rig: Rig) -> None:
    client = rig.client()
    packet = client.CreateAcctPacket(code=StatusServer)
    reply = client.SendPacket(packet)
    assert reply.code == AccountingResponse
    assert rig.listener.counters.status_server == 1


def test_unstored_accounting_is_not_answered_until_the_database_is_back(rig: Rig) -> None:
    with rig.sessions() as db:
        db.execute(text("ALTER TABLE bindings RENAME TO bindings_away"))
        db.commit()
    client = rig.client(retries=1, timeout=1)
    with pytest.raises(Timeout):
        accounting(client, "Start", User_Name="pupil1", Framed_IP_Address="10.20.1.5")
    assert wait_for(lambda: rig.listener.counters.write_failed >= 1)
    with rig.sessions() as db:
        db.execute(text("ALTER TABLE bindings_away RENAME TO bindings"))
        db.commit()
    # The controller resends; now it is stored and answered.
    reply = accounting(rig.client(), "Start", User_Name="pupil1", Framed_IP_Address="10.20.1.5")
    assert reply.code == AccountingResponse
    assert rig.who("10.20.1.5") == "pupil1"


def test_bindings_lapse_without_accounting(tmp_path: Path) -> None:
    rig = start_rig(tmp_path)
    try:
        accounting(rig.client(), "Start", User_Name="pupil1", Framed_IP_Address="10.20.1.5")
        assert rig.who("10.20.1.5") == "pupil1"
        now = time.time()
        rig.cache.clock = lambda: now + 121 * 60  # past identity.radius.idle_minutes
        assert rig.who("10.20.1.5") is None
        rig.cache.sweep_every = 0
        rig.cache.refresh()
        with rig.sessions() as db:
            ended = store.find(db, address="10.20.1.5", include_ended=True)
        assert ended[0].end_reason == "expired"
        assert [a for a, _ in audit_actions(rig)] == ["binding.start", "binding.expire"]
    finally:
        rig.listener.stop()
        rig._writer.stop()  # type: ignore[attr-defined]
