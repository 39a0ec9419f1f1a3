"""Which core each worker of ``schoolgate run --workers N`` is kept on: the supervisor's
choice, the command line it gives each worker, and the worker moving itself there. The
workers themselves, on a real port, are in ``test_workers_e2e.py``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from gateway_process import free_port, start_gateway, stop_gateway

from schoolgate.cli.main import build_parser
from schoolgate.gateway import workers
from schoolgate.gateway.workers import worker_argv, worker_cpus

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("count", "pin", "cpus", "expected"),
    [
        (2, None, [0, 1], [0, 1]),  # a core each: pinned by default
        (4, None, [0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 3]),
        (2, None, [2, 5], [2, 5]),  # the cores taskset or CPUAffinity= allow, in order
        (3, None, [0, 1], None),  # more workers than cores: left to the scheduler
        (3, True, [0, 1], [0, 1, 0]),  # unless asked: the cores in turn
        (2, False, [0, 1], None),  # --no-pin-workers
        (2, None, [], None),  # the cores cannot be known
    ],
)
def test_the_supervisor_gives_each_worker_a_core_when_there_are_enough(
    count: int, pin: bool | None, cpus: list[int], expected: list[int] | None
) -> None:
    assert worker_cpus(count, pin, cpus) == expected


def run_args(*extra: str):
    return build_parser().parse_args(["run", "--workers", "2", *extra])


def cpu_in(argv: list[str]) -> int | None:
    return int(argv[argv.index("--worker-cpu") + 1]) if "--worker-cpu" in argv else None


def test_each_worker_is_told_its_core_and_no_pin_workers_tells_none(monkeypatch, tmp_path):
    monkeypatch.setattr(workers, "allowed_cpus", lambda: [3, 7])
    pinned = run_args()
    assert pinned.pin_workers is None
    assert [cpu_in(worker_argv(pinned, tmp_path, index, 2)) for index in (1, 2)] == [3, 7]
    free = run_args("--no-pin-workers")
    assert free.pin_workers is False
    assert [cpu_in(worker_argv(free, tmp_path, index, 2)) for index in (1, 2)] == [None, None]
    # A worker started again later is given the same core.
    assert cpu_in(worker_argv(pinned, tmp_path, 2, 2)) == 7


def test_more_workers_than_cores_are_pinned_only_when_asked(monkeypatch, tmp_path):
    monkeypatch.setattr(workers, "allowed_cpus", lambda: [0])
    assert cpu_in(worker_argv(run_args(), tmp_path, 2, 2)) is None
    asked = run_args("--pin-workers")
    assert [cpu_in(worker_argv(asked, tmp_path, index, 2)) for index in (1, 2)] == [0, 0]


PIN_AND_REPORT = """
import json, os, sys, threading
from schoolgate.gateway.workers import pin_to_cpu
started = threading.Event()
before = threading.Thread(target=started.wait)  # a thread running before the move
before.start()
problem = pin_to_cpu(int(sys.argv[1]))
seen = {}
def report():
    seen["later"] = sorted(os.sched_getaffinity(0))
later = threading.Thread(target=report)
later.start(); later.join()
threads = [threading.get_native_id(), before.native_id]
print(json.dumps({
    "problem": problem,
    "threads": sorted({tuple(sorted(os.sched_getaffinity(t))) for t in threads}),
    "later": seen["later"],
}))
started.set()
"""


def pin_in_a_process(cpu: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PIN_AND_REPORT, str(cpu)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_a_worker_moves_all_its_threads_and_those_it_starts_later() -> None:
    cpu = max(os.sched_getaffinity(0))
    report = pin_in_a_process(cpu)
    assert report == {"problem": None, "threads": [[cpu]], "later": [cpu]}


def test_a_core_that_is_gone_leaves_the_worker_running_anywhere() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    report = pin_in_a_process(4095)  # no such core here
    assert report["problem"]  # the reason, which the worker logs
    assert report["threads"] == [allowed] and report["later"] == allowed


# -- --steer-connections: each connection to the worker on the core that received it ----------
def steer_in(argv: list[str]) -> bool:
    return "--steer-connections" in argv


def test_steering_is_passed_to_pinned_workers_only_when_asked(monkeypatch, tmp_path):
    monkeypatch.setattr(workers, "allowed_cpus", lambda: [0, 1])
    assert not any(steer_in(worker_argv(run_args(), tmp_path, i, 2)) for i in (1, 2))
    steered = run_args("--steer-connections")
    assert workers.check_steering(steered, 2) is None
    for index in (1, 2):
        argv = worker_argv(steered, tmp_path, index, 2)
        assert steer_in(argv) and cpu_in(argv) == index - 1


@pytest.mark.parametrize(
    ("extra", "cpus", "reason"),
    [
        (["--no-pin-workers"], [0, 1], "not --no-pin-workers"),
        ([], [0], "2 workers, 1 cores"),  # more workers than cores: not pinned by default
        ([], [], "2 workers, unknown cores"),
    ],
)
def test_steering_without_a_core_per_worker_is_refused(monkeypatch, extra, cpus, reason):
    monkeypatch.setattr(workers, "allowed_cpus", lambda: cpus)
    problem = workers.check_steering(run_args("--steer-connections", *extra), 2)
    assert problem is not None and "--steer-connections needs" in problem and reason in problem
    assert workers.check_steering(run_args(*extra), 2) is None  # not asked for: nothing to say


def test_steering_more_workers_than_cores_with_pin_workers_shares_the_cores(monkeypatch, tmp_path):
    monkeypatch.setattr(workers, "allowed_cpus", lambda: [0, 1])
    args = build_parser().parse_args(
        ["run", "--workers", "3", "--pin-workers", "--steer-connections"]
    )
    assert workers.check_steering(args, 3) is None
    assert [cpu_in(worker_argv(args, tmp_path, i, 3)) for i in (1, 2, 3)] == [0, 1, 0]


def test_a_steered_listening_socket_names_its_core() -> None:
    with socket.socket() as plain, socket.socket() as steered:
        for sock in (plain, steered):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("127.0.0.1", 0))
        cpu = max(os.sched_getaffinity(0))
        assert workers.steer_to_cpu(steered, cpu) is None
        assert workers.steered_cpu(steered) == cpu
        assert workers.steered_cpu(plain) == -1  # by hash


def test_steering_that_the_socket_refuses_is_reported() -> None:
    sock = socket.socket()
    sock.close()  # e.g. the listener went away meanwhile
    assert workers.steer_to_cpu(sock, 0)  # the reason, which the worker logs


def card(sysfs: Path, name: str, queues: int, rps: str = "0", state: str = "up", device=True):
    folder = sysfs / name
    for n in range(queues):
        (folder / "queues" / f"rx-{n}").mkdir(parents=True)
        (folder / "queues" / f"rx-{n}" / "rps_cpus").write_text(rps + "\n")
    (folder / "operstate").write_text(state + "\n")
    if device:
        (folder / "device").mkdir()


def test_receive_spread_counts_each_cards_queues_or_rps_cores(tmp_path: Path) -> None:
    card(tmp_path, "eth0", 1)  # one queue, no RPS: every connection on one core
    card(tmp_path, "eth1", 4)  # RSS over four queues
    card(tmp_path, "eth2", 1, rps="0000000f")  # one queue, RPS over four cores
    card(tmp_path, "eth3", 1, rps="00000000,00000003")  # the mask as Linux prints >32 cores
    card(tmp_path, "eth4", 8, state="down")  # not receiving anything
    card(tmp_path, "lo", 1, state="unknown", device=False)
    card(tmp_path, "br0", 1, state="up", device=False)  # virtual: received on its ports
    assert workers.receive_spread(tmp_path) == {"eth0": 1, "eth1": 4, "eth2": 4, "eth3": 2}
    assert workers.receive_spread(tmp_path / "missing") == {}


@pytest.mark.parametrize(
    ("release", "steers"),
    [("6.18.44-fc", True), ("6.2.0", True), ("6.1.90-amd64", False), ("5.15.0-91", False)],
)
def test_steering_needs_linux_6_2(monkeypatch, release: str, steers: bool) -> None:
    real = os.uname()
    fake = os.uname_result((real.sysname, real.nodename, release, real.version, real.machine))
    monkeypatch.setattr(workers.os, "uname", lambda: fake)
    monkeypatch.setattr(workers.sys, "platform", "linux")
    assert workers.kernel_steers() is steers


def test_the_supervisor_warns_where_steering_sends_everything_to_one_worker(
    monkeypatch, capsys
) -> None:
    from schoolgate.gateway import runner

    monkeypatch.setattr(workers, "receive_spread", lambda: {"eth0": 1, "eth1": 8})
    monkeypatch.setattr(workers, "kernel_steers", lambda: False)
    runner._warn_of_steering_limits()
    err = capsys.readouterr().err
    assert "eth0 receives on one queue" in err
    assert "/sys/class/net/eth0/queues/rx-0/rps_cpus" in err
    assert "eth1" not in err
    assert "does not steer within a SO_REUSEPORT group" in err


@pytest.mark.e2e
def test_a_gateway_asked_to_steer_unpinned_workers_is_not_started(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "schoolgate.cli", "run", "--data-dir", str(tmp_path / "var")]
        + ["--listen-host", "127.0.0.1", "--listen-port", str(free_port()), "--workers", "2"]
        + ["--no-pin-workers", "--steer-connections"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode == 1
    assert "--steer-connections needs the workers kept on their cores" in out.stderr
    assert "the gateway was not started" in out.stderr


@pytest.mark.e2e
def test_steering_one_process_says_it_does_nothing_and_serves(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "gateway.log"
    proc = start_gateway(
        ROOT / "tests" / "data" / "gateway" / "config.yaml",
        tmp_path / "var",
        port,
        log,
        "--workers",
        "1",
        "--steer-connections",
    )
    try:
        out = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}"]
            + ["-x", f"http://127.0.0.1:{port}", "http://social.test/feed"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.stdout == "403"  # blocked: the one process serves as usual
    finally:
        assert stop_gateway(proc) == 0
    assert "--steer-connections does nothing with one process" in log.read_text()
