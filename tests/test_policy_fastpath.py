"""What the policy reads without a call on every request (the identity of an address while no
bindings are consulted, the timetable's current window) answers as the full work would: a
binding that appears is used at once, and a window is never answered outside its bounds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from policy_fixtures import local, write_config

from schoolgate.core.binding import Binding
from schoolgate.core.config import load_policy
from schoolgate.core.model import RequestFacts

STUDENT_IP = "10.20.1.5"
NOW = datetime(2026, 11, 24, 10, 30, tzinfo=UTC)


class OneBinding:
    def __init__(self, binding: Binding) -> None:
        self.bound = {binding.address: binding}

    def binding(self, address: str) -> Binding | None:
        return self.bound.get(address)

    def device(self, address: str) -> str | None:
        return None


def bound(user: str) -> Binding:
    return Binding(
        id=7,
        address=STUDENT_IP,
        source="sign_in",
        kind="person",
        user=user,
        role="staff",
        device=None,
        mac=None,
        session_id=None,
        origin="sign-in page",
        started_at=NOW,
        last_seen=NOW,
        expires_at=NOW + timedelta(hours=1),
        idle_seconds=None,
        ends_by=None,
    )


def ask(policy, at: datetime, ip: str = STUDENT_IP):
    return policy.decide(RequestFacts("www.facebook.com", at, "/", "GET", 80, "http", ip))


def test_an_address_decided_without_bindings_uses_a_binding_once_they_are_consulted(tmp_path):
    policy = load_policy(write_config(tmp_path))
    at = local("2026-11-24T10:30")
    before = ask(policy, at)
    assert before.identity.user is None and not before.allowed
    assert ask(policy, at).identity is before.identity  # remembered for the address
    policy.resolver.use_live(OneBinding(bound("newstaff")))
    after = ask(policy, at)
    assert (after.identity.user, after.identity.role) == ("newstaff", "staff")
    # And back: with no bindings consulted, the network decides again.
    policy.resolver.use_live(None)
    again = ask(policy, at)
    assert again.identity.user is None and again.identity.role == before.identity.role


def test_the_current_window_answers_only_inside_it_and_in_any_zone(tmp_path):
    policy = load_policy(write_config(tmp_path))
    timetable = policy.timetables[ask(policy, local("2026-11-24T10:30")).identity.site]
    london = ZoneInfo("Europe/London")
    times = [local(t) for t in ("2026-11-24T10:30", "2026-11-24T11:10", "2026-11-24T10:59")]
    times += [local("2026-11-24T11:00"), local("2026-11-24T10:00"), local("2026-11-24T09:59")]
    times += [t.astimezone(UTC) for t in times] + [
        t.astimezone(ZoneInfo("Asia/Tokyo")) for t in times
    ]
    for i, at in enumerate(times):
        window = timetable.window_at(at)
        assert window.start <= at < window.end
        decision = ask(policy, at)
        assert decision.window == window
        # The same answer as a timetable that has worked nothing out yet.
        (tmp_path / str(i)).mkdir()
        fresh = load_policy(write_config(tmp_path / str(i)))
        assert fresh.timetables[decision.identity.site].window_at(at.astimezone(london)) == window
