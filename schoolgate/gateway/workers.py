"""Several gateway processes on one listening port: ``schoolgate run --workers N``.

mitmproxy runs one event loop on one core, so one process saturates one core. With
``--workers N`` the ``schoolgate run`` process becomes a small supervisor that starts N worker
processes (``schoolgate run ... --worker I/N``, a fresh interpreter each, no fork of a process
with threads) and each worker listens on the same address with ``SO_REUSEPORT``: the kernel
gives each worker a listening socket of its own in one group and spreads new connections over
them by a hash of the connection's addresses. Nothing sits between a client and its worker.

* **Listening**: mitmproxy (11 and 12) opens its TCP listeners with ``asyncio.start_server``,
  which has a ``reuse_port`` argument that mitmproxy never passes and no option to set.
  :func:`listen_with_reuse_port` makes the worker's event loop pass it, so every version that
  calls ``loop.create_server`` is covered without copying mitmproxy's listening code. That
  is mitmproxy's inside, so ``--workers`` runs several processes only on the mitmproxy
  versions the tests cover (:func:`can_share_port`; otherwise one process, with a warning). Linux
  only lets sockets of the same user join a group, so another user cannot take a share of the
  port; :func:`check_port_free` refuses to start when anything already listens there (such as
  a second gateway on the same port), which ``SO_REUSEPORT`` would otherwise join silently.
* **Shared state**: the supervisor creates the mitmproxy CA, the database schema and the
  block-page secret before any worker starts (:func:`prepare_shared_state`), so that every
  worker presents the same CA and no two workers race to migrate the database.
* **Cores**: when there are at least as many cores as workers (or with ``--pin-workers``),
  worker I runs on the I-th core this process may use (``sched_setaffinity``; a ``taskset``
  or systemd ``CPUAffinity=`` set is respected), and stays there, with its caches, instead
  of being moved between cores by the scheduler: about 5% more new connections a second on
  two cores (bench/RESULTS.md). By default the kernel chooses the worker of each connection
  by a hash of its addresses. With ``--steer-connections`` each worker's listening socket
  also names its core (``SO_INCOMING_CPU``; Linux 6.2+ honours it in a ``SO_REUSEPORT``
  group), so that a connection goes to the worker on the core whose receive queue took it
  (hash again when no worker is on that core): the connection's packets, its handshake and
  its worker then share one core's caches. It is not the default because on a network card
  with one receive queue (and no RPS) every connection arrives on one core and would go to
  one worker (see :func:`receive_spread`).
* **Run once**: the scheduled jobs, the portal's notification sender and the portal on
  ``--portal-port`` run in worker 1 only (the others get ``schoolgate_jobs=false``,
  ``schoolgate_portal_sender=false``).
* **Signals**: SIGTERM and SIGINT go to every worker, each flushes its decision log and exits,
  then the supervisor exits. SIGHUP goes to every worker (each reloads the policy). A worker
  that dies is started again (after 1 s, doubling while it keeps dying within
  ``STABLE_SECONDS`` of its start, up to 30 s); after ``MAX_QUICK_FAILURES`` quick deaths in a
  row the supervisor stops everything and exits 1, so that systemd's ``Restart=on-failure``
  or the operator sees the failure instead of a gateway stuck restarting.
* Each worker's log lines start with ``[worker I pid P]`` (the journal shows the supervisor's
  PID for all of them), and a worker exits if the supervisor dies (``PR_SET_PDEATHSIG``), so
  no orphan keeps a share of the port.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import functools
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

STABLE_SECONDS = 10.0  # a worker that ran this long before dying was not crash-looping
MAX_QUICK_FAILURES = 5
FIRST_DELAY = 1.0
MAX_DELAY = 30.0
STOP_TIMEOUT = 30.0  # then SIGKILL: the decision log's own flush gives up after 15 s

# Modes whose listener is one asyncio TCP server (the only ones SO_REUSEPORT is set for).
TCP_MODES = ("regular", "transparent", "upstream", "reverse", "socks5")

_PR_SET_PDEATHSIG = 1


def cpu_count() -> int:
    """The cores this process may run on (a cgroup or ``taskset`` may allow fewer than all)."""
    return len(allowed_cpus()) or max(1, os.cpu_count() or 1)


def parse_workers(text: str) -> int:
    """``--workers``: a number of processes, or ``auto`` for one per core."""
    if text.strip().lower() == "auto":
        return cpu_count()
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--workers must be a number or 'auto', not {text!r}"
        ) from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"--workers must be at least 1, not {count}")
    return count


def allowed_cpus() -> list[int]:
    """The cores this process may run on, in order ([] where that cannot be known)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return []


def worker_cpus(count: int, pin: bool | None, cpus: Sequence[int]) -> list[int] | None:
    """The core each of ``count`` workers runs on (worker I gets item I-1), or None to leave
    them to the scheduler. ``pin`` None (the default): a core each when there are enough of
    ``cpus``, else none; True: pin even then, taking the cores in turn; False: never."""
    if pin is False or not cpus or (pin is None and count > len(cpus)):
        return None
    return [cpus[i % len(cpus)] for i in range(count)]


def parse_worker(text: str) -> tuple[int, int]:
    """The hidden ``--worker I/N`` a supervisor gives each worker."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--worker must be I/N, not {text!r}") from None
    if not 1 <= index <= count:
        raise argparse.ArgumentTypeError(f"--worker {text}: I must be between 1 and N")
    return index, count


# -- the supervisor's checks and preparation -------------------------------------------------
def check_mode(mode: str) -> str | None:
    """Why ``mode`` cannot run as several workers, or None if it can."""
    from mitmproxy.proxy import mode_specs

    try:
        spec = mode_specs.ProxyMode.parse(mode)
    except ValueError as exc:
        return f"invalid --mode {mode!r}: {exc}"
    if spec.type_name not in TCP_MODES:
        return (
            f"--workers supports the modes {', '.join(TCP_MODES)}; "
            f"not {spec.type_name!r} (run one process for it)"
        )
    return None


def listen_address(mode: str, host: str, port: int) -> tuple[str, int]:
    """Where the mode listens (a mode spec may name its own ``@host:port``)."""
    from mitmproxy.proxy import mode_specs

    spec = mode_specs.ProxyMode.parse(mode)
    return spec.listen_host(host), spec.listen_port(port) or port


def check_port_free(host: str, port: int) -> str | None:
    """Why nobody may listen on ``host:port`` now (in use, not allowed), or None.

    Binds every address asyncio would listen on, without ``SO_REUSEPORT``: that fails if any
    socket listens there, with or without the option (so a gateway already running on the
    port is found, not joined)."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        return f"cannot resolve the listen address {host or '*'}: {exc}"
    for family, kind, proto, _name, address in {info for info in infos}:
        try:
            sock = socket.socket(family, kind, proto)
        except OSError:
            continue  # e.g. no IPv6 on this host: asyncio skips it too
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
                sock.listen(1)
            except OSError as exc:
                return f"cannot listen on {address[0] or '*'}:{port}: {exc.strerror or exc}"
    return None


def prepare_shared_state(data_dir: Path, confdir: Path, database_url: str) -> None:
    """What all workers share, made once before they start: the CA (else each worker would
    create a CA of its own on an empty data folder and clients would see several), the
    database schema (concurrent migrations of one SQLite file fail) and the page secret."""
    from mitmproxy import certs
    from mitmproxy.options import KEY_SIZE

    from schoolgate.gateway.blockpage import load_or_create_secret
    from schoolgate.storage.db import open_database

    certs.CertStore.from_store(confdir, "mitmproxy", KEY_SIZE)
    load_or_create_secret(data_dir)
    sessions = open_database(database_url)
    sessions.kw["bind"].dispose()  # the workers open their own connections


def worker_argv(args: argparse.Namespace, data_dir: Path, index: int, count: int) -> list[str]:
    """The command line of worker ``index`` (1-based) of ``count``: this ``run``'s own
    options, with the portal port for worker 1 only (one process can bind it)."""
    argv = [sys.executable, "-m", "schoolgate.cli", "run"]
    if getattr(args, "config", None):
        argv += ["--config", str(args.config)]
    argv += ["--data-dir", str(data_dir)]
    argv += ["--listen-host", getattr(args, "listen_host", None) or ""]
    argv += ["--listen-port", str(getattr(args, "listen_port", None) or 8080)]
    argv += ["--mode", getattr(args, "mode", None) or "regular"]
    if getattr(args, "quiet", False):
        argv.append("--quiet")
    for spec in getattr(args, "set", None) or []:
        argv += ["--set", spec]
    if index == 1 and getattr(args, "portal_port", None):
        argv += ["--portal-port", str(args.portal_port)]
        if getattr(args, "portal_host", None):
            argv += ["--portal-host", args.portal_host]
    argv += ["--worker", f"{index}/{count}"]
    cpus = worker_cpus(count, getattr(args, "pin_workers", None), allowed_cpus())
    if cpus is not None:
        argv += ["--worker-cpu", str(cpus[index - 1])]
        if getattr(args, "steer_connections", False):
            argv.append("--steer-connections")
    return argv


def check_steering(args: argparse.Namespace, count: int) -> str | None:
    """Why ``--steer-connections`` cannot work with these options, or None (also when it was
    not asked for). It needs each worker kept on a core: steering gives a connection to a
    worker whose socket names the core that received it."""
    if not getattr(args, "steer_connections", False):
        return None
    if getattr(args, "pin_workers", None) is False:
        return "--steer-connections needs the workers kept on their cores, not --no-pin-workers"
    cpus = allowed_cpus()
    if worker_cpus(count, getattr(args, "pin_workers", None), cpus) is None:
        return (
            f"--steer-connections needs each worker kept on a core: {count} workers, "
            f"{len(cpus) or 'unknown'} cores (fewer workers, or --pin-workers to share cores)"
        )
    return None


def kernel_steers() -> bool:
    """Whether this kernel honours ``SO_INCOMING_CPU`` when it picks a socket of a
    ``SO_REUSEPORT`` group (Linux 6.2 and later; before, only without the group)."""
    match = re.match(r"(\d+)\.(\d+)", os.uname().release)
    if match is None or not sys.platform.startswith("linux"):
        return False
    return (int(match.group(1)), int(match.group(2))) >= (6, 2)


def receive_spread(sysfs: Path = Path("/sys/class/net")) -> dict[str, int]:
    """For each network card that is up: over how many receive queues (or, with RPS, cores)
    the kernel spreads what it receives. A card at 1 takes every connection on one core, so
    steering would give them all to one worker: the supervisor warns of it. Loopback and the
    virtual interfaces (bridges, VLANs, bonds, ifb: no ``device``) are left out: their
    packets are received on the core of the card or the process that sent them."""
    spread: dict[str, int] = {}
    try:
        interfaces = sorted(sysfs.iterdir())
    except OSError:
        return spread
    for interface in interfaces:
        try:
            up = (interface / "operstate").read_text().strip() != "down"
        except OSError:
            up = False
        if not up or not (interface / "device").exists():
            continue
        try:
            queues = sorted((interface / "queues").glob("rx-*"))
        except OSError:
            continue
        rps_cpus = 0
        for queue in queues:
            try:
                mask = (queue / "rps_cpus").read_text().strip().replace(",", "")
                rps_cpus = max(rps_cpus, bin(int(mask or "0", 16)).count("1"))
            except (OSError, ValueError):
                pass
        if queues:
            spread[interface.name] = max(len(queues), rps_cpus)
    return spread


# -- in a worker -------------------------------------------------------------------------------
def listening_shape_problem() -> str | None:
    """Whether mitmproxy's servers still listen through ``asyncio.start_server`` (which
    :func:`listen_with_reuse_port` relies on): what differs, or None."""
    import inspect

    from mitmproxy.proxy import mode_servers

    if "asyncio.start_server(self.handle_stream" not in inspect.getsource(mode_servers):
        return "mitmproxy's servers no longer listen through asyncio.start_server"
    return None


def can_share_port() -> bool:
    """May several processes share the listening port (:func:`listen_with_reuse_port`)? Only
    on the mitmproxy versions the tests cover; otherwise one WARNING, and one process."""
    from schoolgate import borrowed

    return borrowed.borrow(
        "several worker processes (mitmproxy listening through loop.create_server)",
        "mitmproxy",
        listening_shape_problem,
        "one process serves every connection (--workers 1)",
    )


def listen_with_reuse_port(
    loop: asyncio.AbstractEventLoop, incoming_cpu: int | None = None
) -> None:
    """Make every TCP server ``loop`` creates from now on join a ``SO_REUSEPORT`` group, and
    with ``incoming_cpu`` ask for the connections that core receives (``--steer-connections``).

    mitmproxy's servers call ``asyncio.start_server`` -> ``loop.create_server`` without
    ``reuse_port``; setting the default on the loop (an instance attribute shadowing the
    method) reaches them in mitmproxy 11 and 12 alike. ``SO_REUSEADDR`` stays as asyncio sets
    it."""
    create_server = loop.create_server

    @functools.wraps(create_server)
    async def create_server_reuse_port(*args, **kwargs):
        kwargs.setdefault("reuse_port", True)
        server = await create_server(*args, **kwargs)
        if incoming_cpu is not None:
            from mitmproxy.utils import human

            for sock in server.sockets:
                problem = steer_to_cpu(sock, incoming_cpu)
                if problem is not None:
                    try:
                        where = human.format_address(sock.getsockname())
                    except OSError:  # the socket that refused may be gone
                        where = "its socket"
                    log.warning(
                        "schoolgate: cannot steer the connections CPU %d receives on %s to "
                        "this worker (%s); the kernel spreads them by hash",
                        incoming_cpu,
                        where,
                        problem,
                    )
        return server

    loop.create_server = create_server_reuse_port  # type: ignore[method-assign]


def steer_to_cpu(sock: Any, cpu: int) -> str | None:
    """Mark the listening ``sock`` as the one for connections received on core ``cpu``; why
    it could not, or None."""
    option = getattr(socket, "SO_INCOMING_CPU", None)  # Python defines it on Linux
    if option is None:
        return "SO_INCOMING_CPU is Linux only"
    try:
        sock.setsockopt(socket.SOL_SOCKET, option, cpu)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def steered_cpu(sock: Any) -> int:
    """The core a listening socket asks for (-1: none, connections go by hash)."""
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_INCOMING_CPU)


def pin_to_cpu(cpu: int) -> str | None:
    """Keep every thread of this process (and those it starts later) on core ``cpu``; why it
    could not, or None. A core that went offline or left the cgroup since the supervisor
    chose it is not fatal: the worker then runs wherever the scheduler puts it."""
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        threads = [0]
    try:
        for tid in threads:
            try:
                os.sched_setaffinity(tid, {cpu})
            except ProcessLookupError:  # a thread that ended meanwhile
                pass
    except (AttributeError, OSError, ValueError) as exc:
        return str(exc)
    return None


def exit_with_parent(parent_pid: int) -> None:
    """Have the kernel send SIGTERM to this worker when its supervisor dies (Linux), so that a
    supervisor killed with SIGKILL leaves no worker holding a share of the port."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return  # not Linux: systemd's KillMode still stops the workers with the service
    if os.getppid() != parent_pid:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


class _TaggedFormatter(logging.Formatter):
    def __init__(self, inner: logging.Formatter, tag: str) -> None:
        super().__init__()
        self.inner = inner
        self.tag = tag

    def format(self, record: logging.LogRecord) -> str:
        return self.tag + self.inner.format(record)


class WholeLines:
    """A text stream that passes ``stream`` whole lines only, each batch in one write.

    The workers share one stdout (the journal's socket, or a file). ``print`` writes the text
    and then the newline in two calls, and with ``PYTHONUNBUFFERED=1`` (set by the shipped
    systemd unit) each call is a system call of its own, so another worker's line can land
    between a line and its newline: two lines run together and the second loses its
    ``[worker I pid P]`` tag at the start. Here each thread's text waits until it ends a line,
    then goes to ``stream`` in one write and is flushed."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self._pending = threading.local()

    def write(self, text: str) -> int:
        pending = getattr(self._pending, "text", "") + text
        if pending.endswith("\n"):
            self._pending.text = ""
            self.stream.write(pending)
            self.stream.flush()
        else:
            self._pending.text = pending
        return len(text)

    def flush(self) -> None:
        pending = getattr(self._pending, "text", "")
        if pending:
            self._pending.text = ""
            self.stream.write(pending)
        self.stream.flush()

    def __getattr__(self, name: str) -> object:  # fileno, isatty, encoding... of the stream
        return getattr(self.stream, name)


def tag_log_lines(master: Any, index: int) -> None:
    """Start each line mitmproxy's log handler (its ``termlog`` addon) prints with
    ``[worker I pid P]``, and make every line this process prints reach the shared stdout
    whole (:class:`WholeLines`): the log handler's, the flow printer's (``dumper``) and
    anything printed to ``sys.stdout`` and ``sys.stderr``."""
    handler = getattr(master.addons.get("termlog"), "logger", None)
    printer = master.addons.get("dumper")
    if handler is not None and handler.formatter is not None:
        handler.formatter = _TaggedFormatter(
            handler.formatter, f"[worker {index} pid {os.getpid()}]"
        )
    wrapped: dict[int, WholeLines] = {}

    def whole(stream: IO[str]) -> IO[str]:
        if isinstance(stream, WholeLines):
            return stream  # type: ignore[return-value]
        return wrapped.setdefault(id(stream), WholeLines(stream))  # type: ignore[return-value]

    for stream in (sys.stdout, sys.stderr):
        # Anything holding the stream itself (not the wrapper) still prints each line promptly.
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(line_buffering=True)
    if sys.stdout is not None:
        sys.stdout = whole(sys.stdout)
    if sys.stderr is not None:
        sys.stderr = whole(sys.stderr)
    for owner, attribute in ((handler, "file"), (handler, "stream"), (printer, "outfp")):
        stream = getattr(owner, attribute, None)
        if owner is not None and stream is not None and hasattr(stream, "write"):
            setattr(owner, attribute, whole(stream))


# -- the supervisor ----------------------------------------------------------------------------
def say(message: str) -> None:
    # One write (not print's two), so that no worker's line lands before the newline.
    sys.stderr.write(f"schoolgate: {message}\n")
    sys.stderr.flush()


@dataclass
class _Slot:
    index: int
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    quick_failures: int = 0
    waiter: asyncio.Task | None = field(default=None, repr=False)


class Supervisor:
    """Starts ``count`` workers with ``argv_for(index)``, keeps them running, passes signals
    on. :meth:`run` returns the exit status of ``schoolgate run``."""

    def __init__(self, count: int, argv_for: Callable[[int], Sequence[str]]) -> None:
        self.count = count
        self.argv_for = argv_for
        self.slots = [_Slot(index) for index in range(1, count + 1)]
        self.stopping = False
        self.failed = False
        self._stop = asyncio.Event()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop, sig.name)
        loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)
        say(f"supervisor (pid {os.getpid()}) starting {self.count} workers")
        for slot in self.slots:
            await self._start(slot)
        await self._stop.wait()
        await self._stop_all()
        return 1 if self.failed else 0

    def stop(self, reason: str) -> None:
        if not self.stopping:
            say(f"{reason} received; stopping {self.count} workers")
        self.stopping = True
        self._stop.set()

    def _forward(self, sig: signal.Signals) -> None:
        say(f"{sig.name} received; passing it to the workers")
        for slot in self.slots:
            if slot.proc is not None and slot.proc.returncode is None:
                slot.proc.send_signal(sig)

    async def _start(self, slot: _Slot) -> None:
        env = dict(os.environ, SCHOOLGATE_SUPERVISOR_PID=str(os.getpid()))
        try:
            slot.proc = await asyncio.create_subprocess_exec(*self.argv_for(slot.index), env=env)
        except OSError as exc:
            say(f"cannot start worker {slot.index}: {exc}")
            self.failed = True
            self.stop("start failure")
            return
        slot.started = time.monotonic()
        say(f"worker {slot.index} started (pid {slot.proc.pid})")
        slot.waiter = asyncio.create_task(self._watch(slot, slot.proc))

    async def _watch(self, slot: _Slot, proc: asyncio.subprocess.Process) -> None:
        status = await proc.wait()
        if self.stopping:
            return
        ran = time.monotonic() - slot.started
        slot.quick_failures = slot.quick_failures + 1 if ran < STABLE_SECONDS else 1
        if slot.quick_failures >= MAX_QUICK_FAILURES:
            say(
                f"worker {slot.index} (pid {proc.pid}) exited ({_describe(status)}) "
                f"{slot.quick_failures} times in a row within {STABLE_SECONDS:.0f} s of "
                "starting; giving up"
            )
            self.failed = True
            self.stop("repeated worker failure")
            return
        delay = min(MAX_DELAY, FIRST_DELAY * 2 ** (slot.quick_failures - 1))
        say(
            f"worker {slot.index} (pid {proc.pid}) exited ({_describe(status)}); "
            f"starting it again in {delay:.0f} s"
        )
        try:
            await asyncio.wait_for(self._stop.wait(), delay)
            return  # told to stop meanwhile
        except TimeoutError:
            pass
        await self._start(slot)

    async def _stop_all(self) -> None:
        running = [s.proc for s in self.slots if s.proc is not None and s.proc.returncode is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        for slot in self.slots:
            if slot.waiter is not None and slot.waiter is not asyncio.current_task():
                slot.waiter.cancel()
        for proc in running:
            try:
                status = await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                say(f"worker pid {proc.pid} did not stop within {STOP_TIMEOUT:.0f} s; killing it")
                proc.kill()
                status = await proc.wait()
                self.failed = True
            if status not in (0, -signal.SIGTERM):
                say(f"worker pid {proc.pid} stopped with {_describe(status)}")
                self.failed = True
        say("all workers stopped")


def _describe(status: int | None) -> str:
    if status is None:
        return "still running"
    if status < 0:
        try:
            return f"signal {signal.Signals(-status).name}"
        except ValueError:
            return f"signal {-status}"
    return f"status {status}"
