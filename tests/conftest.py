"""Shared pytest fixtures: the gateway's config and data dir, a PostgreSQL server and an SMTP
server (other tests build their own configs with ``tests/policy_fixtures.py``); and the ``e2e``
marker, which ``./run-tests -m "not e2e"`` leaves out for a quick loop.

A test is ``e2e`` when it starts a real gateway, Chromium, PostgreSQL, a network namespace or
another real server in a process of its own: every test of a module named ``*_e2e.py``, every
test using a fixture in :data:`E2E_FIXTURES`, and any test marked ``pytest.mark.e2e`` (one
test, or a module with ``pytestmark``). A test not marked that starts such a process fails,
naming it, so the quick loop stays quick and nothing real is skipped by accident.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from gateway_process import free_port
from library_cache import CompiledLibraries
from mail import Inbox
from pg_server import PostgresServer
from slapd_server import DIRECTORY_PASSWORDS, SlapdServer

from schoolgate import borrowed
from schoolgate.gateway import monitoring_addon
from schoolgate.monitoring import compiled

GATEWAY_DATA = Path(__file__).resolve().parent / "data" / "gateway"

# -- the e2e marker --------------------------------------------------------------------------
# Fixtures that start a real server for the test: PostgreSQL, slapd, a Kerberos KDC.
E2E_FIXTURES = frozenset({"pg", "school_directory", "realm"})
# Programs that are a real server, a browser or a network namespace.
SERVER_PROGRAMS = frozenset(
    {"mitmdump", "mitmproxy", "mitmweb", "initdb", "pg_ctl", "postgres", "slapd", "krb5kdc"}
    | {"kadmind", "nginx", "dnsmasq", "unshare", "nsenter", "chromium", "chrome"}
)
# Programs that run another (as another user, on a core...): what they run is what counts.
WRAPPERS = frozenset({"runuser", "sudo", "su", "setpriv", "env", "taskset", "nice", "timeout"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(item, "module", None)
        named_e2e = module is not None and module.__name__.endswith("_e2e")
        if named_e2e or E2E_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


def starts_a_server(argv: Sequence[str]) -> str | None:
    """What real server ``argv`` starts (a gateway, a browser, a database, a namespace...),
    or None for an ordinary command (``schoolgate events``, ``curl``, ``openssl``...)."""
    if not argv:
        return None
    program = os.path.basename(argv[0])
    if program in WRAPPERS:  # `runuser -u postgres -- initdb ...`: the command it runs
        if "--" in argv:
            return starts_a_server(argv[argv.index("--") + 1 :])
        found = (starts_a_server(argv[i:]) for i in range(1, len(argv)))
        return next((what for what in found if what is not None), None)
    if program == "pg_ctl":  # stopping the server (a module's `pg` after its last test) is not
        return program if {"start", "restart"} & set(argv) else None
    if program in SERVER_PROGRAMS or program.startswith("chrom"):
        return program
    if program == "ip" and "netns" in argv:
        return "a network namespace (ip netns)"
    if "run-driver" in argv:  # Playwright's driver, which starts Chromium
        return "Playwright (Chromium)"
    command = None  # the schoolgate subcommand, however it is started
    if program == "schoolgate":
        command = 1
    elif "-m" in argv and argv[argv.index("-m") + 1 :][:1] in (["schoolgate.cli"], ["schoolgate"]):
        command = argv.index("-m") + 2
    elif "-c" in argv and "schoolgate.cli" in argv[argv.index("-c") + 1]:
        command = argv.index("-c") + 2
    if command is not None and argv[command : command + 1] == ["run"]:
        return "a gateway (schoolgate run)"
    return None


_running: list[pytest.Item] = []


def _refuse_servers_outside_e2e(event: str, args: tuple) -> None:
    if event != "subprocess.Popen" or not _running:
        return
    item = _running[-1]
    if item.get_closest_marker("e2e") is not None:
        return
    argv = args[1]
    if isinstance(argv, (str, bytes, os.PathLike)):
        argv = [argv]
    what = starts_a_server([os.fsdecode(a) for a in argv])
    if what is not None:
        raise RuntimeError(
            f"{item.nodeid} starts {what} but is not marked e2e: mark it (pytest.mark.e2e, "
            "a module-level pytestmark, or a module named *_e2e.py)"
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    _running.append(item)
    try:
        yield
    finally:
        _running.remove(item)


sys.addaudithook(_refuse_servers_outside_e2e)


@pytest.fixture(autouse=True)
def _borrowed_warnings_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """schoolgate.borrowed warns once per process; each test starts as a fresh process would."""
    monkeypatch.setattr(borrowed, "_warned", set())


@pytest.fixture(scope="session", autouse=True)
def compiled_libraries(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CompiledLibraries]:
    """Gateways started as processes share one folder of compiled libraries (each would
    otherwise compile the library into its own new data dir)."""
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("compiled-library")
        patch.setenv(compiled.FOLDER_ENV, str(folder))
        yield CompiledLibraries()


@pytest.fixture(autouse=True)
def _library_compiled_once(
    monkeypatch: pytest.MonkeyPatch, compiled_libraries: CompiledLibraries
) -> None:
    """A gateway's risk-term library comes from the test process's compiled libraries (the
    same files compile once; see ``tests/library_cache.py``)."""
    monkeypatch.setattr(monitoring_addon, "load_compiled", compiled_libraries)


@pytest.fixture
def gateway_config(tmp_path: Path) -> Path:
    """A copy of ``tests/data/gateway`` (safe to edit): every day is one long lesson (UTC);
    127.0.0.1 is a student, 127.0.0.2 a visitor whose HTTPS is not intercepted; roster user
    alice is staff; social.test is social media (blocked for students), wiki.test read-only."""
    folder = tmp_path / "config"
    shutil.copytree(GATEWAY_DATA, folder)
    return folder / "config.yaml"


@pytest.fixture
def gateway_data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "var"
    folder.mkdir()
    return folder


@pytest.fixture(scope="session")
def migrated_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite database the migrations brought to the newest schema, once per session."""
    from schoolgate.storage.db import open_database

    path = tmp_path_factory.mktemp("migrated") / "schoolgate.db"
    sessions = open_database(f"sqlite:///{path}")
    sessions.kw["bind"].dispose()  # the last connection closed: the WAL is checkpointed
    return path


@pytest.fixture
def migrated_data_dir(gateway_data_dir: Path, migrated_database: Path) -> Path:
    """``gateway_data_dir`` holding a copy of :func:`migrated_database` as the test config's
    ``schoolgate.db``: for tests of what a running gateway does, not of how it makes its
    database (running the migrations for each would be most of their setup). The gateway
    still checks the schema at start (it is at the newest migration: nothing to run)."""
    shutil.copyfile(migrated_database, gateway_data_dir / "schoolgate.db")
    return gateway_data_dir


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server of the test module's own (Debian's binaries)."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture
def smtp_inbox() -> Iterator[tuple[Inbox, int]]:
    """A real SMTP server (aiosmtpd) on a free loopback port: (its inbox, the port)."""
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def school_directory() -> Iterator[SlapdServer]:
    """A throwaway OpenLDAP server (Debian's slapd) of the test module's own, holding a small
    school: pupil1 and pupil2 in group students, staff1 in group staff, visitor1 in none (the
    passwords are ``DIRECTORY_PASSWORDS``)."""
    server = SlapdServer()
    try:
        server.start()
        dns = {
            uid: server.add_user(uid, password, display)
            for uid, (password, display) in DIRECTORY_PASSWORDS.items()
        }
        server.add_group("students", [dns["pupil1"], dns["pupil2"]])
        server.add_group("staff", [dns["staff1"]])
        yield server
    finally:
        server.remove()
