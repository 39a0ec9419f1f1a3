"""The portal under attack, through real gateways: ``schoolgate run`` on loopback (two of them
on one database where it matters), the portal at ``schoolgate.internal`` through the proxy and
on its own port (``--portal-port``), driven by httpx, raw sockets and Chromium.

Addresses (all loopback; a client picks its source address): 127.0.0.1, .4 and .5 are
pupils' devices (role student), 127.0.0.3 is the staff network (role staff). Proxy logins
are any password (``proxyauth=any``): ``ben`` is a pupil in 9B. Allowed traffic reaches a
local origin: the gateways run in ``upstream`` mode pointed at it.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import resource
import shutil
import socket
import ssl
import subprocess
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import httpcore
import httpx
import pytest
from gateway_process import (
    BROWSER_ARGS,
    CHROMIUM,
    ROOT,
    Origin,
    free_port,
    run_cli,
    spki_hash,
    start_gateway,
    stop_gateway,
    wait_for,
    wait_port,
)

PORTAL = "schoolgate.internal"
PASSWORD = "correct horse battery"
PUPIL, STAFF_NET, PUPIL_2, PUPIL_3 = "127.0.0.1", "127.0.0.3", "127.0.0.4", "127.0.0.5"
IDLE_CONNECTIONS = 3000
PER_ADDRESS = 20  # the gateway's default open connections per address on the portal port


class Site:
    """A copy of tests/data/gateway with pupils' and staff addresses, staff accounts, a local
    origin, and gateways on it (all sharing the config and data dir, so one database)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        folder = tmp / "config"
        shutil.copytree(ROOT / "tests" / "data" / "gateway", folder)
        self.config = folder / "config.yaml"
        text = self.config.read_text().replace(
            "    - {cidr: 10.20.0.0/16, role: student}\n",
            "    - {cidr: 10.20.0.0/16, role: student}\n"
            f"    - {{cidr: {STAFF_NET}/32, role: staff}}\n"
            f"    - {{cidr: {PUPIL_2}/32, role: student}}\n"
            f"    - {{cidr: {PUPIL_3}/32, role: student}}\n",
        )
        self.config.write_text(text)
        self.data_dir = tmp / "var"
        # before the gateway's first start: the first account makes the school's database (--init)
        for user, role in (("it.tech", "it_support"), ("mrs.head", "slt")):
            self.cli(
                "staff", "add", user, "--role", role, "--password-stdin", "--init", stdin=PASSWORD
            )
        self.origin = ThreadingHTTPServer(("127.0.0.1", 0), Origin)
        threading.Thread(target=self.origin.serve_forever, daemon=True).start()
        self.gateways: list[tuple[subprocess.Popen, int]] = []

    def cli(self, *args: str, stdin: str | None = None) -> str:
        return run_cli(self.config, self.data_dir, *args, stdin=stdin)

    def start(self, *extra: str) -> int:
        """Another gateway on this site; its proxy port."""
        port = free_port()
        log = self.tmp / f"gateway-{port}.log"
        proc = start_gateway(
            self.config,
            self.data_dir,
            port,
            log,
            "--mode",
            f"upstream:http://127.0.0.1:{self.origin.server_address[1]}",
            "--set",
            "proxyauth=any",
            "--set",
            "schoolgate_exceptions_interval=1",
            "--set",
            "schoolgate_bans_interval=1",
            "--set",
            "termlog_verbosity=warn",  # `--quiet` alone keeps only errors
            *extra,
        )
        self.gateways.append((proc, port))
        if "--portal-port" in extra:
            portal_port = int(extra[extra.index("--portal-port") + 1])
            host = extra[extra.index("--portal-host") + 1] if "--portal-host" in extra else None
            wait_port(portal_port, proc, log, host=host or "127.0.0.1")
        return port

    def pid(self, port: int) -> int:
        return next(proc.pid for proc, p in self.gateways if p == port)

    def stop(self) -> None:
        for proc, _ in self.gateways:
            stop_gateway(proc, 20)
        self.origin.shutdown()
        for _proc, port in self.gateways:
            log = (self.tmp / f"gateway-{port}.log").read_text(errors="replace")
            assert "Traceback" not in log, log


@pytest.fixture
def site(tmp_path: Path):
    running = Site(tmp_path)
    yield running
    running.stop()


def through(port: int, source: str = PUPIL, user: str = "someone", verify=True):
    """An httpx client whose proxy is the gateway on ``port``, from ``source``, with the proxy
    login ``user`` (not on the roster: known by address)."""
    transport = httpx.HTTPTransport(proxy=f"http://127.0.0.1:{port}", verify=verify)
    # Neither httpx (0.28) nor httpcore connect to a proxy from ``local_address``: make the
    # pool ourselves, with a network backend that does.
    transport._pool = httpcore.HTTPProxy(
        proxy_url=f"http://127.0.0.1:{port}",
        proxy_auth=(user, "x"),
        ssl_context=verify if isinstance(verify, ssl.SSLContext) else None,
        network_backend=FromAddress(source),
    )
    return httpx.Client(transport=transport, timeout=30)


class FromAddress(httpcore.SyncBackend):
    """Every connection from one local address."""

    def __init__(self, source: str) -> None:
        self.source = source

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        return super().connect_tcp(host, port, timeout, self.source, socket_options)


def direct(source: str) -> httpx.Client:
    """An httpx client from ``source`` (to the portal's own port)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=30)


def form_token(client: httpx.Client, url: str) -> str:
    page = client.get(url)
    assert page.status_code == 200, page.text
    return re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)


def sign_in(client: httpx.Client, base: str, user: str, password: str = PASSWORD) -> int:
    token = form_token(client, f"{base}/staff/login")
    answer = client.post(
        f"{base}/staff/login",
        data={"username": user, "password": password, "csrf_token": token},
    )
    return answer.status_code


def ca_context(site: Site) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(site.data_dir / "ca" / "mitmproxy-ca-cert.pem"))


# -- the portal's own port under idle connections ------------------------------------------------


def raise_open_files(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


def still_open(sock: socket.socket) -> bool:
    """Whether the server still holds this connection (no end of file, no reset)."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def half_requests(port: int, count: int, source: str = PUPIL) -> list[socket.socket]:
    """``count`` connections to ``port``, each sending half a request line."""
    out = []
    for _ in range(count):
        sock = socket.socket()
        sock.settimeout(10)
        out.append(sock)
        try:
            sock.bind((source, 0))
            sock.connect(("127.0.0.1", port))
            sock.sendall(b"GET /staff/login HT")
        except OSError:
            pass  # refused or reset: the server's choice
    return out


def test_thousands_of_idle_connections_leave_the_proxy_and_the_portal_serving(site: Site):
    portal_port = free_port()
    proxy = site.start("--portal-port", str(portal_port))
    raise_open_files(IDLE_CONNECTIONS + 1000)
    # One pupil's device opens 3,000 connections, each with half a request line.
    idle = half_requests(portal_port, IDLE_CONNECTIONS)
    try:
        # The gateway holds at most its per-address limit of them (once it has taken them all
        # from the listening queue; a request has 20 s to send its headers) ...
        held = wait_for(lambda: sum(map(still_open, idle)) <= PER_ADDRESS, timeout=15)
        assert held, sum(map(still_open, idle))
        # ... the portal answers another address, and staff can sign in ...
        with direct(STAFF_NET) as staff:
            base = f"http://127.0.0.1:{portal_port}"
            assert staff.get(f"{base}/staff/login").status_code == 200
            assert sign_in(staff, base, "it.tech") == 303
            assert staff.get(f"{base}/it/").status_code == 200
        # ... and the proxy goes on deciding and serving.
        with through(proxy, PUPIL_2) as pupil:
            assert pupil.get("http://social.test/feed").status_code == 403
            allowed = pupil.get("http://example.test/page")
            assert allowed.status_code == 200 and "origin GET" in allowed.text
            assert pupil.get(f"http://{PORTAL}/staff/login").status_code == 200
        log = (site.tmp / f"gateway-{proxy}.log").read_text(errors="replace")
        assert log.count("portal port: refused") == 1  # said once, not 2,980 times
    finally:
        for sock in idle:
            sock.close()


def test_slow_requests_to_the_portal_port_are_closed(site: Site):
    portal_port = free_port()
    site.start("--portal-port", str(portal_port), "--set", "schoolgate_portal_header_timeout=2")
    slow = half_requests(portal_port, 10)
    try:
        assert any(map(still_open, slow))
        # They never finish their request line: closed, within a bound (not a measured time).
        assert wait_for(lambda: not any(map(still_open, slow)), timeout=30)
    finally:
        for sock in slow:
            sock.close()


def test_the_portal_port_listens_on_loopback_unless_given_an_address(site: Site):
    portal_port = free_port()
    site.start("--listen-host", "127.0.0.1", "--portal-port", str(portal_port))
    # Not on another address of this host (nor the proxy's, unless asked) ...
    with pytest.raises(OSError), socket.create_connection((PUPIL_2, portal_port), timeout=5):
        pass
    # ... and on the one given.
    other = free_port("127.0.0.9")
    site.start("--portal-port", str(other), "--portal-host", "127.0.0.9")
    with direct(PUPIL_2) as client:
        assert client.get(f"http://127.0.0.9:{other}/staff/login").status_code == 200


# -- who may change a site for everyone ---------------------------------------------------------


def ask_for_access(port: int, url: str) -> str:
    """ben hits a block page and sends an access request from it: its reference."""
    with through(port, PUPIL, "ben") as ben:
        block = ben.get(url, headers={"Accept": "text/html"})
        assert block.status_code == 403
        link = re.search(r'href="(http://schoolgate\.internal/request\?[^"]+)"', block.text)
        request_url = link.group(1).replace("&amp;", "&")
        token = form_token(ben, request_url)
        ref = re.search(r'name="ref" value="([^"]*)"', ben.get(request_url).text).group(1)
        answer = ben.post(
            f"http://{PORTAL}/request",
            data={
                "csrf_token": token,
                "ref": ref,
                "url": url,
                "purpose": "erroneous",
                "message": "This is a homework site, not social media.",
            },
        )
        assert answer.status_code == 303, answer.text
        return answer.headers["location"].split("/")[2]


def item_page(client: httpx.Client, base: str, ref: str) -> str:
    queue = client.get(f"{base}/it/?status=all")
    path = re.search(rf'href="(/it/item/\d+)">{re.escape(ref)}<', queue.text).group(1)
    return base + path


def test_unlisting_needs_slt_and_only_the_requests_own_site(site: Site):
    portal_port = free_port()
    proxy = site.start("--portal-port", str(portal_port))
    ref = ask_for_access(proxy, "http://social.test/homework")
    base = f"http://127.0.0.1:{portal_port}"
    with direct(STAFF_NET) as it:
        assert sign_in(it, base, "it.tech") == 303
        page = item_page(it, base, ref)
        token = form_token(it, page)
        # Another site than the request's is refused, whatever the form says.
        for other in ("google.com", "chat.social.test"):
            answer = it.post(f"{page}/unlist", data={"csrf_token": token, "host": other})
            assert answer.status_code == 400, other
        # IT Support alone only propose it: the site stays blocked.
        answer = it.post(f"{page}/unlist", data={"csrf_token": token, "note": "homework site"})
        assert answer.status_code == 303
        assert "awaiting SLT" in it.get(page).text or "awaiting slt" in it.get(page).text
    with through(proxy, PUPIL, "ben") as ben:
        assert ben.get("http://social.test/homework").status_code == 403
    explained = json.loads(site.cli("explain", "http://social.test/", "--user", "ben", "--json"))
    assert explained["action"] == "block"
    # SLT approve it (over HTTPS, through the gateway, from the staff network).
    with through(proxy, STAFF_NET, "mrs.head", verify=ca_context(site)) as slt:
        secure = f"https://{PORTAL}"
        assert sign_in(slt, secure, "mrs.head") == 303
        page = item_page(slt, secure, ref)
        token = form_token(slt, page)
        path = page.rsplit("/", 1)[1]
        answer = slt.post(
            f"{secure}/slt/item/{path}/approve-proposal",
            data={"csrf_token": token, "note": "agreed"},
        )
        assert answer.status_code == 303, answer.text
    with through(proxy, PUPIL, "ben") as ben:
        through_now = wait_for(
            lambda: ben.get("http://social.test/homework").status_code == 200, timeout=30
        )
        assert through_now
    audit = json.loads(site.cli("audit", "--json"))
    actions = [(a["actor"], a["action"]) for a in audit]
    assert ("it.tech", "request.propose") in actions
    assert ("mrs.head", "request.slt_approve") in actions


# -- sign-in limits and sessions --------------------------------------------------------------


def test_pupils_wrong_passwords_do_not_lock_staff_out_of_the_staff_network(site: Site):
    portal_port = free_port()
    first = site.start("--portal-port", str(portal_port))
    second = site.start()  # another gateway on the same database
    portal = f"http://{PORTAL}"
    with through(first, PUPIL, "ben") as pupil:
        for _ in range(5):
            assert sign_in(pupil, portal, "it.tech", "guess") == 401
        assert sign_in(pupil, portal, "it.tech") == 429  # even the right password
    # Locked for pupils' devices, on the other gateway too (the count is in the database) ...
    with through(second, PUPIL_2) as other_pupil:
        assert sign_in(other_pupil, portal, "it.tech") == 429
    # ... but IT Support signs in from the staff network, through either gateway.
    with through(second, STAFF_NET, "it.tech") as staff:
        assert sign_in(staff, portal, "it.tech") == 303
        assert staff.get(f"{portal}/it/").status_code == 200
    # One device guessing many accounts is locked out of all of them (here on the own port).
    base = f"http://127.0.0.1:{portal_port}"
    with direct(PUPIL_3) as guesser:
        for name in ("admin", "head", "it", "office", "slt"):
            assert sign_in(guesser, base, name, "guess") == 401
        assert sign_in(guesser, base, "mrs.head") == 429
    with direct(STAFF_NET) as head:
        assert sign_in(head, base, "mrs.head") == 303


def test_signing_out_ends_the_session_everywhere(site: Site):
    first = site.start()
    second = site.start()
    portal = f"http://{PORTAL}"
    with through(first, STAFF_NET, "it.tech") as it:
        assert sign_in(it, portal, "it.tech") == 303
        cookie = it.cookies.get("schoolgate_portal")
        assert cookie
        copied = through(second, STAFF_NET)
        copied.cookies.set("schoolgate_portal", cookie, domain=PORTAL)
        assert copied.get(f"{portal}/it/").status_code == 200  # the session works anywhere
        token = form_token(it, f"{portal}/staff/")
        assert it.post(f"{portal}/staff/logout", data={"csrf_token": token}).status_code == 303
        answer = copied.get(f"{portal}/it/")
        assert answer.status_code == 302 and "/staff/login" in answer.headers["location"]
        copied.close()


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium")
def test_cookies_and_hsts_in_a_browser_over_https(site: Site):
    import playwright.sync_api as sync_api

    proxy = site.start()
    ca = site.data_dir / "ca" / "mitmproxy-ca-cert.pem"
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=BROWSER_ARGS + [f"--ignore-certificate-errors-spki-list={spki_hash(ca)}"],
            proxy={"server": f"http://127.0.0.1:{proxy}"},
        )
        context = browser.new_context(
            proxy={"server": f"http://127.0.0.1:{proxy}", "username": "x", "password": "x"}
        )
        page = context.new_page()
        response = page.goto(f"https://{PORTAL}/staff/login")
        assert response.headers["strict-transport-security"] == "max-age=31536000"
        page.fill("#username", "it.tech")
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_load_state()
        assert "/staff/login" not in page.url, page.content()
        (cookie,) = [c for c in context.cookies() if c["name"] == "schoolgate_portal"]
        assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        browser.close()
    # Over plain HTTP the cookie cannot be Secure (the browser would drop it), nor is HSTS sent.
    with through(proxy, STAFF_NET) as plain:
        answer = plain.get(f"http://{PORTAL}/staff/login")
        assert "strict-transport-security" not in answer.headers
        set_cookie = answer.headers["set-cookie"]
        assert "Secure" not in set_cookie and "SameSite=Strict" in set_cookie


# -- the operating system user in the audit trail ----------------------------------------------


def test_commands_record_the_operating_system_user(site: Site):
    proxy = site.start()
    me = pwd.getpwuid(os.geteuid()).pw_name
    site.cli(
        "allow", "add", "--host", "social.test", "--for", "user=ben", "--minutes", "30",
        "--by", "mrs.head", "--reason", "geography",
    )  # fmt: skip
    site.cli("staff", "add", "mr.jones", "--role", "teacher", "--by", "it.tech",
             "--password-stdin", stdin=PASSWORD)  # fmt: skip
    ban_id = make_ban(site, "ben")
    site.cli("supervise", "ben", "--by", "mr.jones", "--minutes", "20", "--reason", "lesson")
    site.cli("bans", "lift", str(ban_id), "--by", "mrs.head", "--reason", "spoke to him")
    audit = json.loads(site.cli("audit", "--json"))
    changes = {
        (a["actor"], a["action"]): a["os_user"]
        for a in audit
        if a["action"] in ("exception.add", "staff.add", "supervision.start", "ban.lift")
    }
    assert set(changes) >= {
        ("mrs.head", "exception.add"),
        ("it.tech", "staff.add"),
        ("mr.jones", "supervision.start"),
        ("mrs.head", "ban.lift"),
    }
    for os_user in changes.values():
        assert os_user == me or os_user.startswith(f"{me} ("), os_user
    text = site.cli("audit")
    assert f"mrs.head (os user {me}" in text
    # Where a ban's history is shown: `bans show` and the portal's bans page.
    shown = json.loads(site.cli("bans", "show", str(ban_id), "--json"))
    lift = next(h for h in shown["history"] if h["action"] == "ban.lift")
    assert lift["actor"] == "mrs.head" and lift["os_user"].startswith(me)
    with through(proxy, STAFF_NET, "mrs.head") as slt:
        assert sign_in(slt, f"http://{PORTAL}", "mrs.head") == 303
        assert f"(os user {me}" in slt.get(f"http://{PORTAL}/it/bans").text


def make_ban(site: Site, user: str) -> int:
    """A ban as the gateway makes one (no command makes bans)."""
    from schoolgate.core.config import load_policy
    from schoolgate.storage.bans import add_ban
    from schoolgate.storage.db import open_database

    policy = load_policy(site.config, data_dir=site.data_dir)
    with open_database(policy.settings.database_url)() as session:
        row = add_ban(session, user, by="schoolgate", minutes=60, reason="VPN attempts")
        session.commit()
        return row.id
