"""The ``retention`` section of the config: how long each kind of record is kept and when the
nightly purge runs. Read once when the config is loaded; the purge
(:mod:`schoolgate.jobs.retention`) uses what was read."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from schoolgate.core.configfile import Section, parse_clock

# Kinds of record, the config key for each, the default in days, and what it covers.
RETENTION_KINDS: dict[str, tuple[int, str]] = {
    "decisions_days": (90, "the decision log: blocks, allowed requests, errors"),
    "safeguarding_days": (
        2190,
        "safeguarding evidence: circumvention attempts, blocks in safeguarding categories, "
        "events named in a content report or a ban",
    ),
    "requests_days": (365, "closed access requests and content reports"),
    "exceptions_days": (365, "exceptions and curriculum overrides, counted from their end"),
    "bans_days": (730, "ended bans and their supervision records"),
    "audit_days": (2190, "the audit trail (who changed the filtering, and when)"),
    "safeguarding_cases_days": (
        2190,
        "safeguarding cases (notes, outcome, the matches linked), counted from their closing",
    ),
    "reports_days": (400, "report files kept under the reports folder"),
    "outbox_days": (30, "notifications already sent"),
    "search_days": (30, "searches that matched no risk term (monitoring)"),
    "page_risk_days": (
        365,
        "searches and page titles that matched a risk term, or could not be graded (monitoring)",
    ),
}
DEFAULT_SAFEGUARDING_CATEGORIES = ("illegal", "circumvention")


@dataclass(frozen=True)
class RetentionSettings:
    decisions_days: int = 90
    safeguarding_days: int = 2190
    requests_days: int = 365
    exceptions_days: int = 365
    bans_days: int = 730
    audit_days: int = 2190
    safeguarding_cases_days: int = 2190
    reports_days: int = 400
    outbox_days: int = 30
    search_days: int = 30
    page_risk_days: int = 365
    safeguarding_categories: tuple[str, ...] = DEFAULT_SAFEGUARDING_CATEGORIES
    purge_at: str = "02:30"

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def read_retention(sec: Section | None) -> RetentionSettings:
    """Validate the ``retention`` section; problems go to ``sec.issues`` (defaults kept)."""
    if sec is None:
        return RetentionSettings()
    sec.check_keys({*RETENTION_KINDS, "safeguarding_categories", "purge_at"})
    values: dict[str, Any] = {}
    for key, (default, _what) in RETENTION_KINDS.items():
        values[key] = sec.number(key, default=default, minimum=1, maximum=36500)
    cats = [text for text, _, _ in sec.strings("safeguarding_categories")]
    if "safeguarding_categories" in sec:
        values["safeguarding_categories"] = tuple(cats)
    values["purge_at"] = sec.parse("purge_at", parse_clock, "a time such as 02:30", default="02:30")
    settings = RetentionSettings(**values)
    if settings.safeguarding_days < settings.decisions_days:
        sec.error(
            "safeguarding_days",
            "safeguarding evidence must be kept at least as long as the decision log "
            f"({settings.decisions_days} days)",
        )
    return settings
