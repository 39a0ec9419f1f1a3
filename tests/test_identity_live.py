"""Who a request is decided as once identity sources run: the resolver with live bindings and
DHCP leases, networks that require sign-in, the config that sets them, the sign-in page's
password checks, ``schoolgate who`` and ``explain --ip`` on the bindings table, and the
gateway addon's redirect to sign-in and its refusal to run Negotiate beside ``proxyauth``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons, tflow, tutils
from policy_fixtures import write_config

from schoolgate.bindings.accounts import Passwords, PortalAccounts
from schoolgate.bindings.directory import DirectoryUnavailable, DirectoryUser, WrongPassword
from schoolgate.cli.main import main
from schoolgate.core.binding import Binding
from schoolgate.core.config import identity_sources_of, load_policy
from schoolgate.core.configfile import ConfigError
from schoolgate.core.identity import SIGN_IN_REQUIRED
from schoolgate.core.model import RequestFacts
from schoolgate.gateway.identity_addon import IdentitySourcesAddon
from schoolgate.portal.auth import add_staff
from schoolgate.storage import bindings as store
from schoolgate.storage.db import open_database
from schoolgate.storage.eventlog import decision_event

NOW = datetime(2026, 11, 24, 10, 30, tzinfo=UTC)  # a Tuesday, lesson time
SIGN_IN = {"networks": ["10.30.0.0/16"], "portal_accounts": {"role": "staff"}}


def binding(user: str | None, *, source="radius", role=None, kind="person", device=None):
    return Binding(
        id=7,
        address="10.30.1.5",
        source=source,
        kind=kind,
        user=user,
        role=role,
        device=device,
        mac=None,
        session_id=None,
        origin="radius 10.0.0.2 (wlc-1)",
        started_at=NOW,
        last_seen=NOW,
        expires_at=NOW + timedelta(hours=1),
        idle_seconds=None,
        ends_by=None,
    )


@dataclass
class FakeLive:
    bound: dict[str, Binding] = field(default_factory=dict)
    devices: dict[str, str] = field(default_factory=dict)

    def binding(self, address: str) -> Binding | None:
        return self.bound.get(address)

    def device(self, address: str) -> str | None:
        return self.devices.get(address)


def identity_config(tmp_path: Path, **identity) -> Path:
    from policy_fixtures import BASE

    section = dict(BASE["identity"])
    section["networks"] = [*section["networks"], {"cidr": "10.30.0.0/16", "role": "student"}]
    section["roster"] = "roster.csv"
    section.update(identity)
    return write_config(tmp_path, {"identity": section})


@pytest.fixture
def policy(tmp_path: Path):
    return load_policy(
        identity_config(tmp_path, sign_in=SIGN_IN, sources=["sign_in"]), data_dir=tmp_path
    )


def facts(ip: str, host: str = "facebook.com", path: str = "/", user: str | None = None):
    return RequestFacts(host, NOW, path, "GET", 80, "http", ip, user)


# -- the resolver --------------------------------------------------------------------------


def test_a_bound_pupil_on_the_roster_is_decided_as_the_pupil(policy) -> None:
    live = FakeLive({"10.30.1.5": binding("ben", device="ben-phone")})
    policy.resolver.use_live(live)
    ident = policy.identify("10.30.1.5", None)
    assert (ident.user, ident.role, ident.group, ident.source) == ("ben", "student", "9B", "roster")
    assert ident.device == "ben-phone" and "by radius (radius 10.0.0.2 (wlc-1))" in ident.rule
    # The age check (LinkedIn is 16+; ben was born in 2012) applies to the bound pupil.
    decision = policy.decide(facts("10.30.1.5", "linkedin.com", "/signup"))
    assert not decision.allowed and decision.category == "age_restricted"
    event = decision_event(decision, facts("10.30.1.5"), ref="r1", url=None)
    assert (event.user, event.device, event.group) == ("ben", "ben-phone", "9B")


def test_the_roster_beats_the_directory_role_which_beats_the_network(policy) -> None:
    live = FakeLive(
        {
            "10.30.1.5": binding("alice", source="sign_in", role="student"),
            "10.30.1.6": binding("newstaff", source="sign_in", role="staff"),
            "10.30.1.7": binding("stranger"),
        }
    )
    policy.resolver.use_live(live)
    assert policy.identify("10.30.1.5", None).role == "staff"  # alice is staff on the roster
    newcomer = policy.identify("10.30.1.6", None)
    assert (newcomer.role, newcomer.source, newcomer.user) == ("staff", "binding", "newstaff")
    assert "from the directory's groups" in newcomer.rule
    stranger = policy.identify("10.30.1.7", None)
    assert (stranger.role, stranger.user, stranger.source) == ("student", "stranger", "network")
    # A proxy login beats the binding.
    assert policy.identify("10.30.1.6", "ben").user == "ben"


def test_a_machine_binding_names_the_device_not_a_person(policy) -> None:
    laptop = binding(None, kind="machine", device="laptop-12")
    policy.resolver.use_live(FakeLive({"10.30.1.5": laptop}))
    ident = policy.identify("10.30.1.5", None)
    assert (ident.user, ident.device, ident.role) == (None, "laptop-12", "student")
    assert ident.source != SIGN_IN_REQUIRED


def test_an_unknown_device_on_a_sign_in_network_must_sign_in(policy) -> None:
    policy.resolver.use_live(FakeLive(devices={"10.30.1.9": "pupil-tablet"}))
    ident = policy.identify("10.30.1.9", None)
    assert ident.source == SIGN_IN_REQUIRED and ident.device == "pupil-tablet"
    decision = policy.decide(facts("10.30.1.9", "wikipedia.org"))  # allowed for students
    assert not decision.allowed and decision.rule == "sign-in required"
    assert "not signed in" in decision.reason
    # Elsewhere an unknown device keeps its network's role, with the lease's device name.
    policy.resolver.use_live(FakeLive(devices={"10.20.1.9": "lab-pc-3"}))
    other = policy.identify("10.20.1.9", None)
    assert (other.role, other.source, other.device) == ("student", "network", "lab-pc-3")
    # With no bindings known at all (a command on its own), still sign-in, never guest.
    policy.resolver.use_live(None)
    assert policy.identify("10.30.1.10", None).source == SIGN_IN_REQUIRED
    assert policy.decide(facts("::ffff:10.30.1.10", "wikipedia.org")).rule == "sign-in required"


def test_a_binding_that_ends_is_not_remembered(policy) -> None:
    live = FakeLive({"10.30.1.5": binding("ben")})
    policy.resolver.use_live(live)
    assert policy.identify("10.30.1.5", None).user == "ben"
    live.bound.clear()
    assert policy.identify("10.30.1.5", None).source == SIGN_IN_REQUIRED


# -- the config --------------------------------------------------------------------------------


def test_the_identity_sources_are_read_with_the_policy(policy) -> None:
    sources = identity_sources_of(policy)
    assert sources.sources == ("sign_in",)
    assert sources.sign_in is not None and sources.sign_in.portal_accounts_role == "staff"
    assert [str(n) for n in policy.resolver.sign_in_networks] == ["10.30.0.0/16"]


def test_sign_in_config_mistakes_are_reported_with_their_line(tmp_path: Path) -> None:
    path = identity_config(
        tmp_path,
        sign_in={"networks": ["10.30.0.0/33"], "portal_accounts": {"role": "wizard"}},
    )
    with pytest.raises(ConfigError) as caught:
        load_policy(path, data_dir=tmp_path)
    text = str(caught.value)
    assert "identity.sign_in.networks[0]" in text and "10.30.0.0/16" in text
    assert "identity.sign_in.portal_accounts.role" in text and "unknown role 'wizard'" in text
    path = identity_config(tmp_path, sign_in={"networks": ["10.30.0.0/16"]})
    with pytest.raises(ConfigError, match="portal_accounts"):
        load_policy(path, data_dir=tmp_path)


# -- passwords ---------------------------------------------------------------------------------


class DownDirectory:
    def authenticate(self, username: str, password: str) -> DirectoryUser:
        raise DirectoryUnavailable("no directory server answered")


def test_portal_accounts_sign_in_and_the_directory_down_is_said(tmp_path: Path) -> None:
    sessions = open_database(f"sqlite:///{tmp_path / 'schoolgate.db'}")
    with sessions() as db:
        add_staff(db, username="it.tech", roles=["it_support"], password="a long pass phrase 1")
        db.commit()
    accounts = PortalAccounts(sessions, "staff")
    user = Passwords(None, accounts).authenticate("IT.Tech", "a long pass phrase 1")
    assert (user.username, user.role) == ("it.tech", "staff")
    with pytest.raises(WrongPassword):
        Passwords(None, accounts).authenticate("it.tech", "wrong")
    both = Passwords(DownDirectory(), accounts)  # type: ignore[arg-type]
    assert both.authenticate("it.tech", "a long pass phrase 1").username == "it.tech"
    with pytest.raises(DirectoryUnavailable):  # never "wrong password" while it is down
        both.authenticate("pupil1", "whatever")
    with pytest.raises(WrongPassword):
        accounts.authenticate("it.tech", "")


# -- who and explain --ip -----------------------------------------------------------------------


def bind(config: Path, address: str, user: str, *, source: str = "radius") -> None:
    policy = load_policy(config, data_dir=config.parent)
    sessions = open_database(policy.settings.database_url)
    now = datetime.now(UTC)
    store.in_transaction(
        sessions,
        lambda db: store.bind(
            db,
            address=address,
            source=source,
            user=user,
            device="ben-phone",
            now=now,
            expires_at=now + timedelta(hours=1),
            origin="radius 10.0.0.2 (wlc-1)",
            actor="radius 10.0.0.2",
        ),
    )


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_who_lists_bindings_and_explain_ip_uses_them(tmp_path: Path, capsys) -> None:
    config = identity_config(
        tmp_path,
        sources=["radius"],
        radius={"secret": "a-long-shared-secret-0123", "clients": ["10.0.0.2/32"]},
    )
    where = ["--config", config, "--data-dir", tmp_path]
    code, out, _ = run(capsys, "who", *where, "--init")
    assert code == 0 and "nobody is bound" in out
    bind(config, "10.20.1.5", "ben")
    code, out, _ = run(capsys, "who", *where)
    assert "10.20.1.5" in out and "ben" in out and "radius" in out and "ben-phone" in out
    code, out, _ = run(capsys, "who", "BEN", *where, "--json")
    listed = json.loads(out)
    assert [(b["address"], b["user"], b["source"]) for b in listed] == [
        ("10.20.1.5", "ben", "radius")
    ]
    assert listed[0]["expires_at"]
    code, out, _ = run(capsys, "explain", "https://wikipedia.org/", "--ip", "10.20.1.5", *where)
    assert "ben -> role student, group 9B" in out and "bound to 10.20.1.5 by radius" in out
    code, out, _ = run(capsys, "explain", "https://wikipedia.org/", "--ip", "10.20.1.6", *where)
    assert "ben" not in out

    policy = load_policy(config, data_dir=tmp_path)
    sessions = open_database(policy.settings.database_url)
    store.in_transaction(
        sessions,
        lambda db: store.end_bindings(
            db, address="10.20.1.5", reason="session stopped", actor="x", now=datetime.now(UTC)
        ),
    )
    assert json.loads(run(capsys, "who", "10.20.1.5", *where, "--json")[1]) == []
    code, out, _ = run(capsys, "who", "10.20.1.5", *where, "--history")
    assert "ended" in out and "session stopped" in out


# -- the gateway addon ---------------------------------------------------------------------------


def test_negotiate_and_proxyauth_together_are_refused(tmp_path: Path) -> None:
    keytab = tmp_path / "HTTP.keytab"
    keytab.write_bytes(b"\x05\x02")
    config = identity_config(tmp_path, negotiate={"keytab": str(keytab)})
    from schoolgate.gateway import make_addons

    addons = make_addons()
    holder, recorder = addons[0], addons[1]
    identity = IdentitySourcesAddon(holder, recorder)
    from mitmproxy.addons.proxyauth import ProxyAuth

    with taddons.context(holder, identity, ProxyAuth()) as tctx:
        tctx.configure(holder, schoolgate_config=str(config), schoolgate_data_dir=str(tmp_path))
        with pytest.raises(exceptions.OptionsError, match="proxyauth"):
            tctx.configure(identity, proxyauth="any")


def test_the_addon_sends_unknown_devices_to_sign_in(tmp_path: Path) -> None:
    config = identity_config(tmp_path, sign_in=SIGN_IN, sources=["sign_in"])
    from schoolgate.gateway import make_addons

    addons = make_addons()
    holder, recorder = addons[0], addons[1]
    identity = IdentitySourcesAddon(holder, recorder)
    with taddons.context(holder, recorder, identity) as tctx:
        tctx.configure(holder, schoolgate_config=str(config), schoolgate_data_dir=str(tmp_path))
        identity.running()
        try:
            for ip, redirected in (("10.30.1.5", True), ("10.20.1.5", False)):
                flow = tflow.tflow(
                    req=tutils.treq(host="wikipedia.org", port=80, path=b"/wiki/Cat")
                )
                flow.request.headers["Host"] = "wikipedia.org"
                flow.client_conn.peername = (ip, 40000)
                identity.request(flow)
                if redirected:
                    assert flow.response is not None and flow.response.status_code == 302
                    assert flow.response.headers["location"] == (
                        "http://schoolgate.internal/sign-in?next="
                        "http%3A%2F%2Fwikipedia.org%2Fwiki%2FCat"
                    )
                else:
                    assert flow.response is None
            # A reload makes a new policy: it is given the bindings before it is in force.
            before = holder.policy
            assert holder.reload(force=True)
            assert holder.policy is not before
            assert holder.policy.resolver.live is identity.live is not None
        finally:
            identity.done()
            recorder.done()


# -- the portal's pages ---------------------------------------------------------------------------


def test_sign_in_page_and_the_it_support_list(tmp_path: Path, gateway_config: Path) -> None:
    from test_portal import PASSWORD, Portal, csrf

    from schoolgate.bindings import live as live_identity
    from schoolgate.bindings.cache import BindingCache
    from schoolgate.bindings.live import LiveIdentity
    from schoolgate.bindings.sessions import SignInService
    from schoolgate.core.identity_settings import IdentitySources, SignInSettings

    portal = Portal(tmp_path, gateway_config)
    settings = SignInSettings(None, portal_accounts_role="staff")
    cache = BindingCache(portal.sessions, order=("sign_in",))
    live = LiveIdentity(IdentitySources(("sign_in",), sign_in=settings), cache=cache)
    live.sign_in = SignInService(
        portal.sessions,
        settings,
        directory=Passwords(None, PortalAccounts(portal.sessions, "staff")),  # type: ignore[arg-type]
        on_change=lambda: cache.refresh(),
    )
    live_identity.install(live)
    try:
        device = portal.client("10.30.1.5")
        token = csrf(device, "/sign-in")
        wrong = device.post(
            "/sign-in", data={"csrf_token": token, "username": "alice", "password": "nope"}
        )
        assert wrong.status_code == 401 and "do not match" in wrong.text
        done = device.post(
            "/sign-in", data={"csrf_token": token, "username": "alice", "password": PASSWORD}
        )
        assert done.status_code == 200 and 'id="signed-in-user">alice<' in done.text
        assert cache.lookup("10.30.1.5", traffic=False).user == "alice"  # the page waited

        listed = portal.staff("nina").get("/it/sign-ins")
        assert listed.status_code == 200
        assert "10.30.1.5" in listed.text and "alice" in listed.text and "sign-in" in listed.text
        assert "bindings addresses" in listed.text  # the counters
        assert portal.client("10.30.1.6").get("/it/sign-ins").status_code == 302  # staff only

        out = device.post("/sign-out", data={"csrf_token": token})
        assert out.status_code == 200 and "You have signed out" in out.text
        assert cache.lookup("10.30.1.5", traffic=False) is None
    finally:
        live_identity.install(None)


def test_a_sign_in_ends_when_its_address_is_leased_to_another_device(tmp_path: Path) -> None:
    leases = tmp_path / "dnsmasq.leases"
    expiry = int(datetime.now(UTC).timestamp()) + 3600
    leases.write_text(f"{expiry} 02:00:00:00:00:0a 10.30.1.5 pupil-tablet *\n")
    config = identity_config(
        tmp_path,
        sign_in=SIGN_IN,
        sources=["sign_in"],
        dhcp={"leases": [{"format": "dnsmasq", "path": str(leases)}], "check_seconds": 3600},
    )
    from schoolgate.bindings.sessions import bind_session
    from schoolgate.gateway import make_addons

    addons = make_addons()
    holder, recorder = addons[0], addons[1]
    identity = IdentitySourcesAddon(holder, recorder)
    with taddons.context(holder, recorder, identity) as tctx:
        tctx.configure(holder, schoolgate_config=str(config), schoolgate_data_dir=str(tmp_path))
        identity.running()
        try:
            live = identity.live
            assert live is not None and live.device("10.30.1.5") == "pupil-tablet"
            now = datetime.now(UTC)
            store.in_transaction(
                recorder.sessions,
                lambda db: bind_session(
                    db,
                    source="sign_in",
                    address="10.30.1.5",
                    user="ben",
                    mac="02:00:00:00:00:0a",
                    origin="sign-in page",
                    actor="ben",
                    now=now,
                    idle_minutes=45,
                    max_minutes=480,
                ),
            )
            assert live.wait_until("10.30.1.5", lambda b: b is not None and b.user == "ben")
            # Another device is given the address: the sign-in ends (written by the writer).
            leases.write_text(f"{expiry + 60} 02:00:00:00:00:0b 10.30.1.5 someone-else *\n")
            assert live.leases.check()
            assert live.wait_until("10.30.1.5", lambda b: b is None, timeout=20)
            with recorder.sessions() as db:
                ended = store.find(db, address="10.30.1.5", include_ended=True)
            assert "leased to another device (someone-else)" in (ended[0].end_reason or "")
        finally:
            identity.done()
            recorder.done()
