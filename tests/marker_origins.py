"""Loopback "internet" for the adversarial tests: origins that record every byte they are sent
and answer HTTP with a marker of their own, over plain TCP or TLS (certificates from a test CA
the gateway is told to trust), and a hosts file that tells the gateway's resolver where each
test name lives.

A pupil's attempt carries :data:`MARKER` (in its path, its Host, or its raw bytes); the tests
assert that no origin ever received it.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import socket
import ssl
import threading
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

MARKER = b"schoolgate-pupil-marker"
ORIGIN_ANSWER = b"origin-answered"


class TestCA:
    """A CA of the test's own and leaf certificates it signs (files in ``folder``)."""

    __test__ = False  # not a pytest class

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "schoolgate test origins CA")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.pem = folder / "origins-ca.pem"
        self.pem.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def leaf(self, names: Iterable[str]) -> tuple[Path, Path]:
        names = list(names)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
            )
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        cert_path = self.folder / f"{names[0]}.pem"
        key_path = self.folder / f"{names[0]}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert_path, key_path


class MarkerOrigin:
    """A server on ``host`` (a loopback address) and a free port that keeps every byte each
    connection sends (after TLS, when it speaks TLS) and answers anything that looks like an
    HTTP request with 200 and :data:`ORIGIN_ANSWER`. Anything else gets an SSH-like banner, so
    that a raw tunnel that reached it would see an answer."""

    def __init__(
        self, host: str = "127.0.0.1", *, tls: tuple[Path, Path] | None = None, port: int = 0
    ) -> None:
        self.host = host
        self.received: list[bytes] = []
        self._lock = threading.Lock()
        self.context = None
        if tls is not None:
            self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.context.load_cert_chain(*tls)
            self.context.set_alpn_protocols(["http/1.1"])
        self.sock = socket.create_server((host, port))
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def saw(self, needle: bytes = MARKER) -> bool:
        with self._lock:
            return any(needle in data for data in self.received)

    def connections(self) -> int:
        with self._lock:
            return len(self.received)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        data = bytearray()
        upgraded = False
        with self._lock:
            self.received.append(b"")
            index = len(self.received) - 1
        try:
            conn.settimeout(30)
            if self.context is not None:
                try:
                    conn = self.context.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError):
                    return
            while True:
                try:
                    chunk = conn.recv(65536)
                except (TimeoutError, OSError):
                    break
                if not chunk:
                    break
                data += chunk
                with self._lock:
                    self.received[index] = bytes(data)
                if (
                    b"\r\n\r\n" in data
                    and data[:1].isalpha()
                    and b"upgrade: websocket" in (bytes(data).lower())
                ):
                    if not upgraded:
                        conn.sendall(_websocket_accept(bytes(data)))
                        upgraded = True
                    continue  # a WebSocket: stays open, keeping what it is sent
                if b"\r\n\r\n" in data and data[:1].isalpha():
                    body = ORIGIN_ANSWER
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
                        + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                        + body
                    )
                    break
                if not data[:1].isalpha() or data.startswith(b"SSH-"):
                    conn.sendall(b"SSH-2.0-OpenSSH_9.2 origin\r\n")
        finally:
            with self._lock:
                self.received[index] = bytes(data)
            try:
                conn.close()
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


def _websocket_accept(request: bytes) -> bytes:
    """The 101 answer to a WebSocket handshake (RFC 6455)."""
    key = next(
        line.split(b":", 1)[1].strip()
        for line in request.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )


def write_hosts(path: Path, names: dict[str, Iterable[str]]) -> Path:
    """A hosts file for ``schoolgate_hosts_file``: name -> addresses (none: no address)."""
    lines = []
    for name, addresses in names.items():
        addresses = list(addresses) or ["0.0.0.0"]
        lines.extend(f"{address} {name}" for address in addresses)
    path.write_text("\n".join(lines) + "\n")
    return path
