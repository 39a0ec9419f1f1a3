"""Plain, immutable values passed between the policy core and its adapters.

Nothing here knows of mitmproxy, the database or the web: the gateway turns a flow into
:class:`RequestFacts`, the policy turns facts into a :class:`Decision`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Any

WINDOW_KINDS: tuple[str, ...] = (
    "lesson",
    "registration",
    "break",
    "lunch",
    "before_school",
    "after_school",
    "closed",
)


class Action(StrEnum):
    ALLOW = "allow"
    BLOCK = "block"
    READ_ONLY = "read_only"  # only in rules; a decision is always allow or block


@dataclass(frozen=True, slots=True)
class Window:
    """A stretch of a site's day with one window kind, e.g. P2 10:00-11:00 (lesson)."""

    kind: str
    name: str
    start: datetime
    end: datetime
    site: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "site": self.site,
        }


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is asking: the role decides, the rest explains and scopes exceptions."""

    role: str
    site: str
    user: str | None = None
    group: str | None = None
    date_of_birth: date | None = None
    client_ip: str | None = None
    source: str = "default"  # "roster", "binding", "network", "sign_in_required" or "default"
    rule: str = ""  # which identity rule matched, for explanations
    device: str | None = None  # the device's name, from a binding or a DHCP lease


@dataclass(slots=True)
class RequestFacts:
    """What the gateway knows of one request.

    ``path`` and ``method`` are None when only a CONNECT host or a TLS SNI is known
    (no interception); the policy then decides on the host alone.

    Not frozen only because a frozen dataclass costs ~1 microsecond more to build, and one is
    built for every request; treat it as immutable (``dataclasses.replace`` for a variant).
    """

    host: str
    at: datetime
    path: str | None = "/"
    method: str | None = "GET"
    port: int | None = None
    scheme: str = "http"
    client_ip: str | None = None
    user: str | None = None
    # For page-level approvals: the request's Referer and Sec-Fetch-Dest headers (a script's
    # call from the approved page, or a page load), when decrypted.
    referer: str | None = None
    fetch_dest: str | None = None

    @property
    def host_only(self) -> bool:
        return self.path is None


@dataclass(frozen=True, slots=True)
class AccessException:
    """A time-limited allow entry (IT Support approval, SLT approval, teacher override).

    ``scope`` is one of user, group, role, network, site, everyone; ``scope_value`` its value
    (a user name, a group, a role, a CIDR, a site name; empty for everyone). ``target_kind``
    is host or category. ``ends`` None means until revoked.
    """

    id: int
    scope: str
    scope_value: str
    target_kind: str
    target: str
    starts: datetime
    ends: datetime | None
    created_by: str = ""
    reason: str = ""
    kind: str = "exception"  # "exception" or "curriculum" (a teacher's class override)

    def describe(self) -> str:
        who = "everyone" if self.scope == "everyone" else f"{self.scope} {self.scope_value}"
        until = f" until {self.ends.isoformat()}" if self.ends else " (no end)"
        by = f" by {self.created_by}" if self.created_by else ""
        return f"{self.kind} #{self.id}: {self.target_kind} {self.target} for {who}{until}{by}"


@dataclass(frozen=True, slots=True)
class ListMatch:
    """Which list entry matched a request."""

    category: str
    entry: str  # the entry as written, e.g. "facebook.com" or "instagram.com/accounts/emailsignup"
    source: str  # "blocklists/social_media.txt:12"
    kind: str  # "domain", "path" or "regex"


@dataclass(slots=True)
class Decision:
    """The answer: allow or block, and why.

    Not frozen only because a frozen dataclass costs ~1 microsecond more to build, and one is
    built for every request; treat it as immutable.
    """

    action: Action
    identity: Identity
    window: Window | None
    category: str | None
    reason: str
    rule: str = ""  # the rule, exception or safeguard that decided
    match: ListMatch | None = None
    exception_id: int | None = None
    until: datetime | None = None  # until when this answer holds (block lasts), if known
    error: str | None = None  # set when the policy could not be evaluated (fail closed)

    @property
    def allowed(self) -> bool:
        return self.action is _ALLOW

    @property
    def reasons(self) -> list[str]:
        """The steps of the decision, one line each (built on demand: explanations only)."""
        ident, window, match = self.identity, self.window, self.match
        lines = [f"identity: {ident.role} ({ident.rule or ident.source})"]
        if window is not None:
            lines.append(
                f"window: {window.kind} {window.name} at {window.site} "
                f"{window.start.isoformat()} - {window.end.isoformat()}"
            )
        if match is not None:
            lines.append(f"list: {match.category} {match.entry} ({match.source})")
        else:
            lines.append("list: no list entry matches")
        lines.append(f"decided by: {self.rule}")
        lines.append(
            f"action: {self.action}" + (f" until {self.until.isoformat()}" if self.until else "")
        )
        if self.error:
            lines.append(f"error: {self.error}")
        return lines

    def to_json(self) -> dict[str, Any]:
        ident = self.identity
        return {
            "action": str(self.action),
            "role": ident.role,
            "user": ident.user,
            "group": ident.group,
            "site": ident.site,
            "identity_rule": ident.rule,
            "window": self.window.kind if self.window else None,
            "window_name": self.window.name if self.window else None,
            "window_start": self.window.start.isoformat() if self.window else None,
            "window_end": self.window.end.isoformat() if self.window else None,
            "category": self.category,
            "list_entry": self.match.entry if self.match else None,
            "list_source": self.match.source if self.match else None,
            "rule": self.rule,
            "exception_id": self.exception_id,
            "until": self.until.isoformat() if self.until else None,
            "reason": self.reason,
            "reasons": self.reasons,
            "error": self.error,
        }


_new_object = object.__new__
# Read from the class, an enum's member goes through EnumType.__getattr__ (slow): the gateway
# asks ``allowed`` of every decision.
_ALLOW = Action.ALLOW


def new_decision(
    action: Action,
    identity: Identity,
    window: Window | None,
    category: str | None,
    reason: str,
    rule: str = "",
    match: ListMatch | None = None,
    exception_id: int | None = None,
    until: datetime | None = None,
    error: str | None = None,
) -> Decision:
    """The same :class:`Decision` as ``Decision(...)``, built for a quarter less: the policy
    builds one on every request. Calling a class with keyword arguments packs them into a
    dict and out again (about 1,500 instructions); calling a function does not."""
    decision = _new_object(Decision)
    decision.action = action
    decision.identity = identity
    decision.window = window
    decision.category = category
    decision.reason = reason
    decision.rule = rule
    decision.match = match
    decision.exception_id = exception_id
    decision.until = until
    decision.error = error
    return decision


# -- building the per-request values cheaply ------------------------------------------------------
# A frozen dataclass's __init__ sets each field through object.__setattr__ (about 1,700
# instructions a field: an Identity costs 16,000, a ListMatch 7,000). A new client address
# builds an Identity and a listed host a ListMatch, so these two are built as a plain class
# with the same slots, whose instance then becomes the frozen class's: ``__class__``
# assignment between classes of the same layout, which Python supports. The result is the
# frozen class's instance in every way (equality, hash, repr, frozen), for about 2,500.
class _IdentityDraft:
    __slots__ = Identity.__slots__


class _ListMatchDraft:
    __slots__ = ListMatch.__slots__


def identity_of(
    role: str,
    site: str,
    user: str | None = None,
    group: str | None = None,
    date_of_birth: date | None = None,
    client_ip: str | None = None,
    source: str = "default",
    rule: str = "",
    device: str | None = None,
) -> Identity:
    """The same :class:`Identity` as ``Identity(...)`` with these arguments, built for a
    sixth of the cost (see above)."""
    draft: Any = _new_object(_IdentityDraft)
    draft.role = role
    draft.site = site
    draft.user = user
    draft.group = group
    draft.date_of_birth = date_of_birth
    draft.client_ip = client_ip
    draft.source = source
    draft.rule = rule
    draft.device = device
    draft.__class__ = Identity
    return draft  # type: ignore[no-any-return]


def list_match(category: str, entry: str, source: str, kind: str) -> ListMatch:
    """The same :class:`ListMatch` as ``ListMatch(...)``, built for a third of the cost."""
    draft: Any = _new_object(_ListMatchDraft)
    draft.category = category
    draft.entry = entry
    draft.source = source
    draft.kind = kind
    draft.__class__ = ListMatch
    return draft  # type: ignore[no-any-return]
