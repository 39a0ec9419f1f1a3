"""A real, throwaway OpenLDAP server for tests: Debian's ``slapd`` (packages ``slapd`` and
``ldap-utils``, which ``./run-tests`` installs when it runs as root) with a config of its own in
a temporary folder, listening on free loopback ports for ``ldap://`` (with StartTLS) and
``ldaps://``, with a certificate from a test CA made here.

The directory holds a small school: ``ou=people`` and ``ou=groups`` (``groupOfNames``) under
``dc=school,dc=test``, with the ``memberof`` overlay so that users carry ``memberOf`` as Active
Directory's do. Entries are added over LDAP once the server runs (the overlay only maintains
``memberOf`` for changes made through the server).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import ipaddress
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from gateway_process import free_port, stop_gateway
from ldap3 import NONE, Connection, Server

from schoolgate.core.identity_settings import DirectorySettings, RoleGroup

SLAPD = Path("/usr/sbin/slapd")
INSTALL_HINT = (
    "Debian's slapd was not found (/usr/sbin/slapd). Install it: apt-get install slapd "
    "ldap-utils (./run-tests does it when run as root)."
)
SUFFIX = "dc=school,dc=test"
ADMIN_DN = f"cn=admin,{SUFFIX}"
ADMIN_PASSWORD = "admin-secret"
SERVICE_DN = f"cn=svc-schoolgate,ou=service,{SUFFIX}"
SERVICE_PASSWORD = "service-secret"
# The users of the ``school_directory`` fixture (tests/conftest.py): password, display name.
DIRECTORY_PASSWORDS = {
    "pupil1": ("Correct horse 1", "Pupil One"),
    "pupil2": ("Another pupil 4", "Pupil Two"),
    "staff1": ("Staff battery 2", "Staff One"),
    "visitor1": ("Visitor pass 3", "Visitor One"),
}


def ssha(password: str) -> str:
    """An OpenLDAP ``{SSHA}`` password hash, as ``slappasswd`` makes."""
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_ca(folder: Path, common: str = "schoolgate test CA") -> tuple[Path, object, object]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(_name(common))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = folder / f"{common.replace(' ', '-')}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, key, cert


def make_server_cert(folder: Path, ca_key, ca_cert, names: list[str]) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


class SlapdServer:
    """One slapd: :meth:`start`, :meth:`add_user`, :meth:`add_group`, :meth:`stop`,
    :meth:`remove`. ``ldap_url`` (StartTLS or clear) and ``ldaps_url``; ``ca_file`` is the CA
    that signed its certificate (for 127.0.0.1 and localhost)."""

    def __init__(self) -> None:
        if not SLAPD.is_file():
            raise AssertionError(INSTALL_HINT)
        self.base = Path(tempfile.mkdtemp(prefix="schoolgate-slapd-"))
        self.ldap_port = free_port()
        self.ldaps_port = free_port()
        self.ca_file, ca_key, ca_cert = make_ca(self.base)
        names = ["127.0.0.1", "localhost"]
        self.cert, self.key = make_server_cert(self.base, ca_key, ca_cert, names)
        self.log = self.base / "slapd.log"
        self.proc: subprocess.Popen | None = None
        self._write_config()

    @property
    def ldap_url(self) -> str:
        return f"ldap://127.0.0.1:{self.ldap_port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.ldaps_port}"

    def _write_config(self) -> None:
        (self.base / "db").mkdir()
        schema = Path("/etc/ldap/schema")
        includes = "\n".join(
            f"include {schema / name}.schema" for name in ("core", "cosine", "inetorgperson", "nis")
        )
        (self.base / "slapd.conf").write_text(
            f"""{includes}
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
pidfile {self.base / "slapd.pid"}
argsfile {self.base / "slapd.args"}
TLSCACertificateFile {self.ca_file}
TLSCertificateFile {self.cert}
TLSCertificateKeyFile {self.key}
loglevel stats

database mdb
maxsize 10485760
suffix "{SUFFIX}"
rootdn "{ADMIN_DN}"
rootpw {ssha(ADMIN_PASSWORD)}
directory {self.base / "db"}
overlay memberof
memberof-group-oc groupOfNames
memberof-member-ad member
memberof-memberof-ad memberOf
access to attrs=userPassword
    by anonymous auth
    by self write
    by * none
access to *
    by users read
    by * none
"""
        )

    def start(self) -> None:
        """Start slapd and wait until it answers; the base entries are added the first time."""
        first = self.proc is None and not (self.base / "db" / "data.mdb").exists()
        # 127.0.0.2 is loopback too, but not a name in the certificate (for host name checks).
        urls = (
            f"ldap://127.0.0.1:{self.ldap_port}/ ldaps://127.0.0.1:{self.ldaps_port}/ "
            f"ldaps://127.0.0.2:{self.ldaps_port}/"
        )
        # -d keeps slapd in the foreground (its log on stderr): the test owns the process.
        self.proc = subprocess.Popen(
            [str(SLAPD), "-f", str(self.base / "slapd.conf"), "-h", urls, "-d", "stats"],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"slapd exited ({self.proc.returncode}):\n{self.log_text()}")
            try:
                with self.admin() as conn:
                    conn.search(SUFFIX, "(objectClass=*)", attributes=[])
                break
            except Exception:  # noqa: BLE001 - not listening yet
                if time.monotonic() > deadline:
                    raise AssertionError(f"slapd did not answer:\n{self.log_text()}") from None
                time.sleep(0.1)
        if first:
            self._add_base()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def admin(self) -> Connection:
        server = Server("127.0.0.1", port=self.ldap_port, connect_timeout=5, get_info=NONE)
        return Connection(server, ADMIN_DN, ADMIN_PASSWORD, auto_bind=True, receive_timeout=10)

    def _add(self, dn: str, classes: list[str], attributes: dict) -> None:
        with self.admin() as conn:
            if not conn.add(dn, classes, attributes):
                raise AssertionError(f"cannot add {dn}: {conn.result}")

    def _add_base(self) -> None:
        self._add(SUFFIX, ["dcObject", "organization"], {"dc": "school", "o": "Test School"})
        for unit in ("people", "groups", "service"):
            self._add(f"ou={unit},{SUFFIX}", ["organizationalUnit"], {"ou": unit})
        self._add(
            SERVICE_DN,
            ["person", "simpleSecurityObject"],
            {"cn": "svc-schoolgate", "sn": "service", "userPassword": ssha(SERVICE_PASSWORD)},
        )

    def user_dn(self, uid: str) -> str:
        return f"uid={uid},ou=people,{SUFFIX}"

    def group_dn(self, cn: str) -> str:
        return f"cn={cn},ou=groups,{SUFFIX}"

    def add_user(self, uid: str, password: str, display: str | None = None) -> str:
        dn = self.user_dn(uid)
        self._add(
            dn,
            ["inetOrgPerson"],
            {
                "uid": uid,
                "cn": display or uid,
                "sn": uid,
                "displayName": display or uid,
                "userPassword": ssha(password),
            },
        )
        return dn

    def add_group(self, cn: str, members: list[str]) -> str:
        dn = self.group_dn(cn)
        self._add(dn, ["groupOfNames"], {"cn": cn, "member": members})
        return dn

    def stop(self) -> None:
        stop_gateway(self.proc)  # SIGTERM, then SIGKILL if it hangs

    def remove(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


def directory_settings(server: SlapdServer, **changes) -> DirectorySettings:
    """Sign-in against ``server`` over LDAPS with the service account: group staff gives role
    staff, group students (by DN) role student."""
    base = DirectorySettings(
        servers=(server.ldaps_url,),
        ca_file=server.ca_file,
        bind_dn=SERVICE_DN,
        bind_password=SERVICE_PASSWORD,
        user_base=f"ou=people,{SUFFIX}",
        user_filter="(uid={user})",
        roles=(
            RoleGroup("staff", "staff"),
            RoleGroup(f"cn=students,ou=groups,{SUFFIX}", "student"),
        ),
        timeout_seconds=5,
    )
    return dataclasses.replace(base, **changes)
