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
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from schoolgate.configfile import Issues
from schoolgate.model import Identity

GUEST = "guest"

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
    """Maps (client IP, authenticated user) to an :class:`Identity`; memoised, immutable."""

    def __init__(
        self,
        rules: list[NetworkRule],
        roster: dict[str, RosterEntry],
        *,
        default_site: str,
        site_networks: list[tuple[IPNetwork, str]],
        roster_source: str = "",
    ) -> None:
        self.rules = tuple(rules)
        self.roster = roster
        self.default_site = default_site
        self.site_networks = tuple(site_networks)
        self.roster_source = roster_source
        self._cache: dict[tuple[str | None, str | None], Identity] = {}
        # IPv4 rules as (network, mask, rule) integers: a cache miss costs ~1 us, not ~10.
        self._v4_rules = tuple(
            (int(r.network.network_address), int(r.network.netmask), r)
            for r in self.rules
            if r.network.version == 4
        )
        self._v4_sites = tuple(
            (int(n.network_address), int(n.netmask), site)
            for n, site in self.site_networks
            if n.version == 4
        )

    def _site_for(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> str:
        if address is not None:
            for network, site in self.site_networks:
                if address in network:
                    return site
        return self.default_site

    def resolve(self, client_ip: str | None, user: str | None) -> Identity:
        key = (client_ip, user)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        identity = self._resolve(client_ip, user)
        if len(self._cache) >= 100_000:
            self._cache.clear()
        self._cache[key] = identity
        return identity

    def _resolve(self, client_ip: str | None, user: str | None) -> Identity:
        address = None
        as_int = _ipv4_int(client_ip) if client_ip else None
        if as_int is not None:
            network_rule = next(
                (rule for net, mask, rule in self._v4_rules if as_int & mask == net), None
            )
            site = next((s for net, mask, s in self._v4_sites if as_int & mask == net), None)
            site = (network_rule.site if network_rule and network_rule.site else None) or (
                site or self.default_site
            )
            return self._finish(client_ip, user, network_rule, site)
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
        return self._finish(client_ip, user, network_rule, site)

    def _finish(
        self, client_ip: str | None, user: str | None, network_rule: NetworkRule | None, site: str
    ) -> Identity:
        username = user.strip().lower() if user else None
        if username:
            entry = self.roster.get(username)
            if entry is not None:
                return Identity(
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
            return Identity(
                role=network_rule.role,
                site=site,
                user=username,
                client_ip=client_ip,
                source="network",
                rule=network_rule.label + note,
            )
        note = f"; user {username!r} is not on the roster" if username else ""
        return Identity(
            role=GUEST,
            site=site,
            user=username,
            client_ip=client_ip,
            source="default",
            rule=f"no network rule matches {client_ip or 'an unknown client'}: guest{note}",
        )


def _ipv4_int(text: str) -> int | None:
    """A dotted-quad IPv4 address (or IPv4-mapped IPv6) as an integer, else None."""
    if text.startswith("::ffff:"):
        text = text[7:]
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except OSError:
        return None
