"""What the designated safeguarding lead is told of risk terms in searches and page titles.

The pure part (no mitmproxy, e-mail or database): :class:`RiskFact` is one graded search or
page title as the gateway saw it, :class:`RecentSearches` keeps each person's last few searches
in memory (the context of an alert), :class:`DslAlerts` decides what is sent when, and
:func:`render` writes the e-mail (the webhook carries the same text).
:mod:`schoolgate.gateway.monitoring_addon` feeds it and queues what it yields in the outbox.

* A match at or above ``immediate_severity`` (3 by default) is sent **at once**, naming the
  pupil, group, device, time, the term or title, the theme and severity, and the same
  person's searches in the ``context_minutes`` before it.
* The searches the same person makes in the ``context_minutes`` **after** it follow in a
  second message once that time has passed (none is sent when there were none): the first
  alert is never held back waiting for them.
* Matches at or above ``batched_severity`` (2) and below the immediate one are gathered into
  one **digest** per ``batch_minutes`` (the ``alerts`` section's); the first match after a
  quiet spell opens the period.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo

from schoolgate.core import words

MAX_RECENT = 20  # searches kept per person
MAX_PEOPLE = 20_000  # people whose recent searches are kept (the least recent are forgotten)
MAX_AFTER = 20  # searches named in a follow-up
MAX_DIGEST = 200  # matches named in one digest (the rest are counted)


@dataclass(frozen=True, slots=True)
class Seen:
    """One search in a person's recent history."""

    at: datetime
    engine: str
    term: str
    severity: int | None  # None: it could not be graded


@dataclass(frozen=True)
class RiskFact:
    """One search or page title that matched a risk term."""

    kind: str  # "search" or "page_risk"
    at: datetime
    ref: str
    text: str  # the search term or the page title
    severity: int | None
    theme: str | None
    rule: str | None
    person: str  # the user, or "device <address>"
    user: str | None = None
    client_ip: str | None = None
    role: str | None = None
    group: str | None = None
    device: str | None = None
    host: str | None = None
    engine: str | None = None
    before: tuple[Seen, ...] = ()
    why: str | None = None  # the match's note: what the term stands for, or the model's score
    # Filled by the gateway (event loop) while the follow-up is open; read once it is due.
    after: list[Seen] = field(default_factory=list)


class RecentSearches:
    """Each person's last :data:`MAX_RECENT` searches; memory bounded by :data:`MAX_PEOPLE`.
    Used on the event loop only."""

    def __init__(self, max_people: int = MAX_PEOPLE, per_person: int = MAX_RECENT) -> None:
        self.max_people = max_people
        self.per_person = per_person
        self._people: OrderedDict[str, deque[Seen]] = OrderedDict()

    def add(self, person: str, seen: Seen) -> None:
        ring = self._people.pop(person, None)
        if ring is None:
            ring = deque(maxlen=self.per_person)
        ring.append(seen)
        self._people[person] = ring
        if len(self._people) > self.max_people:
            self._people.popitem(last=False)

    def since(self, person: str, start: datetime, *, before: datetime | None = None) -> list[Seen]:
        """The person's searches from ``start`` (and before ``before``), oldest first."""
        ring = self._people.get(person)
        if not ring:
            return []
        return [s for s in ring if s.at >= start and (before is None or s.at < before)]


@dataclass(frozen=True)
class DslAlert:
    """One message to the DSL: ``immediate``, ``follow_up`` or ``digest``."""

    kind: str
    facts: tuple[RiskFact, ...]
    start: datetime
    end: datetime
    more: int = 0  # a digest: matches gathered beyond those named

    @property
    def ref(self) -> str:
        first = self.facts[0].ref
        return first if self.kind == "immediate" else f"{self.kind.replace('_', '-')}-{first}"


class DslAlerts:
    """Turns risk facts into alerts. Not thread-safe: one thread offers and asks what is due."""

    def __init__(
        self,
        *,
        immediate_severity: int = 3,
        batched_severity: int = 2,
        context_minutes: int = 5,
        batch_minutes: int = 15,
    ) -> None:
        self.configure(immediate_severity, batched_severity, context_minutes, batch_minutes)
        self._ready: list[DslAlert] = []
        self._follow_ups: list[RiskFact] = []
        self._digest: list[RiskFact] = []
        self._digest_more = 0
        self._period: tuple[datetime, datetime] | None = None

    def configure(
        self, immediate_severity: int, batched_severity: int, context_minutes: int, batch: int
    ) -> None:
        self.immediate = immediate_severity
        self.batched = batched_severity
        self.context = timedelta(minutes=context_minutes)
        self.batch = timedelta(minutes=batch)

    def level(self, severity: int | None) -> str | None:
        """``immediate``, ``batched`` or None (the timeline only). An ungraded match is not
        alerted: the event is recorded, and IT Support sees the error in the log."""
        if severity is None:
            return None
        if severity >= self.immediate:
            return "immediate"
        if severity >= self.batched:
            return "batched"
        return None

    def offer(self, fact: RiskFact) -> None:
        level = self.level(fact.severity)
        if level == "immediate":
            self._ready.append(DslAlert("immediate", (fact,), fact.at, fact.at))
            self._follow_ups.append(fact)
        elif level == "batched":
            if self._period is None:
                self._period = (fact.at, fact.at + self.batch)
            if len(self._digest) < MAX_DIGEST:
                self._digest.append(fact)
            else:
                self._digest_more += 1

    def due(self, now: datetime, *, final: bool = False) -> list[DslAlert]:
        """What is to be sent at ``now`` (everything still open with ``final``)."""
        waiting = []
        for fact in self._follow_ups:
            if final or now >= fact.at + self.context:
                if fact.after:
                    end = fact.at + self.context
                    self._ready.append(DslAlert("follow_up", (fact,), fact.at, end))
            else:
                waiting.append(fact)
        self._follow_ups = waiting
        if self._period is not None and (final or now >= self._period[1]):
            start, end = self._period
            if self._digest:
                self._ready.append(
                    DslAlert("digest", tuple(self._digest), start, min(end, now), self._digest_more)
                )
            self._digest, self._digest_more, self._period = [], 0, None
        ready, self._ready = self._ready, []
        return ready

    @property
    def open_follow_ups(self) -> int:
        return len(self._follow_ups)


# -- the message ----------------------------------------------------------------------------------
def _when(at: datetime, tz: tzinfo | None) -> str:
    return words.absolute(at, tz if tz is not None else UTC, seconds=True)


def _clock(at: datetime, tz: tzinfo | None) -> str:
    return words.clock(at.astimezone(tz if tz is not None else UTC), seconds=True)


def _what(fact: RiskFact) -> str:
    if fact.kind == "search":
        return f'searched {fact.engine or "the web"} for "{fact.text}"'
    return f'opened a page titled "{fact.text}" on {fact.host or "an unknown site"}'


def _grade(fact: RiskFact) -> str:
    theme = words.plain(fact.theme) if fact.theme else "unknown theme"
    severity = "unknown" if fact.severity is None else str(fact.severity)
    rule = f' (matched "{fact.rule}")' if fact.rule else ""
    why = f": {fact.why}" if fact.why else ""
    return f"{theme}, severity {severity}{rule}{why}"


def _searches(items: list[Seen] | tuple[Seen, ...], tz: tzinfo | None) -> list[str]:
    if not items:
        return ["  (none)"]
    out = []
    for seen in items:
        flag = f"  [severity {seen.severity}]" if seen.severity else ""
        out.append(f"  {_clock(seen.at, tz)}  {seen.engine}: {seen.term}{flag}")
    return out


def _who(fact: RiskFact) -> list[str]:
    role = f" ({words.plain(fact.role)})" if fact.role else ""
    return [
        f"Pupil:    {fact.user or '(not signed in)'}{role}",
        f"Group:    {fact.group or '(unknown)'}",
        f"Device:   {fact.device or '-'} ({fact.client_ip or 'unknown address'})",
    ]


def render(
    alert: DslAlert, *, tz: tzinfo | None = None, school: str = "", context_minutes: int = 5
) -> tuple[str, str]:
    """(subject, body) of the message to the DSL."""
    where = f" at {school}" if school else ""
    evidence = (
        "The events are in the decision log (schoolgate events --kind search, or --kind "
        "page_risk) and in the portal's safeguarding view."
    )
    if alert.kind in ("immediate", "follow_up"):
        fact = alert.facts[0]
        if alert.kind == "immediate":
            subject = f"[schoolgate] Safeguarding: {fact.person} {_what(fact)}"
            lines = [
                f"The web filter{where} saw a risk term (severity {fact.severity}) that the "
                "designated safeguarding lead is told of at once.",
                "",
                *_who(fact),
                f"When:     {_when(fact.at, tz)}",
                f"What:     {_what(fact)}",
                f"Matched:  {_grade(fact)}",
                f"Reference: {fact.ref}",
                "",
                f"Searches by {fact.person} in the {context_minutes} minutes before:",
                *_searches(fact.before, tz),
                "",
                f"Searches in the {context_minutes} minutes after follow in a second message "
                "(none is sent if there were none).",
                evidence,
            ]
            return subject, "\n".join(lines)
        subject = (
            f"[schoolgate] Safeguarding (follow-up to {fact.ref}): what {fact.person} did next"
        )
        lines = [
            f"Further to the alert {fact.ref} ({_what(fact)}, {_when(fact.at, tz)}):",
            "",
            *_who(fact),
            "",
            f"Searches by {fact.person} in the {context_minutes} minutes after:",
            *_searches(fact.after[:MAX_AFTER], tz),
            "",
            evidence,
        ]
        return subject, "\n".join(lines)
    count = len(alert.facts) + alert.more
    plural = "es" if count != 1 else ""
    span = f"{_clock(alert.start, tz)} to {_clock(alert.end, tz)}"
    subject = f"[schoolgate] Safeguarding summary: {count} risk match{plural} ({span})"
    lines = [f"The web filter{where} saw {count} risk match{plural} from {span}:", ""]
    for fact in alert.facts:
        lines.append(f"  {_when(fact.at, tz)}  {fact.person} ({fact.group or 'no group'}, ")
        lines[-1] += f"{fact.device or fact.client_ip or 'unknown device'}): {_what(fact)}"
        lines.append(f"      {_grade(fact)}  [{fact.ref}]")
    if alert.more:
        lines.append(f"  ... and {alert.more} more")
    lines += ["", evidence]
    return subject, "\n".join(lines)
