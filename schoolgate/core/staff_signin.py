"""How staff sign in to the portal, as configured: ``portal.totp`` (two-factor codes for local
accounts) and ``portal.oidc`` (the school's identity provider: Microsoft Entra ID, Google
Workspace, or any OpenID Connect provider). Read into frozen dataclasses; every problem is
reported with its file, line and field.

```yaml
portal:
  totp:
    required_for: [network_manager, it_support, slt]   # roles that must use a code
    issuer: Hillside Academy web filter                 # the name in the authenticator app
  oidc:
    providers:
      - name: entra                      # in the sign-in address: /staff/oidc/entra/...
        kind: entra                      # entra, google or generic
        label: Sign in with Microsoft
        issuer: https://login.microsoftonline.com/<tenant id>/v2.0
        client_id: 00000000-0000-0000-0000-000000000000
        client_secret_file: /etc/schoolgate/entra-secret   # or client_secret: "..."
        allowed_tenants: [<tenant id>]
        roles_from: staff_table          # or groups (with group_roles)
```

Pure: nothing here connects to anything (the client is :mod:`schoolgate.portal.oidc`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from schoolgate.core.configfile import Section

STAFF_ROLES = ("it_support", "slt", "teacher", "network_manager", "dsl")
KINDS = ("entra", "google", "generic")
ROLE_SOURCES = ("staff_table", "groups")
GOOGLE_ISSUER = "https://accounts.google.com"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
# The claim naming the staff account, by kind of provider.
DEFAULT_USERNAME_CLAIM = {"entra": "preferred_username", "google": "email", "generic": "email"}


@dataclass(frozen=True)
class TotpSettings:
    """``portal.totp``: who must use a second factor, and the name authenticator apps show."""

    required_for: frozenset[str] = frozenset()
    issuer: str = ""  # empty: the school's name, or "schoolgate"

    def required(self, roles: Iterable[str]) -> bool:
        return any(role in self.required_for for role in roles)


@dataclass(frozen=True)
class OidcProvider:
    """One identity provider staff may sign in with."""

    name: str
    kind: str
    label: str
    issuer: str
    client_id: str
    client_secret: str = field(repr=False)
    discovery_url: str
    allowed_tenants: frozenset[str] = frozenset()  # Entra: the "tid" claim
    allowed_domains: frozenset[str] = frozenset()  # Google: "hd"; others: the e-mail's domain
    username_claim: str = "email"
    strip_domain: bool = True  # "mrs.khan@school.example" is staff account "mrs.khan"
    roles_from: str = "staff_table"
    groups_claim: str = "groups"
    group_roles: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    scopes: tuple[str, ...] = ("openid", "email", "profile")


@dataclass(frozen=True)
class OidcSettings:
    providers: tuple[OidcProvider, ...] = ()

    def provider(self, name: str) -> OidcProvider | None:
        return next((p for p in self.providers if p.name == name), None)


def read_totp(sec: Section | None) -> TotpSettings:
    if sec is None:
        return TotpSettings()
    sec.check_keys({"required_for", "issuer"})
    roles = _roles(sec, "required_for")
    issuer = sec.text("issuer") or ""
    if len(issuer) > 100:
        sec.error("issuer", f"expected at most 100 characters, got {len(issuer)}")
        issuer = ""
    return TotpSettings(required_for=frozenset(roles), issuer=issuer)


def _roles(sec: Section, key: str) -> list[str]:
    out = []
    for text, line, name in sec.strings(key):
        if text not in STAFF_ROLES:
            known = ", ".join(STAFF_ROLES)
            sec.issues.add(sec.file, line, name, f"expected a staff role ({known}), got {text!r}")
        else:
            out.append(text)
    return out


def _https(sec: Section, key: str, value: str | None) -> str | None:
    """An https:// address (plain http only to a loopback address: a provider on this host)."""
    if value is None:
        return None
    try:
        parts = urlsplit(value)
        host = parts.hostname or ""
    except ValueError:
        sec.error(key, f"expected an https:// address, got {value!r}")
        return None
    if parts.scheme == "https" and host:
        return value.rstrip("/")
    if parts.scheme == "http" and _loopback(host):
        return value.rstrip("/")
    sec.error(key, f"expected an https:// address, got {value!r}")
    return None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _secret(sec: Section, base: Path) -> str:
    given = sec.text("client_secret")
    file_text = sec.text("client_secret_file")
    if given and file_text:
        sec.error("client_secret", "give either 'client_secret' or 'client_secret_file', not both")
        return ""
    if file_text:
        path = Path(file_text).expanduser()
        path = path if path.is_absolute() else base / path
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            sec.error("client_secret_file", f"cannot read {path}: {exc.strerror or exc}")
            return ""
        if not value:
            sec.error("client_secret_file", f"{path} is empty")
        return value
    if not given:
        sec.error(None, "missing required field 'client_secret' (or 'client_secret_file')")
        return ""
    return given


def _provider(sec: Section, base: Path, seen: set[str]) -> OidcProvider | None:
    sec.check_keys(
        {
            "name", "kind", "label", "issuer", "discovery_url", "client_id", "client_secret",
            "client_secret_file", "allowed_tenants", "allowed_domains", "username_claim",
            "strip_domain", "roles_from", "groups_claim", "group_roles", "scopes",
        }
    )  # fmt: skip
    before = len(sec.issues)
    name = (sec.text("name", required=True) or "").lower()
    if name and not _NAME.match(name):
        sec.error("name", f"expected lower-case letters, digits, '-' or '_', got {name!r}")
    elif name in seen:
        sec.error("name", f"a second provider named {name!r}; give each its own name")
    seen.add(name)
    kind = sec.choice("kind", KINDS, default="generic") or "generic"
    issuer = sec.text("issuer") or (GOOGLE_ISSUER if kind == "google" else None)
    if issuer is None:
        sec.error(None, "missing required field 'issuer' (the provider's issuer address)")
    issuer = _https(sec, "issuer", issuer)
    discovery = _https(sec, "discovery_url", sec.text("discovery_url"))
    if discovery is None and issuer is not None:
        discovery = f"{issuer}/.well-known/openid-configuration"
    client_id = sec.text("client_id", required=True) or ""
    secret = _secret(sec, base)
    tenants = frozenset(t.lower() for t, _, _ in sec.strings("allowed_tenants") if t)
    domains = frozenset(d.lower().lstrip("@") for d, _, _ in sec.strings("allowed_domains") if d)
    if kind == "entra" and not tenants:
        sec.error(
            None,
            "missing required field 'allowed_tenants' (the school's Entra tenant id: without "
            "it anyone with a Microsoft account could sign in)",
        )
    if kind == "google" and not domains:
        sec.error(
            None,
            "missing required field 'allowed_domains' (the school's Google Workspace domain: "
            "without it anyone with a Google account could sign in)",
        )
    if kind == "generic" and not domains and sec.flag("strip_domain", default=True):
        sec.error(
            "strip_domain",
            "with strip_domain (the default) give 'allowed_domains', the e-mail domains whose "
            "users are the school's staff",
        )
    roles_from = sec.choice("roles_from", ROLE_SOURCES, default="staff_table") or "staff_table"
    group_roles: dict[str, tuple[str, ...]] = {}
    groups = sec.section("group_roles")
    if groups is not None:
        for group in groups.keys():
            roles = _roles(groups, group)
            if roles:
                group_roles[str(group)] = tuple(roles)
    if roles_from == "groups" and not group_roles:
        sec.error(
            "roles_from",
            "roles_from: groups needs 'group_roles' (which group gives which portal role)",
        )
    scopes = tuple(t for t, _, _ in sec.strings("scopes")) or ("openid", "email", "profile")
    if "openid" not in scopes:
        sec.error("scopes", "expected the scopes to include 'openid'")
    if len(sec.issues) > before or issuer is None or discovery is None:
        return None
    return OidcProvider(
        name=name,
        kind=kind,
        label=sec.text("label") or f"Sign in with {name}",
        issuer=issuer,
        client_id=client_id,
        client_secret=secret,
        discovery_url=discovery,
        allowed_tenants=tenants,
        allowed_domains=domains,
        username_claim=sec.text("username_claim") or DEFAULT_USERNAME_CLAIM[kind],
        strip_domain=sec.flag("strip_domain", default=True),
        roles_from=roles_from,
        groups_claim=sec.text("groups_claim") or "groups",
        group_roles=MappingProxyType(group_roles),
        scopes=scopes,
    )


def read_oidc(sec: Section | None, base: Path) -> OidcSettings:
    """``portal.oidc``; ``base``: the config's folder (for a relative ``client_secret_file``)."""
    if sec is None:
        return OidcSettings()
    sec.check_keys({"providers"})
    seen: set[str] = set()
    providers = [p for s in sec.sections("providers") if (p := _provider(s, base, seen))]
    return OidcSettings(tuple(providers))


def signin_of(policy: Any) -> tuple[TotpSettings, OidcSettings]:
    """The policy's ``portal.totp`` and ``portal.oidc`` (defaults when not configured)."""
    settings = getattr(policy, "settings", None)
    if settings is None:
        return TotpSettings(), OidcSettings()
    return settings.portal.totp, settings.portal.oidc
