"""The decision engine: roles x windows x categories, lists, exceptions, ages, fail closed."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from policy_fixtures import ROOT, local, write_config

from schoolgate.core.config import load_policy
from schoolgate.core.model import AccessException, Action, RequestFacts
from schoolgate.core.policy import ExceptionSet

STUDENT_IP = "10.20.1.5"
STAFF_IP = "10.10.1.5"
GUEST_IP = "192.168.1.9"

# Tuesday 24 November 2026, autumn term.
P2 = local("2026-11-24T10:30")
BREAK = local("2026-11-24T11:10")
LUNCH = local("2026-11-24T12:30")
AFTER = local("2026-11-24T16:00")
SATURDAY = local("2026-11-28T10:30")


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return load_policy(write_config(tmp_path_factory.mktemp("policy")))


def ask(
    policy,
    url: str,
    at: datetime,
    *,
    ip: str = STUDENT_IP,
    user: str | None = None,
    method: str | None = "GET",
    host_only: bool = False,
    exceptions=None,
):
    scheme, _, rest = url.partition("://")
    host, _, path = rest.partition("/")
    facts = RequestFacts(
        host=host,
        at=at,
        path=None if host_only else "/" + path,
        method=None if host_only else method,
        scheme=scheme,
        client_ip=ip,
        user=user,
    )
    return policy.decide(facts, exceptions)


# -- roles and windows -----------------------------------------------------------------------
def test_student_blocked_from_social_media_in_a_lesson_until_break(policy):
    d = ask(policy, "https://www.facebook.com/", P2)
    assert d.action is Action.BLOCK
    assert (d.identity.role, d.window.kind, d.category) == ("student", "lesson", "social_media")
    assert d.match.entry == "facebook.com"
    assert d.until == local("2026-11-24T11:00")
    assert "rules[0]" in d.rule


def test_student_allowed_social_media_at_break_and_lunch(policy):
    assert ask(policy, "https://www.instagram.com/", BREAK).allowed
    assert ask(policy, "https://www.instagram.com/", LUNCH).allowed


def test_staff_blocked_in_lessons_but_free_in_breaks_and_after_school(policy):
    assert not ask(policy, "https://facebook.com/", P2, ip=STAFF_IP).allowed
    for at in (BREAK, LUNCH, AFTER, SATURDAY):
        assert ask(policy, "https://facebook.com/", at, ip=STAFF_IP).allowed, at


def test_student_after_school_and_at_weekends_is_blocked(policy):
    assert not ask(policy, "https://facebook.com/", AFTER).allowed
    d = ask(policy, "https://facebook.com/", SATURDAY)
    assert not d.allowed and d.window.kind == "closed"


def test_group_rule_beats_role_rule(policy):
    # gus (11X) has a study-club rule after school; ben (9B) does not.
    assert ask(policy, "https://facebook.com/", AFTER, user="gus").allowed
    assert not ask(policy, "https://facebook.com/", AFTER, user="ben").allowed


def test_unknown_client_is_guest_and_always_blocked_from_social_media(policy):
    for at in (P2, BREAK, SATURDAY):
        d = ask(policy, "https://facebook.com/", at, ip=GUEST_IP)
        assert d.identity.role == "guest" and not d.allowed
    assert ask(policy, "https://www.bbc.co.uk/bitesize", P2, ip=GUEST_IP).allowed


def test_half_term_is_closed(policy):
    d = ask(policy, "https://facebook.com/", local("2026-10-28T10:30"))
    assert d.window.kind == "closed" and "half term" in d.window.name.lower()


def test_friday_afternoon_block_lasts_until_monday_break(policy):
    d = ask(policy, "https://facebook.com/", local("2026-11-27T14:30"))
    assert not d.allowed
    assert d.until == local("2026-11-30T11:00")


def test_dst_is_honoured_for_utc_request_times(policy):
    # Tuesday 13 April 2027 (summer term) is BST: 09:30 UTC is 10:30 local, a lesson, and
    # 10:05 UTC is 11:05 local, break.
    in_lesson = ask(policy, "https://facebook.com/", datetime(2027, 4, 13, 9, 30, tzinfo=UTC))
    assert in_lesson.window.kind == "lesson"
    at_break = ask(policy, "https://facebook.com/", datetime(2027, 4, 13, 10, 5, tzinfo=UTC))
    assert at_break.window.kind == "break" and at_break.allowed
    # In November (GMT), 10:05 UTC is 10:05 local: still P2.
    gmt = ask(policy, "https://facebook.com/", datetime(2026, 11, 24, 10, 5, tzinfo=UTC))
    assert gmt.window.kind == "lesson" and not gmt.allowed


# -- matching ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "host",
    [
        "facebook.com",
        "m.facebook.com",
        "WWW.FACEBOOK.COM.",
        "www.facebook.com:443",
        "a.b.c.facebook.com",
    ],
)
def test_domain_rule_covers_subdomains_case_port_and_trailing_dot(policy, host):
    assert ask(policy, f"https://{host}/", P2).category == "social_media"


@pytest.mark.parametrize("host", ["evilfacebook.com", "facebook.com.evil.org", "facebookcom"])
def test_label_boundaries(policy, host):
    d = ask(policy, f"https://{host}/", P2)
    assert d.allowed and d.category is None


def test_idn_and_punycode_match_alike(policy):
    assert ask(policy, "https://xn--bcher-social-dlb.example/", P2).category == "social_media"
    assert ask(policy, "https://bücher-social.example/", P2).category == "social_media"


def test_path_rule_only_matches_its_path_and_needs_the_path(policy):
    assert ask(policy, "http://games.example/play/level1", P2).category == "social_media"
    assert ask(policy, "http://games.example/homework", P2).allowed
    assert ask(policy, "https://games.example/", P2, host_only=True).allowed


def test_allowlist_entry_is_more_specific_and_wins(policy):
    d = ask(policy, "https://education.facebook.com/", P2)
    assert d.allowed and d.match.category == "allowlist"
    assert ask(policy, "https://www.youtube.com/edu/maths", P2).allowed
    assert not ask(policy, "https://www.youtube.com/watch?v=x", P2).allowed


# -- read only -----------------------------------------------------------------------------------
def test_read_only_lets_reading_through_and_blocks_posting(policy):
    url = "https://en.wikipedia.org/wiki/Photosynthesis"
    assert ask(policy, url, P2).allowed
    posted = ask(policy, url, P2, method="POST")
    assert not posted.allowed and "POST" in posted.reason
    edit = ask(policy, "https://en.wikipedia.org/w/index.php?title=X&action=edit", P2)
    assert not edit.allowed
    login = ask(policy, "https://en.wikipedia.org/wiki/Special:UserLogin", P2)
    assert not login.allowed


def test_read_only_sign_in_page_cannot_hide_behind_percent_encoding(policy):
    for path in (
        "/wiki/Special%3AUserLogin",
        "/wiki/special%3auserlogin",
        "/w/index.php?title=X&action%3Dedit",
    ):
        assert not ask(policy, f"https://en.wikipedia.org{path}", P2).allowed, path


def test_read_only_without_interception_fails_closed(policy):
    d = ask(policy, "https://en.wikipedia.org/", P2, host_only=True)
    assert not d.allowed and "not inspected" in d.reason


def test_read_only_does_not_apply_at_break(policy):
    assert ask(policy, "https://en.wikipedia.org/w/index.php", BREAK, method="POST").allowed


# -- locked categories -----------------------------------------------------------------------
def test_locked_category_blocks_everyone_always_and_no_exception_opens_it(policy):
    everyone = ExceptionSet(
        [
            AccessException(
                id=1,
                scope="everyone",
                scope_value="",
                target_kind="host",
                target="bad.example",
                starts=P2 - timedelta(days=1),
                ends=None,
            )
        ]
    )
    for ip, at in ((STAFF_IP, LUNCH), (STUDENT_IP, BREAK), (GUEST_IP, SATURDAY)):
        d = ask(policy, "http://www.bad.example/", at, ip=ip, exceptions=everyone)
        assert not d.allowed and d.category == "illegal" and "locked" in d.rule


# -- age restrictions ----------------------------------------------------------------------------
SIGNUP = "https://www.instagram.com/accounts/emailsignup/"


def test_under_age_student_cannot_sign_up_even_at_break(policy):
    d = ask(policy, SIGNUP, BREAK, user="dev")  # born 2015: 11
    assert not d.allowed and d.category == "age_restricted" and "13" in d.reason


def test_old_enough_student_can_open_sign_up_at_break(policy):
    assert ask(policy, SIGNUP, BREAK, user="ben").allowed  # born 2012: 14


def test_year_group_is_used_when_there_is_no_date_of_birth(policy):
    assert not ask(policy, SIGNUP, BREAK, user="eve").allowed  # 8C: at least 12
    assert ask(policy, SIGNUP, BREAK, user="fin").allowed  # Year 10: at least 14


def test_unknown_age_fails_closed(policy):
    d = ask(policy, SIGNUP, BREAK)  # student by network: no age known
    assert not d.allowed and "not known" in d.reason


def test_staff_are_not_age_checked(policy):
    assert ask(policy, SIGNUP, LUNCH, ip=STAFF_IP).allowed


def test_linkedin_needs_sixteen(policy):
    d = ask(policy, "https://www.linkedin.com/signup", BREAK, user="ben")
    assert not d.allowed and "16" in d.reason


# -- identity ------------------------------------------------------------------------------------
def test_roster_identity_beats_the_network(policy):
    d = ask(policy, "https://facebook.com/", LUNCH, ip=STUDENT_IP, user="Alice")
    assert d.identity.role == "staff" and d.identity.source == "roster"


def test_roster_alias_maps_mis_role_names(policy):
    assert ask(policy, "https://x.org/", P2, user="gus").identity.role == "student"


def test_user_not_on_roster_falls_back_to_the_network(policy):
    d = ask(policy, "https://facebook.com/", P2, ip=STAFF_IP, user="mallory")
    assert d.identity.role == "staff" and "not on the roster" in d.identity.rule


# -- exceptions ------------------------------------------------------------------------------------
def _exc(**kw):
    base = dict(
        id=7,
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
    base.update(kw)
    return AccessException(**base)


def test_group_exception_opens_category_for_that_group_only(policy):
    exceptions = [_exc()]
    d = ask(policy, "https://www.youtube.com/watch?v=1", P2, user="ben", exceptions=exceptions)
    assert d.allowed and d.exception_id == 7 and d.until == local("2026-11-24T11:00")
    assert "Media studies" in d.reason
    assert not ask(
        policy, "https://www.youtube.com/", P2, user="cara", exceptions=exceptions
    ).allowed


def test_exception_expires(policy):
    exceptions = [_exc()]
    later = local("2026-11-24T13:30")  # P4
    assert not ask(policy, "https://youtube.com/", later, user="ben", exceptions=exceptions).allowed
    early = local("2026-11-24T09:30")  # before it starts
    assert not ask(policy, "https://youtube.com/", early, user="ben", exceptions=exceptions).allowed


@pytest.mark.parametrize(
    "scope,value,ip,user,expected",
    [
        ("user", "cara", STUDENT_IP, "cara", True),
        ("user", "cara", STUDENT_IP, "ben", False),
        ("role", "staff", STAFF_IP, None, True),
        ("role", "staff", STUDENT_IP, None, False),
        ("network", "10.20.1.0/24", "10.20.1.77", None, True),
        ("network", "10.20.1.0/24", "10.20.2.77", None, False),
        ("site", "main", STUDENT_IP, None, True),
        ("everyone", "", GUEST_IP, None, True),
    ],
)
def test_exception_scopes(policy, scope, value, ip, user, expected):
    exc = _exc(scope=scope, scope_value=value, target_kind="host", target="www.youtube.com")
    d = ask(policy, "https://www.youtube.com/watch", P2, ip=ip, user=user, exceptions=[exc])
    assert d.allowed is expected


def test_host_exception_covers_subdomains_only(policy):
    exc = _exc(scope="everyone", scope_value="", target_kind="host", target="youtube.com")
    assert ask(policy, "https://m.youtube.com/", P2, exceptions=[exc]).allowed
    assert not ask(policy, "https://facebook.com/", P2, exceptions=[exc]).allowed


def test_exception_does_not_beat_an_age_restriction(policy):
    exc = _exc(scope="everyone", scope_value="", target="social_media")
    assert not ask(policy, SIGNUP, P2, user="dev", exceptions=[exc]).allowed


# -- several sites ------------------------------------------------------------------------------
def test_each_site_uses_its_own_timetable(tmp_path):
    boarding = ROOT / "schedules" / "boarding-example.yaml"
    sites = {
        "main": {
            "timetable": str(ROOT / "schedules" / "default.yaml"),
            "networks": [{"cidr": "10.20.0.0/16"}],
        },
        "boarding": {
            "timetable": str(boarding),
            "networks": [{"cidr": "10.30.0.0/16", "role": "student"}],
        },
    }
    policy = load_policy(write_config(tmp_path, {"sites": sites}))
    main = ask(policy, "https://facebook.com/", P2, ip=STUDENT_IP)
    house = ask(policy, "https://facebook.com/", P2, ip="10.30.0.8")
    assert main.identity.site == "main" and house.identity.site == "boarding"
    assert main.window.site == "main" and house.window.site == "boarding"
    assert policy.timetables["boarding"].source != policy.timetables["main"].source


# -- failing closed ---------------------------------------------------------------------------
def test_policy_that_cannot_be_evaluated_blocks_and_says_so(tmp_path):
    policy = load_policy(write_config(tmp_path))
    policy.timetables = {}  # simulate a broken policy object
    d = ask(policy, "https://www.bbc.co.uk/", P2)
    assert d.action is Action.BLOCK and d.error and "could not evaluate" in d.reason


def test_decision_json_has_the_documented_keys(policy):
    data = ask(policy, "https://facebook.com/", P2).to_json()
    for key in ("action", "role", "window", "category", "reason"):
        assert key in data
    assert data["action"] == "block" and data["category"] == "social_media"
    assert ask(policy, "https://bbc.co.uk/", P2).to_json()["category"] is None


def test_decide_accepts_a_given_identity(policy):
    facts = RequestFacts(host="facebook.com", at=LUNCH)
    ident = replace(policy.identify(STUDENT_IP, None), role="staff")
    assert policy.decide(facts, identity=ident).allowed
