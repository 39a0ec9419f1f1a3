"""Load ``mitm_config.yaml`` (and the files it names) into an immutable :class:`Policy`.

Every problem in every file is collected and reported together (file, line, field, what was
expected); a config with any error yields no policy at all, never a half-loaded one.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from schoolgate.core.alert_settings import read_alerts
from schoolgate.core.circumvention_settings import load_circumvention
from schoolgate.core.config_lists import (
    compile_lists,
    compile_locked,
    read_age_restrictions,
    read_allowlist,
    read_categories,
    read_no_intercept,
)
from schoolgate.core.configfile import (
    ConfigError,
    Issues,
    Section,
    display_path,
    load_yaml,
    resolve_path,
)
from schoolgate.core.fediverse_settings import read_fediverse
from schoolgate.core.identity import GUEST, IdentityResolver, NetworkRule, RosterEntry, load_roster
from schoolgate.core.identity_settings import (
    IDENTITY_SOURCE_KEYS,
    IdentitySources,
    read_identity_sources,
)
from schoolgate.core.list_update_settings import read_list_updates
from schoolgate.core.liststore_write import Progress
from schoolgate.core.locations import find_config, find_data_dir
from schoolgate.core.model import WINDOW_KINDS, Action
from schoolgate.core.monitoring_settings import read_monitoring
from schoolgate.core.notification_settings import read_notifications
from schoolgate.core.platforms import read_platforms
from schoolgate.core.policy import CategorySettings, Policy, RoleSettings, RuleRef
from schoolgate.core.portal_settings import read_portal
from schoolgate.core.report_settings import RoleNamed, read_reports
from schoolgate.core.retention_settings import read_retention
from schoolgate.core.sanctions import load_sanctions
from schoolgate.core.settings import Settings
from schoolgate.core.timetable import Timetable, load_timetable
from schoolgate.core.words import read_wording

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# The config a source checkout ships. Which config a command or the gateway uses when none is
# given is :func:`default_config` (schoolgate.core.locations): the environment, the
# system-wide /etc/schoolgate/mitm_config.yaml, then this one in a checkout.
DEFAULT_CONFIG = PROJECT_ROOT / "mitm_config.yaml"
DEFAULT_DATABASE_URL = "sqlite:///{data_dir}/schoolgate.db"

# Sections read by the readers of the parts that own them (circumvention, bans, reports, ...:
# see schoolgate.core.settings) into typed fields of Settings; ``teachers`` and ``safe_search``
# are accepted for older configs and not used.
OWNED_SECTIONS = (
    "circumvention",
    "bans",
    "notifications",
    "reports",
    "retention",
    "teachers",
    "safe_search",
    "list_updates",
    "school_name",
    "alerts",
    "monitoring",
)
TOP_KEYS = frozenset(
    {
        "database",
        "portal",
        "roles",
        "identity",
        "sites",
        "default_site",
        "categories",
        "allowlist",
        "rules",
        "read_only",
        "age_restrictions",
        "interception",
        "privacy",
        "logging",
        "advice",
        "words",
        "platforms",
        "fediverse",
        *OWNED_SECTIONS,
    }
)

DEFAULT_ADVICE = (
    "Safe: keep your personal information safe. Do not give out your name, address, "
    "school, phone number or passwords online.",
    "Meeting: never meet someone you have only been in touch with online without a parent "
    "or carer's permission, and only with them there.",
    "Accepting: messages, files and links from people you do not know can be harmful.",
    "Reliable: people online may not be who they say; check information before you trust it.",
    "Tell: tell a parent, carer or a trusted adult at school if anything online makes you "
    "feel uncomfortable or worried.",
)


def default_config() -> Path:
    """``SCHOOLGATE_CONFIG``, /etc/schoolgate/mitm_config.yaml when installed system-wide, or
    the checkout's; raises :class:`~schoolgate.core.locations.LocationError` when none."""
    return find_config().path


def default_data_dir() -> Path:
    """``SCHOOLGATE_DATA_DIR``, /var/lib/schoolgate when installed system-wide, or the
    checkout's ``var/`` (absolute, whatever the current folder)."""
    return find_data_dir().path


# A database URL's check, raising ValueError with the message to show: the storage layer's
# (the database kind known, its driver installed), which the core cannot import.
DatabaseURLCheck = Callable[[str], None]
# What any database URL starts with (KIND or KIND+DRIVER, then ://).
_DATABASE_URL_SHAPE = re.compile(r"[\w+]+://")
RuleKey = tuple[str, str | None, str, str]  # role, group (None: any), window kind, category
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def load_policy(
    path: Path | str | None = None,
    *,
    data_dir: Path | str | None = None,
    list_progress: Progress | None = None,
    check_database_url: DatabaseURLCheck | None = None,
) -> Policy:
    """Read and validate the config; raise :class:`ConfigError` with every issue found.

    The category lists are mapped from their compiled store in ``<data_dir>/lists``, compiled
    first when they changed (``list_progress`` is told how that goes). ``database.url`` is
    checked by ``check_database_url`` when given (the storage layer's check: the processes
    that open the database pass it), else only its shape is."""
    config_path = Path(path) if path else default_config()
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    issues = Issues()
    shown = str(config_path)
    data = load_yaml(config_path, issues, shown=shown)
    if data is None:  # the problem is in issues
        raise ConfigError(issues.items)
    root = Section(data, file=shown, path="", issues=issues)
    base = config_path.resolve().parent
    policy = _build(root, base, data_dir, config_path, issues, list_progress, check_database_url)
    issues.raise_if_any()
    assert policy is not None
    policy.warnings = tuple(str(w) for w in sorted(issues.warnings))
    return policy


def _build(
    root: Section,
    base: Path,
    data_dir: Path,
    config_path: Path,
    issues: Issues,
    list_progress: Progress | None,
    check_url: DatabaseURLCheck | None,
) -> Policy | None:
    """The policy of a config, each section read by its own function; None when any error was
    found (they are all in ``issues``)."""
    root.check_keys(TOP_KEYS)
    url = _database_url(root.section("database"), data_dir, check_url)
    portal = read_portal(root.section("portal"), base)
    roles = _roles(root)
    sites = _sites(root, base, issues)
    people = _people(root, base, issues, set(roles), sites)
    lists = read_categories(root, base, data_dir, issues)
    allow_lists = read_allowlist(root, base, issues)
    rules, rule_count = _rules(root, set(roles), people.aliases, lists.categories)
    blocked_paths, without_interception = _read_only(root)
    age_matcher, age_restrictions = read_age_restrictions(root, base, issues)
    no_intercept_matcher = read_no_intercept(root, base, data_dir, issues)
    keep_paths = _one_flag(root, "privacy", "keep_paths", default=True)
    log_allowed = _one_flag(root, "logging", "allowed_categories", default=False)
    advice = tuple(t for t, _, _ in root.strings("advice")) or DEFAULT_ADVICE
    role_names_and_aliases = {name: name for name in roles} | people.aliases
    categories = lists.categories
    list_updates = read_list_updates(root.section("list_updates"), base, categories)
    settings = Settings(
        config_path=str(config_path),
        data_dir=str(data_dir),
        database_url=url,
        portal_host=portal.host,
        keep_paths=keep_paths,
        log_allowed_categories=log_allowed,
        read_only_blocked_paths=blocked_paths,
        read_only_without_interception=without_interception,
        advice=advice,
        circumvention=load_circumvention(
            root.section("circumvention"), known_roles=role_names_and_aliases
        ),
        sanctions=load_sanctions(root.section("bans"), known_roles=role_names_and_aliases),
        wording=read_wording(root, roles=set(roles)),
        notifications=read_notifications(root.section("notifications")),
        alerts=read_alerts(root.section("alerts"), categories),
        reports=read_reports(root.section("reports"), _role_named(roles, people.aliases)),
        retention=read_retention(root.section("retention")),
        list_updates=replace(
            list_updates, subscriptions=tuple(lists.subscriptions), data_dir=Path(data_dir)
        ),
        portal=portal,
        identity_sources=people.sources,
        monitoring=read_monitoring(root.section("monitoring"), base),
    )
    platforms = read_platforms(root, base, issues, categories)
    fediverse_category = read_fediverse(root.section("fediverse"), categories)

    matcher = compile_lists("main", lists.normal, allow_lists, data_dir, issues, list_progress)
    locked_matcher = compile_locked(lists.locked, data_dir, issues) if lists.locked else None
    if issues or matcher is None:
        return None
    policy = Policy(
        settings=settings,
        roles=roles,
        resolver=people.resolver,
        timetables=sites.timetables,
        categories=categories,
        matcher=matcher,
        locked_matcher=locked_matcher,
        rules=rules,
        age_matcher=age_matcher,
        age_restrictions=age_restrictions,
        no_intercept_matcher=no_intercept_matcher,
    )
    policy.role_aliases = dict(people.aliases)
    policy.rule_count = rule_count
    policy.subscriptions = tuple(lists.subscriptions)
    policy.platforms = platforms
    policy.fediverse_category = fediverse_category
    return policy


# -- database -------------------------------------------------------------------------------
def check_database_url_shape(url: str) -> None:
    """Raise ValueError unless ``url`` has the shape of a database URL (``KIND://...``); whether
    schoolgate can use it is the storage layer's check."""
    if not _DATABASE_URL_SHAPE.match(url):
        raise ValueError(
            "not a database URL: expected KIND://..., such as sqlite:///PATH or "
            "postgresql+psycopg://USER@HOST/DB"
        )


def _database_url(database: Section | None, data_dir: Path, check: DatabaseURLCheck | None) -> str:
    """``database.url`` with its ``{data_dir}`` filled in (the default when not given); a URL
    given in the config is checked (``check``, else its shape only)."""
    url = (database.text("url") if database else None) or DEFAULT_DATABASE_URL
    url = url.replace("{data_dir}", str(data_dir.resolve()))
    if database is None:
        return url
    database.check_keys({"url"})
    if "url" in database:
        try:
            (check or check_database_url_shape)(url)
        except ValueError as exc:
            database.error("url", str(exc))
    return url


# -- roles ----------------------------------------------------------------------------------
def _roles(root: Section) -> dict[str, RoleSettings]:
    """The ``roles`` section, and the built-in ``guest`` role unless the config defines it."""
    roles: dict[str, RoleSettings] = {}
    for name, sec in root.named_sections("roles", required=True):
        sec.check_keys(
            {"description", "safe_search", "youtube_restrict", "age_checks", "intercept"}
        )
        youtube = sec.choice("youtube_restrict", ("strict", "moderate", "off"))
        roles[name] = RoleSettings(
            name=name,
            description=sec.text("description") or "",
            safe_search=sec.flag("safe_search", default=False),
            youtube_restrict=None if youtube in (None, "off") else youtube,
            age_checks=sec.flag("age_checks", default=False),
            intercept=sec.flag("intercept", default=True),
        )
    if GUEST not in roles:
        roles[GUEST] = RoleSettings(
            name=GUEST,
            description="unknown clients (built in)",
            safe_search=True,
            youtube_restrict="strict",
            intercept=False,
        )
    return roles


# -- sites and timetables -------------------------------------------------------------------
@dataclass(frozen=True)
class _Sites:
    timetables: dict[str, Timetable]
    sections: list[tuple[str, Section]]  # each site's own (its networks are read later)
    default: str

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.sections]


def _sites(root: Section, base: Path, issues: Issues) -> _Sites:
    """The ``sites`` section (each site's timetable read) and ``default_site``."""
    sites_sec = root.section("sites", required=True)
    timetables: dict[str, Timetable] = {}
    sections: list[tuple[str, Section]] = []
    if sites_sec is not None:
        for name, sec in root.named_sections("sites"):
            sec.check_keys({"timetable", "networks", "description"})
            tt_text = sec.text("timetable", required=True)
            if tt_text:
                tt_path = resolve_path(tt_text, base)
                timetable = load_timetable(
                    tt_path, issues, site=name, display_path=display_path(tt_path, base)
                )
                if timetable is not None:
                    timetables[name] = timetable
            sections.append((name, sec))
        if not sites_sec.keys():
            sites_sec.error(None, "expected at least one site")
    site_names = [name for name, _ in sections]
    default_site = root.text("default_site") or (site_names[0] if site_names else "")
    if site_names and default_site not in site_names:
        root.error(
            "default_site", f"unknown site {default_site!r}; sites are {', '.join(site_names)}"
        )
    return _Sites(timetables, sections, default_site)


# -- identity -------------------------------------------------------------------------------
@dataclass(frozen=True)
class _People:
    resolver: IdentityResolver
    sources: IdentitySources
    # Other names for roles (the MIS's "pupil" for "student"): honoured wherever a role is named.
    aliases: dict[str, str]


class _Networks:
    """The client networks (``identity.networks`` and each site's ``networks``) as they are
    read: the rules naming a role, and the networks of each site."""

    def __init__(self, roles: set[str], aliases: Mapping[str, str], sites: list[str]) -> None:
        self.roles = roles
        self.aliases = aliases
        self.sites = sites
        self.rules: list[NetworkRule] = []
        self.site_networks: list[tuple[IPNetwork, str]] = []

    def add(self, sec: Section, site: str | None) -> None:
        """One network of ``identity.networks`` (``site`` None) or of the site ``site``."""
        sec.check_keys({"cidr", "role", "site", "name"})
        network = sec.parse(
            "cidr",
            lambda v: ipaddress.ip_network(str(v), strict=False),
            "a network such as 10.20.0.0/16",
            required=True,
        )
        role_names, site_names = self.roles, self.sites
        role = sec.text("role")
        if role is not None and role not in role_names:
            role = self.aliases.get(role.lower(), role)
        rule_site = site or sec.text("site")
        if rule_site and rule_site not in site_names:
            sec.error("site", f"unknown site {rule_site!r}; sites are {', '.join(site_names)}")
            rule_site = None
        if role is not None and role not in role_names:
            sec.error("role", f"unknown role {role!r}; roles are {', '.join(sorted(role_names))}")
            return
        if network is None:
            return
        if site:
            self.site_networks.append((network, site))
        if role is None:
            if site is None:
                sec.error(None, "missing required field 'role'")
            return
        label = f"{sec.path} ({sec.file}:{sec.line}) {network} -> {role}"
        self.rules.append(NetworkRule(network, role, rule_site, label))


def _role_aliases(identity: Section, role_names: set[str]) -> dict[str, str]:
    """``identity.role_aliases``: other name (lower case) -> the role it means."""
    aliases: dict[str, str] = {}
    alias_sec = identity.section("role_aliases")
    if alias_sec:
        for key in alias_sec.keys():
            target = alias_sec.text(key)
            if target is None or target not in role_names:
                alias_sec.error(key, f"unknown role {target!r}")
            elif str(key) in role_names and str(key) != target:
                alias_sec.error(key, f"{key!r} is a role of its own; it cannot mean {target!r}")
            else:
                aliases[str(key).lower()] = target
    return aliases


def _people(
    root: Section, base: Path, issues: Issues, role_names: set[str], sites: _Sites
) -> _People:
    """The ``identity`` section and the sites' networks: who a client is."""
    identity = root.section("identity")
    roster: dict[str, RosterEntry] = {}
    roster_source = ""
    aliases: dict[str, str] = {}
    networks = _Networks(role_names, aliases, sites.names)
    if identity is not None:
        identity.check_keys({"networks", "roster", "role_aliases", *IDENTITY_SOURCE_KEYS})
        aliases.update(_role_aliases(identity, role_names))
        for sec in identity.sections("networks"):
            networks.add(sec, None)
        roster_text = identity.text("roster")
        if roster_text:
            roster_path = resolve_path(roster_text, base)
            roster_source = display_path(roster_path, base)
            roster = load_roster(
                roster_path,
                issues,
                roles=role_names,
                aliases=aliases,
                sites=set(sites.names),
                display_path=roster_source,
            )
    for name, sec in sites.sections:
        for net in sec.sections("networks"):
            networks.add(net, name)
    # Who is on which address without a proxy login: RADIUS, sign-in, Negotiate, DHCP.
    sources = read_identity_sources(identity, base=base, roles=role_names, aliases=aliases)
    sign_in = sources.sign_in
    resolver = IdentityResolver(
        networks.rules,
        roster,
        default_site=sites.default,
        site_networks=networks.site_networks,
        roster_source=roster_source,
        sign_in_networks=sign_in.networks if sign_in is not None else (),
    )
    return _People(resolver, sources, aliases)


# -- rules ----------------------------------------------------------------------------------
RULE_KEYS = frozenset(
    {
        "role",
        "roles",
        "group",
        "groups",
        "window",
        "windows",
        "category",
        "categories",
        "action",
        "note",
    }
)


def _rules(
    root: Section,
    role_names: set[str],
    aliases: dict[str, str],
    categories: Mapping[str, CategorySettings],
) -> tuple[dict[RuleKey, RuleRef], int]:
    """The ``rules`` section, one entry per role x group x window kind x category (the first
    rule to name one wins), and how many rules were written."""
    rules: dict[RuleKey, RuleRef] = {}
    category_names = list(categories)
    rule_count = 0
    for index, sec in enumerate(root.sections("rules")):
        sec.check_keys(RULE_KEYS)
        rule_roles = _names(sec, ("role", "roles"), sorted(role_names), "role", aliases)
        groups: list[str | None] = [g.lower() for g, _, _ in _plain(sec, ("group", "groups"))]
        windows = _names(sec, ("window", "windows"), list(WINDOW_KINDS), "window kind")
        cats = _names(sec, ("category", "categories"), category_names, "category")
        action = sec.choice("action", ("allow", "block", "read_only"), required=True)
        for cat in cats:
            if action and action != "block" and categories[cat].locked:
                sec.error("action", f"category {cat!r} is locked: no rule can {action} it")
        if not (rule_roles and windows and cats and action):
            continue
        rule_count += 1
        label = f"rules[{index}] ({sec.file}:{sec.line})"
        if sec.text("note"):
            label += f" {sec.text('note')}"
        ref = RuleRef(Action(action), label)
        for role in rule_roles:
            for group in groups or [None]:
                for window in windows:
                    for cat in cats:
                        rules.setdefault((role, group, window, cat), ref)
    return rules, rule_count


# -- read-only, interception, privacy, logging ----------------------------------------------
def _read_only(root: Section) -> tuple[tuple[str, ...], Action]:
    """``read_only``: the paths blocked on a read-only site, and what a read-only site gets
    when it cannot be intercepted."""
    read_only = root.section("read_only")
    if read_only is None:
        return (), Action.BLOCK
    read_only.check_keys({"blocked_paths", "without_interception"})
    blocked_paths = tuple(t.lower() for t, _, _ in read_only.strings("blocked_paths") if t)
    without = read_only.choice("without_interception", ("allow", "block"), default="block")
    return blocked_paths, Action(without)


def _one_flag(root: Section, section: str, key: str, *, default: bool) -> bool:
    """A section of one flag (``privacy.keep_paths``, ``logging.allowed_categories``)."""
    sec = root.section(section)
    if sec is None:
        return default
    sec.check_keys({key})
    return sec.flag(key, default=default)


def _role_named(roles: Mapping[str, object], aliases: Mapping[str, str]) -> RoleNamed:
    """The role a name means, as :meth:`Policy.role_named` will say once the policy is built."""

    def named(name: str) -> str | None:
        text = name.strip()
        return text if text in roles else aliases.get(text.lower())

    return named


def _plain(sec: Section, keys: tuple[str, str]) -> list[tuple[str, int, str]]:
    single, plural = keys
    if single in sec and plural in sec:
        sec.error(single, f"give either '{single}' or '{plural}', not both")
    return sec.strings(plural) + sec.strings(single)


def _names(
    sec: Section,
    keys: tuple[str, str],
    known: list[str],
    what: str,
    aliases: dict[str, str] | None = None,
) -> list[str]:
    """Names from ``role``/``roles`` (etc.), '*' meaning all (``aliases``: other names for
    known ones); unknown names reported."""
    values = _plain(sec, keys)
    if not values:
        sec.error(None, f"missing required field '{keys[1]}' (a list of {what}s, or '*')")
        return []
    names: list[str] = []
    for value, line, field in values:
        if value == "*":
            names.extend(known)
        elif value in known:
            names.append(value)
        elif aliases and value.lower() in aliases:
            names.append(aliases[value.lower()])
        else:
            sec.issues.add(
                sec.file,
                line,
                field,
                f"unknown {what} {value!r}; expected one of {', '.join(known)} or '*'",
            )
    return list(dict.fromkeys(names))


def identity_sources_of(policy: Policy) -> IdentitySources:
    """The identity sources a policy was loaded with (none for a policy built by hand)."""
    return policy.settings.identity_sources


def check_config(path: Path | str | None = None) -> list[str]:
    """All problems in a config as printable lines (empty when it is valid)."""
    try:
        load_policy(path)
    except ConfigError as exc:
        return [str(issue) for issue in exc.issues]
    return []
