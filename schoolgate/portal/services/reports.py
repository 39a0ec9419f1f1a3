"""Reports in the console: those the scheduled jobs wrote (the reports folder, HTML and CSV),
browsable and downloadable, and a report for any day, week or term built on request (the same
figures and page as ``schoolgate report``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

# What write_report names its files: report-<kind>-<date...>.html|csv (nothing else is served).
REPORT_NAME = re.compile(r"^report-[A-Za-z0-9_.\-]{1,120}\.(html|csv)$")


@dataclass(frozen=True)
class ReportFile:
    name: str
    kind: str  # html | csv
    size: int
    modified: datetime


def folder(policy: Any) -> Path:
    from schoolgate.jobs.scheduler import reports_folder
    from schoolgate.reports.build import reports_of

    return reports_folder(policy, reports_of(policy))


def report_files(policy: Any, tz: Any) -> list[ReportFile]:
    """The reports kept, newest first."""
    where = folder(policy)
    if not where.is_dir():
        return []
    found = []
    for path in where.iterdir():
        if not REPORT_NAME.match(path.name) or not path.is_file():
            continue
        stat = path.stat()
        found.append(
            ReportFile(
                name=path.name,
                kind=path.suffix[1:],
                size=stat.st_size,
                modified=datetime.fromtimestamp(stat.st_mtime, tz),
            )
        )
    found.sort(key=lambda f: (f.modified, f.name), reverse=True)
    return found


def report_path(policy: Any, name: str) -> Path | None:
    """The file of a kept report, or None (only names the report writer makes, only in the
    reports folder: never a path a visitor chose)."""
    if not REPORT_NAME.match(name or ""):
        return None
    path = folder(policy) / name
    return path if path.is_file() else None


def build(
    session: Session, policy: Any, kind: str, on: date | None, *, now: datetime
) -> tuple[str, str, str]:
    """A report for the ``kind`` (day, week, term) containing ``on``: (HTML, CSV, label)."""
    from schoolgate.reports.build import build_report, period_for, reports_of
    from schoolgate.reports.render import render_csv, render_html

    period = period_for(kind, policy, on=on)
    report = build_report(session, period, policy=policy, settings=reports_of(policy), now=now)
    return render_html(report), render_csv(report), period.label


__all__ = ["REPORT_NAME", "ReportFile", "build", "folder", "report_files", "report_path"]
