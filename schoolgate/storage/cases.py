"""Safeguarding cases for the designated safeguarding lead (migration ``0012``).

A *match* is a ``search`` or ``page_risk`` event in the decision log whose detail gives a
severity of 1 to 3 (the risk-term library matched). The DSL reviews each match: either it
opens a case for the pupil (or joins the pupil's case that is still open) or it is marked "no
concern". Tables: ``safeguarding_cases`` (one per pupil and concern: status, outcome),
``safeguarding_case_notes`` (notes and status changes: who, when, what) and
``safeguarding_matches`` (each reviewed match: the event's ref, its case or none, who reviewed
it). Every change is also written to the general ``audit`` table; events linked to a case are
kept as safeguarding evidence by the retention purge.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from schoolgate.core.sanctions import subject_for
from schoolgate.storage.exceptions import audit
from schoolgate.storage.models import BanRow, CaseNoteRow, CaseRow, EventRow, MatchRow

STATUSES = ("new", "reviewed", "escalated", "closed")
# Where a case may go from each status. A closed case may be reopened (to "reviewed").
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "new": ("reviewed", "escalated", "closed"),
    "reviewed": ("escalated", "closed"),
    "escalated": ("reviewed", "closed"),
    "closed": ("reviewed",),
}
MATCH_KINDS = ("search", "page_risk")
# What a pupil's timeline shows besides blocks (any kind whose action is "block").
TIMELINE_KINDS = ("search", "page_risk", "circumvention")
MAX_NOTE = 10_000
MAX_OUTCOME = 4_000


class CaseError(ValueError):
    """A case change that cannot be made (no such match, a status it cannot go to, ...)."""


# -- matches ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    """A risk match read from its event: what the DSL sees in the queue and on a case."""

    event: EventRow
    severity: int  # 1-3; 3 also when the detail cannot be read (fail towards being seen)
    theme: str
    rule: str
    what: str  # the search term or the page title
    source: str  # the search engine, or the page's host
    readable: bool = True
    why: str = ""  # the match's note: what the term stands for, or the model's score

    @property
    def subject(self) -> str:
        return subject_for(self.event.user, self.event.client_ip) or "device:unknown"


def match_of(row: EventRow) -> Match | None:
    """The match an event records, or None when it is not one (severity 0: nothing matched).

    A match event whose detail cannot be read is shown as severity 3: the DSL must see it."""
    if row.kind not in MATCH_KINDS:
        return None
    try:
        detail = json.loads(row.detail or "")
        if not isinstance(detail, dict):
            raise ValueError("not an object")
        severity = int(detail.get("severity", 0))
        if not 0 <= severity <= 3:
            raise ValueError("severity out of range")
    except (ValueError, TypeError):
        what = row.search_term or row.url or ""
        return Match(row, 3, "", "", what, row.host or "", readable=False)
    if severity == 0:
        return None
    if row.kind == "search":
        what = str(detail.get("term") or row.search_term or "")
        source = str(detail.get("engine") or row.host or "")
    else:
        what = str(detail.get("title") or "")
        source = row.host or ""
    theme, rule, why = (str(detail.get(k) or "") for k in ("theme", "rule", "why"))
    return Match(row, severity, theme, rule, what, source, why=why)


def review_queue(session: Session, *, limit: int = 200, scan: int = 5000) -> list[Match]:
    """Matches not yet reviewed, most severe first and newest first within a severity.

    ``scan``: how many of the newest unreviewed match events are read (the queue is meant to
    be worked through; a backlog larger than this shows its newest part)."""
    reviewed = select(MatchRow.event_ref)
    rows = session.scalars(
        select(EventRow)
        .where(EventRow.kind.in_(MATCH_KINDS), EventRow.ref.not_in(reviewed))
        .order_by(EventRow.at.desc(), EventRow.id.desc())
        .limit(scan)
    )
    found = [m for m in map(match_of, rows) if m is not None]
    found.sort(key=lambda m: (-m.severity, -m.event.at.timestamp(), -m.event.id))
    return found[:limit]


def _match_event(session: Session, ref: str) -> tuple[EventRow, Match]:
    row = session.scalars(select(EventRow).where(EventRow.ref == ref)).first()
    found = match_of(row) if row is not None else None
    if row is None or found is None:
        raise CaseError(f"no risk match with reference {ref}")
    if session.get(MatchRow, ref) is not None:
        raise CaseError(f"match {ref} has already been reviewed")
    return row, found


def dismiss(session: Session, ref: str, *, actor: str, now: datetime, reason: str = "") -> None:
    """Mark a match reviewed with no concern (no case). The caller commits."""
    _row, found = _match_event(session, ref)
    session.add(MatchRow(event_ref=ref, subject=found.subject, reviewed_by=actor, reviewed_at=now))
    audit(session, actor, "dsl.match_no_concern", found.subject, f"event={ref} {reason}".strip())


def open_case(session: Session, ref: str, *, actor: str, now: datetime) -> tuple[CaseRow, bool]:
    """Review a match into a case: the pupil's case that is not closed, or a new one.

    Returns the case and whether it is new. The caller commits."""
    row, found = _match_event(session, ref)
    subject = found.subject
    case = session.scalars(
        select(CaseRow)
        .where(CaseRow.subject == subject, CaseRow.status != "closed")
        .order_by(CaseRow.id.desc())
    ).first()
    created = case is None
    if case is None:
        case = CaseRow(
            subject=subject,
            group=row.group,
            status="new",
            outcome="",
            opened_by=actor,
            opened_at=now,
            updated_at=now,
        )
        session.add(case)
        session.flush()
        session.add(CaseNoteRow(case_id=case.id, at=now, author=actor, status="new",
                                text=f"Case opened from match {ref}."))  # fmt: skip
        audit(session, actor, "dsl.case_open", subject, f"case={case.id} event={ref}")
    else:
        case.updated_at = now
        session.add(CaseNoteRow(case_id=case.id, at=now, author=actor,
                                text=f"Match {ref} added to the case."))  # fmt: skip
        audit(session, actor, "dsl.case_link", subject, f"case={case.id} event={ref}")
    session.add(MatchRow(event_ref=ref, case_id=case.id, subject=subject, reviewed_by=actor,
                         reviewed_at=now))  # fmt: skip
    return case, created


# -- changing a case ------------------------------------------------------------------------------


def set_status(
    session: Session,
    case: CaseRow,
    status: str,
    *,
    actor: str,
    now: datetime,
    note: str = "",
    outcome: str | None = None,
) -> None:
    """Move ``case`` to ``status`` (see :data:`TRANSITIONS`). Closing needs an outcome (given
    here or already recorded); reopening a closed case needs a note saying why."""
    if status not in STATUSES:
        raise CaseError(f"unknown status {status!r}; statuses are {', '.join(STATUSES)}")
    if status not in TRANSITIONS[case.status]:
        raise CaseError(f"a {case.status} case cannot become {status}")
    note = note.strip()[:MAX_NOTE]
    if outcome is not None and outcome.strip():
        _set_outcome(session, case, outcome, actor=actor, now=now)
    if status == "closed" and not case.outcome.strip():
        raise CaseError("say what the outcome was before closing the case")
    if case.status == "closed" and not note:
        raise CaseError("say why the case is reopened")
    previous = case.status
    case.status = status
    case.updated_at = now
    if status == "closed":
        case.closed_at, case.closed_by = now, actor
    else:
        case.closed_at = case.closed_by = None
    session.add(CaseNoteRow(case_id=case.id, at=now, author=actor, status=status, text=note))
    audit(session, actor, f"dsl.case_{status}", case.subject,
          f"case={case.id} from={previous}")  # fmt: skip


def add_note(session: Session, case: CaseRow, text: str, *, actor: str, now: datetime) -> None:
    text = text.strip()[:MAX_NOTE]
    if not text:
        raise CaseError("write the note first")
    case.updated_at = now
    session.add(CaseNoteRow(case_id=case.id, at=now, author=actor, text=text))
    audit(session, actor, "dsl.case_note", case.subject, f"case={case.id}")


def _set_outcome(session: Session, case: CaseRow, text: str, *, actor: str, now: datetime) -> None:
    case.outcome = text.strip()[:MAX_OUTCOME]
    case.updated_at = now
    session.add(CaseNoteRow(case_id=case.id, at=now, author=actor,
                            text=f"Outcome: {case.outcome}"))  # fmt: skip
    audit(session, actor, "dsl.case_outcome", case.subject, f"case={case.id}")


def set_outcome(session: Session, case: CaseRow, text: str, *, actor: str, now: datetime) -> None:
    if not text.strip():
        raise CaseError("write the outcome first")
    _set_outcome(session, case, text, actor=actor, now=now)


# -- reading ------------------------------------------------------------------------------------


def case_notes(session: Session, case: CaseRow) -> list[CaseNoteRow]:
    return list(
        session.scalars(
            select(CaseNoteRow)
            .where(CaseNoteRow.case_id == case.id)
            .order_by(CaseNoteRow.at, CaseNoteRow.id)
        )
    )


def case_matches(session: Session, case: CaseRow) -> list[Match]:
    """The matches linked to ``case``, oldest first."""
    refs = select(MatchRow.event_ref).where(MatchRow.case_id == case.id)
    rows = session.scalars(
        select(EventRow).where(EventRow.ref.in_(refs)).order_by(EventRow.at, EventRow.id)
    )
    return [m for m in map(match_of, rows) if m is not None]


def cases(session: Session, *, statuses: Sequence[str] = (), limit: int = 200) -> list[CaseRow]:
    """Cases, most recently changed first (only these statuses, when given)."""
    query = select(CaseRow)
    if statuses:
        query = query.where(CaseRow.status.in_(statuses))
    return list(
        session.scalars(query.order_by(CaseRow.updated_at.desc(), CaseRow.id.desc()).limit(limit))
    )


def subject_cases(session: Session, subject: str) -> list[CaseRow]:
    return list(
        session.scalars(
            select(CaseRow).where(CaseRow.subject == subject).order_by(CaseRow.id.desc())
        )
    )


def timeline_events(
    session: Session, subject: str, *, since: datetime, limit: int = 500
) -> list[EventRow]:
    """A pupil's searches, risky page titles, blocks and circumvention since ``since``,
    newest first. ``subject``: ``user:NAME`` or ``device:IP`` (events with no user)."""
    kind, _, value = subject.partition(":")
    who = (
        EventRow.user == value
        if kind == "user"
        else (EventRow.client_ip.in_((value, f"::ffff:{value}")) & EventRow.user.is_(None))
    )
    return list(
        session.scalars(
            select(EventRow)
            .where(
                who,
                EventRow.at >= since,
                or_(EventRow.kind.in_(TIMELINE_KINDS), EventRow.action == "block"),
            )
            .order_by(EventRow.at.desc(), EventRow.id.desc())
            .limit(limit)
        )
    )


def subject_bans(session: Session, subject: str) -> list[BanRow]:
    return list(
        session.scalars(
            select(BanRow).where(BanRow.subject == subject).order_by(BanRow.starts.desc())
        )
    )


def linked_refs(session: Session) -> set[str]:
    """Event refs linked to a case (kept as safeguarding evidence)."""
    return set(session.scalars(select(MatchRow.event_ref).where(MatchRow.case_id.is_not(None))))
