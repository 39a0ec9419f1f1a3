"""Detectors of private DNS, which hides the sites looked up from the filter: DNS-over-HTTPS
(``doh``) and DNS-over-TLS (``dot``)."""

from __future__ import annotations

import base64
import binascii

from schoolgate.circumvention.decoders import query_params
from schoolgate.circumvention.evidence import DetectorContext, event
from schoolgate.circumvention.facts import CircumventionEvent, TrafficFacts
from schoolgate.circumvention.hostnames import HostInfo, analyse_host


def looks_like_dns_message(b64: str) -> bool:
    s = b64.strip() + "=" * (-len(b64.strip()) % 4)
    try:
        raw = base64.urlsafe_b64decode(s)
    except (binascii.Error, ValueError):
        return False
    # header (12 bytes), one question, QR bit clear (a query)
    return len(raw) >= 17 and raw[4:6] == b"\x00\x01" and not raw[2] & 0x80


def doh(det: DetectorContext, f: TrafficFacts, hi: HostInfo) -> list[CircumventionEvent] | None:
    """DNS-over-HTTPS: resolver hosts, /dns-query and /resolve paths, DNS media types."""
    reasons: list[str] = []
    severity = 2
    if f.port != 853:  # DNS-over-TLS is the dot detector's
        if hi.resolver:
            reasons.append(f"known public DNS resolver {hi.host}")
        elif f.sni and f.sni != f.host and analyse_host(f.sni).resolver:
            reasons.append(f"known public DNS resolver {f.sni} (SNI)")
    path = f.path
    if path and "dns" in path:
        base, _, query = path.partition("?")
        if base == "/dns-query" or base.startswith("/dns-query/"):
            reasons.append("DoH path /dns-query")
        elif "dns=" in query:
            value = query_params(path).get("dns")
            if value and looks_like_dns_message(value):
                reasons.append("DNS query in the dns= parameter (RFC 8484 GET)")
    if path and "/resolve" in path and "name=" in path and path.split("?", 1)[0] == "/resolve":
        if "type" in query_params(path):
            reasons.append("DoH JSON API query /resolve?name=...&type=")
        else:
            reasons.append("DoH JSON API path /resolve?name=")
            if len(reasons) == 1:
                severity = 1  # the path alone: a weaker sign
    for header in ("content-type", "accept"):
        value = f.headers.get(header)
        if value and "dns-" in value:
            low = value.lower()
            for media in ("application/dns-message", "application/dns-json"):
                if media in low:
                    reasons.append(f"{header}: {media}")
                    severity = 2
    if not reasons:
        return None
    return [
        event(
            "doh",
            "doh",
            severity,
            f"Used DNS-over-HTTPS via {hi.host or f.sni}, which hides the sites looked up "
            "from the school's filter.",
            f,
            hi,
            reasons="; ".join(dict.fromkeys(reasons)),
        )
    ]


def dot(det: DetectorContext, f: TrafficFacts, hi: HostInfo) -> list[CircumventionEvent] | None:
    """DNS-over-TLS: a tunnel to port 853."""
    if f.port != 853 or f.stage != "connect":
        return None
    known = " (a known public resolver)" if hi.resolver else ""
    return [
        event(
            "dot",
            "dot",
            2,
            f"Opened a DNS-over-TLS connection to {hi.host or f.sni}{known}, which hides the "
            "sites looked up from the school's filter.",
            f,
            hi,
            protocol="DNS-over-TLS (port 853)",
        )
    ]
