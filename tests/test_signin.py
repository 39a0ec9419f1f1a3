"""Staff sign-in's second step with Flask's test client: a right password alone does not sign in
an account with two-factor sign-in on; wrong codes are refused, audited and limited; a role
that must use a code sets one up first; a recovery code works once; the step expires; an
identity-provider callback nobody started is refused."""

from __future__ import annotations

import re
from datetime import timedelta

import pyotp
import pytest
from test_portal import PASSWORD, SECRET, Portal, csrf

from schoolgate.portal import totp
from schoolgate.storage.models import AuditRow, StaffRow


@pytest.fixture
def portal(tmp_path, gateway_config) -> Portal:
    text = gateway_config.read_text().replace(
        "  host: schoolgate.internal\n",
        "  host: schoolgate.internal\n  totp: {required_for: [network_manager]}\n",
    )
    gateway_config.write_text(text)
    return Portal(tmp_path, gateway_config)


def _enrol(portal: Portal, username: str) -> tuple[pyotp.TOTP, list[str]]:
    with portal.sessions() as s:
        row = s.query(StaffRow).filter_by(username=username).one()
        enrolment = totp.begin_enrolment(row, secret_key=SECRET, issuer="test")
        code = pyotp.TOTP(enrolment.secret)
        at = portal.clock() - timedelta(minutes=5)  # an old step: today's codes stay unused
        recovery = totp.confirm_enrolment(s, row, code.at(at), secret_key=SECRET, at=at)
        s.commit()
    return code, recovery


def _password(portal: Portal, username: str):
    client = portal.client("10.10.0.9")
    token = csrf(client, "/staff/login")
    answer = client.post(
        "/staff/login", data={"username": username, "password": PASSWORD, "csrf_token": token}
    )
    return client, answer


def _code(client, code: str = "", recovery: str = ""):
    token = csrf(client, "/staff/two-factor")
    return client.post(
        "/staff/two-factor", data={"code": code, "recovery": recovery, "csrf_token": token}
    )


def _audit(portal: Portal) -> list[tuple[str, str]]:
    with portal.sessions() as s:
        return [(a.actor, a.action) for a in s.query(AuditRow).order_by(AuditRow.id)]


def test_a_right_password_alone_does_not_sign_in_an_account_with_a_code(portal):
    code, _ = _enrol(portal, "alice")
    client, answer = _password(portal, "alice")
    assert answer.status_code == 303 and answer.headers["Location"].endswith("/staff/two-factor")
    assert client.get("/it/").status_code == 302  # not signed in yet
    wrong = _code(client, "000000" if code.now() != "000000" else "111111")
    assert wrong.status_code == 401 and "not right" in wrong.text
    assert ("alice", "staff.login_failed") in _audit(portal)
    assert client.get("/it/").status_code == 302
    right = _code(client, code.at(portal.clock()))
    assert right.status_code == 303
    assert client.get("/it/").status_code == 200
    assert ("alice", "staff.login") in _audit(portal)
    # The same code again (another sign-in) is refused: never accepted twice.
    again, _ = _password(portal, "alice")
    assert _code(again, code.at(portal.clock())).status_code == 401


def test_wrong_codes_are_limited(portal):
    code, _ = _enrol(portal, "alice")
    client, _ = _password(portal, "alice")
    for _ in range(5):
        assert _code(client, "999999" if code.now() != "999999" else "888888").status_code == 401
    limited = _code(client, code.at(portal.clock()))
    assert limited.status_code == 429  # even the right code, for now
    assert client.get("/it/").status_code == 302


def test_a_recovery_code_works_once(portal):
    _, recovery = _enrol(portal, "alice")
    client, _ = _password(portal, "alice")
    assert _code(client, recovery=recovery[0].lower()).status_code == 303
    assert client.get("/it/").status_code == 200
    other, _ = _password(portal, "alice")
    assert _code(other, recovery=recovery[0]).status_code == 401


def test_the_second_step_expires(portal):
    code, _ = _enrol(portal, "alice")
    client, _ = _password(portal, "alice")
    portal.clock.advance(minutes=6)
    late = client.get("/staff/two-factor")
    assert late.status_code == 303 and "/staff/login" in late.headers["Location"]


def test_a_role_that_must_use_a_code_sets_one_up_before_it_is_signed_in(portal):
    client, answer = _password(portal, "nina")  # network_manager: required
    assert answer.headers["Location"].endswith("/staff/two-factor/setup")
    setup = client.get("/staff/two-factor/setup")
    secret = re.search(r'<code id="totp-secret"[^>]*>([A-Z2-7]+)</code>', setup.text).group(1)
    assert "<svg" in setup.text and "<title>QR code" in setup.text
    assert client.get("/console/").status_code == 302  # not before the code
    token = re.search(r'name="csrf_token" value="([^"]+)"', setup.text).group(1)
    done = client.post(
        "/staff/two-factor/setup",
        data={"code": pyotp.TOTP(secret).at(portal.clock()), "csrf_token": token},
    )
    assert done.status_code == 200 and done.text.count("<li><code>") == 10
    assert client.get("/console/").status_code == 200
    assert ("nina", "staff.totp_on") in _audit(portal)


def test_an_account_without_a_code_signs_in_with_its_password(portal):
    client, answer = _password(portal, "tina")
    assert answer.headers["Location"].endswith("/staff/")
    assert client.get("/teacher/").status_code == 200


def test_an_identity_provider_callback_nobody_started_is_refused(tmp_path, gateway_config):
    text = gateway_config.read_text().replace(
        "  host: schoolgate.internal\n",
        "  host: schoolgate.internal\n"
        "  oidc:\n    providers:\n"
        "      - {name: entra, kind: entra, issuer: 'http://127.0.0.1:9/t/v2.0', client_id: x,"
        " client_secret: y, allowed_tenants: [t]}\n",
    )
    gateway_config.write_text(text)
    portal = Portal(tmp_path, gateway_config)
    client = portal.client()
    assert "Sign in with entra" in client.get("/staff/login").text
    answer = client.get("/staff/oidc/entra/callback?code=stolen&state=made-up")
    assert answer.status_code == 400 and "not started here" in answer.text
    assert client.get("/staff/oidc/nobody/start").status_code == 404
    assert client.get("/it/").status_code == 302
