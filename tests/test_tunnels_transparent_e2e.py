"""The adversarial suite in transparent mode: a pupils' VLAN (a network namespace of the
test's own) whose TCP 80 and 443 the router redirects to ``schoolgate run --mode transparent``
with nftables, as ``tests/test_transparent_e2e.py`` sets it up. There is no CONNECT: a pupil
connects straight to an address, names a site in the SNI or the Host header, and the gateway
must decide where the connection really goes.

Addresses on the router's side of the VLAN (a /29 of 10.213.0.0/16): .1 the router (gateway,
origin.test, social.test), .4 the pupil's own server (TLS and plain), .5 gov.test (never
decrypted), .6 allowed.test and doh.test (the school's network: reachable by address; an
allowed raw destination on port 80). The student is .2 (intercepted), the visitor .3 (not).
Every attempt carries the marker; no origin may ever see it.
"""

from __future__ import annotations

import json

import pytest
import yaml
from gateway_process import wait_for
from marker_origins import MARKER, MarkerOrigin, TestCA
from test_transparent_e2e import _REASON, Origin, Transparent, sh, split
from tunnel_attacks import DNS_QUERY, in_netns, marker_request

pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")

RAW = {
    "SSH": b"SSH-2.0-OpenSSH_9.2p1 " + MARKER + b"\r\n",
    "OpenVPN over TCP": b"\x00\x0e\x38" + bytes(range(8)) + MARKER,
    "SOCKS5": b"\x05\x01\x00" + MARKER,
    "random bytes": bytes([0xA7, 0x13, 0x9C, 0x00]) * 8 + MARKER,
    "WireGuard-like": b"\x01\x00\x00\x00" + MARKER,
}


class Attacked(Transparent):
    def __init__(self, tmp) -> None:
        super().__init__(tmp)
        base = self.host_ip.rsplit(".", 1)[0]
        self.attacker_ip, self.gov_ip, self.school_ip = (f"{base}.{n}" for n in (4, 5, 6))
        self.ca_origins = TestCA(tmp / "origins-ca")
        self.origins: dict[str, MarkerOrigin] = {}
        self.config.write_text(self._more_config())

    def _more_config(self) -> str:
        config = yaml.safe_load(self.config.read_text())
        base = self.host_ip.rsplit(".", 1)[0]
        config["interception"] = {"no_intercept": {"entries": ["gov.test"]}}
        config["circumvention"] = {
            "filtered_roles": ["student", "visitor", "guest"],
            "allowed_raw_destinations": [f"{base}.6:80"],
            "allowed_ip_literals": [f"{self.host_ip}/32", f"{base}.6/32"],
        }
        return yaml.safe_dump(config, sort_keys=False)

    @property
    def gateway_args(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("--set", f"ssl_verify_upstream_trusted_ca={self.ca_origins.pem}")

    def hosts(self) -> dict[str, list[str]]:
        return {
            **super().hosts(),
            "gov.test": [self.gov_ip],
            "allowed.test": [self.school_ip],
            "doh.test": [self.school_ip],
            "web.archive.org": [self.school_ip],
            "translate.google.com": [self.school_ip],
            "attacker.test": [self.attacker_ip],
            "nowhere.test": [],
            "schoolgate.internal": [],
        }

    def network_up(self) -> None:
        super().network_up()
        for address in (self.attacker_ip, self.gov_ip, self.school_ip):
            sh("ip", "addr", "add", f"{address}/{self.prefix}", "dev", self.host_if)

    def origin_up(self) -> None:
        super().origin_up()
        leaf = self.ca_origins.leaf
        everything = ["gov.test", "social.test", "allowed.test", "attacker.test"]
        self.origins = {
            "attacker_tls": MarkerOrigin(self.attacker_ip, port=443, tls=leaf(everything)),
            "attacker": MarkerOrigin(self.attacker_ip, port=80),
            "gov_tls": MarkerOrigin(self.gov_ip, port=443, tls=leaf(["gov.test"])),
            "school_tls": MarkerOrigin(
                self.school_ip, port=443, tls=leaf(["allowed.test", "doh.test"])
            ),
            "school": MarkerOrigin(self.school_ip, port=80),
        }

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            for origin in self.origins.values():
                origin.close()

    def marker_seen(self) -> list[str]:
        seen = [name for name, origin in self.origins.items() if origin.saw(MARKER)]
        if any(MARKER.decode() in path or MARKER.decode() in host for _, host, path in Origin.seen):
            seen.append("origin.test")
        return seen

    def attack(self, name: str, *args, **kwargs):
        return in_netns(self.ns, name, *args, **kwargs)

    def circumvention(self) -> list[dict]:
        return [e for e in self.events() if e["kind"] == "circumvention"]


@pytest.fixture(scope="module")
def tnet(tmp_path_factory):
    running = Attacked(tmp_path_factory.mktemp("tunnels-transparent"))
    try:
        running.start()
        yield running
    finally:
        running.stop()


@pytest.fixture
def refused(tnet: Attacked):
    yield
    assert tnet.marker_seen() == [], tnet.logs()[-3000:]


def new_events(tnet: Attacked, before: int, wanted: int) -> list[dict]:
    found = wait_for(lambda: len(tnet.circumvention()) >= before + wanted, timeout=20)
    assert found, tnet.logs()[-3000:]
    return tnet.circumvention()[before:]


# -- 1. TLS that is not decrypted, decided on the SNI alone ----------------------------------------


def test_class1_an_sni_that_is_not_the_destination(tnet: Attacked, refused) -> None:
    smuggled = marker_request("social.test")
    before = len(tnet.circumvention())
    attempts = {
        "visitor, the SNI of a site never decrypted": ("gov.test", tnet.visitor_ip),
        "student, the same": ("gov.test", tnet.student_ip),
        "visitor, no SNI": (None, tnet.visitor_ip),
        "visitor, an SNI with no address": ("nowhere.test", tnet.visitor_ip),
        "student, an allowed site's SNI": ("allowed.test", tnet.student_ip),
        "student, HTTP/2 offered": ("gov.test", tnet.student_ip),
    }
    for what, (sni, source) in attempts.items():
        alpn = ["h2", "http/1.1"] if "HTTP/2" in what else None
        out = tnet.attack(
            "tls_direct", tnet.attacker_ip, 443, sni, smuggled, source=source, alpn=alpn
        )
        assert out.refused, (what, out)
    s_client = sh(
        "ip", "netns", "exec", tnet.ns, "sh", "-c",
        f"printf 'GET /{MARKER.decode()} HTTP/1.1\\r\\nHost: social.test\\r\\n\\r\\n' | "
        f"timeout 10 openssl s_client -quiet -bind {tnet.visitor_ip}:0 "
        f"-connect {tnet.attacker_ip}:443 -servername gov.test",
        check=False,
    )  # fmt: skip
    assert b"origin-answered" not in s_client.stdout.encode()
    curl = tnet.curl(
        tnet.visitor_ip, "-k", "--resolve", f"gov.test:443:{tnet.attacker_ip}",
        "-H", "Host: social.test", f"https://gov.test/{MARKER.decode()}",
    )  # fmt: skip
    assert "origin-answered" not in curl.stdout
    events = new_events(tnet, before, 5)
    verdicts = {e["detail"]["evidence"].get("verdict") for e in events}
    assert {"mismatch", "no_name", "unresolvable"} <= verdicts
    # the control: to the site's own address, undecrypted, it goes through
    ok = tnet.attack(
        "tls_direct", tnet.gov_ip, 443, "gov.test",
        b"GET /control HTTP/1.1\r\nHost: gov.test\r\nConnection: close\r\n\r\n",
        source=tnet.visitor_ip,
    )  # fmt: skip
    assert ok.status == 200 and b"origin-answered" in ok.data, ok


# -- 2. tunnels that carry neither TLS nor HTTP ----------------------------------------------------


@pytest.mark.parametrize("port", [443, 80])
def test_class2_raw_bytes_to_a_web_port(tnet: Attacked, refused, port: int) -> None:
    before = len(tnet.circumvention())
    for what, payload in RAW.items():
        for source in (tnet.student_ip, tnet.visitor_ip):
            out = tnet.attack("raw_direct", tnet.attacker_ip, port, payload, source=source)
            assert out.refused, (what, source, out)
    assert tnet.origins["attacker"].connections() == 0
    events = new_events(tnet, before, 2)
    assert any(e["rule"] == "circumvention detector non_tls_tunnel" for e in events)
    # the control: an allowed raw destination
    ok = tnet.attack(
        "raw_direct", tnet.school_ip, 80, b"SSH-2.0-control\r\n", source=tnet.student_ip
    )
    assert b"SSH-2.0" in ok.data, ok


# -- 3. Host headers that are not one host ---------------------------------------------------------

SHAPES = ["social.test::", "social.test:80:", "social.test;", "social.test:",
          "social.test, allowed.test", "soc%69al.test", "2130706433"]  # fmt: skip


def test_class3_host_shapes(tnet: Attacked, refused) -> None:
    for shape in SHAPES:
        plain = tnet.curl(tnet.student_ip, "-H", f"Host: {shape}",
                          f"http://{tnet.host_ip}/{MARKER.decode()}")  # fmt: skip
        assert split(plain)[1] == "400", (shape, plain.stdout, plain.stderr)
        inside = tnet.attack(
            "tls_direct", tnet.school_ip, 443, "allowed.test", marker_request(shape),
            source=tnet.student_ip,
        )  # fmt: skip
        assert inside.status == 400, (shape, inside)
    two = tnet.attack(
        "tls_direct", tnet.school_ip, 443, "allowed.test",
        marker_request("allowed.test", extra="Host: social.test\r\n"), source=tnet.student_ip,
    )  # fmt: skip
    assert two.status == 400
    for authority in SHAPES[:5]:
        h2 = tnet.attack(
            "h2_direct", tnet.school_ip, 443, "allowed.test",
            [[":method", "GET"], [":scheme", "https"], [":authority", authority],
             [":path", f"/?m={MARKER.decode()}"]],
            source=tnet.student_ip,
        )  # fmt: skip
        assert h2.status in (400, 403, None) and b"origin-answered" not in h2.data, h2


def test_class3_a_named_site_at_another_address(tnet: Attacked, refused) -> None:
    for host in ("allowed.test", "gov.test", "nowhere.test", "attacker.test."):
        out = tnet.curl(tnet.student_ip, "-H", f"Host: {host}",
                        f"http://{tnet.host_ip}/{MARKER.decode()}")  # fmt: skip
        if host.startswith("attacker"):
            continue  # attacker.test is at .4: a request for it to .1 is a mismatch too
        assert split(out)[1] == "403", (host, out.stdout)


# -- 4. a failure in one part must not let a request go on undecided -------------------------------


def test_class4_odd_paths_naming_the_gateway(tnet: Attacked, refused) -> None:
    marker = MARKER.decode()
    for path in (f"//[x/{marker}", f"//[::1]/{marker}", f"/%/{marker}", f"/?%zz={marker}",
                 f"/ca/..%2f{marker}"):  # fmt: skip
        for host in ("schoolgate.internal", "SCHOOLGATE.internal.:80"):
            out = tnet.curl(tnet.student_ip, "--path-as-is", "-H", f"Host: {host}",
                            f"http://{tnet.host_ip}{path}")  # fmt: skip
            # answered by the gateway itself (its pages or the portal); the marker reached no
            # origin (the fixture checks)
            assert split(out)[1] != "000", out.stderr


# -- 5. wrappers and DoH ---------------------------------------------------------------------------


def test_class5_wrappers_and_doh(tnet: Attacked, refused) -> None:
    m = MARKER.decode()
    before = len(tnet.circumvention())
    wrapped = {
        "web.archive.org": f"/web/2024/http://social.test/{m}",
        "translate.google.com": f"/translate?u=http://social.test/{m}",
        "attacker.test": f"/browse.php?u=http://allowed.test/{m}",
    }
    for host, path in wrapped.items():
        address = tnet.attacker_ip if host == "attacker.test" else tnet.school_ip
        out = tnet.curl(tnet.student_ip, "-H", f"Host: {host}", f"http://{address}{path}")
        assert split(out)[1] == "403", (host, out.stdout)
    resolve = ["--cacert", str(tnet.ca), "--resolve", f"doh.test:443:{tnet.school_ip}"]
    doh = {
        "GET": tnet.curl(tnet.student_ip, *resolve, f"https://doh.test/dns-query?dns={DNS_QUERY}&m={m}"),
        "POST": tnet.curl(tnet.student_ip, *resolve, "--http2", "--data-binary", m,
                          "-H", "content-type: application/dns-message",
                          f"https://doh.test/dns-query?m={m}"),
        "JSON": tnet.curl(tnet.student_ip, *resolve,
                          f"https://doh.test/resolve?name=social.test&type=A&m={m}"),
    }  # fmt: skip
    for what, out in doh.items():
        assert split(out)[1] == "403", (what, out.stdout, out.stderr)
    events = new_events(tnet, before, 5)
    detectors = {e["rule"].rsplit(" ", 1)[-1] for e in events}
    assert {"wrapped_site", "web_proxy", "doh"} <= detectors, detectors
    assert json.dumps(events)  # evidence is serialisable
