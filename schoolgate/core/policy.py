"""Where the decision is made: may this person reach this URL right now, and why?

:class:`Policy` is immutable and built by :func:`schoolgate.core.config.load_policy`. Its
:meth:`Policy.decide` turns :class:`~schoolgate.core.model.RequestFacts` (and the exceptions in
force, as plain input) into a :class:`~schoolgate.core.model.Decision`. The order of checks is the
policy itself, so it is spelled out once, here:

0. **Sign-in**: a device that must sign in (identity ``sign_in_required``) is refused.
1. **Locked categories** (IWF, CTIRU, ...): nothing can open them, not even an exception.
2. **Age restrictions**: a sign-up page whose minimum age is above the person's age is
   blocked at all times; no rule or exception opens it.
3. **Lists**: the most specific list entry decides the category (a path rule beats a domain
   rule; an allowlist entry at least as specific wins). No category: allowed.
4. **Exceptions** in force for this person and this host or category: allowed.
5. **Rules**: role (or role and group) x window kind x category -> allow, block or read_only.
   No rule: the category's default (block, unless the config says otherwise).

Anything that goes wrong while deciding blocks (fail closed) and says so.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from schoolgate.core.hosts import find_odd_host_char, normalize_host
from schoolgate.core.identity import GUEST, SIGN_IN_REQUIRED, IdentityResolver, minimum_age
from schoolgate.core.model import (
    AccessException,
    Action,
    Decision,
    Identity,
    ListMatch,
    RequestFacts,
    Window,
    new_decision,
)
from schoolgate.core.pages import PageTarget, parse_page
from schoolgate.core.settings import Settings

if TYPE_CHECKING:
    from schoolgate.core.lists import Matcher
    from schoolgate.core.platforms import Platforms
    from schoolgate.core.subscriptions import Subscription
    from schoolgate.core.timetable import Timetable

log = logging.getLogger(__name__)

# What a locked (confidential) list's match shows in place of its entry.
WITHHELD = "(withheld: confidential list)"
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# How far ahead "until when does this block last" looks before saying "no end in sight".
UNTIL_LOOKAHEAD_WINDOWS = 400
# An enum's members read from its class go through EnumType.__getattr__ (about 1,000
# instructions each); the hot path reads them from here.
_ALLOW, _BLOCK, _READ_ONLY = Action.ALLOW, Action.BLOCK, Action.READ_ONLY
_new_object = object.__new__


@dataclass(frozen=True, slots=True)
class RoleSettings:
    name: str
    description: str = ""
    safe_search: bool = False
    youtube_restrict: str | None = None  # "strict", "moderate" or None
    age_checks: bool = False
    intercept: bool = True


@dataclass(frozen=True, slots=True)
class CategorySettings:
    name: str
    description: str = ""
    locked: bool = False
    default_action: Action = Action.BLOCK
    teachers_may_open: bool = False
    sources: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RuleRef:
    action: Action
    label: str  # "rules[2] (mitm_config.yaml:88)"


@dataclass(frozen=True, slots=True)
class AgeRestriction:
    platform: str
    min_age: int
    label: str


class ExceptionSet:
    """The exceptions in force, indexed for the decision (built whenever they change).

    Targets: a host (with its sub-domains; a host of a platform opens the platform's whole
    family), a category, a platform (by its key in the platforms file) or a page
    (``tiktok.com/@bbcnews``: see :mod:`schoolgate.core.pages` for what that opens)."""

    def __init__(self, exceptions: Iterable[AccessException] = ()) -> None:
        self.items = tuple(exceptions)
        self.by_host: dict[str, list[AccessException]] = {}
        self.by_category: dict[str, list[AccessException]] = {}
        self.by_platform: dict[str, list[AccessException]] = {}
        self.pages: list[tuple[PageTarget, AccessException]] = []
        for exc in self.items:
            if exc.target_kind == "host":
                self.by_host.setdefault(normalize_host(exc.target), []).append(exc)
            elif exc.target_kind == "platform":
                self.by_platform.setdefault(exc.target, []).append(exc)
            elif exc.target_kind == "page":
                page = parse_page(exc.target)
                if page is not None:
                    self.pages.append((page, exc))
            else:
                self.by_category.setdefault(exc.target, []).append(exc)
        # Per platforms file: platform key -> exceptions opening its whole family, and ->
        # page approvals on it (which open its static hosts).
        self._families: (
            tuple[Any, dict[str, list[AccessException]], dict[str, list[AccessException]]] | None
        ) = None

    def __len__(self) -> int:
        return len(self.items)

    def _family_index(
        self, platforms: Platforms
    ) -> tuple[dict[str, list[AccessException]], dict[str, list[AccessException]]]:
        cached = self._families
        if cached is not None and cached[0] is platforms:
            return cached[1], cached[2]
        whole: dict[str, list[AccessException]] = {
            key: list(excs) for key, excs in self.by_platform.items()
        }
        static: dict[str, list[AccessException]] = {}
        for host, excs in self.by_host.items():
            found = platforms.lookup(host)
            if found is not None and not found.static:  # a platform's own host: its family
                whole.setdefault(found.platform.key, []).extend(excs)
        for page, exc in self.pages:
            found = platforms.lookup(page.host)
            if found is not None and not found.static:
                static.setdefault(found.platform.key, []).append(exc)
        self._families = (platforms, whole, static)
        return whole, static

    def find(
        self,
        identity: Identity,
        host: str,
        category: str | None,
        at: datetime,
        *,
        facts: RequestFacts | None = None,
        platforms: Platforms | None = None,
    ) -> AccessException | None:
        if not self.items:
            return None
        candidates: list[AccessException] = []
        if self.by_host:
            name = host
            while True:
                candidates.extend(self.by_host.get(name, ()))
                dot = name.find(".")
                if dot < 0:
                    break
                name = name[dot + 1 :]
        if category is not None:
            candidates.extend(self.by_category.get(category, ()))
        if platforms is not None and (self.by_host or self.by_platform or self.pages):
            found = platforms.lookup(host)
            if found is not None:
                whole, static = self._family_index(platforms)
                for platform in found.platforms:
                    candidates.extend(whole.get(platform.key, ()))
                    if found.static:
                        candidates.extend(static.get(platform.key, ()))
        if self.pages and facts is not None:
            for page, exc in self.pages:
                if page.covers(host, facts.path) or page.opened_by_page(
                    host, facts.referer, facts.fetch_dest
                ):
                    candidates.append(exc)
        for exc in candidates:
            if (
                exc.starts <= at
                and (exc.ends is None or at < exc.ends)
                and _in_scope(exc, identity)
            ):
                return exc
        return None


def _in_scope(exc: AccessException, identity: Identity) -> bool:
    scope, value = exc.scope, exc.scope_value
    if scope == "everyone":
        return True
    if scope == "user":
        return identity.user is not None and identity.user == value.lower()
    if scope == "group":
        return identity.group is not None and identity.group.lower() == value.lower()
    if scope == "role":
        return identity.role == value
    if scope == "site":
        return identity.site == value
    if scope == "network":
        if not identity.client_ip:
            return False
        try:
            return ipaddress.ip_address(identity.client_ip) in ipaddress.ip_network(
                value, strict=False
            )
        except ValueError:
            return False
    return False


class Policy:
    """The school's policy, immutable once loaded. See the module docstring for the order."""

    def __init__(
        self,
        *,
        settings: Settings,
        roles: dict[str, RoleSettings],
        resolver: IdentityResolver,
        timetables: dict[str, Timetable],
        categories: dict[str, CategorySettings],
        matcher: Matcher,
        locked_matcher: Matcher | None,
        rules: dict[tuple[str, str | None, str, str], RuleRef],
        age_matcher: Matcher | None,
        age_restrictions: dict[str, AgeRestriction],
        no_intercept_matcher: Matcher | None = None,
    ) -> None:
        self.settings = settings
        self.roles = roles
        self.resolver = resolver
        self.timetables = timetables
        self.categories = categories
        self.matcher = matcher
        self.locked_matcher = locked_matcher
        self.rules = rules
        self.age_matcher = age_matcher
        self.age_restrictions = age_restrictions
        self.no_intercept_matcher = no_intercept_matcher
        self.warnings: tuple[str, ...] = ()  # skipped list lines etc., set by the loader
        # Set by the loader: other names for roles (identity.role_aliases, lower case), and
        # how many rules the config wrote (``rules`` holds them expanded).
        self.role_aliases: dict[str, str] = {}
        self.rule_count: int | None = None
        # Set by the loader: list subscriptions (schoolgate.core.subscriptions), the platform
        # families (schoolgate.core.platforms) and the category of recognised Fediverse servers.
        self.subscriptions: tuple[Subscription, ...] = ()
        self._platforms: Platforms | None = None
        self._family_hosts: frozenset[str] = frozenset()
        self.fediverse_category: str | None = None
        self._roles_with_group_rules = frozenset(role for role, group, _, _ in rules if group)
        self._until_cache: dict[tuple[Any, ...], datetime | None] = {}
        self._ruled_cache: dict[tuple[Any, ...], tuple[RuleRef, str, datetime | None]] = {}

    @property
    def platforms(self) -> Platforms | None:
        return self._platforms

    @platforms.setter
    def platforms(self, platforms: Platforms | None) -> None:
        # The family entries that can give a host a category of this policy: a host under
        # none of them has no family match, which is most hosts, found with a few set lookups.
        self._platforms = platforms
        self._family_hosts = frozenset(
            entry
            for platform in platforms or ()
            if platform.category is not None and platform.category in self.categories
            for entry in platform.family
        )

    # -- helpers the adapters use ---------------------------------------------------------
    @property
    def sites(self) -> list[str]:
        return list(self.timetables)

    def identify(self, client_ip: str | None, user: str | None) -> Identity:
        return self.resolver.resolve(client_ip, user)

    def window(self, site: str, at: datetime) -> Window:
        return self.timetables[site].window_at(at)

    def role(self, name: str) -> RoleSettings:
        return self.roles.get(name) or self.roles[GUEST]

    def role_named(self, name: str | None) -> str | None:
        """The role ``name`` means: a role, or one of ``identity.role_aliases`` (any case);
        None when it is neither."""
        if not name:
            return None
        text = name.strip()
        if text in self.roles:
            return text
        return self.role_aliases.get(text.lower())

    def should_intercept(self, identity: Identity, host: str) -> bool:
        """Whether TLS to ``host`` is opened for this client (the school's CA is deployed)."""
        if not self.role(identity.role).intercept:
            return False
        if self.no_intercept_matcher is not None:
            return self.no_intercept_matcher.lookup(normalize_host(host), None) is None
        return True

    def host_only_reason(self, identity: Identity, facts: RequestFacts) -> str | None:
        """Why the gateway sees only the host name of this request (HTTPS it does not
        decrypt), or None when it sees the whole request."""
        if facts.path is None or facts.scheme != "https":
            return None
        if not self.role(identity.role).intercept:
            role = self.role(identity.role).name
            return f"HTTPS for role {role} is not decrypted (roles.{role}.intercept: false)"
        if self.no_intercept_matcher is not None:
            match = self.no_intercept_matcher.lookup(normalize_host(facts.host), None)
            if match is not None:
                return f"{match.entry} is in interception.no_intercept"
        return None

    def rule_for(self, identity: Identity, window_kind: str, category: str) -> RuleRef:
        if identity.group and identity.role in self._roles_with_group_rules:
            ref = self.rules.get((identity.role, identity.group.lower(), window_kind, category))
            if ref is not None:
                return ref
        ref = self.rules.get((identity.role, None, window_kind, category))
        if ref is not None:
            return ref
        settings = self.categories.get(category)
        default = settings.default_action if settings else _BLOCK
        return RuleRef(
            default,
            f"no rule for {identity.role} in {window_kind}: "
            f"category {category} default ({default})",
        )

    # -- the decision ---------------------------------------------------------------------
    def decide(
        self,
        facts: RequestFacts,
        exceptions: ExceptionSet | Sequence[AccessException] | None = None,
        *,
        identity: Identity | None = None,
        detected: Mapping[str, str] | None = None,
    ) -> Decision:
        """Decide one request; never raises (a failure blocks and says so).

        ``identity`` overrides the resolution from client IP and user (``explain --role``).
        ``detected``: hosts recognised from their traffic (a Fediverse server) -> category,
        applied to hosts no list names.
        """
        # One function, not a wrapper and a worker: a Python call costs as much as a list
        # lookup's prefix search, and this runs for every request.
        try:
            if exceptions is not None and not isinstance(exceptions, ExceptionSet):
                exceptions = ExceptionSet(exceptions)
            if identity is None:
                if facts.user is None:  # the address decides while no bindings are consulted
                    identity = self.resolver.by_address.get(facts.client_ip)
                    if identity is None:
                        identity = self.resolver.resolve_address(facts.client_ip)
                else:
                    identity = self.resolver.resolve(facts.client_ip, facts.user)
            host = facts.host
            if find_odd_host_char(host) is not None or (host and host[-1] == "."):
                host = normalize_host(host)  # most hosts are normal: this saves the call
            path = facts.path
            at = facts.at
            timetable = self.timetables[identity.site]
            zone, start_at, end_at, window = timetable.current  # window_at's answer, inline
            if at.tzinfo is not zone or not start_at <= at < end_at:
                window = timetable.window_at(at)

            # 0. A device that must sign in gets nothing until it has (never the guest policy).
            if identity.source == SIGN_IN_REQUIRED:
                return new_decision(
                    _BLOCK,
                    identity,
                    window,
                    None,
                    "This device is not signed in. Sign in to the school's network first.",
                    rule="sign-in required",
                )

            # 1. Locked categories come first: nothing opens them.
            if self.locked_matcher is not None:
                locked = self.locked_matcher.lookup(host, path)
                if locked is not None:
                    # The IWF and CTIRU lists are confidential: which entry matched is never shown
                    # (explain, the decision log, the portal), only the category.
                    locked = ListMatch(
                        locked.category,
                        WITHHELD,
                        f"{locked.category} lists (confidential)",
                        "withheld",
                    )
                    return new_decision(
                        _BLOCK,
                        identity,
                        window,
                        locked.category,
                        f"{locked.category} is a locked category: it is blocked for everyone, "
                        "at all times, and no exception can open it.",
                        rule=f"locked category {locked.category}",
                        match=locked,
                    )

            # 2. Age restrictions on sign-up pages.
            if self.age_matcher is not None and self.role(identity.role).age_checks:
                signup = self.age_matcher.lookup(host, path)
                if signup is not None:
                    restriction = self.age_restrictions[signup.category]
                    age = minimum_age(identity, at.date())
                    if age is None or age < restriction.min_age:
                        return new_decision(
                            _BLOCK,
                            identity,
                            window,
                            "age_restricted",
                            f"Signing up to {restriction.platform} needs you to be at least "
                            f"{restriction.min_age}"
                            + (
                                " and your age is not known to the school's records."
                                if age is None
                                else "."
                            ),
                            rule=f"age restriction {restriction.platform} {restriction.min_age}+ "
                            f"({restriction.label})",
                            match=signup,
                        )

            # 3. Lists, then the platform families (a host of a platform's family that its lists
            # miss is still the platform's), then hosts recognised from their traffic.
            match = self.matcher.lookup(host, path)
            if match is None and self._family_hosts:
                match = self._family_match(host)
            if match is None and detected:
                match = _detected_match(host, detected)
            if match is None:
                # Most requests: in no list. Built here, as new_decision would build it (the
                # call costs as much as the rest of building it).
                decision = _new_object(Decision)
                decision.action = _ALLOW
                decision.identity = identity
                decision.window = window
                decision.category = None
                decision.reason = f"{host} is in no filtered category."
                decision.rule = "uncategorised"
                decision.match = None
                decision.exception_id = None
                decision.until = None
                decision.error = None
                return decision
            category = match.category
            if category == "allowlist":
                reason = f"{host} is on the allowlist ({match.entry})."
                return new_decision(
                    _ALLOW, identity, window, None, reason, f"allowlist {match.source}", match
                )

            # 4. Exceptions in force.
            if exceptions is not None:
                exc = exceptions.find(
                    identity, host, category, at, facts=facts, platforms=self.platforms
                )
                if exc is not None:
                    return new_decision(
                        _ALLOW,
                        identity,
                        window,
                        category,
                        f"{category} is open by {exc.describe()}"
                        + (f": {exc.reason}" if exc.reason else "."),
                        rule=exc.describe(),
                        match=match,
                        exception_id=exc.id,
                        until=exc.ends,
                    )

            # 5. Rules: the same answer for every request of this role (and group) and
            # category in this window, worked out once.
            key = (
                identity.site,
                window.start,
                window.kind,
                window.name,
                identity.role,
                identity.group,
                category,
            )
            ruled = self._ruled_cache.get(key) or self._ruled(key, identity, window, category)
            ref, reason, until = ruled
            if ref.action is _ALLOW:
                return new_decision(_ALLOW, identity, window, category, reason, ref.label, match)
            if ref.action is _READ_ONLY:
                blocked_why = self._read_only_refusal(facts)
                if blocked_why is None:
                    return new_decision(
                        _ALLOW,
                        identity,
                        window,
                        category,
                        f"{category} is read-only for {identity.role} in {window.kind}: "
                        "reading is allowed.",
                        rule=ref.label,
                        match=match,
                    )
                until = self._until(identity, window, category, _READ_ONLY)
                return new_decision(
                    _BLOCK,
                    identity,
                    window,
                    category,
                    f"{category} is read-only for {identity.role} in {window.kind}: {blocked_why}.",
                    rule=ref.label,
                    match=match,
                    until=until,
                )
            return new_decision(
                _BLOCK, identity, window, category, reason, ref.label, match, None, until
            )
        except Exception as exc:  # noqa: BLE001 - fail closed on anything
            return _failed(facts, exc)

    def _family_match(self, host: str) -> ListMatch | None:
        hosts = self._family_hosts
        name = host
        while name not in hosts:
            dot = name.find(".")
            if dot < 0:
                return None
            name = name[dot + 1 :]
        found = self._platforms.lookup(host) if self._platforms is not None else None
        if found is None:
            return None
        platform = found.platform
        if platform.category is None or platform.category not in self.categories:
            return None
        return ListMatch(
            platform.category, found.entry, f"{platform.name} family ({platform.source})", "family"
        )

    def _ruled(
        self, key: tuple[Any, ...], identity: Identity, window: Window, category: str
    ) -> tuple[RuleRef, str, datetime | None]:
        """The rule for this role (and group), window and category, with the reason an allow
        or a block gives and until when a block lasts (read-only: no reason, no end; the
        request decides), remembered under ``key`` (see :meth:`decide`)."""
        ref = self.rule_for(identity, window.kind, category)
        found: tuple[RuleRef, str, datetime | None]
        if ref.action is _ALLOW:
            found = (ref, f"{category} is allowed for {identity.role} in {window.kind}.", None)
        elif ref.action is _BLOCK:
            found = (
                ref,
                f"{category} is blocked for {identity.role} in {window.kind} ({window.name}).",
                self._until(identity, window, category, _BLOCK),
            )
        else:
            found = (ref, "", None)
        if len(self._ruled_cache) > 50_000:
            self._ruled_cache.clear()
        self._ruled_cache[key] = found
        return found

    def _read_only_refusal(self, facts: RequestFacts) -> str | None:
        """Why a request to a read-only site is not reading, or None if it is."""
        if facts.method is None or facts.path is None:
            if self.settings.read_only_without_interception is _ALLOW:
                return None
            return "the connection is not inspected, so reading cannot be told from posting"
        if facts.method.upper() not in READ_METHODS:
            return f"{facts.method.upper()} requests (posting, editing, signing in) are blocked"
        lowered = unquote(facts.path).lower()  # "Special%3AUserLogin" is Special:UserLogin
        for marker in self.settings.read_only_blocked_paths:
            if marker in lowered:
                return f"this page ({marker}) is for signing in, signing up or editing"
        return None

    def _until(
        self, identity: Identity, window: Window, category: str, action: Action
    ) -> datetime | None:
        """When the rule stops giving ``action`` for this role/group and category."""
        key = (identity.site, window.start, identity.role, identity.group, category, action)
        if key in self._until_cache:
            return self._until_cache[key]
        until = None
        windows = self.timetables[identity.site].iter_windows(window.start)
        for count, later in enumerate(windows):
            if count >= UNTIL_LOOKAHEAD_WINDOWS:
                break
            if self.rule_for(identity, later.kind, category).action is not action:
                until = later.start
                break
        if len(self._until_cache) > 50_000:
            self._until_cache.clear()
        self._until_cache[key] = until
        return until


def _failed(facts: RequestFacts, exc: Exception) -> Decision:
    log.exception("policy evaluation failed for %s", facts.host)
    identity = Identity(role=GUEST, site="", user=facts.user, client_ip=facts.client_ip)
    return Decision(
        action=_BLOCK,
        identity=identity,
        window=None,
        category=None,
        reason="The filter could not evaluate its policy, so access is blocked "
        "for safety. IT Support have been told.",
        rule="fail closed",
        error=f"{type(exc).__name__}: {exc}",
    )


def _detected_match(host: str, detected: Mapping[str, str]) -> ListMatch | None:
    """The category of ``host`` (or a parent of it) recognised from its traffic."""
    name = host
    while True:
        category = detected.get(name)
        if category is not None:
            return ListMatch(category, name, "recognised from its traffic", "detected")
        dot = name.find(".")
        if dot < 0:
            return None
        name = name[dot + 1 :]


def describe_match(match: ListMatch | None) -> str:
    return f"{match.entry} ({match.source})" if match else "none"
