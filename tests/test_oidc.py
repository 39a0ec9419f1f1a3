"""Staff sign-in through an OpenID Connect provider: the whole authorization code flow, with
httpx as the browser, against a provider the test starts on loopback (``tests/oidc_provider.py``,
authlib's own server). A good sign-in maps to the staff account; a bad signature, the wrong
audience, nonce or issuer, an expired token, a forged state, a stolen code without the PKCE
verifier and a user of another tenant are refused."""

from __future__ import annotations

import copy
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from oidc_provider import TENANT, Provider
from policy_fixtures import write_config

from schoolgate.core.config import load_policy
from schoolgate.core.configfile import ConfigError
from schoolgate.core.staff_signin import signin_of
from schoolgate.portal.auth import add_staff
from schoolgate.portal.oidc import OidcClient, OidcError, PendingLogin, staff_for
from schoolgate.storage.db import open_database
from schoolgate.storage.models import AuditRow, StaffRow

CALLBACK = "https://schoolgate.internal/staff/oidc/entra/callback"
CLIENT_ID = "schoolgate-portal"
SECRET = "s3cret-for-the-test"
MRS_KHAN = {
    "sub": "AAAAkhan",
    "tid": TENANT,
    "preferred_username": "Mrs.Khan@school.example",
    "email": "mrs.khan@school.example",
    "name": "Mrs Khan",
    "groups": ["g-it", "g-staff"],
}


@pytest.fixture(scope="module")
def provider():
    server = Provider(client_id=CLIENT_ID, client_secret=SECRET, redirect_uris=[CALLBACK]).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _reset(provider):
    provider.user = dict(MRS_KHAN)
    provider.tamper = None
    yield


def _settings(tmp_path: Path, provider: Provider, **changes):
    entra = {
        "name": "entra",
        "kind": "entra",
        "label": "Sign in with Microsoft",
        "issuer": provider.issuer,
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
        "allowed_tenants": [TENANT],
    }
    entra.update(changes)
    config = write_config(tmp_path, {"portal": {"host": "schoolgate.internal",
                                                "oidc": {"providers": [entra]}}})  # fmt: skip
    policy = load_policy(config, data_dir=tmp_path)
    _, oidc = signin_of(policy)
    return policy, oidc.provider("entra")


def _sign_in(client: OidcClient, *, pending_change=None, callback_change=None) -> dict:
    """The browser's part: follow the sign-in address to the provider, come back with its
    redirect's query, and hand it to the portal's client."""
    url, pending = client.start("/staff/")
    query = parse_qs(urlsplit(url).query)
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"]
    assert query["nonce"] == [pending.nonce] and query["state"] == [pending.state]
    assert query["redirect_uri"] == [CALLBACK] and "openid" in query["scope"][0].split()
    answer = httpx.get(url, follow_redirects=False)
    assert answer.status_code == 302, answer.text
    back = answer.headers["location"]
    assert back.startswith(CALLBACK + "?")
    params = {k: v[0] for k, v in parse_qs(urlsplit(back).query).items()}
    if callback_change:
        params.update(callback_change)
    if pending_change:
        pending = PendingLogin(**{**pending.to_dict(), **pending_change})
    return client.finish(params, pending)


def test_a_good_sign_in_gives_the_claims_and_the_staff_account(tmp_path, provider):
    policy, entra = _settings(tmp_path, provider)
    client = OidcClient(entra, redirect_uri=CALLBACK)
    claims = _sign_in(client)
    assert claims["tid"] == TENANT and claims["aud"] in (CLIENT_ID, [CLIENT_ID])
    assert claims["iss"] == provider.issuer
    sessions = open_database(policy.settings.database_url)
    with sessions() as session:
        with pytest.raises(OidcError, match="no portal account for mrs.khan") as refused:
            staff_for(session, entra, claims, now=datetime.now(UTC))
        assert refused.value.reason == "no active staff account 'mrs.khan'"
        add_staff(session, username="mrs.khan", password="correct horse battery",
                  roles=["teacher"], groups=["9B"])  # fmt: skip
        row = staff_for(session, entra, claims, now=datetime.now(UTC))
        assert row.username == "mrs.khan" and row.role_list == ["teacher"]


def test_roles_from_the_group_claim(tmp_path, provider):
    policy, entra = _settings(
        tmp_path,
        provider,
        roles_from="groups",
        group_roles={"g-it": ["it_support"], "g-slt": ["slt"]},
    )
    client = OidcClient(entra, redirect_uri=CALLBACK)
    sessions = open_database(policy.settings.database_url)
    now = datetime.now(UTC)
    with sessions() as session:
        row = staff_for(session, entra, _sign_in(client), now=now)
        session.commit()
        assert (row.username, row.role_list, row.display_name) == ("mrs.khan", ["it_support"],
                                                                   "Mrs Khan")  # fmt: skip
        # no password signs in to an account made this way
        from schoolgate.portal.auth import authenticate

        assert authenticate(session, "mrs.khan", "oidc") is None
    provider.user = {**MRS_KHAN, "groups": ["g-it", "g-slt"]}
    with sessions() as session:
        row = staff_for(session, entra, _sign_in(client), now=now)
        session.commit()
        assert row.role_list == ["it_support", "slt"]
    provider.user = {**MRS_KHAN, "groups": ["g-canteen"]}
    with sessions() as session:
        with pytest.raises(OidcError, match="no group"):
            staff_for(session, entra, _sign_in(client), now=now)
        session.commit()
        assert session.query(StaffRow).filter_by(username="mrs.khan").one().role_list == []
        actions = [(a.actor, a.action) for a in session.query(AuditRow).order_by(AuditRow.id)]
    assert actions == [("oidc:entra", "staff.add"), ("oidc:entra", "staff.roles"),
                       ("oidc:entra", "staff.roles")]  # fmt: skip


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ("bad_signature", "ID token refused"),
        ("wrong_audience", "ID token refused"),
        ("wrong_nonce", "ID token refused"),
        ("expired", "ID token refused"),
        ("wrong_issuer", "issuer"),
    ],
)
def test_a_token_that_cannot_be_trusted_is_refused(tmp_path, provider, tamper, reason):
    _, entra = _settings(tmp_path, provider)
    client = OidcClient(entra, redirect_uri=CALLBACK)
    provider.tamper = tamper
    with pytest.raises(OidcError) as refused:
        _sign_in(client)
    assert reason in refused.value.reason, refused.value.reason
    assert "could not be trusted" in str(refused.value) or "another sign-in" in str(refused.value)


def test_a_user_of_another_tenant_is_refused(tmp_path, provider):
    _, entra = _settings(tmp_path, provider)
    provider.user = {**MRS_KHAN, "tid": "99999999-0000-0000-0000-000000000000"}
    with pytest.raises(OidcError, match="not one of the school's") as refused:
        _sign_in(OidcClient(entra, redirect_uri=CALLBACK))
    assert "tenant" in refused.value.reason


def test_a_user_of_another_domain_is_refused(tmp_path, provider):
    _, generic = _settings(tmp_path, provider, kind="generic", allowed_tenants=[],
                           allowed_domains=["school.example"],
                           username_claim="email")  # fmt: skip
    client = OidcClient(generic, redirect_uri=CALLBACK)
    assert _sign_in(client)["email"] == "mrs.khan@school.example"
    provider.user = {**MRS_KHAN, "email": "mrs.khan@gmail.example"}
    with pytest.raises(OidcError, match="not one of the school's"):
        _sign_in(client)
    provider.user = {**MRS_KHAN, "email_verified": False}
    with pytest.raises(OidcError, match="not verified"):
        _sign_in(client)


def test_forged_state_stolen_code_and_a_slow_sign_in_are_refused(tmp_path, provider):
    _, entra = _settings(tmp_path, provider)
    client = OidcClient(entra, redirect_uri=CALLBACK)
    with pytest.raises(OidcError, match="not started here"):
        _sign_in(client, callback_change={"state": "forged"})
    asked = provider.token_requests
    # a code used with another sign-in's verifier (PKCE): the provider refuses the exchange
    with pytest.raises(OidcError) as refused:
        _sign_in(client, pending_change={"code_verifier": "x" * 64})
    assert "token exchange failed" in refused.value.reason
    assert provider.token_requests == asked + 1
    with pytest.raises(OidcError, match="too long"):
        _sign_in(client, pending_change={"started_at": time.time() - 3600})
    with pytest.raises(OidcError, match="refused: access_denied"):
        _sign_in(client, callback_change={"error": "access_denied", "code": ""})


def test_a_code_works_once(tmp_path, provider):
    _, entra = _settings(tmp_path, provider)
    client = OidcClient(entra, redirect_uri=CALLBACK)
    url, pending = client.start()
    back = httpx.get(url).headers["location"]
    params = {k: v[0] for k, v in parse_qs(urlsplit(back).query).items()}
    assert client.finish(params, pending)["sub"] == "AAAAkhan"
    with pytest.raises(OidcError, match="did not accept"):
        client.finish(params, pending)


def test_the_providers_new_key_is_fetched(tmp_path, provider):
    _, entra = _settings(tmp_path, provider)
    client = OidcClient(entra, redirect_uri=CALLBACK)
    _sign_in(client)  # keys fetched and kept
    provider.rotate()
    assert _sign_in(client)["sub"] == "AAAAkhan"


def test_oidc_settings_are_checked(tmp_path, provider):
    base = {"name": "entra", "kind": "entra", "client_id": "x", "client_secret": "y"}
    bad = [
        {**base, "issuer": "http://login.example/tenant/v2.0"},  # plain http, not loopback
        {
            **copy.deepcopy(base),
            "name": "Bad Name",
            "issuer": provider.issuer,
            "allowed_tenants": [TENANT],
        },  # fmt: skip
        {"name": "google", "kind": "google", "client_id": "x", "client_secret": "y"},
        {
            "name": "groups",
            "kind": "google",
            "client_id": "x",
            "client_secret_file": "missing",
            "allowed_domains": ["school.example"],
            "roles_from": "groups",
            "group_roles": {"g": ["wizard"]},
        },  # fmt: skip
    ]
    config = write_config(tmp_path, {"portal": {"oidc": {"providers": bad},
                                                "totp": {"required_for": ["wizard"]}}})  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        load_policy(config, data_dir=tmp_path)
    text = str(caught.value)
    for expected in (
        "portal.oidc.providers[0].issuer: expected an https:// address",
        "portal.oidc.providers[0]: missing required field 'allowed_tenants'",
        "portal.oidc.providers[1].name: expected lower-case letters",
        "portal.oidc.providers[2]: missing required field 'allowed_domains'",
        "portal.oidc.providers[3].client_secret_file: cannot read",
        "portal.oidc.providers[3].group_roles.g[0]: expected a staff role",
        "portal.oidc.providers[3].roles_from: roles_from: groups needs 'group_roles'",
        "portal.totp.required_for[0]: expected a staff role",
    ):
        assert expected in text, text
    assert "mitm_config.yaml:" in text
