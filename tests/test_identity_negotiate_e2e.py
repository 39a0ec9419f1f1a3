"""Windows single sign-on through the real gateway: an MIT Kerberos realm (Debian's krb5-kdc)
started by the test, `schoolgate run` with ``identity.negotiate`` (the realm's keytab for
``HTTP/localhost``, and an NTLM users file), and curl as the client: ``--proxy-negotiate`` with
a ticket from the realm, ``--proxy-ntlm`` with the account's password.

``teacher1`` is staff on the roster; the addresses it comes from are a student network. So a
request decided as teacher1 gets social media (allowed for staff), one decided on the network
is blocked. Each client uses an address of its own on loopback (127.0.0.x), because a
completed handshake binds its address (``bind_address``) for the requests that follow.
The gateway runs in ``upstream`` mode to a local origin, as in test_portal_e2e.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from gateway_process import run_cli, wait_for
from identity_gateway import UpstreamGateway
from kdc_server import KerberosRealm

PASSWORD = "Kerberos-teacher-1"


@pytest.fixture(scope="module")
def realm():
    realm = KerberosRealm()
    try:
        realm.start()
        realm.add_user("teacher1", PASSWORD)
        realm.add_service("HTTP/localhost", realm.base / "http.keytab")
        yield realm
    finally:
        realm.remove()


class NegotiateGateway(UpstreamGateway):
    def __init__(self, tmp: Path, realm: KerberosRealm) -> None:
        def edit(config: dict, folder: Path) -> None:
            users = folder / "ntlm-users"
            users.write_text(f"SCHOOL:teacher1:{PASSWORD}\n")
            config["identity"]["networks"].append({"cidr": "127.0.0.0/8", "role": "student"})
            config["identity"]["sources"] = ["negotiate"]
            config["identity"]["negotiate"] = {
                "keytab": str(realm.base / "http.keytab"),
                "service_host": "localhost",
                "realms": ["SCHOOL.TEST", "SCHOOL"],
                "ntlm": {"users_file": str(users)},
            }

        env = {**os.environ, **realm.env()}  # the realm's krb5.conf and replay cache
        env.pop("KRB5CCNAME")
        super().__init__(tmp, edit, roster="teacher1,staff,,1980-01-01\n", env=env)

    def curl(self, source: str, path: str, *args: str, env: dict | None = None):
        """curl from ``source`` through the gateway (named ``localhost``: the ticket is for
        HTTP/localhost); (status, headers and body)."""
        client_env = {k: v for k, v in os.environ.items() if not k.startswith(("KRB5", "NTLM"))}
        out = subprocess.run(
            ["curl", "-sS", "-D", "-", "--max-time", "20", "--interface", source]
            + ["-w", "\n%{http_code}", "--proxy", f"http://localhost:{self.port}", *args]
            + [f"http://social.test{path}"],
            capture_output=True,
            text=True,
            env={**client_env, **(env or {})},
            timeout=60,
        )
        text, _, code = out.stdout.rpartition("\n")
        return int(code or 0), text


@pytest.fixture
def gateway(tmp_path: Path, realm: KerberosRealm):
    running = NegotiateGateway(tmp_path, realm)
    yield running
    running.stop()


def test_kerberos_and_ntlm_through_the_gateway(gateway: NegotiateGateway, realm) -> None:
    # No credentials: the gateway asks for them (both schemes offered), nothing else happens.
    code, text = gateway.curl("127.0.0.7", "/nobody")
    assert code == 407
    offered = [line.split(":", 1)[1].strip() for line in text.splitlines() if
               line.lower().startswith("proxy-authenticate:")]  # fmt: skip
    assert offered == ["Negotiate", "NTLM"]

    # Kerberos: a ticket from the realm; the request is decided as teacher1 (staff).
    ticket = realm.kinit("teacher1", PASSWORD, realm.base / "cc-teacher1")
    code, text = gateway.curl(
        "127.0.0.1", "/kerberos", "--proxy-negotiate", "--proxy-user", ":", env=ticket
    )
    assert code == 200 and "origin GET http://social.test/kerberos" in text, text
    # The address is now bound to teacher1: a request with no credentials is teacher1's too.
    assert wait_for(lambda: gateway.curl("127.0.0.1", "/bound")[0] == 200, 20)
    who = json.loads(run_cli(gateway.config, gateway.data_dir, "who", "127.0.0.1", "--json"))
    assert [(b["user"], b["source"], b["origin"]) for b in who] == [
        ("teacher1", "negotiate", "negotiate (kerberos)")
    ]

    # NTLM with the account's password, from another address.
    code, text = gateway.curl(
        "127.0.0.5", "/ntlm", "--proxy-ntlm", "--proxy-user", f"SCHOOL\\teacher1:{PASSWORD}"
    )
    assert code == 200 and "origin GET http://social.test/ntlm" in text, text
    # A wrong password: asked again, and the address stays a student network's.
    code, _ = gateway.curl(
        "127.0.0.6", "/wrong", "--proxy-ntlm", "--proxy-user", "SCHOOL\\teacher1:wrong"
    )
    assert code == 407

    # ...and without credentials it is still only asked: never decided as somebody.
    assert gateway.curl("127.0.0.6", "/after-wrong")[0] == 407
