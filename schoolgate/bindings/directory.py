"""Checking a password against the school's directory (LDAP, Active Directory) with ldap3.

Two ways to find the user, as the config says: a service account searches for the user's entry
(``user_base`` + ``user_filter``) and the password is checked by binding as that entry; or a
direct bind (``bind_as``: ``{user}@school.local`` or ``SCHOOL\\{user}`` for Active Directory, a
DN template for others). The user's groups (``memberOf``, and a search under ``group_base``,
nested ones too on Active Directory) give the role through the configured mapping.

The outcomes are distinct, because the sign-in page says different things: a wrong password
(:class:`WrongPassword`, the same words for an unknown user so that names cannot be probed),
an account the directory refuses (:class:`AccountUnusable`: disabled, locked, expired), no
group that gives a role (:class:`NoRole`), and a directory that cannot be asked
(:class:`DirectoryUnavailable`), which fails closed: nobody is signed in. Passwords never leave
this machine in clear text unless the config says so, and an empty password is refused before
it reaches the directory (an LDAP bind with no password "succeeds" as anonymous).

Blocking calls: used from the portal's worker threads, never the event loop.
"""

from __future__ import annotations

import logging
import re
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ldap3 import BASE, NONE, SUBTREE, Connection, Server, Tls
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn, parse_dn

from schoolgate.bindings.names import UnusableName, parse_principal
from schoolgate.core.identity_settings import DirectorySettings

log = logging.getLogger(__name__)

MAX_PASSWORD = 256
# Active Directory's reasons behind an invalidCredentials (the "data NNN" in its message).
AD_REASONS = {
    "525": None,  # no such user: the same answer as a wrong password
    "52e": None,  # wrong password
    "530": "this account may not sign in at this time of day",
    "531": "this account may not sign in from here",
    "532": "the password has expired; change it on a school computer first",
    "533": "this account is disabled",
    "701": "this account has expired",
    "773": "the password must be changed; change it on a school computer first",
    "775": "this account is locked out after too many wrong passwords; ask IT Support",
}
_AD_DATA = re.compile(r"data ([0-9a-f]{3})", re.IGNORECASE)
IN_CHAIN = "1.2.840.113556.1.4.1941"  # LDAP_MATCHING_RULE_IN_CHAIN: nested groups on AD


class DirectoryError(Exception):
    """A sign-in the directory did not allow; ``message`` is for the person signing in."""

    message = "Sign-in failed."

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail  # for the log: never shown to the person signing in


class WrongPassword(DirectoryError):
    message = "That user name and password do not match. Check them and try again."


class AccountUnusable(DirectoryError):
    def __init__(self, detail: str, reason: str) -> None:
        super().__init__(detail)
        self.message = f"The school's directory refused this account: {reason}."


class NoRole(DirectoryError):
    message = (
        "Your account is not in a group that may use the school's internet here. Ask IT Support."
    )


class DirectoryUnavailable(DirectoryError):
    message = (
        "Sign-in is not available: the school's directory cannot be reached. Nobody can "
        "sign in until it is back; tell IT Support."
    )


@dataclass(frozen=True)
class DirectoryUser:
    username: str  # as the roster knows it: lower case, no domain
    dn: str
    display_name: str | None
    groups: tuple[str, ...]  # DNs
    role: str
    server: str  # which server answered


class _CheckedTls(Tls):
    """ldap3's TLS with Python's own certificate and host name checks (ldap3 2.9 does its own
    host name check, which on Python 3.12 cannot match an IP address)."""

    def __init__(self, settings: DirectorySettings, host: str) -> None:
        super().__init__(
            validate=ssl.CERT_REQUIRED if settings.verify else ssl.CERT_NONE,
            ca_certs_file=str(settings.ca_file) if settings.ca_file else None,
        )
        self._host = host
        self._verify = settings.verify

    def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
        context = ssl.create_default_context(cafile=self.ca_certs_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if not self._verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        connection.socket = context.wrap_socket(
            connection.socket,
            server_side=False,
            do_handshake_on_connect=do_handshake,
            server_hostname=self._host,
        )


def _first_value(entry: dict[str, Any], name: str) -> str | None:
    for key, value in entry.items():
        if key.lower() == name.lower():
            if isinstance(value, list):
                return str(value[0]) if value else None
            return str(value) if value is not None else None
    return None


def _values(entry: dict[str, Any], name: str) -> list[str]:
    for key, value in entry.items():
        if key.lower() == name.lower():
            return [str(v) for v in (value if isinstance(value, list) else [value])]
    return []


def group_names(dn: str) -> set[str]:
    """A group's DN and its name (the first RDN's value), lower case, for the role mapping."""
    names = {dn.lower()}
    try:
        first = parse_dn(dn)[0]
        names.add(str(first[1]).lower())
    except (LDAPException, IndexError, ValueError):
        pass
    return names


class Directory:
    """Checks passwords against the configured directory servers, in order."""

    def __init__(self, settings: DirectorySettings) -> None:
        self.settings = settings

    @property
    def servers(self) -> list[Server]:
        # New each time: ldap3 remembers a server that failed as unusable for a while, and a
        # directory that is back must be usable at once.
        return [self._server(url) for url in self.settings.servers]

    def _server(self, url: str) -> Server:
        parts = urlsplit(url)
        assert parts.hostname is not None
        use_ssl = parts.scheme == "ldaps"
        tls = _CheckedTls(self.settings, parts.hostname)
        return Server(
            parts.hostname,
            port=parts.port or (636 if use_ssl else 389),
            use_ssl=use_ssl,
            tls=tls,
            get_info=NONE,
            connect_timeout=self.settings.timeout_seconds,
        )

    # -- connections ---------------------------------------------------------------------------
    def _open(self, server: Server, user: str | None, password: str | None) -> Connection:
        """A connection to ``server`` (TLS started if configured), bound as ``user`` when given.
        Raises LDAPException when the server cannot be used."""
        conn = Connection(
            server,
            user=user,
            password=password,
            auto_bind=False,
            raise_exceptions=False,
            read_only=True,
            receive_timeout=self.settings.timeout_seconds,
        )
        conn.open()
        if self.settings.start_tls:
            conn.start_tls()  # raises on failure: never fall back to clear text
        return conn

    def _connect(self, user: str | None, password: str | None) -> tuple[Connection, Server]:
        """The first server that answers; bound as ``user`` (for the service account)."""
        errors = []
        for server in self.servers:
            try:
                conn = self._open(server, user, password)
                if user is not None and not conn.bind():
                    result = dict(conn.result or {})
                    conn.unbind()
                    raise DirectoryUnavailable(
                        f"{server.host}: the service account {user!r} was refused "
                        f"({result.get('description')}: {result.get('message')})"
                    )
                return conn, server
            except LDAPException as exc:
                errors.append(f"{server.host}:{server.port}: {type(exc).__name__}: {exc}")
            except OSError as exc:
                errors.append(f"{server.host}:{server.port}: {exc}")
        raise DirectoryUnavailable("no directory server answered: " + "; ".join(errors))

    # -- the check -----------------------------------------------------------------------------
    def authenticate(self, username: str, password: str) -> DirectoryUser:
        """The user, if ``password`` is theirs and a group gives them a role; otherwise a
        :class:`DirectoryError` saying which of the distinct failures it is."""
        try:
            principal = parse_principal(username)
        except UnusableName as exc:
            raise WrongPassword(f"unusable user name {username!r}: {exc}") from None
        if not principal.is_person:
            raise WrongPassword(f"{username!r} is a machine account")
        if not password or len(password) > MAX_PASSWORD or "\x00" in password:
            raise WrongPassword(f"empty or unusable password for {principal.name!r}")
        name = principal.name
        try:
            if self.settings.bind_as:
                return self._direct(name, password)
            return self._search_then_bind(name, password)
        except LDAPException as exc:
            raise DirectoryUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def _search_then_bind(self, name: str, password: str) -> DirectoryUser:
        s = self.settings
        conn, server = self._connect(s.bind_dn, s.bind_password)
        try:
            assert s.user_base is not None
            entry = self._find(conn, name)
            if entry is None:
                raise WrongPassword(f"no directory entry for {name!r} under {s.user_base}")
            dn = entry["dn"]
            self._bind_as(server, dn, password, name)
            groups = self._groups(conn, dn, name, entry["attributes"])
        finally:
            conn.unbind()
        return self._user(name, dn, entry["attributes"], groups, server)

    def _direct(self, name: str, password: str) -> DirectoryUser:
        s = self.settings
        assert s.bind_as is not None
        is_dn = "=" in s.bind_as.replace("{user}", "")
        login = s.bind_as.format(user=escape_rdn(name) if is_dn else name)
        errors = []
        for server in self.servers:
            try:
                conn = self._open(server, login, password)
            except (LDAPException, OSError) as exc:
                errors.append(f"{server.host}:{server.port}: {type(exc).__name__}: {exc}")
                continue
            try:
                if not conn.bind():
                    self._refused(conn.result, name)
                entry = self._find(conn, name) if s.user_base else None
                dn = entry["dn"] if entry else (login if is_dn else "")
                attributes = entry["attributes"] if entry else {}
                groups = self._groups(conn, dn, name, attributes) if dn else []
            finally:
                conn.unbind()
            return self._user(name, dn, attributes, groups, server)
        raise DirectoryUnavailable("no directory server answered: " + "; ".join(errors))

    def _bind_as(self, server: Server, dn: str, password: str, name: str) -> None:
        try:
            conn = self._open(server, dn, password)
        except (LDAPException, OSError) as exc:
            raise DirectoryUnavailable(f"{server.host}: {type(exc).__name__}: {exc}") from exc
        try:
            if not conn.bind():
                self._refused(conn.result, name)
        finally:
            conn.unbind()

    def _refused(self, result: dict[str, Any] | None, name: str) -> None:
        result = dict(result or {})
        code = result.get("result")
        message = str(result.get("message") or "")
        detail = f"bind as {name!r} refused: {result.get('description')} {message}".strip()
        if code == 49:  # invalidCredentials
            found = _AD_DATA.search(message)
            reason = AD_REASONS.get(found.group(1).lower()) if found else None
            if reason:
                raise AccountUnusable(detail, reason)
            raise WrongPassword(detail)
        if code in (53,):  # unwillingToPerform: e.g. a disabled account on some servers
            raise AccountUnusable(detail, "it cannot sign in now")
        if code in (50,):  # insufficientAccessRights
            raise AccountUnusable(detail, "it may not sign in")
        raise DirectoryUnavailable(detail)

    def _find(self, conn: Connection, name: str) -> dict[str, Any] | None:
        s = self.settings
        query = s.user_filter.format(user=escape_filter_chars(name))
        ok = conn.search(
            s.user_base,
            query,
            search_scope=SUBTREE,
            attributes=["memberOf", "cn", "displayName"],
            size_limit=2,
        )
        if not ok and (conn.result or {}).get("result") not in (0, 4, 32):
            raise DirectoryUnavailable(f"search {query} under {s.user_base}: {conn.result}")
        entries = [e for e in conn.response or [] if e.get("type") == "searchResEntry"]
        if len(entries) > 1:
            raise AccountUnusable(
                f"{len(entries)} entries match {query} under {s.user_base}",
                "more than one directory entry has this name; ask IT Support",
            )
        return entries[0] if entries else None

    def _groups(
        self, conn: Connection, dn: str, name: str, attributes: dict[str, Any]
    ) -> list[str]:
        s = self.settings
        groups = _values(attributes, "memberOf")
        if s.group_base:
            if s.nested_groups:
                query = f"(member:{IN_CHAIN}:={escape_filter_chars(dn)})"
            else:
                query = s.group_filter.format(
                    dn=escape_filter_chars(dn), user=escape_filter_chars(name)
                )
            if conn.search(s.group_base, query, search_scope=SUBTREE, attributes=["cn"]):
                groups += [
                    e["dn"] for e in conn.response or [] if e.get("type") == "searchResEntry"
                ]
            elif (conn.result or {}).get("result") not in (0, 32):
                raise DirectoryUnavailable(f"group search {query}: {conn.result}")
        seen: dict[str, str] = {}
        for group in groups:
            seen.setdefault(group.lower(), group)
        return list(seen.values())

    def _user(
        self,
        name: str,
        dn: str,
        attributes: dict[str, Any],
        groups: list[str],
        server: Server,
    ) -> DirectoryUser:
        role = self.role_for(groups)
        if role is None:
            raise NoRole(f"{name!r} ({dn}) is in no group with a role: {groups}")
        display = _first_value(attributes, "displayName") or _first_value(attributes, "cn")
        return DirectoryUser(name, dn, display, tuple(groups), role, f"{server.host}")

    def role_for(self, groups: list[str]) -> str | None:
        names: set[str] = set()
        for group in groups:
            names |= group_names(group)
        for mapping in self.settings.roles:
            if mapping.group.lower() in names:
                return mapping.role
        return self.settings.default_role

    def check(self) -> str:
        """Connect (and bind the service account): which server answered. Raises
        :class:`DirectoryUnavailable` otherwise. For ``check-config`` and the status page."""
        s = self.settings
        try:
            conn, server = self._connect(s.bind_dn, s.bind_password)
        except LDAPException as exc:
            raise DirectoryUnavailable(f"{type(exc).__name__}: {exc}") from exc
        try:
            if s.user_base:
                conn.search(s.user_base, "(objectClass=*)", search_scope=BASE, attributes=[])
        finally:
            conn.unbind()
        return f"{server.host}:{server.port}"
