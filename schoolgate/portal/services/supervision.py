"""Supervision sessions from the portal: who may start, extend and end one for whom.

A **teacher** supervises a banned pupil in one of their teaching groups: the groups of their
staff account (the same as their class overrides) against the pupil's group in the school's
roster (the MIS export the policy reads). A device ban, or a pupil not in the roster, has no
group: only **SLT**, **IT Support** and **network managers** (anyone's) supervise those. Every
change goes through :mod:`schoolgate.storage.bans`, as ``schoolgate supervise`` does, so it is in
the ban audit trail and the general audit trail, and the gateways pick it up within a few
seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from schoolgate.core.sanctions import SanctionSettings
from schoolgate.storage.bans import end_supervision, extend_supervision, start_supervision, to_state
from schoolgate.storage.models import BanRow, StaffRow, SupervisionRow

ANYONE = ("slt", "it_support", "network_manager")


@dataclass
class Banned:
    ban: BanRow
    subject_kind: str  # user | device
    who: str  # the user name or the device's address
    group: str | None  # from the roster (None: not known)
    session: SupervisionRow | None  # the one running now
    may: bool  # whether this member of staff may supervise them


def pupil_group(policy: Any, subject_kind: str, who: str) -> str | None:
    """The roster's group of a banned user (None for a device or a user not on the roster)."""
    if subject_kind != "user":
        return None
    entry = policy.resolver.roster.get(who.strip().lower())
    return entry.group if entry is not None and entry.group else None


def may_supervise(staff: StaffRow, group: str | None) -> bool:
    if staff.has_role(*ANYONE):
        return True
    if not staff.has_role("teacher") or not group:
        return False
    return group.lower() in {g.lower() for g in staff.group_list}


def max_minutes(policy: Any) -> int:
    sanctions = policy.settings.sanctions or SanctionSettings()
    return sanctions.supervision_max_minutes


def banned_now(session: Session, policy: Any, staff: StaffRow, now: datetime) -> list[Banned]:
    """The bans in force (supervised-only bans, not lockouts) this member of staff sees: a
    teacher, those of their groups; SLT and IT Support, everyone's."""
    bans = session.scalars(
        select(BanRow)
        .where(BanRow.kind == "ban", BanRow.lifted_at.is_(None), BanRow.starts <= now)
        .where(or_(BanRow.ends.is_(None), BanRow.ends > now))
        .order_by(BanRow.id.desc())
    )
    out = []
    for ban in bans:
        state = to_state(ban)
        group = pupil_group(policy, state.subject_kind, state.subject_value)
        allowed = may_supervise(staff, group)
        if not allowed and not staff.has_role(*ANYONE):
            continue
        running = session.scalar(
            select(SupervisionRow)
            .where(SupervisionRow.subject == ban.subject, SupervisionRow.ended_at.is_(None))
            .where(SupervisionRow.starts <= now, SupervisionRow.ends > now)
            .order_by(SupervisionRow.id.desc())
            .limit(1)
        )
        out.append(Banned(ban, state.subject_kind, state.subject_value, group, running, allowed))
    return out


class NotAllowed(Exception):
    """This member of staff may not supervise this person (the message says why)."""


def _check(policy: Any, staff: StaffRow, subject: str) -> None:
    kind, _, who = subject.partition(":")
    group = pupil_group(policy, kind, who)
    if not may_supervise(staff, group):
        if kind == "user" and group:
            raise NotAllowed(
                f"{who} is in {group}, which is not one of your groups: their teacher, SLT or "
                "IT Support can supervise them."
            )
        raise NotAllowed(
            f"{'This device' if kind == 'device' else who} is in none of your groups (the "
            "roster names no group): SLT or IT Support can supervise them."
        )


def start(
    session: Session, policy: Any, staff: StaffRow, ban: BanRow, *, minutes: int, reason: str,
    now: datetime,
) -> SupervisionRow:  # fmt: skip
    _check(policy, staff, ban.subject)
    return start_supervision(
        session,
        ban.subject,
        by=staff.username,
        minutes=minutes,
        reason=reason,
        max_minutes=max_minutes(policy),
        now=now,
    )


def extend(
    session: Session, policy: Any, staff: StaffRow, row: SupervisionRow, *, minutes: int,
    now: datetime,
) -> SupervisionRow:  # fmt: skip
    _check(policy, staff, row.subject)
    return extend_supervision(
        session, row.id, by=staff.username, minutes=minutes, max_minutes=max_minutes(policy),
        now=now,
    )  # fmt: skip


def end(
    session: Session, policy: Any, staff: StaffRow, row: SupervisionRow, *, now: datetime
) -> SupervisionRow:
    _check(policy, staff, row.subject)
    return end_supervision(session, row.id, by=staff.username, now=now)


__all__ = ["Banned", "NotAllowed", "banned_now", "end", "extend", "may_supervise", "start"]
