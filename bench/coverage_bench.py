#!/usr/bin/env python3
"""How much of the public category lists the policy blocks, and how much education it leaves open.

For each configuration (default: the shipped ``mitm_config.yaml``, with its shipped snapshots
only: a fresh data folder, so no subscription has been fetched), a pupil (``--role
student``) at a lesson time found in the default site's timetable asks for every host of
every measurement list, and every host of every site in ``tests/data/education_sites.txt``.
The decisions are the policy's own (:meth:`schoolgate.core.policy.Policy.decide`, no exceptions in
force), so what is measured is what the gateway would answer.

A list host counts as blocked when ``GET https://HOST/`` is refused (a pupil's HTTPS is
decrypted). An education site counts as open only when every one of its hosts is allowed both
as a decrypted request (``GET`` of the host and path given) and as a connection known only by
its name (``CONNECT``/SNI: a device without the school's certificate, or a no_intercept site).

Measurement lists are public lists the project does not ship as blocklists (the shipped UT1
snapshots would measure themselves): ``bench/data/`` (see its README for upstreams and
licences) and ``tests/data/list-samples/``. More can be given as ``--list KIND:NAME:PATH``
(KIND ``social`` or ``circumvention``; PATH a list file in any format the gateway reads).

Prints, per configuration: one line per list (hosts, blocked, share), the pooled share of each
kind (distinct hosts over all its lists) against the target (95% social media, 90% DoH/VPN/
proxy), education sites open against 100%, each education host that is blocked and why, and
the largest groups of hosts left open (by registered domain), which is where the gaps are.

    python3 bench/coverage_bench.py
    python3 bench/coverage_bench.py --config mitm_config.yaml --gaps 40
    python3 bench/coverage_bench.py --list circumvention:jameshas-doh:/path/doh_domains_plain.txt
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from schoolgate.core.config import load_policy  # noqa: E402
from schoolgate.core.configfile import Issues  # noqa: E402
from schoolgate.core.lists import parse_list  # noqa: E402
from schoolgate.core.model import Identity, RequestFacts  # noqa: E402

DATA = ROOT / "bench" / "data"


def _shared_samples() -> Path:
    """The public list samples the tests use (``tests/data/list-samples``)."""
    return ROOT / "tests" / "data" / "list-samples"


SHARED = _shared_samples()
EDUCATION = ROOT / "tests" / "data" / "education_sites.txt"
CONFIGS = (ROOT / "mitm_config.yaml",)
TARGETS = {"social": 0.95, "circumvention": 0.90}
KIND_NAMES = {"social": "social media", "circumvention": "DoH, VPN and proxy"}

# (kind, name, path): public lists the project does not ship.
LISTS: tuple[tuple[str, str, Path], ...] = (
    ("social", "hagezi social (2026-04)", DATA / "hagezi/social-onlydomains.txt"),
    ("social", "blocklistproject facebook", DATA / "blocklistproject/facebook.txt"),
    ("social", "blocklistproject tiktok", DATA / "blocklistproject/tiktok.txt"),
    ("social", "blocklistproject twitter", DATA / "blocklistproject/twitter.txt"),
    ("social", "blocklistproject whatsapp", DATA / "blocklistproject/whatsapp.txt"),
    ("social", "blocklistproject youtube", DATA / "blocklistproject/youtube.txt"),
    ("social", "gieljnssns facebook", DATA / "gieljnssns/pihole-facebook.txt"),
    ("social", "gieljnssns instagram", DATA / "gieljnssns/pihole-instagram.txt"),
    ("social", "gieljnssns tiktok", DATA / "gieljnssns/pihole-tiktok.txt"),
    ("social", "gieljnssns whatsapp", DATA / "gieljnssns/pihole-whatsapp.txt"),
    ("social", "gieljnssns youtube", DATA / "gieljnssns/pihole-youtube.txt"),
    ("social", "crpietschmann social", DATA / "crpietschmann/blocklist-social-all.txt"),
    ("social", "crpietschmann messaging", DATA / "crpietschmann/blocklist-messaging-all.txt"),
    ("social", "stevenblack social (2018)", SHARED / "stevenblack-social/extensions_social_hosts"),
    ("social", "jmdugan facebook+instagram", SHARED / "jmdugan/facebook_instagram"),
    ("social", "jmdugan twitter", SHARED / "jmdugan/twitter_all"),
    ("circumvention", "hagezi doh-vpn-proxy-bypass", DATA / "hagezi/doh-vpn-proxy-bypass.txt"),
    ("circumvention", "hagezi doh addresses", DATA / "hagezi/doh-ips.txt"),
    ("circumvention", "dibdot doh names", DATA / "dibdot/doh-domains.txt"),
    ("circumvention", "dibdot doh ipv4", DATA / "dibdot/doh-ipv4.txt"),
    ("circumvention", "dibdot doh ipv6", DATA / "dibdot/doh-ipv6.txt"),
)


@dataclass
class ListResult:
    kind: str
    name: str
    hosts: list[str]
    blocked: int = 0
    open_hosts: list[str] = field(default_factory=list)

    @property
    def share(self) -> float:
        return self.blocked / len(self.hosts) if self.hosts else 0.0


def list_hosts(path: Path) -> list[str]:
    """Every distinct host a list names (domains, IP addresses and the hosts of path rules)."""
    parsed = parse_list(path, Issues())
    hosts = dict.fromkeys(parsed.domains)
    for host, _prefix, _line in parsed.paths:
        hosts.setdefault(host)
    return list(hosts)


def education_sites(path: Path) -> list[tuple[str, list[tuple[str, str]]]]:
    """``[(site, [(host, path), ...])]`` from the ``name | host host/path ...`` file."""
    sites = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, bar, rest = line.partition("|")
        if not bar or not rest.split():
            raise SystemExit(f"{path}:{number}: expected 'site name | host ...', got {raw!r}")
        targets = []
        for item in rest.split():
            host, slash, tail = item.partition("/")
            targets.append((host.lower(), "/" + tail if slash else "/"))
        sites.append((name.strip(), targets))
    return sites


def lesson_time(policy, site: str, start: datetime) -> datetime:
    """The first moment from ``start`` that the site's timetable calls a lesson."""
    at = start
    for _ in range(4 * 24 * 60):  # 15-minute steps, up to 60 days
        if policy.window(site, at).kind == "lesson":
            return at
        at += timedelta(minutes=15)
    raise SystemExit(f"no lesson in the 60 days after {start:%Y-%m-%d} at site {site!r}")


def registered_domain(host: str) -> str:
    """A rough registered domain for grouping gaps (``a.b.co.uk`` -> ``b.co.uk``)."""
    if _is_ip(host):
        return "(IP addresses)"
    labels = host.split(".")
    keep = 2
    if len(labels) >= 3 and len(labels[-1]) == 2 and labels[-2] in (
        "co", "com", "org", "net", "ac", "gov", "edu", "ne", "or", "go",
    ):  # fmt: skip
        keep = 3
    return ".".join(labels[-keep:])


def measure(config: Path, lists, role: str, start: datetime, data_dir: Path) -> dict:
    """Decide every list host and education host for ``role`` at the first lesson from the
    naive local time ``start``."""
    policy = load_policy(config, data_dir=data_dir)
    site = policy.resolver.default_site
    tz = policy.window(site, start.replace(tzinfo=UTC)).start.tzinfo
    at = lesson_time(policy, site, start.replace(tzinfo=tz))
    who = Identity(role=role, site=site, source="given", rule=f"--role {role}")

    def decide(host: str, path: str | None):
        facts = RequestFacts(
            host=host,
            at=at,
            path=path,
            method="GET" if path is not None else None,
            port=443,
            scheme="https",
        )
        return policy.decide(facts, identity=who)

    results = []
    for kind, name, path in lists:
        hosts = list_hosts(path)
        res = ListResult(kind, name, hosts)
        for host in hosts:
            if decide(host, "/").allowed:
                res.open_hosts.append(host)
            else:
                res.blocked += 1
        results.append(res)

    sites = education_sites(EDUCATION)
    edu_open = 0
    edu_blocked: list[tuple[str, str, str, str]] = []
    for name, targets in sites:
        ok = True
        for host, path in targets:
            for how, decision in (("GET", decide(host, path)), ("CONNECT", decide(host, None))):
                if not decision.allowed:
                    ok = False
                    where = f"{host}{path}" if how == "GET" else host
                    edu_blocked.append((name, how, where, decision.rule))
        edu_open += ok
    return {
        "config": str(config.relative_to(ROOT) if config.is_relative_to(ROOT) else config),
        "at": at.isoformat(timespec="minutes"),
        "window": policy.window(site, at).name,
        "role": role,
        "lists": results,
        "education": (edu_open, len(sites)),
        "education_blocked": edu_blocked,
    }


def pooled(results: list[ListResult], kind: str) -> tuple[int, int, list[str]]:
    seen: dict[str, bool] = {}
    for res in results:
        if res.kind != kind:
            continue
        open_set = set(res.open_hosts)
        for host in res.hosts:
            seen[host] = seen.get(host, False) or host not in open_set
    open_hosts = [h for h, blocked in seen.items() if not blocked]
    return len(seen) - len(open_hosts), len(seen), open_hosts


def _is_ip(host: str) -> bool:
    return host[-1:].isdigit() or ":" in host


def _pooled_hosts(results: list[ListResult], kind: str) -> list[str]:
    return list(dict.fromkeys(h for r in results if r.kind == kind for h in r.hosts))


def report(out: dict, gaps: int) -> None:
    print(f"== {out['config']}: role {out['role']}, {out['window']} at {out['at']}")
    print(f"   {'list':<36} {'kind':<14} {'hosts':>7} {'blocked':>8} {'share':>7}")
    for res in out["lists"]:
        print(
            f"   {res.name:<36} {res.kind:<14} {len(res.hosts):>7} {res.blocked:>8} "
            f"{res.share:>7.1%}"
        )
    for kind, target in TARGETS.items():
        blocked, total, open_hosts = pooled(out["lists"], kind)
        if not total:
            continue
        share = blocked / total
        verdict = "meets" if share >= target else "BELOW"
        print(
            f"   {KIND_NAMES[kind]}, distinct hosts of all its lists: {blocked}/{total} blocked "
            f"= {share:.1%} ({verdict} the {target:.0%} target)"
        )
        if kind == "circumvention":
            addresses = 0
            for label, want_ip in (("names", False), ("addresses", True)):
                part = [h for h in _pooled_hosts(out["lists"], kind) if _is_ip(h) is want_ip]
                part_open = set(open_hosts)
                hit = sum(h not in part_open for h in part)
                if part:
                    print(f"     {label}: {hit}/{len(part)} blocked = {hit / len(part):.1%}")
                if want_ip:
                    addresses = len(part) - hit
            # Issue 19: a pupil's HTTPS to an IP address (no SNI, or an SNI that does not
            # resolve to it) is refused as an unknown destination, whatever the lists say.
            with_rule = (blocked + addresses) / total
            verdict = "meets" if with_rule >= target else "BELOW"
            print(
                f"     with IP-literal HTTPS refused as an unknown destination (issue 19): "
                f"{blocked + addresses}/{total} = {with_rule:.1%} ({verdict} the target)"
            )
        if gaps and open_hosts:
            groups = Counter(registered_domain(h) for h in open_hosts)
            shown = ", ".join(f"{d} {n}" for d, n in groups.most_common(gaps))
            print(f"     open, by registered domain: {shown}")
    edu_open, edu_total = out["education"]
    verdict = "meets" if edu_open == edu_total else "BELOW"
    print(
        f"   education sites open: {edu_open}/{edu_total} = {edu_open / edu_total:.1%} "
        f"({verdict} the 100% target)"
    )
    for name, how, where, rule in out["education_blocked"]:
        print(f"     blocked: {name}: {how} {where} ({rule})")


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", action="append", type=Path, help="config(s) to measure")
    ap.add_argument("--list", action="append", default=[], metavar="KIND:NAME:PATH")
    ap.add_argument("--only-given-lists", action="store_true", help="skip the default lists")
    ap.add_argument("--role", default="student")
    ap.add_argument(
        "--from",
        dest="start",
        default="2026-11-23T08:00",
        help="look for a lesson from this local time (default %(default)s)",
    )
    ap.add_argument("--gaps", type=int, default=25, help="groups of open hosts shown")
    ap.add_argument("--json", action="store_true", help="print figures as JSON")
    a = ap.parse_args()

    lists = [] if a.only_given_lists else [item for item in LISTS if item[2].exists()]
    missing = [str(p) for _k, _n, p in LISTS if not p.exists()]
    for spec in a.list:
        kind, name, path = spec.split(":", 2)
        if kind not in TARGETS:
            raise SystemExit(f"--list {spec}: KIND is one of {', '.join(TARGETS)}")
        lists.append((kind, name, Path(path)))
    configs = a.config or list(CONFIGS)
    with tempfile.TemporaryDirectory(prefix="coverage-bench-") as data_dir:
        start = datetime.fromisoformat(a.start)
        outs = [measure(c.resolve(), lists, a.role, start, Path(data_dir)) for c in configs]
    if a.json:
        print(
            json.dumps(
                [
                    {
                        **{k: v for k, v in o.items() if k != "lists"},
                        "lists": [
                            {
                                "kind": r.kind,
                                "name": r.name,
                                "hosts": len(r.hosts),
                                "blocked": r.blocked,
                            }  # fmt: skip
                            for r in o["lists"]
                        ],
                    }
                    for o in outs
                ],
                indent=2,
            )
        )
        return 0
    if missing:
        print(f"(not found, skipped: {', '.join(missing)})")
    for out in outs:
        report(out, a.gaps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
