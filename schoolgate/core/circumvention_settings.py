"""The ``circumvention`` section: which detectors run, what a filtered role may not do, and
where a tunnel may go with something other than TLS or HTTP (pure: config in, settings out).

``filtered_roles`` (default: every role) are the roles whose tunnels must carry TLS or HTTP,
whose destinations must be verified, and whose DoH, DoT, web proxies and Tor are blocked;
``allowed_raw_destinations`` are the few places their tunnels may reach with anything else (a
MIS, a print service); ``destination_mismatch`` says what happens to a connection to an address
that is not the named site's (``refuse``, or ``connect_to_name``: go to the name's own address).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, TypeVar

from schoolgate.core.destination import RawDestination, parse_raw_destination

if TYPE_CHECKING:  # pragma: no cover
    from schoolgate.core.configfile import Section

T = TypeVar("T")

DEFAULT_ALLOWED_IP_LITERALS: tuple[str, ...] = (
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "fc00::/7",
    "fe80::/10",
)
DEFAULT_ALLOWED_PORTS: tuple[int, ...] = (80, 443, 8080, 8443)

# The detectors by name, in the order they run. The names are a contract: the
# ``circumvention.detectors`` setting and the events name them. Each is given its function in
# :mod:`schoolgate.circumvention.registry` (a test holds the two lists to the same names).
DETECTOR_NAMES: tuple[str, ...] = (
    "listed_host",
    "doh",
    "dot",
    "ip_literal",
    "domain_fronting",
    "no_sni",
    "wrapped_site",
    "web_proxy",
    "odd_port",
    "non_tls_tunnel",
    "vpn_client",
    "disguised_host",
    "unverified_destination",
    "tor",
)
_ADDED: list[str] = []


def known_detectors() -> tuple[str, ...]:
    """The detectors a config may name: the built-in ones, then those added since."""
    return DETECTOR_NAMES + tuple(_ADDED)


def add_detector_name(name: str) -> None:
    """Let a config name a detector registered after the built-in ones
    (:func:`schoolgate.circumvention.register_detector` calls this)."""
    if name not in DETECTOR_NAMES and name not in _ADDED:
        _ADDED.append(name)


@dataclass(frozen=True, slots=True)
class CircumventionSettings:
    """The validated ``circumvention`` section."""

    enabled: bool = True
    detectors: tuple[str, ...] | None = None  # None: all
    allowed_ip_literals: tuple[str, ...] = DEFAULT_ALLOWED_IP_LITERALS
    allowed_ports: tuple[int, ...] = DEFAULT_ALLOWED_PORTS
    category: str = "circumvention"
    # Roles whose tunnels must carry TLS or HTTP, whose destinations must be known and whose
    # DoH, DoT, web proxies and Tor are blocked (None: every role).
    filtered_roles: frozenset[str] | None = None
    # Destinations a filtered role's tunnel may reach with anything (a MIS, a print service).
    allowed_raw_destinations: tuple[RawDestination, ...] = ()
    # An address that is not the named site's: "refuse" it (filtered roles), or
    # "connect_to_name": go to the name's own address instead.
    destination_mismatch: str = "refuse"

    def filters(self, role: str | None) -> bool:
        """Whether ``role`` is filtered (an unknown role is)."""
        return self.filtered_roles is None or role is None or role in self.filtered_roles

    def address_allowed(self, address: str) -> bool:
        """Whether ``address`` is in ``allowed_ip_literals`` (the school's own networks)."""
        return _in_networks(self.allowed_ip_literals, address)


@lru_cache(maxsize=16)
def _networks(texts: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(text, strict=False) for text in texts)


# Keyed by the texts (strings keep their hash; network objects compute theirs every time).
@lru_cache(maxsize=4096)
def _in_networks(texts: tuple[str, ...], address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip.version == net.version and ip in net for net in _networks(texts))


def _network_text(text: str) -> str:
    """``text`` itself, once it is known to be an address or CIDR range (else ValueError)."""
    ipaddress.ip_network(text, strict=False)
    return text


def _parse_each(
    section: Section, key: str, parse: Callable[[str], T], *, expected: str | None = None
) -> list[T]:
    """``parse`` applied to each text of a list; a ValueError is an issue with its file, line
    and field (``expected``, or the error's own message)."""
    found = []
    for text, line, name in section.strings(key):
        try:
            found.append(parse(text))
        except ValueError as exc:
            message = f"{expected}, got {text!r}" if expected else str(exc)
            section.issues.add(section.file, line, name, message)
    return found


def role_names(
    section: Section, key: str, known_roles: Iterable[str] | Mapping[str, str] | None
) -> list[str]:
    """The roles a list names; an unknown one is an issue (when the roles are known).
    ``known_roles`` may map other names (role aliases) to the roles they mean."""
    known: dict[str, str] | None = None
    if isinstance(known_roles, Mapping):
        known = {str(k).lower(): v for k, v in known_roles.items()}
        known |= {v: v for v in known_roles.values()}
    elif known_roles is not None:
        known = {r: r for r in known_roles}
    names = []
    for text, line, name in section.strings(key):
        if known is not None:
            text = known.get(text) or known.get(text.lower()) or text
        if known is not None and text not in known.values():
            section.issues.add(
                section.file,
                line,
                name,
                f"unknown role {text!r}; roles are {', '.join(sorted(set(known.values())))}",
            )
            continue
        names.append(text)
    return names


def load_circumvention(
    section: Section | None, *, known_roles: Iterable[str] | Mapping[str, str] | None = None
) -> CircumventionSettings:
    """Validate the ``circumvention`` section (``None``: every detector, the defaults)."""
    if section is None:
        return CircumventionSettings()
    known = known_detectors()

    section.check_keys(
        {
            "enabled",
            "detectors",
            "allowed_ip_literals",
            "allowed_ports",
            "category",
            "filtered_roles",
            "allowed_raw_destinations",
            "destination_mismatch",
        }
    )
    enabled = section.flag("enabled", default=True)
    detectors: tuple[str, ...] | None = None
    raw = section.data.get("detectors")
    if raw is not None and raw != "all":
        names = []
        for text, line, name in section.strings("detectors"):
            if text == "all":
                section.issues.add(section.file, line, name, "'all' cannot be in a list")
            elif text not in known:
                section.issues.add(
                    section.file,
                    line,
                    name,
                    f"unknown detector {text!r}; detectors are {', '.join(known)}",
                )
            else:
                names.append(text)
        detectors = tuple(names)
    nets = DEFAULT_ALLOWED_IP_LITERALS
    if "allowed_ip_literals" in section:
        nets = tuple(
            _parse_each(
                section,
                "allowed_ip_literals",
                _network_text,
                expected="expected an address or CIDR range",
            )
        )
    ports = DEFAULT_ALLOWED_PORTS
    if "allowed_ports" in section:
        found_ports = []
        for item, line, name in section.items("allowed_ports"):
            if isinstance(item, bool) or not isinstance(item, int) or not 0 < item < 65536:
                section.issues.add(
                    section.file, line, name, f"expected a port number 1-65535, got {item!r}"
                )
                continue
            found_ports.append(item)
        ports = tuple(found_ports)
    category = section.text("category") or "circumvention"
    filtered = None
    raw_roles = section.data.get("filtered_roles")
    if raw_roles is not None and raw_roles != "*":
        filtered = frozenset(role_names(section, "filtered_roles", known_roles))
    raw_destinations = _parse_each(section, "allowed_raw_destinations", parse_raw_destination)
    mismatch = section.choice(
        "destination_mismatch", ("refuse", "connect_to_name"), default="refuse"
    )
    return CircumventionSettings(
        enabled,
        detectors,
        nets,
        ports,
        category,
        filtered,
        tuple(raw_destinations),
        mismatch or "refuse",
    )
