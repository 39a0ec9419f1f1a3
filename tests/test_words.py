"""Words for people: windows, times and decisions as a pupil or a member of staff reads them,
in the school's time zone, with no internal names and no ISO timestamps."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from policy_fixtures import BASE, local, write_config

from schoolgate.core import words
from schoolgate.core.config import load_policy
from schoolgate.core.configfile import ConfigError
from schoolgate.core.model import AccessException, Action, Decision, Identity, ListMatch, Window
from schoolgate.core.policy import ExceptionSet
from schoolgate.core.words import DEFAULT_WORDING, Wording, decision_sentence, wording_of

LONDON = ZoneInfo("Europe/London")
NOW = datetime(2026, 12, 7, 10, 12, tzinfo=LONDON)  # Monday 7 December 2026, in P2
PUPIL = Identity(role="student", site="main", user="ben", group="9B")
P2 = Window("lesson", "P2", NOW.replace(minute=0), NOW.replace(hour=11, minute=0), "main")
ISO = re.compile(r"\d{4}-\d{2}-\d{2}T|\d{2}:\d{2}:\d{2}[+-]")


def _window(kind: str, name: str) -> Window:
    return Window(kind, name, NOW, NOW + timedelta(hours=1), "main")


@pytest.mark.parametrize(
    ("kind", "name", "said"),
    [
        ("lesson", "P2", "lesson (P2)"),
        ("lesson", "lesson", "lesson"),
        ("before_school", "before school", "before school"),
        ("after_school", "after school", "after school"),
        ("registration", "Registration", "registration"),
        ("registration", "AM reg", "registration (AM reg)"),
        ("lunch", "Lunch", "lunchtime"),
        ("break", "Morning break", "break (Morning break)"),
        ("closed", "half term", "school closed (half term)"),
        ("closed", "weekend", "school closed (weekend)"),
        ("lesson", "changeover to P3", "lesson (changeover to P3)"),
    ],
)
def test_window_in_words(kind, name, said):
    assert DEFAULT_WORDING.window(_window(kind, name)) == said


@pytest.mark.parametrize(
    ("end", "said"),
    [
        (NOW.replace(hour=11, minute=0), "until 11:00 today"),
        (NOW.replace(hour=15, minute=10) + timedelta(days=1), "until 15:10 tomorrow"),
        (NOW.replace(hour=15, minute=10) + timedelta(days=2), "until Wednesday 9 December, 15:10"),
        (datetime(2027, 12, 9, 15, 10, tzinfo=LONDON), "until 9 December 2027"),
        (datetime(2027, 1, 5, 8, 40, tzinfo=LONDON), "until Tuesday 5 January 2027, 08:40"),
        (datetime(2026, 12, 8, 0, 0, tzinfo=LONDON), "until midnight tonight"),
        (datetime(2026, 12, 9, 0, 0, tzinfo=LONDON), "until the end of tomorrow"),
        (datetime(2026, 12, 12, 0, 0, tzinfo=LONDON), "until the end of Friday 11 December"),
        (datetime(2028, 3, 1, 0, 0, tzinfo=LONDON), "until the end of 29 February 2028"),
        (NOW - timedelta(minutes=1), "for now"),
        (None, "with no end set"),
    ],
)
def test_until_in_words(end, said):
    assert words.until(end, NOW, LONDON) == said


def test_until_is_in_the_schools_zone_across_a_clock_change():
    # 23:30 UTC on 28 March 2026 is 23:30 GMT; clocks go forward that night
    now = datetime(2026, 3, 28, 22, 0, tzinfo=UTC)
    assert words.until(datetime(2026, 3, 29, 8, 0, tzinfo=UTC), now, LONDON) == (
        "until 09:00 tomorrow"  # 08:00 UTC is 09:00 BST
    )
    # a time given in UTC is said in the school's zone: 10:00 UTC in June is 11:00 in London
    june = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    assert words.until(datetime(2026, 6, 1, 10, 0, tzinfo=UTC), june, LONDON) == (
        "until 11:00 today"
    )


@pytest.mark.parametrize(
    ("at", "said"),
    [
        (NOW.replace(hour=9, minute=5), "today at 09:05"),
        (NOW - timedelta(days=1), "yesterday at 10:12"),
        (NOW + timedelta(days=1), "tomorrow at 10:12"),
        (NOW - timedelta(days=5), "Wednesday 2 December at 10:12"),
        (datetime(2025, 12, 9, 15, 10, tzinfo=LONDON), "9 December 2025 at 15:10"),
        (None, "no end date"),
    ],
)
def test_moment_in_words(at, said):
    assert words.moment(at, NOW, LONDON) == said


def test_absolute_and_span():
    assert words.absolute(NOW) == "10:12 on Monday 7 December 2026"
    assert words.absolute(NOW, seconds=True) == "10:12:00 on Monday 7 December 2026"
    assert words.span(P2.start, P2.end) == "10:00 to 11:00 on Monday 7 December 2026"
    evening = datetime(2026, 12, 11, 22, 0, tzinfo=LONDON)
    assert words.span(evening, evening + timedelta(hours=2)) == (
        "22:00 to midnight on Friday 11 December 2026"
    )
    assert words.span(evening, evening + timedelta(days=3)) == (
        "22:00 on Friday 11 December 2026 to 22:00 on Monday 14 December 2026"
    )


def _decision(**kw) -> Decision:
    values = dict(
        action=Action.BLOCK,
        identity=PUPIL,
        window=P2,
        category="social_media",
        reason="social_media is blocked for student in lesson (P2).",
        rule="rules[0] (mitm_config.yaml:80)",
        match=ListMatch("social_media", "facebook.com", "social.txt:3", "domain"),
        until=NOW.replace(hour=11, minute=0),
    )
    values.update(kw)
    return Decision(**values)


def _say(decision: Decision, **kw) -> str:
    said = decision_sentence(decision, now=NOW, tz=LONDON, **kw)
    assert not ISO.search(said), said
    assert "_" not in said, said
    return said


def test_the_sentence_a_pupil_reads():
    assert _say(_decision()) == (
        "Social media is blocked for pupils during lessons (P2, until 11:00 today)."
    )


def test_sentences_for_other_windows_roles_and_variants():
    before = Window(
        "before_school", "before school", NOW.replace(hour=0), NOW.replace(hour=8), "main"
    )
    later = NOW.replace(hour=10, minute=20) + timedelta(days=1)
    assert _say(_decision(window=before, until=later)) == (
        "Social media is blocked for pupils before school (until 10:20 tomorrow)."
    )
    guest = Identity(role="guest", site="main")
    assert _say(_decision(identity=guest, until=None)) == (
        "Social media is blocked for guests at all times."
    )
    read_only = _decision(
        category="wikipedia",
        reason="wikipedia is read-only for student in lesson: POST requests (posting, "
        "editing, signing in) are blocked.",
    )
    assert _say(read_only) == (
        "Wikipedia is read-only for pupils during lessons (P2, until 11:00 today): POST "
        "requests (posting, editing, signing in) are blocked."
    )
    blogs = _decision(category="blogs", reason="blogs is blocked for student in lesson (P2).")
    assert _say(blogs).startswith("Blogs are blocked for pupils")
    locked = _decision(category="illegal", rule="locked category illegal", until=None)
    assert _say(locked) == "Sites in the illegal category are blocked for everyone, at all times."
    error = _decision(category=None, window=None, error="KeyError", reason="x", until=None)
    assert _say(error) == "The filter could not check this page, so it is blocked for safety."
    age = _decision(category="age_restricted", reason="Signing up to X needs you to be 13.")
    assert _say(age) == "Signing up to X needs you to be 13."


def test_sentences_for_allowed_decisions():
    lunch = Window("lunch", "Lunch", NOW, NOW + timedelta(hours=1), "main")
    allowed = _decision(action=Action.ALLOW, window=lunch, until=None)
    assert _say(allowed) == "Social media is allowed for pupils at lunchtime."
    override = _decision(
        action=Action.ALLOW,
        exception_id=4,
        rule="curriculum #4: category social_media for group 9B until 2026-12-07T11:00:00+00:00",
        until=NOW.replace(hour=11, minute=0),
    )
    assert _say(override) == (
        "Social media is open until 11:00 today, by a teacher's class override (#4)."
    )


def test_times_for_another_moment_are_full_dates():
    said = decision_sentence(_decision(), now=NOW, tz=LONDON, relative=False)
    assert said.endswith("(P2, until 11:00 on Monday 7 December 2026).")


def test_the_schools_own_words():
    wording = Wording(
        roles={"student": "learners"}, windows={"registration": "tutor time", "lesson": "class"}
    )
    reg = Window("registration", "Registration", NOW, NOW + timedelta(minutes=20), "main")
    assert wording.window(reg) == "tutor time"  # "Registration" is only the kind's own name
    assert _say(_decision(window=reg), wording=wording) == (
        "Social media is blocked for learners during tutor time (until 11:00 today)."
    )
    assert wording.window(P2) == "class (P2)"
    assert wording.people("staff") == "staff" and wording.people("visitor") == "visitor"


def test_exception_words():
    exc = AccessException(
        id=3,
        scope="group",
        scope_value="9B",
        target_kind="category",
        target="social_media",
        starts=NOW - timedelta(hours=1),
        ends=NOW.replace(hour=15, minute=10),
        created_by="mrs.khan",
        kind="curriculum",
    )
    assert words.exception_words(exc, now=NOW, tz=LONDON) == (
        "social media open for group 9B until 15:10 today; a teacher's class override by mrs.khan"
    )
    everyone = AccessException(
        1, "role", "student", "host", "bbc.co.uk", NOW + timedelta(days=1), None, "it"
    )
    assert words.exception_words(everyone, now=NOW, tz=LONDON) == (
        "bbc.co.uk (site) open for pupils (role student) from tomorrow at 10:12, with no end "
        "date; an exception by it"
    )


def test_config_words_are_read_and_checked(tmp_path):
    path = write_config(
        tmp_path,
        {
            "school_name": "Hillside Academy",
            "words": {"roles": {"student": "learners"}, "windows": {"registration": "tutor time"}},
        },
    )
    policy = load_policy(path, data_dir=tmp_path)
    wording = wording_of(policy)
    assert wording.school_name == "Hillside Academy"
    assert wording.people("student") == "learners"
    decision = policy.decide(
        _facts("https://www.facebook.com/", local("2026-11-24T10:30"), "10.20.1.1")
    )
    assert decision_sentence(decision, now=local("2026-11-24T10:30"), tz=LONDON) == (
        "Social media is blocked for pupils during lessons (P2, until 11:00 today)."
    )
    assert decision_sentence(
        decision, now=local("2026-11-24T10:30"), tz=LONDON, wording=wording
    ).startswith("Social media is blocked for learners during lessons")

    bad = copy.deepcopy(BASE)
    path = write_config(
        tmp_path,
        {
            "words": {
                "roles": {"wizard": "wizards", "student": "x" * 61},
                "windows": {"playtime": "play", "lunch": ""},
                "colours": {},
            }
        },
    )
    with pytest.raises(ConfigError) as caught:
        load_policy(path, data_dir=tmp_path)
    text = str(caught.value)
    for expected in (
        "words.roles.wizard: unknown role 'wizard'",
        "words.roles.student: expected at most 60 characters",
        "words.windows.playtime: unknown window kind 'playtime'",
        "words.windows.lunch: expected words, got nothing",
        "words.colours: unknown key",
    ):
        assert expected in text, text
    assert re.search(r"mitm_config\.yaml:\d+: words\.roles\.wizard", text)
    assert bad == BASE  # the fixture is not changed by a test


def _facts(url: str, at: datetime, ip: str):
    from schoolgate.cli.main import facts_for_url

    return facts_for_url(url, at=at, method="GET", client_ip=ip, user=None)


def test_a_real_decision_from_the_shipped_timetable(tmp_path):
    policy = load_policy(write_config(tmp_path), data_dir=tmp_path)
    at = local("2026-11-24T07:30")  # a Tuesday, before school
    decision = policy.decide(_facts("https://www.facebook.com/", at, "10.20.1.1"), ExceptionSet())
    said = decision_sentence(decision, now=at, tz=LONDON, wording=wording_of(policy))
    assert said.startswith("Social media is blocked for pupils before school (until ")
    assert "before_school" not in said
