"""What the gateway attaches to a flow: its own answer, and a supervision in force.

One :class:`FlowMark` per flow, at ``flow.metadata["schoolgate"]`` (:data:`KEY`), written and
read only through the helpers here. An allowed request that nobody supervises gets none, so
the hot path allocates nothing for it.

Writers: Enforcement (a block, a refused CONNECT, tunnel or ClientHello), the identity addon
(a redirect to sign in), the circumvention guard and its sanction pages (a suspension, a
warning, a supervision). Readers: the alerts addon (after Enforcement: a block in an alerted
category), the sanction pages (the supervised request's outcome), the fediverse addon (a
response the gateway made itself is not a server's) and the health addon (blocks counted).

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
    what the alerts addon reads of a block. Slotted, not frozen: the alerts addon sets
    ``alert_offered`` (a block is alerted once however many hooks see it), and an answer and a
    supervision may arrive in either order."""

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
    """Attach the gateway's answer to a flow, keeping a supervision already on it."""
    old = metadata.get(KEY)
    if old is not None and old.supervision is not None and mark.supervision is None:
        mark.supervision = old.supervision
    metadata[KEY] = mark
    return mark


def supervise(metadata: MutableMapping[str, Any], supervision: SupervisionMark) -> None:
    """Attach a supervision to a flow (its answer, if any, is kept)."""
    mark = metadata.get(KEY)
    if mark is None:
        metadata[KEY] = FlowMark(supervision=supervision)
    else:
        mark.supervision = supervision


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
