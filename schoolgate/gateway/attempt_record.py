"""The record of a circumvention attempt, as the event log keeps it: what was found, by
which detector, what sanction followed, who it was, where and in which window of the
timetable."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from schoolgate.circumvention import CircumventionEvent, TrafficFacts
from schoolgate.core.hosts import normalize_host
from schoolgate.core.model import Identity
from schoolgate.core.policy import Policy
from schoolgate.core.sanctions import Outcome
from schoolgate.core.urlpaths import strip_url
from schoolgate.storage.records import EventRecord, circumvention_event


def _window(
    policy: Policy | None, identity: Identity | None, at: datetime
) -> tuple[str | None, str | None]:
    if policy is None or identity is None:
        return None, None
    try:
        window = policy.window(identity.site, at)
    except Exception:  # noqa: BLE001
        return None, None
    return window.kind, window.name


def attempt_record(
    policy: Policy | None,
    event: CircumventionEvent,
    facts: TrafficFacts,
    identity: Identity | None,
    outcome: Outcome,
    *,
    ref: str,
    at: datetime,
    user: str | None,
    client_ip: str | None,
    url: str | None,
    method: str | None,
) -> EventRecord:
    """The event of a circumvention attempt, as the database keeps it (the paths of URLs
    only where the policy keeps them)."""
    keep_paths = policy.settings.keep_paths if policy is not None else True
    window, window_name = _window(policy, identity, at)
    detail: dict[str, Any] = {
        **event.to_json(),
        "stage": facts.stage,
        "key": list(event.key),
        "sanction": outcome.to_json(),
    }
    if facts.sni is not None:
        detail["sni"] = facts.sni
    if facts.port is not None:
        detail["port"] = facts.port
    if identity is not None and (identity.rule or identity.source != "default"):
        detail["identity"] = f"{identity.source}: {identity.rule}"
    return circumvention_event(
        ref=ref,
        at=at,
        action=outcome.action,
        detector=event.detector,
        summary=event.summary,
        client_ip=client_ip,
        user=(identity.user if identity is not None else None) or user,
        role=identity.role if identity is not None else None,
        group=identity.group if identity is not None else None,
        site=identity.site if identity is not None else None,
        method=method,
        scheme=facts.scheme,
        host=normalize_host(facts.host) if facts.host else None,
        url=strip_url(url, keep_paths) if url else None,
        window=window,
        window_name=window_name,
        detail=detail,
    )
