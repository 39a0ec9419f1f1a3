"""The compiled list store: category lists compiled once into a file that every process maps.

A policy's lists (its categories in order, and the allowlist) are compiled into one file,
``<data-dir>/lists/<label>-<digest>.sgl``, named by a digest of everything that goes into it
(each list file's content, formats, inline entries, category order). Every gateway worker
and every other process that loads the same policy maps that file read-only, so the
operating system keeps one copy of its pages in memory for all of them; a process's own
memory for its lists is a few Python objects whatever the size of the lists.

The file holds a MARISA trie (``marisa-trie``) of the host names of the entries, each
written backwards with a final dot (``example.co.uk`` is ``ku.oc.elpmaxe.``): the keys that
are prefixes of a request's host written the same way are exactly the entries the host is
on or under, on label boundaries, found by one call. A trie key's id indexes an array of
64-bit *refs* (category, source file, line, and whether the host has a domain entry and path
rules) packed as :class:`schoolgate.core.lists.Matcher` packs them; path rules, a domain listed in
several categories, and the sources' names follow in arrays of their own. Regular
expressions (a few, from squidGuard ``expressions`` files) are compiled by each process.

Semantics are :class:`~schoolgate.core.lists.Matcher`'s, which stays the reference (and what tiny
inline lists use): the compiler builds a ``Matcher`` from the parsed lists and writes out its
index, so the two cannot disagree on what a list says; ``tests/test_liststore.py`` compares
their answers on random lists and requests. Lists of domains only with no name twice (where
there is nothing to decide between entries) are written straight from the parsed lists, the
same file byte for byte, without the matcher's dict of every name.

Life of a version. :func:`load_store` computes the digest; if that file exists it is mapped,
otherwise it is compiled (in a subprocess for lists over :data:`SUBPROCESS_BYTES`, so that the
parsing never holds a gateway's interpreter lock nor leaves its heap grown), written to a
temporary file and renamed into place (atomic), under an exclusive lock on
``lists/.compile.lock`` so that N workers reloading at once compile it once. A process holds
a shared ``flock`` on each store file it maps, for as long as a policy using it is alive;
:func:`remove_unused` deletes the files no process holds (taking the lock exclusively), so an
old version is removed once the last process using it has moved on.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import mmap
import os
import re
import subprocess
import sys
import time
import weakref
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import marisa_trie

from schoolgate.core.configfile import Issues
from schoolgate.core.lists import Matcher, ParsedList
from schoolgate.core.lists import parse_list as _parse_list
from schoolgate.core.liststore_write import (
    MAGIC,
    STORE_FORMAT,
    Progress,
    align,
    write_store,
    write_unique_domains,
)
from schoolgate.core.model import ListMatch
from schoolgate.core.urlpaths import path_under

log = logging.getLogger(__name__)

SUFFIX = ".sgl"
FOLDER = "lists"
COMPILE_LOCK = ".compile.lock"
# Lists bigger than this (bytes of list files) are compiled in a subprocess.
SUBPROCESS_BYTES = 4 << 20
SQUIDGUARD_FILES = ("domains", "urls", "expressions")
_DIGITS = frozenset("0123456789")  # a host ending in a digit is an IPv4 literal
_UNSEEN = object()


class StoreError(Exception):
    """A compiled list file that cannot be used (damaged, another format, removed)."""


@dataclass(frozen=True)
class ListFile:
    """A list file (or squidGuard folder) named by the config, read only when compiled."""

    path: Path
    fmt: str = "auto"
    display: str = ""

    @property
    def source(self) -> str:
        """The name its entries are reported under, as :func:`parse_list` gives it."""
        display = self.display or str(self.path)
        if self.fmt in ("auto", "squidguard") and self.path.is_dir():
            return f"{display}/domains"
        return display

    def parse(self, issues: Issues) -> ParsedList:
        return _parse_list(self.path, issues, fmt=self.fmt, display_path=self.display or None)

    def files(self) -> list[Path]:
        """The files whose content goes into the list."""
        if self.path.is_dir():
            return [self.path / name for name in SQUIDGUARD_FILES if (self.path / name).is_file()]
        return [self.path]


ListInput = ListFile | ParsedList
Groups = Sequence[tuple[str, Sequence[ListInput]]]


# -- recipes: what a store is compiled from ---------------------------------------------------
def _input_json(item: ListInput) -> dict[str, Any]:
    if isinstance(item, ListFile):
        return {"file": str(item.path), "fmt": item.fmt, "display": item.display}
    return {
        "inline": {
            "source": item.source,
            "domains": item.domains,
            "lines": item.domain_lines.tolist(),
            "paths": item.paths,
            "regexes": [[pattern, line] for pattern, _compiled, line in item.regexes],
            "path_source": item.path_source,
            "regex_source": item.regex_source,
        }
    }


def _input_from_json(data: dict[str, Any]) -> ListInput:
    if "file" in data:
        return ListFile(Path(data["file"]), data["fmt"], data["display"])
    raw = data["inline"]
    return ParsedList(
        source=raw["source"],
        domains=list(raw["domains"]),
        domain_lines=array("L", raw["lines"]),
        paths=[(host, prefix, line) for host, prefix, line in raw["paths"]],
        regexes=[(p, re.compile(p, re.IGNORECASE), line) for p, line in raw["regexes"]],
        path_source=raw["path_source"],
        regex_source=raw["regex_source"],
    )


def make_recipe(categories: Groups, allowlist: Sequence[ListInput] = ()) -> dict[str, Any]:
    """Everything a store is compiled from, as JSON (list files by name)."""
    return {
        "format": STORE_FORMAT,
        "categories": [[name, [_input_json(i) for i in lists]] for name, lists in categories],
        "allowlist": [_input_json(i) for i in allowlist],
    }


def recipe_groups(
    recipe: dict[str, Any],
) -> tuple[list[tuple[str, list[ListInput]]], list[ListInput]]:
    categories = [
        (name, [_input_from_json(i) for i in lists]) for name, lists in recipe["categories"]
    ]
    return categories, [_input_from_json(i) for i in recipe["allowlist"]]


def _list_files(categories: Groups, allowlist: Sequence[ListInput]) -> list[ListFile]:
    items = [i for _name, lists in categories for i in lists] + list(allowlist)
    return [i for i in items if isinstance(i, ListFile)]


def recipe_digest(recipe: dict[str, Any], files: Sequence[ListFile]) -> str:
    """A name for the compiled version: the recipe and the content of every list file."""
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode())
    for item in files:
        for path in item.files():
            digest.update(f"\0{path.name}\0".encode())
            try:
                with open(path, "rb") as handle:
                    digest.update(hashlib.file_digest(handle, "sha256").digest())
            except OSError as exc:  # reported by the parser when it compiles
                digest.update(f"unreadable: {exc}".encode())
    return digest.hexdigest()[:24]


def input_bytes(files: Sequence[ListFile]) -> int:
    total = 0
    for item in files:
        for path in item.files():
            try:
                total += path.stat().st_size
            except OSError:
                pass
    return total


# -- compiling ---------------------------------------------------------------------------------
def compile_store(
    categories: Groups,
    allowlist: Sequence[ListInput],
    dest: Path,
    issues: Issues,
    progress: Progress | None = None,
    processes: int = 1,
) -> bool:
    """Parse the lists, write the store to ``dest`` (atomically); report problems into
    ``issues``. False (and nothing written) when a list has an error. ``processes``: see
    :func:`write_store`."""
    files = _list_files(categories, allowlist)
    total = max(1, input_bytes(files))
    done = 0
    found = Issues()

    def parse(item: ListInput) -> ParsedList:
        nonlocal done
        if not isinstance(item, ListFile):
            return item
        parsed = item.parse(found)
        done += sum(p.stat().st_size for p in item.files() if p.exists())
        if progress:
            progress("reading lists", done, total)
        return parsed

    if progress:
        progress("reading lists", 0, total)
    parsed_categories = [(name, [parse(i) for i in lists]) for name, lists in categories]
    parsed_allowlist = [parse(i) for i in allowlist]
    issues.items.extend(found.items)
    issues.warnings.extend(found.warnings)
    if found.items:
        return False
    written, trie = write_unique_domains(
        parsed_categories, parsed_allowlist, dest, found.warnings, progress, processes
    )
    if written:
        return True
    matcher = Matcher.build(parsed_categories, parsed_allowlist)
    del parsed_categories, parsed_allowlist
    write_store(
        matcher, dest, warnings=found.warnings, progress=progress, processes=processes, trie=trie
    )
    return True


# -- the store ---------------------------------------------------------------------------------
class ListStore(Matcher):
    """A compiled store mapped read-only: the same lookups as :class:`Matcher`.

    Holds a shared lock on its file while it is alive (see :func:`remove_unused`).
    """

    __slots__ = tuple(
        "path size warnings _mm _trie _prefixes _key_id _values _aux_ids _aux _path_refs"
        " _path_off _path_blob _also_refs _has_paths _hosts _release __weakref__".split()
    )
    # The slots' types (set once, by open()).
    path: Path
    size: int
    warnings: tuple[tuple[Any, ...], ...]
    _mm: mmap.mmap
    _trie: Any  # a marisa_trie.Trie (the library has no type information)
    _prefixes: Callable[[str], list[str]]
    _key_id: Callable[[str], int]
    _values: memoryview
    _aux_ids: memoryview
    _aux: memoryview
    _path_refs: memoryview
    _path_off: memoryview
    _path_blob: memoryview
    _also_refs: memoryview
    _has_paths: bool
    # The answers of the last hosts looked up, when the answer depends on the host alone (no
    # path rules, no regular expressions); None otherwise.
    _hosts: dict[str, ListMatch | None] | None
    _release: Callable[[], None] | None

    # A worker's own memory for its lists is mostly this cache of matches (about 300 bytes
    # each): kept to a few MB, enough for the blocked sites a school's pupils keep trying.
    _cache_size = 8192
    # A host a worker has just looked up is usually looked up again (the pages and images of
    # one site): its answer is kept, so that it costs one dict lookup instead of the trie's
    # prefix search and a walk per key found. Bounded (about 1 MB when full, then emptied);
    # each version of the lists has its own, so a reload starts afresh.
    _hosts_size = 8192

    @classmethod
    def open(cls, path: Path | str) -> ListStore:
        """Map a store file; :class:`StoreError` if it is not a usable one."""
        path = Path(path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise StoreError(f"{path}: no such compiled list file") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            if os.fstat(fd).st_nlink == 0:  # removed between open and lock: not in use
                raise StoreError(f"{path}: removed")
            mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            self = cls._from_map(path, mm)
        except BaseException:
            os.close(fd)
            raise
        object.__setattr__(self, "_release", weakref.finalize(self, os.close, fd))
        return self

    @classmethod
    def _from_map(cls, path: Path, mm: mmap.mmap) -> ListStore:
        view = memoryview(mm)
        if bytes(view[: len(MAGIC)]) != MAGIC:
            raise StoreError(f"{path}: not a compiled list file")
        length = int.from_bytes(view[len(MAGIC) : len(MAGIC) + 8], "little")
        try:
            header = json.loads(bytes(view[len(MAGIC) + 8 : len(MAGIC) + 8 + length]))
        except ValueError as exc:
            raise StoreError(f"{path}: damaged header ({exc})") from None
        if header.get("format") != STORE_FORMAT:
            raise StoreError(f"{path}: format {header.get('format')}, expected {STORE_FORMAT}")
        start = align(len(MAGIC) + 8 + length)

        def section(name: str) -> memoryview:
            offset, size = header["sections"][name]
            if start + offset + size > len(mm):
                raise StoreError(f"{path}: truncated")
            return view[start + offset : start + offset + size]

        trie = marisa_trie.Trie()
        trie.map(section("trie"))
        self = cls()
        cat_bits, src_bits = header["cat_bits"], header["src_bits"]
        regexes = tuple(
            (pattern, re.compile(pattern, re.IGNORECASE), ref) for pattern, ref in header["regexes"]
        )
        fields = {
            "path": path,
            "size": len(mm),
            "warnings": tuple(tuple(w) for w in header["warnings"]),
            "_mm": mm,
            "_trie": trie,
            "_prefixes": trie.prefixes,
            "_key_id": trie.key_id,
            "_values": section("values").cast("Q"),
            "_aux_ids": section("aux_ids").cast("I"),
            "_aux": section("aux").cast("I"),
            "_path_refs": section("path_refs").cast("Q"),
            "_path_off": section("path_off").cast("I"),
            "_path_blob": section("path_blob"),
            "_also_refs": section("also_refs").cast("Q"),
            "_names": tuple(header["names"]),
            "_sources": tuple(header["sources"]),
            "_cat_bits": cat_bits,
            "_cat_mask": (1 << cat_bits) - 1,
            "_src_bits": src_bits,
            "_src_mask": (1 << src_bits) - 1,
            "_regexes": regexes,
            "_stats": dict(header["stats"]),
            "_cache": {},
        }
        fields["_has_paths"] = len(fields["_path_refs"]) > 0
        fields["_hosts"] = None if fields["_has_paths"] or regexes else {}
        if len(fields["_values"]) != header["keys"] or len(trie) != header["keys"]:
            raise StoreError(f"{path}: {len(trie)} keys, header says {header['keys']}")
        for name, value in fields.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_release", None)
        object.__setattr__(self, "_frozen", True)
        return self

    # -- the extra data of a key ---------------------------------------------------------
    def _aux_of(self, kid: int) -> int:
        """Position of ``kid`` in the aux table, or -1."""
        i = bisect_left(self._aux_ids, kid)
        return i if i < len(self._aux_ids) and self._aux_ids[i] == kid else -1

    def _path_rules(self, kid: int) -> list[tuple[str, int]]:
        i = self._aux_of(kid)
        if i < 0:
            return []
        off, blob, refs = self._path_off, self._path_blob, self._path_refs
        return [
            (str(blob[off[j] : off[j + 1]], "utf-8"), refs[j])
            for j in range(self._aux[4 * i], self._aux[4 * i + 1])
        ]

    def _more_categories(self, kid: int) -> tuple[int, ...]:
        i = self._aux_of(kid)
        if i < 0:
            return ()
        return tuple(self._also_refs[self._aux[4 * i + 2] : self._aux[4 * i + 3]])

    # -- lookups (Matcher's, over the trie) ------------------------------------------------
    def lookup(self, host: str, path: str | None) -> ListMatch | None:
        """The most specific match for an already-normalised host (and path, if known)."""
        hosts = self._hosts
        if hosts is None:  # path rules or regular expressions: the general lookup
            return self._lookup(host, path)
        known = hosts.get(host, _UNSEEN)
        if known is not _UNSEEN:
            return known  # type: ignore[return-value]
        # Only domain entries here, so every key is one: the most specific key the host is
        # or is under decides, the last that the trie's prefix search gives. (The search
        # that gives each key's id with it, a generator, costs 500 instructions more when
        # nothing is found, which is most hosts, to save the id's look-up when one is.)
        found = None
        if host:
            try:
                hits = self._prefixes(host[::-1] + ".")
            except UnicodeEncodeError:  # not text: no name matches it
                hits = []
            if hits:
                if host[-1] in _DIGITS or ":" in host:  # an IP literal matches only itself
                    found = self._lookup_ip(host, path)
                else:
                    key = hits[-1]
                    v = self._values[self._key_id(key)]
                    if v & 2:  # always: every key of such a store is a domain entry
                        # Built afresh, not through _match: this host's answer is kept in
                        # _hosts, so _match's cache of matches would only keep it twice.
                        entry = host[len(host) - len(key) + 1 :]
                        found = self._new_match(v >> 2, entry, "domain")
                    else:
                        found = self._lookup(host, path)
        if len(hosts) >= self._hosts_size:
            hosts.clear()
        hosts[host] = found
        return found

    def _lookup(self, host: str, path: str | None) -> ListMatch | None:
        if not host:
            return None
        try:
            hits = self._prefixes(host[::-1] + ".")
        except UnicodeEncodeError:  # not text (a Host header's raw bytes): no name matches it
            hits = []
        if hits:
            # Only now, as most hosts are in no list: an IP literal matches only itself (with
            # no keys under it, it has no key of its own either).
            if host[-1] in _DIGITS or ":" in host:
                return self._lookup_ip(host, path)
            values, key_id = self._values, self._key_id
            dom_ref = -1
            dom_len = 0
            lpath = None
            hits.reverse()  # the host itself (if listed) first, then its parents
            for key in hits:
                kid = key_id(key)
                v = values[kid]
                if v & 1 and path is not None:
                    if lpath is None:
                        lpath = self._request_path(path)
                    for prefix, ref in self._path_rules(kid):
                        if path_under(lpath, prefix):
                            entry = host[len(host) - len(key) + 1 :]
                            return self._match(ref, entry + prefix, "path")
                if v & 2 and dom_ref < 0:
                    dom_ref = v >> 2
                    dom_len = len(key) - 1
                    if path is None or not self._has_paths:
                        break
            if dom_ref >= 0:
                return self._match(dom_ref, host[len(host) - dom_len :], "domain")
        if self._regexes:
            return self._lookup_regex(host, path)
        return None

    def _exact(self, host: str) -> tuple[int | None, object]:
        try:
            kid = self._trie.get(host[::-1] + ".")
        except UnicodeEncodeError:  # not text: in no list
            return None, None
        return (None, None) if kid is None else (self._values[kid], kid)

    def _listed_under(self, host: str) -> Iterator[tuple[str, int, object]]:
        key = host[::-1] + "."
        try:
            if host[-1] in _DIGITS or ":" in host:
                kid = self._trie.get(key)
                found = [] if kid is None else [key]
            else:
                found = self._prefixes(key)
        except UnicodeEncodeError:  # not text: in no list
            return
        for key in found:
            kid = self._key_id(key)
            yield host[len(host) - len(key) + 1 :], self._values[kid], kid

    def __repr__(self) -> str:
        return f"<ListStore {self.path.name} {self._stats}>"


# -- loading a policy's store -----------------------------------------------------------------
def store_folder(data_dir: Path | str) -> Path:
    return Path(data_dir) / FOLDER


def load_store(
    label: str,
    categories: Groups,
    allowlist: Sequence[ListInput] = (),
    *,
    data_dir: Path | str,
    issues: Issues,
    progress: Progress | None = None,
    subprocess_bytes: int = SUBPROCESS_BYTES,
) -> Matcher | None:
    """The matcher for these lists: the compiled store in ``<data_dir>/lists`` (compiled first
    if this version is not there yet), or a :class:`Matcher` when every list is inline.

    Problems go into ``issues`` (the warnings of a version compiled earlier are reported
    again); None when a list has an error."""
    files = _list_files(categories, allowlist)
    if not files:
        return Matcher.build(categories, allowlist)  # type: ignore[arg-type]
    recipe = make_recipe(categories, allowlist)
    folder = store_folder(data_dir)
    dest = folder / f"{label}-{recipe_digest(recipe, files)}{SUFFIX}"
    try:
        store = ListStore.open(dest)
    except StoreError:
        store = None
    if store is None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with _compile_lock(folder):
                try:  # another process may have compiled it while this one waited
                    store = ListStore.open(dest)
                except StoreError:
                    big = input_bytes(files) > subprocess_bytes
                    compile_ = _compile_in_subprocess if big else compile_store
                    started = time.monotonic()
                    if not compile_(categories, allowlist, dest, issues, progress):
                        return None
                    store = ListStore.open(dest)
                    log.info(
                        "compiled %s lists into %s (%.1f MB) in %.1f s",
                        label,
                        dest,
                        store.size / 1e6,
                        time.monotonic() - started,
                    )
                    return store
        except OSError as exc:
            raise OSError(f"cannot write the compiled lists in {folder}: {exc}") from exc
    for file, line, field_name, message in store.warnings:
        issues.warn(file, line, field_name, message)
    return store


class _compile_lock:
    """An exclusive lock on ``lists/.compile.lock`` (blocks until it is free)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / COMPILE_LOCK
        self.fd = -1

    def __enter__(self) -> _compile_lock:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def remove_unused(data_dir: Path | str) -> tuple[int, int]:
    """Delete the store files that no process maps (and abandoned temporary files).

    Returns (removed, still in use)."""
    folder = store_folder(data_dir)
    removed = in_use = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0, 0
    for name in names:
        if not (name.endswith(SUFFIX) or name.endswith(".tmp")):
            continue
        path = folder / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            in_use += 1
            os.close(fd)
            continue
        try:
            path.unlink()
            removed += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed, in_use


# -- compiling in a subprocess ---------------------------------------------------------------------
def _compile_in_subprocess(
    categories: Groups,
    allowlist: Sequence[ListInput],
    dest: Path,
    issues: Issues,
    progress: Progress | None = None,
) -> bool:
    """:func:`compile_store` in a fresh interpreter: the parsing's memory and CPU stay there."""
    import schoolgate

    root = str(Path(schoolgate.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-m", "schoolgate.core.liststore_compiler", str(dest)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    proc.stdin.write(json.dumps(make_recipe(categories, allowlist)))
    proc.stdin.close()
    result = None
    for line in proc.stdout:
        message = json.loads(line)
        if "progress" in message and progress:
            progress(*message["progress"])
        elif "result" in message:
            result = message["result"]
    errors = proc.stderr.read()
    code = proc.wait()
    if code != 0 or result is None:
        raise OSError(f"list compiler exited with {code}: {errors.strip()[-2000:]}")
    for file, line, field_name, message in result["errors"]:
        issues.add(file, line, field_name, message)
    for file, line, field_name, message in result["warnings"]:
        issues.warn(file, line, field_name, message)
    return bool(result["written"])
