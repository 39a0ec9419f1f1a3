"""Category lists: matching a request's host and path against the categories and allowlist.

Reading the list files (formats, comments, invalid lines) is :mod:`schoolgate.core.listformats`;
its names are importable from here too. Path comparison is :mod:`schoolgate.core.urlpaths`.

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

Memory and speed: the matcher holds one dict from domain to a packed int (category, source,
line), walks the host's suffixes with ``str.find``, and builds a :class:`ListMatch` only on a
hit.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from itertools import repeat
from operator import lshift, or_
from typing import Any

from schoolgate.core.listformats import (
    FORMATS,
    MAX_ISSUES_PER_FILE,
    ParsedList,
    parse_entries,
    parse_list,
)
from schoolgate.core.model import ListMatch, list_match
from schoolgate.core.urlpaths import normalize_path, path_under

__all__ = [
    "ALLOWLIST",
    "FORMATS",
    "MAX_ISSUES_PER_FILE",
    "Matcher",
    "ParsedList",
    "parse_entries",
    "parse_list",
]

ALLOWLIST = "allowlist"
_DIGITS = frozenset("0123456789")

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
                # A list with no name twice and none already indexed (most lists, and every
                # list of a million names) is indexed in one go, as one by one would.
                fresh = dict(
                    zip(
                        plist.domains,
                        map(
                            or_,
                            map(lshift, plist.domain_lines, repeat(shift + 2)),
                            repeat(base << 2 | 2),
                        ),
                        strict=True,
                    )
                )
                if len(fresh) == len(plist.domains) and fresh.keys().isdisjoint(index):
                    index.update(fresh)
                    count += len(fresh)
                    fresh.clear()
                else:
                    fresh.clear()
                    count += _index_one_by_one(plist, index, also, base, shift, cat, cat_mask)
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
            match = self._new_match(ref, entry, kind)
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[key] = match
        return match

    def _new_match(self, ref: int, entry: str, kind: str) -> ListMatch:
        """The match that ``ref`` (category, source file and line, packed) gives ``entry``,
        built afresh."""
        rest = ref >> self._cat_bits
        source = f"{self._sources[rest & self._src_mask]}:{rest >> self._src_bits}"
        return list_match(self._names[ref & self._cat_mask], entry, source, kind)

    @staticmethod
    def _request_path(path: str) -> str:
        return normalize_path(path)

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
                        if path_under(lpath, prefix):
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
                    if path_under(lpath, prefix):
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
                    if path_under(lpath, prefix):
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


def _index_one_by_one(
    plist: ParsedList,
    index: dict[str, int],
    also: dict[str, list[int]],
    base: int,
    shift: int,
    cat: int,
    cat_mask: int,
) -> int:
    """Index a list's domains one at a time (a name listed twice, or already indexed by an
    earlier list: the first one stays, a name in another category is also there); returns
    how many entries it added."""
    count = 0
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
    return count
