"""Throughput and added latency of schoolgate vs bare ``mitmdump -q``, on one loopback origin.

    python3 bench/gateway_bench.py [--seconds 10] [--rounds 3] [--concurrency 10]
        [--scenarios keepalive,https,newconn] [--latency-rate 50] [--no-pin]

Needs ``hey`` (Debian: ``apt-get install -y hey``). Runs, in one go, a local origin server and,
side by side for each scenario, four proxies on it: bare ``mitmdump -q``; "lean", mitmproxy as
``schoolgate run`` sets it up but without schoolgate's addons (``bench/lean_mitmproxy.py``: no
Dumper, logging at INFO; the difference between it and bare mitmdump is what the runner saves
on mitmproxy's own work, and the difference between it and schoolgate run is what the addons
alone cost); ``schoolgate run --quiet`` (the test config in tests/data/gateway: 127.0.0.1 is a
student in a lesson, the origin uncategorised, so allowed); and ``mitmdump -q -s
addons/schoolgate.py`` (the same addons loaded the mitmproxy way, one level deeper in
mitmproxy's addon chain). Scenarios:

* ``keepalive``: HTTP/1.1 keep-alive requests (``hey -c N -z Ts -x proxy``); schoolgate is
  also loaded with blocked requests (block page, logged);
* ``https``: HTTPS with interception, keep-alive, to a TLS origin on loopback with a
  self-signed certificate (the proxies run with ``ssl_insecure``; hey trusts the proxy's CA
  through ``SSL_CERT_FILE``);
* ``newconn``: plain HTTP, a new connection for every request (``hey -disable-keepalive``).

Each proxy is a fresh process with a fresh data folder in each round of each scenario (no
state carried over; and a process's speed depends by a few percent on where its memory
landed, so one start is not enough). The loads take turns: ``--rounds`` rounds of bare,
lean, schoolgate, addons, ..., so that a slow moment of the machine falls on every proxy
alike, and the figures compared are each proxy's median over the rounds. On a machine with
two or more CPUs the proxy under load has a CPU of its own (``taskset``) and hey, the origin
and this script share another (``--no-pin`` turns that off): the figures are then the
proxy's, not the load generator's.

For each proxy it prints requests/s (the responses over the run's length; hey's own figure,
which a single late response can stretch by a second, beside it) and p50/p99 latency under
load (one proxy loaded at a time), the proxy's CPU per request, the origin connections it
opened, and p50/p99 from a separate low-load pass: one connection to each proxy, a request to
each in turn, ``--latency-rate`` rounds a second, timed in microseconds by a client in this
process. On a small machine the loaded latencies are mostly queueing; the low-load pass is
the one that shows what the proxy adds to a request, and the "added" lines subtract bare
mitmdump's figures from schoolgate's.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ("keepalive", "https", "newconn")
BODY = b"hello from the origin\n"


class Origin(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes
    # Connections the origin accepted: a proxy that reconnects upstream (rather than reusing
    # its connection) pays for it in latency, and over TLS in handshakes, which this shows.
    connections = 0
    _lock = threading.Lock()

    def setup(self) -> None:
        with Origin._lock:
            Origin.connections += 1
        super().setup()

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args) -> None:
        pass


def start_origin(
    tls_folder: Path | None = None, address: tuple[str, int] = ("127.0.0.1", 0)
) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(address, Origin)
    if tls_folder is not None:
        cert, key = self_signed(tls_folder)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (the proxies accept it: they run with ``ssl_insecure``)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench origin")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "origin.pem", folder / "origin-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM (a clean shutdown), then SIGKILL if it takes longer than ``timeout``."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def chosen_scenarios(parser: argparse.ArgumentParser, text: str) -> list[str]:
    """The ``--scenarios`` list, each checked (``parser.error`` names an unknown one)."""
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown or not chosen:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {SCENARIOS}")
    return chosen


def copy_test_config(folder: Path) -> Path:
    """A copy of the tests' gateway config (127.0.0.1 is a student in a lesson; the loopback
    origins are uncategorised, so allowed) in ``folder/config``; its config.yaml is there."""
    conf = folder / "config"
    shutil.copytree(ROOT / "tests" / "data" / "gateway", conf)
    return conf


def have_hey() -> bool:
    if shutil.which("hey"):
        return True
    print("bench needs hey: apt-get install -y hey", file=sys.stderr)
    return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"proxy exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("proxy did not start")


def hey(
    url: str,
    proxy: str,
    seconds: int,
    concurrency: int,
    extra: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> dict:
    out = subprocess.run(
        ["hey", "-z", f"{seconds}s", "-c", str(concurrency), *extra, "-x", proxy, url],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = re.search(r"50%+ in ([\d.]+) secs", out)
    p99 = re.search(r"99%+ in ([\d.]+) secs", out)
    codes = dict(re.findall(r"\[(\d{3})\]\s+(\d+) responses", out))
    errors = re.search(r"Error distribution:\n((?:.*\n?)*)", out)
    result = {
        "rps": rps,
        "p50_ms": float(p50.group(1)) * 1000 if p50 else float("nan"),
        "p99_ms": float(p99.group(1)) * 1000 if p99 else float("nan"),
        "codes": codes,
    }
    if errors:
        result["errors"] = errors.group(1).strip().splitlines()[:3]
    return result


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the low-load latency probe ---------------------------------------------------------------


def read_response(sock: socket.socket | ssl.SSLSocket, buffer: bytes = b"") -> tuple[int, bytes]:
    """(status, what was read past this response) for one HTTP/1.1 response with a length."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    found = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    length = int(found.group(1)) if found else 0
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed mid-body")
        rest += chunk
    return status, rest[length:]


@dataclass
class Probe:
    """One client at a fixed, low rate: what a request costs when nothing is queued."""

    proxy_port: int
    origin: tuple[str, int]
    mode: str  # "keepalive", "https" or "newconn"
    ca: Path | None = None
    times_us: list[float] = field(default_factory=list)
    codes: dict[int, int] = field(default_factory=dict)
    _sock: socket.socket | ssl.SSLSocket | None = None

    def _connect(self) -> socket.socket | ssl.SSLSocket:
        sock = socket.create_connection(("127.0.0.1", self.proxy_port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.mode != "https":
            return sock
        host, port = self.origin
        sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        status, _ = read_response(sock)
        if status != 200:
            raise ConnectionError(f"CONNECT answered {status}")
        context = ssl.create_default_context(cafile=str(self.ca))
        return context.wrap_socket(sock, server_hostname=host)

    def _request(self) -> bytes:
        host, port = self.origin
        if self.mode == "https":
            target = "/page"
        else:
            target = f"http://{host}:{port}/page"
        closing = "Connection: close\r\n" if self.mode == "newconn" else ""
        return f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\n{closing}\r\n".encode()

    def one(self) -> None:
        request = self._request()
        started = time.perf_counter()
        if self._sock is None:
            self._sock = self._connect()
        self._sock.sendall(request)
        status, _ = read_response(self._sock)
        elapsed = (time.perf_counter() - started) * 1e6
        if self.mode == "newconn":
            self._sock.close()
            self._sock = None
        self.times_us.append(elapsed)
        self.codes[status] = self.codes.get(status, 0) + 1

    def start(self, warm: int = 20) -> None:
        """Warm up (and, over TLS, make the handshakes, which are not what is measured)."""
        for _ in range(warm):
            self.one()
        self.times_us.clear()
        self.codes.clear()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


# -- proxies ----------------------------------------------------------------------------------


def proxy_command(kind: str, port: int, folder: Path, conf: Path, https: bool) -> list[str]:
    """The command line of one proxy; its CA ends up in ``folder/ca``."""
    listen = ["--listen-host", "127.0.0.1", "--listen-port", str(port)]
    insecure = ["--set", "ssl_insecure=true"] if https else []
    if kind in ("bare", "bare-lazy"):
        # schoolgate forces connection_strategy=lazy; over TLS mitmproxy's default (eager)
        # behaves differently enough (many more upstream connections) to need its own row
        lazy = ["--set", "connection_strategy=lazy"] if kind == "bare-lazy" else []
        return ["mitmdump", "-q", *listen, "--set", f"confdir={folder}/ca", *insecure, *lazy]
    if kind in ("lean", "switchable", "switchable-empty"):
        switchable = {
            "lean": [],
            "switchable": ["--switchable", str(conf / "config.yaml")],
            "switchable-empty": ["--switchable-empty"],
        }[kind]
        return [
            sys.executable,
            str(ROOT / "bench" / "lean_mitmproxy.py"),
            "--data-dir",
            str(folder),
            *listen,
            *insecure,
            *switchable,
        ]
    if kind == "schoolgate":
        return [
            sys.executable,
            "-m",
            "schoolgate.cli",
            "run",
            "--quiet",
            "--config",
            str(conf / "config.yaml"),
            "--data-dir",
            str(folder),  # the CA goes in <data-dir>/ca
            *listen,
            *insecure,
        ]
    return [
        "mitmdump",
        "-q",
        "-s",
        str(ROOT / "addons" / "schoolgate.py"),
        *listen,
        "--set",
        f"schoolgate_config={conf / 'config.yaml'}",
        "--set",
        f"schoolgate_data_dir={folder}",
        "--set",
        f"confdir={folder}/ca",
        *insecure,
    ]


LABELS = {
    "bare": "bare mitmdump -q (allowed)",
    "bare-lazy": "bare mitmdump -q, lazy (allowed)",
    "lean": "lean: schoolgate run's mitmproxy, no addons",
    "schoolgate": "schoolgate run (allowed)",
    "addons": "mitmdump -q -s addons (allowed)",
}


@dataclass
class Pinning:
    """Which CPU the proxies run on, and which the load generator, origin and this script."""

    proxy_cpu: int | None = None
    load_cpu: int | None = None

    def apply(self, enabled: bool) -> str:
        cpus = sorted(os.sched_getaffinity(0))
        if not enabled or len(cpus) < 2 or not shutil.which("taskset"):
            return "not pinned: proxies, hey and the origin share every CPU"
        self.load_cpu, self.proxy_cpu = cpus[0], cpus[-1]
        os.sched_setaffinity(0, {self.load_cpu})  # hey and the origin's threads inherit it
        return (
            f"pinned: the proxy under load on CPU {self.proxy_cpu}; hey, the origin and this "
            f"script on CPU {self.load_cpu}"
        )


PINNING = Pinning()


@dataclass
class Scenario:
    name: str
    title: str
    url: str
    origin: tuple[str, int]
    hey_args: tuple[str, ...] = ()
    https: bool = False
    # the bare row the others are compared with: the one connecting upstream as schoolgate does
    baseline: str = "bare"


def run_scenarios(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    measure: Callable[[Scenario, argparse.Namespace, Path, Path], None],
) -> int:
    """A load benchmark's ``main``, after its arguments: ``measure(scenario, args, folder,
    config)`` for each scenario ``--scenarios`` names, against a plain and a TLS origin, in a
    temporary folder holding a copy of the test config, with the CPU pinning (``--no-pin``)
    applied and said. 2 when ``hey`` is missing (already said), else 0."""
    chosen = chosen_scenarios(parser, args.scenarios)
    if not have_hey():
        return 2
    print(PINNING.apply(not args.no_pin))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        conf = copy_test_config(work)
        plain, tls = start_origin(), start_origin(work / "origin-tls")
        try:
            scenarios = make_scenarios(plain, tls)
            for name in chosen:
                measure(scenarios[name], args, work, conf)
        finally:
            plain.shutdown()
            tls.shutdown()
    return 0


def make_scenarios(plain: ThreadingHTTPServer, tls: ThreadingHTTPServer) -> dict[str, Scenario]:
    """The scenarios, against a plain and a TLS origin (``start_origin``)."""
    plain_at = ("127.0.0.1", plain.server_address[1])
    tls_at = ("127.0.0.1", tls.server_address[1])
    return {
        "keepalive": Scenario(
            "keepalive",
            "keep-alive",
            f"http://127.0.0.1:{plain_at[1]}/page",
            plain_at,
        ),
        "https": Scenario(
            "https",
            "HTTPS with interception, keep-alive",
            f"https://127.0.0.1:{tls_at[1]}/page",
            tls_at,
            https=True,
            baseline="bare-lazy",
        ),
        "newconn": Scenario(
            "newconn",
            "a new connection per request",
            f"http://127.0.0.1:{plain_at[1]}/page",
            plain_at,
            ("-disable-keepalive",),
        ),
    }


ORIGIN_NAME = "origin.test"  # the TLS origin's name for schoolgate's resolver


def named_origin(
    scenario: Scenario, work: Path
) -> tuple[Scenario, tuple[str, ...], ThreadingHTTPServer | None]:
    """An HTTPS scenario to a named origin (``https://origin.test/page``) instead of an
    address, the proxy arguments that tell schoolgate's resolver the name's address
    (``schoolgate_hosts_file``, as the end-to-end tests do), and that origin's server (the
    caller shuts it down). For proxies with schoolgate's addons: the destination check refuses
    a filtered role a tunnel to an address that names no site (no SNI), so
    ``https://127.0.0.1:PORT`` is no longer an allowed request. The origin listens on port 443
    of a loopback address of its own: hey sends the URL's host *with its port* as the TLS
    server name, which the destination check rightly refuses as malformed, and an odd port
    would be a circumvention finding on every connection. Binding port 443 needs root (or
    CAP_NET_BIND_SERVICE). Other scenarios are returned unchanged, with no server."""
    if not scenario.https:
        return scenario, (), None
    server = None
    for last in range(77, 97):
        try:
            server = start_origin(work / "origin-named-tls", (f"127.0.77.{last}", 443))
            break
        except PermissionError:
            raise SystemExit("the named HTTPS origin needs port 443: run as root") from None
        except OSError:
            continue
    if server is None:
        raise SystemExit("no loopback address 127.0.77.77-96 has port 443 free")
    hosts = work / "bench-hosts"
    hosts.write_text(f"{server.server_address[0]} {ORIGIN_NAME}\n")
    named = dataclasses.replace(
        scenario, url=f"https://{ORIGIN_NAME}/page", origin=(ORIGIN_NAME, 443)
    )
    return named, ("--set", f"schoolgate_hosts_file={hosts}"), server


@dataclass
class Proxy:
    """One proxy process with a data folder of its own."""

    kind: str
    proc: subprocess.Popen
    port: int
    ca: Path

    @classmethod
    def start(
        cls,
        kind: str,
        scenario: Scenario,
        work: Path,
        conf: Path,
        extra: tuple[str, ...] = (),
        stdout: int = subprocess.DEVNULL,
        prefix: tuple[str, ...] = (),
        timeout: float = 30,
    ) -> Proxy:
        """Start one proxy (``extra``: more arguments for its command line; ``stdout``:
        ``subprocess.PIPE`` to read what it prints, as text; ``prefix``: a command it runs
        under, such as valgrind), pinned if the bench pins, and wait until it listens (at most
        ``timeout`` seconds)."""
        folder = Path(tempfile.mkdtemp(prefix=f"{kind}-{scenario.name}-", dir=work))
        port = free_port()
        cmd = [*proxy_command(kind, port, folder, conf, scenario.https), *extra]
        if prefix and cmd[0] == "mitmdump":  # valgrind is given the script's path
            cmd[0] = shutil.which("mitmdump") or str(Path(sys.executable).parent / "mitmdump")
        cmd = [*prefix, *cmd]
        if PINNING.proxy_cpu is not None:
            cmd = ["taskset", "-c", str(PINNING.proxy_cpu), *cmd]
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
        proxy = cls(kind, proc, port, folder / "ca" / "mitmproxy-ca-cert.pem")
        try:
            wait_port(port, proc, timeout)
        except BaseException:
            proxy.stop()
            raise
        return proxy

    def stop(self) -> None:
        stop_process(self.proc)

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client_env(self, https: bool) -> dict[str, str] | None:
        """The environment for a client (hey) of this proxy: over HTTPS, trusting its CA."""
        return dict(os.environ, SSL_CERT_FILE=str(self.ca)) if https else None


def load(
    proxy: Proxy,
    scenario: Scenario,
    args: argparse.Namespace,
    label: str,
    url: str | None = None,
    warm: int = 2,
) -> dict:
    """hey against one proxy (the others idle): throughput, loaded latency, CPU/request."""
    address = proxy.address
    env = proxy.client_env(scenario.https)
    target = url or scenario.url
    if warm:
        hey(target, address, warm, args.concurrency, scenario.hey_args, env)
    cpu_before = cpu_seconds(proxy.proc.pid)
    connections_before = Origin.connections
    result = hey(target, address, args.seconds, args.concurrency, scenario.hey_args, env)
    result["origin_connections"] = Origin.connections - connections_before
    requests = sum(int(n) for n in result["codes"].values())
    # hey's own req/s divides by the time until its last request returned: one connection
    # whose SYN was retried (1 s) after the run adds a second to the run. The responses over
    # the run's length do not have that noise (the ~concurrency requests still in flight at
    # the end count for every proxy alike).
    result["hey_rps"] = result["rps"]
    result["rps"] = requests / args.seconds
    # The proxy's own CPU per request: steadier than req/s when the machine is shared, and
    # what decides throughput for a CPU-bound proxy.
    result["cpu_us"] = (cpu_seconds(proxy.proc.pid) - cpu_before) / max(requests, 1) * 1e6
    print(
        f"{label:<34} {result['rps']:>9.1f} req/s (hey: {result['hey_rps']:.1f})   "
        f"p50 {result['p50_ms']:6.2f} ms   "
        f"p99 {result['p99_ms']:6.2f} ms   proxy CPU {result['cpu_us']:6.0f} us/request   "
        f"{result['codes']}"
    )
    print(f"{'':<34} origin connections opened: {result['origin_connections']}")
    for line in result.get("errors", []):
        print(f"{'':<34} error: {line.strip()}")
    return result


def rounds(
    kinds: list[str],
    scenario: Scenario,
    args: argparse.Namespace,
    work: Path,
    conf: Path,
    named: tuple[Scenario, tuple[str, ...]] | None = None,
) -> tuple[dict, list[Proxy]]:
    """``--rounds`` loads of each proxy, taking turns (the order rotates each round), each
    round with fresh processes: how fast one process runs depends on where its memory landed
    (a few percent from one start to the next), so a comparison of single processes measures
    that luck as much as the code. Each proxy's figures are its medians over the rounds, with
    every round's kept. Returns them and the last round's proxies, still running."""
    runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
    order = list(kinds)
    proxies: list[Proxy] = []
    for number in range(1, args.rounds + 1):
        proxies = []
        try:
            for kind in order:
                own, extra = scenario_of(kind, scenario, named)
                proxies.append(Proxy.start(kind, own, work, conf, extra))
            for proxy in proxies:
                label = LABELS[proxy.kind]
                if args.rounds > 1:
                    label = f"{label}, round {number}"
                own, _ = scenario_of(proxy.kind, scenario, named)
                runs[proxy.kind].append(load(proxy, own, args, label))
        except BaseException:
            for proxy in proxies:
                proxy.stop()
            raise
        if number < args.rounds:
            for proxy in proxies:
                proxy.stop()
        order.append(order.pop(0))
    results = {}
    for kind, done in runs.items():
        results[kind] = {
            key: statistics.median(run[key] for run in done)
            for key in ("rps", "cpu_us", "p50_ms", "p99_ms")
        }
        results[kind]["each_rps"] = [run["rps"] for run in done]
        results[kind]["each_cpu_us"] = [run["cpu_us"] for run in done]
    proxies.sort(key=lambda proxy: kinds.index(proxy.kind))
    return results, proxies


def scenario_of(
    kind: str, scenario: Scenario, named: tuple[Scenario, tuple[str, ...]] | None
) -> tuple[Scenario, tuple[str, ...]]:
    """The scenario a proxy of ``kind`` is loaded with, and its extra arguments: with
    ``named`` (HTTPS), the proxies running schoolgate's addons go to the named origin (their
    destination check refuses a tunnel to a bare address), the others to the address, which
    bare mitmproxy reaches without a resolver of its own; both origins serve the same page."""
    if named is not None and kind in ("schoolgate", "addons"):
        return named
    return scenario, ()


def low_load(
    proxies: list[Proxy],
    scenario: Scenario,
    args: argparse.Namespace,
    named: tuple[Scenario, tuple[str, ...]] | None = None,
) -> dict[str, Probe]:
    """One request to each proxy in turn, ``--latency-rate`` rounds a second: every proxy sees
    the same moments of the (shared, noisy) machine, so their difference is the proxy's."""
    probes = {}
    for p in proxies:
        own, _ = scenario_of(p.kind, scenario, named)
        probes[p.kind] = Probe(p.port, own.origin, own.name, p.ca if own.https else None)
    for probe in probes.values():
        probe.start()
    interval = 1 / args.latency_rate
    deadline = time.monotonic() + (args.latency_seconds or args.seconds)
    next_at = time.monotonic()
    order = list(probes.values())
    while next_at < deadline:
        for probe in order:
            probe.one()
        order.append(order.pop(0))  # no proxy always goes first
        next_at += interval
        pause = next_at - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    for probe in probes.values():
        probe.close()
    return probes


def compare(scenario: Scenario, results: dict[str, dict]) -> None:
    """The ratio and the added latency of each schoolgate row against bare mitmdump, and of
    ``schoolgate run`` against the lean proxy (the same mitmproxy set-up without the addons:
    what the addons alone cost, apart from what the runner saves on mitmproxy's own work)."""
    pairs = (
        ("schoolgate", scenario.baseline, "schoolgate", "bare"),
        ("addons", scenario.baseline, "addons (-s)", "bare"),
        ("schoolgate", "lean", "schoolgate", "lean"),
        ("lean", scenario.baseline, "lean", "bare"),
    )
    for kind, base, name, base_name in pairs:
        ours, bare = results[kind], results[base]
        ratio = ours["rps"] / bare["rps"]
        per_request_us = (1 / ours["rps"] - 1 / bare["rps"]) * 1e6
        suffix = " (allowed)" if scenario.name == "keepalive" else f" ({scenario.name})"
        each = ", ".join(
            f"{o / b:.3f}" for o, b in zip(ours["each_rps"], bare["each_rps"], strict=True)
        )
        print(
            f"ratio {name}/{base_name}{suffix}, medians: {ratio:.3f} "
            f"({(1 - ratio) * 100:+.1f}% cost; ~{per_request_us:.0f} us per request); "
            f"round by round: {each}"
        )
        cpu_cost = ours["cpu_us"] / bare["cpu_us"] - 1
        print(
            f"proxy CPU per request, {name} vs {base_name}{suffix}: {ours['cpu_us']:.0f} vs "
            f"{bare['cpu_us']:.0f} us ({cpu_cost * 100:+.1f}%)"
        )
        low = (ours["low_p50_ms"] - bare["low_p50_ms"], ours["low_p99_ms"] - bare["low_p99_ms"])
        loaded = (ours["p50_ms"] - bare["p50_ms"], ours["p99_ms"] - bare["p99_ms"])
        print(
            f"added latency, {name} - {base_name}{suffix}: low load p50 {low[0]:+.3f} ms, "
            f"p99 {low[1]:+.3f} ms; loaded p50 {loaded[0]:+.2f} ms, p99 {loaded[1]:+.2f} ms"
        )


def measure_scenario(scenario: Scenario, args: argparse.Namespace, work: Path, conf: Path) -> None:
    """The four proxies (and the lazy baseline for HTTPS) in turns over ``--rounds``, then low
    load, then the comparison, for one scenario."""
    print(
        f"origin {scenario.url}; {args.concurrency} connections, {scenario.title}, "
        f"{args.seconds}s each"
    )
    kinds = ["bare", "lean", "schoolgate", "addons"]
    if scenario.baseline != "bare":
        kinds.insert(1, scenario.baseline)
        print(f"(compared with {LABELS[scenario.baseline]})")
    proxies = []
    named = None
    if scenario.https:
        own, extra, origin = named_origin(scenario, work)
        named = (own, extra)
        print(f"(the proxies with schoolgate's addons: {own.url}, the same page)")
    else:
        origin = None
    try:
        results, proxies = rounds(kinds, scenario, args, work, conf, named)
        # before the blocked load below, whose logging may still be flushing after it
        probes = low_load(proxies, scenario, args, named)
        if scenario.name == "keepalive":
            load(
                proxies[kinds.index("schoolgate")],
                scenario,
                args,
                "schoolgate run (blocked, logged)",
                url="http://social.test/x",
            )
    finally:
        for proxy in proxies:
            proxy.stop()
        if origin is not None:
            origin.shutdown()
    print(
        f"low load: 1 connection to each proxy in turn, {args.latency_rate:g} "
        f"requests/s each, {args.latency_seconds or args.seconds}s"
    )
    for kind, probe in probes.items():
        result = results[kind]
        result["low_p50_ms"] = percentile(probe.times_us, 0.5) / 1000
        result["low_p99_ms"] = percentile(probe.times_us, 0.99) / 1000
        print(
            f"{LABELS[kind]:<34} p50 {result['low_p50_ms']:6.3f} ms   "
            f"p99 {result['low_p99_ms']:6.3f} ms   ({len(probe.times_us)} requests) "
            f"{probe.codes}"
        )
    compare(scenario, results)
    print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated, from {', '.join(SCENARIOS)} (default: all)",
    )
    parser.add_argument(
        "--latency-rate",
        type=float,
        default=50,
        help="requests/s of the low-load latency pass (one connection)",
    )
    parser.add_argument(
        "--latency-seconds",
        type=int,
        default=0,
        help="length of the low-load latency pass (default: --seconds)",
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="loads of each proxy, taking turns (default 5)"
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="let the proxies share CPUs with hey and the origin",
    )
    args = parser.parse_args()
    return run_scenarios(parser, args, measure_scenario)


if __name__ == "__main__":
    sys.exit(main())
