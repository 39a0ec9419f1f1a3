"""The ``alerts`` section of the config: which blocked categories are alerted to the designated
safeguarding lead at once (besides the locked ones), how long a burst is batched, and whether
content reports are alerted. Read once when the config is loaded; :mod:`schoolgate.jobs.alerts`
batches with what was read."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from schoolgate.core.configfile import Section

DEFAULT_BATCH_MINUTES = 15
MAX_BATCH_MINUTES = 24 * 60
ALERT_KEYS = frozenset({"categories", "batch_minutes", "content_reports"})


@dataclass(frozen=True)
class AlertSettings:
    """The ``alerts:`` section. ``categories``: alerted as well as the locked ones."""

    categories: frozenset[str] = frozenset()
    batch_minutes: int = DEFAULT_BATCH_MINUTES
    content_reports: bool = True

    def alerted(self, policy: Any = None) -> frozenset[str]:
        """The categories alerted under ``policy``: the configured ones and the locked ones."""
        locked: set[str] = set()
        categories = getattr(policy, "categories", None) or {}
        for name, settings in categories.items():
            if getattr(settings, "locked", False):
                locked.add(name)
        return frozenset(self.categories | locked)


def read_alerts(sec: Section | None, categories: Iterable[str] | None = None) -> AlertSettings:
    """Validate the ``alerts`` section; problems go to ``sec.issues`` with file, line and field.

    ``categories``: the policy's category names (a mapping's keys will do); an alert category
    that is not one of them is an error. None: not checked.
    """
    if sec is None:
        return AlertSettings()
    sec.check_keys(ALERT_KEYS)
    known = list(categories) if categories is not None else None
    chosen: set[str] = set()
    for name, line, field_name in sec.strings("categories"):
        if known is not None and name not in known:
            expected = ", ".join(sorted(known)) or "(no categories are defined)"
            sec.issues.add(
                sec.file,
                line,
                field_name,
                f"unknown category {name!r}; expected one of: {expected}",
            )
            continue
        chosen.add(name)
    minutes = sec.number(
        "batch_minutes", default=DEFAULT_BATCH_MINUTES, minimum=1, maximum=MAX_BATCH_MINUTES
    )
    reports = sec.flag("content_reports", default=True)
    return AlertSettings(
        categories=frozenset(chosen),
        batch_minutes=minutes if minutes is not None else DEFAULT_BATCH_MINUTES,
        content_reports=reports,
    )
