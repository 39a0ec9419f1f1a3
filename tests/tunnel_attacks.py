"""A pupil's ways round the filter, as raw bytes on real sockets: what the adversarial
end-to-end tests send through a real gateway (explicit proxy and transparent mode).

Each attack carries :data:`~marker_origins.MARKER` and returns an :class:`Outcome`: what came
back, if anything. The tests assert that the outcome is a refusal and that no origin ever saw
the marker.
"""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import h2.config
import h2.connection
import h2.events
from marker_origins import MARKER

TIMEOUT = 8.0
# A DNS query for social.test's address, as DoH sends it (base64url, RFC 8484).
DNS_QUERY = (
    base64.urlsafe_b64encode(
        bytes.fromhex("abcd01000001000000000000") + b"\x06social\x04test\x00\x00\x01\x00\x01"
    )
    .rstrip(b"=")
    .decode()
)


@dataclass
class Outcome:
    """What a pupil's attempt got: the CONNECT answer, whether TLS came up, the HTTP status
    (None: no HTTP answer) and the bytes read."""

    connect: int | None = None
    tls: bool | None = None
    status: int | None = None
    data: bytes = b""
    error: str = ""

    @property
    def refused(self) -> bool:
        """Refused: a CONNECT answered with an error, a TLS handshake or connection cut, or
        an HTTP 400 or 403 from the gateway, never an origin's answer."""
        if self.connect is not None and self.connect != 200:
            return True
        if self.status is not None:
            return self.status in (400, 403) and b"origin-answered" not in self.data
        return b"origin-answered" not in self.data and b"SSH-2.0" not in self.data


def _status(data: bytes) -> int | None:
    if data.startswith(b"HTTP/"):
        try:
            return int(data.split(b" ", 2)[1])
        except (IndexError, ValueError):
            return None
    return None


def _read_all(sock: socket.socket, limit: int = 65536) -> bytes:
    data = b""
    try:
        while len(data) < limit:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data:
                head, _, body = data.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    None,
                )
                if length is not None and len(body) >= length:
                    break
    except (TimeoutError, OSError, ssl.SSLError):
        pass
    return data


def open_from(address: tuple[str, int], source: str) -> socket.socket:
    return socket.create_connection(address, timeout=TIMEOUT, source_address=(source, 0))


def connect(proxy: tuple[str, int], target: str, source: str) -> tuple[socket.socket, int]:
    """A CONNECT tunnel through the explicit proxy: the socket and the answer's status."""
    sock = open_from(proxy, source)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return sock, _status(head) or 0


def marker_request(host: str, path: str = "/", method: str = "GET", extra: str = "") -> bytes:
    return (
        f"{method} {path}{'&' if '?' in path else '?'}m={MARKER.decode()} HTTP/1.1\r\n"
        f"Host: {host}\r\n{extra}Connection: close\r\n\r\n"
    ).encode()


def tls_wrap(sock: socket.socket, sni: str | None, alpn: list[str] | None = None) -> ssl.SSLSocket:
    """TLS as a pupil's tool does it: any certificate accepted."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(alpn)
    return context.wrap_socket(sock, server_hostname=sni)


def tls_through(
    proxy: tuple[str, int],
    target: str,
    sni: str | None,
    request: bytes,
    *,
    source: str,
    alpn: list[str] | None = None,
) -> Outcome:
    """CONNECT ``target``, TLS with ``sni``, then ``request`` inside."""
    out = Outcome()
    try:
        sock, out.connect = connect(proxy, target, source)
    except OSError as exc:
        return Outcome(error=str(exc))
    if out.connect != 200:
        sock.close()
        return out
    return tls_on(sock, sni, request, alpn=alpn, out=out)


def tls_on(
    sock: socket.socket,
    sni: str | None,
    request: bytes,
    *,
    alpn: list[str] | None = None,
    out: Outcome | None = None,
) -> Outcome:
    out = out or Outcome()
    try:
        tls = tls_wrap(sock, sni, alpn)
    except (ssl.SSLError, OSError) as exc:
        out.tls, out.error = False, str(exc)
        sock.close()
        return out
    out.tls = True
    try:
        tls.sendall(request)
        out.data = _read_all(tls)
    except (ssl.SSLError, OSError) as exc:
        out.error = str(exc)
    finally:
        tls.close()
    out.status = _status(out.data)
    return out


def raw_through(proxy: tuple[str, int], target: str, payload: bytes, *, source: str) -> Outcome:
    """CONNECT ``target`` and send ``payload`` (SSH, a VPN, anything) inside."""
    out = Outcome()
    sock, out.connect = connect(proxy, target, source)
    if out.connect == 200:
        out.data = raw_on(sock, payload)
        out.status = _status(out.data)
    sock.close()
    return out


def raw_on(sock: socket.socket, payload: bytes) -> bytes:
    try:
        sock.sendall(payload)
        sock.settimeout(3)
        return _read_all(sock)
    except OSError:
        return b""


def http_via(proxy: tuple[str, int], request: bytes, *, source: str) -> Outcome:
    """A plain-HTTP request, as bytes, sent to the explicit proxy (absolute-form or not)."""
    sock = open_from(proxy, source)
    data = raw_on(sock, request)
    sock.close()
    return Outcome(status=_status(data), data=data)


def h2_on(tls: ssl.SSLSocket, headers: list[tuple[str, str]]) -> Outcome:
    """One HTTP/2 request with exactly these headers (pseudo-headers included, any shape:
    the h2 library is told not to check them) on an open TLS socket."""
    config = h2.config.H2Configuration(
        client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False
    )
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    conn.send_headers(1, headers, end_stream=True)
    out = Outcome(tls=True)
    try:
        tls.sendall(conn.data_to_send())
        tls.settimeout(5)
        done = False
        while not done:
            chunk = tls.recv(65536)
            if not chunk:
                break
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.ResponseReceived):
                    out.status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    out.data += event.data
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    done = True
                elif isinstance(event, h2.events.ConnectionTerminated):
                    done = True
            tls.sendall(conn.data_to_send())
    except (OSError, ssl.SSLError) as exc:
        out.error = str(exc)
    finally:
        tls.close()
    return out


def curl(*args: str, netns: str | None = None) -> Outcome:
    """curl (optionally from inside a network namespace); the status it reports."""
    command = ["curl", "-sS", "--max-time", "8", "-o", "-", "-w", "\n%{http_code}", *args]
    if netns:
        command = ["ip", "netns", "exec", netns, *command]
    run = subprocess.run(command, capture_output=True, timeout=30)
    body, _, code = run.stdout.rpartition(b"\n")
    status = int(code) if code.strip().isdigit() and int(code) else None
    return Outcome(status=status, data=body, error=run.stderr.decode(errors="replace"))


def s_client(*args: str, request: bytes, netns: str | None = None, timeout: float = 15) -> Outcome:
    """``openssl s_client`` with ``request`` on its stdin: did the handshake complete, and
    what came back."""
    command = ["openssl", "s_client", "-quiet", "-ign_eof", *args]
    if netns:
        command = ["ip", "netns", "exec", netns, *command]
    try:
        run = subprocess.run(command, input=request, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return Outcome(tls=None, data=exc.stdout or b"", error="timed out")
    handshake = b"verify" in run.stderr.lower() or bool(run.stdout)
    return Outcome(
        tls=handshake and b"error" not in run.stderr.lower(),
        status=_status(run.stdout),
        data=run.stdout,
        error=run.stderr.decode(errors="replace"),
    )


# -- transparent mode: straight to the address (the router redirects it to the gateway) ---------


def tls_direct(
    address: str,
    port: int,
    sni: str | None,
    request: bytes,
    *,
    source: str,
    alpn: list[str] | None = None,
) -> Outcome:
    try:
        sock = open_from((address, port), source)
    except OSError as exc:
        return Outcome(error=str(exc))
    return tls_on(sock, sni, request, alpn=alpn)


def raw_direct(address: str, port: int, payload: bytes, *, source: str) -> Outcome:
    try:
        sock = open_from((address, port), source)
    except OSError as exc:
        return Outcome(error=str(exc))
    data = raw_on(sock, payload)
    sock.close()
    return Outcome(status=_status(data), data=data)


def h2_direct(
    address: str, port: int, sni: str, headers: list[tuple[str, str]], *, source: str
) -> Outcome:
    try:
        tls = tls_wrap(open_from((address, port), source), sni, ["h2"])
    except (OSError, ssl.SSLError) as exc:
        return Outcome(tls=False, error=str(exc))
    return h2_on(tls, [tuple(h) for h in headers])


_DIRECT = {"tls_direct": tls_direct, "raw_direct": raw_direct, "h2_direct": h2_direct}


def in_netns(netns: str, attack: str, *args, **kwargs) -> Outcome:
    """Run one of the direct attacks from inside a network namespace (a pupil's VLAN)."""
    import base64
    import json
    import sys

    spec = json.dumps(
        {
            "attack": attack,
            "args": [base64.b64encode(a).decode() if isinstance(a, bytes) else a for a in args],
            "bytes": [i for i, a in enumerate(args) if isinstance(a, bytes)],
            "kwargs": kwargs,
        }
    )
    here = str(Path(__file__).resolve().parent)
    run = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c",
         f"import sys; sys.path.insert(0, {here!r}); import tunnel_attacks; "
         "tunnel_attacks._main()"],
        input=spec.encode(),
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    if run.returncode != 0:
        raise RuntimeError(run.stderr.decode(errors="replace"))
    found = json.loads(run.stdout)
    found["data"] = base64.b64decode(found["data"])
    return Outcome(**found)


def _main() -> None:
    import base64
    import json
    import sys
    from dataclasses import asdict

    spec = json.loads(sys.stdin.read())
    args = [base64.b64decode(a) if i in spec["bytes"] else a for i, a in enumerate(spec["args"])]
    outcome = asdict(_DIRECT[spec["attack"]](*args, **spec["kwargs"]))
    outcome["data"] = base64.b64encode(outcome["data"]).decode()
    print(json.dumps(outcome))
