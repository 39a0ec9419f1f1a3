"""Which core each worker of ``schoolgate run --workers N`` is kept on: the supervisor's
choice, the command line it gives each worker, and the worker moving itself there. The
workers themselves, on a real port, are in ``test_workers_e2e.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from schoolgate.cli import build_parser
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
