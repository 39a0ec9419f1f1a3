"""Tried as a pupil would, through a real ``schoolgate run`` (explicit proxy on loopback, in a
lesson): each of the five classes of hole, in many shapes, with raw sockets, Python's ssl,
HTTP/2 frames, curl and ``openssl s_client``, against loopback origins that answer with a marker
of their own. Every attempt is refused (a 400 or 403, or a closed connection), a circumvention
event is written where one is due, and no origin ever sees the request that carries the pupil's
marker. A positive control in each class shows the same path works for what is allowed.

Addresses: 127.0.0.1 is a student (intercepted), 127.0.0.2 a visitor (``intercept: false``),
127.0.0.5 a member of staff (by network here). Origins: social.test (blocked) at 127.0.0.10,
gov.test (never decrypted) at 127.0.0.11, allowed.test at 127.0.0.12, the pupil's own server
attacker.test at 127.0.0.13, an allowed raw destination at 127.0.0.20.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from gateway_process import ROOT, free_port, run_cli, start_gateway, stop_gateway, wait_for
from marker_origins import MARKER, MarkerOrigin, TestCA, write_hosts
from tunnel_attacks import (
    DNS_QUERY,
    Outcome,
    connect,
    curl,
    h2_on,
    http_via,
    marker_request,
    open_from,
    raw_through,
    s_client,
    tls_through,
    tls_wrap,
)

STUDENT, VISITOR, STAFF = "127.0.0.1", "127.0.0.2", "127.0.0.5"
CONFIG = """
  - {cidr: 127.0.0.5/32, role: staff}
"""
EXTRA = """
interception:
  no_intercept:
    entries: [gov.test]
circumvention:
  filtered_roles: [student, visitor, guest]
  allowed_raw_destinations: ["127.0.0.20"]
  # The school's own network, reachable by address: here only two of the loopback addresses,
  # so that the pupil's server at 127.0.0.13 is "the internet".
  allowed_ip_literals: [127.0.0.12/32, 127.0.0.20/32]
"""


class Net:
    """The gateway, its origins and the names, for the whole module."""

    def __init__(self, tmp: Path) -> None:
        folder = tmp / "config"
        shutil.copytree(ROOT / "tests" / "data" / "gateway", folder)
        self.config = folder / "config.yaml"
        text = self.config.read_text().replace(
            "    - {cidr: 127.0.0.2/32, role: visitor}\n",
            "    - {cidr: 127.0.0.2/32, role: visitor}\n"
            + CONFIG.lstrip("\n").replace("  -", "    -"),
        )
        self.config.write_text(text + EXTRA)
        self.data_dir = tmp / "var"
        self.ca = TestCA(tmp / "origins-ca")
        everything = ["gov.test", "social.test", "attacker.test", "allowed.test"]
        self.origins = {
            "social_tls": MarkerOrigin("127.0.0.10", tls=self.ca.leaf(["social.test"])),
            "social": MarkerOrigin("127.0.0.10"),
            "gov_tls": MarkerOrigin("127.0.0.11", tls=self.ca.leaf(["gov.test"])),
            "allowed": MarkerOrigin("127.0.0.12"),
            "allowed_tls": MarkerOrigin(
                "127.0.0.12", tls=self.ca.leaf(["allowed.test", "doh.test"])
            ),
            "attacker_tls": MarkerOrigin("127.0.0.13", tls=self.ca.leaf(everything)),
            "attacker": MarkerOrigin("127.0.0.13"),
            "raw_allowed": MarkerOrigin("127.0.0.20"),
        }
        wrappers = (
            "web.archive.org translate.google.com social-test.translate.goog "
            "allowed-test.translate.goog webcache.googleusercontent.com archive.ph doh.test"
        ).split()
        self.hosts = write_hosts(
            tmp / "hosts",
            {
                "social.test": ["127.0.0.10"],
                "gov.test": ["127.0.0.11"],
                "allowed.test": ["127.0.0.12"],
                **{name: ["127.0.0.12"] for name in wrappers},
                "attacker.test": ["127.0.0.13"],
                "nowhere.test": [],
                "schoolgate.internal": [],
            },
        )
        self.port = free_port()
        self.proxy = ("127.0.0.1", self.port)
        self.log = tmp / "gateway.log"
        self.proc = start_gateway(
            self.config,
            self.data_dir,
            self.port,
            self.log,
            "--set",
            f"schoolgate_hosts_file={self.hosts}",
            "--set",
            f"ssl_verify_upstream_trusted_ca={self.ca.pem}",
            quiet=False,
        )
        self.gateway_ca = self.data_dir / "ca" / "mitmproxy-ca-cert.pem"

    def port_of(self, origin: str) -> int:
        return self.origins[origin].port

    def marker_seen(self) -> list[str]:
        return [name for name, origin in self.origins.items() if origin.saw(MARKER)]

    def events(self) -> list[dict]:
        return json.loads(
            run_cli(self.config, self.data_dir, "events", "--json", "--limit", "100000")
        )

    def stop(self) -> None:
        stop_gateway(self.proc, 20)
        for origin in self.origins.values():
            origin.close()


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    running = Net(tmp_path_factory.mktemp("tunnels"))
    yield running
    running.stop()


@pytest.fixture
def refused(net: Net):
    """Checks after a test: nothing carrying the marker reached any origin."""
    yield
    assert net.marker_seen() == [], net.log.read_text()[-3000:]


def circumvention_events(net: Net, before: int, wanted: int = 1) -> list[dict]:
    def found() -> list[dict]:
        events = [e for e in net.events() if e["kind"] == "circumvention"]
        return events[before:] if len(events) >= before + wanted else []

    return wait_for(found, timeout=20)


def count(net: Net) -> int:
    return len([e for e in net.events() if e["kind"] == "circumvention"])


def expect_refused(outcome: Outcome, what: str) -> None:
    assert outcome.refused, f"{what} was not refused: {outcome}"


# -- 1. TLS that is not decrypted, decided on the SNI alone ----------------------------------------


def test_class1_tunnels_naming_a_site_they_do_not_go_to(net: Net, refused) -> None:
    attacker = f"127.0.0.13:{net.port_of('attacker_tls')}"
    smuggled = marker_request("social.test")
    before = count(net)
    attempts = {
        "visitor, an address, the SNI of a site never decrypted": tls_through(
            net.proxy, attacker, "gov.test", smuggled, source=VISITOR
        ),
        "student, the SNI of a site never decrypted": tls_through(
            net.proxy, attacker, "gov.test", smuggled, source=STUDENT
        ),
        "visitor, HTTP/2 offered": tls_through(
            net.proxy, attacker, "gov.test", smuggled, source=VISITOR, alpn=["h2", "http/1.1"]
        ),
        "student, a name of its own and the SNI of another": tls_through(
            net.proxy,
            f"attacker.test:{net.port_of('attacker_tls')}",
            "gov.test",
            smuggled,
            source=STUDENT,
        ),
        "visitor, no SNI to an address": tls_through(
            net.proxy, attacker, None, smuggled, source=VISITOR
        ),
        "visitor, no SNI to an allowed name (a shared server serves any site inside)": (
            tls_through(
                net.proxy,
                f"allowed.test:{net.port_of('allowed_tls')}",
                None,
                smuggled,
                source=VISITOR,
            )
        ),
        "visitor, an IPv4-mapped IPv6 address": tls_through(
            net.proxy,
            f"[::ffff:127.0.0.13]:{net.port_of('attacker_tls')}",
            "gov.test",
            smuggled,
            source=VISITOR,
        ),
        "visitor, an SNI with no address": tls_through(
            net.proxy, attacker, "nowhere.test", smuggled, source=VISITOR
        ),
        "openssl s_client, visitor": s_client(
            "-proxy",
            f"127.0.0.1:{net.port}",
            "-connect",
            attacker,
            "-servername",
            "gov.test",
            request=smuggled,
        ),
        "curl --connect-to, visitor": curl(
            "-x",
            f"http://127.0.0.1:{net.port}",
            "--interface",
            VISITOR,
            "-k",
            "--connect-to",
            f"gov.test:{net.port_of('attacker_tls')}:127.0.0.13:{net.port_of('attacker_tls')}",
            "-H",
            "Host: social.test",
            f"https://gov.test:{net.port_of('attacker_tls')}/{MARKER.decode()}",
        ),
    }
    for what, outcome in attempts.items():
        if what.startswith("openssl"):
            assert not outcome.tls and b"origin-answered" not in outcome.data, (what, outcome)
        else:
            expect_refused(outcome, what)
    events = circumvention_events(net, before, wanted=6)
    verdicts = {
        e["detail"]["evidence"].get("verdict")
        for e in events
        if e["rule"] == "circumvention detector unverified_destination"
    }
    assert {"mismatch", "no_name", "unresolvable"} <= verdicts, events
    # The control: the same tunnel to where the name really is goes through, undecrypted.
    ok = tls_through(
        net.proxy,
        f"127.0.0.11:{net.port_of('gov_tls')}",
        "gov.test",
        b"GET /control HTTP/1.1\r\nHost: gov.test\r\nConnection: close\r\n\r\n",
        source=VISITOR,
    )
    assert ok.status == 200 and b"origin-answered" in ok.data, ok


# -- 2. tunnels that carry neither TLS nor HTTP ----------------------------------------------------

RAW = {
    "SSH": b"SSH-2.0-OpenSSH_9.2p1 " + MARKER + b"\r\n",
    "OpenVPN over TCP": b"\x00\x0e\x38" + bytes(range(8)) + MARKER,
    "SOCKS5": b"\x05\x01\x00" + MARKER,
    "random bytes (Shadowsocks, obfs4)": bytes([0xA7, 0x13, 0x9C, 0x00]) * 8 + MARKER,
    "a text protocol that is not HTTP": b"HELO " + MARKER + b"\r\n",
    "WireGuard-like": b"\x01\x00\x00\x00" + MARKER,
}


@pytest.mark.parametrize("source", [STUDENT, VISITOR])
def test_class2_raw_tunnels_are_refused(net: Net, refused, source: str) -> None:
    before = count(net)
    for what, payload in RAW.items():
        for target in (
            f"127.0.0.13:{net.port_of('attacker')}",
            f"attacker.test:{net.port_of('attacker')}",
        ):
            expect_refused(raw_through(net.proxy, target, payload, source=source), what)
    assert net.origins["attacker"].connections() == 0  # never even connected to
    events = circumvention_events(net, before, wanted=2)
    assert any(e["rule"] == "circumvention detector non_tls_tunnel" for e in events), events
    blocks = [e for e in net.events() if e["rule"] == "raw tunnel" and e["client_ip"] == source]
    assert blocks and blocks[-1]["category"] == "circumvention"


def test_class2_curl_telnet_through_the_proxy_is_refused(net: Net, refused) -> None:
    out = curl(
        "-x",
        f"http://127.0.0.1:{net.port}",
        "-p",
        "--data-binary",
        "@-",
        f"telnet://127.0.0.13:{net.port_of('attacker')}",
    )
    assert b"origin-answered" not in out.data and b"SSH-2.0" not in out.data, out


def test_class2_control_an_allowed_raw_destination_and_staff(net: Net) -> None:
    raw = raw_through(
        net.proxy,
        f"127.0.0.20:{net.port_of('raw_allowed')}",
        b"SSH-2.0-control\r\n",
        source=STUDENT,
    )
    assert b"SSH-2.0" in raw.data, raw
    staff = raw_through(
        net.proxy, f"127.0.0.13:{net.port_of('attacker')}", b"SSH-2.0-control\r\n", source=STAFF
    )
    assert b"SSH-2.0" in staff.data, staff


# -- 3. Host headers that are not one host ---------------------------------------------------------

SHAPES = [
    "social.test::",
    "social.test:80:",
    "social.test;",
    "social.test:",
    "social.test, allowed.test",
    "soc%69al.test",
    "2130706433",
    "social.test\\",
]


def test_class3_host_shapes_in_plain_http(net: Net, refused) -> None:
    address = f"127.0.0.10:{net.port_of('social')}"
    before = count(net)
    for shape in SHAPES:
        for target in (f"http://{address}/", "/"):  # absolute-form to an address; origin-form
            request = marker_request(shape, target)
            out = http_via(net.proxy, request, source=STUDENT)
            assert out.status == 400, (shape, target, out)
    two = marker_request("allowed.test", f"http://{address}/", extra="Host: social.test\r\n")
    assert http_via(net.proxy, two, source=STUDENT).status == 400
    events = circumvention_events(net, before)
    assert any(e["detail"]["evidence"].get("verdict") == "malformed" for e in events)
    # curl sends what it is told to
    for shape in ("social.test;", "social.test::"):
        out = curl("-x", f"http://127.0.0.1:{net.port}", "-H", f"Host: {shape}",
                   f"http://{address}/{MARKER.decode()}")  # fmt: skip
        assert out.status == 400, out


def test_class3_host_shapes_inside_intercepted_tls(net: Net, refused) -> None:
    target = f"allowed.test:{net.port_of('allowed_tls')}"
    for shape in SHAPES[:5]:
        out = tls_through(net.proxy, target, "allowed.test", marker_request(shape), source=STUDENT)
        assert out.status == 400, (shape, out)
    two = marker_request("allowed.test", extra="Host: social.test\r\n")
    assert tls_through(net.proxy, target, "allowed.test", two, source=STUDENT).status == 400


@pytest.mark.parametrize("authority", ["social.test::", "social.test;", "social.test:80:",
                                       "social.test, allowed.test", "soc%69al.test"])  # fmt: skip
def test_class3_http2_authority_shapes(net: Net, refused, authority: str) -> None:
    sock, status = connect(net.proxy, f"allowed.test:{net.port_of('allowed_tls')}", STUDENT)
    assert status == 200
    tls = tls_wrap(sock, "allowed.test", ["h2"])
    assert tls.selected_alpn_protocol() == "h2"
    out = h2_on(
        tls,
        [(":method", "GET"), (":scheme", "https"), (":authority", authority),
         (":path", f"/?m={MARKER.decode()}")],
    )  # fmt: skip
    assert out.status in (400, 403, None) and b"origin-answered" not in out.data, out


def test_class3_control_a_well_formed_host_gets_its_page(net: Net) -> None:
    ok = http_via(
        net.proxy,
        b"GET http://allowed.test:%d/control HTTP/1.1\r\nHost: ALLOWED.test.:%d\r\n"
        b"Connection: close\r\n\r\n" % (net.port_of("allowed"), net.port_of("allowed")),
        source=STUDENT,
    )
    assert ok.status == 200 and b"origin-answered" in ok.data, ok


# -- 4. a failure in one part must not let a request go on undecided -------------------------------


def test_class4_odd_paths_naming_the_gateway_never_go_upstream(net: Net, refused) -> None:
    allowed = f"127.0.0.12:{net.port_of('allowed')}"
    marker = MARKER.decode()
    requests = [
        f"GET //[x/{marker} HTTP/1.1\r\nHost: schoolgate.internal\r\n",
        f"GET http://schoolgate.internal//[x/{marker} HTTP/1.1\r\nHost: schoolgate.internal\r\n",
        f"GET http://{allowed}//[x/{marker} HTTP/1.1\r\nHost: schoolgate.internal\r\n",
        f"GET http://{allowed}/{marker} HTTP/1.1\r\nHost: SCHOOLGATE.internal.\r\n",
        f"GET //[::1]/{marker} HTTP/1.1\r\nHost: schoolgate.internal:80\r\n",
        f"GET /%/{marker} HTTP/1.1\r\nHost: schoolgate.internal\r\n",
        f"GET /?%zz={marker} HTTP/1.1\r\nHost: schoolgate.internal\r\n",
    ]
    for text in requests:
        out = http_via(net.proxy, (text + "Connection: close\r\n\r\n").encode(), source=STUDENT)
        assert out.status is not None and b"origin-answered" not in out.data, (text, out)
    sock, status = connect(net.proxy, "schoolgate.internal:443", STUDENT)
    assert status == 200
    inside = tls_wrap(sock, "schoolgate.internal")
    inside.sendall(f"GET //[x/{marker} HTTP/1.1\r\nHost: schoolgate.internal\r\n\r\n".encode())
    assert b"origin-answered" not in inside.recv(4096)
    inside.close()


# -- 5. wrappers, web proxies, DoH and DoT ---------------------------------------------------------


def test_class5_wrapped_sites_are_decided_on_what_they_wrap(net: Net, refused) -> None:
    p = net.port_of("allowed")
    m = MARKER.decode()
    before = count(net)
    urls = [
        f"http://web.archive.org:{p}/web/2024/http://social.test/{m}",
        f"http://translate.google.com:{p}/translate?u=http://social.test/{m}&sl=auto",
        f"http://social-test.translate.goog:{p}/{m}?_x_tr_sl=auto",
        f"http://webcache.googleusercontent.com:{p}/search?q=cache:social.test/{m}",
        f"http://archive.ph:{p}/newest/http://social.test/{m}",
        f"http://attacker.test:{net.port_of('attacker')}/browse.php?u=http://allowed.test/{m}",
    ]
    for url in urls:
        out = curl("-x", f"http://127.0.0.1:{net.port}", "-H", "Accept: text/html", url)
        assert out.status == 403, (url, out)
    # decided as social.test (social media), not as the archive (uncategorised: allowed)
    assert b"social media" in curl("-x", f"http://127.0.0.1:{net.port}", urls[0]).data
    events = circumvention_events(net, before, wanted=5)
    detectors = {e["rule"].rsplit(" ", 1)[-1] for e in events}
    assert {"wrapped_site", "web_proxy"} <= detectors
    ok = curl("-x", f"http://127.0.0.1:{net.port}",
              f"http://web.archive.org:{p}/web/2024/http://allowed.test/control")  # fmt: skip
    assert ok.status == 200 and b"origin-answered" in ok.data


def test_class5_doh_and_dot_are_blocked(net: Net, refused) -> None:
    p = net.port_of("allowed_tls")
    m = MARKER.decode()
    base = ["-x", f"http://127.0.0.1:{net.port}", "--cacert", str(net.gateway_ca)]
    before = count(net)
    attempts = {
        "GET": curl(*base, f"https://doh.test:{p}/dns-query?dns={DNS_QUERY}&m={m}"),
        "POST, HTTP/2": curl(*base, "--http2", "-H", "content-type: application/dns-message",
                             "--data-binary", "@-", f"https://doh.test:{p}/dns-query?m={m}"),
        "JSON": curl(*base, f"https://doh.test:{p}/resolve?name=social.test&type=A&m={m}"),
        "JSON by Accept": curl(*base, "-H", "accept: application/dns-json",
                               f"https://doh.test:{p}/query?name=social.test&m={m}"),
        "to an address": curl(*base, "-k", f"https://127.0.0.12:{p}/dns-query?dns={DNS_QUERY}&m={m}"),
    }  # fmt: skip
    for what, out in attempts.items():
        assert out.status == 403 and b"DNS" in out.data, (what, out)
    dot = connect(net.proxy, "doh.test:853", STUDENT)[1]
    assert dot == 403
    events = circumvention_events(net, before, wanted=5)
    assert {"doh", "dot"} <= {e["rule"].rsplit(" ", 1)[-1] for e in events}


# -- a ban closes what is already open (last: it bans a device for the rest of the module) -------

BANNED = "127.0.0.3"  # a device no network rule names: a guest (filtered, not decrypted)


def test_a_ban_closes_open_tunnels_and_websockets(net: Net) -> None:
    from schoolgate.storage.bans import add_ban
    from schoolgate.storage.db import open_database

    sock, status = connect(net.proxy, f"gov.test:{net.port_of('gov_tls')}", BANNED)
    assert status == 200
    tunnel = tls_wrap(sock, "gov.test")  # a tunnel that is not decrypted, open and idle
    ws = open_from(net.proxy, BANNED)
    port = net.port_of("allowed")
    ws.sendall(
        f"GET http://allowed.test:{port}/chat HTTP/1.1\r\nHost: allowed.test:{port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode()
    )
    assert ws.recv(4096).startswith(b"HTTP/1.1 101"), "the WebSocket did not open"
    sessions = open_database(f"sqlite:///{net.data_dir}/schoolgate.db")
    with sessions() as session:  # as the portal makes one
        add_ban(session, BANNED, by="it.support", minutes=60, reason="circumvention (test)")
        session.commit()

    def closed(sock) -> bool:
        sock.settimeout(0.5)
        try:
            return sock.recv(4096) == b""
        except (TimeoutError, BlockingIOError):
            return False
        except OSError:  # reset, or the TLS layer's view of a cut connection
            return True

    # the gateway reads the bans in force every few seconds (schoolgate_bans_interval)
    assert wait_for(lambda: closed(ws), timeout=30), net.log.read_text()[-2000:]
    assert wait_for(lambda: closed(tunnel), timeout=30), net.log.read_text()[-2000:]
    assert "open connection(s) of suspended users" in net.log.read_text()
    # and a new one meets the suspension
    again = tls_through(net.proxy, f"gov.test:{net.port_of('gov_tls')}", "gov.test",
                        b"GET / HTTP/1.1\r\nHost: gov.test\r\n\r\n", source=BANNED)  # fmt: skip
    assert again.refused, again
