"""The ``list_updates`` section of the config: category lists fetched from a URL on a schedule
(the older form of a category's ``subscriptions``). Read by the config check and by the list
update job."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schoolgate.core.configfile import Section, parse_clock
from schoolgate.core.lists import FORMATS
from schoolgate.core.subscriptions import Subscription

if TYPE_CHECKING:
    from schoolgate.core.subscriptions import Subscription

SECTION = "list_updates"
TEXT_FORMATS = tuple(f for f in FORMATS if f != "squidguard")


@dataclass(frozen=True)
class ListSource:
    category: str
    url: str
    file: Path
    format: str = "auto"
    field: str = ""  # where it was configured, for messages


@dataclass(frozen=True)
class ListUpdateSettings:
    sources: tuple[ListSource, ...] = ()
    max_shrink: float = 0.2
    at: str = "04:15"
    timeout_seconds: int = 60
    # The categories' subscriptions (schoolgate.core.subscriptions), from the policy.
    subscriptions: tuple[Subscription, ...] = ()
    data_dir: Path | None = None


def read_list_updates(
    sec: Section | None, base: Path, categories: Any = None
) -> ListUpdateSettings:
    """Validate the ``list_updates`` section (``base``: the config's folder)."""
    if sec is None:
        return ListUpdateSettings()
    sec.check_keys({"sources", "max_shrink", "at", "timeout_seconds"})

    def share(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("a share between 0 and 1, such as 0.2")
        if not 0 <= float(value) <= 1:
            raise ValueError("a share between 0 and 1, such as 0.2")
        return float(value)

    max_shrink = sec.parse("max_shrink", share, "a share between 0 and 1", default=0.2)
    at = sec.parse("at", parse_clock, "a time such as 04:15", default="04:15")
    timeout = sec.number("timeout_seconds", default=60, minimum=1, maximum=3600)
    sources = []
    for item in sec.sections("sources"):
        item.check_keys({"category", "url", "file", "format"})
        cat = item.text("category", required=True)
        url = item.text("url", required=True)
        file = item.text("file", required=True)
        fmt = item.choice("format", TEXT_FORMATS, default="auto")
        if url and not url.startswith(("http://", "https://", "file://")):
            item.error("url", f"expected an http(s):// or file:// address, got {url!r}")
            continue
        if cat and categories is not None and cat not in categories:
            item.error("category", f"unknown category {cat!r}")
            continue
        if cat and categories is not None and getattr(categories[cat], "locked", False):
            # Locked lists (IWF, CTIRU) come from their own licensed feeds; allowed, but noted.
            pass
        if cat and url and file:
            path = Path(file).expanduser()
            if not path.is_absolute():
                path = base / path
            sources.append(ListSource(cat, url, path, fmt or "auto", item.path))
    return ListUpdateSettings(tuple(sources), max_shrink, at, timeout)
