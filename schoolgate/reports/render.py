"""A report as self-contained HTML (inline CSS and SVG charts, nothing fetched) or as CSV."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup, escape

from schoolgate.reports.build import Report, Section_

TEMPLATES = Path(__file__).with_name("templates")
BAR_COLOUR = "#2f6690"
ALERT_COLOUR = "#b23a48"


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
        return Markup('<p class="empty">Nothing recorded.</p>')
    label_w = min(200, max(60, 7 * max(len(k) for k, _ in items)))
    value_w = 60
    plot_w = width - label_w - value_w
    top = max(v for _, v in items) or 1
    height = len(items) * (bar_height + 6) + 4
    desc = "; ".join(f"{k}: {v}" for k, v in items)
    parts = [
        f'<svg class="chart" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title><desc>{escape(desc)}</desc>",
    ]
    for i, (key, value) in enumerate(items):
        y = 2 + i * (bar_height + 6)
        w = 0 if not value else max(2, round(plot_w * value / top))
        short = key if len(key) <= 28 else key[:27] + "\u2026"
        parts.append(
            f'<text x="{label_w - 6}" y="{y + bar_height - 5}" text-anchor="end" '
            f'font-size="12">{escape(short)}</text>'
            f'<rect x="{label_w}" y="{y}" width="{w}" height="{bar_height}" fill="{colour}"/>'
            f'<text x="{label_w + w + 4}" y="{y + bar_height - 5}" font-size="12">{value}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def column_chart(items: list[tuple[str, int]], *, title: str, width: int = 520,
                 height: int = 160, label_every: int | None = None) -> Markup:  # fmt: skip
    """Vertical columns (days of a week, hours of a day) as inline SVG; ``label_every``: name
    every so many columns (default: all up to 12, else every third)."""
    if not items or not any(v for _, v in items):
        return Markup('<p class="empty">Nothing recorded.</p>')
    n = len(items)
    slot = (width - 10) / n
    top = max(v for _, v in items) or 1
    plot_h = height - 34
    desc = "; ".join(f"{k}: {v}" for k, v in items)
    parts = [
        f'<svg class="chart" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title><desc>{escape(desc)}</desc>",
    ]
    every = label_every or (1 if n <= 12 else 3)
    for i, (key, value) in enumerate(items):
        h = 0 if not value else max(1, round(plot_h * value / top))
        x = 5 + i * slot
        parts.append(
            f'<rect x="{x + slot * 0.1:.1f}" y="{plot_h - h + 14}" width="{slot * 0.8:.1f}" '
            f'height="{h}" fill="{BAR_COLOUR}"><title>{escape(key)}: {value}</title></rect>'
        )
        if value and n <= 12:
            parts.append(
                f'<text x="{x + slot / 2:.1f}" y="{plot_h - h + 11}" text-anchor="middle" '
                f'font-size="11">{value}</text>'
            )
        if i % every == 0:
            parts.append(
                f'<text x="{x + slot / 2:.1f}" y="{height - 4}" text-anchor="middle" '
                f'font-size="11">{escape(key)}</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))


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
