"""List subscriptions: the lists a category takes from their publishers, and whether they are
fresh.

A category names its subscriptions in the config::

    categories:
      pornography:
        lists: [blocklists/ut1/mixed_adult]
        subscriptions:
          - url: https://dsi.ut-capitole.fr/blacklists/download/adult.tar.gz
            format: squidguard-tgz     # auto, domains, hosts, adblock, squidguard-tgz
            file: "{data_dir}/subscriptions/pornography/ut1-adult"   # where it is kept
            schedule: daily            # hourly, every 6 hours, daily, weekly, ...
            min_entries: 1000000       # fewer is a broken download: refused
            max_shrink: 0.2            # refuse a list that loses more than this share
            licence: CC BY-SA 4.0
            attribution: UT1 blacklists, Université Toulouse Capitole
            stale_after: 2 days        # warn when not refreshed this long (default: 2 x schedule)

``url`` may be a list: the parts are fetched in order and joined (a publisher that splits a
large list into ``domains.0``, ``domains.1``, ...). A subscription whose file does not exist
yet (a new gateway, or one that has never reached the publisher) loads as an empty list with a
loud warning, and the scheduler fetches it at once; a subscription is refreshed when its
schedule has passed since its file was last replaced (the file's modification time is the last
successful refresh, the same for every process and command that looks).

Pure: reads the config and the files' times, nothing else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from schoolgate.core.configfile import Section

__all__ = [
    "SUBSCRIPTION_FORMATS",
    "Subscription",
    "SubscriptionState",
    "list_warnings",
    "parse_period",
    "read_subscriptions",
    "state_of",
]

# squidguard-tgz: a squidGuard category as a .tar.gz (UT1 publishes <category>.tar.gz), kept
# unpacked as a folder of domains/urls files.
SUBSCRIPTION_FORMATS = ("auto", "domains", "hosts", "adblock", "squidguard-tgz")
KEYS = frozenset(
    {
        "url",
        "format",
        "file",
        "schedule",
        "min_entries",
        "max_shrink",
        "licence",
        "attribution",
        "stale_after",
        "name",
    }
)
_PERIOD_WORDS = {
    "hourly": timedelta(hours=1),
    "daily": timedelta(days=1),
    "weekly": timedelta(weeks=1),
}
_UNITS = {"minute": 60, "hour": 3600, "day": 86400, "week": 604800}
_PERIOD_RE = re.compile(r"(?:every\s+)?(\d+)\s*(minute|hour|day|week)s?\Z")
_NAME_RE = re.compile(r"[^A-Za-z0-9._-]+")
# Never more often than this: a publisher's list is not a live feed, and a schedule of seconds
# would hammer it.
MIN_PERIOD = timedelta(minutes=15)


def parse_period(value: object) -> timedelta:
    """``daily``, ``weekly``, ``hourly``, ``every 6 hours``, ``2 days``, ``30 minutes``."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError("a period such as daily, weekly, 'every 6 hours' or '2 days'")
    text = " ".join(value.lower().split())
    period = _PERIOD_WORDS.get(text)
    if period is None:
        found = _PERIOD_RE.match(text)
        if not found:
            raise ValueError("a period such as daily, weekly, 'every 6 hours' or '2 days'")
        period = timedelta(seconds=int(found.group(1)) * _UNITS[found.group(2)])
    if period < MIN_PERIOD:
        raise ValueError("at least 15 minutes")
    return period


@dataclass(frozen=True, slots=True)
class Subscription:
    """One subscribed list of one category."""

    category: str
    name: str
    urls: tuple[str, ...]
    file: Path  # a file, or a folder for squidguard-tgz
    format: str = "auto"
    schedule: timedelta = timedelta(days=1)
    min_entries: int = 1
    max_shrink: float = 0.2
    licence: str = ""
    attribution: str = ""
    stale_after: timedelta = timedelta(days=2)
    where: str = ""  # "mitm_config.yaml:120 categories.pornography.subscriptions[0]"

    @property
    def list_format(self) -> str:
        """The format its kept file is read in."""
        return "squidguard" if self.format == "squidguard-tgz" else self.format

    @property
    def url(self) -> str:
        return self.urls[0] if len(self.urls) == 1 else f"{self.urls[0]} (+{len(self.urls) - 1})"


@dataclass(frozen=True, slots=True)
class SubscriptionState:
    """What is known of a subscription now, from its file."""

    subscription: Subscription
    present: bool
    refreshed: datetime | None  # when its file was last replaced
    due: bool  # the scheduler should fetch it now
    stale: bool  # not refreshed within stale_after (or never)

    @property
    def age(self) -> timedelta | None:
        return None if self.refreshed is None else datetime.now(UTC) - self.refreshed


def _refreshed(path: Path) -> datetime | None:
    """When the kept list was last replaced; a folder: its newest list file."""
    try:
        if path.is_dir():
            times = [p.stat().st_mtime for p in path.iterdir() if p.is_file()]
            if not times:
                return None
            return datetime.fromtimestamp(max(times), UTC)
        return datetime.fromtimestamp(path.stat().st_mtime, UTC)
    except OSError:
        return None


def state_of(sub: Subscription, now: datetime) -> SubscriptionState:
    refreshed = _refreshed(sub.file)
    present = refreshed is not None
    due = refreshed is None or now - refreshed >= sub.schedule
    stale = refreshed is None or now - refreshed > sub.stale_after
    return SubscriptionState(sub, present, refreshed, due, stale)


def _default_name(urls: list[str], index: int) -> str:
    tail = urls[0].rstrip("/").rsplit("/", 1)[-1] if urls else ""
    for suffix in (".tar.gz", ".tgz", ".txt", ".list"):
        if tail.endswith(suffix):
            tail = tail[: -len(suffix)]
    tail = _NAME_RE.sub("-", tail).strip("-.")
    return tail or f"list-{index}"


def _share(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError("a share between 0 and 1, such as 0.2")
    return float(value)


def read_subscriptions(
    sec: Section, category: str, base: Path, data_dir: Path, *, max_shrink: float = 0.2
) -> list[Subscription]:
    """The ``subscriptions`` of one category's section; every mistake reported with its line.

    Relative ``file`` paths are relative to the config's folder (``base``); ``{data_dir}`` is
    the gateway's data folder, and the default place is
    ``{data_dir}/subscriptions/<category>/<name>``.
    """
    out: list[Subscription] = []
    names: set[str] = set()
    for index, item in enumerate(sec.sections("subscriptions")):
        item.check_keys(KEYS)
        urls: list[str] = []
        for text, line, field_name in item.strings("url", required=True):
            if not text.startswith(("http://", "https://", "file://")):
                item.issues.add(
                    item.file, line, field_name, f"expected an http(s):// address, got {text!r}"
                )
                continue
            urls.append(text)
        fmt = item.choice("format", SUBSCRIPTION_FORMATS, default="auto") or "auto"
        schedule = item.parse("schedule", parse_period, "a period", default=timedelta(days=1))
        stale_after = item.parse("stale_after", parse_period, "a period", default=None)
        min_entries = item.number("min_entries", default=1, minimum=1)
        shrink = item.parse("max_shrink", _share, "a share between 0 and 1", default=max_shrink)
        name = item.text("name") or _default_name(urls, index)
        if name in names:
            item.error("name", f"two subscriptions of {category} are called {name!r}")
        names.add(name)
        file_text = item.text("file") or f"{{data_dir}}/subscriptions/{category}/{name}"
        path = Path(file_text.replace("{data_dir}", str(data_dir))).expanduser()
        if not path.is_absolute():
            path = base / path
        if not urls:
            continue
        out.append(
            Subscription(
                category=category,
                name=name,
                urls=tuple(urls),
                file=path,
                format=fmt,
                schedule=schedule,
                min_entries=min_entries or 1,
                max_shrink=shrink,
                licence=item.text("licence") or "",
                attribution=item.text("attribution") or "",
                stale_after=stale_after or 2 * schedule,
                where=f"{item.file}:{item.line} {item.path}",
            )
        )
    return out


def describe_period(period: timedelta) -> str:
    seconds = int(period.total_seconds())
    for unit, size in (("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds} seconds"


def age_words(age: timedelta) -> str:
    """``3 days``, ``5 hours``, ``40 minutes``: how long ago, roughly."""
    hours = age.total_seconds() / 3600
    if hours >= 48:
        return f"{int(hours // 24)} days"
    if hours >= 2:
        return f"{int(hours)} hours"
    return f"{max(0, int(age.total_seconds() // 60))} minutes"


def empty_warning(sub: Subscription) -> str:
    """The loud warning for a subscription whose list is not there yet."""
    return (
        f"subscription {sub.name} of category {sub.category} has not been fetched yet "
        f"({sub.file} does not exist): its list is empty until the gateway fetches it from "
        f"{sub.url} (at its first start, or `schoolgate lists update --category {sub.category}`)"
    )


# How to fill the locked category: the warning says it, since it is the one that matters most.
ILLEGAL_HOWTO = (
    "the IWF URL List and the CTIRU list are given only to members and signatories: see "
    "'The illegal-content lists' in docs/lists.md for how to receive them, then add each feed "
    "as a subscription of this category"
)


def list_warnings(policy: object, now: datetime | None = None) -> list[str]:
    """What a network manager must hear about the lists in force: categories with no entries
    (the locked ones first, with how to subscribe) and subscriptions not refreshed within
    their ``stale_after`` (twice their schedule unless set). One line each, most serious first.

    Shown by ``check-config``, logged when the gateway starts and on the portal's staff home.
    """
    now = now or datetime.now(UTC)
    categories = getattr(policy, "categories", {})
    stats: dict[str, int] = {}
    for matcher in (getattr(policy, "matcher", None), getattr(policy, "locked_matcher", None)):
        if matcher is not None:
            stats.update(matcher.stats())
    out: list[str] = []
    empty = [name for name in categories if not stats.get(name)]
    for name in sorted(empty, key=lambda n: not categories[n].locked):
        if categories[name].locked:
            out.append(
                f"the locked category {name} has no entries, so nothing in it is blocked: "
                + ILLEGAL_HOWTO
            )
        else:
            subs = [s for s in getattr(policy, "subscriptions", ()) if s.category == name]
            how = (
                "its subscriptions have not been fetched yet"
                if subs
                else "add lists or a subscription to it in the config"
            )
            out.append(f"category {name} has no entries, so nothing in it is blocked: {how}")
    for sub in getattr(policy, "subscriptions", ()):
        state = state_of(sub, now)
        if not state.present:
            out.append(empty_warning(sub))
        elif state.stale and state.refreshed is not None:  # present: it has a time
            age = now - state.refreshed
            out.append(
                f"subscription {sub.name} of category {sub.category} has not been refreshed "
                f"for {age_words(age)} "
                f"(schedule every {describe_period(sub.schedule)}; last refreshed "
                f"{state.refreshed:%Y-%m-%d %H:%M} UTC from {sub.url}): see "
                "`schoolgate lists stats` and the gateway's log"
            )
    return out
