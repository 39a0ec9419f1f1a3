"""Reading the identity sources' configuration: ``identity.sources``, ``identity.radius``,
``identity.sign_in``, ``identity.negotiate`` and ``identity.dhcp``.

A pure reader: a :class:`~schoolgate.core.configfile.Section` in, frozen dataclasses out, every
problem reported into the section's :class:`~schoolgate.core.configfile.Issues` with the file, line
and field (the config loader raises them all at once). Secrets may be given in a file of their
own (``secret_file``, ``bind_password_file``) so that the config can be shown to others.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from schoolgate.core.binding import SOURCES
from schoolgate.core.configfile import Section

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

IDENTITY_SOURCE_KEYS = frozenset({"sources", "radius", "sign_in", "negotiate", "dhcp"})
LEASE_FORMATS = ("isc", "dnsmasq", "kea")
RADIUS_PORT = 1813


@dataclass(frozen=True)
class RadiusSettings:
    host: str
    port: int
    secret: bytes = field(repr=False)
    clients: tuple[IPNetwork, ...]
    idle_minutes: int = 120
    keep_realm: bool = False


@dataclass(frozen=True)
class RoleGroup:
    group: str  # a group's DN, or its name (cn)
    role: str


@dataclass(frozen=True)
class DirectorySettings:
    servers: tuple[str, ...]  # ldap:// or ldaps:// URLs, tried in order
    start_tls: bool = False
    ca_file: Path | None = None
    verify: bool = True
    allow_plaintext: bool = False
    bind_dn: str | None = None  # the service account that searches for users
    bind_password: str | None = field(default=None, repr=False)
    user_base: str | None = None
    user_filter: str = "(uid={user})"
    bind_as: str | None = None  # a direct bind: "{user}@school.local", "SCHOOL\\{user}"
    group_base: str | None = None
    group_filter: str = "(|(member={dn})(uniqueMember={dn})(memberUid={user}))"
    nested_groups: bool = False  # Active Directory's matching rule in chain
    roles: tuple[RoleGroup, ...] = ()
    default_role: str | None = None
    timeout_seconds: int = 5


@dataclass(frozen=True)
class SignInSettings:
    directory: DirectorySettings | None
    idle_minutes: int = 45
    max_minutes: int = 480
    max_failures: int = 5  # wrong sign-ins per user name and per address ...
    lockout_minutes: int = 10  # ... in this long, before sign-in waits
    # Networks whose unknown devices must sign in (never the guest policy); others may.
    networks: tuple[IPNetwork, ...] = ()
    # The portal's own staff accounts may sign in too, with this role (None: they may not).
    portal_accounts_role: str | None = None


@dataclass(frozen=True)
class NegotiateSettings:
    keytab: Path
    service_host: str | None = None  # the host of HTTP/<host>; None: any key in the keytab
    realms: tuple[str, ...] = ()  # accepted Kerberos realms; empty: any the keytab trusts
    ntlm_users_file: Path | None = None
    bind_address: bool = True
    idle_minutes: int = 60
    max_minutes: int = 600
    keep_realm: bool = False


@dataclass(frozen=True)
class LeaseFile:
    format: str  # one of LEASE_FORMATS
    path: Path
    shown: str  # as named in messages


@dataclass(frozen=True)
class DhcpSettings:
    files: tuple[LeaseFile, ...]
    check_seconds: int = 5


@dataclass(frozen=True)
class IdentitySources:
    sources: tuple[str, ...] = ()  # the order: first wins when two name different people
    radius: RadiusSettings | None = None
    sign_in: SignInSettings | None = None
    negotiate: NegotiateSettings | None = None
    dhcp: DhcpSettings | None = None


def _path(text: str, base: Path) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


def _secret(sec: Section, key: str, base: Path, *, required: bool, what: str) -> str | None:
    """``key`` inline, or ``key_file`` naming a file that holds it (first line)."""
    file_key = f"{key}_file"
    inline = sec.text(key)
    file_text = sec.text(file_key)
    if inline and file_text:
        sec.error(file_key, f"give either {key} or {file_key}, not both")
        return inline
    if file_text:
        path = _path(file_text, base)
        try:
            value = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            sec.error(file_key, f"cannot read {path}: {exc.strerror or exc}")
            return None
        secret = value[0].strip() if value else ""
        if not secret:
            sec.error(file_key, f"{path} is empty; expected {what} on its first line")
            return None
        return secret
    if inline:
        return inline
    if required:
        sec.error(None, f"missing required field '{key}' or '{file_key}' ({what})")
    return None


def parse_listen(value: object) -> tuple[str, int]:
    """``"0.0.0.0:1813"``, ``"[::]:1813"``, ``":1813"``, ``1813`` -> (host, port)."""
    if isinstance(value, bool):
        raise ValueError("not an address")
    if isinstance(value, int):
        host, port_text = "0.0.0.0", str(value)
    else:
        text = str(value).strip()
        if text.startswith("["):
            host, sep, port_text = text[1:].partition("]:")
            if not sep:
                raise ValueError("write an IPv6 address as [::]:1813")
        elif text.count(":") == 1:
            host, _, port_text = text.partition(":")
        elif text.isdigit():
            host, port_text = "0.0.0.0", text
        else:
            raise ValueError("expected HOST:PORT")
        host = host or "0.0.0.0"
        ipaddress.ip_address(host)
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port must be 1-65535, got {port_text!r}")
    return host, int(port_text)


def _network(value: object) -> IPNetwork:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError("not a network")
    return ipaddress.ip_network(str(value).strip(), strict=False)


def read_radius(sec: Section, base: Path) -> RadiusSettings | None:
    sec.check_keys({"listen", "secret", "secret_file", "clients", "idle_minutes", "keep_realm"})
    host, port = sec.parse(
        "listen", parse_listen, "an address such as 0.0.0.0:1813", default=("0.0.0.0", RADIUS_PORT)
    )
    secret = _secret(sec, "secret", base, required=True, what="the shared secret")
    if secret is not None and len(secret) < 16:
        sec.issues.warn(
            sec.file,
            sec.line_of("secret") if "secret" in sec else sec.line_of("secret_file"),
            sec.field("secret"),
            "a shared secret shorter than 16 characters can be guessed from captured packets; "
            "use a long random one (RFC 2865 section 3)",
        )
    clients: list[IPNetwork] = []
    listed = 0
    for item, line, field_name in sec.items("clients", required=True):
        listed += 1
        try:
            network = _network(item)
        except ValueError as exc:
            sec.issues.add(
                sec.file, line, field_name, f"expected a network such as 10.0.0.2/32: {exc}"
            )
            continue
        if network.prefixlen == 0:
            sec.issues.add(
                sec.file,
                line,
                field_name,
                f"{network} would take accounting from anyone, pupils included; list the "
                "Wi-Fi controllers' and switches' addresses",
            )
            continue
        clients.append(network)
    if "clients" in sec and not listed:
        sec.error("clients", "expected at least one network (the controllers' addresses)")
    idle = sec.number("idle_minutes", default=120, minimum=5, maximum=7 * 24 * 60)
    keep_realm = sec.flag("keep_realm", default=False)
    if secret is None or not clients:
        return None
    return RadiusSettings(host, port, secret.encode(), tuple(clients), idle, keep_realm)


def _check_template(sec: Section, key: str, value: str | None, needs: Iterable[str]) -> None:
    if value is None:
        return
    for name in needs:
        if "{" + name + "}" not in value:
            sec.error(key, f"expected {{{name}}} in {value!r} (where the user's goes)")
    try:
        value.format(user="x", dn="x")
    except (KeyError, IndexError, ValueError) as exc:
        sec.error(key, f"only {{user}} and {{dn}} may appear in braces: {exc}")


def _filter_balanced(text: str) -> bool:
    depth = 0
    for char in text:
        depth += char == "("
        depth -= char == ")"
        if depth < 0:
            return False
    return depth == 0 and text.startswith("(")


def read_directory(
    sec: Section, base: Path, *, roles: set[str] | None, aliases: Mapping[str, str]
) -> DirectorySettings | None:
    sec.check_keys(
        {
            "servers",
            "start_tls",
            "ca_file",
            "verify",
            "allow_plaintext",
            "bind_dn",
            "bind_password",
            "bind_password_file",
            "user_base",
            "user_filter",
            "bind_as",
            "group_base",
            "group_filter",
            "nested_groups",
            "roles",
            "default_role",
            "timeout_seconds",
        }
    )
    start_tls = sec.flag("start_tls", default=False)
    allow_plaintext = sec.flag("allow_plaintext", default=False)
    servers: list[str] = []
    for url, line, field_name in sec.strings("servers", required=True):
        parts = urlsplit(url)
        if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
            sec.issues.add(
                sec.file, line, field_name, f"expected ldaps://HOST or ldap://HOST, got {url!r}"
            )
            continue
        if parts.scheme == "ldap" and not start_tls and not allow_plaintext:
            sec.issues.add(
                sec.file,
                line,
                field_name,
                "passwords would cross the network in clear text: use ldaps://, or "
                "start_tls: true (or allow_plaintext: true for a directory on this host)",
            )
            continue
        if parts.scheme == "ldaps" and start_tls:
            sec.issues.add(
                sec.file, line, field_name, "start_tls is for ldap:// (ldaps:// is TLS already)"
            )
            continue
        servers.append(url)
    ca_text = sec.text("ca_file")
    ca_file = _path(ca_text, base) if ca_text else None
    if ca_file is not None and not ca_file.is_file():
        sec.error("ca_file", f"no such file: {ca_file}")
    verify = sec.flag("verify", default=True)
    bind_dn = sec.text("bind_dn")
    bind_password = _secret(sec, "bind_password", base, required=False, what="the password")
    if bind_dn and bind_password is None:
        sec.error("bind_dn", "a service account needs bind_password or bind_password_file")
    user_base = sec.text("user_base")
    user_filter = sec.text("user_filter", default="(uid={user})") or "(uid={user})"
    bind_as = sec.text("bind_as")
    _check_template(sec, "bind_as", bind_as, ["user"])
    _check_template(sec, "user_filter", user_filter, ["user"])
    if not _filter_balanced(user_filter):
        sec.error("user_filter", f"not an LDAP filter: {user_filter!r}")
    if not bind_as and not user_base:
        sec.error(
            None,
            "say how to find a user: user_base (and user_filter) to search for the user's "
            "entry, or bind_as such as '{user}@school.local' for Active Directory",
        )
    group_filter = sec.text("group_filter") or DirectorySettings.group_filter
    _check_template(sec, "group_filter", group_filter, [])
    if not _filter_balanced(group_filter):
        sec.error("group_filter", f"not an LDAP filter: {group_filter!r}")

    def role_name(value: str | None, key_sec: Section, key: str) -> str | None:
        if value is None:
            return None
        name = aliases.get(value.lower(), value.lower())
        if roles is not None and name not in roles:
            key_sec.error(key, f"unknown role {value!r}; roles are {', '.join(sorted(roles))}")
            return None
        return name

    mapping: list[RoleGroup] = []
    for item in sec.sections("roles"):
        item.check_keys({"group", "role"})
        group = item.text("group", required=True)
        role = role_name(item.text("role", required=True), item, "role")
        if group and role:
            mapping.append(RoleGroup(group, role))
    default_role = role_name(sec.text("default_role"), sec, "default_role")
    timeout = sec.number("timeout_seconds", default=5, minimum=1, maximum=60)
    if not servers:
        return None
    return DirectorySettings(
        servers=tuple(servers),
        start_tls=start_tls,
        ca_file=ca_file,
        verify=verify,
        allow_plaintext=allow_plaintext,
        bind_dn=bind_dn,
        bind_password=bind_password,
        user_base=user_base,
        user_filter=user_filter,
        bind_as=bind_as,
        group_base=sec.text("group_base"),
        group_filter=group_filter,
        nested_groups=sec.flag("nested_groups", default=False),
        roles=tuple(mapping),
        default_role=default_role,
        timeout_seconds=timeout,
    )


def read_sign_in(
    sec: Section, base: Path, *, roles: set[str] | None, aliases: Mapping[str, str]
) -> SignInSettings:
    sec.check_keys(
        {
            "directory",
            "idle_minutes",
            "max_minutes",
            "max_failures",
            "lockout_minutes",
            "networks",
            "portal_accounts",
        }
    )
    directory_sec = sec.section("directory")
    directory = (
        read_directory(directory_sec, base, roles=roles, aliases=aliases)
        if directory_sec is not None
        else None
    )
    idle = sec.number("idle_minutes", default=45, minimum=2, maximum=24 * 60)
    longest = sec.number("max_minutes", default=480, minimum=5, maximum=7 * 24 * 60)
    if idle is not None and longest is not None and longest < idle:
        sec.error("max_minutes", f"the longest session ({longest}) is shorter than idle ({idle})")
    accounts_role: str | None = None
    accounts = sec.section("portal_accounts")
    if accounts is not None:
        accounts.check_keys({"role"})
        text = accounts.text("role", required=True)
        if text:
            name = (aliases or {}).get(text.lower(), text.lower())
            if roles is not None and name not in roles:
                known = ", ".join(sorted(roles))
                accounts.error("role", f"unknown role {text!r}; roles are {known}")
            else:
                accounts_role = name
    if directory_sec is None and accounts is None:
        sec.error(
            None,
            "missing required field 'directory' (where passwords are checked), or "
            "portal_accounts (the portal's own accounts)",
        )
    networks: list[IPNetwork] = []
    for item, line, field_name in sec.items("networks"):
        try:
            networks.append(_network(item))
        except ValueError as exc:
            sec.issues.add(
                sec.file, line, field_name, f"expected a network such as 10.30.0.0/16: {exc}"
            )
    failures = sec.number("max_failures", default=5, minimum=1, maximum=100)
    lockout = sec.number("lockout_minutes", default=10, minimum=1, maximum=24 * 60)
    return SignInSettings(
        directory,
        idle or 45,
        longest or 480,
        failures or 5,
        lockout or 10,
        tuple(networks),
        accounts_role,
    )


def read_negotiate(sec: Section, base: Path) -> NegotiateSettings | None:
    sec.check_keys(
        {
            "keytab",
            "service_host",
            "realms",
            "ntlm",
            "bind_address",
            "idle_minutes",
            "max_minutes",
            "keep_realm",
        }
    )
    keytab_text = sec.text("keytab", required=True)
    keytab = _path(keytab_text, base) if keytab_text else None
    if keytab is not None:
        if not keytab.is_file():
            sec.error("keytab", f"no such file: {keytab} (export it with ktpass or msktutil)")
        elif not os.access(keytab, os.R_OK):
            sec.error("keytab", f"cannot read {keytab}: the gateway's user needs read access")
    missing = [name for name in ("gssapi", "krb5") if importlib.util.find_spec(name) is None]
    if missing:
        sec.error(
            "keytab",
            f"Kerberos needs the Python {' and '.join(missing)} package(s): pip install "
            "'schoolgate[kerberos]' (Debian: apt-get install libkrb5-dev gcc first)",
        )
    ntlm_file: Path | None = None
    ntlm = sec.section("ntlm")
    if ntlm is not None:
        ntlm.check_keys({"users_file"})
        text = ntlm.text("users_file", required=True)
        if text:
            ntlm_file = _path(text, base)
            if not ntlm_file.is_file():
                ntlm.error("users_file", f"no such file: {ntlm_file}")
    realms = tuple(value.upper() for value, _, _ in sec.strings("realms") if value)
    idle = sec.number("idle_minutes", default=60, minimum=2, maximum=24 * 60)
    longest = sec.number("max_minutes", default=600, minimum=5, maximum=7 * 24 * 60)
    if keytab is None:
        return None
    return NegotiateSettings(
        keytab=keytab,
        service_host=sec.text("service_host"),
        realms=realms,
        ntlm_users_file=ntlm_file,
        bind_address=sec.flag("bind_address", default=True),
        idle_minutes=idle or 60,
        max_minutes=longest or 600,
        keep_realm=sec.flag("keep_realm", default=False),
    )


def read_dhcp(sec: Section, base: Path) -> DhcpSettings:
    sec.check_keys({"leases", "check_seconds"})
    files: list[LeaseFile] = []
    for item in sec.sections("leases", required=True):
        item.check_keys({"format", "path"})
        fmt = item.choice("format", LEASE_FORMATS, required=True)
        path_text = item.text("path", required=True)
        if not fmt or not path_text:
            continue
        path = _path(path_text, base)
        if not path.exists():
            item.issues.warn(
                item.file,
                item.line_of("path"),
                item.field("path"),
                f"{path} does not exist yet; it is read when it appears",
            )
        files.append(LeaseFile(fmt, path, str(path)))
    check = sec.number("check_seconds", default=5, minimum=1, maximum=3600)
    return DhcpSettings(tuple(files), check or 5)


def read_identity_sources(
    identity: Section | None,
    *,
    base: Path,
    roles: Iterable[str] | None = None,
    aliases: Mapping[str, str] | None = None,
) -> IdentitySources:
    """The identity sources of an ``identity`` section (its other keys are the config loader's).

    ``roles`` (the config's role names) and ``aliases`` check the directory's group -> role
    mapping; ``base`` is the config's folder, for relative paths.
    """
    if identity is None:
        return IdentitySources()
    known_roles = set(roles) if roles is not None else None
    role_aliases = dict(aliases or {})
    radius_sec = identity.section("radius")
    radius = read_radius(radius_sec, base) if radius_sec is not None else None
    sign_in_sec = identity.section("sign_in")
    sign_in = (
        read_sign_in(sign_in_sec, base, roles=known_roles, aliases=role_aliases)
        if sign_in_sec is not None
        else None
    )
    negotiate_sec = identity.section("negotiate")
    negotiate = read_negotiate(negotiate_sec, base) if negotiate_sec is not None else None
    dhcp_sec = identity.section("dhcp")
    dhcp = read_dhcp(dhcp_sec, base) if dhcp_sec is not None else None

    configured = {
        name for name, sec in (("radius", radius_sec), ("sign_in", sign_in_sec)) if sec is not None
    }
    if negotiate_sec is not None:
        configured.add("negotiate")
    if "sources" in identity:
        order: list[str] = []
        for name, line, field_name in identity.strings("sources"):
            if name == "dhcp":
                identity.issues.add(
                    identity.file,
                    line,
                    field_name,
                    "dhcp names devices, not people: it is not a source of bindings",
                )
            elif name not in SOURCES:
                identity.issues.add(
                    identity.file,
                    line,
                    field_name,
                    f"unknown source {name!r}; expected {', '.join(SOURCES)}",
                )
            elif name in order:
                identity.issues.add(identity.file, line, field_name, f"{name} is listed twice")
            elif name not in configured:
                identity.issues.add(
                    identity.file,
                    line,
                    field_name,
                    f"{name} is listed but identity.{name} is not configured",
                )
            else:
                order.append(name)
        for name in sorted(configured - set(order)):
            identity.issues.warn(
                identity.file,
                identity.line_of(name),
                identity.field(name),
                "configured but not in identity.sources: its bindings are not used",
            )
        sources = tuple(order)
    else:
        sources = tuple(name for name in SOURCES if name in configured)
    return IdentitySources(sources, radius, sign_in, negotiate, dhcp)
