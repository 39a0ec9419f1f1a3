"""The ``portal`` section of the config, as the portal uses it: which exceptions IT Support may
only propose (SLT approves them), and how staff sign in (two-factor codes, the school's identity
provider). Read once when the config is loaded."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from schoolgate.core.configfile import Section
from schoolgate.core.staff_signin import OidcSettings, TotpSettings, read_oidc, read_totp

PORTAL_KEYS = {"host", "port", "secret_key_file", "listen_host", "slt_required", "totp", "oidc"}


@dataclass(frozen=True)
class SltRequired:
    """Which exceptions need SLT approval even when IT Support grant them.

    ``scopes``: exceptions for a whole role, site or everyone; ``longer_than_days``: longer
    than this (and permanent ones); None for no limit. Whatever they say, un-listing a site
    (a permanent host exception for everyone, kind ``unlist``) and adding a site to a category
    (kind ``categorise``: it changes what everyone may reach) always need SLT.
    """

    scopes: tuple[str, ...] = ("role", "site", "everyone")
    longer_than_days: int | None = 91

    def reason(self, *, scope: str, ends: datetime | None, now: datetime, kind: str) -> str | None:
        """Why SLT must approve this exception, or None if IT Support may grant it."""
        if kind in ALWAYS_SLT:
            return ALWAYS_SLT[kind]
        if scope in self.scopes:
            return f"an exception for {scope} needs SLT approval"
        if self.longer_than_days is not None:
            if ends is None:
                return "a permanent exception needs SLT approval"
            if ends - now > timedelta(days=self.longer_than_days):
                return f"an exception longer than {self.longer_than_days} days needs SLT approval"
        return None

    @classmethod
    def from_config(cls, section: dict[str, Any] | None) -> SltRequired:
        if not section:
            return cls()
        # ``unlist`` may still be in a config: un-listing needs SLT whatever it says.
        return cls(
            scopes=tuple(section.get("scopes", cls.scopes)),
            longer_than_days=section.get("longer_than_days", cls.longer_than_days),
        )


ALWAYS_SLT = {
    "unlist": "un-listing a site for everyone needs SLT approval",
    "categorise": "adding a site to a category changes it for everyone: it needs SLT approval",
}


@dataclass(frozen=True)
class PortalSettings:
    host: str = "schoolgate.internal"  # the portal's name (as Settings.portal_host)
    slt_required: SltRequired = field(default_factory=SltRequired)
    totp: TotpSettings = field(default_factory=TotpSettings)
    oidc: OidcSettings = field(default_factory=OidcSettings)


def read_portal(sec: Section | None, base: Path) -> PortalSettings:
    """The ``portal`` section (``host``, ``port`` and the secret are the runner's); ``base``: the
    config's folder (for a relative ``oidc`` client secret file)."""
    if sec is None:
        return PortalSettings()
    sec.check_keys(PORTAL_KEYS)
    return PortalSettings(
        host=(sec.text("host") or PortalSettings.host).lower(),
        slt_required=SltRequired.from_config(_slt_required(sec.section("slt_required"))),
        # staff sign-in: two-factor codes and the school's identity provider
        totp=read_totp(sec.section("totp")),
        oidc=read_oidc(sec.section("oidc"), base),
    )


EXCEPTION_SCOPES = ("user", "group", "role", "site", "everyone")


def _slt_required(sec: Section | None) -> dict[str, Any] | None:
    """``portal.slt_required``: which exceptions IT Support may only propose (SLT approves).
    ``{scopes: [role, site, everyone], longer_than_days: 91}``; ``longer_than_days: false``
    (or null) sets no limit on the length. Un-listing and adding a site to a category always
    need SLT: ``unlist`` is still accepted, and ``unlist: false`` is warned of and ignored."""
    if sec is None:
        return None
    sec.check_keys({"scopes", "longer_than_days", "unlist"})
    out: dict[str, Any] = {}
    if "scopes" in sec:
        scopes = []
        for text, line, field_name in sec.strings("scopes"):
            if text not in EXCEPTION_SCOPES:
                sec.issues.add(
                    sec.file,
                    line,
                    field_name,
                    f"expected one of {', '.join(EXCEPTION_SCOPES)}, got {text!r}",
                )
            elif text not in scopes:
                scopes.append(text)
        out["scopes"] = scopes
    if "longer_than_days" in sec:
        if sec.data.get("longer_than_days") in (None, False):
            out["longer_than_days"] = None
        else:
            days = sec.number("longer_than_days", minimum=0)
            if days is not None:
                out["longer_than_days"] = days
    if "unlist" in sec and not sec.flag("unlist", default=True):
        sec.issues.warn(
            sec.file,
            sec.line_of("unlist"),
            sec.field("unlist"),
            "un-listing a site for everyone always needs SLT approval: 'unlist: false' is ignored",
        )
    return out
