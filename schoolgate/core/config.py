"""Load ``mitm_config.yaml`` (and the files it names) into an immutable :class:`Policy`.

Every problem in every file is collected and reported together (file, line, field, what was
expected); a config with any error yields no policy at all, never a half-loaded one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from schoolgate.core.alert_settings import read_alerts
from schoolgate.core.circumvention_settings import load_circumvention
from schoolgate.core.configfile import (
    ConfigError,
    Issues,
    Section,
    load_yaml,
    load_yaml_value,
    wrap,
)
from schoolgate.core.fediverse_settings import read_fediverse
from schoolgate.core.identity import GUEST, IdentityResolver, NetworkRule, RosterEntry, load_roster
from schoolgate.core.identity_settings import (
    IDENTITY_SOURCE_KEYS,
    IdentitySources,
    read_identity_sources,
)
from schoolgate.core.list_update_settings import read_list_updates
from schoolgate.core.lists import Matcher, parse_entries
from schoolgate.core.liststore import ListFile, Progress, load_store
from schoolgate.core.locations import find_config, find_data_dir
from schoolgate.core.model import WINDOW_KINDS, Action
from schoolgate.core.monitoring_settings import read_monitoring
from schoolgate.core.notification_settings import read_notifications
from schoolgate.core.platforms import read_platforms
from schoolgate.core.policy import (
    AgeRestriction,
    CategorySettings,
    Policy,
    RoleSettings,
    RuleRef,
    Settings,
)
from schoolgate.core.portal_settings import read_portal
from schoolgate.core.report_settings import RoleNamed, read_reports
from schoolgate.core.retention_settings import read_retention
from schoolgate.core.sanctions import load_sanctions
from schoolgate.core.subscriptions import (
    Subscription,
    empty_warning,
    read_subscriptions,
    state_of,
)
from schoolgate.core.timetable import load_timetable
from schoolgate.core.words import read_wording

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# The config a source checkout ships. Which config a command or the gateway uses when none is
# given is :func:`default_config` (schoolgate.core.locations): the environment, the
# system-wide /etc/schoolgate/mitm_config.yaml, then this one in a checkout.
DEFAULT_CONFIG = PROJECT_ROOT / "mitm_config.yaml"
DEFAULT_DATABASE_URL = "sqlite:///{data_dir}/schoolgate.db"
LIST_FORMATS = ("auto", "domains", "hosts", "adblock", "squidguard")

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


def _relative(path_text: str, base: Path) -> Path:
    path = Path(path_text).expanduser()
    return path if path.is_absolute() else base / path


def _display(path: Path, base: Path) -> str:
    """How a file is named in messages: relative to the config's folder when inside it."""
    try:
        return str(path.resolve().relative_to(base))
    except ValueError:
        return str(path)


def load_policy(
    path: Path | str | None = None,
    *,
    data_dir: Path | str | None = None,
    list_progress: Progress | None = None,
) -> Policy:
    """Read and validate the config; raise :class:`ConfigError` with every issue found.

    The category lists are mapped from their compiled store in ``<data_dir>/lists``, compiled
    first when they changed (``list_progress`` is told how that goes)."""
    config_path = Path(path) if path else default_config()
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    issues = Issues()
    shown = str(config_path)
    data = load_yaml(config_path, issues, shown=shown)
    if data is None:
        issues.raise_if_any()
    root = Section(data, file=shown, path="", issues=issues)
    base = config_path.resolve().parent
    policy = _build(root, base, data_dir, config_path, issues, list_progress)
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
    list_progress: Progress | None = None,
):
    root.check_keys(TOP_KEYS)

    # -- database and portal --------------------------------------------------------------
    database = root.section("database")
    url = (database.text("url") if database else None) or DEFAULT_DATABASE_URL
    if database:
        database.check_keys({"url"})
    url = url.replace("{data_dir}", str(data_dir.resolve()))
    if database and "url" in database:
        from schoolgate.storage.db import DatabaseURLError, check_database_url

        try:
            check_database_url(url)
        except DatabaseURLError as exc:
            database.error("url", str(exc))
    portal = root.section("portal")
    portal_settings = read_portal(portal, base)

    # -- roles ------------------------------------------------------------------------------
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
    role_names = set(roles)

    # -- sites and timetables --------------------------------------------------------------
    sites_sec = root.section("sites", required=True)
    timetables = {}
    site_networks: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = []
    network_rules: list[NetworkRule] = []
    site_rule_lists: list[tuple[str, Section]] = []
    if sites_sec is not None:
        for name, sec in root.named_sections("sites"):
            sec.check_keys({"timetable", "networks", "description"})
            tt_text = sec.text("timetable", required=True)
            if tt_text:
                tt_path = _relative(tt_text, base)
                timetable = load_timetable(
                    tt_path, issues, site=name, display_path=_display(tt_path, base)
                )
                if timetable is not None:
                    timetables[name] = timetable
            site_rule_lists.append((name, sec))
        if not sites_sec.keys():
            sites_sec.error(None, "expected at least one site")
    site_names = [name for name, _ in site_rule_lists]
    default_site = root.text("default_site") or (site_names[0] if site_names else "")
    if site_names and default_site not in site_names:
        root.error(
            "default_site", f"unknown site {default_site!r}; sites are {', '.join(site_names)}"
        )

    def network_rule(sec: Section, site: str | None) -> None:
        sec.check_keys({"cidr", "role", "site", "name"})
        network = sec.parse(
            "cidr",
            lambda v: ipaddress.ip_network(str(v), strict=False),
            "a network such as 10.20.0.0/16",
            required=True,
        )
        role = sec.text("role")
        if role is not None and role not in role_names:
            role = aliases.get(role.lower(), role)
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
            site_networks.append((network, site))
        if role is None:
            if site is None:
                sec.error(None, "missing required field 'role'")
            return
        label = f"{sec.path} ({sec.file}:{sec.line}) {network} -> {role}"
        network_rules.append(NetworkRule(network, role, rule_site, label))

    identity = root.section("identity")
    roster: dict[str, RosterEntry] = {}
    roster_source = ""
    # Other names for roles (the MIS's "pupil" for "student"): honoured wherever a role is named.
    aliases: dict[str, str] = {}
    if identity is not None:
        identity.check_keys({"networks", "roster", "role_aliases", *IDENTITY_SOURCE_KEYS})
        alias_sec = identity.section("role_aliases")
        if alias_sec:
            for key in alias_sec.keys():
                target = alias_sec.text(key)
                if target not in role_names:
                    alias_sec.error(key, f"unknown role {target!r}")
                elif str(key) in role_names and str(key) != target:
                    alias_sec.error(key, f"{key!r} is a role of its own; it cannot mean {target!r}")
                else:
                    aliases[str(key).lower()] = target
        for sec in identity.sections("networks"):
            network_rule(sec, None)
        roster_text = identity.text("roster")
        if roster_text:
            roster_path = _relative(roster_text, base)
            roster_source = _display(roster_path, base)
            roster = load_roster(
                roster_path,
                issues,
                roles=role_names,
                aliases=aliases,
                sites=set(site_names),
                display_path=roster_source,
            )
    for name, sec in site_rule_lists:
        for net in sec.sections("networks"):
            network_rule(net, name)
    # Who is on which address without a proxy login: RADIUS, sign-in, Negotiate, DHCP.
    identity_sources = read_identity_sources(identity, base=base, roles=role_names, aliases=aliases)
    sign_in = identity_sources.sign_in
    resolver = IdentityResolver(
        network_rules,
        roster,
        default_site=default_site,
        site_networks=site_networks,
        roster_source=roster_source,
        sign_in_networks=sign_in.networks if sign_in is not None else (),
    )

    # -- categories and lists -----------------------------------------------------------------
    categories: dict[str, CategorySettings] = {}
    subscriptions: list[Subscription] = []
    now = datetime.now(UTC)
    update_shrink = _update_shrink(root)
    normal: list[tuple[str, list]] = []
    locked: list[tuple[str, list]] = []
    for name, sec in root.named_sections("categories", required=True):
        sec.check_keys(
            {
                "description",
                "lists",
                "entries",
                "locked",
                "default",
                "teachers_may_open",
                "format",
                "update_url",
                "update_urls",
                "subscriptions",
            }
        )
        if name == "allowlist":
            sec.error(None, "'allowlist' is reserved; use the top-level allowlist section")
            continue
        parsed = _lists_of(sec, base, issues)
        subs = read_subscriptions(sec, name, base, data_dir, max_shrink=update_shrink)
        for sub in subs:
            if state_of(sub, now).present:
                parsed.append(ListFile(sub.file, sub.list_format, _display(sub.file, base)))
            else:  # a new gateway: the scheduler fetches it at once
                issues.warn(sec.file, sec.line_of("subscriptions"), sec.field("subscriptions"),
                            empty_warning(sub))  # fmt: skip
        subscriptions.extend(subs)
        default = sec.choice("default", ("allow", "block", "read_only"), default="block")
        settings = CategorySettings(
            name=name,
            description=sec.text("description") or "",
            locked=sec.flag("locked", default=False),
            default_action=Action(default),
            teachers_may_open=sec.flag("teachers_may_open", default=False),
            sources=tuple(p.source for p in parsed),
        )
        if settings.locked and settings.teachers_may_open:
            sec.error("teachers_may_open", "a locked category can never be opened")
        categories[name] = settings
        (locked if settings.locked else normal).append((name, parsed))
    allow_lists = []
    allow_sec = root.section("allowlist")
    if allow_sec is not None:
        allow_sec.check_keys({"lists", "entries", "format"})
        allow_lists = _lists_of(allow_sec, base, issues)

    # -- rules ------------------------------------------------------------------------------
    rules: dict[tuple[str, str | None, str, str], RuleRef] = {}
    category_names = list(categories)
    rule_count = 0
    for index, sec in enumerate(root.sections("rules")):
        sec.check_keys(
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
        rule_roles = _names(sec, ("role", "roles"), sorted(role_names), "role", aliases)
        groups = [g.lower() for g, _, _ in _plain(sec, ("group", "groups"))] or [None]
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
            for group in groups:
                for window in windows:
                    for cat in cats:
                        rules.setdefault((role, group, window, cat), ref)

    # -- read-only, age restrictions, interception ---------------------------------------------
    read_only = root.section("read_only")
    blocked_paths: tuple[str, ...] = ()
    without_interception = Action.BLOCK
    if read_only is not None:
        read_only.check_keys({"blocked_paths", "without_interception"})
        blocked_paths = tuple(t.lower() for t, _, _ in read_only.strings("blocked_paths") if t)
        without_interception = Action(
            read_only.choice("without_interception", ("allow", "block"), default="block")
        )

    age_matcher, age_restrictions = _age_restrictions(root, base, issues)

    no_intercept_matcher = None
    interception = root.section("interception")
    if interception is not None:
        interception.check_keys({"no_intercept"})
        ni = interception.section("no_intercept")
        if ni is not None:
            ni.check_keys({"lists", "entries", "format"})
            parsed = _lists_of(ni, base, issues)
            if parsed:
                no_intercept_matcher = _matcher(
                    "no_intercept", [("no_intercept", parsed)], [], data_dir, issues
                )

    privacy = root.section("privacy")
    keep_paths = True
    if privacy is not None:
        privacy.check_keys({"keep_paths"})
        keep_paths = privacy.flag("keep_paths", default=True)
    logging_sec = root.section("logging")
    log_allowed = False
    if logging_sec is not None:
        logging_sec.check_keys({"allowed_categories"})
        log_allowed = logging_sec.flag("allowed_categories", default=False)
    advice = tuple(t for t, _, _ in root.strings("advice")) or DEFAULT_ADVICE
    role_names_and_aliases = {name: name for name in roles} | aliases
    circumvention = load_circumvention(
        root.section("circumvention"), known_roles=role_names_and_aliases
    )
    sanctions = load_sanctions(root.section("bans"), known_roles=role_names_and_aliases)
    wording = read_wording(root, roles=role_names)
    retention = read_retention(root.section("retention"))
    reports = read_reports(root.section("reports"), _role_named(roles, aliases))
    notifications = read_notifications(root.section("notifications"))
    alerts = read_alerts(root.section("alerts"), categories)
    list_updates = read_list_updates(root.section("list_updates"), base, categories)
    monitoring = read_monitoring(root.section("monitoring"), base)
    platforms = read_platforms(root, base, issues, categories)
    fediverse_category = read_fediverse(root.section("fediverse"), categories)

    matcher = _matcher("main", normal, allow_lists, data_dir, issues, list_progress)
    locked_matcher = _locked_matcher(locked, data_dir, issues) if locked else None
    if issues:
        return None
    settings = Settings(
        config_path=str(config_path),
        data_dir=str(data_dir),
        database_url=url,
        portal_host=portal_settings.host,
        keep_paths=keep_paths,
        log_allowed_categories=log_allowed,
        read_only_blocked_paths=blocked_paths,
        read_only_without_interception=without_interception,
        advice=advice,
        circumvention=circumvention,
        sanctions=sanctions,
        wording=wording,
        notifications=notifications,
        alerts=alerts,
        reports=reports,
        retention=retention,
        list_updates=replace(
            list_updates, subscriptions=tuple(subscriptions), data_dir=Path(data_dir)
        ),
        portal=portal_settings,
        identity_sources=identity_sources,
        monitoring=monitoring,
    )
    policy = Policy(
        settings=settings,
        roles=roles,
        resolver=resolver,
        timetables=timetables,
        categories=categories,
        matcher=matcher,
        locked_matcher=locked_matcher,
        rules=rules,
        age_matcher=age_matcher,
        age_restrictions=age_restrictions,
        no_intercept_matcher=no_intercept_matcher,
    )
    policy.role_aliases = dict(aliases)
    policy.rule_count = rule_count
    policy.subscriptions = tuple(subscriptions)
    policy.platforms = platforms
    policy.fediverse_category = fediverse_category
    return policy


def _role_named(roles: Mapping[str, object], aliases: Mapping[str, str]) -> RoleNamed:
    """The role a name means, as :meth:`Policy.role_named` will say once the policy is built."""

    def named(name: str) -> str | None:
        text = name.strip()
        return text if text in roles else aliases.get(text.lower())

    return named


def _locked_matcher(locked: list, data_dir: Path, issues: Issues) -> Matcher | None:
    """The locked categories' store. Their lists (IWF, CTIRU) are confidential: a line the
    parser reports is named by file and line only, never quoted."""
    found = Issues()
    matcher = _matcher("locked", locked, [], data_dir, found)
    for kept, problems in ((issues.items, found.items), (issues.warnings, found.warnings)):
        for issue in problems:
            message = "an entry of this confidential list could not be read (not shown)"
            if issue.line == 0:  # the file itself (missing, unreadable): nothing of its content
                message = issue.message
            kept.append(type(issue)(issue.file, issue.line, issue.field, message))
    return matcher


def _update_shrink(root: Section) -> float:
    """``list_updates.max_shrink`` (checked with its section): every subscription's default."""
    sec = root.data.get("list_updates")
    value = sec.get("max_shrink") if isinstance(sec, dict) else None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1
    return float(value) if ok else 0.2


def _matcher(label, categories, allowlist, data_dir, issues, progress=None) -> Matcher | None:
    """The compiled store of these lists (a plain Matcher when all are inline entries)."""
    try:
        return load_store(
            label, categories, allowlist, data_dir=data_dir, issues=issues, progress=progress
        )
    except OSError as exc:
        issues.add(str(data_dir), None, "", str(exc))
        return None


def _lists_of(sec: Section, base: Path, issues: Issues) -> list:
    """The lists a section names (read when compiled) and its inline entries (read now)."""
    fmt = sec.choice("format", LIST_FORMATS, default="auto")
    parsed: list = []
    for text, line, field in sec.strings("lists"):
        path = _relative(text, base)
        if not path.exists():
            issues.add(sec.file, line, field, f"list file not found: {_display(path, base)}")
            continue
        parsed.append(ListFile(path, fmt or "auto", _display(path, base)))
    entries = [(text, line) for text, line, _ in sec.strings("entries") if text]
    if entries:
        parsed.append(parse_entries(entries, issues, source=sec.file))
    return parsed


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


def _age_restrictions(root: Section, base: Path, issues: Issues):
    value = root.data.get("age_restrictions")
    if value is None:
        return None, {}
    if isinstance(value, str):
        # A file of its own (the shipped blocklists/age_restrictions.yaml): a list at the top.
        path = _relative(value, base)
        shown = _display(path, base)
        loaded = load_yaml_value(path, issues, shown=shown)
        if loaded is None:
            return None, {}
        holder = Section(wrap(loaded, "age_restrictions"), file=shown, path="", issues=issues)
        sections = list(holder.sections("age_restrictions"))
    else:
        sections = list(root.sections("age_restrictions"))
    categories = []
    restrictions: dict[str, AgeRestriction] = {}
    for sec in sections:
        sec.check_keys({"platform", "min_age", "signup", "source", "note"})
        platform = sec.text("platform", required=True)
        min_age = sec.number("min_age", required=True, minimum=0, maximum=25)
        entries = [(text, line) for text, line, _ in sec.strings("signup", required=True) if text]
        if not (platform and min_age is not None and entries):
            continue
        key = f"age:{platform}"
        if key in restrictions:
            sec.error("platform", f"{platform!r} is listed twice")
            continue
        restrictions[key] = AgeRestriction(platform, min_age, f"{sec.file}:{sec.line}")
        categories.append((key, [parse_entries(entries, issues, source=sec.file)]))
    if not categories:
        return None, {}
    return Matcher.build(categories), restrictions


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
