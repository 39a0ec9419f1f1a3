"""Tests for schoolgate.core.timetable: the shipped timetables, DST, midnight, and every error."""

from __future__ import annotations

import textwrap
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from schoolgate.core.configfile import ConfigIssue, Issues
from schoolgate.core.model import WINDOW_KINDS
from schoolgate.core.timetable import Timetable, load_timetable

ROOT = Path(__file__).resolve().parent.parent
SCHEDULES = ROOT / "schedules"
LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")


def london(*args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=LONDON, fold=fold)


def hours(window) -> float:
    """The real length of a window (same-zone datetimes subtract by wall clock)."""
    return (window.end.timestamp() - window.start.timestamp()) / 3600


def shipped(name: str, site: str = "main") -> Timetable:
    issues = Issues()
    timetable = load_timetable(SCHEDULES / name, issues, site=site)
    assert not issues, issues.items
    assert timetable is not None
    return timetable


def load_text(tmp_path: Path, text: str, *, site: str = "main") -> tuple[Timetable | None, Issues]:
    path = tmp_path / "school.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    issues = Issues()
    timetable = load_timetable(path, issues, site=site, display_path="schedules/school.yaml")
    return timetable, issues


@pytest.fixture(scope="module")
def default() -> Timetable:
    return shipped("default.yaml")


@pytest.fixture(scope="module")
def boarding() -> Timetable:
    return shipped("boarding-example.yaml", site="boarding")


def assert_contiguous(timetable: Timetable, day: date) -> None:
    windows = timetable.windows_on(day)
    midnight = datetime(day.year, day.month, day.day, tzinfo=timetable.tz)
    next_midnight = midnight + timedelta(days=1)
    assert windows[0].start.timestamp() <= midnight.timestamp()
    assert windows[-1].end.timestamp() >= next_midnight.timestamp()
    for earlier, later in zip(windows, windows[1:], strict=False):
        assert earlier.end.timestamp() == later.start.timestamp(), (earlier, later)
        assert later.end.timestamp() > later.start.timestamp(), later
    for window in windows:
        assert window.kind in WINDOW_KINDS
        assert window.start.tzinfo is timetable.tz and window.end.tzinfo is timetable.tz
        assert window.site == timetable.site


# -- the shipped default -----------------------------------------------------------------------
MONDAY = (2026, 9, 7)  # a Monday in the autumn term


@pytest.mark.parametrize(
    ("hour", "minute", "kind", "name"),
    [
        (7, 0, "before_school", "before school"),
        (8, 45, "registration", "Registration"),
        (9, 0, "lesson", "P1"),
        (10, 30, "lesson", "P2"),
        (11, 10, "break", "Break"),
        (12, 45, "lunch", "Lunch"),
        (15, 9, "lesson", "P5"),
        (15, 10, "after_school", "after school"),
        (16, 0, "after_school", "after school"),
        (23, 59, "after_school", "after school"),
    ],
)
def test_default_term_monday(default, hour, minute, kind, name):
    window = default.window_at(london(*MONDAY, hour, minute))
    assert (window.kind, window.name, window.site) == (kind, name, "main")


def test_default_window_bounds(default):
    window = default.window_at(london(*MONDAY, 10, 30))
    assert window.start == london(*MONDAY, 10, 0)
    assert window.end == london(*MONDAY, 11, 0)
    before = default.window_at(london(*MONDAY, 7, 0))
    assert before.start == london(*MONDAY, 0, 0) and before.end == london(*MONDAY, 8, 40)
    after = default.window_at(london(*MONDAY, 16, 0))
    assert after.start == london(*MONDAY, 15, 10)
    assert after.end == london(2026, 9, 8, 0, 0)


def test_default_school_day_windows(default):
    windows = default.windows_on(date(*MONDAY))
    assert [w.name for w in windows] == [
        "before school",
        "Registration",
        "P1",
        "P2",
        "Break",
        "P3",
        "Lunch",
        "P4",
        "P5",
        "after school",
    ]
    assert default.day_type(date(*MONDAY)) == "school day"
    assert_contiguous(default, date(*MONDAY))


@pytest.mark.parametrize(
    ("day", "reason"),
    [
        (date(2026, 9, 12), "weekend"),  # a Saturday in term
        (date(2026, 9, 13), "weekend"),
        (date(2026, 10, 28), "half term"),
        (date(2026, 12, 25), "holidays"),
        (date(2026, 9, 2), "holidays"),  # the day before term starts
        (date(2027, 3, 26), "Good Friday"),
        (date(2027, 5, 3), "Early May bank holiday"),
        (date(2027, 5, 31), "half term"),
        (date(2027, 7, 22), "holidays"),
        (date(2030, 1, 7), "holidays"),  # after the last term given
    ],
)
def test_default_closed_days(default, day, reason):
    assert default.day_type(day) == reason
    (window,) = default.windows_on(day)
    assert (window.kind, window.name) == ("closed", reason)
    assert window.start == datetime(day.year, day.month, day.day, tzinfo=LONDON)
    at = default.window_at(datetime(day.year, day.month, day.day, 12, tzinfo=LONDON))
    assert at == window


def test_default_term_boundaries(default):
    assert default.day_type(date(2026, 9, 3)) == "school day"
    assert default.day_type(date(2026, 12, 18)) == "school day"
    assert default.day_type(date(2026, 10, 23)) == "school day"  # Friday before half term
    assert default.day_type(date(2026, 11, 2)) == "school day"
    assert default.day_type(date(2027, 7, 21)) == "school day"


def test_window_at_any_zone(default):
    utc = datetime(2026, 9, 7, 9, 30, tzinfo=UTC)  # 10:30 BST
    assert default.window_at(utc).name == "P2"
    tokyo = utc.astimezone(ZoneInfo("Asia/Tokyo"))
    assert default.window_at(tokyo).name == "P2"


def test_window_at_needs_aware_datetime(default):
    with pytest.raises(ValueError):
        default.window_at(datetime(2026, 9, 7, 10, 30))
    with pytest.raises(ValueError):
        next(default.iter_windows(datetime(2026, 9, 7, 10, 30)))


def test_window_at_repeated_calls_use_the_last_window(default):
    at = london(*MONDAY, 10, 30)
    first = default.window_at(at)
    assert default.window_at(london(*MONDAY, 10, 59, 59)) is first
    assert default.window_at(london(*MONDAY, 11, 0)).name == "Break"
    assert default.window_at(at) == first


def test_timetable_is_read_only(default):
    with pytest.raises(AttributeError):
        default.site = "other"  # type: ignore[misc]
    assert default.tz is LONDON
    assert default.source == str(SCHEDULES / "default.yaml")


def test_every_day_of_the_year_is_covered(default, boarding):
    day = date(2026, 8, 1)
    while day < date(2027, 9, 1):
        for timetable in (default, boarding):
            assert_contiguous(timetable, day)
            for window in timetable.windows_on(day):
                assert timetable.window_at(window.start) == window
                last_second = datetime.fromtimestamp(window.end.timestamp() - 1, UTC)
                assert timetable.window_at(last_second) == window
        day += timedelta(days=1)


# -- clocks changing ---------------------------------------------------------------------------
def test_default_dst_days_are_23_and_25_hours(default):
    (spring,) = default.windows_on(date(2027, 3, 28))
    assert spring.kind == "closed" and hours(spring) == 23
    assert spring.end == london(2027, 3, 29)
    (autumn,) = default.windows_on(date(2026, 10, 25))
    assert (autumn.name, hours(autumn)) == ("weekend", 25)
    # before and after the change: the same window
    assert default.window_at(datetime(2027, 3, 28, 0, 59, 59, tzinfo=UTC)) == spring
    assert default.window_at(datetime(2027, 3, 28, 1, 0, 0, tzinfo=UTC)) == spring
    assert default.window_at(london(2026, 10, 25, 1, 30, fold=0)) == autumn
    assert default.window_at(london(2026, 10, 25, 1, 30, fold=1)) == autumn


def test_school_day_after_clocks_change(default):
    # the Monday after clocks go back: lessons at local time, now in GMT
    p2 = default.window_at(datetime(2026, 11, 2, 10, 30, tzinfo=UTC))
    assert p2.name == "P2" and p2.start.utcoffset() == timedelta(0)
    before = default.windows_on(date(2026, 11, 2))[0]
    assert hours(before) == pytest.approx(8 + 40 / 60)


NIGHT_OWLS = """
    timezone: Europe/London
    week:
      monday-sunday:
        - {name: Late, kind: lesson, start: "00:30", end: "01:30"}
        - {name: Early, kind: registration, start: "02:30", end: "03:00"}
    terms:
      - {start: 2026-09-01, end: 2027-07-31}
"""


def test_periods_across_clocks_going_forward(tmp_path):
    timetable, issues = load_text(tmp_path, NIGHT_OWLS)
    assert not issues and timetable is not None
    windows = timetable.windows_on(date(2027, 3, 28))  # 01:00 GMT becomes 02:00 BST
    assert [(w.name, hours(w)) for w in windows] == [
        ("before school", 0.5),
        ("Late", 0.5),  # 01:30 does not exist: the period ends when the clocks change
        ("changeover to Early", 0.5),  # 02:00 BST to 02:30 BST
        ("Early", 0.5),
        ("after school", 21),
    ]
    assert sum(hours(w) for w in windows) == 23
    assert windows[1].end == london(2027, 3, 28, 2, 0)
    assert timetable.window_at(datetime(2027, 3, 28, 0, 59, 59, tzinfo=UTC)).name == "Late"
    assert timetable.window_at(datetime(2027, 3, 28, 1, 0, tzinfo=UTC)).name == (
        "changeover to Early"
    )
    assert_contiguous(timetable, date(2027, 3, 28))


def test_periods_across_clocks_going_back(tmp_path):
    timetable, issues = load_text(tmp_path, NIGHT_OWLS)
    assert not issues and timetable is not None
    windows = timetable.windows_on(date(2026, 10, 25))  # 02:00 BST becomes 01:00 GMT
    assert [(w.name, hours(w)) for w in windows] == [
        ("before school", 0.5),
        ("Late", 1),  # 01:30 is its first occurrence (BST)
        ("changeover to Early", 2),  # 01:30 BST to 02:30 GMT
        ("Early", 0.5),
        ("after school", 21),
    ]
    assert sum(hours(w) for w in windows) == 25
    # 01:15 happens twice: first in Late, then in the changeover
    first = london(2026, 10, 25, 1, 15, fold=0)
    second = london(2026, 10, 25, 1, 15, fold=1)
    assert timetable.window_at(first).name == "Late"
    assert timetable.window_at(second).name == "changeover to Early"
    assert timetable.window_at(first).name == "Late"
    assert_contiguous(timetable, date(2026, 10, 25))


def test_overnight_window_across_clocks_going_forward(tmp_path):
    text = """
        timezone: Europe/London
        week:
          saturday:
            - {name: Film night, kind: after_school, start: "22:00", end: "03:00"}
          sunday:
            - {name: Brunch, kind: lunch, start: "10:00", end: "11:00"}
        terms:
          - {start: 2027-01-05, end: 2027-04-30}
    """
    timetable, issues = load_text(tmp_path, text)
    assert not issues and timetable is not None
    film = timetable.windows_on(date(2027, 3, 28))[0]
    assert film.name == "Film night" and hours(film) == 4  # 22:00 GMT to 03:00 BST
    assert film.start == london(2027, 3, 27, 22, 0)
    assert timetable.window_at(london(2027, 3, 28, 2, 30)) == film
    assert timetable.windows_on(date(2027, 3, 28))[1].start == london(2027, 3, 28, 3, 0)


# -- periods past midnight ---------------------------------------------------------------------
def test_evening_study_runs_past_midnight(boarding):
    monday, tuesday = date(2026, 9, 7), date(2026, 9, 8)
    study = boarding.window_at(london(2026, 9, 8, 0, 30))
    assert (study.kind, study.name, study.site) == ("lesson", "Evening study", "boarding")
    assert study.start == london(2026, 9, 7, 21, 0)
    assert study.end == london(2026, 9, 8, 1, 0)
    assert boarding.windows_on(monday)[-1] == study
    tuesday_windows = boarding.windows_on(tuesday)
    assert tuesday_windows[0] == study
    assert tuesday_windows[1].kind == "before_school"
    assert tuesday_windows[1].start == london(2026, 9, 8, 1, 0)
    assert tuesday_windows[1].end == london(2026, 9, 8, 8, 30)
    assert boarding.window_at(london(2026, 9, 8, 1, 0)).kind == "before_school"
    assert boarding.window_at(london(2026, 9, 7, 20, 59)).name == "House time"


def test_overnight_window_wins_over_a_closed_next_day(boarding):
    # Friday 2026-09-25 is a school day; the weekend after is an exeat (a closure)
    assert boarding.day_type(date(2026, 9, 26)) == "Exeat weekend"
    study, closed = boarding.windows_on(date(2026, 9, 26))
    assert study.name == "Evening study" and study.end == london(2026, 9, 26, 1, 0)
    assert (closed.kind, closed.name) == ("closed", "Exeat weekend")
    assert closed.start == london(2026, 9, 26, 1, 0)
    assert closed.end == london(2026, 9, 27, 0, 0)


def test_boarding_weekend(boarding):
    saturday = boarding.windows_on(date(2026, 9, 5))
    assert saturday[0].name == "Evening study"  # from Friday night
    assert [w.name for w in saturday[1:]] == [
        "before school",
        "Registration",
        "S1",
        "Break",
        "S2",
        "Lunch",
        "Matches",
        "after school",
    ]
    assert boarding.window_at(london(2026, 9, 6, 19, 30)).name == "Sunday prep"
    # Sunday has a gap before Sunday prep: it counts as the prep (fail closed)
    gap = boarding.window_at(london(2026, 9, 6, 18, 50))
    assert (gap.kind, gap.name) == ("lesson", "changeover to Sunday prep")
    assert boarding.day_type(date(2026, 9, 2)) == "INSET day"


def test_gaps_are_changeovers_of_the_next_kind(tmp_path):
    text = """
        timezone: Europe/London
        week:
          monday-friday:
            - {name: P1, kind: lesson, start: "09:00", end: "10:00"}
            - {name: Lunch, kind: lunch, start: "12:00", end: "13:00"}
            - {name: P2, kind: lesson, start: "13:05", end: "24:00"}
          wednesday:
            - {name: Assembly, kind: registration, start: "09:00", end: "09:30"}
        terms:
          - {start: 2026-09-01, end: 2026-12-18}
    """
    timetable, issues = load_text(tmp_path, text)
    assert not issues and timetable is not None
    gap = timetable.window_at(london(2026, 9, 7, 11, 0))
    assert (gap.kind, gap.name) == ("lunch", "changeover to Lunch")
    assert gap.start == london(2026, 9, 7, 10, 0) and gap.end == london(2026, 9, 7, 12, 0)
    assert timetable.window_at(london(2026, 9, 7, 13, 2)).kind == "lesson"
    # P2 ends at 24:00, so there is no after_school window
    assert timetable.windows_on(date(2026, 9, 7))[-1].name == "P2"
    assert timetable.window_at(london(2026, 9, 8, 0, 0)).kind == "before_school"
    # Wednesday overrides the range
    assert [w.name for w in timetable.windows_on(date(2026, 9, 9))] == [
        "before school",
        "Assembly",
        "after school",
    ]


def test_end_at_midnight_written_as_00_00(tmp_path):
    text = """
        timezone: UTC
        week:
          friday:
            - {name: Disco, kind: after_school, start: "19:00", end: "00:00"}
        terms:
          - {start: 2026-09-01, end: 2026-12-18}
    """
    timetable, issues = load_text(tmp_path, text)
    assert not issues and timetable is not None
    windows = timetable.windows_on(date(2026, 9, 4))
    assert [w.name for w in windows] == ["before school", "Disco"]
    assert windows[-1].end == datetime(2026, 9, 5, tzinfo=ZoneInfo("UTC"))
    assert timetable.windows_on(date(2026, 9, 5))[0].name == "weekend"
    assert timetable.day_type(date(2026, 9, 7)) == "day off"  # a Monday without periods


# -- several sites -----------------------------------------------------------------------------
def test_sites_with_different_bell_times_and_zones(tmp_path, default):
    text = """
        timezone: America/New_York
        week:
          monday-friday:
            - {name: Homeroom, kind: registration, start: "07:50", end: "08:00"}
            - {name: Period 1, kind: lesson, start: "08:00", end: "09:30"}
        terms:
          - {start: 2026-09-08, end: 2027-06-18}
    """
    new_york, issues = load_text(tmp_path, text, site="new-york")
    assert not issues and new_york is not None
    at = datetime(2026, 9, 14, 12, 45, tzinfo=UTC)  # 13:45 in London, 08:45 in New York
    here = default.window_at(at)
    there = new_york.window_at(at)
    assert (here.site, here.name) == ("main", "P4")
    assert (there.site, there.name, there.kind) == ("new-york", "Period 1", "lesson")
    assert there.start == datetime(2026, 9, 14, 8, 0, tzinfo=NEW_YORK)
    assert there.start.tzinfo is NEW_YORK and here.start.tzinfo is LONDON
    # New York changes its clocks a week after London (2026-11-01)
    assert hours(new_york.windows_on(date(2026, 11, 1))[0]) == 25
    assert hours(default.windows_on(date(2026, 11, 1))[0]) == 24
    # each answers for its own site, alternately
    assert default.window_at(at) is here and new_york.window_at(at) is there


# -- iter_windows ------------------------------------------------------------------------------
def test_iter_windows_into_the_next_days(default):
    friday_p5 = london(2026, 9, 11, 14, 30)
    windows = default.iter_windows(friday_p5)
    got = [next(windows) for _ in range(6)]
    assert [(w.kind, w.name) for w in got] == [
        ("lesson", "P5"),
        ("after_school", "after school"),
        ("closed", "weekend"),
        ("closed", "weekend"),
        ("before_school", "before school"),
        ("registration", "Registration"),
    ]
    assert got[2].start == london(2026, 9, 12) and got[3].start == london(2026, 9, 13)
    assert got[5].start == london(2026, 9, 14, 8, 40)
    for earlier, later in zip(got, got[1:], strict=False):
        assert earlier.end == later.start


def test_iter_windows_yields_an_overnight_window_once(boarding):
    windows = boarding.iter_windows(london(2026, 9, 7, 20, 30))
    got = [next(windows) for _ in range(3)]
    assert [w.name for w in got] == ["House time", "Evening study", "before school"]
    # starting inside it on the next day
    windows = boarding.iter_windows(london(2026, 9, 8, 0, 30))
    assert [next(windows).name for _ in range(2)] == ["Evening study", "before school"]


def test_iter_windows_goes_on_across_holidays(default):
    windows = default.iter_windows(london(2026, 12, 18, 16, 0))
    got = [next(windows) for _ in range(19)]
    assert got[0].name == "after school"
    assert [w.name for w in got[1:18]] == ["holidays"] * 17  # 19 Dec to 4 Jan
    assert got[18].start == london(2027, 1, 5, 0, 0) and got[18].kind == "before_school"


# -- errors ------------------------------------------------------------------------------------
GOOD = """
timezone: Europe/London
week:
  monday-friday:
    - {name: P1, kind: lesson, start: "09:00", end: "10:00"}
    - {name: Lunch, kind: lunch, start: "12:00", end: "13:00"}
terms:
  - name: Autumn
    start: 2026-09-03
    end: 2026-12-18
    half_term: {start: 2026-10-26, end: 2026-10-30}
inset_days: [2026-09-04]
closures:
  - {name: Bank holiday, date: 2026-11-02}
"""


def load_bad(tmp_path: Path, old: str, new: str) -> list[ConfigIssue]:
    assert old in GOOD
    timetable, issues = load_text(tmp_path, GOOD.replace(old, new, 1))
    assert timetable is None, "a timetable with errors must not load"
    assert issues
    return issues.items


def one(items: list[ConfigIssue]) -> ConfigIssue:
    assert len(items) == 1, items
    assert items[0].file == "schedules/school.yaml"
    return items[0]


def test_good_base_loads(tmp_path):
    timetable, issues = load_text(tmp_path, GOOD)
    assert not issues and timetable is not None
    assert timetable.day_type(date(2026, 9, 4)) == "INSET day"
    assert timetable.day_type(date(2026, 11, 2)) == "Bank holiday"
    assert timetable.source == "schedules/school.yaml"


@pytest.mark.parametrize(
    ("old", "new", "line", "field", "words"),
    [
        # times
        (
            'start: "09:00", end: "10:00"',
            'start: "25:00", end: "10:00"',
            4,
            "week.monday-friday[0].start",
            ["25:00", "00:00 to 23:59"],
        ),
        (
            'start: "09:00", end: "10:00"',
            'start: "09:75", end: "10:00"',
            4,
            "week.monday-friday[0].start",
            ["09:75"],
        ),
        (
            'start: "09:00", end: "10:00"',
            'start: 900, end: "10:00"',
            4,
            "week.monday-friday[0].start",
            ["HH:MM", "900"],
        ),
        (
            'start: "09:00", end: "10:00"',
            'start: "09:00", end: "24:30"',
            4,
            "week.monday-friday[0].end",
            ["24:30", "24:00"],
        ),
        (
            'start: "09:00", end: "10:00"',
            'start: "24:00", end: "10:00"',
            4,
            "week.monday-friday[0].start",
            ["23:59"],
        ),
        (
            'start: "09:00", end: "10:00"',
            'start: "09:00", end: "09:00"',
            4,
            "week.monday-friday[0].end",
            ["ends when it starts"],
        ),
        (
            'start: "09:00", end: "10:00"',
            'start: "09:00", end: "08:00"',
            4,
            "week.monday-friday[0].end",
            ["before start 09:00", "only the last period", "Lunch"],
        ),
        (
            'start: "09:00", end: "10:00"',
            'start: "09:00", end: "12:30"',
            5,
            "week.monday-friday[1].start",
            ["overlaps", "P1", "at or after 12:30"],
        ),
        (
            'start: "09:00", end: "10:00"',
            'end: "10:00"',
            4,
            "week.monday-friday[0]",
            ["missing required field 'start'"],
        ),
        # kinds and names
        (
            "kind: lesson",
            "kind: lessons",
            4,
            "week.monday-friday[0].kind",
            ["lessons", "lesson, registration"],
        ),
        (
            "{name: P1, kind: lesson,",
            "{name: P1,",
            4,
            "week.monday-friday[0]",
            ["missing required field 'kind'"],
        ),
        ("{name: P1,", "{name: P1, room: 12,", 4, "week.monday-friday[0].room", ["unknown key"]),
        (
            "{name: Lunch,",
            "{name: P1,",
            5,
            "week.monday-friday[1].name",
            ["duplicate period name 'P1'", "line 4"],
        ),
        # weekdays
        (
            "  monday-friday:",
            "  monday-fryday:",
            3,
            "week.monday-fryday",
            ["unknown weekday 'fryday'", "did you mean 'friday'"],
        ),
        ("  monday-friday:", "  friday-monday:", 3, "week.friday-monday", ["backwards"]),
        ("  monday-friday:", "  mon:", 3, "week.mon", ["unknown weekday 'mon'"]),
        ("terms:\n", "  saturday: open\nterms:\n", 6, "week.saturday", ["'closed'", "open"]),
        (
            "terms:\n",
            "  saturday, sunday: closed\n  sunday-saturday: closed\nterms:\n",
            7,
            "week.sunday-saturday",
            ["backwards"],
        ),
        (
            "terms:\n",
            "  saturday, sunday: closed\n  friday-sunday: closed\nterms:\n",
            7,
            "week.friday-sunday",
            [
                "friday is already given by 'monday-friday' (line 3); saturday and sunday are "
                "already given by 'saturday, sunday' (line 6)"
            ],
        ),
        (
            "terms:\n",
            "  monday: closed\n  monday: closed\nterms:\n",
            7,
            "week.monday",
            ["duplicate key"],
        ),
        (
            "terms:\n",
            '  sunday:\n    - {name: Late, kind: lesson, start: "22:00", end: "09:30"}\nterms:\n',
            6,
            "week.sunday",
            ["'Late' on sunday runs until 09:30", "monday's first period 'P1' at 09:00"],
        ),
        # time zone
        (
            "timezone: Europe/London",
            "timezone: Europe/Londn",
            1,
            "timezone",
            ["unknown time zone 'Europe/Londn'", "did you mean 'Europe/London'"],
        ),
        (
            "timezone: Europe/London",
            "timezone: ../etc/passwd",
            1,
            "timezone",
            ["unknown time zone"],
        ),
        ("timezone: Europe/London", "name: x", 1, "", ["missing required field 'timezone'"]),
        # terms
        (
            "    end: 2026-12-18",
            "    end: 2026-08-18",
            9,
            "terms[0].end",
            ["ends (2026-08-18) before it starts (2026-09-03)"],
        ),
        (
            "half_term: {start: 2026-10-26",
            "half_term: {start: 2026-08-26",
            10,
            "terms[0].half_term.start",
            ["before its term 'Autumn'"],
        ),
        (
            "end: 2026-10-30}",
            "end: 2026-12-30}",
            10,
            "terms[0].half_term.end",
            ["after its term 'Autumn'"],
        ),
        (
            "end: 2026-10-30}",
            "end: 2026-10-20}",
            10,
            "terms[0].half_term.end",
            ["half term ends (2026-10-20) before it starts"],
        ),
        (
            "{start: 2026-10-26,",
            "{begin: 2026-10-26,",
            10,
            "terms[0].half_term.begin",
            ["unknown key"],
        ),
        (
            "    start: 2026-09-03",
            "    start: 3rd September",
            8,
            "terms[0].start",
            ["a date YYYY-MM-DD", "3rd September"],
        ),
        (
            "    start: 2026-09-03",
            "    start: 2026-09-03 08:00:00",
            8,
            "terms[0].start",
            ["a date without a time"],
        ),
        ("    start: 2026-09-03\n", "", 7, "terms[0]", ["missing required field 'start'"]),
        ("  - name: Autumn", "  - nme: Autumn", 7, "terms[0].nme", ["did you mean 'name'"]),
        (
            "inset_days:",
            "  - {name: Spring, start: 2026-12-01, end: 2027-03-01}\ninset_days:",
            11,
            "terms[1].start",
            ["term 'Spring' starts (2026-12-01) before term 'Autumn' ends"],
        ),
        # INSET days and closures
        (
            "inset_days: [2026-09-04]",
            "inset_days: [2025-09-04]",
            11,
            "inset_days[0]",
            ["INSET day 2025-09-04 is not in any term"],
        ),
        (
            "inset_days: [2026-09-04]",
            "inset_days: [tomorrow]",
            11,
            "inset_days[0]",
            ["expected a date YYYY-MM-DD", "tomorrow"],
        ),
        (
            "{name: Bank holiday, date: 2026-11-02}",
            "{date: 2026-11-02}",
            13,
            "closures[0]",
            ["missing required field 'name'"],
        ),
        (
            "date: 2026-11-02}",
            "date: 2026-11-02, end: 2026-11-03}",
            13,
            "closures[0].date",
            ["either 'date'", "not both"],
        ),
        ("date: 2026-11-02}", "day: 2026-11-02}", 13, "closures[0].day", ["unknown key"]),
        (
            "date: 2026-11-02}",
            "start: 2026-11-03, end: 2026-11-02}",
            13,
            "closures[0].end",
            ["closure ends (2026-11-02) before it starts (2026-11-03)"],
        ),
        (
            "date: 2026-11-02}",
            "start: 2026-11-03, end: 2028-11-02}",
            13,
            "closures[0].end",
            ["more than 366 days"],
        ),
        # the file as a whole
        ("inset_days:", "holidays: []\ninset_days:", 11, "holidays", ["unknown key", "closures"]),
        (
            "    start: 2026-09-03",
            "    start: 2026-02-30",
            8,
            "terms[0].start",
            ["2026-02-30 is not a real date"],
        ),
        (
            "    end: 2026-12-18",
            "    end: 2026-12-18\n    end: 2026-12-19",
            10,
            "terms[0].end",
            ["duplicate key"],
        ),
        ("closures:", "closures: [", 13, "", ["invalid YAML"]),
    ],
)
def test_config_errors(tmp_path, old, new, line, field, words):
    items = load_bad(tmp_path, old, new)
    assert all(item.file == "schedules/school.yaml" for item in items)
    matching = [item for item in items if (item.line, item.field) == (line, field)]
    assert len(matching) == 1, items
    for word in words:
        assert word in matching[0].message, matching[0]
    # anything else reported is about the same line (e.g. an unknown key is also a missing one)
    assert all(item.line == line for item in items), items


def test_missing_sections(tmp_path):
    timetable, issues = load_text(tmp_path, "timezone: UTC\n")
    assert timetable is None
    messages = {(i.line, i.field, i.message) for i in issues.items}
    assert messages == {
        (1, "", "missing required field 'week' (a mapping)"),
        (1, "", "missing required field 'terms' (a list)"),
    }


def test_empty_week_and_terms(tmp_path):
    timetable, issues = load_text(
        tmp_path,
        """
        timezone: UTC
        week:
          saturday, sunday: closed
        terms: []
    """,
    )
    assert timetable is None
    assert sorted((i.line, i.field, i.message) for i in issues.items) == [
        (2, "week", "expected at least one weekday with periods"),
        (4, "terms", "expected at least one term with start and end dates"),
    ]


def test_all_errors_are_reported_at_once(tmp_path):
    text = """
        timezone: Mars/Olympus
        week:
          monday:
            - {name: P1, kind: lesson, start: "25:00", end: "10:00"}
            - {name: P2, kind: snack, start: "10:00", end: "11:00"}
          funday:
            - {name: Fun, kind: fun, start: "09:00", end: "10:00"}
        terms:
          - {name: Autumn, start: 2026-09-03, end: 2026-08-01}
        inset_days: [someday]
    """
    timetable, issues = load_text(tmp_path, text)
    assert timetable is None
    found = sorted((i.line, i.field) for i in issues.items)
    assert found == [
        (1, "timezone"),
        (4, "week.monday[0].start"),
        (5, "week.monday[1].kind"),
        (6, "week.funday"),
        (7, "week.funday[0].kind"),
        (9, "terms[0].end"),
        (10, "inset_days[0]"),
    ]
    assert all(i.file == "schedules/school.yaml" for i in issues.items)


def test_file_name_and_other_files_issues(tmp_path):
    issues = Issues()
    issues.add("schoolgate.yaml", 3, "sites", "an earlier problem in another file")
    path = tmp_path / "ok.yaml"
    path.write_text(GOOD, encoding="utf-8")
    # an issue from another file does not stop this one loading
    assert load_timetable(path, issues, site="main") is not None
    missing = tmp_path / "nope.yaml"
    assert load_timetable(missing, issues, site="main") is None
    assert issues.items[-1].file == str(missing)
    assert "not found" in issues.items[-1].message


def test_top_level_must_be_a_mapping(tmp_path):
    timetable, issues = load_text(tmp_path, "- monday\n")
    assert timetable is None
    assert one(issues.items).line == 1 and "mapping" in issues.items[0].message


def test_period_that_is_not_a_mapping(tmp_path):
    items = load_bad(
        tmp_path,
        '    - {name: Lunch, kind: lunch, start: "12:00", end: "13:00"}',
        "    - Lunch 12:00-13:00",
    )
    issue = one(items)
    assert (issue.line, issue.field) == (5, "week.monday-friday[1]")
    assert "expected a mapping" in issue.message
