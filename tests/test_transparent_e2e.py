"""Transparent mode for real: a network namespace of the test's own, its traffic NATed to the
gateway with nftables, the way a school redirects a pupils' VLAN.

    client namespace (sgt-<id>)              host namespace
    10.213.N.2 student, 10.213.N.3 visitor   10.213.N.1 (veth): origin on :80,
    default route via 10.213.N.1   --veth--> `schoolgate run --mode transparent` on :P,
                                             nft table ip sgt_<id>: iifname <veth> tcp dport
                                             {80, 443} redirect to :P

Everything (namespace, veth pair, nft table) has a name of this run's own and is removed in a
finalizer even when a test fails; nothing else on the machine is touched. Needs root, ``ip
netns`` and ``nft`` (Debian's ``nftables``, which ``./run-tests`` installs as root); skipped
otherwise.

nftables rather than iptables: the test keeps its rules in a table of its own, removed in one
``nft delete table`` (no rule-by-rule bookkeeping, no chance of deleting someone else's
rule), and it is Debian's default firewall (its ``iptables`` is a front end to it anyway).
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from gateway_process import ROOT, free_port, start_gateway, stop_gateway, wait_for
from marker_origins import write_hosts

ORIGIN_MARK = "schoolgate-test-origin"


def _skip_reason() -> str | None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "transparent-mode test needs root (network namespaces and nftables)"
    if shutil.which("ip") is None:
        return "transparent-mode test needs `ip` (iproute2) for network namespaces"
    if shutil.which("nft") is None:
        return "transparent-mode test needs `nft` (Debian package nftables)"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`ip netns` is unavailable: {probe.stderr.strip()}"
    return None


_REASON = _skip_reason()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(list(args), capture_output=True, text=True, timeout=20)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
    return out


class Origin(BaseHTTPRequestHandler):
    """Answers everything with a marker only it sets, and remembers who asked for what."""

    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, str, str]] = []  # (peer address, Host header, path)

    def do_GET(self) -> None:
        Origin.seen.append((self.client_address[0], self.headers.get("host", ""), self.path))
        body = f"{ORIGIN_MARK} {self.path}".encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("x-origin", ORIGIN_MARK)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def _free_subnet() -> ipaddress.IPv4Network:
    """A /29 in 10.213.0.0/16 that no address or route on this machine is in."""
    used = sh("ip", "-4", "-o", "addr", "show").stdout + sh("ip", "-4", "route", "show").stdout
    for _ in range(50):
        net = ipaddress.ip_network(f"10.213.{random.randrange(256)}.0/29")
        if f"10.213.{net.network_address.packed[2]}." not in used:
            return net
    raise RuntimeError("no free 10.213.x.0/29 test subnet")


class Transparent:
    """The namespace, veth pair, nft table, origin and gateway of one test run."""

    def __init__(self, tmp: Path) -> None:
        tag = f"{os.getpid() % 10000:04d}{random.randrange(16**4):04x}"
        self.ns = f"sgt-{tag}"
        self.host_if = f"sgt{tag}h"  # <= 15 characters
        self.peer_if = f"sgt{tag}c"
        self.table = f"sgt_{tag}"
        net = _free_subnet()
        hosts = list(net.hosts())
        self.host_ip, self.student_ip, self.visitor_ip = (str(h) for h in hosts[:3])
        self.prefix = net.prefixlen
        self.tmp = tmp
        self.port = 0
        self.cleanups: list[tuple[str, ...]] = []
        self.origin: ThreadingHTTPServer | None = None
        self.proc: subprocess.Popen | None = None
        self.log = tmp / "gateway.log"
        self.data_dir = tmp / "var"
        self.ca = self.data_dir / "ca" / "mitmproxy-ca-cert.pem"
        self.config = self._write_config()

    # -- set-up ---------------------------------------------------------------------------------
    def _write_config(self) -> Path:
        folder = self.tmp / "config"
        shutil.copytree(ROOT / "tests" / "data" / "gateway", folder)
        path = folder / "config.yaml"
        config = yaml.safe_load(path.read_text())
        config["identity"]["networks"] = [
            {"cidr": f"{self.student_ip}/32", "role": "student"},
            {"cidr": f"{self.visitor_ip}/32", "role": "visitor"},
        ]
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def network_up(self) -> None:
        created = subprocess.run(["ip", "netns", "add", self.ns], capture_output=True, text=True)
        if created.returncode != 0:
            pytest.skip(f"cannot create a network namespace: {created.stderr.strip()}")
        self.cleanups.append(("ip", "netns", "delete", self.ns))
        sh("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.peer_if)
        self.cleanups.append(("ip", "link", "delete", self.host_if))  # takes the peer with it
        sh("ip", "link", "set", self.peer_if, "netns", self.ns)
        sh("ip", "addr", "add", f"{self.host_ip}/{self.prefix}", "dev", self.host_if)
        sh("ip", "link", "set", self.host_if, "up")
        inside = ("ip", "netns", "exec", self.ns)
        sh(*inside, "ip", "link", "set", "lo", "up")
        sh(*inside, "ip", "addr", "add", f"{self.student_ip}/{self.prefix}", "dev", self.peer_if)
        sh(*inside, "ip", "addr", "add", f"{self.visitor_ip}/{self.prefix}", "dev", self.peer_if)
        sh(*inside, "ip", "link", "set", self.peer_if, "up")
        sh(*inside, "ip", "route", "add", "default", "via", self.host_ip)

    def firewall_up(self) -> None:
        # The rules docs/gateway.md gives, in a table of the test's own.
        rules = (
            f"table ip {self.table} {{\n"
            "  chain prerouting {\n"
            "    type nat hook prerouting priority dstnat; policy accept;\n"
            f'    iifname "{self.host_if}" tcp dport {{ 80, 443 }} redirect to :{self.port}\n'
            "  }\n"
            "}\n"
        )
        made = subprocess.run(["nft", "-f", "-"], input=rules, capture_output=True, text=True)
        if made.returncode != 0:
            pytest.skip(f"nftables NAT is unavailable: {made.stderr.strip()}")
        self.cleanups.append(("nft", "delete", "table", "ip", self.table))

    def origin_up(self) -> None:
        Origin.seen = []
        self.origin = ThreadingHTTPServer((self.host_ip, 80), Origin)
        threading.Thread(target=self.origin.serve_forever, daemon=True).start()

    gateway_args: tuple[str, ...] = ()  # more `schoolgate run` arguments (a subclass's)

    # The names the tests use, as the school's DNS would answer them: the gateway checks every
    # name against the address the client connected to, with its own resolver.
    def hosts(self) -> dict[str, list[str]]:
        return {name: [self.host_ip] for name in ("origin.test", "social.test")}

    def gateway_up(self) -> None:
        hosts = write_hosts(self.tmp / "hosts", self.hosts())
        self.proc = start_gateway(
            self.config,
            self.data_dir,
            self.port,
            self.log,
            "--mode",
            "transparent",
            "--set",
            f"schoolgate_hosts_file={hosts}",
            *self.gateway_args,
            listen_host=self.host_ip,
            quiet=False,  # the tests read the flow lines in the log
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def start(self) -> None:
        self.network_up()
        self.port = free_port(self.host_ip)
        self.firewall_up()
        self.origin_up()
        self.gateway_up()

    # -- tear-down ------------------------------------------------------------------------------
    def stop(self) -> None:
        stop_gateway(self.proc, 15)
        if self.origin is not None:
            self.origin.shutdown()
            self.origin.server_close()
        problems = []
        for command in reversed(self.cleanups):
            out = subprocess.run(command, capture_output=True, text=True, timeout=20)
            # The veth goes with the namespace's end of it; anything else is worth a report.
            if out.returncode != 0 and command[:3] != ("ip", "link", "delete"):
                problems.append(f"{' '.join(command)}: {out.stderr.strip()}")
        self.cleanups = []
        assert not problems, "clean-up failed: " + "; ".join(problems)

    # -- helpers --------------------------------------------------------------------------------
    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def curl(self, source: str, *args: str) -> subprocess.CompletedProcess:
        """curl from inside the namespace, from ``source`` (the student's or the visitor's
        address). Prints the status after the body, on a line of its own."""
        return subprocess.run(
            ["ip", "netns", "exec", self.ns, "curl", "-sS", "--max-time", "10"]
            + ["--interface", source, "-w", "\n%{http_code}", *args],
            capture_output=True,
            text=True,
            timeout=20,
        )

    def events(self) -> list[dict]:
        out = subprocess.run(
            [sys.executable, "-m", "schoolgate.cli", "events", "--json", "--limit", "1000"]
            + ["--config", str(self.config), "--data-dir", str(self.data_dir)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    running = Transparent(tmp_path_factory.mktemp("transparent"))
    try:
        running.start()
        yield running
    finally:
        running.stop()


def split(out: subprocess.CompletedProcess) -> tuple[str, str]:
    body, _, status = out.stdout.rpartition("\n")
    return body, status


def test_allowed_http_goes_through_the_gateway_to_the_origin(net: Transparent) -> None:
    path = f"/allowed-{random.randrange(10**9)}"
    out = net.curl(
        net.student_ip,
        "-D",
        "-",
        "--resolve",
        f"origin.test:80:{net.host_ip}",
        f"http://origin.test{path}",
    )
    body, status = split(out)
    assert status == "200", (out.stderr, net.logs())
    assert f"x-origin: {ORIGIN_MARK}" in body.lower() and body.endswith(f"{ORIGIN_MARK} {path}")
    # The origin was asked by the gateway (the veth's host address), not by the student:
    # the connection was redirected, and mitmproxy made its own to the original destination.
    assert (net.host_ip, "origin.test", path) in Origin.seen, Origin.seen
    assert not [s for s in Origin.seen if s[0] == net.student_ip]
    # ...and the gateway saw and passed it (the flow is in its log, nothing blocked).
    assert wait_for(lambda: path in net.logs(), 5), net.logs()
    assert not [e for e in net.events() if path in (e.get("url") or "")]


def test_blocked_host_header_gets_the_block_page(net: Transparent) -> None:
    seen = len(Origin.seen)
    out = net.curl(
        net.student_ip,
        "-H",
        "Host: social.test",
        "-H",
        "Accept: text/html",
        f"http://{net.host_ip}/feed",
    )
    body, status = split(out)
    assert status == "403", (out.stderr, net.logs())
    assert "social media" in body.lower()
    assert len(Origin.seen) == seen, "a blocked request reached the origin"
    events = wait_for(
        lambda: [
            e for e in net.events() if e["client_ip"] == net.student_ip and e["kind"] == "block"
        ],
        8,
    )
    assert events, net.logs()
    assert events[-1]["host"] == "social.test" and events[-1]["role"] == "student"
    assert events[-1]["category"] == "social_media"


def test_https_sni_blocked_for_student_gets_the_block_page_over_tls(net: Transparent) -> None:
    # Students are intercepted: the TLS connection is answered with the gateway's CA and the
    # decrypted request gets the block page. No upstream contact (nothing listens on :443).
    out = net.curl(
        net.student_ip,
        "--cacert",
        str(net.ca),
        "--resolve",
        f"social.test:443:{net.host_ip}",
        "-H",
        "Accept: text/html",
        "https://social.test/",
    )
    body, status = split(out)
    assert out.returncode == 0, (out.stderr, net.logs())
    assert status == "403"
    assert "social media" in body.lower()
    events = wait_for(
        lambda: [
            e
            for e in net.events()
            if e["client_ip"] == net.student_ip and (e["url"] or "").startswith("https://")
        ],
        8,
    )
    assert events and events[-1]["host"] == "social.test", net.logs()


def test_https_sni_blocked_for_visitor_is_refused(net: Transparent) -> None:
    # Visitors are not intercepted: decided on the SNI alone, the connection is closed.
    out = net.curl(
        net.visitor_ip,
        "--cacert",
        str(net.ca),
        "--resolve",
        f"social.test:443:{net.host_ip}",
        "https://social.test/",
    )
    _, status = split(out)
    assert out.returncode == 35, (out.returncode, out.stderr)  # TLS handshake failed
    assert status == "000"
    events = wait_for(lambda: [e for e in net.events() if e["client_ip"] == net.visitor_ip], 8)
    assert events, net.logs()
    assert events[-1]["role"] == "visitor" and events[-1]["host"] == "social.test"
    assert events[-1]["kind"] == "block"


def test_allowed_http_by_ip_address_reaches_the_origin(net: Transparent) -> None:
    path = f"/by-address-{random.randrange(10**9)}"
    out = net.curl(net.student_ip, f"http://{net.host_ip}{path}")
    body, status = split(out)
    assert status == "200", (out.stderr, body)
    assert body == f"{ORIGIN_MARK} {path}"


# -- the shipped nftables rules: what is not redirected does not leave --------------------------

LISTENER = r"""
import select, socket, sys
socks = {}
for spec in sys.argv[1:]:
    proto, address, port = spec.split(":")
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    s = socket.socket(socket.AF_INET, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((address, int(port)))
    if proto == "tcp":
        s.listen(16)
    socks[s] = spec
print("ready", flush=True)
while True:
    ready, _, _ = select.select(list(socks), [], [])
    for s in ready:
        spec = socks[s]
        if spec.startswith("udp"):
            data, _ = s.recvfrom(4096)
        else:
            conn, _ = s.accept()
            conn.settimeout(2)
            try:
                data = conn.recv(4096)
            except OSError:
                data = b""
            conn.close()
        print(spec, data.decode(errors="replace"), flush=True)
"""

SENDER = r"""
import socket, sys
for spec in sys.argv[1:]:
    proto, address, port, word = spec.split(":")
    if proto == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(word.encode(), (address, int(port)))
        s.close()
        print(spec, "sent", flush=True)
        continue
    try:
        s = socket.create_connection((address, int(port)), timeout=3)
        s.sendall(word.encode())
        s.close()
        print(spec, "connected", flush=True)
    except OSError as exc:
        print(spec, "refused", type(exc).__name__, flush=True)
"""


class Routed:
    """Three namespaces of the test's own: a pupils' VLAN, the router that loads the shipped
    deploy/transparent.nft (its definitions changed to this network), and the internet. The
    router forwards between them (forwarding on in its namespace only); a listener on the
    router's GATEWAY_PORT stands for the gateway."""

    def __init__(self, tmp: Path) -> None:
        tag = f"{os.getpid() % 1000:03d}{random.randrange(16**3):03x}"
        self.pupil, self.router, self.internet = (f"sgr{tag}{n}" for n in ("p", "r", "i"))
        third = random.randrange(256)
        self.pupil_net = f"10.214.{third}"
        self.internet_net = f"10.215.{third}"
        self.vlan_if = f"sgr{tag}v"  # the router's end of the VLAN
        self.wan_if = f"sgr{tag}w"
        self.tmp = tmp
        self.gateway_port = 18443
        self.procs: list[subprocess.Popen] = []
        self.cleanups: list[tuple[str, ...]] = []

    @property
    def resolver(self) -> str:  # the school's own DNS server (on the internet side here)
        return f"{self.internet_net}.3"

    @property
    def outside(self) -> str:  # anywhere else
        return f"{self.internet_net}.2"

    def up(self) -> None:
        for ns in (self.pupil, self.router, self.internet):
            made = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True)
            if made.returncode != 0:
                pytest.skip(f"cannot create a network namespace: {made.stderr.strip()}")
            self.cleanups.append(("ip", "netns", "delete", ns))
        r = ("ip", "netns", "exec", self.router)
        p = ("ip", "netns", "exec", self.pupil)
        i = ("ip", "netns", "exec", self.internet)
        sh("ip", "link", "add", self.vlan_if, "netns", self.router, "type", "veth",
           "peer", "name", "pupil0", "netns", self.pupil)  # fmt: skip
        sh("ip", "link", "add", self.wan_if, "netns", self.router, "type", "veth",
           "peer", "name", "wan0", "netns", self.internet)  # fmt: skip
        sh(*r, "ip", "addr", "add", f"{self.pupil_net}.1/24", "dev", self.vlan_if)
        sh(*r, "ip", "addr", "add", f"{self.internet_net}.1/24", "dev", self.wan_if)
        sh(*p, "ip", "addr", "add", f"{self.pupil_net}.2/24", "dev", "pupil0")
        sh(*i, "ip", "addr", "add", f"{self.outside}/24", "dev", "wan0")
        sh(*i, "ip", "addr", "add", f"{self.resolver}/24", "dev", "wan0")
        for ns, link in ((r, self.vlan_if), (r, self.wan_if), (p, "pupil0"), (i, "wan0")):
            sh(*ns, "ip", "link", "set", link, "up")
            sh(*ns, "ip", "link", "set", "lo", "up")
        sh(*p, "ip", "route", "add", "default", "via", f"{self.pupil_net}.1")
        sh(*i, "ip", "route", "add", "default", "via", f"{self.internet_net}.1")
        sh(*r, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")  # this namespace's own setting
        rules = (ROOT / "deploy" / "transparent.nft").read_text()
        for name, value in (
            ("PUPIL_IFACES", f'{{ "{self.vlan_if}" }}'),
            ("GATEWAY_PORT", str(self.gateway_port)),
            ("NO_REDIRECT", f"{{ {self.pupil_net}.1 }}"),
            ("SCHOOL_DNS", f"{{ {self.resolver} }}"),
        ):
            rules, found = re.subn(rf"^define {name} = .*$", f"define {name} = {value}", rules,
                                   flags=re.M)  # fmt: skip
            assert found == 1, f"deploy/transparent.nft no longer defines {name}"
        loaded = subprocess.run([*r, "nft", "-f", "-"], input=rules, capture_output=True, text=True)
        if loaded.returncode != 0:
            pytest.skip(f"nftables is unavailable: {loaded.stderr.strip()}")

    def listen(self, ns: str, *specs: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", LISTENER, *specs],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return proc

    def send(self, *specs: str) -> str:
        out = subprocess.run(
            ["ip", "netns", "exec", self.pupil, sys.executable, "-c", SENDER, *specs],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return out.stdout

    def down(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(10)
        problems = []
        for command in reversed(self.cleanups):
            out = subprocess.run(command, capture_output=True, text=True, timeout=20)
            if out.returncode != 0:
                problems.append(f"{' '.join(command)}: {out.stderr.strip()}")
        assert not problems, "clean-up failed: " + "; ".join(problems)


def _received(proc: subprocess.Popen) -> str:
    proc.kill()
    out, _ = proc.communicate(timeout=10)
    return out


def test_shipped_rules_drop_quic_and_outside_dns_and_redirect_the_web(tmp_path: Path) -> None:
    net = Routed(tmp_path)
    try:
        net.up()
        out, dns = net.outside, net.resolver
        internet = net.listen(
            net.internet,
            f"udp:{out}:443", f"udp:{out}:4433", f"udp:{out}:53", f"tcp:{out}:53",
            f"tcp:{out}:853", f"udp:{out}:853", f"tcp:{out}:443", f"tcp:{out}:8443",
            f"udp:{dns}:53", f"tcp:{dns}:53",
        )  # fmt: skip
        gateway = net.listen(net.router, f"tcp:0.0.0.0:{net.gateway_port}")
        sent = net.send(
            f"udp:{out}:443:quic", f"udp:{out}:4433:control-udp", f"udp:{out}:53:outside-dns",
            f"tcp:{out}:53:outside-dns-tcp", f"tcp:{out}:853:dot", f"udp:{out}:853:doq",
            f"tcp:{out}:443:https", f"tcp:{out}:8443:control-tcp",
            f"udp:{dns}:53:school-dns", f"tcp:{dns}:53:school-dns-tcp",
        )  # fmt: skip
        time.sleep(1)  # datagrams in flight
        seen, at_gateway = _received(internet), _received(gateway)
    finally:
        net.down()
    # what must arrive: the controls (so forwarding works) and the school's own DNS
    for word in ("control-udp", "control-tcp", "school-dns", "school-dns-tcp"):
        assert word in seen, (word, seen, sent)
    # what must not: QUIC, DNS to anyone else, DNS over TLS or QUIC, and web traffic directly
    for word in ("quic", "outside-dns", "outside-dns-tcp", "dot", "doq", "https"):
        assert f" {word}\n" not in seen, (word, seen)
    assert f"tcp:{out}:853:dot refused" in sent and f"tcp:{out}:53:outside-dns-tcp refused" in sent
    assert "https" in at_gateway  # redirected to the gateway's port instead
