"""Reading YAML configuration with line numbers, and collecting every error in it.

A school's network manager edits these files by hand. When something is wrong they need
every mistake at once, each naming the file, the line and the field, and what was expected;
so loaders never raise on the first problem: they report into an :class:`Issues` collector
and the caller raises :class:`ConfigError` with all of them at the end.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import yaml


class MarkedDict(dict[Any, Any]):
    """A mapping from YAML that remembers the line of each key (1-based)."""

    line: int = 0
    key_lines: dict[Any, int]
    duplicates: list[tuple[Any, int]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key_lines = {}
        self.duplicates = []


class MarkedList(list[Any]):
    """A sequence from YAML that remembers the line of each item (1-based)."""

    line: int = 0
    item_lines: list[int]

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.item_lines = []


class _LineLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> MarkedDict:
    loader.flatten_mapping(node)
    result = MarkedDict()
    result.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            key = str(key)
        line = key_node.start_mark.line + 1
        if key in result:
            result.duplicates.append((key, line))
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = line
    return result


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> MarkedList:
    result = MarkedList()
    result.line = node.start_mark.line + 1
    for item_node in node.value:
        result.append(loader.construct_object(item_node, deep=True))
        result.item_lines.append(item_node.start_mark.line + 1)
    return result


def _construct_timestamp(loader: _LineLoader, node: yaml.ScalarNode) -> Any:
    # An impossible date (2026-02-30) stays text, so that the field's own parser reports it
    # with its line, instead of the whole file failing with a bare ValueError.
    try:
        return loader.construct_yaml_timestamp(node)
    except ValueError:
        return loader.construct_scalar(node)


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)
_LineLoader.add_constructor("tag:yaml.org,2002:timestamp", _construct_timestamp)

# YAML 1.1 reads "10:30" as the sexagesimal integer 630. In a timetable that is always a time,
# so this loader resolves ints and floats without the sexagesimal forms and "10:30" stays text.
_LineLoader.yaml_implicit_resolvers = {
    first: [
        (tag, rx)
        for tag, rx in resolvers
        if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_LineLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_LineLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9_]+(?:[eE][-+][0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


@dataclass(frozen=True, order=True)
class ConfigIssue:
    """One problem in a configuration file."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class ConfigError(Exception):
    """Raised once loading is over, carrying every issue found."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = sorted(set(issues))
        super().__init__("\n".join(str(i) for i in self.issues))


@dataclass
class Issues:
    """Collects configuration problems across files.

    Errors (``add``) refuse the whole configuration. Warnings (``warn``) are reported but do
    not: a bad line in a subscribed third-party list is skipped, not a reason to fail.
    """

    items: list[ConfigIssue] = field(default_factory=list)
    warnings: list[ConfigIssue] = field(default_factory=list)

    def add(self, file: str | Path, line: int | None, field_name: str, message: str) -> None:
        self.items.append(ConfigIssue(str(file), line or 0, field_name, message))

    def warn(self, file: str | Path, line: int | None, field_name: str, message: str) -> None:
        self.warnings.append(ConfigIssue(str(file), line or 0, field_name, message))

    def __bool__(self) -> bool:
        return bool(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(self.items)


def load_yaml_value(path: Path, issues: Issues, *, shown: str | None = None) -> Any:
    """Read a YAML file of any shape; report problems into ``issues`` and return None."""
    shown = shown or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        issues.add(shown, None, "", "file not found")
        return None
    except (OSError, UnicodeDecodeError) as exc:
        issues.add(shown, None, "", f"cannot read file: {exc}")
        return None
    try:
        return yaml.load(text, Loader=_LineLoader)  # noqa: S506 - _LineLoader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        issues.add(shown, line, "", f"invalid YAML: {exc.problem or exc}")
    except yaml.YAMLError as exc:
        issues.add(shown, None, "", f"invalid YAML: {exc}")
    return None


def load_yaml(path: Path, issues: Issues, *, shown: str | None = None) -> MarkedDict | None:
    """Read a YAML file whose top level must be a mapping; report problems into ``issues``."""
    shown = shown or str(path)
    before = len(issues)
    data = load_yaml_value(path, issues, shown=shown)
    if len(issues) > before:
        return None
    if data is None:
        data = MarkedDict()
        data.line = 1
    if not isinstance(data, MarkedDict):
        issues.add(shown, 1, "", f"expected a mapping at the top level, got {_kind(data)}")
        return None
    return data


def resolve_path(text: str, base: Path) -> Path:
    """A path given in a config file: relative ones are to the config's folder ``base``."""
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


def display_path(path: Path, base: Path) -> str:
    """How a file is named in messages: relative to the config's folder when inside it."""
    try:
        return str(path.resolve().relative_to(base))
    except ValueError:
        return str(path)


def wrap(value: Any, key: str, line: int = 1) -> MarkedDict:
    """Put a loaded value under ``key`` so a :class:`Section` can read it (a list file)."""
    holder = MarkedDict({key: value})
    holder.key_lines[key] = line
    holder.line = line
    return holder


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"a boolean ({value!r})"
    if isinstance(value, int):
        return f"a number ({value!r})"
    if isinstance(value, float):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"text ({value!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


_MISSING = object()


class Section:
    """A mapping in a config file, with typed getters that report errors instead of raising.

    ``path`` is the dotted field name of this mapping (``identity.networks[0]``); getters
    report problems as ``<path>.<key>`` at the key's line.
    """

    def __init__(
        self, data: dict[Any, Any], *, file: str | Path, path: str, issues: Issues, line: int = 0
    ) -> None:
        self.data = data
        self.file = str(file)
        self.path = path
        self.issues = issues
        self.line = getattr(data, "line", 0) or line
        for key, dup_line in getattr(data, "duplicates", []):
            self.issues.add(self.file, dup_line, self.field(key), "duplicate key (each key once)")

    # -- locations -------------------------------------------------------------------------
    def field(self, key: Any) -> str:
        return f"{self.path}.{key}" if self.path else str(key)

    def line_of(self, key: Any) -> int:
        return self.data.key_lines.get(key, self.line) if isinstance(self.data, MarkedDict) else 0

    def error(self, key: Any | None, message: str) -> None:
        if key is None:
            self.issues.add(self.file, self.line, self.path, message)
        else:
            self.issues.add(self.file, self.line_of(key), self.field(key), message)

    def __contains__(self, key: Any) -> bool:
        return key in self.data

    def keys(self) -> list[Any]:
        return list(self.data.keys())

    # -- checks ---------------------------------------------------------------------------
    def check_keys(self, allowed: set[str] | frozenset[str]) -> None:
        """Report keys this section does not know, suggesting the closest known one."""
        for key in self.data:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                known = ", ".join(sorted(allowed))
                self.error(key, f"unknown key{hint}; expected one of: {known}")

    # -- getters --------------------------------------------------------------------------
    def get(
        self,
        key: str | int,  # YAML mappings may have numbers as keys
        types: type | tuple[type, ...],
        what: str,
        *,
        required: bool = False,
        default: Any = None,
    ) -> Any:
        """Return the value if it has one of ``types``; otherwise report and return default."""
        value = self.data.get(key, _MISSING)
        if value is _MISSING or value is None:
            if required:
                self.error(None, f"missing required field '{key}' ({what})")
            return default
        # bool is a subclass of int: never accept true/false where a number is wanted
        if isinstance(value, bool) and bool not in (
            types if isinstance(types, tuple) else (types,)
        ):
            self.error(key, f"expected {what}, got {_kind(value)}")
            return default
        if not isinstance(value, types):
            self.error(key, f"expected {what}, got {_kind(value)}")
            return default
        return value

    @overload
    def text(self, key: str, *, required: bool = False, default: str) -> str: ...
    @overload
    def text(self, key: str, *, required: bool = False, default: None = None) -> str | None: ...
    def text(self, key: str, *, required: bool = False, default: str | None = None) -> str | None:
        value = self.get(key, (str, int, float), "text", required=required, default=default)
        return str(value).strip() if value is not None else None

    @overload
    def number(
        self,
        key: str,
        *,
        required: bool = False,
        default: int,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int: ...
    @overload
    def number(
        self,
        key: str,
        *,
        required: bool = False,
        default: None = None,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int | None: ...
    def number(
        self,
        key: str,
        *,
        required: bool = False,
        default: int | None = None,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int | None:
        value: int | None = self.get(key, int, "a whole number", required=required, default=default)
        if value is None or value is default:
            return value
        if minimum is not None and value < minimum:
            self.error(key, f"expected a whole number of at least {minimum}, got {value}")
            return default
        if maximum is not None and value > maximum:
            self.error(key, f"expected a whole number of at most {maximum}, got {value}")
            return default
        return value

    def flag(self, key: str, *, default: bool = False) -> bool:
        value: bool = self.get(key, bool, "true or false", default=default)
        return value

    @overload
    def choice(
        self,
        key: str,
        choices: tuple[str, ...] | list[str],
        *,
        required: bool = False,
        default: str,
    ) -> str: ...
    @overload
    def choice(
        self,
        key: str,
        choices: tuple[str, ...] | list[str],
        *,
        required: bool = False,
        default: None = None,
    ) -> str | None: ...
    def choice(
        self,
        key: str,
        choices: tuple[str, ...] | list[str],
        *,
        required: bool = False,
        default: str | None = None,
    ) -> str | None:
        value = self.text(key, required=required, default=None)
        if value is None:
            return default
        if value not in choices:
            self.error(key, f"expected one of {', '.join(choices)}, got {value!r}")
            return default
        return value

    def section(self, key: str, *, required: bool = False) -> Section | None:
        value = self.get(key, dict, "a mapping", required=required)
        if value is None:
            return None
        return Section(
            value,
            file=self.file,
            path=self.field(key),
            issues=self.issues,
            line=self.line_of(key),
        )

    def items(self, key: str, *, required: bool = False) -> Iterator[tuple[Any, int, str]]:
        """Yield ``(item, line, field)`` for each item of a list (a lone scalar counts as one)."""
        value = self.data.get(key)
        if value is None:
            if required:
                self.error(None, f"missing required field '{key}' (a list)")
            return
        if not isinstance(value, list):
            if isinstance(value, dict):
                self.error(key, f"expected a list, got {_kind(value)}")
                return
            yield value, self.line_of(key), self.field(key)
            return
        lines = getattr(value, "item_lines", [])
        for index, item in enumerate(value):
            line = lines[index] if index < len(lines) else self.line_of(key)
            yield item, line, f"{self.field(key)}[{index}]"

    def sections(self, key: str, *, required: bool = False) -> Iterator[Section]:
        """Yield a :class:`Section` for each mapping in a list; report items that are not."""
        for item, line, field_name in self.items(key, required=required):
            if not isinstance(item, dict):
                self.issues.add(
                    self.file, line, field_name, f"expected a mapping, got {_kind(item)}"
                )
                continue
            yield Section(item, file=self.file, path=field_name, issues=self.issues, line=line)

    def named_sections(self, key: str, *, required: bool = False) -> Iterator[tuple[str, Section]]:
        """Yield ``(name, Section)`` for a mapping of named mappings (``categories: {x: {...}}``).

        A name whose value is empty counts as an empty mapping.
        """
        value = self.section(key, required=required)
        if value is None:
            return
        for name, item in value.data.items():
            if item is None:
                item = MarkedDict()
                item.line = value.line_of(name)
            if not isinstance(item, dict):
                value.error(name, f"expected a mapping, got {_kind(item)}")
                continue
            yield (
                str(name),
                Section(
                    item,
                    file=self.file,
                    path=value.field(name),
                    issues=self.issues,
                    line=value.line_of(name),
                ),
            )

    def strings(self, key: str, *, required: bool = False) -> list[tuple[str, int, str]]:
        """A list of texts, each with its line and field name."""
        out: list[tuple[str, int, str]] = []
        for item, line, field_name in self.items(key, required=required):
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                self.issues.add(self.file, line, field_name, f"expected text, got {_kind(item)}")
                continue
            out.append((str(item).strip(), line, field_name))
        return out

    def parse(
        self,
        key: str,
        parser: Callable[[Any], Any],
        what: str,
        *,
        required: bool = False,
        default: Any = None,
    ) -> Any:
        """Run ``parser`` over a value; a ValueError it raises becomes a reported issue."""
        value = self.data.get(key, _MISSING)
        if value is _MISSING or value is None:
            if required:
                self.error(None, f"missing required field '{key}' ({what})")
            return default
        try:
            return parser(value)
        except (ValueError, TypeError) as exc:
            detail = f": {exc}" if str(exc) else ""
            self.error(key, f"expected {what}, got {_kind(value)}{detail}")
            return default


def parse_clock(value: Any) -> str:
    """``"02:30"`` -> ``"02:30"`` (a time of day, local to the default site)."""
    text = str(value).strip()
    hours, _, minutes = text.partition(":")
    if not (hours.isdigit() and minutes.isdigit() and len(minutes) == 2):
        raise ValueError("a time of day such as 02:30")
    h, m = int(hours), int(minutes)
    if not (0 <= h <= 23 and 0 <= m <= 59):
        raise ValueError("a time of day between 00:00 and 23:59")
    return f"{h:02d}:{m:02d}"
