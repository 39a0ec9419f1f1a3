"""What the gateway attaches to a flow: its own answer, a supervision in force, and what it
did to the flow on the way (one of its own pages, the portal's, a safe-search rewrite, a
request refused for its size).

One :class:`FlowMark` per flow, at ``flow.metadata["schoolgate"]`` (:data:`KEY`), written and
read only through the helpers here. An allowed request that nobody supervises and nothing
rewrites gets none, so the hot path allocates nothing for it; reading a flag is the one
look-up of the mark.

Writers: Enforcement (a block, a refused CONNECT, tunnel or ClientHello, a safe-search
rewrite), the identity addon (a redirect to sign in), the circumvention guard and its sanction
pages (a suspension, a warning, a supervision), the gateway's pages (its own pages and the
portal's requests) and the connection limits (a request refused for its size). Readers: the
alerts addon (after Enforcement: a block in an alerted category), the sanction pages (the
supervised request's outcome), the fediverse and monitoring addons (a response the gateway
made itself is not a server's; whether a search was blocked), the health addon (blocks
counted), the identity addon (the gateway's own pages need no sign-in) and the portal addon
(the requests it answers).

A refused ClientHello has no flow: Enforcement sets the mark as ``ClientHelloData.schoolgate``
(:func:`put_hello_mark`; :func:`hello_mark` reads it).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

KEY = "schoolgate"

BLOCK = "block"
WARN = "warn"
SIGN_IN = "sign_in"


@dataclass(frozen=True, slots=True)
class SupervisionMark:
    """A member of staff supervising this subject's traffic (a session in force while a ban
    is): every request is recorded, the outcome when its response (or error) arrives."""

    id: int | None  # None: a session this process has not saved yet
    ref: str
    staff: str
    subject: str
    user: str | None
    role: str | None
    site: str | None
    group: str | None


@dataclass(slots=True)
class FlowMark:
    """The gateway's own answer to a flow (``action``: ``block``, ``warn`` or ``sign_in``;
    None while it has answered nothing, with only a supervision), its event reference, and
    what the alerts addon reads of a block; and the flags the parts on the way set. Slotted,
    not frozen: the alerts addon sets ``alert_offered`` (a block is alerted once however many
    hooks see it), and an answer, a supervision and the flags may arrive in any order."""

    action: str | None = None
    ref: str | None = None
    stage: str | None = None  # a refusal without a page: "connect", "tls" or "tunnel"
    suspended: str | None = None  # the reference of the ban that suspended the subject
    category: str | None = None
    role: str | None = None
    user: str | None = None  # lower case
    client_ip: str | None = None
    host: str | None = None
    search_term: str | None = None
    supervision: SupervisionMark | None = None
    alert_offered: bool = False
    own: bool = False  # for one of the gateway's own pages or the portal: no sign-in first
    portal: bool = False  # for the portal: the portal addon answers it, never the internet
    safesearch: str | None = None  # what the safe-search rewrite changed
    refused: str | None = None  # why the connection limits refused the request (431)

    @property
    def blocked(self) -> bool:
        return self.action == BLOCK


def flow_mark(metadata: MutableMapping[str, Any]) -> FlowMark | None:
    """The mark on a flow (pass ``flow.metadata``), None if the gateway has put none."""
    return metadata.get(KEY)


def answered(metadata: MutableMapping[str, Any]) -> FlowMark | None:
    """The mark if the gateway answered the flow itself (a block, a warning, a sign-in)."""
    mark = metadata.get(KEY)
    return mark if mark is not None and mark.action is not None else None


def put_mark(metadata: MutableMapping[str, Any], mark: FlowMark) -> FlowMark:
    """Attach the gateway's answer to a flow, keeping a supervision and the flags already on
    it."""
    old = metadata.get(KEY)
    if old is not None:
        if mark.supervision is None:
            mark.supervision = old.supervision
        mark.own = mark.own or old.own
        mark.portal = mark.portal or old.portal
        mark.safesearch = mark.safesearch or old.safesearch
        mark.refused = mark.refused or old.refused
    metadata[KEY] = mark
    return mark


def marked(metadata: MutableMapping[str, Any]) -> FlowMark:
    """The flow's mark, attached (answering nothing) if it has none: to set a flag on it, or
    a supervision. One look-up of the metadata, as a flag of its own would cost."""
    mark: FlowMark = metadata.setdefault(KEY, FlowMark())
    return mark


def supervise(metadata: MutableMapping[str, Any], supervision: SupervisionMark) -> None:
    """Attach a supervision to a flow (its answer, if any, is kept)."""
    marked(metadata).supervision = supervision


def is_own(metadata: MutableMapping[str, Any]) -> bool:
    """Whether the flow is for the gateway's own pages or the portal (marked by its pages)."""
    mark = metadata.get(KEY)
    return mark is not None and mark.own


def for_portal(metadata: MutableMapping[str, Any]) -> bool:
    """Whether the flow is for the portal, which the portal addon answers."""
    mark = metadata.get(KEY)
    return mark is not None and mark.portal


def supervision_of(metadata: MutableMapping[str, Any]) -> SupervisionMark | None:
    """The supervision attached to a flow, if any."""
    mark = metadata.get(KEY)
    return mark.supervision if mark is not None else None


def put_hello_mark(data: object, mark: FlowMark) -> None:
    """Attach a refusal's mark to a ClientHello (``tls.ClientHelloData`` has no metadata)."""
    setattr(data, KEY, mark)


def hello_mark(data: object) -> FlowMark | None:
    """The mark Enforcement set on a refused ClientHello (``ClientHelloData.schoolgate``)."""
    mark = getattr(data, KEY, None)
    return mark if isinstance(mark, FlowMark) else None
