"""Which detectors there are, by name, in the order they run (and report).

A new detector is a function ``fn(detectors, facts, host_info) -> list[CircumventionEvent] |
None`` in the module of its family; it is added to :data:`DETECTORS` here, and to
:data:`.detectors._NAME_ONLY` if it looks at nothing but the names and ports of a connection.
Until :meth:`.Detectors.quiet` is taught its signs (:data:`.detectors._QUIET_KNOWS`), a set
that runs it inspects every request in full.
"""

from __future__ import annotations

from collections.abc import Callable

from schoolgate.circumvention import addresses, destinations, dns, proxies, vpn
from schoolgate.circumvention.evidence import DetectorFn
from schoolgate.core.circumvention_settings import add_detector_name

# The names are a contract: the ``circumvention.detectors`` setting and the events name them.
# They are listed in the core too (DETECTOR_NAMES, which the config is checked against), in
# this order.
DETECTORS: tuple[tuple[str, DetectorFn], ...] = (
    ("listed_host", proxies.listed_host),
    ("doh", dns.doh),
    ("dot", dns.dot),
    ("ip_literal", addresses.ip_literal),
    ("domain_fronting", destinations.domain_fronting),
    ("no_sni", destinations.no_sni),
    ("wrapped_site", proxies.wrapped_site),
    ("web_proxy", proxies.web_proxy),
    ("odd_port", vpn.odd_port),
    ("non_tls_tunnel", vpn.non_tls_tunnel),
    ("vpn_client", vpn.vpn_client),
    ("disguised_host", addresses.disguised_host),
    ("unverified_destination", destinations.unverified_destination),
    ("tor", vpn.tor),
)
REGISTRY: dict[str, DetectorFn] = dict(DETECTORS)


def register_detector(name: str) -> Callable[[DetectorFn], DetectorFn]:
    """Add a detector under ``name`` (after the built-in ones), for a :class:`.Detectors`
    made afterwards."""

    def register(fn: DetectorFn) -> DetectorFn:
        REGISTRY[name] = fn
        add_detector_name(name)
        return fn

    return register


def detector_names() -> tuple[str, ...]:
    return tuple(REGISTRY)
