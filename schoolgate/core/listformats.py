"""Reading category lists: domain/URL lists in the formats schools subscribe to.

Formats (detected per line with ``fmt="auto"``, or forced):

* ``domains``: one domain a line; ``*.example.com`` and ``.example.com`` mean the same as
  ``example.com`` (a domain always includes its subdomains). Bare IPv4/IPv6 addresses are kept
  as host entries and match only an IP-literal request to that exact address.
* ``hosts``: ``0.0.0.0 example.com`` / ``127.0.0.1 a.com b.com`` / ``:: example.com``; names such
  as ``localhost`` and ``broadcasthost`` are ignored.
* ``adblock``: ``||example.com^`` (``$options`` are ignored: the rule blocks the whole domain),
  ``||example.com/path`` and ``|https://example.com/path`` become path rules. Cosmetic rules
  (``##``, ``#@#``, ...) are ignored silently. Exception rules (``@@``) and other URL patterns
  are *reported as unsupported* and skipped (they are never treated as an allow: put such
  sites in the allowlist instead).
* ``squidguard``: a category folder with ``domains`` (as above), ``urls`` (``host/path``
  prefixes, a leading ``www.`` optional) and ``expressions`` (regular expressions, searched
  case-insensitively in ``host/path``); ``usage`` and other files are ignored.
* Comments (``#``, ``!``, ``;`` at the start of a line, or `` #`` after an entry) and blank lines
  are skipped. Duplicate entries are kept once (the first line wins).

An invalid line is reported into :class:`~schoolgate.core.configfile.Issues` with its file and
line, counted in :attr:`ParsedList.skipped`, and the rest of the file still loads (after
:data:`MAX_ISSUES_PER_FILE` issues from one file the rest are summarised in one issue).

A parsed list is a list of domain strings and an ``array`` of line numbers (cheap for a
million-line list); :class:`schoolgate.core.lists.Matcher` indexes them for lookups.
"""

from __future__ import annotations

import ipaddress
import re
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from schoolgate.core.configfile import Issues
from schoolgate.core.hosts import normalize_host
from schoolgate.core.urlpaths import normalize_path

FORMATS = ("auto", "domains", "hosts", "adblock", "squidguard")
MAX_ISSUES_PER_FILE = 100

# normalize_host is lru-cached for request hosts; list entries (a million distinct names)
# would only flush that cache, so lists call the uncached function.
_normalize = getattr(normalize_host, "__wrapped__", normalize_host)

# A clean, lower-case, ASCII host name of two or more labels (the common case, checked first).
_DOMAIN_RE = re.compile(
    r"(?:[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?\.)+[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?"
)
_LABEL_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?")
# A run of such lines, each ending with a newline and not in a digit (an IPv4 address goes the
# slow way): a million-line list is read in one match instead of a million. Possessive, so
# that the engine keeps no state per line it has passed.
_CLEAN_RUN_RE = re.compile(r"(?:" + _DOMAIN_RE.pattern + r"(?<![0-9])\n)*+")
_DIGITS = frozenset("0123456789")
_COMMENT_STARTS = ("#", "!", ";")
_COSMETIC = ("##", "#@#", "#?#", "#$#", "#%#", "#@$#", "#@?#")
_HOSTS_IGNORED = frozenset(
    {
        "localhost",
        "localhost.localdomain",
        "local",
        "broadcasthost",
        "ip6-localhost",
        "ip6-loopback",
        "ip6-localnet",
        "ip6-mcastprefix",
        "ip6-allnodes",
        "ip6-allrouters",
        "ip6-allhosts",
        "0.0.0.0",
    }
)


@dataclass(eq=False)
class ParsedList:
    """The entries read from one list file, folder or inline block.

    ``domains[i]`` was read on line ``domain_lines[i]``; ``paths`` holds ``(host, prefix,
    line)`` and ``regexes`` ``(pattern, compiled, line)``. ``sources`` maps the ``source``
    index of each kind when a squidGuard folder contributes several files (see
    :attr:`path_source` and :attr:`regex_source`).
    """

    source: str
    domains: list[str] = field(default_factory=list)
    domain_lines: array[int] = field(default_factory=lambda: array("L"))
    paths: list[tuple[str, str, int]] = field(default_factory=list)
    regexes: list[tuple[str, re.Pattern[str], int]] = field(default_factory=list)
    skipped: int = 0  # invalid or unsupported lines (each reported)
    ignored: int = 0  # comments, blank lines, cosmetic rules, localhost names
    path_source: str = ""  # display source of path rules ("" = same as source)
    regex_source: str = ""  # display source of regexes ("" = same as source)

    def __len__(self) -> int:
        return len(self.domains) + len(self.paths) + len(self.regexes)


# -- reading ------------------------------------------------------------------------------------


class _Reader:
    """Line parser state for one file: where entries go and how issues are reported."""

    __slots__ = ("out", "issues", "display", "reported", "suppressed", "report")

    def __init__(self, out: ParsedList, issues: Issues, display: str, *, strict: bool) -> None:
        self.out = out
        self.issues = issues
        self.display = display
        self.reported = 0
        self.suppressed = 0
        # A list file is often a third party's: its bad lines are skipped with a warning.
        # Inline entries are the school's own config: a bad one is an error.
        self.report = issues.add if strict else issues.warn

    def bad(self, line: int, message: str) -> None:
        self.out.skipped += 1
        if self.reported < MAX_ISSUES_PER_FILE:
            self.reported += 1
            self.report(self.display, line, "", message)
        else:
            self.suppressed += 1

    def finish(self) -> None:
        if self.suppressed:
            self.report(
                self.display,
                None,
                "",
                f"{self.suppressed} more invalid or unsupported lines skipped (not listed)",
            )

    # -- entries ---------------------------------------------------------------------------
    def add_domain(self, text: str, line: int) -> None:
        host, why = _domain(text)
        if host is None:
            self.bad(line, why)
            return
        self.out.domains.append(host)
        self.out.domain_lines.append(line)

    def add_url(self, text: str, line: int, *, strip_www: bool = True) -> None:
        """``host/path`` (optionally with a scheme): a path rule, or a domain if no path."""
        rest = text
        if "://" in rest:
            rest = rest.split("://", 1)[1]
        slash = rest.find("/")
        if slash < 0 or rest[slash:] in ("/", "/*"):
            self.add_domain(rest[:slash] if slash >= 0 else rest, line)
            return
        host, why = _domain(rest[:slash])
        if host is None:
            self.bad(line, why)
            return
        prefix = normalize_path(rest[slash:])
        if strip_www and host.startswith("www.") and host.count(".") >= 2:
            host = host[4:]
        self.out.paths.append((host, prefix, line))

    def add_regex(self, text: str, line: int) -> None:
        try:
            compiled = re.compile(text, re.IGNORECASE)
        except re.error as exc:
            self.bad(line, f"invalid regular expression {text!r}: {exc}")
            return
        self.out.regexes.append((text, compiled, line))

    def add_hosts_line(self, text: str, line: int) -> None:
        parts = text.split()
        if not _is_ip(parts[0]):
            self.bad(line, f"expected 'IP-address host-name' (hosts format), got {text!r}")
            return
        if len(parts) == 1:
            self.bad(line, f"hosts line without a host name: {text!r}")
            return
        for name in parts[1:]:
            if name.lower() in _HOSTS_IGNORED:
                self.out.ignored += 1
                continue
            self.add_domain(name, line)

    def add_adblock(self, text: str, line: int) -> None:
        if text.startswith("@@"):
            self.bad(line, "Adblock exception rules (@@) are not supported; use the allowlist")
            return
        rule = text
        dollar = rule.find("$")
        if dollar >= 0:
            rule = rule[:dollar]  # $options ignored: the rule applies to every request
        if rule.startswith("||"):
            rule = rule[2:]
            if rule.startswith("*."):
                rule = rule[2:]
        elif rule.startswith("|") and "://" in rule:
            rule = rule[1:].split("://", 1)[1]
        else:
            self.bad(line, f"unsupported Adblock rule (only ||domain^ and ||host/path): {text!r}")
            return
        rule = rule.rstrip("|")
        if rule.endswith("^"):
            rule = rule[:-1]
        if rule.endswith("*") and "/" in rule:
            rule = rule[:-1]
        if not rule or "*" in rule or "^" in rule:
            self.bad(line, f"unsupported Adblock pattern (wildcards inside the rule): {text!r}")
            return
        if "/" in rule:
            self.add_url(rule, line, strip_www=False)
        else:
            self.add_domain(rule, line)

    def add_auto(self, text: str, line: int, fmt: str) -> None:
        """One non-blank, non-comment line in a domains/hosts/adblock/auto file."""
        if fmt == "adblock" or (
            fmt == "auto" and (text[0] in "|@" or any(c in text for c in _COSMETIC))
        ):
            if any(c in text for c in _COSMETIC):
                self.out.ignored += 1
                return
            self.add_adblock(text, line)
            return
        hash_at = text.find(" #")
        if hash_at < 0:
            hash_at = text.find("\t#")
        if hash_at >= 0:
            text = text[:hash_at].rstrip()
        if " " in text or "\t" in text:
            if fmt == "domains":
                self.bad(line, f"expected one domain per line (domains format), got {text!r}")
            else:
                self.add_hosts_line(text, line)
            return
        if fmt == "hosts":
            self.bad(line, f"expected 'IP-address host-name' (hosts format), got {text!r}")
            return
        if "/" in text:
            if fmt == "domains":
                self.bad(line, f"a URL path in a domains list (put it in a urls list): {text!r}")
            else:
                self.add_url(text, line)
            return
        self.add_domain(text, line)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


def _domain(text: str) -> tuple[str | None, str]:
    """Normalise one list entry to a host; ``(None, reason)`` when it is not one."""
    raw = text.strip()
    if raw.startswith("*."):
        raw = raw[2:]
    elif raw.startswith("."):
        raw = raw[1:]
    if not raw:
        return None, f"empty domain: {text!r}"
    if ":" in raw and raw.count(":") > 1 or raw.startswith("["):
        try:
            return ipaddress.IPv6Address(raw.strip("[]")).compressed, ""
        except ValueError:
            return None, f"not a domain name or IP address: {text!r}"
    if "*" in raw:
        return None, f"wildcards are only allowed as a leading '*.': {text!r}"
    host = _normalize(raw)
    if not host:
        return None, f"not a domain name: {text!r}"
    if host[-1] in _DIGITS and host.rsplit(".", 1)[-1].isdigit():
        try:
            return str(ipaddress.IPv4Address(host)), ""
        except ValueError:
            return None, f"not a domain name or IPv4 address: {text!r}"
    if len(host) > 253 or not _DOMAIN_RE.fullmatch(host):
        if _LABEL_RE.fullmatch(host):
            if text.strip().startswith((".", "*.")):
                return host, ""  # a whole top-level domain, written as '*.tld'
            return None, (
                f"a single label is not a domain: {text!r} "
                "(write e.g. 'example.com'; for a whole top-level domain write '*.tld')"
            )
        return None, f"not a domain name: {text!r}"
    return host, ""


def _read_text(path: Path, issues: Issues, display: str) -> str | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        issues.add(display, None, "", "file not found")
        return None
    except IsADirectoryError:
        issues.add(display, None, "", "is a folder, expected a list file")
        return None
    except OSError as exc:
        issues.add(display, None, "", f"cannot read file: {exc}")
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        issues.warn(display, None, "", f"not UTF-8 ({exc.reason}); read as Latin-1")
        text = data.decode("latin-1")
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def _parse_lines(text: str, reader: _Reader, fmt: str) -> None:
    """The hot loop: runs of clean domain lines are taken whole (one regular expression match
    and a split each), everything else line by line through ``add_auto``."""
    out = reader.out
    fast = fmt in ("auto", "domains")
    if not fast:
        _parse_each_line(text.split("\n"), 1, reader, fmt)
        return
    domains, lines = out.domains, out.domain_lines
    clean_run = _CLEAN_RUN_RE.match
    text += "\n"  # every line ends with one (the last "line" of text.split is kept so)
    end = len(text)
    pos = 0
    lineno = 0  # lines before pos
    while pos < end:
        run = clean_run(text, pos)  # always matches (perhaps nothing)
        run_end = run.end() if run is not None else pos
        if run_end > pos:
            names = text[pos : run_end - 1].split("\n")
            if max(map(len, names)) <= 253:
                domains.extend(names)
                lines.extend(range(lineno + 1, lineno + 1 + len(names)))
            else:  # a rare overlong name: each line on its own
                _parse_each_line(names, lineno + 1, reader, fmt)
            lineno += len(names)
            pos = run_end
            if pos >= end:
                break
        stop = text.index("\n", pos)
        lineno += 1
        _parse_each_line([text[pos:stop]], lineno, reader, fmt)
        pos = stop + 1


def _parse_each_line(raws: list[str], first: int, reader: _Reader, fmt: str) -> None:
    """Lines one at a time: clean domain lines take the fast path, the rest ``add_auto``."""
    out = reader.out
    domains_append = out.domains.append
    lines_append = out.domain_lines.append
    fullmatch = _DOMAIN_RE.fullmatch
    digits = _DIGITS
    fast = fmt in ("auto", "domains")
    ignored = 0
    lineno = first - 1
    for raw in raws:
        lineno += 1
        if fast and fullmatch(raw) and raw[-1] not in digits and len(raw) <= 253:
            domains_append(raw)
            lines_append(lineno)
            continue
        line = raw.strip()
        if not line or line[0] in "#;!" or (line[0] == "[" and line[-1] == "]"):
            ignored += 1  # blank, comment, or an Adblock header such as [Adblock Plus 2.0]
            continue
        reader.add_auto(line, lineno, fmt)
    out.ignored += ignored


def _parse_urls(text: str, reader: _Reader) -> None:
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line or line.startswith(_COMMENT_STARTS):
            reader.out.ignored += 1
            continue
        hash_at = line.find(" #")
        if hash_at >= 0:
            line = line[:hash_at].rstrip()
        reader.add_url(line, lineno)


def _parse_expressions(text: str, reader: _Reader) -> None:
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            reader.out.ignored += 1
            continue
        reader.add_regex(line, lineno)


def _parse_squidguard(path: Path, issues: Issues, display: str) -> ParsedList:
    out = ParsedList(source=f"{display}/domains")
    found = False
    for name, parse in (
        ("domains", None),
        ("urls", _parse_urls),
        ("expressions", _parse_expressions),
    ):
        file = path / name
        if not file.is_file():
            continue
        found = True
        shown = f"{display}/{name}"
        text = _read_text(file, issues, shown)
        if text is None:
            continue
        reader = _Reader(out, issues, shown, strict=False)
        if parse is None:
            _parse_lines(text, reader, "domains")
        else:
            parse(text, reader)
            if name == "urls":
                out.path_source = shown
            else:
                out.regex_source = shown
        reader.finish()
    if not found:
        issues.add(
            display, None, "", "squidGuard folder without a domains, urls or expressions file"
        )
    return out


def parse_list(
    path: Path, issues: Issues, *, fmt: str = "auto", display_path: str | None = None
) -> ParsedList:
    """Read one list file, or a squidGuard category folder; report problems into ``issues``."""
    path = Path(path)
    display = display_path or str(path)
    if fmt not in FORMATS:
        issues.add(display, None, "format", f"expected one of {', '.join(FORMATS)}, got {fmt!r}")
        return ParsedList(source=display)
    if path.is_dir():
        if fmt not in ("auto", "squidguard"):
            issues.add(display, None, "", f"is a folder, expected a {fmt} list file")
            return ParsedList(source=display)
        return _parse_squidguard(path, issues, display)
    out = ParsedList(source=display)
    text = _read_text(path, issues, display)
    if text is None:
        return out
    reader = _Reader(out, issues, display, strict=False)
    kind = fmt
    if fmt in ("auto", "squidguard"):
        kind = {"urls": "urls", "expressions": "expressions"}.get(path.name, "auto")
        if fmt == "squidguard" and kind == "auto":
            kind = "domains"
    if kind == "urls":
        _parse_urls(text, reader)
    elif kind == "expressions":
        _parse_expressions(text, reader)
    else:
        _parse_lines(text, reader, kind)
    reader.finish()
    return out


def parse_entries(entries: Iterable[tuple[str, int]], issues: Issues, *, source: str) -> ParsedList:
    """Inline entries from a YAML file: ``(text, line)`` pairs, each a domain, ``*.domain``,
    ``host/path`` or ``re:<regular expression>``."""
    out = ParsedList(source=source)
    reader = _Reader(out, issues, source, strict=True)
    for text, line in entries:
        text = str(text).strip()
        if not text:
            reader.bad(line, "empty entry")
        elif text.startswith("re:"):
            reader.add_regex(text[3:].strip(), line)
        elif "/" in text:
            reader.add_url(text, line)
        elif " " in text or "\t" in text:
            reader.bad(line, f"expected one domain or host/path, got {text!r}")
        else:
            reader.add_domain(text, line)
    reader.finish()
    return out
