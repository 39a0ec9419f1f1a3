"""What the policy works out once and reuses (the rule of a window, already-normal hosts, the
decision's construction) gives the same answers as working it out for every request: across
period boundaries, for each group, and with exceptions approved or revoked between requests."""

from __future__ import annotations

import dataclasses
import inspect
import random
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from policy_fixtures import LONDON, local, write_config

from schoolgate.core.config import load_policy
from schoolgate.core.hosts import is_normal_host, normalize_host
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
from schoolgate.core.policy import ExceptionSet

STUDENT_IP = "10.20.1.5"
STAFF_IP = "10.10.1.5"


@pytest.fixture
def policy(tmp_path):
    # A fresh policy for each test: nothing worked out by an earlier test can answer for it.
    return load_policy(write_config(tmp_path))


def ask(policy, host: str, at: datetime, *, user=None, ip=STUDENT_IP, exceptions=None):
    facts = RequestFacts(host=host, at=at, path="/", method="GET", client_ip=ip, user=user)
    return policy.decide(facts, exceptions)


def test_the_same_site_across_period_boundaries(policy):
    p1 = ask(policy, "www.facebook.com", local("2026-11-24T09:30"))
    p2 = ask(policy, "www.facebook.com", local("2026-11-24T10:30"))
    brk = ask(policy, "www.facebook.com", local("2026-11-24T11:10"))
    p3 = ask(policy, "www.facebook.com", local("2026-11-24T11:30"))
    lunch = ask(policy, "www.facebook.com", local("2026-11-24T12:30"))
    p4 = ask(policy, "www.facebook.com", local("2026-11-24T13:30"))
    assert not p1.allowed and "(P1)" in p1.reason and p1.until == local("2026-11-24T11:00")
    assert not p2.allowed and "(P2)" in p2.reason and p2.until == local("2026-11-24T11:00")
    assert brk.allowed and brk.until is None and "allowed for student in break" in brk.reason
    assert not p3.allowed and "(P3)" in p3.reason and p3.until == local("2026-11-24T12:20")
    assert lunch.allowed and "in lunch" in lunch.reason
    assert not p4.allowed and "(P4)" in p4.reason and p4.until is not None
    # Back to the first lesson: the same answer as the first time, not the last one's.
    again = ask(policy, "www.facebook.com", local("2026-11-24T09:45"))
    assert (again.action, again.reason, again.until, again.rule) == (
        p1.action,
        p1.reason,
        p1.until,
        p1.rule,
    )
    # The same wall-clock time a day later is another window with its own end.
    wednesday = ask(policy, "www.facebook.com", local("2026-11-25T09:30"))
    assert wednesday.until == local("2026-11-25T11:00")
    assert wednesday.window.start == local("2026-11-25T09:00")


def test_each_group_and_role_gets_its_own_rule_in_the_same_window(policy):
    after = local("2026-11-24T16:00")
    ben = ask(policy, "facebook.com", after, user="ben")  # 9B: no after-school rule
    gus = ask(policy, "facebook.com", after, user="gus")  # 11X: the study-club rule
    staff = ask(policy, "facebook.com", after, ip=STAFF_IP)
    ben_again = ask(policy, "facebook.com", after, user="ben")
    assert not ben.allowed and gus.allowed and staff.allowed and not ben_again.allowed
    assert "Year 11 study club" in gus.rule or "rules[3]" in gus.rule
    assert ben_again.reason == ben.reason and ben_again.rule == ben.rule
    assert "student" in ben.reason and "staff" in staff.reason


def test_an_exception_approved_or_revoked_between_requests_counts_at_once(policy):
    p2 = local("2026-11-24T10:30")
    assert not ask(policy, "youtube.com", p2, user="ben").allowed
    approved = ExceptionSet(
        [
            AccessException(
                id=11,
                scope="group",
                scope_value="9B",
                target_kind="category",
                target="social_media",
                starts=local("2026-11-24T10:00"),
                ends=local("2026-11-24T11:00"),
                created_by="mrs.khan",
                reason="Media studies",
                kind="curriculum",
            )
        ]
    )
    opened = ask(policy, "youtube.com", p2, user="ben", exceptions=approved)
    assert opened.allowed and opened.exception_id == 11
    assert not ask(policy, "youtube.com", p2, user="cara", exceptions=approved).allowed
    # Revoked: the gateway passes the exceptions without it.
    closed = ask(policy, "youtube.com", p2, user="ben", exceptions=ExceptionSet())
    assert not closed.allowed and closed.exception_id is None
    # It ends at 11:00; a later lesson is blocked again even with it still in the set.
    p3 = ask(policy, "youtube.com", local("2026-11-24T11:30"), user="ben", exceptions=approved)
    assert not p3.allowed and p3.exception_id is None


@pytest.mark.parametrize(
    "raw", ["WWW.Facebook.COM", "www.facebook.com.", "www.facebook.com:443", "fa%63ebook.com"]
)
def test_a_host_that_is_not_normal_decides_as_its_normal_form(policy, raw):
    at = local("2026-11-24T10:30")
    plain = ask(policy, "www.facebook.com", at)
    other = ask(policy, raw, at)
    assert not other.allowed and other.match == plain.match and other.reason == plain.reason


HOSTISH = st.text(alphabet="abcXYZ019-_.%:/@[]é Σ\u3002", max_size=14)


@settings(max_examples=400, deadline=None)
@given(HOSTISH)
def test_a_host_said_to_be_normal_is_its_own_normal_form(raw):
    if is_normal_host(raw):
        assert normalize_host(raw) == raw


def test_new_decision_builds_what_the_class_builds():
    fields = dataclasses.fields(Decision)
    params = list(inspect.signature(new_decision).parameters.values())
    # Every field of Decision, in order, with the same default: a field added to the class
    # and forgotten here fails this test.
    assert [p.name for p in params] == [f.name for f in fields]
    assert [p.default for p in params] == [
        inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default for f in fields
    ]
    at = local("2026-11-24T10:30")
    values = dict(
        action=Action.BLOCK,
        identity=Identity(role="student", site="main", client_ip=STUDENT_IP),
        window=Window("lesson", "P2", at, at, "main"),
        category="social_media",
        reason="social_media is blocked",
        rule="rules[0]",
        match=ListMatch("social_media", "facebook.com", "inline:1", "domain"),
        exception_id=3,
        until=at,
        error="none",
    )
    built = new_decision(**values)
    assert type(built) is Decision and built == Decision(**values)
    assert new_decision(Action.ALLOW, values["identity"], None, None, "ok") == Decision(
        Action.ALLOW, values["identity"], None, None, "ok"
    )
    assert dataclasses.replace(built, reason="x").reason == "x"


def _instants() -> list[datetime]:
    """Every 10 minutes of a school day, of the Sunday the clocks go back and of the Monday
    after (in UTC), in order and then shuffled."""
    start = datetime(2026, 10, 24, 23, 0, tzinfo=UTC)
    times = [start + timedelta(minutes=10 * i) for i in range(3 * 24 * 6)]
    day = datetime(2026, 11, 24, 0, 0, tzinfo=UTC)
    times += [day + timedelta(minutes=10 * i) for i in range(144)]
    shuffled = list(times)
    random.Random(23).shuffle(shuffled)
    return times + shuffled


@pytest.mark.parametrize("zone", [UTC, timezone(timedelta(hours=1))], ids=["UTC", "+01:00"])
def test_the_gateways_clock_decides_as_the_schools_clock(tmp_path, zone):
    # The gateway stamps requests in UTC; the timetable is in the school's zone. A block or an
    # allow must not depend on which of the two a request's time is written in, across period
    # boundaries and the night the clocks go back, whatever the order of the requests.
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    gateway = load_policy(write_config(tmp_path / "a"))
    school = load_policy(write_config(tmp_path / "b"))
    for i, at in enumerate(_instants()):
        host = "www.facebook.com" if i % 2 else "www.example.org"
        asked = ask(gateway, host, at.astimezone(zone))
        if i % 7 == 0:  # now and then a question in the school's zone, as `explain` asks
            ask(gateway, host, at.astimezone(LONDON))
        expected = ask(school, host, at.astimezone(LONDON))
        assert (asked.action, asked.window, asked.until, asked.reason) == (
            expected.action,
            expected.window,
            expected.until,
            expected.reason,
        ), at
