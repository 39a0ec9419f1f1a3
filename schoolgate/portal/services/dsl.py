"""What the designated safeguarding lead's pages show: a pupil's timeline (searches, risky page
titles, blocks, circumvention and bans, newest first) and a case as a record to hand on
(self-contained HTML to print or attach, and CSV for CPOMS or MyConcern).

Reading and changing cases is :mod:`schoolgate.storage.cases`; this module shapes what the
views render and writes the audit entries for what the DSL looked at or took away.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

from sqlalchemy.orm import Session

from schoolgate.core import words
from schoolgate.storage.cases import (
    Match,
    case_matches,
    case_notes,
    match_of,
    subject_bans,
    timeline_events,
)
from schoolgate.storage.exceptions import audit
from schoolgate.storage.models import BanRow, CaseNoteRow, CaseRow, EventRow

SEVERITY_WORDS = {1: "low", 2: "medium", 3: "high"}
KIND_WORDS = {
    "search": "Search",
    "page_risk": "Page opened",
    "circumvention": "Getting round the filter",
    "block": "Blocked",
    "error": "Blocked (policy could not be checked)",
    "ban": "Ban",
}
CSV_COLUMNS = (
    "case", "pupil", "group", "entry", "time_utc", "by", "severity", "theme", "what", "where",
    "address", "event_ref", "status", "text",
)  # fmt: skip


def severity_words(severity: int) -> str:
    return f"{severity} ({SEVERITY_WORDS.get(severity, 'unknown')})"


@dataclass(frozen=True)
class Entry:
    """One line of a pupil's timeline."""

    at: datetime
    kind: str  # search | page_risk | circumvention | block | error | ban | an event's kind
    what: str  # the term, the title, the host, the ban's reason
    where: str  # the engine, the host, the ban's end
    severity: int | None = None  # a risk match's severity
    theme: str = ""
    ref: str = ""  # the event's or ban's reference
    reviewed: bool = True

    @property
    def label(self) -> str:
        return KIND_WORDS.get(self.kind, words.plain(self.kind).capitalize())


def _event_entry(row: EventRow, reviewed: set[str]) -> Entry:
    found = match_of(row)
    if found is not None:
        return Entry(row.at, row.kind, found.what, found.source, found.severity, found.theme,
                     row.ref, row.ref in reviewed)  # fmt: skip
    if row.kind == "search":
        return Entry(row.at, row.kind, row.search_term or "", row.host or "", ref=row.ref)
    where = words.category_words(row.category) if row.category else ""
    what = row.url or row.host or ""
    return Entry(row.at, row.kind, what, where, ref=row.ref)


def _ban_entry(ban: BanRow, now: datetime, tz: tzinfo | None) -> Entry:
    if ban.lifted_at is not None:
        state = f"lifted {words.moment(ban.lifted_at, now, tz)} by {ban.lifted_by}"
    else:
        state = words.until(ban.ends, now, tz) if ban.ends else "until lifted"
    kind = "lockout" if ban.kind == "lockout" else "supervised-only ban"
    return Entry(ban.starts, "ban", f"{kind}: {ban.reason}".strip(": "), state, ref=ban.ref)


def timeline(
    session: Session,
    subject: str,
    *,
    viewer: str,
    now: datetime,
    days: int,
    tz: tzinfo | None,
    reviewed: set[str],
) -> list[Entry]:
    """The pupil's timeline over the last ``days`` days; the view is written to the audit
    trail (who looked at whose timeline, when, over what period). The caller commits."""
    since = now - timedelta(days=days)
    entries = [_event_entry(r, reviewed) for r in timeline_events(session, subject, since=since)]
    entries += [
        _ban_entry(b, now, tz)
        for b in subject_bans(session, subject)
        if b.starts >= since or b.ends is None or b.ends >= since
    ]
    entries.sort(key=lambda e: e.at, reverse=True)
    audit(session, viewer, "dsl.timeline_view", subject, f"days={days}")
    return entries


# -- export -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseRecord:
    """Everything a case export holds."""

    case: CaseRow
    matches: list[Match]
    notes: list[CaseNoteRow]


def case_record(session: Session, case: CaseRow, *, viewer: str, how: str) -> CaseRecord:
    """The case with its matches and notes; the export (``how``: html or csv) is audited.
    The caller commits."""
    audit(session, viewer, "dsl.case_export", case.subject, f"case={case.id} as={how}")
    return CaseRecord(case, case_matches(session, case), case_notes(session, case))


def _cell(value: object) -> str:
    """A CSV cell a spreadsheet will not run as a formula (a pupil typed the term)."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def case_csv(record: CaseRecord) -> str:
    """One row per matched event and per note or status change, oldest first."""
    case = record.case
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    rows: list[tuple[datetime, int, list[object]]] = []
    for m in record.matches:
        e = m.event
        rows.append((e.at, 0, [
            case.id, case.pupil, case.group or "", "search" if e.kind == "search" else "page",
            e.at.isoformat(), "", m.severity, m.theme, m.what, m.source, e.url or "",
            e.ref, "", e.rule or "",
        ]))  # fmt: skip
    for n in record.notes:
        rows.append((n.at, 1, [
            case.id, case.pupil, case.group or "", "status" if n.status else "note",
            n.at.isoformat(), n.author, "", "", "", "", "", "", n.status or "", n.text,
        ]))  # fmt: skip
    rows.append((case.updated_at, 2, [
        case.id, case.pupil, case.group or "", "outcome", case.updated_at.isoformat(), "",
        "", "", "", "", "", "", case.status, case.outcome,
    ]))  # fmt: skip
    for _at, _order, cells in sorted(rows, key=lambda r: (r[0], r[1])):
        writer.writerow([_cell(c) for c in cells])
    return out.getvalue()
