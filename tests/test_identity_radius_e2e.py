"""RADIUS accounting in the real gateway: a pupil's Wi-Fi session, told by a `pyrad` client in
real UDP packets, decides the pupil's requests through `schoolgate run --mode transparent
--workers 2` (test_transparent_e2e's network namespace, veth and nftables redirect).

The visitors' address of the namespace is the device: its network gives the ``visitor``
role; bound by RADIUS to the pupil ``dev`` (roster: student, 7A, born 2015), its requests are
decided as dev's: the age check on a sign-up page, a classroom opening for group 7A, a ban on
dev (the person, not the device), and dev's device named in the decision log. The listener
runs in worker 1 only; every request is decided by whichever worker took the connection, and
both must honour the binding.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from gateway_process import ROOT, wait_for
from pyrad.client import Client, Timeout
from pyrad.packet import AccountingResponse
from test_bindings_radius import accounting
from test_transparent_e2e import _REASON as TRANSPARENT_UNAVAILABLE
from test_workers_e2e import TransparentWorkers, workers_of

from schoolgate.bindings.radius import radius_dictionary

SECRET = "a-long-shared-secret-for-the-controller"
MAC = "AA-BB-CC-00-00-07"
ROSTER_EXTRA = "dev,student,7A,2015-06-01\n"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RadiusNet(TransparentWorkers):
    # Exceptions and bans made by the CLI reach each worker within a second.
    gateway_args = (
        *TransparentWorkers.gateway_args,
        "--set",
        "schoolgate_exceptions_interval=1",
        "--set",
        "schoolgate_bans_interval=1",
    )

    def hosts(self) -> dict[str, list[str]]:
        return {**super().hosts(), "instagram.test": [self.host_ip]}

    def _write_config(self) -> Path:
        path = super()._write_config()
        self.radius_port = free_udp_port()
        config = yaml.safe_load(path.read_text())
        config["roles"]["student"]["age_checks"] = True
        config["identity"]["radius"] = {
            "listen": f"127.0.0.1:{self.radius_port}",
            "secret": SECRET,
            "clients": ["127.0.0.0/8"],
        }
        config["identity"]["sources"] = ["radius"]
        # The DHCP server's lease file names the students' device (dnsmasq's format).
        leases = path.parent / "dnsmasq.leases"
        leases.write_text(
            f"{int(time.time()) + 86400} 02:00:00:00:0a:03 {self.student_ip} lab-pc-3 *\n"
        )
        config["identity"]["dhcp"] = {"leases": [{"format": "dnsmasq", "path": str(leases)}]}
        config["age_restrictions"] = [
            {"platform": "Instagram", "min_age": 13, "signup": ["instagram.test/accounts/signup"]}
        ]
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        roster = path.parent / "roster.csv"
        roster.write_text(roster.read_text() + ROSTER_EXTRA)
        return path

    def client(self, secret: str = SECRET) -> Client:
        return Client(
            server="127.0.0.1",
            acctport=self.radius_port,
            secret=secret.encode(),
            dict=radius_dictionary(),
            retries=2,
            timeout=3,
        )

    def visit(self, url: str) -> tuple[int, int, str, str]:
        """curl as the visitors' address (the pupil's device): status, local port, headers and
        body. ``url`` is http://HOST/PATH, resolved to the namespace's origin."""
        host = re.match(r"https?://([^/]+)", url)[1]
        out = subprocess.run(
            ["ip", "netns", "exec", self.ns, "curl", "-sS", "--max-time", "20"]
            + ["--interface", self.visitor_ip, "--resolve", f"{host}:80:{self.host_ip}"]
            + ["-D", "-", "-H", "Accept: text/html"]
            + ["-w", "\n%{http_code} %{local_port}", url],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, f"curl {url}: {out.stderr}\n{self.logs()[-4000:]}"
        text, _, tail = out.stdout.rpartition("\n")
        code, port = (int(part) for part in tail.split())
        return code, port, text.lower(), text

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "schoolgate.cli", *args]
            + ["--config", str(self.config), "--data-dir", str(self.data_dir)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout


@pytest.fixture(scope="module")
def rnet(tmp_path_factory):
    if TRANSPARENT_UNAVAILABLE is not None:
        pytest.skip(TRANSPARENT_UNAVAILABLE)
    running = RadiusNet(tmp_path_factory.mktemp("radius-gateway"))
    try:
        running.start()
        yield running
    finally:
        running.stop()


def settled(rnet: RadiusNet, url: str, holds, count: int = 8, timeout: float = 30) -> bool:
    """Until ``holds(visit)`` for ``count`` requests in a row, on new connections: each worker
    follows the database on its own clock, so one answer tells of one worker only (eight in a
    row all going to one worker: 1 in 128)."""

    def all_hold() -> bool:
        return all(holds(rnet.visit(url)) for _ in range(count))

    return bool(wait_for(all_hold, timeout))


def latest(rnet: RadiusNet, path: str) -> dict | None:
    events = [e for e in rnet.events() if (e.get("url") or "").endswith(path)]
    return events[-1] if events else None


def test_a_device_nobody_is_bound_to_is_named_from_its_dhcp_lease(rnet: RadiusNet) -> None:
    out = subprocess.run(
        ["ip", "netns", "exec", rnet.ns, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}"]
        + ["--interface", rnet.student_ip, "--resolve", f"social.test:80:{rnet.host_ip}"]
        + ["http://social.test/leased"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.stdout == "403", out.stderr
    event = wait_for(lambda: latest(rnet, "/leased"), 10)
    assert event and (event["device"], event["user"], event["role"]) == (
        "lab-pc-3",
        None,
        "student",
    )


def test_a_pupil_bound_by_radius_meets_the_pupils_policy_on_both_workers(rnet: RadiusNet) -> None:
    # Before: the device is a visitor (its network's role), nobody's name in the log.
    code, _, _, _ = rnet.visit("http://instagram.test/accounts/signup?n=0")
    assert code == 200, "the visitor role has no age checks"
    code, _, text, _ = rnet.visit("http://social.test/before")
    assert code == 403 and "social media" in text
    before = wait_for(lambda: latest(rnet, "/before"), 10)
    assert before and before["role"] == "visitor" and before["user"] is None

    session = dict(
        User_Name="SCHOOL\\Dev",
        Framed_IP_Address=rnet.visitor_ip,
        Acct_Session_Id="wlc-session-7",
        NAS_IP_Address="127.0.0.1",
        NAS_Identifier="wlc-1",
    )
    reply = accounting(rnet.client(), "Start", Calling_Station_Id=MAC, **session)
    assert reply.code == AccountingResponse  # answered once stored

    # The age check: dev is 11, the sign-up page needs 13. Each worker reads the binding within
    # half a second; then every request, on a new connection to whichever worker takes it, is
    # decided as dev.
    signup = "http://instagram.test/accounts/signup"
    assert settled(rnet, f"{signup}?n=0", lambda v: v[0] == 403), rnet.logs()[-3000:]
    ports = []
    for n in range(1, 13):
        code, port, text, _ = rnet.visit(f"{signup}?n={n}")
        assert code == 403 and "instagram" in text and "13" in text, text
        ports.append(port)
    served = {index for index, _ in workers_of(rnet.log, rnet.visitor_ip, ports)}
    assert served == {1, 2}, "both workers decide as dev"
    event = wait_for(lambda: latest(rnet, "/accounts/signup?n=12"), 10)
    assert event, rnet.logs()[-3000:]
    assert (event["user"], event["role"], event["group"]) == ("dev", "student", "7A")
    assert event["device"] == "aa:bb:cc:00:00:07" and event["category"] == "age_restricted"

    # A classroom opening for 7A reaches dev through the binding.
    rnet.cli(
        "allow", "add", "--host", "social.test", "--for", "group=7A", "--minutes", "30",
        "--by", "teacher1", "--reason", "class project",
    )  # fmt: skip
    assert settled(
        rnet,
        "http://social.test/opened",
        lambda v: v[0] == 200 and "schoolgate-test-origin" in v[2],
    )

    # A packet with the wrong secret changes nothing: no answer, dev still on the address.
    forged = dict(session, User_Name="alice", Acct_Session_Id="forged")
    with pytest.raises(Timeout):
        accounting(rnet.client("not-the-shared-secret-at-all"), "Start", **forged)
    for _ in range(4):
        assert rnet.visit("http://instagram.test/accounts/signup?n=forged")[0] == 403

    # A ban on dev (the person) suspends the bound device.
    from schoolgate.storage.bans import add_ban
    from schoolgate.storage.db import open_database

    sessions = open_database(f"sqlite:///{rnet.data_dir / 'schoolgate.db'}")
    with sessions() as db:
        add_ban(db, "dev", by="it.support", minutes=60, reason="circumvention (test)")
        db.commit()
    assert settled(rnet, "http://social.test/b", lambda v: "x-schoolgate-suspended" in v[2])

    listed = json.loads(rnet.cli("who", rnet.visitor_ip, "--json"))
    assert [(b["user"], b["source"], b["device"]) for b in listed] == [
        ("dev", "radius", "aa:bb:cc:00:00:07")
    ]
    assert listed[0]["expires_at"]

    # Stop: the device is a visitor again; the ban on dev does not follow the address.
    reply = accounting(rnet.client(), "Stop", Acct_Terminate_Cause="User-Request", **session)
    assert reply.code == AccountingResponse
    assert settled(
        rnet,
        "http://social.test/after",
        lambda v: v[0] == 403 and "social media" in v[2] and "x-schoolgate-suspended" not in v[2],
    )
    after = wait_for(lambda: latest(rnet, "/after"), 10)
    assert after and after["role"] == "visitor" and after["user"] is None
    assert json.loads(rnet.cli("who", rnet.visitor_ip, "--json")) == []
    audit = rnet.cli("who", "--history", rnet.visitor_ip)
    assert "session stopped (User-Request)" in audit
