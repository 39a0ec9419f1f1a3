"""A real, throwaway MIT Kerberos realm for tests: Debian's ``krb5kdc`` (package ``krb5-kdc``)
with a database made by ``kdb5_util`` and principals and keytabs made by ``kadmin.local``
(``krb5-admin-server``), listening on a free loopback port; ``kinit`` (``krb5-user``) gets
tickets. ``./run-tests`` installs the packages when it runs as root.

Everything lives in a temporary folder: the realm's ``krb5.conf`` is named by ``KRB5_CONFIG``
in :meth:`env`, so the machine's own Kerberos configuration is neither used nor changed.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from gateway_process import free_port, stop_gateway

KRB5KDC = Path("/usr/sbin/krb5kdc")
KDB5_UTIL = Path("/usr/sbin/kdb5_util")
KADMIN_LOCAL = Path("/usr/sbin/kadmin.local")
INSTALL_HINT = (
    "MIT Kerberos' KDC tools were not found. Install Debian's krb5-kdc, krb5-admin-server "
    "and krb5-user packages (./run-tests does it when run as root)."
)
REALM = "SCHOOL.TEST"


def free_udp_and_tcp_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (the KDC listens on both)."""
    for _ in range(50):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise AssertionError("no free port for the KDC")


class KerberosRealm:
    """``SCHOOL.TEST`` on 127.0.0.1: :meth:`start`, :meth:`add_user`, :meth:`add_service`,
    :meth:`kinit`, :meth:`stop`, :meth:`remove`."""

    def __init__(self, realm: str = REALM) -> None:
        for tool in (KRB5KDC, KDB5_UTIL, KADMIN_LOCAL):
            if not tool.is_file():
                raise AssertionError(INSTALL_HINT)
        self.realm = realm
        self.base = Path(tempfile.mkdtemp(prefix="schoolgate-kdc-"))
        self.port = free_udp_and_tcp_port()
        self.krb5_conf = self.base / "krb5.conf"
        self.kdc_conf = self.base / "kdc.conf"
        self.log = self.base / "kdc.log"
        self.rcache = self.base / "rcache"
        self.rcache.mkdir()
        self.proc: subprocess.Popen | None = None
        self._write_config()

    def _write_config(self) -> None:
        self.krb5_conf.write_text(
            f"""[libdefaults]
    default_realm = {self.realm}
    dns_lookup_kdc = false
    dns_lookup_realm = false
    dns_canonicalize_hostname = false
    rdns = false
    udp_preference_limit = 1
    default_ccache_name = FILE:{self.base / "ccache"}

[realms]
    {self.realm} = {{
        kdc = 127.0.0.1:{self.port}
    }}

[domain_realm]
    localhost = {self.realm}
    .school.test = {self.realm}
"""
        )
        self.kdc_conf.write_text(
            f"""[kdcdefaults]
    kdc_listen = 127.0.0.1:{self.port}
    kdc_tcp_listen = 127.0.0.1:{self.port}

[realms]
    {self.realm} = {{
        database_name = {self.base / "principal"}
        key_stash_file = {self.base / "stash"}
        acl_file = {self.base / "kadm5.acl"}
        max_life = 10h
        supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal
    }}

[logging]
    kdc = FILE:{self.log}
"""
        )
        (self.base / "kadm5.acl").write_text("")

    def env(self, ccache: Path | None = None) -> dict[str, str]:
        """Variables for a process in this realm (clients and acceptors)."""
        values = {
            "KRB5_CONFIG": str(self.krb5_conf),
            "KRB5_KDC_PROFILE": str(self.kdc_conf),
            "KRB5RCACHEDIR": str(self.rcache),
            "KRB5CCNAME": f"FILE:{ccache or self.base / 'ccache'}",
        }
        return values

    def _run(self, *argv: str, stdin: str | None = None, env: dict | None = None) -> str:
        import os

        full_env = {**os.environ, **self.env(), **(env or {})}
        out = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=60, env=full_env
        )
        if out.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({out.returncode}):\n{out.stdout}"
                                 f"{out.stderr}\n{self.log_text()}")  # fmt: skip
        return out.stdout

    def kadmin(self, query: str) -> str:
        return self._run(str(KADMIN_LOCAL), "-r", self.realm, "-q", query)

    def start(self) -> None:
        if not (self.base / "principal").exists():
            self._run(str(KDB5_UTIL), "create", "-s", "-r", self.realm, "-P", "master-key-test")
        import os

        # -n: stay in the foreground, so the test owns the process.
        self.proc = subprocess.Popen(
            [str(KRB5KDC), "-n", "-r", self.realm],
            env={**os.environ, **self.env()},
            stdout=(self.base / "krb5kdc.out").open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"krb5kdc exited ({self.proc.returncode}):\n{self.log_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"krb5kdc did not listen:\n{self.log_text()}") from None
                time.sleep(0.1)

    def log_text(self) -> str:
        parts = []
        for path in (self.log, self.base / "krb5kdc.out"):
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def add_user(self, name: str, password: str) -> str:
        self.kadmin(f"addprinc -pw {password} {name}")
        return f"{name}@{self.realm}"

    def add_service(self, principal: str, keytab: Path) -> Path:
        """A service principal with random keys, exported to ``keytab`` (like ktpass/msktutil
        do for Active Directory)."""
        self.kadmin(f"addprinc -randkey {principal}")
        self.kadmin(f"ktadd -k {keytab} {principal}")
        return keytab

    def kinit(self, name: str, password: str, ccache: Path) -> dict[str, str]:
        """A ticket-granting ticket for ``name`` in ``ccache`` (kinit reads the password on
        its standard input); the environment a client then runs with."""
        self._run("kinit", name, stdin=password + "\n", env={"KRB5CCNAME": f"FILE:{ccache}"})
        return self.env(ccache)

    def stop(self) -> None:
        stop_gateway(self.proc)  # SIGTERM, then SIGKILL if it hangs

    def remove(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
