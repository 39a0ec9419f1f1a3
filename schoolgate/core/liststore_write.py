"""Writing a list store's file: the layout that :class:`schoolgate.core.liststore.ListStore` maps.

:func:`write_store` writes the index of a :class:`~schoolgate.core.lists.Matcher`;
:func:`write_unique_domains` writes the same file straight from lists of domains only with no
name twice, without the matcher's dict of every name. Both write to a temporary file under an
exclusive ``flock`` and rename it into place. Reading the file, and deciding which version to
compile and where, is :mod:`schoolgate.core.liststore`'s.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import tempfile
from array import array
from collections.abc import Callable, Sequence
from itertools import islice, repeat
from operator import lshift, or_
from pathlib import Path
from typing import Any

import marisa_trie

from schoolgate.core.configfile import ConfigIssue
from schoolgate.core.lists import Matcher, ParsedList

log = logging.getLogger(__name__)

STORE_FORMAT = 1
MAGIC = b"SGLSTOR1"
# Keys from which the compiler's subprocess looks up their ids in two processes.
PARALLEL_KEYS = 200_000
# One trie level and the largest cache: about 40% faster lookups than marisa's defaults, for
# a trie about 40% bigger (12 MB for a million domains; squidGuard's whole database is 40 MB).
TRIE_OPTIONS = {"num_tries": 1, "cache_size": marisa_trie.HUGE_CACHE}

Progress = Callable[[str, int, int], None]  # (phase, done, total)


def align(n: int) -> int:
    return (n + 7) & ~7


def write_unique_domains(
    categories: Sequence[tuple[str, Sequence[ParsedList]]],
    allowlist: Sequence[ParsedList],
    dest: Path,
    warnings: Sequence[ConfigIssue],
    progress: Progress | None,
    processes: int,
) -> tuple[bool, Any]:
    """The store of lists that hold domains only (no path rules, no regular expressions) and
    no name twice, written without the matcher's dict of every name (a third of a big
    compile): the same file as `write_store` writes for their matcher. ``(True, None)``
    when written; ``(False, trie)`` for lists of domains only with a name twice (the trie of
    their names, for `write_store` to use), ``(False, None)`` for others."""
    lists = [p for _name, group in categories for p in group] + list(allowlist)
    if any(p.paths or p.regexes for p in lists):
        return False, None
    # The matcher of the same lists without their names: names, sources and their bits.
    shape = Matcher.build(
        [(name, [_without_domains(p) for p in group]) for name, group in categories],
        [_without_domains(p) for p in allowlist],
    )
    source_ids = {source: i for i, source in enumerate(shape._sources)}
    cat_bits, shift = shape._cat_bits, shape._cat_bits + shape._src_bits
    steps = 3
    if progress:
        progress("indexing", 0, steps)
    keys: list[str] = []
    refs = array("Q")
    stats: dict[str, int] = {}
    for cat, group in enumerate([allowlist, *[group for _name, group in categories]]):
        count = 0
        for plist in group:
            low = (source_ids[plist.source] << cat_bits | cat) << 2 | 2
            keys += [host[::-1] + "." for host in plist.domains]
            refs.extend(map(or_, map(lshift, plist.domain_lines, repeat(shift + 2)), repeat(low)))
            count += len(plist.domains)
        if cat or count:
            stats[shape._names[cat]] = count
    trie = marisa_trie.Trie(keys, **TRIE_OPTIONS)
    if len(trie) != len(keys):  # a name twice: the matcher decides which entry stands
        return False, trie
    if progress:
        progress("indexing", 1, steps)
    values = array("Q", bytes(8 * len(trie)))
    for kid, value in zip(key_ids(trie, keys, processes), refs, strict=True):
        values[kid] = value
    del keys, refs
    if progress:
        progress("indexing", 2, steps)
    empty = [array("I"), array("I"), array("Q"), array("I", [0]), b"", array("Q")]
    _write_file(dest, shape, stats, trie, [values, *empty], warnings, progress)
    return True, None


def _without_domains(plist: ParsedList) -> ParsedList:
    return dataclasses.replace(plist, domains=[], domain_lines=array("L"))


def key_ids(trie: Any, keys: list[str], processes: int) -> array[int]:
    """The trie's id of each key, in order. Looking a key up in a trie of millions is most of
    a compile's time after the parsing; with ``processes=2`` a forked child looks up the second
    half of the keys while this process looks up the first, and sends its ids down a pipe."""
    key_id = trie.key_id
    if processes < 2 or len(keys) < PARALLEL_KEYS or not hasattr(os, "fork"):
        return array("L", map(key_id, keys))
    half = len(keys) // 2
    read_fd, write_fd = os.pipe()
    try:
        pid = os.fork()
    except OSError:  # no second process to be had: all of them here
        os.close(read_fd)
        os.close(write_fd)
        return array("L", map(key_id, keys))
    if pid == 0:  # the child: never returns
        code = 1
        try:
            os.close(read_fd)
            data = array("L", map(key_id, islice(keys, half, None))).tobytes()
            with open(write_fd, "wb") as out:
                out.write(data)
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    pipe = open(read_fd, "rb")  # noqa: SIM115 - closed before the child is waited for
    try:
        ids = array("L", map(key_id, islice(keys, half)))
        data = pipe.read()
    finally:
        pipe.close()  # a child still writing gets an error and ends, so the wait ends
        _pid, status = os.waitpid(pid, 0)
    rest = array("L")
    if status == 0 and len(data) == rest.itemsize * (len(keys) - half):
        rest.frombytes(data)
    else:  # the child failed: its half is looked up here
        log.warning("list compiler: the second process failed (status %s)", status)
        rest.extend(map(key_id, islice(keys, half, None)))
    ids.extend(rest)
    return ids


def write_store(
    matcher: Matcher,
    dest: Path,
    *,
    warnings: Sequence[ConfigIssue] = (),
    progress: Progress | None = None,
    processes: int = 1,
    trie: Any = None,
) -> int:
    """Write ``matcher``'s index as a store file (atomically); returns its size.

    ``processes=2``: a forked child looks up half of the keys' ids meanwhile (only where
    forking is safe: a process with no other threads, such as the compiler's own). ``trie``:
    the trie of the index's names, if already built."""
    index: dict[str, int] = matcher._index
    steps = 3
    if progress:
        progress("indexing", 0, steps)
    keys = [host[::-1] + "." for host in index]
    if trie is None:
        trie = marisa_trie.Trie(keys, **TRIE_OPTIONS)
    if progress:
        progress("indexing", 1, steps)
    values = array("Q", bytes(8 * len(trie)))
    for kid, value in zip(key_ids(trie, keys, processes), index.values(), strict=True):
        values[kid] = value
    del keys
    if progress:
        progress("indexing", 2, steps)

    # Path rules and categories beyond the first, for the keys that have them (by key id).
    paths: dict[str, tuple[tuple[str, int], ...]] = matcher._paths
    also: dict[str, tuple[int, ...]] = matcher._also
    key_id = trie.key_id
    aux_hosts = sorted((key_id(h[::-1] + "."), h) for h in set(paths) | set(also))
    aux_ids, aux = array("I"), array("I")
    path_refs, path_off, also_refs = array("Q"), array("I", [0]), array("Q")
    blob = bytearray()
    for kid, host in aux_hosts:
        aux_ids.append(kid)
        aux.append(len(path_refs))
        for prefix, ref in paths.get(host, ()):
            blob += prefix.encode("utf-8")
            path_off.append(len(blob))
            path_refs.append(ref)
        aux.append(len(path_refs))
        aux.append(len(also_refs))
        also_refs.extend(also.get(host, ()))
        aux.append(len(also_refs))

    return _write_file(
        dest,
        matcher,
        matcher._stats,
        trie,
        [values, aux_ids, aux, path_refs, path_off, bytes(blob), also_refs],
        warnings,
        progress,
    )


def _write_file(
    dest: Path,
    matcher: Matcher,
    stats: dict[str, int],
    trie: Any,
    arrays: list[Any],
    warnings: Sequence[ConfigIssue],
    progress: Progress | None,
) -> int:
    """The file itself: the header (names, sources, stats, ...), then the trie and the arrays
    (values, aux_ids, aux, path_refs, path_off, path_blob, also_refs), written atomically."""
    values, aux_ids, aux, path_refs, path_off, blob, also_refs = arrays
    steps = 3
    sections = [
        ("trie", trie.tobytes()),
        ("values", values.tobytes()),
        ("aux_ids", aux_ids.tobytes()),
        ("aux", aux.tobytes()),
        ("path_refs", path_refs.tobytes()),
        ("path_off", path_off.tobytes()),
        ("path_blob", blob),
        ("also_refs", also_refs.tobytes()),
    ]
    layout, offset = {}, 0
    for name, data in sections:
        layout[name] = [offset, len(data)]
        offset = align(offset + len(data))
    header = json.dumps(
        {
            "format": STORE_FORMAT,
            "keys": len(trie),
            "names": list(matcher._names),
            "sources": list(matcher._sources),
            "cat_bits": matcher._cat_bits,
            "src_bits": matcher._src_bits,
            "stats": stats,
            "regexes": [[pattern, ref] for pattern, _compiled, ref in matcher._regexes],
            "warnings": [[w.file, w.line, w.field, w.message] for w in warnings],
            "sections": layout,
        }
    ).encode()
    start = align(len(MAGIC) + 8 + len(header))
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # remove_unused leaves a file being written alone
        with os.fdopen(fd, "wb", closefd=False) as out:
            out.write(MAGIC + len(header).to_bytes(8, "little") + header)
            for name, data in sections:
                out.seek(start + layout[name][0])
                out.write(data)
            out.truncate(start + offset)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, dest)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    if progress:
        progress("indexing", steps, steps)
    return start + offset
