"""Notifications reach a real SMTP server (aiosmtpd) and a webhook; failures are retried and
never lose a request."""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from mail import Inbox
from test_portal import Portal, item_id, post

from schoolgate.jobs.notify import SmtpSettings, backoff, smtp_settings_from
from schoolgate.storage.models import OutboxRow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def outbox(portal: Portal) -> list[OutboxRow]:
    with portal.sessions() as s:
        return list(s.query(OutboxRow).order_by(OutboxRow.id))


def settings(port: int, **kwargs) -> SmtpSettings:
    return SmtpSettings(
        host="127.0.0.1", port=port, sender="filter@school.test", timeout=5, **kwargs
    )


def test_new_requests_go_to_it_support_and_outcomes_to_the_requester(
    tmp_path, gateway_config, smtp_inbox
):
    inbox, port = smtp_inbox
    portal = Portal(tmp_path, gateway_config, smtp=settings(port, user_domain="pupils.school.test"))
    ref = portal.ask()
    sender = portal.app.extensions["schoolgate_portal"].sender
    assert sender.send_due() == (1, 0)
    ((to, message),) = inbox.messages
    assert to == ["alice@school.test"]  # the it_support account's address
    assert ref in message["Subject"] and "social.test" in message["Subject"]
    assert "Geography homework" in message.get_payload()
    assert f"http://schoolgate.internal/it/item/{item_id(portal, ref)}" in message.get_payload()

    client = portal.staff("alice")
    page = f"/it/item/{item_id(portal, ref)}"
    post(client, page, f"{page}/reject", reason="Use the library copy")
    assert sender.send_due() == (1, 0)
    to, message = inbox.messages[1]
    assert to == ["ben@pupils.school.test"]
    assert "rejected" in message["Subject"] and "Use the library copy" in message.get_payload()


def test_escalations_go_to_slt_addresses(tmp_path, gateway_config, smtp_inbox):
    inbox, port = smtp_inbox
    portal = Portal(
        tmp_path,
        gateway_config,
        smtp=settings(port, it_support=("it@school.test",), slt=("slt@school.test",)),
    )
    ref = portal.ask()
    page = f"/it/item/{item_id(portal, ref)}"
    post(portal.staff("alice"), page, f"{page}/escalate", note="Please decide")
    portal.app.extensions["schoolgate_portal"].sender.send_due()
    assert [to for to, _ in inbox.messages] == [["it@school.test"], ["slt@school.test"]]
    assert "Please decide" in inbox.messages[1][1].get_payload()


def test_a_failed_send_is_retried_with_backoff_and_the_request_is_kept(tmp_path, gateway_config):
    port = free_port()  # nothing listens here yet
    portal = Portal(tmp_path, gateway_config, smtp=settings(port))
    ref = portal.ask()
    assert portal.row(ref).status == "open"  # stored before any sending
    sender = portal.app.extensions["schoolgate_portal"].sender
    assert sender.send_due() == (0, 1)
    (row,) = outbox(portal)
    assert row.attempts == 1 and row.sent_at is None and "Error" in row.last_error
    assert row.next_attempt_at == portal.clock() + backoff(1)
    assert sender.send_due() == (0, 0)  # not due yet
    portal.clock.advance(seconds=31)
    assert sender.send_due() == (0, 1)
    assert outbox(portal)[0].next_attempt_at == portal.clock() + timedelta(seconds=60)

    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        portal.clock.advance(seconds=61)
        assert sender.send_due() == (1, 0)
        assert len(inbox.messages) == 1 and ref in inbox.messages[0][1]["Subject"]
        (row,) = outbox(portal)
        assert row.sent_at is not None and row.attempts == 3 and row.last_error is None
    finally:
        controller.stop()


def test_backoff_grows_and_is_capped():
    assert [backoff(n).total_seconds() for n in (1, 2, 3)] == [30, 60, 120]
    assert backoff(50) == timedelta(hours=1)


def test_the_sender_thread_delivers_in_the_background(tmp_path, gateway_config, smtp_inbox):
    inbox, port = smtp_inbox
    portal = Portal(tmp_path, gateway_config, smtp=settings(port))
    state = portal.app.extensions["schoolgate_portal"]
    state.sender.interval = 0.1
    state.sender.start()
    try:
        ref = portal.ask()
        inbox.wait(1)
        assert ref in inbox.messages[0][1]["Subject"]
    finally:
        state.sender.stop()


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_smtp_login(tmp_path, gateway_config):
    inbox = Inbox()
    port = free_port()

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and auth_data.password == b"relay-secret"
        return AuthResult(success=ok)

    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=port,
        authenticator=authenticator,
        auth_require_tls=False,
        auth_required=True,
    )
    controller.start()
    try:
        portal = Portal(
            tmp_path,
            gateway_config,
            smtp=settings(port, username="filter", password="relay-secret"),
        )
        portal.report()
        # IT Support, and the e-safety team (alerts.content_reports is on by default)
        assert portal.app.extensions["schoolgate_portal"].sender.send_due() == (2, 0)
        assert all("Content report" in m[1]["Subject"] for m in inbox.messages)
        # IT Support (alice) and, with no esafety addresses set, the SLT accounts (sam)
        assert sorted(to for to, _ in inbox.messages) == [
            ["alice@school.test"],
            ["sam@school.test"],
        ]
    finally:
        controller.stop()


class Hook(BaseHTTPRequestHandler):
    received: list[dict] = []
    fail = False

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if Hook.fail:
            self.send_response(500)
        else:
            Hook.received.append(json.loads(body))
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_webhook_gets_every_event_and_is_retried(tmp_path, gateway_config):
    server = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Hook.received = []
    try:
        url = f"http://127.0.0.1:{server.server_port}/hook"
        portal = Portal(tmp_path, gateway_config, webhook_url=url)
        sender = portal.app.extensions["schoolgate_portal"].sender
        Hook.fail = True
        ref = portal.ask()
        assert sender.send_due() == (0, 1)
        Hook.fail = False
        portal.clock.advance(minutes=1)
        assert sender.send_due() == (1, 0)
        (payload,) = Hook.received
        assert payload["event"] == "request.new" and payload["ref"] == ref
        assert payload["audience"] == "it_support"
        assert payload["link"].endswith(f"/it/item/{item_id(portal, ref)}")
    finally:
        server.shutdown()
        server.server_close()


def test_smtp_settings_from_config():
    assert smtp_settings_from(None) is None
    smtp = smtp_settings_from(
        {
            "host": "relay.school.test",
            "port": 587,
            "starttls": True,
            "username": "u",
            "password": "p",
            "from": "filter@school.test",
            "it_support": "it@school.test",
            "slt": ["head@school.test", "deputy@school.test"],
        }
    )
    assert (smtp.port, smtp.starttls, smtp.sender) == (587, True, "filter@school.test")
    assert smtp.it_support == ("it@school.test",)
    assert smtp.slt == ("head@school.test", "deputy@school.test")


def test_no_smtp_means_no_mail_but_the_request_is_kept(tmp_path, gateway_config):
    portal = Portal(tmp_path, gateway_config)
    ref = portal.ask()
    assert outbox(portal) == [] and portal.row(ref).status == "open"


def _test_ca_and_server_cert(folder):
    """A CA of the test's own and a certificate it signs for 127.0.0.1 (PEM files)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def name(text):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("School CA")).issuer_name(name("School CA"))
        .public_key(ca_key.public_key()).serial_number(1)
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(name("smtp.school.test")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(2)
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "server.pem").write_bytes(cert.public_bytes(pem))
    (folder / "server.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return folder / "ca.pem", folder / "server.pem", folder / "server.key"


def test_starttls_to_a_relay_signed_by_the_schools_own_ca(tmp_path, gateway_config):
    """A relay that requires STARTTLS: delivered when its CA is configured; with no CA the
    message stays in the outbox (retried), and nothing is sent in the clear."""
    import ssl

    ca_file, cert, key = _test_ca_and_server_cert(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    inbox = Inbox()
    port = free_port()
    controller = Controller(
        inbox, hostname="127.0.0.1", port=port, tls_context=server_tls, require_starttls=True
    )
    controller.start()
    try:
        portal = Portal(tmp_path, gateway_config, smtp=settings(port, starttls=True))
        ref = portal.ask()
        sender = portal.app.extensions["schoolgate_portal"].sender
        assert sender.send_due() == (0, 1)  # the relay's CA is not trusted: not sent
        assert inbox.messages == []
        (row,) = outbox(portal)
        assert row.sent_at is None and "CERTIFICATE_VERIFY_FAILED" in (row.last_error or "")

        # The network manager sets the school's CA: the same message goes at the next retry.
        sender.smtp = dataclasses.replace(sender.smtp, ca_file=str(ca_file))
        portal.clock.advance(seconds=31)
        assert sender.send_due() == (1, 0)
        assert len(inbox.messages) == 1 and ref in inbox.messages[0][1]["Subject"]
    finally:
        controller.stop()
