"""The set of detectors the gateway runs: :class:`Detectors`, configured once and run on
every connection and request by :meth:`Detectors.inspect`."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable

from schoolgate.circumvention.facts import CircumventionEvent, IPAddress, TrafficFacts
from schoolgate.circumvention.hostnames import NO_HOST, analyse_host
from schoolgate.circumvention.registry import REGISTRY
from schoolgate.core.hosts import registrable_domain

log = logging.getLogger(__name__)


# Detectors that look only at where the traffic goes and how it is named (stage, host, port,
# SNI, Host header, scheme, TLS seen), never at the path or the headers: what they find for one
# such combination they find for every request with it.
_NAME_ONLY = frozenset(
    {
        "listed_host",
        "dot",
        "ip_literal",
        "domain_fronting",
        "no_sni",
        "odd_port",
        "non_tls_tunnel",
        "disguised_host",
        "tor",
    }
)
_CLEAN_NAMES_MAX = 65536
# Detectors that look only at a destination the gateway refused: run only when there is one.
_WHEN_REFUSED = frozenset({"unverified_destination"})


class DetectorsFailed(Exception):
    """Some detectors raised: what the others found is in ``events``, and the traffic must be
    refused (the filter could not check it)."""

    def __init__(self, events: list[CircumventionEvent], detectors: list[str]) -> None:
        super().__init__(f"circumvention detector(s) failed: {', '.join(detectors)}")
        self.events = events
        self.detectors = detectors


class Detectors:
    """The enabled detectors, configured once, run on every request by :meth:`inspect`."""

    __slots__ = (
        "names",
        "circumvention_lookup",
        "allowed_ports",
        "_allowed_nets",
        "_fns",
        "_request_fns",
        "_refused_fns",
        "_clean_names",
        "_ip_allowed",
    )

    def __init__(
        self,
        *,
        circumvention_lookup: Callable[[str], str | None] | None = None,
        allowed_ip_literals: Iterable[str] = (),
        allowed_ports: Iterable[int] = (80, 443, 8080, 8443),
        enabled: Iterable[str] | None = None,
    ) -> None:
        if enabled is None:
            names = tuple(REGISTRY)
        else:
            wanted = set(enabled)
            unknown = sorted(wanted - set(REGISTRY))
            if unknown:
                raise ValueError(
                    f"unknown circumvention detector(s): {', '.join(unknown)} "
                    f"(known: {', '.join(REGISTRY)})"
                )
            names = tuple(n for n in REGISTRY if n in wanted)
        self.names: tuple[str, ...] = names
        self.circumvention_lookup = circumvention_lookup
        self.allowed_ports = frozenset(int(p) for p in allowed_ports)
        self._allowed_nets = tuple(
            ipaddress.ip_network(c.strip(), strict=False) for c in allowed_ip_literals
        )
        self._fns = tuple((n, REGISTRY[n]) for n in names if n not in _WHEN_REFUSED)
        self._request_fns = tuple((n, fn) for n, fn in self._fns if n not in _NAME_ONLY)
        self._refused_fns = tuple((n, REGISTRY[n]) for n in names if n in _WHEN_REFUSED)
        # Destinations the name-only detectors found nothing in: a page's next requests to
        # the same site skip them (this set belongs to one configuration and its lists).
        self._clean_names: set[tuple] = set()
        self._ip_allowed: dict[IPAddress, bool] = {}
        registrable_domain("www.example.co.uk")  # load the public suffix list now, not mid-request

    def ip_allowed(self, ip: IPAddress) -> bool:
        allowed = self._ip_allowed.get(ip)
        if allowed is None:
            allowed = any(ip.version == n.version and ip in n for n in self._allowed_nets)
            if len(self._ip_allowed) < 65536:
                self._ip_allowed[ip] = allowed
        return allowed

    def inspect(self, facts: TrafficFacts) -> list[CircumventionEvent]:
        """Run the enabled detectors; [] for ordinary traffic. A failing detector is logged,
        the others still run, and then :class:`DetectorsFailed` is raised with their events."""
        hi = analyse_host(facts.host) if facts.host else NO_HOST
        names = (
            facts.stage,
            facts.host,
            facts.port,
            facts.sni,
            facts.http_host,
            facts.scheme,
            facts.tls_seen,
        )
        clean = names in self._clean_names
        events: list[CircumventionEvent] = []
        name_only_quiet = True
        failed: list[str] | None = None
        fns = self._request_fns if clean else self._fns
        if facts.destination is not None:
            fns += self._refused_fns
        for name, fn in fns:
            try:
                found = fn(self, facts, hi)
            except Exception:
                log.exception("circumvention detector %s failed on host %r", name, facts.host)
                name_only_quiet = False
                failed = [*(failed or ()), name]
                continue
            if found:
                events.extend(found)
                if name in _NAME_ONLY:
                    name_only_quiet = False
        if not clean and name_only_quiet:
            if len(self._clean_names) >= _CLEAN_NAMES_MAX:
                self._clean_names.clear()
            self._clean_names.add(names)
        if failed:
            raise DetectorsFailed(events, failed)
        return events
