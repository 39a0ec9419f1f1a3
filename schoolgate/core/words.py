"""Words for people: school times, windows, roles and decisions as a pupil or a member of staff
reads them.

Everything a person reads (the block page, the suspension and warning pages, the portal,
``schoolgate explain``, ``allow list``, ``bans list``) says "lesson (P2)", "before school",
"until 11:00 today" or "until Wednesday 9 December, 15:10", in the school's time zone: never an
internal word (``before_school``) or an ISO timestamp. Machine outputs (``--json``, the
decision log) keep the internal names and ISO times.

The school may use its own words for its roles and window kinds (``words`` in the config:
``{roles: {student: pupils}, windows: {registration: tutor time}}``), read by
:func:`read_wording` into a frozen :class:`Wording`.

Pure: nothing here knows of mitmproxy, the database or the web.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, tzinfo
from types import MappingProxyType
from typing import Any

from schoolgate.core.configfile import Section
from schoolgate.core.model import WINDOW_KINDS, AccessException, Decision, Window

# What each window kind is called, and how a sentence says "in that window".
WINDOW_LABELS: Mapping[str, str] = MappingProxyType(
    {
        "lesson": "lesson",
        "registration": "registration",
        "break": "break",
        "lunch": "lunchtime",
        "before_school": "before school",
        "after_school": "after school",
        "closed": "school closed",
    }
)
WINDOW_DURING: Mapping[str, str] = MappingProxyType(
    {
        "lesson": "during lessons",
        "registration": "during registration",
        "break": "at break",
        "lunch": "at lunchtime",
        "before_school": "before school",
        "after_school": "after school",
        "closed": "when school is closed",
    }
)
# The people of a role, as a sentence names them ("blocked for pupils").
ROLE_PEOPLE: Mapping[str, str] = MappingProxyType(
    {"student": "pupils", "staff": "staff", "guest": "guests"}
)
MAX_WORDS = 60  # characters in a configured word
# Far enough ahead that the hour no longer matters to the reader (another year only).
FAR_AHEAD = timedelta(days=60)

AGE_CATEGORY = "age_restricted"
LOCKED_RULE_PREFIX = "locked category "
READ_ONLY_MARK = " is read-only for "


def plain(name: str | None) -> str:
    """An internal name as words: ``social_media`` -> ``social media``."""
    return " ".join((name or "").replace("_", " ").split())


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _verb(noun: str) -> str:
    """ "is" or "are" for a category's name: "social media is", "blogs are"."""
    last = noun.rsplit(" ", 1)[-1].lower()
    plural = last.endswith("s") and not last.endswith(("ss", "us", "is", "news"))
    return "are" if plural else "is"


@dataclass(frozen=True)
class Wording:
    """The school's words for its roles and window kinds (defaults for what it leaves out)."""

    school_name: str = ""
    roles: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    windows: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def people(self, role: str | None) -> str:
        """``student`` -> ``pupils``; a role without words of its own is its name."""
        if not role:
            return "everyone"
        return self.roles.get(role) or ROLE_PEOPLE.get(role) or plain(role)

    def kind(self, kind: str | None) -> str:
        """A window kind's name: ``before_school`` -> ``before school``."""
        if not kind:
            return ""
        return self.windows.get(kind) or WINDOW_LABELS.get(kind) or plain(kind)

    def during(self, kind: str | None) -> str:
        """How a sentence says "in this kind of window": ``during lessons``, ``at break``."""
        if not kind:
            return ""
        own = self.windows.get(kind)
        if own:
            return f"during {own}"
        return WINDOW_DURING.get(kind) or f"during {plain(kind)}"

    def window_name(self, window: Window | None) -> str:
        """The window's own name when it says more than its kind: ``P2``; "" for ``Break``."""
        if window is None:
            return ""
        name = " ".join(window.name.split())
        label = self.kind(window.kind).casefold()
        folded = name.casefold()
        if not name or folded in (label, plain(window.kind).casefold()) or folded in label:
            return ""
        return name

    def window(self, window: Window | None) -> str:
        """``lesson (P2)``, ``before school``, ``school closed (half term)``."""
        if window is None:
            return ""
        name = self.window_name(window)
        kind = self.kind(window.kind)
        return f"{kind} ({name})" if name else kind


DEFAULT_WORDING = Wording()


def wording_of(policy: Any) -> Wording:
    """The policy's wording (``settings.wording``), or the defaults."""
    settings = getattr(policy, "settings", None)
    found = getattr(settings, "wording", None)
    return found if isinstance(found, Wording) else DEFAULT_WORDING


def read_wording(root: Section, *, roles: Iterable[str]) -> Wording:
    """The config's ``school_name`` and ``words`` section (``{roles: {ROLE: WORDS}, windows:
    {KIND: WORDS}}``); problems are reported into ``root``'s issues with file, line and field."""
    name = root.text("school_name") or ""
    if len(name) > 200:
        root.error("school_name", f"expected at most 200 characters, got {len(name)}")
        name = ""
    sec = root.section("words")
    if sec is None:
        return Wording(school_name=name)
    sec.check_keys({"roles", "windows"})
    role_words = _words_map(sec.section("roles"), sorted(roles), "role")
    window_words = _words_map(sec.section("windows"), list(WINDOW_KINDS), "window kind")
    return Wording(
        school_name=name,
        roles=MappingProxyType(role_words),
        windows=MappingProxyType(window_words),
    )


def _words_map(sec: Section | None, known: list[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    if sec is None:
        return out
    for key in sec.keys():
        if key not in known:
            sec.error(key, f"unknown {what} {key!r}; expected one of {', '.join(known)}")
            continue
        text = sec.text(key)
        if text is None:
            continue
        text = " ".join(text.split())
        if not text:
            sec.error(key, "expected words, got nothing")
        elif len(text) > MAX_WORDS:
            sec.error(key, f"expected at most {MAX_WORDS} characters, got {len(text)}")
        else:
            out[key] = text
    return out


# -- times ---------------------------------------------------------------------------------------


def _local(value: datetime, tz: tzinfo | None) -> datetime:
    return value.astimezone(tz) if tz is not None else value


def clock(value: datetime, *, seconds: bool = False) -> str:
    """``15:10`` (``15:10:05``)."""
    return f"{value:%H:%M:%S}" if seconds else f"{value:%H:%M}"


def day(value: date, *, year: bool = False, weekday: bool = True) -> str:
    """``Wednesday 9 December`` (``Wednesday 9 December 2026``; ``9 December 2027``)."""
    text = f"{value.day} {value:%B}"
    if weekday:
        text = f"{value:%A} {text}"
    return f"{text} {value.year}" if year else text


def absolute(value: datetime, tz: tzinfo | None = None, *, seconds: bool = False) -> str:
    """``15:10 on Wednesday 9 December 2026``: for what is read long after it was written."""
    local = _local(value, tz)
    return f"{clock(local, seconds=seconds)} on {day(local.date(), year=True)}"


def until(value: datetime | None, now: datetime, tz: tzinfo | None = None) -> str:
    """How long something lasts, from ``now``, in ``tz``: ``until 11:00 today``, ``until 15:10
    tomorrow``, ``until Wednesday 9 December, 15:10``, ``until 9 December 2027`` (another
    year, far ahead); ``until midnight tonight``, ``until the end of Friday 11 December`` for
    an end at midnight. None: ``with no end set``; already past: ``for now``."""
    if value is None:
        return "with no end set"
    end, now = _local(value, tz), _local(now, tz)
    if end <= now:
        return "for now"
    midnight = end.time() == time(0, 0)
    last = (end - timedelta(days=1)).date() if midnight else end.date()
    days = (last - now.date()).days
    if midnight:
        if days == 0:
            return "until midnight tonight"
        if days == 1:
            return "until the end of tomorrow"
        if last.year == now.year:
            return f"until the end of {day(last)}"
        return f"until the end of {day(last, year=True, weekday=end - now <= FAR_AHEAD)}"
    if days == 0:
        return f"until {clock(end)} today"
    if days == 1:
        return f"until {clock(end)} tomorrow"
    if end.year == now.year:
        return f"until {day(end.date())}, {clock(end)}"
    if end - now > FAR_AHEAD:
        return f"until {day(end.date(), year=True, weekday=False)}"
    return f"until {day(end.date(), year=True)}, {clock(end)}"


def moment(
    value: datetime | None, now: datetime, tz: tzinfo | None = None, *, seconds: bool = False
) -> str:
    """When something happened (or will): ``today at 15:10``, ``yesterday at 09:05``,
    ``Wednesday 9 December at 15:10``, ``9 December 2025 at 15:10``. None: ``no end date``."""
    if value is None:
        return "no end date"
    at, now = _local(value, tz), _local(now, tz)
    days = (at.date() - now.date()).days
    hour = clock(at, seconds=seconds)
    if days == 0:
        return f"today at {hour}"
    if days == -1:
        return f"yesterday at {hour}"
    if days == 1:
        return f"tomorrow at {hour}"
    if at.year == now.year:
        return f"{day(at.date())} at {hour}"
    return f"{day(at.date(), year=True, weekday=False)} at {hour}"


def span(start: datetime, end: datetime, tz: tzinfo | None = None) -> str:
    """``10:00 to 11:00 on Tuesday 24 November 2026`` (or two full times across days)."""
    first, last = _local(start, tz), _local(end, tz)
    if first.date() == last.date() or (
        last.time() == time(0, 0) and last.date() - first.date() == timedelta(days=1)
    ):
        end_clock = "midnight" if last.date() != first.date() else clock(last)
        return f"{clock(first)} to {end_clock} on {day(first.date(), year=True)}"
    return f"{absolute(first)} to {absolute(last)}"


# -- decisions -----------------------------------------------------------------------------------


def category_words(name: str | None) -> str:
    return plain(name) or "uncategorised"


# What each kind of exception is, for people.
EXCEPTION_KINDS: Mapping[str, str] = MappingProxyType(
    {"curriculum": "a teacher's class override", "unlist": "a correction of the list"}
)


def exception_kind(kind: str) -> str:
    return EXCEPTION_KINDS.get(kind, "an exception")


def _open_by(decision: Decision) -> str:
    kind = decision.rule.split(" #", 1)[0].strip()  # "curriculum #4: ..." (AccessException)
    return f"{exception_kind(kind)} (#{decision.exception_id})"


def decision_sentence(
    decision: Decision,
    *,
    now: datetime,
    tz: tzinfo | None = None,
    wording: Wording = DEFAULT_WORDING,
    relative: bool = True,
) -> str:
    """One sentence for a person: ``Social media is blocked for pupils during lessons (P2,
    until 11:00 today).`` ``relative``: times from ``now`` ("today"); otherwise full dates
    (for a decision at another time than now, as ``explain --at`` asks)."""

    def ends(value: datetime | None) -> str:
        if value is None:
            return ""
        if relative:
            return until(value, now, tz)
        return f"until {absolute(value, tz)}"

    if decision.error:
        return "The filter could not check this page, so it is blocked for safety."
    category = decision.category
    if category is None:
        return decision.reason  # uncategorised or on the allowlist: already plain
    if category == AGE_CATEGORY:
        return decision.reason
    cat = category_words(category)
    verb = _verb(cat)
    if decision.rule.startswith(LOCKED_RULE_PREFIX):
        return f"Sites in the {cat} category are blocked for everyone, at all times."
    if decision.exception_id is not None:
        lasts = ends(decision.until) or "with no end set"
        return f"{_capital(cat)} {verb} open {lasts}, by {_open_by(decision)}."
    window = decision.window
    people = wording.people(decision.identity.role)
    during = wording.during(window.kind) if window else ""
    details = [wording.window_name(window)] if window else []
    if decision.allowed:
        if READ_ONLY_MARK in decision.reason:
            head = f"{_capital(cat)} {verb} read-only for {people}"
            tail = ": reading is allowed."
        else:
            head = f"{_capital(cat)} {verb} allowed for {people}"
            tail = "."
        extra = f" ({', '.join(d for d in details if d)})" if any(details) else ""
        return f"{head} {during}{extra}{tail}".replace("  ", " ")
    if decision.until is None:
        when = "at all times"
        details = []
    else:
        when = during
        details.append(ends(decision.until))
    extra = f" ({', '.join(d for d in details if d)})" if any(details) else ""
    if READ_ONLY_MARK in decision.reason:
        why = decision.reason.split(": ", 1)[1].rstrip(".") if ": " in decision.reason else ""
        reason = f": {why}" if why else ": you can read it, but not sign in, post or edit"
        return f"{_capital(cat)} {verb} read-only for {people} {when}{extra}{reason}."
    return f"{_capital(cat)} {verb} blocked for {people} {when}{extra}."


def exception_words(
    exc: AccessException,
    *,
    now: datetime,
    tz: tzinfo | None = None,
    wording: Wording = DEFAULT_WORDING,
) -> str:
    """``social media open for group 9B until 15:10 today, a teacher's class override by
    mrs.khan``: an exception as IT Support read it in a list."""
    what = f"{exc.target} (site)" if exc.target_kind == "host" else category_words(exc.target)
    if exc.scope == "everyone":
        who = "everyone"
    elif exc.scope == "role":
        who = f"{wording.people(exc.scope_value)} (role {exc.scope_value})"
    else:
        who = f"{exc.scope} {exc.scope_value}"
    if exc.ends is None:
        lasts = "with no end date"
    elif exc.ends <= now:
        lasts = f"ended {moment(exc.ends, now, tz)}"
    else:
        lasts = until(exc.ends, now, tz)
    if exc.starts > now:
        lasts = f"from {moment(exc.starts, now, tz)}, {lasts}"
    by = f" by {exc.created_by}" if exc.created_by else ""
    return f"{what} open for {who} {lasts}; {exception_kind(exc.kind)}{by}"


__all__ = [
    "DEFAULT_WORDING",
    "Wording",
    "absolute",
    "category_words",
    "clock",
    "day",
    "decision_sentence",
    "exception_words",
    "moment",
    "plain",
    "read_wording",
    "span",
    "until",
    "wording_of",
]
