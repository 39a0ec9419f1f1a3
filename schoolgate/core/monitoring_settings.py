"""The ``monitoring`` section of the config: which searches and page titles the gateway records,
which risk-term library grades them, and when the designated safeguarding lead is told.

Read by the config check (every mistake with its file, line and field) and by the gateway's
monitoring part (:mod:`schoolgate.gateway.monitoring_addon`) from ``Settings.monitoring``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from schoolgate.core.configfile import Section

MONITORING_KEYS = frozenset(
    {
        "enabled",
        "searches",
        "titles",
        "title_bytes",
        "library",
        "languages",
        "immediate_severity",
        "batched_severity",
        "context_minutes",
        "dedupe_minutes",
        "second_opinion",
        "reader",
    }
)


@dataclass(frozen=True)
class MonitoringSettings:
    enabled: bool = True
    searches: bool = True  # record every search as a ``search`` event
    titles: bool = True  # read the titles of allowed HTML pages (``page_risk`` events)
    title_bytes: int = 32 * 1024
    # Folders of the risk-term library, later ones extending earlier ones; () is the shipped one.
    library: tuple[str, ...] = ()
    languages: tuple[str, ...] | None = None  # None: every language folder
    immediate_severity: int = 3  # the DSL is told at once at or above this
    batched_severity: int = 2  # in the DSL's digest at or above this (below: timeline only)
    context_minutes: int = 5  # searches before and after a match named in its alert
    dedupe_minutes: int = 5  # the same search again within this is recorded once
    # The library's learned second opinion also grades searches (where the library has one):
    # True, every search (those the terms and rules flag, and above a stricter threshold those
    # they find nothing in); "flagged", only those they flag; False, none.
    second_opinion: bool | Literal["flagged"] = True
    # The library's neural reader also grades searches (where the library has one): the same
    # three choices.
    reader: bool | Literal["flagged"] = True


def read_monitoring(sec: Section | None, base: Path | None = None) -> MonitoringSettings:
    """Validate the ``monitoring`` section; problems go to ``sec.issues``. ``base``: the folder
    relative library folders are read from (the config file's)."""
    if sec is None:
        return MonitoringSettings()
    sec.check_keys(MONITORING_KEYS)
    folders: list[str] = []
    for text, line, field_name in sec.strings("library"):
        path = Path(text)
        if not path.is_absolute() and base is not None:
            path = base / path
        if not path.is_dir():
            sec.issues.add(sec.file, line, field_name, f"not a folder: {text}")
            continue
        folders.append(str(path))
    languages = tuple(t for t, _, _ in sec.strings("languages")) if "languages" in sec else None
    immediate = sec.number("immediate_severity", default=3, minimum=1, maximum=3)
    batched = sec.number("batched_severity", default=2, minimum=1, maximum=3)
    settings = MonitoringSettings(
        enabled=sec.flag("enabled", default=True),
        searches=sec.flag("searches", default=True),
        titles=sec.flag("titles", default=True),
        title_bytes=sec.number("title_bytes", default=32 * 1024, minimum=1024, maximum=1 << 20)
        or 32 * 1024,
        library=tuple(folders),
        languages=languages,
        immediate_severity=immediate or 3,
        batched_severity=batched or 2,
        context_minutes=sec.number("context_minutes", default=5, minimum=1, maximum=60) or 5,
        dedupe_minutes=sec.number("dedupe_minutes", default=5, minimum=0, maximum=60) or 0,
        second_opinion=_model_mode(sec, "second_opinion"),
        reader=_model_mode(sec, "reader"),
    )
    if settings.batched_severity > settings.immediate_severity:
        sec.error(
            "batched_severity",
            f"must not be above immediate_severity ({settings.immediate_severity})",
        )
    return settings


def _model_mode(sec: Section, key: str) -> bool | Literal["flagged"]:
    what = "true, false or flagged"
    value: bool | str = sec.get(key, (bool, str), what, default=True)
    if value == "flagged":
        return "flagged"
    if isinstance(value, str):
        sec.error(key, f"expected {what}, got {value!r}")
        return True
    return value


def monitoring_of(policy: Any) -> MonitoringSettings:
    """The policy's monitoring settings (the defaults without a policy)."""
    return policy.settings.monitoring if policy is not None else MonitoringSettings()
