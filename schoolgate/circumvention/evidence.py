"""What every detector shares: the signature of a detector, what it may ask of the running
set (:class:`DetectorContext`), and how it words a finding (:func:`event`, with the evidence
taken from the facts)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Protocol

from schoolgate.circumvention.facts import CircumventionEvent, IPAddress, TrafficFacts
from schoolgate.circumvention.hostnames import HostInfo, analyse_host


class DetectorContext(Protocol):
    """What a detector may ask of the configured set that runs it (:class:`.Detectors`)."""

    @property
    def circumvention_lookup(self) -> Callable[[str], str | None] | None: ...

    @property
    def allowed_ports(self) -> frozenset[int]: ...

    def ip_allowed(self, ip: IPAddress) -> bool: ...


# fn(detectors, facts, host_info) -> the findings, or None (or []) for none.
DetectorFn = Callable[[DetectorContext, TrafficFacts, HostInfo], "list[CircumventionEvent] | None"]


def evidence(f: TrafficFacts, hi: HostInfo, **extra: object) -> Mapping[str, str]:
    ev: dict[str, str] = {"stage": f.stage, "host": hi.host or f.host}
    if f.host and f.host != hi.host:
        ev["raw_host"] = f.host
    if f.port is not None:
        ev["port"] = str(f.port)
    if f.sni is not None:
        ev["sni"] = f.sni
    if f.http_host is not None:
        ev["http_host"] = f.http_host
    if f.method:
        ev["method"] = f.method
    if f.path is not None:
        ev["path"] = f.path if len(f.path) <= 512 else f.path[:509] + "..."
    ua = f.headers.get("user-agent")
    if ua:
        ev["user-agent"] = ua[:300]
    for k, v in extra.items():
        if v is not None and v != "":
            ev[k] = str(v)
    return MappingProxyType(ev)


def event(
    name: str,
    kind: str,
    severity: int,
    summary: str,
    f: TrafficFacts,
    hi: HostInfo,
    wrapped_host: str | None = None,
    **extra: object,
) -> CircumventionEvent:
    return CircumventionEvent(
        detector=name,
        kind=kind,
        severity=severity,
        summary=summary,
        evidence=evidence(f, hi, wrapped_host=wrapped_host, **extra),
        wrapped_host=wrapped_host,
    )


def other_names(f: TrafficFacts, hi: HostInfo) -> list[tuple[str, HostInfo]]:
    """The host, SNI and Host header as analysed hosts, one per distinct normalised name."""
    names = [("host", hi)] if hi.host else []
    for role, raw in (("sni", f.sni), ("http_host", f.http_host)):
        if raw and raw != f.host:
            info = analyse_host(raw)
            if info.host and all(info.host != other.host for _, other in names):
                names.append((role, info))
    return names
