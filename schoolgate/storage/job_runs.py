"""The last run of each scheduled job, and how it went (``schoolgate jobs list``, and the
console's health view).

One row per job, replaced at every run: when it started and finished, ``ok`` or ``failed``,
a line saying what it did, and the error when it failed. Created by migration 0007; a run that
cannot be recorded (the database is unreachable) does not fail the job.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.storage.models import JobRunRow

log = logging.getLogger(__name__)

OK = "ok"
FAILED = "failed"
MAX_TEXT = 2000


def record_run(
    sessions: sessionmaker[Session],
    name: str,
    *,
    started: datetime,
    finished: datetime,
    outcome: str,
    summary: str = "",
    error: str | None = None,
    host: str = "",
) -> bool:
    """Keep this run as the job's last one; False when it could not be kept (never raises: a
    job's work must not be undone by its bookkeeping)."""
    try:
        with sessions.begin() as session:
            row = session.get(JobRunRow, name) or JobRunRow(name=name)
            row.started_at, row.finished_at = started, finished
            row.outcome = outcome
            row.summary = summary[:MAX_TEXT]
            row.error = error[:MAX_TEXT] if error else None
            row.host = host[:300]
            session.add(row)
        return True
    except SQLAlchemyError:
        log.warning("could not record the run of job %s", name, exc_info=True)
        return False


def last_runs(session: Session) -> dict[str, JobRunRow]:
    """Each job's last run, by name."""
    return {row.name: row for row in session.scalars(select(JobRunRow))}
