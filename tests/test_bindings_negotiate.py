"""Windows single sign-on against a real MIT Kerberos realm started by the test (Debian's
krb5kdc on loopback), with real clients: curl ``--proxy-negotiate`` and ``--proxy-ntlm``, and
pyspnego's client, through a small proxy front that answers 407 and runs the acceptor."""

from __future__ import annotations

import base64
import os
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import spnego
from kdc_server import KerberosRealm

from schoolgate.bindings.negotiate import (
    Handshakes,
    NegotiateAcceptor,
    NegotiateFailed,
    parse_authorization,
)
from schoolgate.core.identity_settings import NegotiateSettings

PUPIL_PASSWORD = "Kerberos-pupil-1"


@pytest.fixture(scope="module")
def realm() -> Iterator[KerberosRealm]:
    realm = KerberosRealm()
    saved = {k: os.environ.get(k) for k in ("KRB5_CONFIG", "KRB5RCACHEDIR", "KRB5_KTNAME")}
    try:
        realm.start()
        realm.add_user("pupil1", PUPIL_PASSWORD)
        realm.add_service("HTTP/localhost", realm.base / "http.keytab")
        realm.add_service("HTTP/other.school.test", realm.base / "other.keytab")
        # The acceptor runs in this process: it reads the realm's config from here.
        os.environ["KRB5_CONFIG"] = str(realm.krb5_conf)
        os.environ["KRB5RCACHEDIR"] = str(realm.rcache)
        yield realm
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for key in ("NTLM_USER_FILE", "LM_COMPAT_LEVEL"):
            os.environ.pop(key, None)
        realm.remove()


@pytest.fixture(scope="module")
def pupil_env(realm: KerberosRealm) -> dict[str, str]:
    """A client environment holding pupil1's ticket-granting ticket."""
    return realm.kinit("pupil1", PUPIL_PASSWORD, realm.base / "cc-pupil1")


def settings(realm: KerberosRealm, **changes) -> NegotiateSettings:
    users = realm.base / "ntlm-users"
    users.write_text(f"SCHOOL:pupil1:{PUPIL_PASSWORD}\n")
    values = dict(
        keytab=realm.base / "http.keytab",
        service_host="localhost",
        realms=("SCHOOL.TEST", "SCHOOL"),
        ntlm_users_file=users,
    )
    values.update(changes)
    return NegotiateSettings(**values)


def kerberos_token(env: dict[str, str], host: str = "localhost") -> str:
    saved = os.environ.get("KRB5CCNAME")
    os.environ["KRB5CCNAME"] = env["KRB5CCNAME"]
    try:
        client = spnego.client(hostname=host, service="HTTP", protocol="negotiate")
        return "Negotiate " + base64.b64encode(client.step()).decode()
    finally:
        if saved is None:
            os.environ.pop("KRB5CCNAME", None)
        else:
            os.environ["KRB5CCNAME"] = saved


class ProxyFront:
    """The proxy's side of the handshake, as the gateway will run it: 407 with the offered
    schemes, the handshake per client connection, the user name once known."""

    def __init__(self, acceptor: NegotiateAcceptor) -> None:
        handshakes = Handshakes(acceptor)
        self.handshakes = handshakes

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, body: str, headers: list[tuple[str, str]]) -> None:
                data = body.encode()
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                connection = f"{self.client_address[0]}:{self.client_address[1]}"
                value = self.headers.get("Proxy-Authorization")
                challenge = [("Proxy-Authenticate", s) for s in acceptor.schemes()]
                if not value:
                    self._send(407, "sign in", challenge)
                    return
                try:
                    result = handshakes.step(connection, value)
                except NegotiateFailed as exc:
                    self._send(407, f"refused: {exc}", challenge)
                    return
                scheme = value.split(" ", 1)[0]
                reply = (
                    [("Proxy-Authenticate", f"{scheme} {base64.b64encode(result.token).decode()}")]
                    if result.token
                    else []
                )
                if not result.complete:
                    self._send(407, "continue", reply)
                    return
                principal = result.principal
                assert principal is not None
                self._send(200, f"user={principal.name} via {result.protocol}", reply)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def curl(port: int, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    # The client has only what ``env`` gives it (not the acceptor's NTLM file of this process).
    client_env = {k: v for k, v in os.environ.items() if k not in ("NTLM_USER_FILE", "KRB5_KTNAME")}
    out = subprocess.run(
        ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "20"]
        + ["--proxy", f"http://localhost:{port}", *args, "http://intranet.school.test/"],
        capture_output=True,
        text=True,
        env={**client_env, **(env or {})},
        timeout=60,
    )
    body, _, code = out.stdout.rpartition("\n")
    return int(code or 0), body


def test_kerberos_ticket_names_the_user(realm: KerberosRealm, pupil_env) -> None:
    handshakes = Handshakes(NegotiateAcceptor(settings(realm)))
    result = handshakes.step("conn-1", kerberos_token(pupil_env))
    assert result.complete and result.protocol == "kerberos"
    assert result.principal is not None
    assert (result.principal.name, result.principal.realm) == ("pupil1", "school.test")
    assert result.token  # mutual authentication: the client can check the proxy too
    assert len(handshakes) == 0


def test_curl_negotiate_through_the_proxy(realm: KerberosRealm, pupil_env) -> None:
    front = ProxyFront(NegotiateAcceptor(settings(realm)))
    try:
        code, body = curl(front.port, "--proxy-negotiate", "--proxy-user", ":", env=pupil_env)
        assert (code, body) == (200, "user=pupil1 via kerberos")
        # Without a ticket there is nothing to offer: the proxy keeps asking.
        no_ticket = {**pupil_env, "KRB5CCNAME": f"FILE:{realm.base / 'empty-cc'}"}
        code, _ = curl(front.port, "--proxy-negotiate", "--proxy-user", ":", env=no_ticket)
        assert code == 407
    finally:
        front.close()


def test_curl_negotiate_falls_back_to_ntlm_without_a_ticket(realm: KerberosRealm) -> None:
    # A device off the domain: no Kerberos ticket, so the client's GSSAPI (with Debian's
    # gss-ntlmssp) answers Negotiate with NTLM, from the account's credentials.
    credentials = realm.base / "client-ntlm"
    credentials.write_text(f"SCHOOL:pupil1:{PUPIL_PASSWORD}\n")
    env = {
        **realm.env(realm.base / "no-ticket"),
        "NTLM_USER_FILE": str(credentials),
    }
    front = ProxyFront(NegotiateAcceptor(settings(realm)))
    try:
        code, body = curl(front.port, "--proxy-negotiate", "--proxy-user", ":", env=env)
        assert (code, body) == (200, "user=pupil1 via ntlm")
    finally:
        front.close()


def test_curl_ntlm_with_the_accounts_credentials(realm: KerberosRealm) -> None:
    front = ProxyFront(NegotiateAcceptor(settings(realm)))
    try:
        code, body = curl(
            front.port, "--proxy-ntlm", "--proxy-user", f"SCHOOL\\pupil1:{PUPIL_PASSWORD}"
        )
        assert (code, body) == (200, "user=pupil1 via ntlm")
        code, body = curl(front.port, "--proxy-ntlm", "--proxy-user", "SCHOOL\\pupil1:wrong")
        assert code == 407 and "user=" not in body
    finally:
        front.close()


def test_ntlm_inside_negotiate_from_pyspnego(realm: KerberosRealm) -> None:
    handshakes = Handshakes(NegotiateAcceptor(settings(realm)))
    client = spnego.client(
        "SCHOOL\\pupil1", PUPIL_PASSWORD, hostname="localhost", service="HTTP", protocol="ntlm"
    )
    first = handshakes.step("conn-2", "Negotiate " + base64.b64encode(client.step()).decode())
    assert not first.complete and first.token
    assert len(handshakes) == 1  # the challenge's context waits for the same connection
    final = handshakes.step(
        "conn-2", "Negotiate " + base64.b64encode(client.step(first.token)).decode()
    )
    assert final.complete and final.protocol == "ntlm"
    assert final.principal is not None and final.principal.name == "pupil1"
    # The answer on another connection has no challenge to match: refused.
    client = spnego.client("SCHOOL\\pupil1", PUPIL_PASSWORD, protocol="ntlm")
    challenge = handshakes.step("conn-3", "NTLM " + base64.b64encode(client.step()).decode())
    answer = "NTLM " + base64.b64encode(client.step(challenge.token)).decode()
    with pytest.raises(NegotiateFailed):
        handshakes.step("conn-4", answer)


def test_ntlm_is_refused_unless_configured(realm: KerberosRealm) -> None:
    users = realm.base / "inherited-ntlm-users"
    users.write_text(f"SCHOOL:pupil1:{PUPIL_PASSWORD}\n")
    os.environ["NTLM_USER_FILE"] = str(users)  # from the service's environment, say
    acceptor = NegotiateAcceptor(settings(realm, ntlm_users_file=None))
    assert acceptor.schemes() == ["Negotiate"]
    assert "NTLM_USER_FILE" not in os.environ
    for scheme in ("NTLM", "Negotiate"):
        with pytest.raises(NegotiateFailed):
            ntlm_handshake(Handshakes(acceptor), scheme)
    # Even if something sets it again later, the config decides.
    os.environ["NTLM_USER_FILE"] = str(users)
    try:
        with pytest.raises(NegotiateFailed, match="NTLM is not enabled"):
            ntlm_handshake(Handshakes(acceptor), "Negotiate")
    finally:
        os.environ.pop("NTLM_USER_FILE", None)


def ntlm_handshake(handshakes: Handshakes, scheme: str):
    client = spnego.client("SCHOOL\\pupil1", PUPIL_PASSWORD, protocol="ntlm")
    first = handshakes.step("conn-5", f"{scheme} {base64.b64encode(client.step()).decode()}")
    return handshakes.step(
        "conn-5", f"{scheme} {base64.b64encode(client.step(first.token)).decode()}"
    )


def test_a_ticket_for_another_service_is_refused(realm: KerberosRealm, pupil_env) -> None:
    token = kerberos_token(pupil_env, host="other.school.test")
    with pytest.raises(NegotiateFailed):
        Handshakes(NegotiateAcceptor(settings(realm))).step("conn-6", token)


def test_a_replayed_token_is_refused(realm: KerberosRealm, pupil_env) -> None:
    handshakes = Handshakes(NegotiateAcceptor(settings(realm)))
    token = kerberos_token(pupil_env)
    assert handshakes.step("conn-7", token).complete
    with pytest.raises(NegotiateFailed):
        handshakes.step("conn-8", token)


def test_other_realms_are_refused(realm: KerberosRealm, pupil_env) -> None:
    acceptor = NegotiateAcceptor(settings(realm, realms=("PARTNER.TEST",)))
    with pytest.raises(NegotiateFailed, match="not in an accepted realm"):
        Handshakes(acceptor).step("conn-9", kerberos_token(pupil_env))


@pytest.mark.parametrize(
    "value",
    [
        "Basic cHVwaWwxOnB3",
        "Negotiate",
        "Negotiate !!!not-base64!!!",
        "Negotiate " + base64.b64encode(b"\x60\x82garbage" * 20).decode(),
        "NTLM " + base64.b64encode(b"NTLMSSP\x00\x03" + b"\x00" * 40).decode(),
        "Negotiate " + "A" * (100 * 1024),
    ],
)
def test_malformed_answers_are_refused(realm: KerberosRealm, value: str) -> None:
    with pytest.raises(NegotiateFailed):
        Handshakes(NegotiateAcceptor(settings(realm))).step("conn-10", value)


def test_unfinished_handshakes_are_bounded(realm: KerberosRealm) -> None:
    handshakes = Handshakes(NegotiateAcceptor(settings(realm)), limit=2)
    for number in range(5):
        client = spnego.client("SCHOOL\\pupil1", PUPIL_PASSWORD, protocol="ntlm")
        handshakes.step(f"conn-{number}", "NTLM " + base64.b64encode(client.step()).decode())
    assert len(handshakes) == 2
    handshakes.forget("conn-4")
    assert len(handshakes) == 1


def test_parse_authorization() -> None:
    assert parse_authorization("negotiate  YWJj ") == ("Negotiate", b"abc")
    assert parse_authorization("NTLM YWJj") == ("NTLM", b"abc")
    with pytest.raises(NegotiateFailed):
        parse_authorization("Bearer YWJj")
