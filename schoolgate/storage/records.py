"""The events the gateway records, typed: one :class:`EventRecord` per event, and one
constructor per kind of event.

An :class:`EventRecord` has one field per column of :class:`~schoolgate.storage.models.EventRow`
(but ``id``), in the table's order. Producers build it with their kind's constructor:
:func:`~schoolgate.storage.eventlog.decision_event` for a decision of the policy,
:func:`circumvention_event`, :func:`monitoring_event` (a search, a page's title),
:func:`suspended_event`, :func:`warned_event` and :func:`supervised_event` (the pages and
records of sanctions). The writer (:meth:`schoolgate.storage.writer.EventLog.record`) turns it
into a dict of column values with :meth:`EventRecord.as_row`, the one place where that happens:
the spool, the dead-letter file and the database hold those dicts, as they always have.

``detail`` is the evidence that has no column: a dict, or JSON text of one (what
:func:`~schoolgate.storage.eventlog.decision_event` makes, for the writer to keep as it is).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

__all__ = [
    "CIRCUMVENTION_KIND",
    "PAGE_RISK_KIND",
    "SEARCH_KIND",
    "SUPERVISED_KIND",
    "SUSPENDED_KIND",
    "WARNED_KIND",
    "EventRecord",
    "MonitoringKind",
    "circumvention_event",
    "monitoring_event",
    "supervised_event",
    "suspended_event",
    "warned_event",
]

# The ``kind`` column of each kind of event other than a decision ("block", "allow", "error").
CIRCUMVENTION_KIND = "circumvention"
SEARCH_KIND: Final = "search"
PAGE_RISK_KIND: Final = "page_risk"
MonitoringKind = Literal["search", "page_risk"]
SUSPENDED_KIND = "suspended"  # a request refused because a ban or lockout is in force
WARNED_KIND = "warned"  # the circumvention warning page was shown to the subject
SUPERVISED_KIND = "supervised"  # a request of a pupil under supervision

Detail = dict[str, Any] | str | None


# Not frozen: a frozen dataclass sets each of its 22 fields through object.__setattr__, which
# doubles what building one costs on the gateway's hot path. Nothing changes a record once
# built; the writer turns it into a new dict.
@dataclass(slots=True)
class EventRecord:
    """One event, typed; its fields are the ``events`` table's columns (see the module)."""

    ref: str
    at: datetime
    kind: str
    action: str
    client_ip: str | None = None
    device: str | None = None
    user: str | None = None
    role: str | None = None
    group: str | None = None
    site: str | None = None
    method: str | None = None
    scheme: str | None = None
    host: str | None = None
    url: str | None = None
    search_term: str | None = None
    category: str | None = None
    window: str | None = None
    window_name: str | None = None
    rule: str | None = None
    exception_id: int | None = None
    reason: str | None = None
    detail: Detail = None

    def as_row(self) -> dict[str, Any]:
        """The column values, as the spool and the database writer take them (every column,
        in the table's order)."""
        return {
            "ref": self.ref,
            "at": self.at,
            "kind": self.kind,
            "action": self.action,
            "client_ip": self.client_ip,
            "device": self.device,
            "user": self.user,
            "role": self.role,
            "group": self.group,
            "site": self.site,
            "method": self.method,
            "scheme": self.scheme,
            "host": self.host,
            "url": self.url,
            "search_term": self.search_term,
            "category": self.category,
            "window": self.window,
            "window_name": self.window_name,
            "rule": self.rule,
            "exception_id": self.exception_id,
            "reason": self.reason,
            "detail": self.detail,
        }


def circumvention_event(
    *,
    ref: str,
    at: datetime,
    action: str,
    detector: str,
    summary: str,
    client_ip: str | None,
    user: str | None,
    role: str | None,
    group: str | None,
    site: str | None,
    method: str | None,
    scheme: str | None,
    host: str | None,
    url: str | None,
    window: str | None,
    window_name: str | None,
    detail: dict[str, Any],
) -> EventRecord:
    """A circumvention attempt that a detector saw; ``action`` is the sanction's stage
    ("log", "warn", "lockout", "ban"...)."""
    return EventRecord(
        ref=ref,
        at=at,
        kind=CIRCUMVENTION_KIND,
        action=action,
        client_ip=client_ip,
        user=user,
        role=role,
        group=group,
        site=site,
        method=method,
        scheme=scheme,
        host=host,
        url=url,
        category=CIRCUMVENTION_KIND,
        window=window,
        window_name=window_name,
        rule=f"circumvention detector {detector}",
        reason=summary,
        detail=detail,
    )


def monitoring_event(
    *,
    kind: MonitoringKind,
    ref: str,
    at: datetime,
    blocked: bool,
    client_ip: str | None,
    device: str | None,
    user: str | None,
    role: str | None,
    group: str | None,
    site: str | None,
    method: str | None,
    scheme: str | None,
    host: str | None,
    url: str | None,
    search_term: str | None,
    rule: str | None,
    reason: str,
    detail: dict[str, Any],
) -> EventRecord:
    """What monitoring saw: a search (``kind`` "search", with its ``search_term``) or a page
    whose title matched a risk list ("page_risk"); ``rule``: the term of the risk list it
    matched, if any."""
    # Positional, in the order of the fields: cheaper than keywords, on every search.
    return EventRecord(
        ref,
        at,
        kind,
        "block" if blocked else "allow",
        client_ip,
        device,
        user,
        role,
        group,
        site,
        method,
        scheme,
        host,
        url,
        search_term,
        None,  # category
        None,  # window
        None,  # window_name
        rule,
        None,  # exception_id
        reason,
        detail,
    )


def suspended_event(
    *,
    ref: str,
    at: datetime,
    client_ip: str | None,
    user: str | None,
    role: str | None,
    group: str | None,
    site: str | None,
    method: str | None,
    scheme: str | None,
    host: str | None,
    url: str | None,
    ban_kind: str,
    ban_ref: str,
    reason: str | None,
    detail: dict[str, Any],
) -> EventRecord:
    """The suspended page, shown because a ban or a lockout (``ban_kind``) is in force."""
    return EventRecord(
        ref=ref,
        at=at,
        kind=SUSPENDED_KIND,
        action="block",
        client_ip=client_ip,
        user=user,
        role=role,
        group=group,
        site=site,
        method=method,
        scheme=scheme,
        host=host,
        url=url,
        rule=f"{ban_kind} {ban_ref}",
        reason=reason,
        detail=detail,
    )


def warned_event(
    *,
    ref: str,
    at: datetime,
    client_ip: str | None,
    user: str | None,
    role: str | None,
    group: str | None,
    site: str | None,
    method: str | None,
    scheme: str | None,
    host: str | None,
    category: str | None,
    subject: str,
    warned_about: str,
) -> EventRecord:
    """The circumvention warning page was shown to ``subject`` about the event
    ``warned_about``; the other gateway processes read it (a lockout may follow)."""
    return EventRecord(
        ref=ref,
        at=at,
        kind=WARNED_KIND,
        action="warn",
        client_ip=client_ip,
        user=user,
        role=role,
        group=group,
        site=site,
        method=method,
        scheme=scheme,
        host=host,
        category=category,
        rule="circumvention warning",
        reason="the warning page was shown",
        detail={"subject": subject, "warned_about": warned_about},
    )


def supervised_event(
    *,
    ref: str,
    at: datetime,
    blocked: bool,
    client_ip: str | None,
    user: str | None,
    role: str | None,
    group: str | None,
    site: str | None,
    method: str | None,
    scheme: str | None,
    host: str | None,
    url: str | None,
    supervision_id: int | None,
    staff: str,
    detail: dict[str, Any],
) -> EventRecord:
    """A request of a pupil under supervision by ``staff``."""
    return EventRecord(
        ref=ref,
        at=at,
        kind=SUPERVISED_KIND,
        action="block" if blocked else "allow",
        client_ip=client_ip,
        user=user,
        role=role,
        group=group,
        site=site,
        method=method,
        scheme=scheme,
        host=host,
        url=url,
        rule=f"supervision #{supervision_id} by {staff}",
        reason=f"supervised by {staff}",
        detail=detail,
    )
