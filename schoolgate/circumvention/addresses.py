"""Detectors of destinations written so that a name-based filter cannot read them: IP
literals (``ip_literal``) and disguised host names (``disguised_host``: percent-encoding,
trailing dots, look-alike letters, ...)."""

from __future__ import annotations

from schoolgate.circumvention.evidence import DetectorContext, event
from schoolgate.circumvention.facts import CircumventionEvent, TrafficFacts
from schoolgate.circumvention.hostnames import IP_DISGUISES, HostInfo, analyse_host


def ip_literal(
    det: DetectorContext, f: TrafficFacts, hi: HostInfo
) -> list[CircumventionEvent] | None:
    """A destination written as an IP address, rather than a name the filter can check."""
    ip = hi.ip
    if ip is None or det.ip_allowed(ip):
        return None
    odd = [d for d in hi.disguises if d in IP_DISGUISES]
    if "ipv4-mapped-ipv6" in odd and len(odd) == 1:
        severity, how = 2, "an IPv4 address disguised as IPv6"
    elif odd:
        severity, how = 3, f"an IP address written in a disguised form ({', '.join(odd)})"
    else:
        severity, how = 1, f"an IPv{ip.version} address"
    return [
        event(
            "ip_literal",
            "ip_literal",
            severity,
            f"Went to {how} ({f.host} = {ip}) instead of a site name, which can slip past "
            "name-based filtering.",
            f,
            hi,
            ip=str(ip),
            forms=", ".join(odd),
        )
    ]


def disguised_host(
    det: DetectorContext, f: TrafficFacts, hi: HostInfo
) -> list[CircumventionEvent] | None:
    """A host written in a disguised way (percent-encoding, trailing dot, script mixing, ...)."""
    if (
        not hi.disguises
        and hi.skeleton is None
        and (f.sni is None or f.sni == f.host)
        and (f.http_host is None or f.http_host == f.host)
    ):
        return None
    events = None
    checked: list[HostInfo] = [hi]
    if f.sni and f.sni != f.host:
        checked.append(analyse_host(f.sni))
    if f.http_host and f.http_host != f.host and f.http_host != f.sni:
        checked.append(analyse_host(f.http_host))
    for info in checked:
        disguises = [d for d in info.disguises if d not in IP_DISGUISES]
        listed = None
        if info.skeleton and det.circumvention_lookup is not None:
            listed = det.circumvention_lookup(info.skeleton)
            if listed:
                disguises.append("homograph-of-listed-host")
        if not disguises:
            continue
        events = events or []
        looks = f", made to look like {info.skeleton}" if info.skeleton else ""
        events.append(
            event(
                "disguised_host",
                "disguised_host",
                2 if listed else 1,
                f"Wrote the site name {info.raw!r} in a disguised way "
                f"({', '.join(disguises)}){looks}.",
                f,
                hi,
                disguised_name=info.raw,
                normalised=info.host,
                disguises=", ".join(disguises),
                looks_like=info.skeleton,
                list_entry=listed,
            )
        )
    return events
