"""The set of detectors the gateway runs: :class:`Detectors`, configured once and run on
every connection and request by :meth:`Detectors.inspect`."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable, Mapping

from schoolgate.circumvention.facts import CircumventionEvent, IPAddress, TrafficFacts
from schoolgate.circumvention.hostnames import NO_HOST, HostInfo, analyse_host
from schoolgate.circumvention.proxies import has_proxy_sign
from schoolgate.circumvention.registry import DETECTORS, REGISTRY
from schoolgate.circumvention.vpn import vpn_user_agent
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
_QUIET_AGENTS_MAX = 4096
# Detectors that look only at a destination the gateway refused: run only when there is one.
_WHEN_REFUSED = frozenset({"unverified_destination"})
# The detectors whose signs :meth:`Detectors.quiet` knows: those above, the one that runs only
# on a refused destination (which quiet is never asked about), and those that read a
# request's path or headers. A set that runs any other detector (a new one, one registered
# by a deployment, or one registered over a built-in) is never said to be quiet.
_QUIET_KNOWS = _NAME_ONLY | _WHEN_REFUSED | {"doh", "wrapped_site", "web_proxy", "vpn_client"}
_BUILT_IN = dict(DETECTORS)


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
        "_quiet_requests",
        "_quiet_agents",
        "_provable",
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
        # Of those, the names of requests whose every detector can find something only in
        # the path or the headers (see quiet()); same bounds, same life.
        self._quiet_requests: set[tuple] = set()
        self._quiet_agents: set[str] = set()  # User-Agents that name no VPN app
        self._provable = all(
            n in _QUIET_KNOWS and _BUILT_IN.get(n) is fn
            for n, fn in (*self._fns, *self._refused_fns)
        )
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
        if (
            name_only_quiet
            and facts.stage == "request"
            and self._provable
            and names not in self._quiet_requests
            and _request_names_quiet(facts, hi)
        ):
            if len(self._quiet_requests) >= _CLEAN_NAMES_MAX:
                self._quiet_requests.clear()
            self._quiet_requests.add(names)
        if failed:
            raise DetectorsFailed(events, failed)
        return events

    def quiet(self, names: tuple, path: str | None, headers: Mapping[str, str]) -> bool:
        """Whether :meth:`inspect` is sure to find nothing, and to raise nothing, in a request
        whose facts have ``names`` (``(stage, host, port, sni, http_host, scheme, tls_seen)``,
        as written), ``path`` and ``headers``, and no refused destination. True only when a
        request with the same names went through :meth:`inspect` under this set (the same
        policy and lists: a new policy makes a new set) and none of its detectors that look
        at names found or could find anything, and the path and headers carry none of the
        signs without which the others find nothing. False says nothing: run :meth:`inspect`.

        Kept in step with the detectors that read a request's path or headers: ``doh``
        ("dns" or "/resolve" in the path; "dns-" in Content-Type or Accept), ``web_proxy``
        (x-bare-* headers; its path signs), ``vpn_client`` (a VPN app's User-Agent) and
        ``wrapped_site`` (a wrapper host: never in ``_quiet_requests``).
        """
        if names not in self._quiet_requests:
            return False
        if path and ("dns" in path or "/resolve" in path or has_proxy_sign(path)):
            return False
        if headers:
            # (`in` before reading: most requests have none of these, or no Content-Type)
            if "x-bare-url" in headers or "x-bare-host" in headers:
                return False
            if "accept" in headers and "dns-" in headers["accept"]:
                return False
            if "content-type" in headers and "dns-" in headers["content-type"]:
                return False
            agent = headers.get("user-agent")
            if agent and agent not in self._quiet_agents:
                if vpn_user_agent(agent) is not None:
                    return False
                if len(self._quiet_agents) >= _QUIET_AGENTS_MAX:
                    self._quiet_agents.clear()
                self._quiet_agents.add(agent)
        return True


def _request_names_quiet(facts: TrafficFacts, hi: HostInfo) -> bool:
    """Whether the request detectors find nothing in these names, whatever the path and
    headers: no wrapper service (``wrapped_site``), no public resolver named (``doh``)."""
    if hi.wrapper is not None:
        return False
    if facts.port != 853:
        if hi.resolver:
            return False
        sni = facts.sni
        if sni and sni != facts.host and analyse_host(sni).resolver:
            return False
    return True
