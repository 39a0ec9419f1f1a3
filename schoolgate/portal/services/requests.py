"""The unblock-request workflow: IT Support's queue, their decisions, escalation to SLT and
SLT's approval, and the exceptions that come of them.

Rules every action keeps: a member of staff can never decide their own request, nor approve an
exception they proposed themselves; escalated requests are for SLT; exceptions beyond
``SltRequired`` wait for SLT when IT Support start them; every action is in the audit trail and
the requester (or SLT) is told. The portal's pages parse the forms and call these; a refusal is a
:class:`RequestError` with the HTTP status the page answers with.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from schoolgate.core import words
from schoolgate.core.model import AccessException
from schoolgate.portal.services import listing
from schoolgate.storage.exceptions import (
    ExceptionRequestError,
    add_exception,
    audit,
    exceptions_current,
    revoke_exception,
    validate_exception,
)
from schoolgate.storage.models import (
    OPEN_STATUSES,
    STATUSES,
    EventRow,
    ExceptionRow,
    PortalRequestRow,
    StaffRow,
)

SCOPE_CHOICES = ("user", "group", "role", "site", "everyone")
DURATIONS = {
    "lesson": "until the end of this lesson (or window)",
    "today": "until the end of today",
    "7d": "for a week",
    "28d": "for four weeks",
    "until": "until a date and time (below)",
    "permanent": "permanently (until revoked)",
}
QUEUE_PAGE_SIZE = 100  # requests and reports per page of the IT Support queue


class RequestError(Exception):
    """An action refused: ``status`` is the HTTP status (400, 403, 404), the text says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Workflow:
    """One portal request's view of the workflow: its database session, the policy and clock,
    whom to notify, and the links notifications carry."""

    session: Session
    policy: Any
    now: datetime
    notifier: Any
    slt_required: Any
    item_link: Callable[[PortalRequestRow], str]  # IT Support's page of a request
    status_link: Callable[[PortalRequestRow], str]  # the requester's status page

    # -- loading and checks --------------------------------------------------------------------
    def load(self, request_id: int) -> PortalRequestRow:
        row = self.session.get(PortalRequestRow, request_id)
        if row is None:
            raise RequestError(404, "No such request.")
        return row

    def exception_of(self, row: PortalRequestRow) -> ExceptionRow | None:
        return self.session.get(ExceptionRow, row.exception_id) if row.exception_id else None

    def evidence(self, row: PortalRequestRow) -> dict[str, Any]:
        """The event the request is about, and the requester's recent blocks and attempts to
        get round the filter."""
        event = None
        if row.event_ref:
            event = self.session.scalar(select(EventRow).where(EventRow.ref == row.event_ref))
        if row.requester_user:
            who = EventRow.user == row.requester_user
        elif row.client_ip:
            who = EventRow.client_ip == row.client_ip
        else:
            return {"event": event, "blocks": [], "circumvention": []}
        since = row.created_at - timedelta(days=7)
        blocks = self.session.scalars(
            select(EventRow)
            .where(who, EventRow.action == "block", EventRow.at >= since)
            .order_by(EventRow.at.desc())
            .limit(25)
        ).all()
        circumvention = self.session.scalars(
            select(EventRow)
            .where(
                who, EventRow.kind.like("circumvention%"), EventRow.at >= since - timedelta(days=23)
            )
            .order_by(EventRow.at.desc())
            .limit(25)
        ).all()
        return {"event": event, "blocks": blocks, "circumvention": circumvention}

    # -- exceptions from a decision ------------------------------------------------------------
    def ends(self, choice: str, until_text: str, site: str) -> datetime | None:
        """When an exception chosen to last ``choice`` ends (None: until revoked)."""
        at = self.now
        tz = self.policy.timetables[site].tz
        if choice == "lesson":
            end: datetime = self.policy.window(site, at).end
            return end
        if choice == "today":
            day = at.astimezone(tz).date() + timedelta(days=1)
            return datetime.combine(day, time(0, 0), tzinfo=tz)
        if choice in ("7d", "28d"):
            return at + timedelta(days=int(choice[:-1]))
        if choice == "until":
            try:
                value = datetime.fromisoformat(until_text.strip())
            except ValueError:
                raise RequestError(
                    400, "Give the end as a date and time, e.g. 2026-12-18T15:30."
                ) from None
            return value if value.tzinfo else value.replace(tzinfo=tz)
        if choice == "permanent":
            return None
        raise RequestError(400, "Choose how long the exception lasts.")

    def exception_proposal(
        self,
        row: PortalRequestRow,
        *,
        scope: str,
        scope_value: str,
        target_kind: str,
        target: str,
        duration: str,
        until: str,
        note: str,
    ) -> dict[str, Any]:
        """The exception described by the approve form, validated."""
        if scope not in SCOPE_CHOICES:
            raise RequestError(400, "Choose who the exception is for.")
        scope_value = scope_value.strip()[:200]
        target = target.strip()[:500]
        if target_kind == "host" and "/" in target:  # "this site" of a page's address
            target = target.split("://", 1)[-1].split("/", 1)[0]
        policy = self.policy
        site = (
            row.requester_site
            if row.requester_site in policy.timetables
            else policy.resolver.default_site
        )
        ends = self.ends(duration, until, site)
        starts = self.now
        try:
            validate_exception(
                policy,
                scope=scope,
                scope_value=scope_value,
                target_kind=target_kind,
                target=target,
                starts=starts,
                ends=ends,
            )
        except ExceptionRequestError as exc:
            raise RequestError(400, f"That exception is not possible: {exc}.") from None
        return {
            "scope": scope,
            "scope_value": scope_value,
            "target_kind": target_kind,
            "target": target,
            "starts": starts.isoformat(),
            "ends": ends.isoformat() if ends else None,
            "kind": "exception",
            "reason": note.strip()[:1000] or f"request {row.ref}: {row.message[:200]}",
        }

    def _grant(self, row: PortalRequestRow, proposal: dict[str, Any], by: str) -> ExceptionRow:
        try:
            exc = add_exception(
                self.session,
                self.policy,
                scope=proposal["scope"],
                scope_value=proposal["scope_value"],
                target_kind=proposal["target_kind"],
                target=proposal["target"],
                starts=self.now,
                ends=datetime.fromisoformat(proposal["ends"]) if proposal["ends"] else None,
                created_by=by,
                reason=proposal["reason"],
                kind=proposal["kind"],
            )
        except ExceptionRequestError as error:
            raise RequestError(400, f"That exception is not possible: {error}.") from None
        row.status = "approved"
        row.exception_id = exc.id
        row.decided_by = by
        row.decided_at = self.now
        policy = self.policy
        site = row.requester_site if row.requester_site in policy.timetables else None
        tz = policy.timetables[site or policy.resolver.default_site].tz
        until = f"until {words.absolute(exc.ends, tz)}" if exc.ends else "with no end date"
        who = "everyone" if exc.scope == "everyone" else f"{exc.scope} {exc.scope_value}"
        row.outcome = f"Approved: {exc.target_kind} {exc.target} is open for {who} {until}."
        row.updated_at = self.now
        return exc

    def _carry_out(self, row: PortalRequestRow, proposal: dict[str, Any], by: str) -> str:
        """Do what a proposal says: an entry added to a category's list, or an exception.
        Returns what was done, for the audit trail and the page's message."""
        if proposal["kind"] != "categorise":
            exc = self._grant(row, proposal, by)
            return f"exception #{exc.id}"
        path = listing.add_to_list(self.policy, proposal, by=by, ref=row.ref, at=self.now)
        row.status = "actioned"
        row.category = proposal["category"]
        row.decided_by = by
        row.decided_at = self.now
        row.outcome = "Thank you: the site has been added to the school's filter."
        row.updated_at = self.now
        return f"{proposal['target']} -> {proposal['category']} ({path.name})"

    def _notify_outcome(self, row: PortalRequestRow) -> None:
        self.notifier.notify(
            self.session,
            audience="requester",
            user=row.requester_user,
            event=f"{row.kind}.{row.status}",
            ref=row.ref,
            subject=f"[schoolgate] Your {'request' if row.kind == 'access' else 'report'} "
            f"{row.ref}: {row.status}",
            body=f"{row.url}\n\n{row.outcome or ''}",
            link=self.status_link(row),
        )

    # -- IT Support's decisions -----------------------------------------------------------------
    def check_decidable(
        self,
        row: PortalRequestRow,
        staff: StaffRow,
        *statuses: str,
        kind: str | None = None,
        other_kind: str = "",
    ) -> None:
        """Refuse unless ``staff`` may decide ``row`` now: not their own, of ``kind`` (else
        ``other_kind`` says why not), in one of ``statuses``, and (once with SLT) only by SLT."""
        not_own(row, staff)
        if kind is not None and row.kind != kind:
            raise RequestError(400, other_kind)
        must_be(row, *statuses)
        if row.status in ("escalated", "awaiting_slt") and not staff.has_role("slt"):
            raise RequestError(403, "This request is with SLT: only SLT can decide it now.")

    def propose_or_grant(
        self, row: PortalRequestRow, staff: StaffRow, proposal: dict[str, Any]
    ) -> str:
        """Grant now, or (beyond what IT Support may grant alone) hold it for SLT. Returns the
        message for the page."""
        ends = datetime.fromisoformat(proposal["ends"]) if proposal["ends"] else None
        why_slt = None
        if not staff.has_role("slt"):
            why_slt = self.slt_required.reason(
                scope=proposal["scope"], ends=ends, now=self.now, kind=proposal["kind"]
            )
        if why_slt:
            row.status = "awaiting_slt"
            row.proposal = json.dumps(proposal)
            row.proposed_by = staff.username
            row.updated_at = self.now
            audit(
                self.session,
                staff.username,
                f"{'report' if row.kind == 'report' else 'request'}.propose",
                subject_of(row),
                f"{why_slt}: {json.dumps(proposal)}",
            )
            self.notifier.notify(
                self.session,
                audience="slt",
                event="request.awaiting_slt",
                ref=row.ref,
                subject=f"[schoolgate] SLT approval needed: {row.ref} {row.host}",
                body=f"{staff.username} proposes an exception that needs SLT approval "
                f"({why_slt}):\n{json.dumps(proposal, indent=2)}\n\nRequest: {row.url}\n"
                f"{row.message}",
                link=self.item_link(row),
            )
            return f"Sent to SLT for approval: {why_slt}."
        done = self._carry_out(row, proposal, staff.username)
        action = "report.add_to_category" if proposal["kind"] == "categorise" else "request.approve"
        audit(self.session, staff.username, action, subject_of(row), done)
        self._notify_outcome(row)
        return f"{'Added' if proposal['kind'] == 'categorise' else 'Approved'}: {done}."

    def reject(self, row: PortalRequestRow, staff: StaffRow, reason: str) -> None:
        """Not approved (a request) or closed (a report), with the reason the requester sees."""
        row.status = "rejected"
        row.decided_by = staff.username
        row.decided_at = self.now
        row.outcome = f"Not approved: {reason}" if row.kind == "access" else f"Closed: {reason}"
        row.updated_at = self.now
        audit(self.session, staff.username, f"{row.kind}.reject", f"{row.kind} {row.ref}", reason)
        self._notify_outcome(row)

    def escalate(self, row: PortalRequestRow, staff: StaffRow, note: str) -> None:
        """Handed to SLT with a note, and SLT told."""
        row.status = "escalated"
        row.escalated_by = staff.username
        row.escalation_note = note
        row.updated_at = self.now
        audit(self.session, staff.username, f"{row.kind}.escalate", f"{row.kind} {row.ref}", note)
        self.notifier.notify(
            self.session,
            audience="slt",
            event=f"{row.kind}.escalated",
            ref=row.ref,
            subject=f"[schoolgate] Escalated to SLT: {row.ref} {row.host}",
            body=f"{staff.username} asks SLT to decide:\n{note}\n\n{row.url}\n{row.message}",
            link=self.item_link(row),
        )

    def screenshot_viewed(self, row: PortalRequestRow, staff: StaffRow) -> None:
        audit(self.session, staff.username, "report.screenshot_view", f"report {row.ref}", "")
        self.session.commit()

    # -- SLT -------------------------------------------------------------------------------------
    def approve_proposal(self, row: PortalRequestRow, staff: StaffRow, note: str) -> str:
        """SLT approve what IT Support proposed (never their own proposal). Returns what was
        done, for the page."""
        not_own(row, staff)
        must_be(row, "awaiting_slt")
        if row.proposed_by and row.proposed_by.lower() == staff.username.lower():
            raise RequestError(
                403, "You proposed this exception: another member of SLT must approve it."
            )
        proposal = json.loads(row.proposal or "{}")
        if note:
            proposal["reason"] = f"{proposal['reason']} (SLT: {note})"
        done = self._carry_out(row, proposal, f"{row.proposed_by}, approved by {staff.username}")
        audit(
            self.session,
            staff.username,
            f"{'report' if row.kind == 'report' else 'request'}.slt_approve",
            subject_of(row),
            done + (f": {note}" if note else ""),
        )
        self._notify_outcome(row)
        return done

    def for_slt(self) -> tuple[list[PortalRequestRow], list[AccessException]]:
        """What waits for SLT (escalated, or an exception awaiting approval), and the
        exceptions in force."""
        rows = self.session.scalars(
            select(PortalRequestRow)
            .where(PortalRequestRow.status.in_(("escalated", "awaiting_slt")))
            .order_by(PortalRequestRow.created_at)
        ).all()
        return list(rows), exceptions_current(self.session, self.now)

    def revoke(self, exception_id: int, staff: StaffRow, reason: str) -> None:
        try:
            revoke_exception(self.session, exception_id, by=staff.username, reason=reason)
        except ExceptionRequestError as exc:
            raise RequestError(400, str(exc)) from None
        self.session.commit()

    def confirm(self, exception_id: int, staff: StaffRow, note: str) -> None:
        """SLT confirm an exception in force that another member of staff made."""
        row = self.session.get(ExceptionRow, exception_id)
        if row is None or row.revoked_at is not None:
            raise RequestError(404, "No such exception in force.")
        if row.created_by.split(",")[0].strip().lower() == staff.username.lower():
            raise RequestError(
                403, "You made this exception: another member of SLT must confirm it."
            )
        audit(self.session, staff.username, f"{row.kind}.confirm", f"exception #{row.id}", note)
        self.session.commit()


def not_own(row: PortalRequestRow, staff: StaffRow) -> None:
    if row.requester_user and row.requester_user.lower() == staff.username.lower():
        raise RequestError(403, "You cannot decide your own request: another member of staff must.")


def must_be(row: PortalRequestRow, *statuses: str) -> None:
    if row.status not in statuses:
        raise RequestError(
            400,
            f"This {row.kind} is {row.status.replace('_', ' ')}: that action is not possible now.",
        )


def subject_of(row: PortalRequestRow) -> str:
    """How the audit trail names a request or report."""
    return f"{'report' if row.kind == 'report' else 'request'} {row.ref}"


# -- the IT Support queue -----------------------------------------------------------------------
@dataclass(frozen=True)
class QueuePage:
    rows: list[PortalRequestRow]
    total: int
    page: int
    pages: int

    @property
    def first(self) -> int:
        """The number of the page's first row (0: an empty page)."""
        return (self.page - 1) * QUEUE_PAGE_SIZE + 1 if self.rows else 0


def queue_page(
    session: Session, *, kind: str, status: str, category: str, text: str, page: int
) -> QueuePage:
    """One page of requests and reports, oldest first, filtered as the queue's form says
    (``status`` "open": every open status; a text: in the address, requester, ref or group)."""
    conditions: list[Any] = []
    if kind in ("access", "report"):
        conditions.append(PortalRequestRow.kind == kind)
    if status == "open":
        conditions.append(PortalRequestRow.status.in_(OPEN_STATUSES))
    elif status in STATUSES:
        conditions.append(PortalRequestRow.status == status)
    if category:
        conditions.append(PortalRequestRow.category == category)
    if text:
        like = f"%{text}%"
        conditions.append(
            or_(
                PortalRequestRow.url.like(like),
                PortalRequestRow.requester_user.like(like),
                PortalRequestRow.ref.like(like),
                PortalRequestRow.requester_group.like(like),
            )
        )
    total = session.scalar(select(func.count(PortalRequestRow.id)).where(*conditions)) or 0
    # A year of requests is far too many for one page (tens of megabytes of HTML): a page of
    # the oldest, with links onwards. Past the last page shows the last page.
    pages = max(1, -(-total // QUEUE_PAGE_SIZE))
    page = min(max(1, page), pages)
    rows = session.scalars(
        select(PortalRequestRow)
        .where(*conditions)
        .order_by(PortalRequestRow.created_at, PortalRequestRow.id)
        .offset((page - 1) * QUEUE_PAGE_SIZE)
        .limit(QUEUE_PAGE_SIZE)
    ).all()
    return QueuePage(list(rows), total, page, pages)
