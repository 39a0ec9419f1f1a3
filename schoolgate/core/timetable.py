"""A site's timetable: which window (lesson, break, lunch, closed...) applies at any instant.

A timetable file (``schedules/*.yaml``) gives a time zone, the periods of each weekday, the
term dates with their half terms, INSET days and other closures. See ``schedules/default.yaml``
for the format, documented for the network manager who copies and edits it.

How a day is divided into windows:

* A **school day** (in term, not half term, INSET day or closure, and its weekday has periods)
  is covered without gaps from local 00:00 to 24:00: ``before_school`` from 00:00 (or from the
  end of the previous day's window that ran past midnight) to the first period; the periods;
  any gap between two periods is a "changeover" with the kind of the NEXT period (fail closed:
  the minutes before a lesson count as the lesson); ``after_school`` from the last period to
  24:00, or to the start of the day's last period when that one runs past midnight.
* A period whose end is before its start ends the next day (boarding houses, evening study);
  only the last period of a day may do so, and it takes precedence over the next day's
  ``before_school`` (or ``closed``) window until it ends.
* Any other day is one ``closed`` window from 00:00 to 24:00 named for the reason: "weekend",
  "half term", "holidays", "INSET day" or the closure's name.

Every window's ``start`` and ``end`` are aware datetimes in the timetable's zone; the instants
are right on the days clocks change (a closed day can be 23 or 25 hours long). Note that
Python subtracts and compares two datetimes that share a tzinfo by their wall-clock times:
to measure a window, use ``end.timestamp() - start.timestamp()``.
"""

from __future__ import annotations

import bisect
import calendar
import difflib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from schoolgate.core.configfile import Issues, Section, load_yaml
from schoolgate.core.model import WINDOW_KINDS, Window
from schoolgate.core.schoolyear import load_days_off, load_terms

__all__ = ["Timetable", "load_timetable", "WEEKDAYS"]

WEEKDAYS: tuple[str, ...] = tuple(name.lower() for name in calendar.day_name)  # monday first
DAY_MINUTES = 24 * 60
_TOP_KEYS = frozenset(
    {"name", "description", "timezone", "week", "terms", "inset_days", "closures"}
)
_PERIOD_KEYS = frozenset({"name", "kind", "start", "end"})
_TIME_RE = re.compile(r"^(\d{1,2}):(\d{2})$")
_MAX_CACHED_DAYS = 1024
_MARGIN = 3 * 3600  # seconds; more than any clock change
# Timetable.current while no window is current: a zone no datetime has, so it never answers.
_NO_ZONE = object()
_NEVER = datetime(1970, 1, 1, tzinfo=UTC)
_NOT_CURRENT = (_NO_ZONE, _NEVER, _NEVER, Window("", "", _NEVER, _NEVER))

SCHOOL_DAY = "school day"
WEEKEND = "weekend"
HALF_TERM = "half term"
HOLIDAYS = "holidays"
INSET_DAY = "INSET day"
DAY_OFF = "day off"


# -- the timetable -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Period:
    """One named period of a weekday, in minutes from local midnight.

    ``end`` is more than 1440 for a period that runs past midnight into the next day.
    """

    name: str
    kind: str
    start: int
    end: int

    @property
    def crosses_midnight(self) -> bool:
        return self.end > DAY_MINUTES


@dataclass(frozen=True, slots=True)
class _Day:
    starts: tuple[float, ...]  # UTC timestamps of each window's start
    ends: tuple[float, ...]
    windows: tuple[Window, ...]


class Timetable:
    """One site's timetable. Immutable once built; safe to share.

    ``week`` holds the periods of each weekday (Monday first; an empty tuple is a day off).
    ``terms`` are ``(start, end)`` inclusive dates; ``half_terms``, ``inset_days`` and
    ``closures`` (date to name) are the whole days off within them.
    """

    __slots__ = (
        "_site",
        "_tz",
        "_source",
        "_week",
        "_term_starts",
        "_term_ends",
        "_closed",
        "_days",
        "_last",
        "current",
    )

    def __init__(
        self,
        *,
        site: str,
        tz: ZoneInfo,
        source: str,
        week: tuple[tuple[Period, ...], ...],
        terms: list[tuple[date, date]],
        half_terms: Iterable[tuple[date, date]] = (),
        inset_days: Iterable[date] = (),
        closures: dict[date, str] | None = None,
    ) -> None:
        if len(week) != 7:
            raise ValueError("week must have 7 days, Monday first")
        self._site = site
        self._tz = tz
        self._source = source
        self._week = tuple(tuple(sorted(day, key=lambda p: p.start)) for day in week)
        terms = sorted(terms)
        self._term_starts = tuple(start for start, _ in terms)
        self._term_ends = tuple(end for _, end in terms)
        closed: dict[date, str] = {}
        for day, name in (closures or {}).items():
            closed[day] = name
        for day in inset_days:
            closed[day] = INSET_DAY
        for start, end in half_terms:
            day = start
            while day <= end:
                closed[day] = HALF_TERM
                day += timedelta(days=1)
        self._closed = closed
        self._days: dict[date, _Day] = {}
        self._last: tuple[float, float, Window | None, bool] = (0.0, 0.0, None, False)
        # The window found last, as (zone, start, end, window): a datetime in that zone with
        # start <= at < end is in it, by comparing wall-clock times. The zone is the one the
        # last question was asked in when that has a fixed offset (UTC: the gateway's clock),
        # where wall times are instants; else the timetable's, which is exact when the UTC
        # offset is the same from 3 hours before the window to 3 hours after it; otherwise
        # (a clock change near) the zone is one no datetime has. Public so that the policy
        # reads it without a call on every request; replaced whole, never changed.
        self.current: tuple[object, datetime, datetime, Window] = _NOT_CURRENT

    # -- read-only attributes ----------------------------------------------------------------
    @property
    def site(self) -> str:
        return self._site

    @property
    def tz(self) -> ZoneInfo:
        return self._tz

    @property
    def source(self) -> str:
        return self._source

    @property
    def week(self) -> tuple[tuple[Period, ...], ...]:
        return self._week

    def __repr__(self) -> str:
        return f"Timetable(site={self._site!r}, tz={self._tz.key!r}, source={self._source!r})"

    # -- queries -----------------------------------------------------------------------------
    def window_at(self, at: datetime) -> Window:
        """The window containing the aware datetime ``at`` (any zone)."""
        zone, start_at, end_at, current = self.current
        if at.tzinfo is zone and start_at <= at < end_at:
            # Comparing wall times avoids computing a UTC offset (~60 ns): see ``current``.
            return current
        zone = at.tzinfo
        if zone is None:
            raise ValueError("window_at needs an aware datetime")
        last = self._last
        ts = at.timestamp()
        if last[0] <= ts < last[1]:
            start, end, window, safe = last[0], last[1], last[2], last[3]
            assert window is not None
        else:
            day = self._day(datetime.fromtimestamp(ts, self._tz).date())
            index = bisect.bisect_right(day.starts, ts) - 1
            window = day.windows[index]
            start, end = day.starts[index], day.ends[index]
            # wall-clock comparison is safe if the offset is the same from 3 hours before the
            # window to 3 hours after it (no ambiguous or missing local times inside it)
            offset = self._tz.utcoffset
            safe = (
                offset(datetime.fromtimestamp(start - _MARGIN, self._tz))
                == offset(datetime.fromtimestamp(end + _MARGIN, self._tz))
                == offset(window.start)
            )
            self._last = (start, end, window, safe)
        if type(zone) is timezone:
            # A fixed offset (the gateway's clock gives UTC): wall times in it are instants,
            # so the window's bounds in that zone compare exactly, clock changes or not.
            self.current = (
                zone,
                datetime.fromtimestamp(start, zone),
                datetime.fromtimestamp(end, zone),
                window,
            )
        else:
            self.current = (self._tz, window.start, window.end, window) if safe else _NOT_CURRENT
        return window

    def windows_on(self, day: date) -> list[Window]:
        """The windows of local ``day`` in order, contiguous, covering 00:00 to 24:00.

        A window that ran past midnight from the day before comes first; one that runs past
        midnight into the next day comes last.
        """
        return list(self._day(day).windows)

    def day_type(self, day: date) -> str:
        """Why ``day`` is open or closed: "school day", "weekend", "half term", "holidays",
        "INSET day", a closure's name, or "day off" (a Monday to Friday without periods).
        """
        index = bisect.bisect_right(self._term_starts, day) - 1
        if index < 0 or day > self._term_ends[index]:
            return HOLIDAYS
        reason = self._closed.get(day)
        if reason is not None:
            return reason
        if not self._week[day.weekday()]:
            return WEEKEND if day.weekday() >= 5 else DAY_OFF
        return SCHOOL_DAY

    def iter_windows(self, start: datetime) -> Iterator[Window]:
        """The window containing ``start``, then every following window in order, forever."""
        if start.tzinfo is None:
            raise ValueError("iter_windows needs an aware datetime")
        ts = start.timestamp()
        day = datetime.fromtimestamp(ts, self._tz).date()
        cached = self._day(day)
        index = bisect.bisect_right(cached.starts, ts) - 1
        last_end = ts
        while True:
            for position in range(index, len(cached.windows)):
                if cached.ends[position] > last_end:
                    last_end = cached.ends[position]
                    yield cached.windows[position]
            day += timedelta(days=1)
            cached = self._day(day)
            index = 0

    # -- building days -----------------------------------------------------------------------
    def _day(self, day: date) -> _Day:
        cached = self._days.get(day)
        if cached is None:
            if len(self._days) >= _MAX_CACHED_DAYS:
                self._days.clear()
            cached = self._days[day] = self._build(day)
        return cached

    def _instant(self, day: date, minutes: int) -> float:
        """The UTC timestamp of local wall time ``minutes`` after midnight on ``day``.

        Minutes may run past 1440 into the next day. An ambiguous time (clocks going back)
        is its first occurrence; a time that does not exist (clocks going forward) is the
        instant the clocks change, so that the mapping never goes backwards.
        """
        day = day + timedelta(days=minutes // DAY_MINUTES)
        minutes %= DAY_MINUTES
        wall = datetime(day.year, day.month, day.day, minutes // 60, minutes % 60, tzinfo=self._tz)
        ts = wall.timestamp()
        back = datetime.fromtimestamp(ts, self._tz)
        if back.replace(tzinfo=None) == wall.replace(tzinfo=None):
            return ts
        # In a gap: fold=1 reads it with the offset after the change (an instant before the
        # change), fold=0 with the offset before (an instant after it). Find the change.
        low = int(wall.replace(fold=1).timestamp())
        high = int(ts)
        after = self._tz.utcoffset(datetime.fromtimestamp(high, self._tz))
        while high - low > 1:
            middle = (low + high) // 2
            if self._tz.utcoffset(datetime.fromtimestamp(middle, self._tz)) == after:
                high = middle
            else:
                low = middle
        return float(high)

    def _overnight(self, day: date) -> tuple[float, float, Window] | None:
        """The window of ``day`` that runs past midnight into the next day, if any."""
        if self.day_type(day) != SCHOOL_DAY:
            return None
        periods = self._week[day.weekday()]
        last = periods[-1]
        if not last.crosses_midnight:
            return None
        start = self._instant(day, last.start)
        end = max(start, self._instant(day, last.end))
        return start, end, self._window(last.kind, last.name, start, end)

    def _window(self, kind: str, name: str, start: float, end: float) -> Window:
        return Window(
            kind,
            name,
            datetime.fromtimestamp(start, self._tz),
            datetime.fromtimestamp(end, self._tz),
            self._site,
        )

    def _build(self, day: date) -> _Day:
        starts: list[float] = []
        ends: list[float] = []
        windows: list[Window] = []
        cursor = self._instant(day, 0)
        day_end = self._instant(day, DAY_MINUTES)

        def emit(kind: str, name: str, end: float) -> None:
            nonlocal cursor
            end = min(end, day_end)
            if end > cursor:
                starts.append(cursor)
                ends.append(end)
                windows.append(self._window(kind, name, cursor, end))
                cursor = end

        previous = self._overnight(day - timedelta(days=1))
        if previous is not None and previous[1] > cursor:
            starts.append(previous[0])
            ends.append(previous[1])
            windows.append(previous[2])
            cursor = previous[1]

        kind_of_day = self.day_type(day)
        if kind_of_day != SCHOOL_DAY:
            emit("closed", kind_of_day, day_end)
        else:
            periods = self._week[day.weekday()]
            overnight = periods[-1] if periods[-1].crosses_midnight else None
            regular = periods[:-1] if overnight else periods
            for position, period in enumerate(regular):
                start = self._instant(day, period.start)
                if position == 0:
                    emit("before_school", "before school", start)
                else:
                    emit(period.kind, f"changeover to {period.name}", start)
                emit(period.kind, period.name, self._instant(day, period.end))
            if overnight is None:
                emit("after_school", "after school", day_end)
            else:
                start = self._instant(day, overnight.start)
                emit(
                    "before_school" if not regular else "after_school",
                    "before school" if not regular else "after school",
                    start,
                )
                end = self._instant(day, overnight.end)
                if end > cursor:
                    starts.append(cursor)
                    ends.append(end)
                    windows.append(self._window(overnight.kind, overnight.name, cursor, end))
                    cursor = end
        if cursor < day_end:  # only if the tz database did something very odd
            emit("closed", kind_of_day, day_end)
        return _Day(tuple(starts), tuple(ends), tuple(windows))


# -- loading -----------------------------------------------------------------------------------
def _parse_time(value: Any, *, allow_24: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError("write it as HH:MM in quotes or plain, e.g. 09:00")
    match = _TIME_RE.match(value.strip())
    if not match:
        raise ValueError("write it as HH:MM, e.g. 09:00")
    hours, minutes = int(match.group(1)), int(match.group(2))
    if minutes > 59 or hours > 24 or (hours == 24 and (minutes or not allow_24)):
        latest = "24:00" if allow_24 else "23:59"
        raise ValueError(f"a time runs from 00:00 to {latest}")
    return hours * 60 + minutes


def _clock(minutes: int) -> str:
    if minutes != DAY_MINUTES:
        minutes %= DAY_MINUTES
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _day_names(key: Any) -> list[int] | str:
    """The weekdays a key of ``week`` names (``monday``, ``monday-friday``, ``saturday, sunday``);
    or an error message."""
    text = str(key).strip().lower()
    result: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        bounds = [b.strip() for b in part.split("-")]
        if len(bounds) > 2 or not all(bounds):
            return f"cannot read {part!r} as a weekday or a range like monday-friday"
        indices = []
        for bound in bounds:
            if bound not in WEEKDAYS:
                close = difflib.get_close_matches(bound, WEEKDAYS, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                return f"unknown weekday {bound!r}{hint}; expected monday to sunday"
            indices.append(WEEKDAYS.index(bound))
        if len(indices) == 2 and indices[1] < indices[0]:
            return f"the range {part!r} goes backwards; write it from the earlier day"
        result.extend(range(indices[0], indices[-1] + 1))
    return result


def _load_periods(week: Section, key: Any, issues: Issues) -> list[Period] | None:
    """The periods under one key of ``week``; None when the day is ``closed``."""
    raw = week.data.get(key)
    if raw is None or (isinstance(raw, list) and not raw):
        return None
    if isinstance(raw, str):
        if raw.strip().lower() == "closed":
            return None
        week.error(key, f"expected a list of periods or 'closed', got text ({raw!r})")
        return None
    if not isinstance(raw, list):
        week.error(key, "expected a list of periods or 'closed'")
        return None
    periods: list[tuple[Period, Section]] = []
    names: dict[str, Section] = {}
    for sec in week.sections(key):
        sec.check_keys(_PERIOD_KEYS)
        kind = sec.choice("kind", WINDOW_KINDS, required=True)
        name = sec.text("name") or kind
        start = sec.parse("start", _parse_time, "a time of day HH:MM", required=True)
        end = sec.parse(
            "end",
            lambda v: _parse_time(v, allow_24=True),
            "a time of day HH:MM (24:00 for midnight)",
            required=True,
        )
        if name:
            folded = name.casefold()
            if folded in names:
                sec.error(
                    "name" if "name" in sec else None,
                    f"duplicate period name {name!r} on this day (first at line "
                    f"{names[folded].line}); give each period its own name",
                )
            else:
                names[folded] = sec
        if kind is None or start is None or end is None or not name:
            continue
        if end == 0:
            end = DAY_MINUTES
        if end == start:
            sec.error(
                "end",
                f"the period ends when it starts ({_clock(end)}); expected an end after the start",
            )
            continue
        if end < start:
            end += DAY_MINUTES
        periods.append((Period(name, kind, start, end), sec))
    periods.sort(key=lambda item: item[0].start)
    for (earlier, earlier_sec), (later, later_sec) in zip(periods, periods[1:], strict=False):
        if later.start >= earlier.end:
            continue
        if earlier.crosses_midnight:
            earlier_sec.error(
                "end",
                f"end {_clock(earlier.end)} is before start {_clock(earlier.start)}, so the "
                f"period would run past midnight, but only the last period of a day may; "
                f"{later.name!r} (line {later_sec.line}) starts later. Expected an end after "
                f"{_clock(earlier.start)}",
            )
        else:
            later_sec.error(
                "start",
                f"{later.name!r} {_clock(later.start)}-{_clock(later.end)} overlaps "
                f"{earlier.name!r} {_clock(earlier.start)}-{_clock(earlier.end)} "
                f"(line {earlier_sec.line}); expected a start at or after "
                f"{_clock(earlier.end)}",
            )
    return [period for period, _ in periods]


def _load_week(root: Section, issues: Issues) -> tuple[tuple[Period, ...], ...]:
    week_sec = root.section("week", required=True)
    days: list[tuple[Period, ...]] = [() for _ in WEEKDAYS]
    if week_sec is None:
        return tuple(days)
    before = len(issues)
    given: dict[int, tuple[bool, Any]] = {}  # weekday -> (single-day key?, key)
    for key in week_sec.keys():
        indices = _day_names(key)
        periods = _load_periods(week_sec, key, issues)  # checked even under a bad key
        if isinstance(indices, str):
            week_sec.error(key, indices)
            continue
        single = len(indices) == 1
        clashes: dict[Any, list[str]] = {}
        for index in indices:
            if index in given:
                was_single, other = given[index]
                if was_single == single:
                    clashes.setdefault(other, []).append(WEEKDAYS[index])
                    continue
                if was_single:  # the earlier single-day key wins over this range
                    continue
            given[index] = (single, key)
            days[index] = tuple(periods or ())
        if clashes:
            said = "; ".join(
                f"{' and '.join(names)} {'is' if len(names) == 1 else 'are'} already given by "
                f"'{other}' (line {week_sec.line_of(other)})"
                for other, names in clashes.items()
            )
            week_sec.error(
                key,
                f"{said}; expected each weekday once (a single day like "
                f"'friday' may override a range like 'monday-friday')",
            )
    if not any(days) and len(issues) == before:
        root.error("week", "expected at least one weekday with periods")
    # a period running past midnight must end before the next day's first period starts
    for index, day_periods in enumerate(days):
        if not day_periods or not day_periods[-1].crosses_midnight:
            continue
        following = days[(index + 1) % 7]
        last = day_periods[-1]
        if following and following[0].start < last.end - DAY_MINUTES:
            key = given[index][1]
            week_sec.error(
                key,
                f"{last.name!r} on {WEEKDAYS[index]} runs until {_clock(last.end)} the next "
                f"day, past the start of {WEEKDAYS[(index + 1) % 7]}'s first period "
                f"{following[0].name!r} at {_clock(following[0].start)}; expected it to end "
                f"by {_clock(following[0].start)}",
            )
    return tuple(days)


def _load_timezone(root: Section) -> ZoneInfo | None:
    name = root.text("timezone", required=True)
    if name is None:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        close = difflib.get_close_matches(name, sorted(available_timezones()), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        root.error(
            "timezone",
            f"unknown time zone {name!r}{hint}; expected an IANA name like Europe/London",
        )
        return None


def load_timetable(
    path: Path, issues: Issues, *, site: str, display_path: str | None = None
) -> Timetable | None:
    """Read and check a timetable file; report every problem into ``issues``.

    Returns None when anything was wrong (never a half-loaded timetable).
    """
    shown = display_path or str(path)
    before = len(issues)
    data = load_yaml(path, issues, shown=shown)
    if data is None:
        return None
    root = Section(data, file=shown, path="", issues=issues)
    root.check_keys(_TOP_KEYS)
    root.text("name")
    root.text("description")
    tz = _load_timezone(root)
    week = _load_week(root, issues)
    terms, half_terms = load_terms(root)
    inset, closures = load_days_off(root, terms, check_terms=bool(terms))
    if len(issues) > before or tz is None:
        return None
    return Timetable(
        site=site,
        tz=tz,
        source=shown,
        week=week,
        terms=terms,
        half_terms=half_terms,
        inset_days=inset,
        closures=closures,
    )
