"""Category lists: reading domain/URL lists in the formats schools subscribe to, and matching.

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

Path rules (``instagram.com/accounts/emailsignup``) match a request whose host is that host
or one of its subdomains and whose path starts with the rule's path; both are compared
lower-case and percent-decoded. A leading ``www.`` of a path rule's host is dropped, so
``www.bbc.co.uk/news`` also matches ``bbc.co.uk/news``.

Matching, in :class:`Matcher`: the most specific rule wins. A path rule beats a domain rule
(a deeper host, then a longer path, is more specific); a deeper domain beats a shallower one;
any domain or path rule beats a regular expression; at equal specificity the category defined
first wins, and an allowlist entry at least as specific as the best category match wins
over it. Domains match on label boundaries only (``evilfacebook.com`` is not
``facebook.com``).

Memory and speed: a parsed list is a list of domain strings and an ``array`` of line numbers;
the matcher holds one dict from domain to a packed int (category, source, line), walks the
host's suffixes with ``str.find``, and builds a :class:`ListMatch` only on a hit.
"""

from __future__ import annotations

import ipaddress
import re
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from schoolgate.core.configfile import Issues
from schoolgate.core.hosts import normalize_host
from schoolgate.core.model import ListMatch

ALLOWLIST = "allowlist"
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
        prefix = _norm_path(rest[slash:])
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


# What may follow a path rule's last segment in a request that is under it.
_SEGMENT_END = frozenset("/?.;#")


def _under(path: str, prefix: str) -> bool:
    """Whether ``path`` is ``prefix`` or below it, on a segment boundary: the rule ``/edu``
    covers ``/edu``, ``/edu/maths``, ``/edu?x=1`` and ``/edu.html``, never ``/education``
    (an allowlist entry must not open more than it says)."""
    if not path.startswith(prefix):
        return False
    return len(path) == len(prefix) or prefix[-1] == "/" or path[len(prefix)] in _SEGMENT_END


def _norm_path(path: str) -> str:
    """A path (and query) as path rules compare it: percent-decoded, lower case, and in the
    path part (before ``?``) empty and ``.`` segments dropped and ``..`` resolved, as web
    servers do: ``//accounts/./EmailSignup`` is ``/accounts/emailsignup``."""
    if "%" in path:
        path = unquote(path)
    if "//" in path or "/." in path:
        query = path.find("?")
        if query < 0:
            path = _squash_segments(path)
        else:
            path = _squash_segments(path[:query]) + path[query:]
    return path.lower()


def _squash_segments(path: str) -> str:
    if "//" not in path and "/." not in path:
        return path
    segments: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment and segment != ".":
            segments.append(segment)
    out = "/".join(segments)
    if path.startswith("/"):
        out = "/" + out
    if segments and (path.endswith("/") or path.endswith("/.") or path.endswith("/..")):
        out += "/"
    return out


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
    """The hot loop: clean domain lines take the fast path, everything else ``add_auto``."""
    out = reader.out
    domains_append = out.domains.append
    lines_append = out.domain_lines.append
    fullmatch = _DOMAIN_RE.fullmatch
    digits = _DIGITS
    fast = fmt in ("auto", "domains")
    ignored = 0
    lineno = 0
    for raw in text.split("\n"):
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


# -- matching -----------------------------------------------------------------------------------

# Specificity of a match, compared as tuples: (kind rank, host depth, path prefix length).
_REGEX, _DOMAIN, _PATH = 0, 1, 2
_CACHE_SIZE = 65536


class Matcher:
    """An immutable index of categories (and an allowlist) for lookups by host and path.

    Category index 0 is the allowlist; categories follow in the order given. A *ref* packs
    ``(line << src_bits | source) << cat_bits | category`` into one int.
    """

    __slots__ = (
        "_names",
        "_sources",
        "_cat_bits",
        "_cat_mask",
        "_src_bits",
        "_src_mask",
        "_index",
        "_also",
        "_paths",
        "_regexes",
        "_stats",
        "_cache",
        "_frozen",
    )
    # The slots' types (set once, by build() or a store's open()).
    _names: tuple[str, ...]
    _sources: tuple[str, ...]
    _cat_bits: int
    _cat_mask: int
    _src_bits: int
    _src_mask: int
    _index: dict[str, int]
    _also: dict[str, tuple[int, ...]]
    _paths: dict[str, tuple[tuple[str, int], ...]]
    _regexes: tuple[tuple[str, re.Pattern[str], int], ...]
    _stats: dict[str, int]
    _cache: dict[tuple[int, str], ListMatch]
    _frozen: bool

    _cache_size = _CACHE_SIZE  # matches remembered (popular sites cost one dict lookup)

    def __init__(self) -> None:  # use Matcher.build
        object.__setattr__(self, "_frozen", False)

    def __setattr__(self, name: str, value: object) -> None:
        if getattr(self, "_frozen", False):
            raise AttributeError("Matcher is immutable")
        object.__setattr__(self, name, value)

    @classmethod
    def build(
        cls,
        categories: Sequence[tuple[str, Sequence[ParsedList]]],
        allowlist: Sequence[ParsedList] = (),
    ) -> Matcher:
        names = [ALLOWLIST]
        for name, _lists in categories:
            if name == ALLOWLIST:
                raise ValueError(f"{ALLOWLIST!r} is reserved and cannot name a category")
            if name in names:
                raise ValueError(f"category {name!r} defined twice")
            names.append(name)
        groups: list[Sequence[ParsedList]] = [allowlist] + [lists for _n, lists in categories]

        sources: list[str] = []
        source_ids: dict[str, int] = {}

        def source_id(text: str) -> int:
            sid = source_ids.get(text)
            if sid is None:
                sid = source_ids[text] = len(sources)
                sources.append(text)
            return sid

        for lists in groups:
            for plist in lists:
                source_id(plist.source)
                source_id(plist.path_source or plist.source)
                source_id(plist.regex_source or plist.source)
        cat_bits = max(1, (len(names) - 1).bit_length())
        src_bits = max(1, (len(sources) - 1).bit_length())
        cat_mask = (1 << cat_bits) - 1

        index: dict[str, int] = {}
        also: dict[str, list[int]] = {}
        path_rules: dict[str, list[tuple[str, int]]] = {}
        regexes: list[tuple[str, re.Pattern[str], int]] = []
        stats: dict[str, int] = {}
        seen_path: set[tuple[str, str, int]] = set()
        seen_regex: set[tuple[str, int]] = set()
        for cat, lists in enumerate(groups):
            count = 0
            for plist in lists:
                base = source_id(plist.source) << cat_bits | cat
                shift = src_bits + cat_bits
                get = index.get
                for domain, line in zip(plist.domains, plist.domain_lines, strict=True):
                    old = get(domain)
                    ref = line << shift | base
                    if old is None:
                        index[domain] = ref << 2 | 2
                        count += 1
                    elif not old & 2:  # only path rules on this host so far
                        index[domain] = old | ref << 2 | 2
                        count += 1
                    elif (old >> 2) & cat_mask != cat:  # also in an earlier category
                        extra = also.get(domain)
                        if extra is None:
                            also[domain] = [ref]
                            count += 1
                        elif all(r & cat_mask != cat for r in extra):
                            extra.append(ref)
                            count += 1
                pbase = source_id(plist.path_source or plist.source) << cat_bits | cat
                for host, prefix, line in plist.paths:
                    if (host, prefix, cat) in seen_path:
                        continue
                    seen_path.add((host, prefix, cat))
                    path_rules.setdefault(host, []).append((prefix, line << shift | pbase))
                    index[host] = index.get(host, 0) | 1
                    count += 1
                rbase = source_id(plist.regex_source or plist.source) << cat_bits | cat
                for pattern, compiled, line in plist.regexes:
                    if (pattern, cat) in seen_regex:
                        continue
                    seen_regex.add((pattern, cat))
                    regexes.append((pattern, compiled, line << shift | rbase))
                    count += 1
            if cat or count:
                stats[names[cat]] = count

        paths: dict[str, tuple[tuple[str, int], ...]] = {}
        for host, rules in path_rules.items():
            # longest prefix first; at equal length the lower category index (allowlist first)
            rules.sort(key=lambda rule: (-len(rule[0]), rule[1] & cat_mask))
            paths[host] = tuple(rules)
        regexes.sort(key=lambda rx: rx[2] & cat_mask)  # stable: allowlist, then category order

        self = cls()
        self._names = tuple(names)
        self._sources = tuple(sources)
        self._cat_bits = cat_bits
        self._cat_mask = cat_mask
        self._src_bits = src_bits
        self._src_mask = (1 << src_bits) - 1
        self._index = index
        self._also = {k: tuple(v) for k, v in also.items()}
        self._paths = paths
        self._regexes = tuple(regexes)
        self._stats = stats
        self._cache = {}
        self._frozen = True
        return self

    # -- results ---------------------------------------------------------------------------
    def _match(self, ref: int, entry: str, kind: str) -> ListMatch:
        # ListMatch is a frozen dataclass (slow to build): hits are cached, so a popular site
        # costs one dict lookup. The cache is an internal detail; results never change.
        key = (ref, entry)
        match = self._cache.get(key)
        if match is None:
            cat = ref & self._cat_mask
            rest = ref >> self._cat_bits
            src = self._sources[rest & self._src_mask]
            match = ListMatch(self._names[cat], entry, f"{src}:{rest >> self._src_bits}", kind)
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[key] = match
        return match

    @staticmethod
    def _request_path(path: str) -> str:
        return _norm_path(path)

    # -- lookups ---------------------------------------------------------------------------
    def lookup(self, host: str, path: str | None) -> ListMatch | None:
        """The most specific match for an already-normalised host (and path, if known)."""
        if not host:
            return None
        index = self._index
        if host[-1] in _DIGITS or ":" in host:  # an IP literal matches only itself
            return self._lookup_ip(host, path)
        dom_ref = 0
        dom_host = ""
        h = host
        lpath = None
        while True:
            v = index.get(h)
            if v is not None:
                if v & 1 and path is not None:
                    if lpath is None:
                        lpath = self._request_path(path)
                    for prefix, ref in self._paths[h]:
                        if _under(lpath, prefix):
                            return self._match(ref, h + prefix, "path")
                if v & 2 and not dom_host:
                    dom_ref = v >> 2
                    dom_host = h
                    if path is None or not self._paths:
                        break
            i = h.find(".")
            if i < 0:
                break
            h = h[i + 1 :]
        if dom_host:
            return self._match(dom_ref, dom_host, "domain")
        if self._regexes:
            return self._lookup_regex(host, path)
        return None

    def _lookup_ip(self, host: str, path: str | None) -> ListMatch | None:
        # IPv6 hosts arrive compressed: normalize_host gives every address one spelling.
        v, key = self._exact(host)
        if v is not None:
            if v & 1 and path is not None:
                lpath = self._request_path(path)
                for prefix, ref in self._path_rules(key):
                    if _under(lpath, prefix):
                        return self._match(ref, host + prefix, "path")
            if v & 2:
                return self._match(v >> 2, host, "domain")
        if self._regexes:
            return self._lookup_regex(host, path)
        return None

    def _lookup_regex(self, host: str, path: str | None) -> ListMatch | None:
        target = host if path is None else host + self._request_path(path)
        for pattern, compiled, ref in self._regexes:  # allowlist first, then category order
            if compiled.search(target):
                return self._match(ref, pattern, "regex")
        return None

    def lookup_all(self, host: str, path: str | None) -> list[ListMatch]:
        """Every category (and the allowlist) that matches, each with its most specific entry;
        most specific first (ties in category order, allowlist first)."""
        if not host:
            return []
        lpath = self._request_path(path) if path is not None else None
        best: dict[int, tuple[tuple[int, int, int], ListMatch]] = {}
        cat_mask = self._cat_mask

        def offer(ref: int, score: tuple[int, int, int], entry: str, kind: str) -> None:
            cat = ref & cat_mask
            old = best.get(cat)
            if old is None or score > old[0]:
                best[cat] = (score, self._match(ref, entry, kind))

        for entry, v, key in self._listed_under(host):
            depth = entry.count(".") + 1
            if v & 2:
                for ref in (v >> 2, *self._more_categories(key)):
                    offer(ref, (_DOMAIN, depth, 0), entry, "domain")
            if v & 1 and lpath is not None:
                for prefix, ref in self._path_rules(key):
                    if _under(lpath, prefix):
                        offer(ref, (_PATH, depth, len(prefix)), entry + prefix, "path")
        if self._regexes:
            target = host if lpath is None else host + lpath
            for pattern, compiled, ref in self._regexes:
                if compiled.search(target):
                    offer(ref, (_REGEX, 0, 0), pattern, "regex")
        ordered = sorted(best.items(), key=lambda item: (tuple(-x for x in item[1][0]), item[0]))
        return [match for _cat, (_score, match) in ordered]

    # What lookup_all reads, by key (a host here; a compiled store has keys of its own).
    def _listed_under(self, host: str) -> Iterator[tuple[str, int, object]]:
        """``(entry, packed value, key)`` of each listed host that ``host`` is or is under."""
        is_ip = host[-1] in _DIGITS or ":" in host
        h = host
        while True:
            v = self._index.get(h)
            if v is not None:
                yield h, v, h
            i = h.find(".")
            if is_ip or i < 0:
                break
            h = h[i + 1 :]

    def _exact(self, host: str) -> tuple[int | None, object]:
        """The packed value of ``host`` itself, and its key."""
        return self._index.get(host), host

    # A key is a host here, a key id in a store (schoolgate.core.liststore).
    def _more_categories(self, key: Any) -> tuple[int, ...]:
        return self._also.get(key, ())

    def _path_rules(self, key: Any) -> Sequence[tuple[str, int]]:
        return self._paths.get(key, ())

    def stats(self) -> dict[str, int]:
        """Distinct entries per category (and ``allowlist`` when it has any), in order."""
        return dict(self._stats)

    @property
    def categories(self) -> tuple[str, ...]:
        return self._names[1:]

    def __repr__(self) -> str:
        return f"<Matcher {self._stats}>"
