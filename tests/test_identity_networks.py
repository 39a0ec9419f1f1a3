"""Which network rule and site a client address gets: the resolver's range table against the
rules read in order (the first network that matches decides), on random overlapping networks."""

from __future__ import annotations

import ipaddress
import random

import pytest

from schoolgate.core.identity import GUEST, IdentityResolver, NetworkRule
from schoolgate.core.model import Identity


def _network(rng: random.Random) -> ipaddress.IPv4Network:
    prefix = rng.choice([0, 8, 12, 16, 20, 24, 28, 30, 32])
    address = rng.choice([0x0A000000, 0x0A140000, 0xC0A80000, 0xFFFFFF00]) | rng.getrandbits(16)
    return ipaddress.ip_network((address, prefix), strict=False)


def _expected(rules, site_networks, default_site: str, client_ip: str) -> Identity:
    address = ipaddress.ip_address(client_ip)
    rule = next((r for r in rules if address in r.network), None)
    site = next((s for n, s in site_networks if address in n), None)
    site = (rule.site if rule and rule.site else None) or site or default_site
    if rule is None:
        return Identity(
            role=GUEST,
            site=site,
            client_ip=client_ip,
            source="default",
            rule=f"no network rule matches {client_ip}: guest",
        )
    return Identity(
        role=rule.role, site=site, client_ip=client_ip, source="network", rule=rule.label
    )


@pytest.mark.parametrize("seed", range(40))
def test_an_address_gets_the_first_matching_network_and_its_site(seed: int) -> None:
    rng = random.Random(seed)
    rules = [
        NetworkRule(
            _network(rng), rng.choice(["student", "staff"]), rng.choice([None, "north"]), f"r{i}"
        )
        for i in range(rng.randint(0, 6))
    ]
    site_networks = [(_network(rng), rng.choice(["north", "south"])) for _ in range(3)]
    resolver = IdentityResolver(rules, {}, default_site="main", site_networks=site_networks)
    # The policy's way for a request with no user name: an address not remembered yet.
    fresh = IdentityResolver(rules, {}, default_site="main", site_networks=site_networks)
    edges = [n for r in rules for n in (r.network,)] + [n for n, _ in site_networks]
    addresses = {"0.0.0.0", "255.255.255.255", "10.20.0.1"}
    for net in edges:  # each network's first and last address, and those just outside it
        first, last = int(net.network_address), int(net.broadcast_address)
        addresses.update(
            str(ipaddress.IPv4Address(a))
            for a in (first - 1, first, last, last + 1)
            if 0 <= a < 2**32
        )
    addresses.update(str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(50))
    for client_ip in sorted(addresses):
        want = _expected(rules, site_networks, "main", client_ip)
        assert fresh.resolve_address(client_ip) == want, client_ip
        assert fresh.by_address[client_ip] == want, client_ip
        assert resolver.resolve(client_ip, None) == want, client_ip
        assert resolver.resolve(client_ip, None) == want, client_ip  # and when remembered
        assert resolver.resolve("::ffff:" + client_ip, None).role == want.role
        assert fresh.resolve_address("::ffff:" + client_ip).role == want.role


def test_a_resolved_identity_is_a_plain_frozen_identity() -> None:
    rule = NetworkRule(ipaddress.ip_network("10.20.0.0/16"), "student", None, "networks[0]")
    resolver = IdentityResolver([rule], {}, default_site="main", site_networks=[])
    identity = resolver.resolve("10.20.1.2", None)
    assert type(identity) is Identity
    assert identity == Identity(
        role="student", site="main", client_ip="10.20.1.2", source="network", rule="networks[0]"
    )
    assert hash(identity) == hash(
        Identity("student", "main", None, None, None, "10.20.1.2", "network", "networks[0]")
    )
    with pytest.raises(AttributeError):
        identity.role = "staff"  # type: ignore[misc]


def test_the_quick_builders_take_every_field_of_their_class() -> None:
    # identity_of and list_match set each field by name: a field added to the class must be
    # added to them, or their values would lack it.
    import dataclasses
    import inspect

    from schoolgate.core.model import ListMatch, identity_of, list_match

    for build, cls in ((identity_of, Identity), (list_match, ListMatch)):
        assert list(inspect.signature(build).parameters) == [
            f.name for f in dataclasses.fields(cls)
        ]
    assert list_match("social", "a.test", "l:1", "domain") == ListMatch(
        "social", "a.test", "l:1", "domain"
    )
