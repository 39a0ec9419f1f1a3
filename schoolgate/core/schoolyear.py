"""The school year in a timetable file: term dates, half terms, INSET days and closures.

These readers check the ``terms``, ``inset_days`` and ``closures`` sections of a
``schedules/*.yaml`` file (see :mod:`schoolgate.core.timetable`, which divides each day into
windows) and report every problem with its file, line and field into the file's
:class:`~schoolgate.core.configfile.Issues`.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from typing import Any

from schoolgate.core.configfile import Section

__all__ = ["in_terms", "load_days_off", "load_range", "load_terms", "parse_date"]

_TERM_KEYS = frozenset({"name", "start", "end", "half_term"})
_RANGE_KEYS = frozenset({"start", "end"})
_CLOSURE_KEYS = frozenset({"name", "date", "start", "end"})
_MAX_CLOSURE_DAYS = 366


def parse_date(value: Any) -> date:
    """A date from YAML (a date, or text ``YYYY-MM-DD``); ValueError says how to write it."""
    if isinstance(value, datetime):
        raise ValueError("a date without a time")
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            return date.fromisoformat(text)
        except ValueError as exc:
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
                raise ValueError(f"{text} is not a real date ({exc})") from None
            raise ValueError("write it as YYYY-MM-DD") from None
    raise ValueError("write it as YYYY-MM-DD")


def load_range(sec: Section, what: str) -> tuple[date, date] | None:
    """The inclusive ``start``/``end`` dates of ``sec`` (a term, half term or closure named
    ``what`` in messages); None when either is missing or wrong, or the range runs backwards."""
    start = sec.parse("start", parse_date, "a date YYYY-MM-DD", required=True)
    end = sec.parse("end", parse_date, "a date YYYY-MM-DD", required=True)
    if start is None or end is None:
        return None
    if end < start:
        sec.error(
            "end",
            f"the {what} ends ({end}) before it starts ({start}); expected an end "
            f"on or after {start}",
        )
        return None
    return start, end


def load_terms(root: Section) -> tuple[list[tuple[date, date]], list[tuple[date, date]]]:
    """The ``terms`` section: the terms as ``(start, end)`` in date order, and their half terms.

    Overlapping terms and half terms outside their term are reported."""
    terms: list[tuple[date, date, str, Section]] = []
    half_terms: list[tuple[date, date]] = []
    before = len(root.issues)
    for position, sec in enumerate(root.sections("terms", required=True)):
        sec.check_keys(_TERM_KEYS)
        name = sec.text("name") or f"term {position + 1}"
        span = load_range(sec, "term")
        half = sec.section("half_term")
        half_span = None
        if half is not None:
            half.check_keys(_RANGE_KEYS)
            half_span = load_range(half, "half term")
        if span is None:
            continue
        terms.append((span[0], span[1], name, sec))
        if half_span is not None and half is not None:
            if half_span[0] < span[0]:
                half.error(
                    "start",
                    f"the half term starts ({half_span[0]}) before its term "
                    f"{name!r} ({span[0]} to {span[1]}); expected a date "
                    f"within the term",
                )
            elif half_span[1] > span[1]:
                half.error(
                    "end",
                    f"the half term ends ({half_span[1]}) after its term "
                    f"{name!r} ({span[0]} to {span[1]}); expected a date within "
                    f"the term",
                )
            else:
                half_terms.append(half_span)
    terms.sort(key=lambda t: t[0])
    for earlier, later in zip(terms, terms[1:], strict=False):
        if later[0] <= earlier[1]:
            later[3].error(
                "start",
                f"term {later[2]!r} starts ({later[0]}) before term "
                f"{earlier[2]!r} ends ({earlier[1]}); expected terms not "
                f"to overlap",
            )
    if "terms" in root and not terms and len(root.issues) == before:
        root.error("terms", "expected at least one term with start and end dates")
    return [(start, end) for start, end, _, _ in terms], half_terms


def in_terms(day: date, terms: list[tuple[date, date]]) -> bool:
    """Whether ``day`` falls within one of the inclusive ``(start, end)`` terms."""
    return any(start <= day <= end for start, end in terms)


def load_days_off(
    root: Section, terms: list[tuple[date, date]], check_terms: bool
) -> tuple[list[date], dict[date, str]]:
    """The ``inset_days`` (each checked to fall in a term when ``check_terms``) and the
    ``closures`` as one entry per closed date, mapped to the closure's name."""
    inset: list[date] = []
    for item, line, field_name in root.items("inset_days"):
        try:
            day = parse_date(item)
        except ValueError as exc:
            root.issues.add(
                root.file, line, field_name, f"expected a date YYYY-MM-DD, got {item!r}: {exc}"
            )
            continue
        if check_terms and not in_terms(day, terms):
            root.issues.add(
                root.file,
                line,
                field_name,
                f"INSET day {day} is not in any term; expected a date within a "
                f"term (check the year)",
            )
            continue
        inset.append(day)
    closures: dict[date, str] = {}
    for sec in root.sections("closures"):
        sec.check_keys(_CLOSURE_KEYS)
        name = sec.text("name", required=True)
        if "date" in sec:
            if "start" in sec or "end" in sec:
                sec.error("date", "give either 'date' (one day) or 'start' and 'end', not both")
                continue
            day = sec.parse("date", parse_date, "a date YYYY-MM-DD")
            span = (day, day) if day is not None else None
        elif "start" in sec or "end" in sec:
            span = load_range(sec, "closure")
        else:
            sec.error(
                None,
                "missing required field 'date' (a date YYYY-MM-DD), or 'start' and "
                "'end' for several days",
            )
            continue
        if span is None or not name:
            continue
        if (span[1] - span[0]).days >= _MAX_CLOSURE_DAYS:
            sec.error(
                "end",
                f"a closure of more than {_MAX_CLOSURE_DAYS} days; expected an end "
                f"within a year of the start (holidays are the gaps between terms)",
            )
            continue
        day = span[0]
        while day <= span[1]:
            closures[day] = name
            day += timedelta(days=1)
    return inset, closures
