"""The decision log for the console: searchable history and the live view.

Queries are indexed, never a ``LIKE`` scan over the whole log: a person (``user``), a group, a
category, a kind and a site (``host``) each have an index, and the newest rows come first by
primary key; a page is "the next N older than row X" (keyset), never an ``OFFSET`` into
millions. A site with its subdomains (``*.example.com``) is the one pattern search, and it is
always bounded by a time range (the ``at`` index).

The live view reads what was written after a cursor (the last row id seen), with
:class:`schoolgate.storage.events.LiveCursor` (as ``schoolgate events --follow`` does).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from schoolgate.core import words
from schoolgate.core.hosts import normalize_host
from schoolgate.storage.events import LiveCursor, latest_id
from schoolgate.storage.models import EventRow

PAGE_SIZE = 50
MAX_TEXT = 200
LIVE_BATCH = 200
POLL_OVERLAP = 50  # rows below the page's cursor looked at again (committed late)
SUBDOMAIN_SPAN = timedelta(days=31)  # the longest range a subdomain search may cover
_NAME = re.compile(r"^[\w.@+\-]{1,200}$", re.UNICODE)
KINDS = ("block", "allow", "error", "circumvention", "suspended", "supervised", "warning")
# What pupils searched for and the risky pages they opened: only the safeguarding lead sees them
# (their own pages, /dsl/), never the console's history or live view.
DSL_ONLY_KINDS = ("search", "page_risk")


class FilterError(ValueError):
    """A search the console cannot run as given (the message says why)."""


@dataclass(frozen=True)
class EventFilter:
    user: str = ""
    group: str = ""
    category: str = ""
    kind: str = ""
    action: str = ""
    host: str = ""
    subdomains: bool = False
    ref: str = ""
    since: datetime | None = None
    until: datetime | None = None

    def is_empty(self) -> bool:
        return not any(
            (self.user, self.group, self.category, self.kind, self.action, self.host, self.ref,
             self.since, self.until)
        )  # fmt: skip

    def args(self) -> dict[str, str]:
        """The filter as query arguments (empty ones left out), for links."""
        out = {
            "user": self.user,
            "group": self.group,
            "category": self.category,
            "kind": self.kind,
            "action": self.action,
            "host": ("*." + self.host) if self.subdomains else self.host,
            "ref": self.ref,
        }
        return {k: v for k, v in out.items() if v}

    def conditions(self) -> list[Any]:
        found: list[Any] = [EventRow.kind.not_in(DSL_ONLY_KINDS)]
        if self.ref:
            found.append(EventRow.ref == self.ref)
        if self.user:
            found.append(EventRow.user == self.user)
        if self.group:
            found.append(EventRow.group == self.group)
        if self.category:
            found.append(EventRow.category == self.category)
        if self.kind == "circumvention":
            found.append(EventRow.kind.in_(("circumvention", "circumvention_warning")))
        elif self.kind:
            found.append(EventRow.kind == self.kind)
        if self.action:
            found.append(EventRow.action == self.action)
        if self.host and self.subdomains:
            found.append((EventRow.host == self.host) | EventRow.host.like(f"%.{self.host}"))
        elif self.host:
            found.append(EventRow.host == self.host)
        if self.since is not None:
            found.append(EventRow.at >= self.since)
        if self.until is not None:
            found.append(EventRow.at < self.until)
        return found


def _name(value: str, what: str) -> str:
    value = (value or "").strip()
    if not value:
        return ""
    if not _NAME.match(value):
        raise FilterError(f"{what}: letters, digits and . _ - @ + only, at most 200")
    return value


def _when(value: str, tz: tzinfo, what: str) -> datetime | None:
    value = (value or "").strip()
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise FilterError(f"{what}: a date and time such as 2026-12-09T10:30") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=tz)


def parse_filter(args: Any, tz: tzinfo, *, categories: Any = (), now: datetime | None = None
                 ) -> EventFilter:  # fmt: skip
    """The filter from a form or query string; :class:`FilterError` with the reason."""
    host_text = (args.get("host") or "").strip().lower()[:MAX_TEXT]
    subdomains = host_text.startswith("*.")
    host = normalize_host(host_text[2:] if subdomains else host_text) if host_text else ""
    if host and not re.match(r"^[a-z0-9.\-:\[\]]+$", host):
        raise FilterError("site: a host name such as www.example.com or *.example.com")
    category = (args.get("category") or "").strip()
    if category and category not in categories:
        raise FilterError(f"category: one of {', '.join(categories)}")
    kind = (args.get("kind") or "").strip()
    if kind and kind not in KINDS:
        raise FilterError(f"kind: one of {', '.join(KINDS)}")
    action = (args.get("action") or "").strip()
    if action and action not in ("block", "allow"):
        raise FilterError("action: block or allow")
    since = _when(args.get("since", ""), tz, "from")
    until = _when(args.get("until", ""), tz, "until")
    if subdomains and host:
        now = now or datetime.now(tz)
        if since is None:
            since = (until or now) - timedelta(days=7)
        if (until or now) - since > SUBDOMAIN_SPAN:
            raise FilterError(
                f"a site with its subdomains is searched over at most {SUBDOMAIN_SPAN.days} "
                "days: narrow the dates, or search for the site alone"
            )
    ref = (args.get("ref") or "").strip()
    if ref and not re.match(r"^[A-Za-z0-9\-]{1,40}$", ref):
        raise FilterError("reference: the letters and digits of a block page's reference")
    return EventFilter(
        user=_name(args.get("user", ""), "person").lower(),
        group=_name(args.get("group", ""), "group"),
        category=category,
        kind=kind,
        action=action,
        host=host,
        subdomains=subdomains and bool(host),
        ref=ref,
        since=since,
        until=until,
    )


@dataclass
class Page:
    rows: list[EventRow]
    older: int | None  # the ``before`` of the next page, None on the last
    newer: int | None  # the ``before`` of the page before, None on the first


def history(
    session: Session, where: EventFilter, *, before: int | None = None, size: int = PAGE_SIZE
) -> Page:
    """A page of events, newest first, older than row ``before``."""
    query = select(EventRow).where(*where.conditions())
    if before is not None:
        query = query.where(EventRow.id < before)
    rows = list(session.scalars(query.order_by(EventRow.id.desc()).limit(size + 1)))
    older = rows[size - 1].id if len(rows) > size else None
    rows = rows[:size]
    newer = None
    if before is not None and rows:
        newer_rows = list(
            session.scalars(
                select(EventRow.id)
                .where(*where.conditions(), EventRow.id >= before)
                .order_by(EventRow.id)
                .limit(size)
            )
        )
        newer = newer_rows[-1] + 1 if len(newer_rows) == size else None
        if newer is None and newer_rows:
            newer = 0  # the first page
    return Page(rows=rows, older=older, newer=newer)


def recent_for_poll(
    session: Session,
    where: EventFilter,
    after: int,
    now: datetime,
    *,
    start: int = 0,
    limit: int = LIVE_BATCH,
) -> list[EventRow]:
    """For a live view that polls (through the proxy): rows after ``after``, and the last
    minute's rows a little below it (committed late), but never one at or below ``start`` (the
    newest row when the page was made); the page skips the ids it shows already."""
    low = max(start, after - POLL_OVERLAP, 0)
    query = (
        select(EventRow)
        .where(EventRow.id > low, *where.conditions())
        .where((EventRow.id > after) | (EventRow.at >= now - timedelta(minutes=1)))
        .order_by(EventRow.id)
        .limit(limit)
    )
    return list(session.scalars(query))


KIND_WORDS = {
    "block": "Blocked",
    "allow": "Allowed",
    "error": "Blocked (the filter failed)",
    "circumvention": "Attempt to get round the filter",
    "circumvention_warning": "Warned about getting round the filter",
    "suspended": "Suspended",
    "supervised": "Supervised",
}


def why(row: EventRow, wording: words.Wording = words.DEFAULT_WORDING) -> str:
    """The decision in words: ``Blocked: social media, for pupils during lessons.`` for a rule's
    decision (the log keeps its category, role and window); otherwise the logged reason."""
    kind = KIND_WORDS.get(row.kind, words.plain(row.kind).capitalize())
    rule = row.rule or ""
    reason = " ".join((row.reason or "").split())
    if rule.startswith(words.LOCKED_RULE_PREFIX):
        return f"{kind}: {words.category_words(row.category)}, for everyone, at all times."
    by_rule = rule.startswith(("rules[", "no rule for"))
    if row.kind in ("block", "allow") and row.category and row.window and by_rule:
        if words.READ_ONLY_MARK in reason:
            return reason
        people = wording.people(row.role)
        during = wording.during(row.window)
        name = _window_name(row.window_name, row.window, wording)
        return f"{kind}: {words.category_words(row.category)}, for {people} {during}{name}."
    return f"{kind}: {reason}" if reason else kind


def _window_name(name: str | None, kind: str, wording: words.Wording) -> str:
    """`` (P2)`` when the window's name says more than its kind ("Before school" does not)."""
    name = " ".join((name or "").split())
    said = {wording.kind(kind).casefold(), words.plain(kind).casefold()}
    if not name or name.casefold() in said or any(name.casefold() in k for k in said):
        return ""
    return f" ({name})"


def event_view(
    row: EventRow, *, now: datetime, tz: tzinfo, wording: words.Wording = words.DEFAULT_WORDING
) -> dict[str, Any]:
    """An event as the console shows it (and sends it to the live view): words, not codes."""
    detail: dict[str, Any] = {}
    if row.detail:
        try:
            loaded = json.loads(row.detail)
            detail = loaded if isinstance(loaded, dict) else {}
        except ValueError:
            detail = {}
    return {
        "id": row.id,
        "ref": row.ref,
        "at": row.at.isoformat(),
        "when": words.moment(row.at, now, tz, seconds=True),
        "kind": row.kind,
        "action": row.action,
        "user": row.user or "",
        "who": row.user or (f"device {row.client_ip}" if row.client_ip else "unknown"),
        "client_ip": row.client_ip or "",
        "role": row.role or "",
        "group": row.group or "",
        "host": row.host or "",
        "url": (row.url or "")[:300],
        "category": row.category or "",
        "category_words": words.category_words(row.category) if row.category else "",
        "window": words.plain(row.window) if row.window else "",
        "search_term": row.search_term or "",
        "reason": row.reason or "",
        "why": why(row, wording),
        "list_entry": detail.get("list_entry", ""),
    }


__all__ = [
    "EventFilter",
    "FilterError",
    "KINDS",
    "LiveCursor",
    "Page",
    "event_view",
    "history",
    "latest_id",
    "parse_filter",
    "recent_for_poll",
]
