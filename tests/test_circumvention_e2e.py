"""End to end through the real gateway (``schoolgate run`` in a subprocess, loopback): a
student's repeated circumvention attempts produce the events, then the ban, then the suspension
page on an otherwise allowed site; a supervision session lets them through and is logged; the
gateway restarts and the ban holds; the ban is lifted and access returns.

Needs the circumvention addon wired into ``schoolgate.gateway.make_addons`` and
``schoolgate.cli.bans.register`` into ``schoolgate.cli`` (it fails, not skips, until then).
127.0.0.1 is a student by network (tests/data/gateway/config.yaml).
"""

from __future__ import annotations

import json
import subprocess
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from gateway_process import ROOT, Origin, free_port, run_cli, start_gateway, stop_gateway, wait_for
from marker_origins import MarkerOrigin, TestCA, write_hosts
from tunnel_attacks import DNS_QUERY

from tests.test_circumvention_addon import add_circumvention_config

HTML = {
    "Accept": "text/html,application/xhtml+xml",
    "Sec-Fetch-Mode": "navigate",
    "Sec-Fetch-Dest": "document",
}


class Gateway:
    def __init__(self, tmp: Path) -> None:
        import shutil

        folder = tmp / "config"
        shutil.copytree(ROOT / "tests" / "data" / "gateway", folder)
        self.config = folder / "config.yaml"
        add_circumvention_config(self.config)
        self.data_dir = tmp / "var"
        self.log = tmp / "gateway.log"
        self.port = free_port()
        self.origin_server = ThreadingHTTPServer(("127.0.0.1", 0), Origin)
        threading.Thread(target=self.origin_server.serve_forever, daemon=True).start()
        self.origin = f"http://127.0.0.1:{self.origin_server.server_address[1]}"
        # The "internet" sites the tests name, on loopback: the gateway's resolver is told
        # where they are, and trusts the test CA that signed their certificates.
        self.ca = TestCA(tmp / "origins-ca")
        names = ["www.bbc.co.uk", "www.torproject.org"]
        self.tls_origin = MarkerOrigin("127.0.0.30", tls=self.ca.leaf(names))
        self.hosts = write_hosts(tmp / "hosts", {name: ["127.0.0.30"] for name in names})
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = start_gateway(
            self.config,
            self.data_dir,
            self.port,
            self.log,
            "--set",
            f"schoolgate_hosts_file={self.hosts}",
            "--set",
            f"ssl_verify_upstream_trusted_ca={self.ca.pem}",
            append_log=True,
        )

    def stop(self) -> None:
        stop_gateway(self.proc)

    def get(self, url: str, **headers) -> httpx.Response:
        with httpx.Client(proxy=f"http://127.0.0.1:{self.port}", timeout=10) as client:
            return client.get(url, headers={**HTML, **headers})

    def cli(self, *args: str) -> str:
        return run_cli(self.config, self.data_dir, *args)


@pytest.fixture
def gateway(tmp_path):
    gw = Gateway(tmp_path)
    gw.start()
    yield gw
    gw.stop()
    gw.origin_server.shutdown()
    gw.tls_origin.close()


def test_attempts_ban_suspension_supervision_restart_lift(gateway: Gateway) -> None:
    gw = gateway
    assert gw.get(gw.origin + "/before").status_code == 200

    first = gw.get("http://proxy1.test/browse.php?u=x")
    assert first.status_code == 403
    assert first.headers.get("x-schoolgate-warning") == "circumvention", gw.log.read_text()
    assert gw.get("http://proxy2.test/").status_code == 403
    assert gw.get("http://proxy3.test/").status_code == 403

    events = json.loads(gw.cli("events", "--kind", "circumvention", "--json"))
    assert [e["action"] for e in events] == ["warn", "lockout", "ban"]
    assert all(e["client_ip"] == "127.0.0.1" and e["role"] == "student" for e in events)
    assert [e["host"] for e in events] == ["proxy1.test", "proxy2.test", "proxy3.test"]

    page = gw.get(gw.origin + "/homework")
    assert page.status_code == 403 and page.headers["x-schoolgate-suspended"] == "ban"
    assert "suspended" in page.text and "appeal" in page.text.lower()

    bans = wait_for(
        lambda: [b for b in json.loads(gw.cli("bans", "list", "--json")) if b["kind"] == "ban"],
        timeout=15,
    )
    assert bans and bans[0]["subject"] == "device:127.0.0.1"
    ban_id = bans[0]["id"]

    # a restart keeps the ban
    gw.stop()
    gw.start()
    assert gw.get(gw.origin + "/after-restart").status_code == 403

    # supervision lets them through under the normal policy, and is logged
    gw.cli(
        "supervise",
        "device:127.0.0.1",
        "--by",
        "mr.jones",
        "--minutes",
        "30",
        "--reason",
        "ICT lesson",
    )
    assert wait_for(lambda: gw.get(gw.origin + "/supervised").status_code == 200, timeout=15)
    assert gw.get("http://social.test/").status_code == 403  # the policy still applies
    supervised = wait_for(
        lambda: json.loads(gw.cli("events", "--kind", "supervised", "--json")), timeout=15
    )
    assert {e["host"] for e in supervised} >= {"127.0.0.1", "social.test"}
    assert all(e["detail"]["staff"] == "mr.jones" for e in supervised)

    # lifted: access returns, and the history shows every change
    gw.cli("bans", "lift", str(ban_id), "--by", "it.support", "--reason", "appeal upheld")
    assert wait_for(lambda: gw.get(gw.origin + "/lifted").status_code == 200, timeout=15)
    shown = json.loads(gw.cli("bans", "show", str(ban_id), "--json"))
    assert [h["action"] for h in shown["history"]] == [
        "ban.create",
        "supervision.start",
        "ban.lift",
        "supervision.end",  # the running supervision session ends with the ban
    ]
    assert len(shown["evidence"]) == 3


def test_attempts_at_two_gateways_count_together(tmp_path: Path) -> None:
    """Two gateways on one database (two workers, or two gateways of a trust): a pupil who
    spreads attempts between them meets the stage their total reaches."""
    a = Gateway(tmp_path / "a")
    b = Gateway(tmp_path / "b")
    b.config, b.data_dir = a.config, a.data_dir  # the same policy and database
    a.start()
    try:
        assert a.get(a.origin + "/ready").status_code == 200  # a has made the shared state
        # not --quiet: b's log says when it has counted a's attempt
        b.proc = start_gateway(b.config, b.data_dir, b.port, b.log, quiet=False)
        assert a.get("http://proxy1.test/").status_code == 403  # the first attempt: a warning
        counted = "counted 1 circumvention attempt(s) recorded by another gateway process"
        assert wait_for(lambda: counted in b.log.read_text(), timeout=30), b.log.read_text()
        # The warning page's own event can reach the database in a later batch than the
        # attempt; until b has read it, b's next stage is a warning again, not a lockout.
        shown = "read 1 circumvention warning(s) shown by another gateway process"
        assert wait_for(lambda: shown in b.log.read_text(), timeout=30), b.log.read_text()
        assert b.get("http://proxy2.test/").status_code == 403  # the second, at the other
        events = json.loads(a.cli("events", "--kind", "circumvention", "--json"))
        assert [e["action"] for e in events] == ["warn", "lockout"]
        assert b.get(b.origin + "/homework").status_code == 403  # locked out
    finally:
        for gw in (a, b):
            gw.stop()
            gw.origin_server.shutdown()


@pytest.mark.parametrize("version", ["--http1.1", "--http2"])
def test_domain_fronting_over_http1_and_http2_is_recorded(gateway: Gateway, version: str) -> None:
    """curl opens a tunnel to an allowed site and names another inside it: in the Host header
    (HTTP/1.1) or HTTP/2's :authority, which mitmproxy keeps apart from the headers. Both names
    are decided (both allowed here), the attempt is recorded, and as the pupil's first it is a
    warning (curl loads no page to show it on), not a lockout."""
    ca = gateway.data_dir / "ca" / "mitmproxy-ca-cert.pem"
    port = gateway.tls_origin.port
    out = subprocess.run(
        ["curl", "-sS", version, "-o", "/dev/null", "-w", "%{http_code} %{http_version}"]
        + ["-x", f"http://127.0.0.1:{gateway.port}", "--cacert", str(ca)]
        + ["-H", f"Host: www.torproject.org:{port}", f"https://www.bbc.co.uk:{port}/news"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    code, http_version = out.stdout.split()
    assert (code, http_version) == ("200", version.removeprefix("--http")), out.stderr
    assert gateway.tls_origin.saw(b"GET /news")  # the site the tunnel and the SNI name

    def fronting() -> list[dict]:
        events = json.loads(gateway.cli("events", "--kind", "circumvention", "--json"))
        return [e for e in events if e["rule"] == "circumvention detector domain_fronting"]

    found = wait_for(fronting, timeout=15)  # the decision log writes in batches
    assert len(found) == 1, found
    assert found[0]["host"] == "www.bbc.co.uk" and found[0]["action"] == "warn"
    assert "http_host=www.torproject.org" in found[0]["reason"]


def test_one_request_counts_once_and_the_warning_comes_first(gateway: Gateway) -> None:
    """A DoH request to 1.1.1.1 is an IP literal, a public resolver's address, a DNS-over-HTTPS
    path and a destination with no name: four findings, all recorded, one count on the ladder.
    The pupil sees the warning page, and is not locked out by that one request."""
    page = gateway.get(f"http://1.1.1.1/dns-query?dns={DNS_QUERY}")
    assert page.status_code == 403 and page.headers.get("x-schoolgate-warning") == "circumvention"
    events = wait_for(
        lambda: [
            e
            for e in json.loads(gateway.cli("events", "--kind", "circumvention", "--json"))
            if e["host"] == "1.1.1.1"
        ],
        timeout=15,
    )
    assert len(events) >= 3, events
    assert [e["detail"]["sanction"]["counted"] for e in events].count(True) == 1
    assert {e["action"] for e in events} <= {"warn", "record"}
    assert gateway.get(gateway.origin + "/still-allowed").status_code == 200  # no lockout
