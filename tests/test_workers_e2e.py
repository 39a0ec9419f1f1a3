"""``schoolgate run --workers 2`` for real: a supervisor and two worker processes on one loopback
port, driven by curl over new connections.

Which worker served a connection is read from the gateway's own log: every line a worker
prints starts with ``[worker I pid P]``, and mitmproxy logs ``[client address] client connect``
for each connection, so curl's local port (``%{local_port}``) names the worker that took it.
One gateway serves the module; the tests run in file order (the restart, reload and shutdown
tests come last).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from gateway_process import ROOT, Origin, free_port, run_cli, start_gateway, stop_gateway, wait_for
from test_transparent_e2e import _REASON as TRANSPARENT_UNAVAILABLE
from test_transparent_e2e import Transparent

from schoolgate.gateway.workers import kernel_steers

REQUESTS = 24  # new connections per check: all on one worker by chance is 2**-23

WORKER_LINE = re.compile(r"^\[worker (\d+) pid (\d+)\]", re.M)
CONNECT_LINE = re.compile(
    r"^\[worker (\d+) pid (\d+)\]\[[^\]]*\]\[([\d.]+):(\d+)\] client connect$"
)


def listening(text: str) -> dict[int, int]:
    """Worker index -> pid of the newest worker in that slot that logged it listens."""
    found = {}
    for line in text.splitlines():
        match = WORKER_LINE.match(line)
        if match and "proxy listening at" in line.lower():
            found[int(match[1])] = int(match[2])
    return found


def worker_of(text: str, address: str, port: int) -> tuple[int, int] | None:
    """(worker index, pid) that logged the connection from ``address:port`` (the newest)."""
    for line in reversed(text.splitlines()):
        match = CONNECT_LINE.match(line)
        if match and match[3] == address and int(match[4]) == port:
            return int(match[1]), int(match[2])
    return None


def workers_of(log: Path, address: str, ports: list[int]) -> list[tuple[int, int]]:
    """The workers that took the connections from ``address`` and ``ports``, in order."""

    def found():
        text = log.read_text(errors="replace")
        served = [worker_of(text, address, port) for port in ports]
        return None if None in served else served

    served = wait_for(found)
    if not served:
        text = log.read_text(errors="replace")
        missing = [port for port in ports if worker_of(text, address, port) is None]
        around = [line for line in text.splitlines() if any(f":{p}" in line for p in missing)]
        raise AssertionError(
            f"connections from {address} ports {missing} missing from the log; its lines "
            "naming them:\n" + "\n".join(around)
        )
    return served


class Workers:
    def __init__(self, tmp: Path, *extra: str) -> None:
        folder = tmp / "config"
        shutil.copytree(ROOT / "tests" / "data" / "gateway", folder)
        self.config = folder / "config.yaml"
        self.social_list = folder / "social.txt"
        self.data_dir = tmp / "var"
        self.log = tmp / "gateway.log"
        self.port = free_port()
        self.proxy = f"http://127.0.0.1:{self.port}"
        self.origins = {}
        for host in ("127.0.0.1", "127.0.0.3"):
            server = ThreadingHTTPServer((host, 0), Origin)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self.origins[host] = server
        self.origin = f"http://127.0.0.1:{self.origins['127.0.0.1'].server_address[1]}"
        self.other_origin = f"http://127.0.0.3:{self.origins['127.0.0.3'].server_address[1]}"
        self.proc = start_gateway(
            self.config,
            self.data_dir,
            self.port,
            self.log,
            "--workers",
            "2",
            # Reload only on SIGHUP: the reload test must see the signal reach each worker.
            "--set",
            "schoolgate_reload_interval=0",
            *extra,
            quiet=False,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},  # as the shipped systemd unit runs it
        )
        self.ca = self.data_dir / "ca" / "mitmproxy-ca-cert.pem"
        pids = wait_for(lambda: len(self.listening()) == 2 and self.listening())
        assert pids, f"two workers did not listen:\n{self.text()}"

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def listening(self) -> dict[int, int]:
        return listening(self.text())

    def curl(
        self, url: str, *extra: str, cpu: int | None = None
    ) -> tuple[int, int, dict[str, str], str]:
        """One request over a new connection (made from core ``cpu``, if given): status, curl's
        local port, headers, body."""
        on_core = [] if cpu is None else ["taskset", "-c", str(cpu)]
        out = subprocess.run(
            on_core
            + ["curl", "-s", "-x", self.proxy, "-D", "-", "-w", "\n%{http_code} %{local_port}"]
            + ["--cacert", str(self.ca), *extra, url],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, f"curl {url}: exit {out.returncode} {out.stderr}"
        head, _, tail = out.stdout.rpartition("\n")
        code, port = (int(part) for part in tail.split())
        headers = {}
        for line in head.splitlines():
            name, sep, value = line.partition(":")
            if sep and not line.startswith("HTTP/"):
                headers[name.strip().lower()] = value.strip()
        return code, port, headers, head

    def workers_of(self, ports: list[int]) -> list[tuple[int, int]]:
        return workers_of(self.log, "127.0.0.1", ports)

    def events(self) -> list[dict]:
        return json.loads(
            run_cli(self.config, self.data_dir, "events", "--json", "--limit", "5000")
        )

    def stop(self) -> None:
        stop_gateway(self.proc, 60)
        for pid in self.listening().values():  # workers a failed test may have left
            try:
                if "schoolgate.cli" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass
        for server in self.origins.values():
            server.shutdown()


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    running = Workers(tmp_path_factory.mktemp("workers"))
    yield running
    running.stop()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_new_connections_are_spread_over_both_workers(gw: Workers) -> None:
    ports = []
    for n in range(REQUESTS):
        code, port, _, body = gw.curl(f"{gw.origin}/page{n}")
        assert code == 200 and f"origin GET /page{n}" in body
        ports.append(port)
    served = gw.workers_of(ports)
    assert {index for index, _ in served} == {1, 2}
    assert {pid for _, pid in served} == set(gw.listening().values())
    assert gw.proc.pid not in {pid for _, pid in served}  # the supervisor serves nothing


def cores_of(pid: int) -> set[str]:
    """The cores each thread of ``pid`` may run on, as /proc shows them (e.g. {"1"})."""
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        found |= {
            line.split(":", 1)[1].strip()
            for line in status.splitlines()
            if line.startswith("Cpus_allowed_list:")
        }
    return found


def every_core() -> str:
    return Path(f"/proc/{os.getpid()}/status").read_text().split("Cpus_allowed_list:")[1].split()[0]


def test_each_worker_is_kept_on_a_core_of_its_own(gw: Workers) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    pids = gw.listening()
    if len(cpus) >= 2:  # a core each: every thread of worker I stays on the I-th core
        for index, pid in pids.items():
            assert cores_of(pid) == {str(cpus[index - 1])}
            assert f"worker {index} of 2 (pid {pid}) on CPU {cpus[index - 1]}" in gw.text()
    else:  # one core for two workers: left to the scheduler unless --pin-workers
        for index, pid in pids.items():
            assert cores_of(pid) == {every_core()}
            assert f"worker {index} of 2 (pid {pid})\n" in gw.text()


@pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2 or not kernel_steers() or not shutil.which("taskset"),
    reason="steering needs two cores, Linux 6.2+ and taskset",
)
def test_steered_connections_go_to_the_worker_on_the_core_that_made_them(tmp_path: Path) -> None:
    # On loopback the kernel receives a connection on the core of the process that opened it:
    # curl on the I-th core stands for a network card queue whose interrupts that core takes.
    steered = Workers(tmp_path, "--steer-connections")
    try:
        cpus = sorted(os.sched_getaffinity(0))[:2]
        pids = steered.listening()
        for index, cpu in enumerate(cpus, 1):
            line = f"worker {index} of 2 (pid {pids[index]}) on CPU {cpu}, taking the connections"
            assert line in steered.text()
        for index, cpu in enumerate(cpus, 1):
            ports = []
            for n in range(REQUESTS // 2):
                code, port, _, body = steered.curl(f"{steered.origin}/steered{n}", cpu=cpu)
                assert code == 200 and f"origin GET /steered{n}" in body
                ports.append(port)
            # By hash, 12 connections on one chosen worker would be a 1 in 4096 chance.
            assert {served for served, _ in steered.workers_of(ports)} == {index}
    finally:
        steered.stop()


def test_blocked_on_every_worker_and_every_block_recorded(gw: Workers) -> None:
    ports, refs = [], []
    for n in range(REQUESTS):
        code, port, headers, body = gw.curl(f"http://social.test/feed{n}")
        assert code == 403 and "social media" in body.lower()
        ports.append(port)
        refs.append(headers["x-schoolgate-ref"])
    assert {index for index, _ in gw.workers_of(ports)} == {1, 2}
    recorded = wait_for(lambda: {e["ref"] for e in gw.events()} >= set(refs))
    assert recorded, "blocks missing from the decision log"


def test_every_worker_presents_the_one_ca(gw: Workers) -> None:
    """HTTPS interception over new connections: curl checks each worker's certificate against
    the CA in the data folder, so a worker with a CA of its own would fail here."""
    ports = []
    for n in range(REQUESTS):
        code, port, headers, body = gw.curl(f"https://social.test/tls{n}")
        assert code == 403 and headers.get("x-schoolgate-ref")
        ports.append(port)
    assert {index for index, _ in gw.workers_of(ports)} == {1, 2}
    assert sorted(p.name for p in (gw.data_dir / "ca").glob("mitmproxy-ca*.pem")) == [
        "mitmproxy-ca-cert.pem",
        "mitmproxy-ca.pem",
    ]


def test_jobs_and_notifications_run_in_worker_one_only(gw: Workers) -> None:
    lines = gw.text().splitlines()
    scheduled = [line for line in lines if "schoolgate jobs scheduled" in line]
    assert len(scheduled) == 1 and scheduled[0].startswith("[worker 1 ")
    senders = [line for line in lines if "portal notification sender started" in line]
    assert len(senders) == 1 and senders[0].startswith("[worker 1 ")
    # ...while both serve the portal itself.
    assert {line[:9] for line in lines if "portal served at" in line} == {"[worker 1", "[worker 2"}


def test_a_second_gateway_on_the_same_port_is_refused(gw: Workers, tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "schoolgate.cli", "run", "--config", str(gw.config)]
        + ["--data-dir", str(tmp_path / "var"), "--listen-host", "127.0.0.1"]
        + ["--listen-port", str(gw.port), "--workers", "2", "--quiet"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode == 1
    assert f"cannot listen on 127.0.0.1:{gw.port}" in out.stderr
    assert "not started" in out.stderr


def test_bad_workers_value_is_refused() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "schoolgate.cli", "run", "--workers", "none"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode == 2
    assert "--workers must be a number or 'auto', not 'none'" in out.stderr


def test_a_killed_worker_is_restarted_and_the_port_keeps_serving(gw: Workers) -> None:
    before = gw.listening()
    victim = before[2]
    cores_before = cores_of(victim)
    os.kill(victim, signal.SIGKILL)
    # Connections queued for the dying worker are lost with it; once the supervisor has seen
    # it go, its socket is closed and, until a new worker 2 listens, worker 1 takes them all.
    gone = f"worker 2 (pid {victim}) exited (signal SIGKILL)"
    assert wait_for(lambda: gone in gw.text()), gw.text()[-4000:]
    code, port, _, _ = gw.curl(f"{gw.origin}/during")
    assert code == 200
    restarted = wait_for(lambda: gw.listening().get(2, victim) != victim and gw.listening())
    assert restarted, f"worker 2 was not started again:\n{gw.text()[-4000:]}"
    assert restarted[1] == before[1]  # worker 1 went on as it was
    assert cores_of(restarted[2]) == cores_before  # back on the core worker 2 had
    ports = []
    for n in range(REQUESTS):
        code, port, _, _ = gw.curl(f"{gw.origin}/after{n}")
        assert code == 200
        ports.append(port)
    assert set(gw.workers_of(ports)) == {(1, restarted[1]), (2, restarted[2])}
    # The restarted worker 2 still leaves the jobs and the notifications to worker 1.
    assert gw.text().count("schoolgate jobs scheduled") == 1
    assert gw.text().count("portal notification sender started") == 1


def test_sighup_reloads_every_worker(gw: Workers) -> None:
    code, _, _, _ = gw.curl(f"{gw.other_origin}/before")
    assert code == 200
    reloads = gw.text().count("policy reloaded from")
    with gw.social_list.open("a") as fh:
        fh.write("127.0.0.3\n")
    gw.proc.send_signal(signal.SIGHUP)
    done = wait_for(lambda: gw.text().count("policy reloaded from") >= reloads + 2)
    assert done, f"not every worker reloaded:\n{gw.text()[-4000:]}"
    ports = []
    for n in range(REQUESTS):
        code, port, _, body = gw.curl(f"{gw.other_origin}/after{n}")
        assert code == 403 and "social media" in body.lower()
        ports.append(port)
    assert {index for index, _ in gw.workers_of(ports)} == {1, 2}


def test_sigterm_stops_all_workers_and_writes_every_event(gw: Workers) -> None:
    workers = gw.listening()
    refs = []
    for n in range(REQUESTS):
        code, _, headers, _ = gw.curl(f"http://social.test/last{n}")
        assert code == 403
        refs.append(headers["x-schoolgate-ref"])
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(60) == 0, gw.text()[-4000:]
    assert not [pid for pid in workers.values() if alive(pid)]
    assert "all workers stopped" in gw.text()
    recorded = {e["ref"] for e in gw.events()}
    assert set(refs) <= recorded


# -- transparent mode: a pupils' network redirected by nftables to two workers ----------------


class TransparentWorkers(Transparent):
    """test_transparent_e2e's namespace, veth and nft redirect, with ``--workers 2``."""

    gateway_args = ("--workers", "2")

    def gateway_up(self) -> None:
        super().gateway_up()
        up = wait_for(lambda: len(listening(self.logs())) == 2)
        assert up, f"two workers did not listen:\n{self.logs()}"

    def get(self, url: str, *extra: str) -> tuple[int, int, str]:
        """curl as the student from inside the namespace: status, local port, body."""
        out = subprocess.run(
            ["ip", "netns", "exec", self.ns, "curl", "-sS", "--max-time", "20"]
            + ["--interface", self.student_ip, "-w", "\n%{http_code} %{local_port}"]
            + [*extra, url],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, f"curl {url}: {out.stderr}\n{self.logs()[-4000:]}"
        body, _, tail = out.stdout.rpartition("\n")
        code, port = (int(part) for part in tail.split())
        return code, port, body


@pytest.fixture(scope="module")
def tnet(tmp_path_factory):
    if TRANSPARENT_UNAVAILABLE is not None:
        pytest.skip(TRANSPARENT_UNAVAILABLE)
    running = TransparentWorkers(tmp_path_factory.mktemp("transparent-workers"))
    try:
        running.start()
        yield running
    finally:
        running.stop()


def test_transparent_mode_spreads_redirected_connections_over_both_workers(
    tnet: TransparentWorkers,
) -> None:
    ports = []
    for n in range(REQUESTS):
        code, port, body = tnet.get(f"http://{tnet.host_ip}/t{n}")
        assert code == 200 and body.endswith(f"/t{n}")  # the origin's answer
        ports.append(port)
    for n in range(REQUESTS):
        code, port, body = tnet.get(
            f"https://social.test/s{n}",
            "--cacert",
            str(tnet.ca),
            "--resolve",
            f"social.test:443:{tnet.host_ip}",
        )
        assert code == 403 and "social media" in body.lower()
        ports.append(port)
    served = workers_of(tnet.log, tnet.student_ip, ports)
    assert {index for index, _ in served[:REQUESTS]} == {1, 2}
    assert {index for index, _ in served[REQUESTS:]} == {1, 2}


# -- log lines from several workers on one stdout ---------------------------------------------

WRITER = """
import asyncio, logging, sys, time
from pathlib import Path
from mitmproxy import options
from mitmproxy.test import tflow
from schoolgate.gateway import workers
from schoolgate.gateway.runner import make_master

index, lines, go = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])

async def main():
    master = make_master(options.Options(), quiet=False)  # the flow printer on, as in the tests
    workers.tag_log_lines(master, index)
    printer = master.addons.get("dumper")
    while not go.exists():
        time.sleep(0.001)
    for n in range(lines):
        logging.getLogger("schoolgate.test").info("[10.0.%d.9:%d] client connect", index, n)
        flow = tflow.tflow(resp=True)
        flow.request.path = f"/w{index}/{n}"
        printer.response(flow)
        print(f"printed by worker {index}: {n}")
        print(f"warned by worker {index}: {n}", file=sys.stderr)

asyncio.run(main())
"""


def test_lines_of_two_workers_on_one_stdout_never_run_together(tmp_path: Path) -> None:
    """Two workers print log records, flow lines and plain prints to one shared file, as
    unbuffered as the shipped systemd unit makes them (``PYTHONUNBUFFERED=1``): each line
    arrives whole, and a log record's line still starts with its worker's tag."""
    lines, go, out = 1500, tmp_path / "go", tmp_path / "shared.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with out.open("wb") as shared:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", WRITER, str(index), str(lines), str(go)],
                stdout=shared,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=env,
            )
            for index in (1, 2)
        ]
    go.touch()
    assert [proc.wait(120) for proc in procs] == [0, 0], out.read_text()[-2000:]
    whole = re.compile(
        r"^\[worker (?P<w>[12]) pid \d+\]\[[^\]]*\] ?\[10\.0\.(?P=w)\.9:\d+\] client connect$"
        r"|^(printed|warned) by worker [12]: \d+$"
        r"|^\S+: GET http://address:22/w[12]/\d+$"
        r"|^ +<< 200 OK .*$"
    )
    text = out.read_text()
    broken = [line for line in text.splitlines() if not whole.match(line)]
    assert not broken, f"{len(broken)} lines run together, such as: {broken[:3]}"
    assert len(text.splitlines()) == 2 * lines * 5
