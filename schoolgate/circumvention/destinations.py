"""Detectors of connections whose names do not say where they go: different sites named to
the network and inside the encryption (``domain_fronting``), TLS without a name (``no_sni``)
and destinations the gateway refused as unverifiable (``unverified_destination``)."""

from __future__ import annotations

from schoolgate.circumvention.evidence import DetectorContext, event
from schoolgate.circumvention.facts import CircumventionEvent, TrafficFacts
from schoolgate.circumvention.hostnames import (
    ECH_PUBLIC_NAMES,
    SITE_FAMILIES,
    HostInfo,
    analyse_host,
)


def domain_fronting(
    det: DetectorContext, f: TrafficFacts, hi: HostInfo
) -> list[CircumventionEvent] | None:
    """TLS SNI, CONNECT host and HTTP Host naming different sites (www. and sub-domains fine)."""
    sni, http_host = f.sni, f.http_host
    if sni is None and http_host is None:
        return None
    if (sni is None or sni == f.host) and (http_host is None or http_host == f.host):
        return None
    seen: dict[str, tuple[str, HostInfo]] = {}
    roles: tuple[tuple[str, HostInfo], ...] = (
        ("connect_host" if f.stage != "request" else "host", hi),
    )
    if sni:
        roles += (("sni", analyse_host(sni)),)
    if http_host:
        roles += (("http_host", analyse_host(http_host)),)
    for role, info in roles:
        if not info.host or info.ip is not None or info.host in ECH_PUBLIC_NAMES:
            continue
        family = SITE_FAMILIES.get(info.site, info.site)
        seen.setdefault(family, (role, info))
    if len(seen) < 2:
        return None
    by_role = {role: info for role, info in seen.values()}
    inner = by_role.get("http_host") or by_role.get("sni")
    outer = by_role.get("sni") if "http_host" in by_role else by_role.get("connect_host")
    outer = outer or by_role.get("host")
    names = ", ".join(f"{role}={info.host}" for role, info in seen.values())
    return [
        event(
            "domain_fronting",
            "domain_fronting",
            3,
            f"Names one site to the network and another inside the encrypted connection "
            f"({names}): domain fronting, used by VPNs and Tor bridges to hide where "
            "traffic goes.",
            f,
            hi,
            wrapped_host=inner.host if inner else None,
            outer_site=outer.site if outer else None,
            inner_site=inner.site if inner else None,
            names=names,
        )
    ]


def no_sni(det: DetectorContext, f: TrafficFacts, hi: HostInfo) -> list[CircumventionEvent] | None:
    """A TLS ClientHello on port 443 without SNI (when the client did not dial an IP)."""
    if f.stage != "tls" or f.sni is not None or f.port != 443 or hi.ip is not None:
        return None
    return [
        event(
            "no_sni",
            "no_sni",
            1,
            f"Started an encrypted connection{' to ' + hi.host if hi.host else ''} without "
            "naming the site (no SNI), which hides the destination from the filter.",
            f,
            hi,
        )
    ]


_DESTINATION_SEVERITY = {"mismatch": 3, "malformed": 2, "unresolvable": 2, "no_name": 1}


def unverified_destination(
    det: DetectorContext, f: TrafficFacts, hi: HostInfo
) -> list[CircumventionEvent] | None:
    """A destination the gateway refused because it cannot tell where it really goes: an
    address that is not the named site's, a name with no address, an address with no name, a
    Host or SNI that is not one host."""
    found = f.destination
    if found is None or found.verdict not in _DESTINATION_SEVERITY:
        return None
    return [
        event(
            "unverified_destination",
            "unverified_destination",
            _DESTINATION_SEVERITY[found.verdict],
            f"Tried to reach somewhere the filter cannot check: {found.detail}.",
            f,
            hi,
            verdict=str(found.verdict),
            address=found.address,
            claimed_name=found.name,
        )
    ]
