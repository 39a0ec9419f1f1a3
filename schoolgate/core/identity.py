"""Who is asking: client networks and the MIS roster, turned into an :class:`Identity`.

An authenticated user found on the roster beats the network's role; a client that matches no
network gets ``guest``, the most restrictive role (fail closed).
"""

from __future__ import annotations

import csv
import io
import ipaddress
import re
import socket
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from schoolgate.core.configfile import Issues
from schoolgate.core.model import Identity, identity_of

if TYPE_CHECKING:
    from schoolgate.core.binding import Binding

GUEST = "guest"
# Identity.source of a device on a network that requires sign-in which no source knows: it is
# sent to the sign-in page, never given the network's (or the guest) policy.
SIGN_IN_REQUIRED = "sign_in_required"
# Client addresses whose identity a resolver keeps while no bindings are consulted: every
# address of a /16, the largest network a school's config names in practice. About 200 bytes
# an address (the Identity, its dict entry and the address's string): 13 MB when full, then
# emptied and filled again.
ADDRESSES_REMEMBERED = 65_536
_inet_pton, _AF_INET, _from_bytes = socket.inet_pton, socket.AF_INET, int.from_bytes


class LiveBindings(Protocol):
    """Who each address is bound to now (the gateway's in-memory copy of the bindings table,
    and the DHCP leases): read on every request, so both answers are dictionary look-ups."""

    def binding(self, address: str) -> Binding | None: ...

    def device(self, address: str) -> str | None: ...


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class NetworkRule:
    network: IPNetwork
    role: str
    site: str | None
    label: str  # "identity.networks[0] (mitm_config.yaml:12) 10.20.0.0/16"


@dataclass(frozen=True, slots=True)
class RosterEntry:
    username: str
    role: str
    group: str | None
    date_of_birth: date | None
    site: str | None
    line: int


ROSTER_COLUMNS = ("username", "role", "group", "date_of_birth")
_YEAR_GROUP = re.compile(r"^\s*(?:y(?:ea)?r?\s*)?(\d{1,2})(?!\d)", re.IGNORECASE)


def parse_date_of_birth(text: str) -> date:
    """ISO dates (2012-05-17) and the UK form MIS exports often use (17/05/2012)."""
    text = text.strip()
    for fmt in ("%Y-%m-%d", "%d/%m/%Y", "%d-%m-%Y", "%d.%m.%Y"):
        try:
            return datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    raise ValueError(f"expected a date such as 2012-05-17 or 17/05/2012, got {text!r}")


def load_roster(
    path: Path,
    issues: Issues,
    *,
    roles: set[str],
    aliases: dict[str, str],
    sites: set[str],
    display_path: str | None = None,
) -> dict[str, RosterEntry]:
    """Read the MIS export (CSV: username, role, group, date_of_birth[, site])."""
    shown = display_path or str(path)
    entries: dict[str, RosterEntry] = {}
    try:
        data = path.read_bytes()
    except OSError as exc:
        issues.add(shown, None, "", f"cannot read roster: {exc.strerror or exc}")
        return entries
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        # Excel's plain "CSV" on Windows is cp1252: read it as that rather than refuse the MIS
        # export, and say so (names with accents should then be checked).
        issues.warn(
            shown,
            None,
            "",
            f"not UTF-8 ({exc.reason} at byte {exc.start}); read as "
            "Windows-1252 (save the export as 'CSV UTF-8' to avoid this)",
        )
        text = data.decode("cp1252", errors="replace")
    with io.StringIO(text, newline="") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            issues.add(
                shown, 1, "", f"empty roster; expected a header line: {','.join(ROSTER_COLUMNS)}"
            )
            return entries
        except csv.Error as exc:
            issues.add(shown, 1, "", f"invalid CSV: {exc}")
            return entries
        columns = [h.strip().lower().replace(" ", "_") for h in header]
        missing = [c for c in ROSTER_COLUMNS if c not in columns]
        if missing:
            issues.add(
                shown,
                1,
                "header",
                f"missing column(s) {', '.join(missing)}; expected {','.join(ROSTER_COLUMNS)}",
            )
            return entries
        index = {name: columns.index(name) for name in columns}
        try:
            for row in reader:
                line = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) < len(columns):
                    issues.add(shown, line, "", f"expected {len(columns)} columns, got {len(row)}")
                    continue
                username = row[index["username"]].strip().lower()
                if not username:
                    issues.add(shown, line, "username", "empty user name")
                    continue
                role = row[index["role"]].strip().lower()
                role = aliases.get(role, role)
                if role not in roles:
                    issues.add(
                        shown,
                        line,
                        "role",
                        f"unknown role {role!r}; expected one of {', '.join(sorted(roles))}",
                    )
                    continue
                dob = None
                dob_text = row[index["date_of_birth"]].strip()
                if dob_text:
                    try:
                        dob = parse_date_of_birth(dob_text)
                    except ValueError as exc:
                        issues.add(shown, line, "date_of_birth", str(exc))
                        continue
                site = row[index["site"]].strip() if "site" in index else ""
                if site and site not in sites:
                    issues.add(shown, line, "site", f"unknown site {site!r}")
                    continue
                if username in entries:
                    issues.add(
                        shown,
                        line,
                        "username",
                        f"{username!r} appears twice (first on line {entries[username].line})",
                    )
                    continue
                group = row[index["group"]].strip() or None
                entries[username] = RosterEntry(username, role, group, dob, site or None, line)
        except csv.Error as exc:
            issues.add(shown, reader.line_num, "", f"invalid CSV: {exc}")
    return entries


def year_of(group: str | None) -> int | None:
    """The National Curriculum year a group belongs to: '9B', 'Y9', 'Year 9' -> 9."""
    if not group:
        return None
    found = _YEAR_GROUP.match(group)
    if not found:
        return None
    year = int(found.group(1))
    return year if 1 <= year <= 13 else None


def minimum_age(identity: Identity, on: date) -> int | None:
    """The youngest the person can be on ``on``: from the date of birth, else the year group.

    In England a pupil in Year N is N+4 or N+5 during the school year; the lower bound is
    used, so that an age check fails closed.
    """
    dob = identity.date_of_birth
    if dob is not None:
        years = on.year - dob.year - ((on.month, on.day) < (dob.month, dob.day))
        return years
    year = year_of(identity.group)
    if year is not None:
        return year + 4
    return None


class IdentityResolver:
    """Maps (client IP, authenticated user) to an :class:`Identity`; memoised.

    The order: a proxy login (or Windows single sign-on) names the user; else the address's
    binding in ``live`` (RADIUS accounting, the sign-in page, in the configured order of
    sources) does; the roster gives a named user's role, group and date of birth, else the
    directory's role of the binding, else the network's. An address no source knows on one of
    ``sign_in_networks`` must sign in (:data:`SIGN_IN_REQUIRED`); elsewhere it gets its
    network's role, or guest. ``live`` is set by the gateway (None: no bindings are known,
    as for a command run on its own).
    """

    def __init__(
        self,
        rules: list[NetworkRule],
        roster: dict[str, RosterEntry],
        *,
        default_site: str,
        site_networks: list[tuple[IPNetwork, str]],
        roster_source: str = "",
        sign_in_networks: tuple[IPNetwork, ...] | list[IPNetwork] = (),
    ) -> None:
        self.live: LiveBindings | None = None
        self.sign_in_networks = tuple(sign_in_networks)
        self.rules = tuple(rules)
        self.roster = roster
        self.default_site = default_site
        self.site_networks = tuple(site_networks)
        self.roster_source = roster_source
        self._cache: dict[tuple[object, ...], Identity] = {}
        # Client address -> identity, for requests with no user name while no bindings are
        # consulted (``live`` is None): then the address alone decides, and the policy reads
        # this before calling :meth:`resolve`. Emptied when ``live`` is set, and never filled
        # while it is.
        self.by_address: dict[str | None, Identity] = {}
        self._v4 = _V4Table(self.rules, self.site_networks, default_site)

    def _site_for(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> str:
        if address is not None:
            for network, site in self.site_networks:
                if address in network:
                    return site
        return self.default_site

    def use_live(self, live: LiveBindings | None) -> None:
        """Consult ``live`` for addresses with no proxy login from now on."""
        if live is not self.live:
            # In this order, with resolve() reading by_address before live: an identity
            # worked out without bindings never lands in the new by_address.
            self.live = live
            self._cache = {}
            self.by_address = {}

    def resolve_address(self, client_ip: str | None) -> Identity:
        """:meth:`resolve` for a request with no user name from an address that
        ``by_address`` does not hold (the policy looks there first): the usual first request
        of a device, in one call, for a dotted-quad address on one of the networks."""
        by_address = self.by_address  # before live, as in resolve(): see use_live
        if self.live is not None or self.sign_in_networks or not client_ip:
            return self.resolve(client_ip, None)
        # _ipv4_int and _V4Table.find inline; the Identity is the one _by_network builds.
        try:
            as_int = _from_bytes(_inet_pton(_AF_INET, client_ip), "big")
        except OSError:  # IPv6 (IPv4-mapped included), or not an address
            return self.resolve(client_ip, None)
        table = self._v4
        found = table.networks[bisect_right(table.starts, as_int) - 1]
        if found is None:  # on no network: a guest
            return self.resolve(client_ip, None)
        identity = identity_of(found[0], found[1], None, None, None, client_ip, "network", found[2])
        if len(by_address) >= ADDRESSES_REMEMBERED:
            by_address.clear()
        by_address[client_ip] = identity
        return identity

    def resolve(self, client_ip: str | None, user: str | None) -> Identity:
        by_address = self.by_address
        live = self.live
        if live is None and user is None and not self.sign_in_networks:
            # The address alone decides, and nothing else is remembered for it: by_address
            # is the only cache this needs (one dict insert, not two).
            identity = by_address.get(client_ip)
            if identity is None:
                identity = self._by_network(client_ip)
                if len(by_address) >= ADDRESSES_REMEMBERED:
                    by_address.clear()
                by_address[client_ip] = identity
            return identity
        binding = device = None
        if live is not None and not user and client_ip:
            binding = live.binding(client_ip)
            if binding is None:
                device = live.device(client_ip)
                key: tuple[object, ...] = (client_ip, None, device)
            else:
                key = (client_ip, binding.id, binding.user, binding.role, binding.device)
        elif not user and self.sign_in_networks:
            key = (client_ip, None, None)  # no bindings known at all: none for this address
        else:
            key = (client_ip, user)
        identity = self._cache.get(key)
        if identity is None:
            if len(key) == 3:
                identity = self._resolve(client_ip, None, unknown=True, device=device)
            elif binding is not None:
                identity = self._resolve(client_ip, None, binding=binding)
            else:
                identity = self._resolve(client_ip, user)
            if len(self._cache) >= 100_000:
                self._cache.clear()
            self._cache[key] = identity
        if live is None and user is None:
            if len(by_address) >= ADDRESSES_REMEMBERED:
                by_address.clear()
            by_address[client_ip] = identity
        return identity

    def _resolve(
        self,
        client_ip: str | None,
        user: str | None,
        *,
        binding: Binding | None = None,
        unknown: bool = False,
        device: str | None = None,
    ) -> Identity:
        identity = self._resolve_network(client_ip, user, binding)
        if binding is None and unknown:
            net = self._sign_in_network(client_ip)
            if net is not None:
                return Identity(
                    role=identity.role,
                    site=identity.site,
                    client_ip=client_ip,
                    source=SIGN_IN_REQUIRED,
                    rule=f"{client_ip} is on {net}, where devices must sign in, and no "
                    "identity source knows it",
                    device=device,
                )
            if device is not None:
                return replace(identity, device=device)
        return identity

    def _sign_in_network(self, client_ip: str | None) -> IPNetwork | None:
        if not self.sign_in_networks or not client_ip:
            return None
        try:
            address = ipaddress.ip_address(client_ip.split("%", 1)[0])
        except ValueError:
            return self.sign_in_networks[0]  # not an address: fail closed
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        for network in self.sign_in_networks:
            if address.version == network.version and address in network:
                return network
        return None

    def _by_network(self, client_ip: str | None) -> Identity:
        """:meth:`_finish` for an address with no user name and no binding: the same
        identity, built with one table look-up and no further call for most addresses."""
        # _ipv4_int and _V4Table.find, inline: each call costs as much as its work.
        if not client_ip:
            return self._resolve_network(client_ip, None)
        text = client_ip[7:] if client_ip.startswith("::ffff:") else client_ip
        try:
            as_int = _from_bytes(_inet_pton(_AF_INET, text), "big")
        except OSError:  # not an IPv4 address
            return self._resolve_network(client_ip, None)
        table = self._v4
        network_rule, site = table.answers[bisect_right(table.starts, as_int) - 1]
        if network_rule is None:
            return self._finish(client_ip, None, None, site)
        return identity_of(
            network_rule.role, site, None, None, None, client_ip, "network", network_rule.label
        )

    def _resolve_network(
        self, client_ip: str | None, user: str | None, binding: Binding | None = None
    ) -> Identity:
        address = None
        as_int = _ipv4_int(client_ip) if client_ip else None
        if as_int is not None:
            network_rule, site = self._v4.find(as_int)
            return self._finish(client_ip, user, network_rule, site, binding)
        if client_ip:
            try:
                address = ipaddress.ip_address(client_ip.split("%", 1)[0])
                if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                    address = address.ipv4_mapped
            except ValueError:
                address = None
        network_rule = None
        if address is not None:
            for rule in self.rules:
                if address.version == rule.network.version and address in rule.network:
                    network_rule = rule
                    break
        site = (
            network_rule.site if network_rule and network_rule.site else None
        ) or self._site_for(address)
        return self._finish(client_ip, user, network_rule, site, binding)

    def _finish(
        self,
        client_ip: str | None,
        user: str | None,
        network_rule: NetworkRule | None,
        site: str,
        binding: Binding | None = None,
    ) -> Identity:
        if binding is not None:
            return self._bound(client_ip, binding, network_rule, site)
        username = user.strip().lower() if user else None
        if username:
            entry = self.roster.get(username)
            if entry is not None:
                return identity_of(
                    role=entry.role,
                    site=entry.site or site,
                    user=username,
                    group=entry.group,
                    date_of_birth=entry.date_of_birth,
                    client_ip=client_ip,
                    source="roster",
                    rule=f"roster {self.roster_source}:{entry.line} ({username})",
                )
        if network_rule is not None:
            note = f"; user {username!r} is not on the roster" if username else ""
            return identity_of(
                role=network_rule.role,
                site=site,
                user=username,
                client_ip=client_ip,
                source="network",
                rule=network_rule.label + note,
            )
        note = f"; user {username!r} is not on the roster" if username else ""
        return identity_of(
            role=GUEST,
            site=site,
            user=username,
            client_ip=client_ip,
            source="default",
            rule=f"no network rule matches {client_ip or 'an unknown client'}: guest{note}",
        )

    def _bound(
        self, client_ip: str | None, binding: Binding, network_rule: NetworkRule | None, site: str
    ) -> Identity:
        """The identity of an address an identity source has bound (no proxy login): the
        roster's for a person it knows, else the directory's role the binding carries, else
        the network's."""
        via = f"bound to {binding.address} by {binding.source} ({binding.origin})"
        username = binding.user if binding.kind == "person" else None
        identity = self._finish(client_ip, username, network_rule, site)
        if username and identity.source != "roster" and binding.role:
            identity = Identity(
                role=binding.role,
                site=site,
                user=username,
                client_ip=client_ip,
                source="binding",
                rule=f"{username} {via}; role {binding.role} from the directory's groups "
                "(not on the roster)",
            )
        elif identity.source == "roster":
            identity = replace(identity, rule=f"{identity.rule}, {via}")
        else:
            who = username or f"machine {binding.device or '?'}"
            identity = replace(identity, rule=f"{identity.rule} ({who} {via})")
        return replace(identity, device=binding.device)


class _V4Table:
    """Which network rule and site each IPv4 address gets, as sorted integer ranges: the
    networks' starts and ends cut the address space into ranges inside which every address
    matches the same networks, so one ``bisect`` finds what the rules in order (the first
    network that matches decides) would find, whatever the number of networks."""

    def __init__(
        self,
        rules: Sequence[NetworkRule],
        site_networks: Sequence[tuple[IPNetwork, str]],
        default_site: str,
    ) -> None:
        v4_rules = [
            (int(r.network.network_address), int(r.network.netmask), r)
            for r in rules
            if r.network.version == 4
        ]
        v4_sites = [
            (int(n.network_address), int(n.netmask), site)
            for n, site in site_networks
            if n.version == 4
        ]
        cuts = {0}
        for net, mask, _ in (*v4_rules, *v4_sites):
            cuts.add(net)
            cuts.add(net + ((~mask) & 0xFFFFFFFF) + 1)
        self.starts = sorted(cut for cut in cuts if cut <= 0xFFFFFFFF)
        answers: list[tuple[NetworkRule | None, str]] = []
        for start in self.starts:
            rule = next((r for net, mask, r in v4_rules if start & mask == net), None)
            site = next((s for net, mask, s in v4_sites if start & mask == net), None)
            answers.append(
                (rule, (rule.site if rule and rule.site else None) or site or default_site)
            )
        self.answers = tuple(answers)
        # For each range on a network: (role, site, rule label) of its identity, else None.
        self.networks = tuple(
            None if rule is None else (rule.role, site, rule.label) for rule, site in answers
        )

    def find(self, address: int) -> tuple[NetworkRule | None, str]:
        """The first matching rule (None: no rule matches) and the site of an address."""
        return self.answers[bisect_right(self.starts, address) - 1]


def _ipv4_int(text: str) -> int | None:
    """A dotted-quad IPv4 address (or IPv4-mapped IPv6) as an integer, else None."""
    if text.startswith("::ffff:"):
        text = text[7:]
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except OSError:
        return None
