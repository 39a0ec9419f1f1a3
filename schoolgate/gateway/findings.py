"""What the circumvention guard found, handed to Enforcement on the flow it found it in.

The guard runs the detectors; Enforcement decides. For each flow (or TLS ClientHello, which
has no metadata: an attribute of the hook's data) the guard leaves

* the findings that block the person (:data:`BLOCKING_DETECTORS`, severity 2 or more, for a
  role that is filtered): Enforcement blocks with the finding's sentence as the reason;
* the sites shown through a wrapper (a translator, cache or archive for anyone; a recognised
  web proxy for a role that is not filtered, since a filtered role's is blocked outright):
  Enforcement decides each for the person now, and blocks if it would be blocked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from schoolgate.circumvention import CircumventionEvent, wrapper_label

FINDINGS = "schoolgate_findings"
WRAPPED = "schoolgate_wrapped"
# Detectors whose findings block a filtered role (the others are recorded as evidence).
BLOCKING_DETECTORS = frozenset({"doh", "dot", "web_proxy", "tor"})
_EMPTY: tuple = ()


def _store(subject: Any, key: str, value: tuple) -> None:
    metadata = getattr(subject, "metadata", None)
    if metadata is not None:
        metadata[key] = value
    else:  # tls.ClientHelloData
        setattr(subject, key, value)


def _read(subject: Any, key: str) -> tuple:
    metadata = getattr(subject, "metadata", None)
    if metadata is not None:
        return metadata.get(key, _EMPTY)
    return getattr(subject, key, _EMPTY)


def mark(subject: Any, found: Sequence[CircumventionEvent], *, filtered: bool) -> None:
    """Leave what Enforcement must act on of ``found`` (every finding at this stage)."""
    blocking = tuple(
        e for e in found if filtered and e.detector in BLOCKING_DETECTORS and e.severity >= 2
    )
    wrapped = tuple(
        (e.wrapped_host, e.evidence.get("wrapped_path") or "/", _label(e))
        for e in found
        if e.wrapped_host
        and (e.detector == "wrapped_site" or (e.detector == "web_proxy" and not filtered))
    )
    if blocking:
        _store(subject, FINDINGS, blocking)
    if wrapped:
        _store(subject, WRAPPED, wrapped)


def _label(event: CircumventionEvent) -> str:
    host = event.evidence.get("host", "")
    if event.detector == "wrapped_site":
        return f"{wrapper_label(event.evidence.get('wrapper', ''))} ({host})"
    return f"a web proxy on {host}"


def blocking_findings(subject: Any) -> tuple[CircumventionEvent, ...]:
    return _read(subject, FINDINGS)


def wrapped_findings(subject: Any) -> tuple[tuple[str, str, str], ...]:
    """(wrapped host, its path or "/", how the wrapper is named) of each wrapped site."""
    return _read(subject, WRAPPED)
