"""The ``reports`` section of the config: where reports are kept and sent, when the daily and
weekly ones are made, and what marks a pupil as possibly at risk. Read once when the config is
loaded; :mod:`schoolgate.reports.build` and the report jobs use what was read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from schoolgate.core.configfile import Section, parse_clock

DEFAULT_CONCERN_CATEGORIES = (
    "illegal",
    "self_harm",
    "suicide",
    "extremism",
    "radicalisation",
    "weapons",
    "drugs",
    "adult",
    "pornography",
    "violence",
    "gambling",
)
# Search terms that a designated safeguarding lead would want to see. A match is a prompt to
# look, never a judgement.
DEFAULT_CONCERN_TERMS = (
    "suicide",
    "kill myself",
    "self harm",
    "self-harm",
    "how to die",
    "overdose",
    "cutting myself",
    "want to die",
    "anorexia",
    "pro ana",
    "make a bomb",
    "buy a knife",
    "buy drugs",
    "nudes",
    "groomed",
    "run away from home",
)

# The role a name in the config means (a role alias such as "pupil" names a role).
RoleNamed = Callable[[str], str | None]


@dataclass(frozen=True)
class ReportSettings:
    folder: str = "reports"  # under the data dir unless absolute
    email: tuple[str, ...] = ()
    daily_at: str | None = "07:00"
    weekly_at: str | None = "07:30"  # Mondays, for the week before
    top: int = 20
    at_risk_roles: tuple[str, ...] = ("student",)
    concern_categories: tuple[str, ...] = DEFAULT_CONCERN_CATEGORIES
    concern_terms: tuple[str, ...] = DEFAULT_CONCERN_TERMS
    many_blocks_per_day: int = 40
    at_risk_max: int = 15
    escalate_after_hours: float = 24.0  # for "overdue" open requests


def read_reports(sec: Section | None, role_named: RoleNamed | None = None) -> ReportSettings:
    """Validate the ``reports`` section; problems go to ``sec.issues`` (defaults kept).

    ``role_named``: the role a name means (role aliases such as "pupil" name the roles they
    mean in ``at_risk.roles``); None: taken as written."""
    settings = _read_reports(sec) if sec is not None else ReportSettings()
    if role_named is None:
        return settings
    roles = tuple(role_named(role) or role for role in settings.at_risk_roles)
    return replace(settings, at_risk_roles=roles)


def _read_reports(sec: Section) -> ReportSettings:
    sec.check_keys(
        {"folder", "email", "daily_at", "weekly_at", "top", "at_risk", "escalate_after_hours"}
    )
    values: dict[str, Any] = {}
    folder = sec.text("folder")
    if folder:
        values["folder"] = folder
    emails = []
    for text, line, field_name in sec.strings("email"):
        if "@" not in text:
            sec.issues.add(sec.file, line, field_name, f"expected an e-mail address, got {text!r}")
        else:
            emails.append(text)
    values["email"] = tuple(emails)
    for key in ("daily_at", "weekly_at"):
        if sec.data.get(key) is False:
            values[key] = None  # "daily_at: false" turns that report off
        else:
            values[key] = sec.parse(
                key, parse_clock, "a time such as 07:00 (or false)", default=getattr(
                    ReportSettings, key)
            )  # fmt: skip
    values["top"] = sec.number("top", default=20, minimum=1, maximum=500)
    hours = sec.get("escalate_after_hours", (int, float), "a number of hours", default=24)
    values["escalate_after_hours"] = float(hours)
    risk = sec.section("at_risk")
    if risk is not None:
        risk.check_keys(
            {"roles", "concern_categories", "concern_terms", "many_blocks_per_day", "max"}
        )
        if "roles" in risk:
            values["at_risk_roles"] = tuple(t for t, _, _ in risk.strings("roles"))
        if "concern_categories" in risk:
            values["concern_categories"] = tuple(
                t for t, _, _ in risk.strings("concern_categories")
            )
        if "concern_terms" in risk:
            values["concern_terms"] = tuple(
                t.lower() for t, _, _ in risk.strings("concern_terms") if t
            )
        values["many_blocks_per_day"] = risk.number("many_blocks_per_day", default=40, minimum=1)
        values["at_risk_max"] = risk.number("max", default=15, minimum=1, maximum=200)
    return ReportSettings(**values)
