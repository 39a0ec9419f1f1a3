"""Values from the network made storable, kept faithfully in an escaped form, never dropped.

Whatever a client sends ends up in events: a Host header with a byte that is not UTF-8 (kept by
the gateway as a lone surrogate, Python's ``surrogateescape``), a search term with a NUL, a URL
of a megabyte. A database refuses such values (SQLite and PostgreSQL store UTF-8 only;
PostgreSQL refuses NUL in text and values longer than a ``String(n)`` column). Refused, the
event would be lost; so every value goes through :func:`storable_row` first:

* a byte that was not UTF-8 becomes ``\\xNN`` (``\\udcff`` read from the wire is byte 0xFF),
  any other lone surrogate ``\\uNNNN``, NUL ``\\x00``; in a value that needed any of these, a
  backslash becomes ``\\\\``, so the escapes cannot be confused with the text. The names of
  the columns escaped are listed in the event's ``detail`` (``escaped``);
* a value longer than its column keeps its start in the column; ``detail.overlong.<column>``
  has its length, its SHA-256 (of the escaped text, UTF-8) and, when the column held less than
  :data:`FIELD_MAX` characters, the value up to that many. No value is kept longer than
  :data:`FIELD_MAX` characters (a URL of a megabyte is not browsing; its hash identifies it);
* a time that cannot be read becomes the time of writing (the original in
  ``detail.original_at``); keys that are not columns go to ``detail.extra``; ``detail`` is
  always a JSON object (any other text is kept as ``{"detail": text}``).

Pure: no database, no mitmproxy. The column layout comes in as :class:`Columns`.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

FIELD_MAX = 65_536  # characters kept of any one value
DETAIL_MAX = 262_144  # characters of the detail JSON
INT_MIN, INT_MAX = -(2**31), 2**31 - 1  # an Integer column on PostgreSQL

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# What json.dumps writes for a lone surrogate or NUL (ensure_ascii); surrogate pairs of a
# character outside the BMP match too, and come back whole from json.loads.
_JSON_UNSTORABLE = re.compile(r"\\u(?:[dD][89a-fA-F][0-9a-fA-F]{2}|0000)")


def new_ref() -> str:
    """A unique reference for one logged decision: 16 hex characters (64 random bits)."""
    return secrets.token_hex(8)


def escape_text(text: str) -> str:
    """``text`` with what a database cannot store written as escapes (see the module's
    documentation); text that needs none comes back unchanged."""
    if _UNSTORABLE.search(text) is None:
        return text
    out = []
    for char in text:
        code = ord(char)
        if char == "\\":
            out.append("\\\\")
        elif code == 0:
            out.append("\\x00")
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def json_default(value: Any) -> Any:
    """For :func:`json.dumps`: times as ISO 8601, bytes as text (bytes that are not UTF-8
    as surrogates, escaped later), anything else as ``str()``."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "surrogateescape")
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return str(value)


def clean_json_value(value: Any) -> Any:
    """A JSON-able value with every string (keys too) made storable."""
    if isinstance(value, str):
        return escape_text(value)
    if isinstance(value, dict):
        return {escape_text(str(k)): clean_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json_value(v) for v in value]
    return value


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def overlong_entry(value: str, kept: int) -> dict[str, Any]:
    """What ``detail.overlong`` says of a value cut to ``kept`` characters."""
    entry: dict[str, Any] = {"length": len(value), "sha256": _sha256(value)}
    if kept < FIELD_MAX:
        entry["value"] = value[:FIELD_MAX]
    return entry


class Columns:
    """The layout of the events table: its columns (in order, without the id), which hold
    text, which are ``String(n)`` (and n), which are integers."""

    def __init__(
        self,
        names: Iterable[str],
        text: Iterable[str],
        limits: dict[str, int] | None = None,
        integers: Iterable[str] = (),
    ) -> None:
        self.names = tuple(names)
        self.name_set = frozenset(self.names)
        self.integers = tuple(integers)
        limits = limits or {}
        # (column, characters kept) for every text column but detail: worked out once here.
        self.text_limits = tuple(
            (name, min(limits.get(name, FIELD_MAX), FIELD_MAX))
            for name in self.names
            if name in set(text) and name != "detail"
        )


class _Notes:
    """What making a row storable changed; merged into its ``detail``."""

    __slots__ = ("escaped", "overlong", "extra", "other")

    def __init__(self) -> None:
        self.escaped: list[str] = []
        self.overlong: dict[str, Any] = {}
        self.extra: dict[str, Any] = {}
        self.other: dict[str, Any] = {}

    def __bool__(self) -> bool:
        return bool(self.escaped or self.overlong or self.extra or self.other)


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "surrogateescape")
    return str(value)


def _time(value: Any, now: datetime, notes: _Notes) -> datetime:
    if value is None:
        return now
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    notes.other["original_at"] = escape_text(_as_text(value))[:FIELD_MAX]
    return now


def _integer(name: str, value: Any, notes: _Notes) -> int | None:
    if value is None:
        return None
    if type(value) is int and INT_MIN <= value <= INT_MAX:
        return value
    try:
        number = int(value) if not isinstance(value, (bool, float)) else None
    except (TypeError, ValueError):
        number = None
    if number is not None and INT_MIN <= number <= INT_MAX:
        return number
    notes.other[f"original_{name}"] = escape_text(_as_text(value))[:FIELD_MAX]
    return None


def _detail_object(detail: Any) -> dict[str, Any]:
    """``detail`` as a JSON object (a dict), whatever it was given as."""
    if detail is None:
        return {}
    if isinstance(detail, dict):
        return dict(detail)
    if isinstance(detail, (bytes, bytearray)):
        detail = _as_text(detail)
    if isinstance(detail, str):
        try:
            parsed = json.loads(detail)
        except (ValueError, RecursionError):
            return {"detail": detail}
        return parsed if isinstance(parsed, dict) else {"detail": parsed}
    return {"detail": detail}


def _dump(value: Any) -> str:
    return json.dumps(value, default=json_default, separators=(",", ":"))


def storable_detail(detail: Any, notes: _Notes | None = None) -> str | None:
    """The ``detail`` column's text: a JSON object whose strings are all storable, with the
    notes of what was changed merged in; None when there is nothing to say."""
    if detail is None and not notes:
        return None
    if isinstance(detail, str) and not notes and _JSON_UNSTORABLE.search(detail) is None:
        try:  # the common case: JSON text made by the gateway itself
            if isinstance(json.loads(detail), dict):
                return detail if len(detail) <= DETAIL_MAX else _cut_detail(detail)
        except (ValueError, RecursionError):
            pass
    obj = _detail_object(detail)
    if notes:
        if notes.escaped:
            obj["escaped"] = sorted(set(obj.get("escaped") or ()) | set(notes.escaped))
        if notes.overlong:
            obj["overlong"] = {**(obj.get("overlong") or {}), **notes.overlong}
        if notes.extra:
            obj["extra"] = {**(obj.get("extra") or {}), **notes.extra}
        obj.update(notes.other)
    text = _dump(obj)
    if _JSON_UNSTORABLE.search(text) is not None:
        text = _dump(clean_json_value(json.loads(text)))
    if len(text) > DETAIL_MAX:
        text = _cut_detail(text)
    return text


def _cut_detail(text: str) -> str:
    return _dump({"overlong_detail": {**overlong_entry(text, 0), "start": text[:FIELD_MAX]}})


def storable_row(event: dict[str, Any], columns: Columns, now: datetime) -> dict[str, Any]:
    """The column values of one event, every one of them storable (see the module's
    documentation). ``now``: the time for an event without a readable one."""
    notes = _Notes()
    if not columns.name_set.issuperset(event):
        for key in event:
            if key not in columns.name_set:
                notes.extra[escape_text(_as_text(key))] = event[key]
    get = event.get
    row = {name: get(name) for name in columns.names}
    row["at"] = _time(row.get("at"), now, notes)
    if not row.get("ref"):
        row["ref"] = new_ref()
    if not row.get("kind"):
        row["kind"] = "event"
    if row.get("action") is None:
        row["action"] = ""
    for name in columns.integers:
        value = row[name]
        if value is not None and type(value) is not int:
            row[name] = _integer(name, value, notes)
        elif value is not None and not INT_MIN <= value <= INT_MAX:
            row[name] = _integer(name, value, notes)
    for name, limit in columns.text_limits:
        value = row[name]
        if value is None:
            continue
        if type(value) is not str:
            value = _as_text(value)
        # isascii() is a fast scan: most values are plain ASCII without NUL.
        if not (value.isascii() and "\x00" not in value) and _UNSTORABLE.search(value):
            value = escape_text(value)
            notes.escaped.append(name)
        if len(value) > limit:
            notes.overlong[name] = overlong_entry(value, limit)
            value = value[:limit]
        row[name] = value
    if "detail" in row:
        row["detail"] = storable_detail(row["detail"], notes)
    return row
