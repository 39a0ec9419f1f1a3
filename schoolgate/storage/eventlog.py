"""The decision log: the events the gateway records, and the writer that stores them.

Events are :class:`~schoolgate.storage.records.EventRecord` objects, one field per
:class:`~schoolgate.storage.models.EventRow` column; :func:`decision_event` builds one for a
decision of the policy (the other kinds have theirs in :mod:`schoolgate.storage.records`), and
:func:`search_term_of` finds the search term in a search engine's URL. Hooks hand events to
:meth:`EventLog.record`
(:class:`schoolgate.storage.writer.EventLog`, re-exported here), which writes each to the
local spool and queues it for the database writer thread: nothing an event holds can stop the
log (see :mod:`schoolgate.storage`).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from schoolgate.core.hosts import normalize_host
from schoolgate.core.model import Decision, RequestFacts
from schoolgate.core.urlpaths import strip_url
from schoolgate.monitoring.searches import capture
from schoolgate.storage.records import EventRecord
from schoolgate.storage.storable import new_ref
from schoolgate.storage.writer import COLUMNS, EVENT_TABLE, EventLog

__all__ = [
    "COLUMNS",
    "EVENT_TABLE",
    "EventLog",
    "EventRecord",
    "decision_event",
    "new_ref",
    "search_term_of",
]

log = logging.getLogger(__name__)

SEARCH_TERM_MAX = 500


# -- building events ---------------------------------------------------------------------------


def search_term_of(host: str, path: str | None) -> str | None:
    """The search term in a search engine's results URL, or None: the engines and decoding of
    :func:`schoolgate.monitoring.searches.capture` (autocomplete requests, one per keystroke,
    are not search terms here). ``host`` may carry a port or capitals; the term is
    whitespace-collapsed and cut to 500 characters."""
    found = capture(host, path)
    return found.term[:SEARCH_TERM_MAX] if found is not None else None


def decision_event(
    decision: Decision,
    facts: RequestFacts,
    *,
    ref: str,
    url: str | None,
    device: str | None = None,
    search_term: str | None = None,
    keep_paths: bool = True,
    kind: str | None = None,
    detail: dict[str, Any] | None = None,
) -> EventRecord:
    """The event of one decision.

    ``kind`` defaults to ``"error"`` when the policy failed, else ``"block"``/``"allow"``.
    ``url`` None: built from the facts when the path is known (``scheme://host[:port]path``),
    else left empty (a CONNECT or SNI decision: ``host`` says it all). Credentials in a URL are
    never kept. ``keep_paths=False`` cuts the URL to ``scheme://host/``.

    ``search_term`` None: taken from the URL by :func:`search_term_of`. The search term is kept
    even when ``keep_paths`` is False, because the DfE filtering standard asks schools to log
    "the search term or content blocked"; a school that wants neither should not log allowed
    searches at all.

    ``detail`` (JSON text) carries the evidence that has no column: the list entry and its file,
    until when a block lasts, how the identity was found, the error; the ``detail`` argument is
    merged over it. (``Decision.reasons`` is not stored: it is rebuilt from these.)
    """
    ident = decision.identity
    if kind is None:
        kind = "error" if decision.error else ("allow" if decision.allowed else "block")
    host = normalize_host(facts.host) if facts.host else None
    if url is None and facts.path is not None and host:
        default_port = {"http": 80, "https": 443}.get(facts.scheme)
        netloc = host if ":" not in host else f"[{host}]"
        if facts.port and facts.port != default_port:
            netloc = f"{netloc}:{facts.port}"
        url = f"{facts.scheme}://{netloc}{facts.path}"
    if search_term is None and host and facts.path:
        search_term = search_term_of(host, facts.path)
    if url is not None:
        url = strip_url(url, keep_paths)
    user = ident.user or facts.user
    window = decision.window
    extra: dict[str, Any] = {}
    if decision.match is not None:
        extra["list_entry"] = decision.match.entry
        extra["list_source"] = decision.match.source
    if decision.until is not None:
        extra["until"] = decision.until.isoformat()
    if ident.rule or ident.source != "default":
        extra["identity"] = f"{ident.source}: {ident.rule}" if ident.rule else ident.source
    if decision.error:
        extra["error"] = decision.error
    if detail:
        extra.update(detail)
    # Positional, in the order of the fields (the table's columns): building a record by
    # keywords costs three times as many instructions, on every block and every search.
    return EventRecord(
        ref,
        facts.at,
        kind,
        str(decision.action),
        facts.client_ip or ident.client_ip,  # client_ip
        device or ident.device,  # device
        user.lower() if user else None,  # user
        ident.role,
        ident.group,
        ident.site or None,  # site
        facts.method,
        facts.scheme,
        host,
        url,
        search_term,
        decision.category,
        window.kind if window else None,  # window
        window.name if window else None,  # window_name
        decision.rule or None,  # rule
        decision.exception_id,
        decision.reason,
        json.dumps(extra, default=str, separators=(",", ":")) if extra else None,  # detail
    )
