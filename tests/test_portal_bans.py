"""The portal's bans page: IT Support and SLT see, lift and confirm circumvention bans."""

from __future__ import annotations

from datetime import timedelta

import pytest
from test_portal import STUDENT_IP, Portal, csrf, post

from schoolgate.core.sanctions import BanState
from schoolgate.storage.bans import add_ban, bans_current, save_ban, start_supervision
from schoolgate.storage.models import BanAuditRow, BanRow

PAGE = "/it/bans"


@pytest.fixture
def portal(tmp_path, gateway_config) -> Portal:
    return Portal(tmp_path, gateway_config)


def gateway_ban(portal: Portal, subject: str = "user:ben", kind: str = "ban", **fields) -> int:
    """A ban made by the ladder (as the gateway stores it), with evidence events."""
    at = portal.clock()
    values = dict(
        ref=f"b{kind}{subject}"[:40],
        subject=subject,
        kind=kind,
        starts=at - timedelta(minutes=5),
        ends=at + timedelta(days=7 if kind == "ban" else 0, minutes=30),
        reason="3 circumvention points in 7 days",
        stage=3 if kind == "ban" else 2,
        points=3.0,
        events=("evvpn1", "evvpn2"),
    )
    values.update(fields)
    with portal.sessions() as s:
        row = save_ban(s, BanState(**values), role="student", client_ip=STUDENT_IP)
        s.commit()
        return row.id


def ban_row(portal: Portal, ban_id: int) -> BanRow:
    with portal.sessions() as s:
        return s.get(BanRow, ban_id)


def ban_audit(portal: Portal, ban_id: int) -> list[tuple[str, str, str]]:
    with portal.sessions() as s:
        rows = s.query(BanAuditRow).filter_by(ban_id=ban_id).order_by(BanAuditRow.id)
        return [(a.actor, a.action, a.detail) for a in rows]


def in_force(portal: Portal) -> list[str]:
    with portal.sessions() as s:
        return [b.subject for b in bans_current(s, portal.clock())]


def test_page_lists_bans_with_evidence_and_supervision(portal):
    portal.event(ref="evvpn1", kind="circumvention", host="vpn.test", url="https://vpn.test/")
    ban_id = gateway_ban(portal)
    device = gateway_ban(portal, subject=f"device:{STUDENT_IP}", kind="lockout", events=())
    old = gateway_ban(  # ended more than a week ago: not shown
        portal,
        kind="lockout",
        ref="long-ago",
        starts=portal.clock() - timedelta(days=10, hours=1),
        ends=portal.clock() - timedelta(days=10),
    )
    with portal.sessions() as s:
        start_supervision(
            s, "ben", by="mr.jones", minutes=30, reason="ICT lesson", now=portal.clock()
        )
        s.commit()
    for user in ("alice", "sam", "nina"):
        page = portal.staff(user).get(PAGE)
        assert page.status_code == 200, page.text
        text = page.text
        assert f"Ban #{ban_id}" in text and f"Lockout #{device}" in text
        assert f"Lockout #{old}" not in text
        assert "user ben" in text and f"device {STUDENT_IP}" in text
        assert "3 circumvention points in 7 days" in text
        assert "evvpn1" in text and "https://vpn.test/" in text  # the logged event
        assert "evvpn2" in text and "not in the decision log" in text
        assert "mr.jones" in text and "ICT lesson" in text  # the supervision session
        assert "ban.create" in text and "supervision.start" in text  # the history
        assert "Lift now" in text
        assert ("Confirm (uphold)" in text) == (user == "sam")
        assert 'href="/it/bans"' in text  # in the navigation


def test_nav_and_home_link_only_for_reviewers(portal):
    assert 'href="/it/bans"' in portal.staff("alice").get("/staff/").text
    assert 'href="/it/bans"' in portal.staff("sam").get("/slt/").text
    assert 'href="/it/bans"' not in portal.staff("tina").get("/teacher/").text


def test_teacher_and_anonymous_are_refused(portal):
    ban_id = gateway_ban(portal)
    tina = portal.staff("tina")
    assert tina.get(PAGE).status_code == 403
    token = csrf(tina, "/teacher/")
    lifted = tina.post(f"/it/bans/{ban_id}/lift", data={"csrf_token": token, "reason": "x"})
    assert lifted.status_code == 403
    confirmed = tina.post(f"/slt/bans/{ban_id}/confirm", data={"csrf_token": token})
    assert confirmed.status_code == 403
    anonymous = portal.client()
    assert anonymous.get(PAGE).status_code == 302  # to the sign-in page
    assert anonymous.post(f"/it/bans/{ban_id}/lift", data={"reason": "x"}).status_code in (
        400,
        403,
    )
    assert in_force(portal) == ["user:ben"]
    assert [a[1] for a in ban_audit(portal, ban_id)] == ["ban.create"]


def test_it_support_lifts_with_reason_and_gateway_stops_suspending(portal):
    lockout = gateway_ban(portal, kind="lockout", ref="lock1")
    ban_id = gateway_ban(portal)
    assert sorted(in_force(portal)) == ["user:ben", "user:ben"]
    alice = portal.staff("alice")
    answer = post(alice, PAGE, f"/it/bans/{ban_id}/lift", reason="appeal upheld by HoY")
    assert answer.status_code == 303 and answer.headers["Location"].endswith(PAGE)
    row = ban_row(portal, ban_id)
    assert row.lifted_by == "alice" and row.lift_reason == "appeal upheld by HoY"
    assert in_force(portal) == []  # the lockout in force ends with the ban
    assert ban_audit(portal, ban_id)[-1] == ("alice", "ban.lift", "appeal upheld by HoY")
    assert ban_audit(portal, lockout)[-1][:2] == ("alice", "lockout.lift")
    assert ("alice", "ban.lift", f"ban #{ban_id} user:ben") in portal.audit()
    page = alice.get(PAGE).text  # still shown, as recently ended, with no actions
    assert f"Ban #{ban_id}" in page and "appeal upheld by HoY" in page
    assert "Lift now" not in page
    again = post(alice, PAGE, f"/it/bans/{ban_id}/lift", reason="again")
    assert again.status_code == 400 and "already lifted" in again.text


def test_lift_without_reason_is_refused(portal):
    ban_id = gateway_ban(portal)
    alice = portal.staff("alice")
    for reason in ("", "   "):
        answer = post(alice, PAGE, f"/it/bans/{ban_id}/lift", reason=reason)
        assert answer.status_code == 400 and "reason" in answer.text
    assert in_force(portal) == ["user:ben"]
    assert [a[1] for a in ban_audit(portal, ban_id)] == ["ban.create"]


def test_missing_or_wrong_csrf_is_refused(portal):
    ban_id = gateway_ban(portal)
    for user, action, form in (
        ("alice", f"/it/bans/{ban_id}/lift", {"reason": "appeal"}),
        ("sam", f"/slt/bans/{ban_id}/confirm", {"note": "upheld"}),
    ):
        client = portal.staff(user)
        assert client.post(action, data=form).status_code == 400
        assert client.post(action, data={**form, "csrf_token": "forged"}).status_code == 400
    assert in_force(portal) == ["user:ben"]
    assert [a[1] for a in ban_audit(portal, ban_id)] == ["ban.create"]


def test_it_support_and_network_manager_cannot_confirm(portal):
    ban_id = gateway_ban(portal)
    for user in ("alice", "nina"):
        answer = post(portal.staff(user), PAGE, f"/slt/bans/{ban_id}/confirm", note="fine")
        assert answer.status_code == 403
    assert [a[1] for a in ban_audit(portal, ban_id)] == ["ban.create"]


def test_slt_confirms_with_note_and_ban_stays_in_force(portal):
    ban_id = gateway_ban(portal)
    sam = portal.staff("sam")
    answer = post(sam, PAGE, f"/slt/bans/{ban_id}/confirm", note="reviewed with HoY")
    assert answer.status_code == 303 and answer.headers["Location"].endswith(PAGE)
    assert ban_audit(portal, ban_id)[-1] == ("sam", "ban.confirm", "reviewed with HoY")
    assert ("sam", "ban.confirm", f"ban #{ban_id} user:ben") in portal.audit()
    assert in_force(portal) == ["user:ben"] and ban_row(portal, ban_id).lifted_at is None
    page = sam.get(PAGE).text
    assert "Confirmed" in page and "reviewed with HoY" in page
    # the note is optional
    assert post(sam, PAGE, f"/slt/bans/{ban_id}/confirm").status_code == 303
    assert ban_audit(portal, ban_id)[-1] == ("sam", "ban.confirm", "upheld")


def test_slt_lifts_and_cannot_confirm_a_lifted_or_ended_ban(portal):
    ban_id = gateway_ban(portal)
    ended = gateway_ban(
        portal,
        kind="lockout",
        ref="old1",
        starts=portal.clock() - timedelta(hours=2),
        ends=portal.clock() - timedelta(hours=1),
    )
    sam = portal.staff("sam")
    assert post(sam, PAGE, f"/it/bans/{ban_id}/lift", reason="mistaken identity").status_code == 303
    assert ban_row(portal, ban_id).lifted_by == "sam" and in_force(portal) == []
    refused = post(sam, PAGE, f"/slt/bans/{ban_id}/confirm", note="late")
    assert refused.status_code == 400 and "already lifted" in refused.text
    refused = post(sam, PAGE, f"/slt/bans/{ended}/confirm")
    assert refused.status_code == 400 and "already ended" in refused.text
    refused = post(sam, PAGE, f"/it/bans/{ended}/lift", reason="x")
    assert refused.status_code == 400 and "already ended" in refused.text
    assert post(sam, PAGE, "/it/bans/999/lift", reason="x").status_code == 404
    assert post(sam, PAGE, "/slt/bans/999/confirm").status_code == 404
    assert [a[1] for a in ban_audit(portal, ban_id)] == ["ban.create", "ban.lift"]


def test_slt_cannot_confirm_a_ban_they_made(portal):
    with portal.sessions() as s:
        ban_id = add_ban(s, "ben", by="sam", minutes=60, reason="abuse", now=portal.clock()).id
        s.commit()
    answer = post(portal.staff("sam"), PAGE, f"/slt/bans/{ban_id}/confirm", note="mine")
    assert answer.status_code == 403
    assert [a[1] for a in ban_audit(portal, ban_id)] == ["ban.create"]
