"""The sanction ladder, ban state, config validation and the ban store (controllable clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from schoolgate.core.circumvention_settings import load_circumvention
from schoolgate.core.configfile import Issues, Section, load_yaml
from schoolgate.core.sanctions import (
    DISABLED,
    BanBook,
    BanState,
    Ladder,
    SanctionSettings,
    SanctionStage,
    Supervision,
    load_sanctions,
    parse_subject,
    subject_for,
)

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


class Clock:
    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def tick(self, **kw) -> datetime:
        self.now += timedelta(**kw)
        return self.now


SETTINGS = SanctionSettings(
    window_minutes=10,
    repeat_minutes=2,
    severity_points={1: 0.5, 2: 1.0, 3: 2.0},
    stages=(
        SanctionStage(1, "warn"),
        SanctionStage(2, "lockout", 5),
        SanctionStage(3, "ban", 10080),
    ),
)


def key(host: str) -> tuple:
    return ("listed_host", "proxy", host, "")


# -- the ladder -----------------------------------------------------------------------------------


def test_ladder_warn_lockout_ban_within_window():
    clock = Clock()
    ladder = Ladder(SETTINGS, clock=clock)
    first = ladder.observe("user:sam", key("a.test"), 2, event_ref="e1")
    assert (first.action, first.total, first.stage) == ("warn", 1.0, 0)
    assert first.ban is None
    ladder.warning_shown("user:sam")
    clock.tick(minutes=1)
    second = ladder.observe("user:sam", key("b.test"), 2, event_ref="e2")
    assert second.action == "lockout"
    assert second.ban.kind == "lockout"
    assert second.ban.ends - second.ban.starts == timedelta(minutes=5)
    clock.tick(minutes=1)
    third = ladder.observe("user:sam", key("c.test"), 2, current=second.ban, event_ref="e3")
    assert third.action == "ban"
    ban = third.ban
    assert ban.kind == "ban" and ban.supervised_only
    assert ban.ends == clock.now + timedelta(minutes=10080)
    assert ban.events == ("e1", "e2", "e3")
    assert "3 points in 10 minutes" in ban.reason and ban.stage == 3


def test_events_leave_the_window():
    clock = Clock()
    ladder = Ladder(SETTINGS, clock=clock)
    ladder.observe("user:sam", key("a.test"), 2)
    ladder.warning_shown("user:sam")
    clock.tick(minutes=6)
    ladder.observe("user:sam", key("b.test"), 2)  # lockout at 2 points
    clock.tick(minutes=5)  # the first has left the window
    assert ladder.total("user:sam") == 1.0
    out = ladder.observe("user:sam", key("c.test"), 2)
    # the total fell to 1 as the first event left the window: 1 -> 2 crosses lockout again
    assert out.total == 2.0 and out.action == "lockout"


def test_crossing_again_after_falling_fires_again():
    clock = Clock()
    ladder = Ladder(SETTINGS, clock=clock)
    assert ladder.observe("u", key("a"), 2).action == "warn"
    clock.tick(minutes=11)
    assert ladder.total("u") == 0
    assert ladder.observe("u", key("b"), 2).action == "warn"


def test_repeat_of_same_finding_counts_once_per_repeat_minutes():
    clock = Clock()
    ladder = Ladder(SETTINGS, clock=clock)
    assert ladder.observe("u", key("vpn.test"), 2).counted
    ladder.warning_shown("u")
    for _ in range(50):  # a VPN app retrying
        clock.tick(seconds=2)
        out = ladder.observe("u", key("vpn.test"), 2)
        assert not out.counted and out.points == 0 and out.ban is None
    assert ladder.total("u") == 1.0
    clock.tick(seconds=30)  # 2 min 10 s after the first
    assert ladder.observe("u", key("vpn.test"), 2).action == "lockout"


def test_severity_weighting_and_highest_stage_crossed():
    clock = Clock()
    ladder = Ladder(SETTINGS, clock=clock)
    ladder.warning_shown("u")  # nothing to show yet: no climb has started
    assert ladder.observe("u", key("a"), 1).action == "record"  # 0.5 points
    ladder.warning_shown("u")
    out = ladder.observe("u", key("tor"), 3)  # 0.5 -> 2.5 crosses warn and lockout
    assert out.action == "lockout" and out.total == 2.5
    assert ladder.observe("u", key("b"), 1).action == "ban"  # 2.5 -> 3.0


def test_the_warning_comes_before_a_lockout():
    """However fast the points come, a pupil who has not seen the warning page is warned;
    the stage reached meanwhile waits for the first attempt after the warning."""
    clock = Clock()
    ladder = Ladder(SETTINGS, clock=clock)
    out = ladder.observe("u", key("tor"), 3)  # 0 -> 2: crosses warn and lockout at once
    assert (out.action, out.stage, out.ban) == ("warn", 0, None)
    out = ladder.observe("u", key("b"), 2)  # 2 -> 3 crosses ban: still not warned
    assert out.action == "warn" and out.ban is None
    ladder.warning_shown("u")
    out = ladder.observe("u", key("c"), 1)  # 3 -> 3.5 crosses nothing: the held ban fires
    assert out.action == "ban" and out.ban.kind == "ban"
    clock.tick(minutes=11)  # a quiet window: the next climb warns first again
    assert ladder.observe("u", key("d"), 3).action == "warn"


def test_one_attempt_counts_once():
    ladder = Ladder(SETTINGS, clock=Clock())
    first = ladder.observe("u", key("1.1.1.1"), 2)
    second = ladder.observe("u", ("doh", "doh", "1.1.1.1", ""), 2, count=False)
    assert first.counted and not second.counted and second.points == 0
    assert ladder.total("u") == 1.0


def test_not_sanctionable_is_alert_only():
    ladder = Ladder(SETTINGS, clock=Clock())
    for host in ("a", "b", "c", "d"):
        out = ladder.observe("user:teacher", key(host), 2, sanctionable=False)
        assert out.action == "alert" and out.ban is None


def test_sanctions_disabled_alert_only():
    ladder = Ladder(DISABLED, clock=Clock())
    outs = [ladder.observe("u", key(h), 2) for h in "abc"]
    assert [o.action for o in outs] == ["alert", "alert", "alert"]


def test_ban_in_force_is_not_made_again():
    clock = Clock()
    ladder = Ladder(SETTINGS, clock=clock)
    current = BanState("b1", "u", "ban", T0, T0 + timedelta(days=7), "x")
    ladder.observe("u", key("a"), 2)
    ladder.warning_shown("u")
    ladder.observe("u", key("b"), 2, current=current)
    out = ladder.observe("u", key("c"), 2, current=current)
    assert out.action == "already" and out.ban is None


def test_quiet_replay_fires_nothing_and_keeps_counting():
    clock = Clock()
    ladder = Ladder(SETTINGS, clock=clock)
    assert ladder.observe("u", key("a"), 2, at=T0, quiet=True).action == "record"
    assert ladder.observe("u", key("b"), 2, at=T0, quiet=True).action == "record"
    ladder.warning_shown("u", T0)
    assert ladder.observe("u", key("c"), 2).action == "ban"


def test_ladder_memory_is_bounded(monkeypatch):
    import schoolgate.core.sanctions as bans

    monkeypatch.setattr(bans, "MAX_SUBJECTS", 100)
    ladder = Ladder(SETTINGS, clock=Clock())
    for i in range(1000):
        ladder.observe(f"device:10.0.{i // 250}.{i % 250}", key("a"), 2)
    assert len(ladder) == 100


# -- ban state ------------------------------------------------------------------------------


def test_book_suspended_and_supervision():
    ban = BanState("b1", "user:sam", "ban", T0, T0 + timedelta(days=7), "why", id=1)
    lockout = BanState("b2", "user:sam", "lockout", T0, T0 + timedelta(minutes=5), "why")
    book = BanBook([lockout, ban])
    assert book.suspended("user:sam", T0 + timedelta(minutes=1)) is ban  # the ban decides
    assert book.suspended("user:other", T0) is None
    assert book.suspended("user:sam", T0 - timedelta(seconds=1)) is None
    assert book.suspended("user:sam", T0 + timedelta(days=7)) is None  # ended
    sup = Supervision("s1", "user:sam", "mr.jones", T0, T0 + timedelta(minutes=30), "lesson")
    book = BanBook([ban], [sup])
    assert book.suspended("user:sam", T0 + timedelta(minutes=10)) is None
    assert book.suspended("user:sam", T0 + timedelta(minutes=31)) is ban
    lifted = BanState("b3", "user:sam", "ban", T0, None, "x", lifted_at=T0 + timedelta(hours=1))
    assert BanBook([lifted]).suspended("user:sam", T0 + timedelta(hours=2)) is None


def test_lockout_is_not_supervised():
    lockout = BanState("b2", "user:sam", "lockout", T0, T0 + timedelta(minutes=5), "why")
    sup = Supervision("s1", "user:sam", "mr.jones", T0, T0 + timedelta(minutes=30), "lesson")
    assert BanBook([lockout], [sup]).suspended("user:sam", T0) is lockout


def test_subjects():
    assert subject_for("Sam", "10.0.0.1") == "user:sam"
    assert subject_for(None, "::ffff:10.0.0.1") == "device:10.0.0.1"
    assert subject_for(None, None) is None
    assert parse_subject("sam") == "user:sam"
    assert parse_subject("10.1.2.3") == "device:10.1.2.3"
    assert parse_subject("device:10.1.2.3") == "device:10.1.2.3"
    assert parse_subject("user:Sam") == "user:sam"


def test_essentials_match_label_boundaries():
    s = SanctionSettings(essentials=("login.microsoftonline.com", "classroom.google.com"))
    assert s.essential("login.microsoftonline.com")
    assert s.essential("eu.login.microsoftonline.com")
    assert not s.essential("evillogin.microsoftonline.com")
    assert not s.essential("google.com")


# -- config ---------------------------------------------------------------------------------------


def section_of(tmp_path: Path, text: str, key: str) -> tuple[Section | None, Issues]:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    issues = Issues()
    root = Section(load_yaml(path, issues), file="c.yaml", path="", issues=issues)
    return root.section(key), issues


def test_load_sanctions_example(tmp_path):
    sec, issues = section_of(
        tmp_path,
        """
bans:
  window_minutes: 10
  stages:
    - {points: 1, action: warn}
    - {points: 2, action: lockout, minutes: 5}
    - {points: 3, action: ban, minutes: 10080}
  essentials: [login.microsoftonline.com, Classroom.Google.com]
  roles: [student]
  severity_points: {1: 1, 3: 3}
""",
        "bans",
    )
    s = load_sanctions(sec, known_roles=["student", "staff"])
    assert not issues, issues.items
    assert s.enabled and s.window_minutes == 10
    assert [st.action for st in s.stages] == ["warn", "lockout", "ban"]
    assert s.stages[2].minutes == 10080
    assert s.essentials == ("login.microsoftonline.com", "classroom.google.com")
    assert s.roles == frozenset({"student"})
    assert s.points_for(1) == 1.0 and s.points_for(2) == 1.0 and s.points_for(3) == 3.0


def test_load_sanctions_reports_every_error_with_lines(tmp_path):
    sec, issues = section_of(
        tmp_path,
        """
bans:
  window_minutes: 0
  stages:
    - {points: 2, action: warn}
    - {points: 1, action: lockout, minutes: 5}
    - {points: 3, action: ban}
    - {points: 4, action: explode, minutes: 1}
  roles: [student, wizard]
  essentials: ["not a host/x"]
  severity_points: {4: 1}
  colour: blue
""",
        "bans",
    )
    load_sanctions(sec, known_roles=["student", "staff"])
    text = "\n".join(str(i) for i in issues.items)
    assert "c.yaml:3: bans.window_minutes" in text
    assert "bans.stages[1].points: stages must be in increasing order" in text
    assert "bans.stages[2]: a ban stage needs 'minutes'" in text
    assert "bans.stages[3].action: expected one of warn, lockout, ban" in text
    assert "bans.roles[1]: unknown role 'wizard'" in text
    assert "bans.essentials[0]" in text
    assert "bans.severity_points.4" in text
    assert "bans.colour: unknown key" in text
    assert len(issues.items) == 8


def test_no_bans_section_means_sanctions_off():
    assert load_sanctions(None).enabled is False


def test_load_circumvention(tmp_path):
    sec, issues = section_of(
        tmp_path,
        """
circumvention:
  detectors: [listed_host, doh, nonsense]
  allowed_ip_literals: [10.0.0.0/8, 300.1.1.1]
  allowed_ports: [80, 443, 70000]
""",
        "circumvention",
    )
    c = load_circumvention(sec)
    text = "\n".join(str(i) for i in issues.items)
    assert "circumvention.detectors[2]: unknown detector 'nonsense'" in text
    assert "circumvention.allowed_ip_literals[1]" in text
    assert "circumvention.allowed_ports[2]" in text
    assert c.detectors == ("listed_host", "doh")
    assert c.allowed_ip_literals == ("10.0.0.0/8",)
    assert c.allowed_ports == (80, 443)
    sec, issues = section_of(tmp_path, "circumvention: {detectors: all}\n", "circumvention")
    assert load_circumvention(sec).detectors is None and not issues


def test_load_what_a_filtered_role_may_not_do(tmp_path):
    sec, issues = section_of(
        tmp_path,
        """
circumvention:
  filtered_roles: [student, wizard]
  allowed_raw_destinations: [10.1.2.3, "mis.school.example:1433", "10.0.0.0/33", "a..b"]
  destination_mismatch: ignore
""",
        "circumvention",
    )
    c = load_circumvention(sec, known_roles={"student", "staff"})
    text = "\n".join(str(i) for i in issues.items)
    assert "circumvention.filtered_roles[1]: unknown role 'wizard'" in text
    assert "circumvention.allowed_raw_destinations[2]" in text
    assert "circumvention.allowed_raw_destinations[3]" in text
    assert "circumvention.destination_mismatch: expected one of refuse, connect_to_name" in text
    assert all(".yaml:" in str(i) for i in issues.items)  # each names its file and line
    assert c.filtered_roles == frozenset({"student"})
    assert c.filters("student") and not c.filters("staff")
    assert [d.text for d in c.allowed_raw_destinations] == ["10.1.2.3", "mis.school.example:1433"]
    assert c.destination_mismatch == "refuse"
    default = load_circumvention(None)
    assert default.filters("staff") and default.filters(None)  # every role, by default
    assert default.address_allowed("10.9.8.7") and not default.address_allowed("8.8.8.8")


# -- the store ------------------------------------------------------------------------------------


@pytest.fixture
def sessions(tmp_path):
    from schoolgate.storage.db import open_database

    return open_database(f"sqlite:///{tmp_path}/bans.db")


def test_store_ban_lift_supervise_audit(sessions):
    from schoolgate.storage.bans import (
        BanError,
        ban_history,
        bans_current,
        lift_ban,
        list_bans,
        save_ban,
        start_supervision,
        supervisions_current,
    )

    now = datetime.now(UTC)
    ban = BanState(
        "bref1",
        "user:sam",
        "ban",
        now,
        now + timedelta(days=7),
        "three proxies",
        stage=3,
        points=3.0,
        events=("e1", "e2", "e3"),
    )
    with sessions() as s:
        row = save_ban(s, ban, role="student", client_ip="10.0.0.5")
        assert save_ban(s, ban).id == row.id  # idempotent on ref
        s.commit()
        ban_id = row.id
    with sessions() as s:
        current = bans_current(s, now + timedelta(minutes=1))
        assert [b.ref for b in current] == ["bref1"] and current[0].events == ("e1", "e2", "e3")
        with pytest.raises(BanError, match="not banned"):
            start_supervision(s, "alex", by="mr.jones", minutes=30, reason="lesson")
        with pytest.raises(BanError, match="1 to 480"):
            start_supervision(s, "sam", by="mr.jones", minutes=600, reason="lesson")
        sup = start_supervision(s, "Sam", by="mr.jones", minutes=30, reason="ICT lesson")
        s.commit()
        assert sup.ban_id == ban_id
        assert [x.staff for x in supervisions_current(s, datetime.now(UTC))] == ["mr.jones"]
    with sessions() as s:
        with pytest.raises(BanError, match="reason"):
            lift_ban(s, ban_id, by="it.support", reason="")
        lift_ban(s, ban_id, by="it.support", reason="appeal upheld")
        s.commit()
        with pytest.raises(BanError, match="already lifted"):
            lift_ban(s, ban_id, by="it.support", reason="again")
        assert bans_current(s, datetime.now(UTC)) == []
        assert supervisions_current(s, datetime.now(UTC)) == []  # ended with the ban
        assert list_bans(s) == [] and len(list_bans(s, include_ended=True)) == 1
        actions = [a.action for a in ban_history(s, ban_id)]
        assert actions == ["ban.create", "supervision.start", "ban.lift", "supervision.end"]


def test_store_expiry_is_audited_once(sessions):
    from schoolgate.storage.bans import ban_history, note_expired, save_ban

    now = datetime.now(UTC)
    with sessions() as s:
        row = save_ban(
            s,
            BanState(
                "bref2",
                "device:10.0.0.9",
                "lockout",
                now - timedelta(minutes=10),
                now - timedelta(minutes=5),
                "x",
            ),
        )
        s.commit()
        assert note_expired(s, now) == 1
        assert note_expired(s, now) == 0
        s.commit()
        assert [a.action for a in ban_history(s, row.id)] == ["lockout.create", "lockout.expire"]


def test_a_ban_for_a_text_that_names_no_one_is_refused(sessions):
    from schoolgate.storage.bans import BanError, add_ban, list_bans, start_supervision

    assert parse_subject("user:") is None
    with sessions() as s:
        for who in ("user:", "device:", ""):
            with pytest.raises(BanError, match="names no user or device"):
                add_ban(s, who, by="it.support", minutes=60, reason="proxy")
            with pytest.raises(BanError, match="names no user or device"):
                start_supervision(s, who, by="mr.jones", minutes=30, reason="lesson")
        s.commit()
        assert list_bans(s, include_ended=True) == []
