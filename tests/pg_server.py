"""A real, throwaway PostgreSQL server for tests: ``initdb`` into a temporary folder and
``pg_ctl start`` on a free loopback port, with Debian's server binaries
(``/usr/lib/postgresql/<version>/bin``, from the ``postgresql`` package, which ``./run-tests``
installs when it runs as root).

initdb refuses to run as root, so as root the server runs as Debian's ``postgres`` system user
(``runuser -u postgres --``) in a folder that user owns. Clients connect over TCP with ``trust``
authentication: the server listens on 127.0.0.1 only and lives as long as the test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from gateway_process import free_port

PG_ROOT = Path("/usr/lib/postgresql")
INSTALL_HINT = (
    "PostgreSQL's server binaries were not found under /usr/lib/postgresql/<version>/bin. "
    "Install Debian's `postgresql` package (apt-get install postgresql; ./run-tests does it "
    "when run as root)."
)
DATABASE = "schoolgate"


def pg_bin_dir() -> Path:
    """The newest installed server's bin folder; AssertionError (not a skip) without one."""
    found = []
    if PG_ROOT.is_dir():
        for child in PG_ROOT.iterdir():
            if re.fullmatch(r"\d+(\.\d+)?", child.name) and (child / "bin" / "initdb").is_file():
                found.append((float(child.name), child / "bin"))
    if not found:
        raise AssertionError(INSTALL_HINT)
    return max(found)[1]


class PostgresServer:
    """One cluster: :meth:`start` (initdb on first use), :meth:`stop`, :meth:`remove`."""

    def __init__(self, port: int | None = None) -> None:
        self.bin = pg_bin_dir()
        self.port = port or free_port()
        self.as_root = os.geteuid() == 0
        # /tmp, not pytest's tmp_path: as root, the postgres user must be able to reach it.
        self.base = Path(tempfile.mkdtemp(prefix="schoolgate-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self.sockets = self.base / "sockets"
        self._initialised = False
        if self.as_root:
            shutil.chown(self.base, user="postgres", group="postgres")
            self.base.chmod(0o700)

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the test database (psycopg 3)."""
        return self.url_of(DATABASE)

    def url_of(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new, empty database on this server; its URL."""
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return self.url_of(name)

    def _run(self, *argv: str, timeout: float = 120) -> str:
        command = [str(self.bin / argv[0]), *argv[1:]]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        out = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, cwd=self.base
        )
        if out.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise AssertionError(
                f"{' '.join(argv)} failed ({out.returncode}):\n{out.stdout}{out.stderr}\n{log}"
            )
        return out.stdout

    def start(self) -> None:
        if not self._initialised:
            self._run(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",  # a throwaway cluster: no need to wait for the disk
            )
            self.sockets.mkdir()
            if self.as_root:
                shutil.chown(self.sockets, user="postgres", group="postgres")
            with (self.data / "postgresql.conf").open("a") as conf:
                conf.write(
                    f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                    f"unix_socket_directories = '{self.sockets}'\n"
                    "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                    "max_connections = 100\nshared_buffers = 32MB\n"
                )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")
        if not self._initialised:
            self._run(
                "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", DATABASE
            )
            self._initialised = True

    def stop(self) -> None:
        """Stop now (``-m fast``: clients are disconnected, as when a server goes down)."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def sql(self, statement: str) -> str:
        """Run one statement with psql; its unaligned, tuples-only output."""
        return self._run(
            "psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", DATABASE,
            "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", statement,
        )  # fmt: skip

    def remove(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


def wait_until(predicate, deadline: float, step: float = 0.1):
    """Poll ``predicate`` until it is true or ``deadline`` (time.monotonic) passes."""
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(step)
