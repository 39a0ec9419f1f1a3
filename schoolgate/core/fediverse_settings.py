"""The config's ``fediverse`` section: which category an unlisted Fediverse server recognised
from its traffic is put in."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from schoolgate.core.configfile import Section


def read_fediverse(sec: Section | None, categories: Mapping[str, Any]) -> str | None:
    """``fediverse: {category: social_media}``: the category for recognised servers, or None
    when recognition is off (no section, or ``detect: false``)."""
    if sec is None:
        return None
    sec.check_keys({"category", "detect"})
    if not sec.flag("detect", default=True):
        return None
    name = sec.text("category", required=True)
    if name is not None and name not in categories:
        sec.error("category", f"unknown category {name!r}; categories are {', '.join(categories)}")
        return None
    if name is not None and categories[name].locked:
        sec.error("category", f"category {name!r} is locked: it is for the IWF and CTIRU lists")
        return None
    return name
