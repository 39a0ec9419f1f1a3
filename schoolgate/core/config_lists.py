"""The config's lists: the ``categories`` (with their subscriptions), the ``allowlist``,
``interception.no_intercept`` and ``age_restrictions``, read into what the policy matches
against (:mod:`schoolgate.core.config` reads the rest and builds the policy).

The lists a section names are read when they are compiled into their store (in
``<data_dir>/lists``, :mod:`schoolgate.core.liststore`); inline entries are read at once. Every
problem goes into the :class:`~schoolgate.core.configfile.Issues` with file, line and field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from schoolgate.core.configfile import (
    Issues,
    Section,
    display_path,
    load_yaml_value,
    resolve_path,
    wrap,
)
from schoolgate.core.lists import Matcher, ParsedList, parse_entries
from schoolgate.core.liststore import ListFile, ListInput, load_store
from schoolgate.core.liststore_write import Progress
from schoolgate.core.model import Action
from schoolgate.core.policy import AgeRestriction, CategorySettings
from schoolgate.core.subscriptions import (
    Subscription,
    empty_warning,
    read_subscriptions,
    state_of,
)

LIST_FORMATS = ("auto", "domains", "hosts", "adblock", "squidguard")
CATEGORY_KEYS = frozenset(
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
Groups = list[tuple[str, list[ListInput]]]  # category -> its lists


@dataclass
class CategoryLists:
    """The ``categories`` section as read: each category's settings, its lists and the
    subscriptions that feed them."""

    categories: dict[str, CategorySettings] = field(default_factory=dict)
    subscriptions: list[Subscription] = field(default_factory=list)
    normal: Groups = field(default_factory=list)
    locked: Groups = field(default_factory=list)  # the locked categories' (kept apart)


def read_categories(root: Section, base: Path, data_dir: Path, issues: Issues) -> CategoryLists:
    """The ``categories`` section: each category's settings, lists and subscriptions."""
    found = CategoryLists()
    now = datetime.now(UTC)
    update_shrink = _update_shrink(root)
    for name, sec in root.named_sections("categories", required=True):
        sec.check_keys(CATEGORY_KEYS)
        if name == "allowlist":
            sec.error(None, "'allowlist' is reserved; use the top-level allowlist section")
            continue
        parsed = lists_of(sec, base, issues)
        subs = read_subscriptions(sec, name, base, data_dir, max_shrink=update_shrink)
        for sub in subs:
            if state_of(sub, now).present:
                parsed.append(ListFile(sub.file, sub.list_format, display_path(sub.file, base)))
            else:  # a new gateway: the scheduler fetches it at once
                issues.warn(sec.file, sec.line_of("subscriptions"), sec.field("subscriptions"),
                            empty_warning(sub))  # fmt: skip
        found.subscriptions.extend(subs)
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
        found.categories[name] = settings
        (found.locked if settings.locked else found.normal).append((name, parsed))
    return found


def read_allowlist(root: Section, base: Path, issues: Issues) -> list[ListInput]:
    """The ``allowlist`` section's lists and entries."""
    allow_sec = root.section("allowlist")
    if allow_sec is None:
        return []
    allow_sec.check_keys({"lists", "entries", "format"})
    return lists_of(allow_sec, base, issues)


def read_no_intercept(root: Section, base: Path, data_dir: Path, issues: Issues) -> Matcher | None:
    """``interception.no_intercept``: the sites never intercepted, as a matcher."""
    interception = root.section("interception")
    if interception is None:
        return None
    interception.check_keys({"no_intercept"})
    ni = interception.section("no_intercept")
    if ni is None:
        return None
    ni.check_keys({"lists", "entries", "format"})
    parsed = lists_of(ni, base, issues)
    if not parsed:
        return None
    return compile_lists("no_intercept", [("no_intercept", parsed)], [], data_dir, issues)


def read_age_restrictions(
    root: Section, base: Path, issues: Issues
) -> tuple[Matcher | None, dict[str, AgeRestriction]]:
    """``age_restrictions`` (inline, or the name of a file holding the list): the sign-up pages
    of each platform as a matcher, and the platforms' minimum ages by category key."""
    value = root.data.get("age_restrictions")
    if value is None:
        return None, {}
    if isinstance(value, str):
        # A file of its own (the shipped blocklists/age_restrictions.yaml): a list at the top.
        path = resolve_path(value, base)
        shown = display_path(path, base)
        loaded = load_yaml_value(path, issues, shown=shown)
        if loaded is None:
            return None, {}
        holder = Section(wrap(loaded, "age_restrictions"), file=shown, path="", issues=issues)
        sections = list(holder.sections("age_restrictions"))
    else:
        sections = list(root.sections("age_restrictions"))
    categories: list[tuple[str, list[ParsedList]]] = []
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


def compile_lists(
    label: str,
    categories: Groups,
    allowlist: Sequence[ListInput],
    data_dir: Path,
    issues: Issues,
    progress: Progress | None = None,
) -> Matcher | None:
    """The compiled store of these lists (a plain Matcher when all are inline entries)."""
    try:
        return load_store(
            label, categories, allowlist, data_dir=data_dir, issues=issues, progress=progress
        )
    except OSError as exc:
        issues.add(str(data_dir), None, "", str(exc))
        return None


def compile_locked(locked: Groups, data_dir: Path, issues: Issues) -> Matcher | None:
    """The locked categories' store. Their lists (IWF, CTIRU) are confidential: a line the
    parser reports is named by file and line only, never quoted."""
    found = Issues()
    matcher = compile_lists("locked", locked, [], data_dir, found)
    for kept, problems in ((issues.items, found.items), (issues.warnings, found.warnings)):
        for issue in problems:
            message = "an entry of this confidential list could not be read (not shown)"
            if issue.line == 0:  # the file itself (missing, unreadable): nothing of its content
                message = issue.message
            kept.append(type(issue)(issue.file, issue.line, issue.field, message))
    return matcher


def lists_of(sec: Section, base: Path, issues: Issues) -> list[ListInput]:
    """The lists a section names (read when compiled) and its inline entries (read now)."""
    fmt = sec.choice("format", LIST_FORMATS, default="auto")
    parsed: list[ListInput] = []
    for text, line, field_name in sec.strings("lists"):
        path = resolve_path(text, base)
        if not path.exists():
            issues.add(
                sec.file, line, field_name, f"list file not found: {display_path(path, base)}"
            )
            continue
        parsed.append(ListFile(path, fmt, display_path(path, base)))
    entries = [(text, line) for text, line, _ in sec.strings("entries") if text]
    if entries:
        parsed.append(parse_entries(entries, issues, source=sec.file))
    return parsed


def _update_shrink(root: Section) -> float:
    """``list_updates.max_shrink`` (checked with its section): every subscription's default."""
    sec = root.data.get("list_updates")
    value = sec.get("max_shrink") if isinstance(sec, dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value)
    return 0.2
