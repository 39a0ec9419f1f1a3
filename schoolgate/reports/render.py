"""A report as self-contained HTML (inline CSS and SVG charts, nothing fetched) or as CSV."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from schoolgate.reports.build import Report, Section_

TEMPLATES = Path(__file__).with_name("templates")
BAR_COLOUR = "#2f6690"
ALERT_COLOUR = "#b23a48"


@lru_cache(maxsize=1)
def _charts() -> Any:
    """The macros of ``_charts.html`` (made once: charts are drawn while a report renders)."""
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html"])
    )
    return env.get_template("_charts.html").module


def bar_chart(
    items: list[tuple[str, int]],
    *,
    title: str,
    width: int = 520,
    bar_height: int = 18,
    colour: str = BAR_COLOUR,
    max_items: int = 15,
) -> Markup:
    """A horizontal bar chart as inline SVG (with a text alternative for screen readers)."""
    items = items[:max_items]
    if not items:
        return _charts().empty()
    label_w = min(200, max(60, 7 * max(len(k) for k, _ in items)))
    value_w = 60
    plot_w = width - label_w - value_w
    top = max(v for _, v in items) or 1
    rows = []
    for i, (key, value) in enumerate(items):
        y = 2 + i * (bar_height + 6)
        w = 0 if not value else max(2, round(plot_w * value / top))
        rows.append(
            {
                "label": key if len(key) <= 28 else key[:27] + "\u2026",
                "label_x": label_w - 6,
                "text_y": y + bar_height - 5,
                "x": label_w,
                "y": y,
                "w": w,
                "h": bar_height,
                "value_x": label_w + w + 4,
                "value": value,
            }
        )
    chart = {
        "width": width,
        "height": len(items) * (bar_height + 6) + 4,
        "title": title,
        "desc": "; ".join(f"{k}: {v}" for k, v in items),
        "colour": colour,
        "rows": rows,
    }
    return _charts().bars(chart)


def column_chart(items: list[tuple[str, int]], *, title: str, width: int = 520,
                 height: int = 160, label_every: int | None = None) -> Markup:  # fmt: skip
    """Vertical columns (days of a week, hours of a day) as inline SVG; ``label_every``: name
    every so many columns (default: all up to 12, else every third)."""
    if not items or not any(v for _, v in items):
        return _charts().empty()
    n = len(items)
    slot = (width - 10) / n
    top = max(v for _, v in items) or 1
    plot_h = height - 34
    every = label_every or (1 if n <= 12 else 3)
    rows = []
    for i, (key, value) in enumerate(items):
        h = 0 if not value else max(1, round(plot_h * value / top))
        x = 5 + i * slot
        rows.append(
            {
                "key": key,
                "value": value,
                "x": f"{x + slot * 0.1:.1f}",
                "y": plot_h - h + 14,
                "w": f"{slot * 0.8:.1f}",
                "h": h,
                "mid": f"{x + slot / 2:.1f}",
                "value_y": plot_h - h + 11 if value and n <= 12 else None,
                "label": i % every == 0,
            }
        )
    chart = {
        "width": width,
        "height": height,
        "title": title,
        "desc": "; ".join(f"{k}: {v}" for k, v in items),
        "colour": BAR_COLOUR,
        "rows": rows,
    }
    return _charts().columns(chart)


def _when(value: Any, tz: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(tz).strftime("%a %d %b %H:%M")
    return "" if value is None else str(value)


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(bar_chart=bar_chart, column_chart=column_chart)
    return env


def render_html(report: Report, *, title: str = "Online safety report") -> str:
    tz = report.period.tz
    env = _environment()
    env.filters["when"] = lambda v: _when(v, tz)
    return env.get_template("report.html").render(
        r=report,
        title=title,
        generated=report.generated_at.astimezone(tz).strftime("%A %d %B %Y %H:%M %Z"),
        alert=ALERT_COLOUR,
    )


# The parts of a subject access export (``schoolgate export --html``), in the order shown.
SUBJECT_ACCESS_SECTIONS = {
    "events": "What the gateway recorded",
    "exceptions": "Exceptions (allowed access) for or by this person",
    "audit": "Audit trail entries about this person",
    "requests_and_reports": "Access requests and content reports",
    "bans": "Bans",
    "staff_account": "Staff account",
}


def _cell(value: Any) -> Any:
    if isinstance(value, dict):
        return json.dumps(value)
    return "" if value is None else value


def render_subject_access(data: dict[str, Any]) -> str:
    """A subject access export (what ``schoolgate export`` gathers about one person) as one
    HTML page: the roster, then a table per kind of record, with only the columns that hold
    something."""
    sections = []
    for key, title in SUBJECT_ACCESS_SECTIONS.items():
        value = data.get(key)
        columns: list[str] = []
        if value and not isinstance(value, str):
            columns = [c for c in value[0] if any(row.get(c) not in (None, "") for row in value)]
        sections.append((title, value, columns))
    env = _environment()
    env.filters["cell"] = _cell
    return (
        env.get_template("subject_access.html").render(
            subject=data["subject"],
            generated_at=data["generated_at"],
            controller_note=data["controller_note"],
            roster=data.get("roster"),
            sections=sections,
        )
        + "\n"
    )


def render_csv(report: Report) -> str:
    """One long table: section, item, count, detail (opens in any spreadsheet)."""
    tz = report.period.tz
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["section", "item", "count", "detail"])
    w.writerow(["period", report.period.kind, "", report.period.label])
    for key, value in report.totals.items():
        w.writerow(["totals", key, value, ""])
    for section, items in (
        ("blocks by category", report.blocks_by_category),
        ("blocks by window", report.blocks_by_window),
        ("blocks by role", report.blocks_by_role),
        ("blocks by group", report.blocks_by_group),
        ("blocks by day", report.blocks_by_day),
        ("blocks by hour", report.blocks_by_hour),
    ):
        for key, value in items:
            w.writerow([section, key, value, ""])
    for row in report.top_hosts:
        w.writerow(
            [
                "top blocked hosts",
                row["host"],
                row["blocks"],
                f"{row['people']} people; {row['category']}",
            ]  # fmt: skip
        )
    for key, value in report.circumvention.get("by_detector", []):
        w.writerow(["circumvention by detector", key, value, ""])
    for name, sec in (
        ("bans", report.bans),
        ("access requests", report.requests),
        ("content reports", report.content_reports),
    ):
        _csv_section(w, name, sec)
    for row in report.exceptions:
        w.writerow(
            ["exceptions in force", f"#{row['id']} {row['target']}", "",
             f"for {row['for']} until {_when(row['until'], tz) or 'no end'} by {row['by']}"]
        )  # fmt: skip
    for row in report.at_risk:
        w.writerow(
            ["may be at risk", row["user"], row["score"], f"{row['group']}: {row['reasons']}"]
        )
    for row in report.list_updates:
        w.writerow(["list updates", row.get("category", ""), "", row.get("message", "")])
    return out.getvalue()


def _csv_section(w: Any, name: str, sec: Section_) -> None:
    if not sec.recorded:
        w.writerow([name, "not recorded", "", sec.note])
        return
    for key, value in sec.summary.items():
        w.writerow([name, key, value, ""])


def write_report(report: Report, folder: Path, formats: tuple[str, ...] = ("html", "csv")
                 ) -> list[Path]:  # fmt: skip
    """Write the report under ``folder`` (``<kind>-<date>.html``/``.csv``), atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        text = render_html(report) if fmt == "html" else render_csv(report)
        path = folder / f"report-{report.period.slug()}.{fmt}"
        temp = path.with_name("." + path.name + ".tmp")
        temp.write_text(text, encoding="utf-8")
        temp.replace(path)
        written.append(path)
    return written
