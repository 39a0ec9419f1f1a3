"""What the detectors look at and what they report: :class:`TrafficFacts` (one connection or
request as the gateway saw it) and :class:`CircumventionEvent` (one finding)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from schoolgate.core.destination import Destination

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

STAGES: tuple[str, ...] = ("connect", "tls", "request")
KINDS: tuple[str, ...] = (
    "vpn",
    "proxy",
    "doh",
    "dot",
    "ip_literal",
    "domain_fronting",
    "no_sni",
    "wrapped_site",
    "odd_port",
    "non_tls_tunnel",
    "disguised_host",
    "vpn_client",
    "tor",
    "unverified_destination",
)


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------


# The request headers the detectors read (lower-case names). The gateway hands them only
# these (building a map of every header costs more than all the detectors' checks):
# a detector that reads another header must add it here.
DETECTOR_HEADERS = frozenset({"user-agent", "content-type", "accept", "x-bare-url", "x-bare-host"})


@dataclass(slots=True)
class TrafficFacts:
    """What the gateway saw of one connection or request; None where not known at the stage.

    ``stage`` is "connect" (HTTP CONNECT), "tls" (ClientHello seen or, with ``tls_seen``
    False, a tunnel that carries something else) or "request" (HTTP request known).
    ``host`` is the host as the client wrote it (CONNECT authority host, Host header or
    URL host), NOT normalised. ``headers`` have lower-case names; the gateway passes those in
    :data:`DETECTOR_HEADERS`. ``tls_seen`` says, for a CONNECT tunnel, whether the client
    spoke TLS (None = not known yet).

    Not frozen only because a frozen dataclass costs ~1 microsecond more to build, and one is
    built for every request; treat it as immutable.
    """

    stage: str
    host: str
    port: int | None
    sni: str | None = None
    http_host: str | None = None
    method: str | None = None
    path: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    scheme: str | None = None
    tls_seen: bool | None = None
    # The destination check's verdict when it refused the destination (else None).
    destination: Destination | None = None


@dataclass(frozen=True, slots=True)
class CircumventionEvent:
    """One finding: which detector, what kind, how serious, and the evidence."""

    detector: str
    kind: str
    severity: int
    summary: str
    evidence: Mapping[str, str]
    wrapped_host: str | None = None

    @property
    def key(self) -> tuple[str, str, str, str]:
        """For de-duplicating repeats of one finding across stages and requests."""
        return (self.detector, self.kind, self.evidence.get("host", ""), self.wrapped_host or "")

    def to_json(self) -> dict[str, Any]:
        return {
            "detector": self.detector,
            "kind": self.kind,
            "severity": self.severity,
            "summary": self.summary,
            "evidence": dict(self.evidence),
            "wrapped_host": self.wrapped_host,
        }
