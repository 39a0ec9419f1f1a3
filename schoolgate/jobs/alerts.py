"""Immediate alerts to the designated safeguarding lead and e-safety team, batched.

The DfE filtering standard asks that the filter "provides alerts when content has been
blocked" and that high-risk incidents reach the safeguarding lead at once. This module is the
pure part: which blocks are alerted (:class:`AlertSettings`, the ``alerts:`` config section)
and how a burst is batched (:class:`AlertBatcher`). It knows nothing of mitmproxy, e-mail or
the database; :mod:`schoolgate.gateway.alerts_addon` feeds it and queues what it yields.

Batching, per category:

* The **first** block in a category after a quiet spell yields an ``immediate`` alert and opens
  a period of ``batch_minutes``.
* Further blocks in that category before the period ends are gathered; at its end they yield
  **one** ``digest`` (how many, who or which device, which hosts, when, the references and the
  search terms) and a new period starts straight away, so a burst that goes on yields one digest
  per period, never one e-mail per block.
* A period that ends with nothing gathered ends the batching: the next block is immediate again.

Locked categories (the IWF and CTIRU lists) are always alerted, whatever ``categories`` says.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from schoolgate.core import words
from schoolgate.core.alert_settings import (  # noqa: F401 - read here by callers
    ALERT_KEYS,
    DEFAULT_BATCH_MINUTES,
    MAX_BATCH_MINUTES,
    AlertSettings,
    read_alerts,
)

# A digest names at most this many references and times, and this many distinct people,
# devices, hosts and search terms (the rest are counted): memory stays bounded in any burst.
MAX_LISTED = 50
MAX_DISTINCT = 100
OTHERS = "(others)"


def alerts_of(policy: Any) -> AlertSettings:
    """The loaded policy's alert settings (the defaults without a policy)."""
    return policy.settings.alerts if policy is not None else AlertSettings()


# -- what is alerted ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BlockFact:
    """One block in an alerted category, as the gateway saw it."""

    category: str
    at: datetime
    ref: str
    host: str | None = None
    user: str | None = None
    client_ip: str | None = None
    role: str | None = None
    search_term: str | None = None

    @property
    def who(self) -> str:
        """The person, or the device when the gateway does not know who it is."""
        if self.user:
            return self.user
        return f"device {self.client_ip}" if self.client_ip else "unknown device"


@dataclass(frozen=True)
class Alert:
    """What goes to the e-safety team: one ``immediate`` block or a ``digest`` of a period."""

    kind: str  # "immediate" or "digest"
    category: str
    start: datetime  # the period this alert covers
    end: datetime
    count: int  # blocks in this alert
    first: BlockFact  # the (first) block
    last_at: datetime
    who: tuple[tuple[str, int], ...] = ()  # most first
    hosts: tuple[tuple[str, int], ...] = ()
    search_terms: tuple[tuple[str, int], ...] = ()
    times: tuple[datetime, ...] = ()  # the first MAX_LISTED
    refs: tuple[str, ...] = ()  # the first MAX_LISTED
    roles: tuple[tuple[str, int], ...] = ()
    lead_ref: str = ""  # a digest: the immediate alert's reference it follows

    @property
    def ref(self) -> str:
        return self.first.ref if self.kind == "immediate" else f"digest-{self.first.ref}"


def _top(counter: Counter[str], overflow: int) -> tuple[tuple[str, int], ...]:
    items = counter.most_common()
    if overflow:
        items.append((OTHERS, overflow))
    return tuple(items)


@dataclass
class _Period:
    """One category's open batching period and what it has gathered (bounded)."""

    start: datetime
    end: datetime
    lead_ref: str
    count: int = 0
    first: BlockFact | None = None
    last_at: datetime | None = None
    times: list[datetime] = field(default_factory=list)
    refs: list[str] = field(default_factory=list)
    counters: dict[str, Counter[str]] = field(
        default_factory=lambda: {
            "who": Counter(),
            "host": Counter(),
            "term": Counter(),
            "role": Counter(),
        }
    )
    overflow: Counter[str] = field(default_factory=Counter)

    def _count(self, name: str, value: str | None) -> None:
        if not value:
            return
        counter = self.counters[name]
        if value in counter or len(counter) < MAX_DISTINCT:
            counter[value] += 1
        else:
            self.overflow[name] += 1

    def add(self, fact: BlockFact) -> None:
        self.count += 1
        if self.first is None:
            self.first = fact
        self.last_at = fact.at if self.last_at is None else max(self.last_at, fact.at)
        if len(self.refs) < MAX_LISTED:
            self.refs.append(fact.ref)
            self.times.append(fact.at)
        who = fact.who
        if fact.user and fact.client_ip:
            who = f"{fact.user} ({fact.client_ip})"
        self._count("who", who)
        self._count("host", fact.host)
        self._count("term", fact.search_term)
        self._count("role", fact.role)

    def digest(self, category: str, end: datetime) -> Alert:
        assert self.first is not None and self.last_at is not None
        c, o = self.counters, self.overflow
        return Alert(
            kind="digest",
            category=category,
            start=self.start,
            end=end,
            count=self.count,
            first=self.first,
            last_at=self.last_at,
            who=_top(c["who"], o["who"]),
            hosts=_top(c["host"], o["host"]),
            search_terms=_top(c["term"], o["term"]),
            roles=_top(c["role"], o["role"]),
            times=tuple(self.times),
            refs=tuple(self.refs),
            lead_ref=self.lead_ref,
        )


def _immediate(fact: BlockFact, end: datetime) -> Alert:
    who = fact.who if not (fact.user and fact.client_ip) else f"{fact.user} ({fact.client_ip})"
    return Alert(
        kind="immediate",
        category=fact.category,
        start=fact.at,
        end=end,
        count=1,
        first=fact,
        last_at=fact.at,
        who=((who, 1),),
        hosts=((fact.host, 1),) if fact.host else (),
        search_terms=((fact.search_term, 1),) if fact.search_term else (),
        roles=((fact.role, 1),) if fact.role else (),
        times=(fact.at,),
        refs=(fact.ref,),
    )


class AlertBatcher:
    """Turns blocks in alerted categories into immediate alerts and digests.

    Not thread-safe: one thread offers and asks what is due (the addon's background thread).
    Periods follow the blocks' own times (``BlockFact.at``); :meth:`due` ends periods at
    ``now`` (default: ``clock()``), so a test drives it entirely with its own clock.
    """

    def __init__(
        self,
        categories: Iterable[str] = (),
        batch_minutes: int = DEFAULT_BATCH_MINUTES,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.clock = clock or (lambda: datetime.now(UTC))
        self.categories: frozenset[str] = frozenset(categories)
        self.batch = timedelta(minutes=batch_minutes)
        self._periods: dict[str, _Period] = {}
        self._ready: list[Alert] = []

    def configure(self, categories: Iterable[str], batch_minutes: int) -> None:
        """New settings (a reload). Open periods run to their end; a category no longer
        alerted is not offered any more."""
        self.categories = frozenset(categories)
        self.batch = timedelta(minutes=batch_minutes)

    def wants(self, category: str | None) -> bool:
        return category is not None and category in self.categories

    def _roll(self, category: str, now: datetime) -> None:
        """End the category's periods that are over by ``now`` (a digest for each that
        gathered anything, chaining a new period after it; an empty one ends batching)."""
        period = self._periods.get(category)
        while period is not None and period.end <= now:
            if period.count:
                self._ready.append(period.digest(category, period.end))
                period = _Period(start=period.end, end=period.end + self.batch, lead_ref="")
                self._periods[category] = period
            else:
                del self._periods[category]
                period = None

    def offer(self, fact: BlockFact) -> bool:
        """A block; False if its category is not alerted (ignored). O(1)."""
        if not self.wants(fact.category):
            return False
        self._roll(fact.category, fact.at)
        period = self._periods.get(fact.category)
        if period is None:
            end = fact.at + self.batch
            self._ready.append(_immediate(fact, end))
            self._periods[fact.category] = _Period(start=fact.at, end=end, lead_ref=fact.ref)
        else:
            period.add(fact)
        return True

    def due(self, now: datetime | None = None) -> list[Alert]:
        """The alerts ready to send at ``now``: immediate ones and digests of ended periods."""
        now = now or self.clock()
        for category in list(self._periods):
            self._roll(category, now)
        ready, self._ready = self._ready, []
        return ready

    def flush(self, now: datetime | None = None) -> list[Alert]:
        """Everything, now (shutting down): what is ready and a digest of every open period
        that gathered anything; batching starts afresh."""
        now = now or self.clock()
        ready = self.due(now)
        for category, period in list(self._periods.items()):
            if period.count:
                ready.append(period.digest(category, now))
        self._periods.clear()
        return ready

    def next_due(self) -> datetime | None:
        """When the next period ends (None: nothing is open)."""
        return min((p.end for p in self._periods.values()), default=None)

    @property
    def gathering(self) -> Mapping[str, int]:
        """Blocks gathered so far per category (for status pages and tests)."""
        return {c: p.count for c, p in self._periods.items()}


# -- the message ----------------------------------------------------------------------------------
def _when(at: datetime, tz: tzinfo | None) -> str:
    """``10:31:05 on Tuesday 24 November 2026`` in the school's zone: read long after."""
    return words.absolute(at, tz if tz is not None else UTC, seconds=True)


def _span(start: datetime, end: datetime, tz: tzinfo | None) -> str:
    zone = tz if tz is not None else UTC
    if start.astimezone(zone).date() == end.astimezone(zone).date():
        day = words.day(start.astimezone(zone).date(), year=True)
        return (
            f"{words.clock(start.astimezone(zone))} to {words.clock(end.astimezone(zone))} on {day}"
        )
    return f"{_when(start, tz)} to {_when(end, tz)}"


def _listing(items: tuple[tuple[str, int], ...]) -> str:
    if not items:
        return "  (none)"
    return "\n".join(f"  {name}: {count}" for name, count in items)


def render(alert: Alert, *, tz: tzinfo | None = None, school: str = "") -> tuple[str, str]:
    """(subject, body) of the e-mail (the webhook carries the same text), in plain words: the
    category as people say it, times in the school's zone."""
    minutes = int((alert.end - alert.start).total_seconds() // 60)
    where = f" at {school}" if school else ""
    category = words.category_words(alert.category)
    evidence = (
        "The evidence is in the decision log: in the portal's console (History, by reference) "
        "or with schoolgate events --kind block"
    )
    if alert.kind == "immediate":
        f = alert.first
        who = alert.who[0][0] if alert.who else f.who
        role = f" ({words.plain(f.role)})" if f.role else ""
        subject = f"[schoolgate] Alert: {category} blocked for {f.who}{role}"
        lines = [
            f"The web filter{where} blocked a page in the category {category}.",
            "",
            f"Who:      {who}{role}",
            f"When:     {_when(f.at, tz)}",
            f"Site:     {f.host or '(unknown)'}",
        ]
        if f.search_term:
            lines.append(f"Searched: {f.search_term}")
        lines += [
            f"Reference: {f.ref}",
            "",
            f"Further blocks in {category} in the next {minutes} minutes will be sent "
            "together in one summary.",
            f"{evidence} ({f.ref}).",
        ]
        return subject, "\n".join(lines)
    plural = "s" if alert.count != 1 else ""
    subject = (
        f"[schoolgate] Alert summary: {alert.count} more block{plural} in {category} "
        f"({_span(alert.start, alert.end, tz)})"
    )
    lines = [
        f"The web filter{where} blocked {alert.count} more request{plural} in the category "
        f"{category} from {_span(alert.start, alert.end, tz)}"
        + (
            f", after the alert sent at once (reference {alert.lead_ref})."
            if alert.lead_ref
            else "."
        ),
        "",
        f"Count: {alert.count}",
        f"First: {_when(alert.first.at, tz)}",
        f"Last:  {_when(alert.last_at, tz)}",
        "",
        "Who (user or device):",
        _listing(alert.who),
        "",
        "Roles:",
        _listing(tuple((words.plain(r), n) for r, n in alert.roles)),
        "",
        "Sites:",
        _listing(alert.hosts),
        "",
        "Search terms:",
        _listing(alert.search_terms),
        "",
        "Times and references"
        + (f" (the first {MAX_LISTED})" if alert.count > MAX_LISTED else "")
        + ":",
    ]
    lines += [f"  {_when(at, tz)}  {ref}" for at, ref in zip(alert.times, alert.refs, strict=False)]
    lines += ["", f"{evidence}."]
    return subject, "\n".join(lines)
