"""The compiled list store: the same answers as the reference Matcher, shared by processes,
compiled once per version, old versions removed when no process maps them."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schoolgate.core import liststore, liststore_write
from schoolgate.core.configfile import Issues
from schoolgate.core.hosts import normalize_host
from schoolgate.core.lists import Matcher, parse_entries, parse_list
from schoolgate.core.liststore import ListFile, ListStore, StoreError, load_store, remove_unused

DIFF = settings(
    max_examples=120, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)

# -- random lists and requests --------------------------------------------------------------------
# Few labels, so that entries are often parent and child of each other (where squidGuard 1.6
# misses blocks), and near misses ("xab.com" against "ab.com") come up.
LABELS = ["a", "b", "ab", "xab", "www", "m", "b-c", "bücher", "xn--bcher-kva", "_dm"]
TOPS = ["com", "co.uk", "org", "ab"]
PATHS = ["/", "/x", "/x/", "/x/y", "/xy", "/X/Y", "/x?q=1", "/x.html", "/%78/y", "//x/./y"]
IPS = ["10.1.2.3", "192.0.2.1", "2001:db8::1"]

host = st.builds(
    lambda labels, top: ".".join([*labels, top]),
    st.lists(st.sampled_from(LABELS), min_size=1, max_size=3),
    st.sampled_from(TOPS),
)
# List entries from fewer labels: parents and children of each other in most examples.
listed_host = st.builds(
    lambda labels, top: ".".join([*labels, top]),
    st.lists(st.sampled_from(LABELS[:4] + ["bücher"]), min_size=1, max_size=3),
    st.sampled_from(TOPS[:2]),
)
entry = st.one_of(
    st.tuples(st.just("domain"), listed_host, st.none()),
    st.tuples(st.just("path"), listed_host, st.sampled_from(PATHS[1:5])),
    st.tuples(st.just("ip"), st.sampled_from(IPS), st.none()),
    st.tuples(st.just("regex"), st.sampled_from(["ab\\.org/x", "^m\\.", "bücher"]), st.none()),
)
FORMATS = ["domains", "hosts", "adblock", "urls", "squidguard", "inline"]
a_list = st.tuples(st.sampled_from(FORMATS), st.lists(entry, max_size=12))
request = st.tuples(
    st.one_of(
        host,
        st.sampled_from(IPS),
        host.map(lambda h: h.upper()),
        host.map(lambda h: "www." + h),
    ),
    st.one_of(st.none(), st.sampled_from(PATHS)),
)


def _write(folder: Path, name: str, fmt: str, items: list) -> tuple[object, str]:
    """One random list in ``fmt``: a ListFile (or inline entries) and its format option."""
    lines = []
    for kind, target, path in items:
        if kind == "regex" and fmt not in ("squidguard", "inline"):
            continue
        if kind == "path" and fmt in ("domains", "hosts"):
            kind, path = "domain", None
        if fmt == "hosts":
            lines.append(f"0.0.0.0 {target}")
        elif fmt == "adblock":
            lines.append(f"||{target}{path or '^'}")
        elif fmt == "inline":
            lines.append(f"re:{target}" if kind == "regex" else target + (path or ""))
        else:
            lines.append(target + (path or "") if kind != "regex" else target)
    if fmt == "inline":
        issues = Issues()
        parsed = parse_entries([(t, i) for i, t in enumerate(lines, 1)], issues, source=name)
        return parsed, "auto"
    if fmt == "squidguard":
        root = folder / name
        root.mkdir()
        kinds = {"domains": [], "urls": [], "expressions": []}
        for (kind, _t, _p), line in zip(items, lines, strict=True):
            where = {"regex": "expressions", "path": "urls"}.get(kind, "domains")
            kinds[where].append(line)
        for file, rows in kinds.items():
            (root / file).write_text("\n".join(rows) + "\n", encoding="utf-8")
        return ListFile(root, "squidguard", name), "squidguard"
    path = folder / name
    path.write_text("# a list\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return ListFile(path, "auto" if fmt == "urls" else fmt, name), fmt


def _reference(item) -> object:
    if isinstance(item, ListFile):
        return parse_list(item.path, Issues(), fmt=item.fmt, display_path=item.display)
    return item


def _requests_near(items: list, extra: st.DataObject) -> list[tuple[str, str | None]]:
    """Requests for the listed hosts, their parents and children, and random ones."""
    hosts = [target for kind, target, _path in items if kind != "regex"] or ["a.com"]
    near = st.builds(
        lambda base, sub, cut: ".".join([*sub, *base.split(".")[cut:]]),
        st.sampled_from(hosts),
        st.lists(st.sampled_from(LABELS), max_size=2),
        st.integers(0, 1),
    )
    return extra.draw(
        st.lists(
            st.tuples(near | request.map(lambda r: r[0]), st.none() | st.sampled_from(PATHS)),
            min_size=1,
            max_size=30,
        )
    )


@DIFF
@given(st.lists(a_list, min_size=1, max_size=4), st.lists(a_list, max_size=1), st.data())
def test_the_store_answers_as_the_matcher_does(tmp_path_factory, lists, allow, data):
    requests = _requests_near([e for _f, items in lists + allow for e in items], data)
    folder = tmp_path_factory.mktemp("lists")
    categories = []
    for i, (fmt, items) in enumerate(lists):
        item, _ = _write(folder, f"list{i}", fmt, items)
        categories.append((f"cat{i % 3}", [item]))
    merged: dict[str, list] = {}
    for name, items in categories:  # a category may have several lists
        merged.setdefault(name, []).extend(items)
    categories = list(merged.items())
    allowlist = [_write(folder, "allow", fmt, items)[0] for fmt, items in allow]
    issues = Issues()
    store = load_store("t", categories, allowlist, data_dir=folder, issues=issues)
    reference = Matcher.build(
        [(name, [_reference(i) for i in items]) for name, items in categories],
        [_reference(i) for i in allowlist],
    )
    assert not issues.items
    if any(isinstance(i, ListFile) for _n, items in categories for i in items) or any(
        isinstance(i, ListFile) for i in allowlist
    ):
        assert isinstance(store, ListStore)
    assert store.stats() == reference.stats()
    # Each request twice, in another order the second time: a host looked up again is
    # answered from what the store remembers of it, which must be the same answer.
    for raw_host, path in requests + requests[::-1]:
        h = normalize_host(raw_host)
        assert store.lookup(h, path) == reference.lookup(h, path), (raw_host, path)
        assert store.lookup_all(h, path) == reference.lookup_all(h, path), (raw_host, path)


# -- fixed cases ---------------------------------------------------------------------------------
def _store(tmp_path: Path, text: str, name: str = "list.txt", fmt: str = "auto") -> ListStore:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    store = load_store(
        "t", [("social", [ListFile(path, fmt, name)])], data_dir=tmp_path, issues=Issues()
    )
    assert isinstance(store, ListStore)
    return store


def test_parent_and_child_entries_block_every_host_under_them(tmp_path):
    # squidGuard 1.6 lets some of these through when both a domain and its subdomain are listed
    store = _store(tmp_path, "example.com\nwww.example.com\nb.a.example.com\n")
    for host in ("example.com", "x.example.com", "a.example.com", "z.b.a.example.com"):
        assert store.lookup(host, None) is not None, host
    assert store.lookup("z.b.a.example.com", "/").entry == "b.a.example.com"
    assert store.lookup("y.www.example.com", None).entry == "www.example.com"
    assert store.lookup("badexample.com", None) is None
    assert store.lookup("example.com.evil.org", None) is None


def test_a_host_that_is_not_text_is_in_no_list_and_breaks_nothing(tmp_path):
    """A Host header's raw bytes (0xFF read as a surrogate escape) cannot be a listed name: the
    lookup says so instead of raising, which once failed the circumvention detectors."""
    store = _store(tmp_path, "social.test\n")
    for host in ("social.test\udcff", "\udcffsocial.test", "x.social.test\udcff"):
        assert store.lookup(host, None) is None
        assert store.lookup(host, "/") is None
        assert store.lookup_all(host, "/") == []
    assert store.lookup("social.test", None) is not None


def test_matches_name_their_entry_file_and_line(tmp_path):
    store = _store(tmp_path, "# social\nfacebook.com\nbücher.de\n||tiktok.com/login^\n")
    assert store.lookup("m.facebook.com", "/").source == "list.txt:2"
    assert store.lookup("xn--bcher-kva.de", None).entry == "xn--bcher-kva.de"
    match = store.lookup("www.tiktok.com", "/login?next=1")
    assert (match.entry, match.kind, match.source) == ("tiktok.com/login", "path", "list.txt:4")
    assert store.lookup("tiktok.com", "/foryou") is None


def test_the_store_is_a_file_in_the_data_folder_named_by_its_content(tmp_path):
    first = _store(tmp_path, "a.com\n")
    again = _store(tmp_path, "a.com\n")
    assert first.path == again.path and first.path.parent == tmp_path / "lists"
    changed = _store(tmp_path, "a.com\nb.com\n")
    assert changed.path != first.path
    assert changed.lookup("b.com", None) and not first.lookup("b.com", None)


def test_an_old_version_is_removed_once_no_process_maps_it(tmp_path):
    old = _store(tmp_path, "a.com\n")
    old_path = old.path
    # another process maps the old version too
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(old_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "mapped"
    new = _store(tmp_path, "b.com\n")
    del old
    gc.collect()
    assert remove_unused(tmp_path) == (0, 2)  # the new one here, the old one there
    assert old_path.exists()
    holder.communicate("")  # that process moves on
    assert remove_unused(tmp_path) == (1, 1)
    assert not old_path.exists() and new.path.exists()
    assert new.lookup("b.com", None) is not None


_HOLD = """
import sys
from schoolgate.core.liststore import ListStore
store = ListStore.open(sys.argv[1])
print("mapped", flush=True)
sys.stdin.read()
"""


def test_workers_reloading_at_once_compile_a_version_once(tmp_path):
    lists = tmp_path / "big.txt"
    lists.write_text("".join(f"host{i}.example.org\n" for i in range(30_000)))
    script = textwrap.dedent(
        """
        import logging, sys
        from pathlib import Path
        from schoolgate.core.configfile import Issues
        from schoolgate.core.liststore import ListFile, load_store
        records = []
        logging.basicConfig(level=logging.INFO, handlers=[logging.Handler()])
        logging.getLogger().handlers[0].emit = records.append
        folder = Path(sys.argv[1])
        store = load_store("main", [("c", [ListFile(folder / "big.txt", "auto", "big.txt")])],
                           data_dir=folder, issues=Issues())
        compiled = any("compiled" in r.getMessage() for r in records)
        print(int(compiled), store.path.name, bool(store.lookup("a.host7.example.org", None)))
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE)
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=300)[0].decode().split() for p in procs]
    assert sorted(o[0] for o in outputs) == ["0", "0", "1"]
    assert len({o[1] for o in outputs}) == 1
    assert all(o[2] == "True" for o in outputs)
    assert [p.name for p in (tmp_path / "lists").iterdir() if p.suffix != ".lock"] == [
        outputs[0][1]
    ]


def test_big_lists_compile_in_a_subprocess_with_progress_and_warnings(tmp_path, monkeypatch):
    path = tmp_path / "big.txt"
    path.write_text("a.com\nnot a domain at all\nb.com\n")
    calls = []
    spawned = []
    real_popen = subprocess.Popen
    monkeypatch.setattr(
        liststore.subprocess,
        "Popen",
        lambda *a, **k: spawned.append(a) or real_popen(*a, **k),
    )
    issues = Issues()
    lists = [("c", [ListFile(path, "domains", "big.txt")])]
    store = load_store(
        "main",
        lists,
        data_dir=tmp_path,
        issues=issues,
        progress=lambda *a: calls.append(a),
        subprocess_bytes=0,
    )
    assert spawned, "compiled in this process"
    assert ("reading lists", path.stat().st_size, path.stat().st_size) in calls
    assert calls[-1] == ("indexing", 3, 3)
    assert [w.line for w in issues.warnings] == [2] and not issues.items
    assert store.lookup("x.b.com", None).source == "big.txt:3"
    # mapped again (no compile): the warning is still reported
    again = Issues()
    assert load_store("main", lists, data_dir=tmp_path, issues=again).path == store.path
    assert [str(w) for w in again.warnings] == [str(w) for w in issues.warnings]


def test_two_processes_compile_the_same_file_as_one(tmp_path, monkeypatch):
    """The compiler's subprocess looks up half of the keys' ids in a forked child: the file
    is the same, byte for byte, and answers the same."""
    path = tmp_path / "list.txt"
    names = [f"{a}.{b}.example.{top}" for a in "abcdef" for b in "ghijkl" for top in ("com", "org")]
    path.write_text("\n".join(["# names", *names, "10.1.2.3", "x.example.com/path"]) + "\n")
    lists = [("c", [ListFile(path, "auto", "list.txt")])]
    monkeypatch.setattr(liststore_write, "PARALLEL_KEYS", 10)
    written = {}
    for processes in (1, 2):
        dest = tmp_path / f"{processes}.sgl"
        assert liststore.compile_store(lists, [], dest, Issues(), None, processes)
        written[processes] = dest.read_bytes()
    assert written[1] == written[2]
    store = ListStore.open(tmp_path / "2.sgl")
    assert store.lookup("www.c.h.example.org", None).entry == "c.h.example.org"
    assert store.lookup("x.example.com", "/path/to").kind == "path"
    assert store.lookup("10.1.2.3", None).source == "list.txt:" + str(len(names) + 2)


def test_the_compile_goes_on_when_the_second_process_fails(monkeypatch):
    """A child that fails, or no child to be had: the compiler looks up every id itself."""
    import os

    class Trie:  # ids are the keys' numbers; the lookups fail in any other process
        parent = os.getpid()

        def key_id(self, key: str) -> int:
            if os.getpid() != self.parent:
                raise RuntimeError("the child fails")
            return int(key)

    keys = [str(i) for i in range(50)]
    monkeypatch.setattr(liststore_write, "PARALLEL_KEYS", 10)
    assert list(liststore_write.key_ids(Trie(), keys, 2)) == list(range(50))

    def no_fork() -> int:
        raise OSError("no more processes")

    monkeypatch.setattr(liststore_write.os, "fork", no_fork)
    assert list(liststore_write.key_ids(Trie(), keys, 2)) == list(range(50))


@pytest.mark.parametrize("twice", [False, True])
def test_lists_of_domains_only_compile_to_the_same_file_without_the_matcher(
    tmp_path, monkeypatch, twice
):
    """Lists of domains only with no name twice are written without the matcher's dict of
    every name; a name twice (here in a category and the allowlist) goes the matcher's way,
    with the trie already built. Either way the file is the one the matcher's way writes."""
    (tmp_path / "a.txt").write_text("# a\nx.example.com\n10.1.2.3\nb.org\n\n2001:db8::1\n")
    (tmp_path / "b.txt").write_text("c.example.com\nwww.d.net\n")
    (tmp_path / "allow.txt").write_text("y.example.com\n" + ("b.org\n" if twice else ""))
    lists = [
        ("one", [ListFile(tmp_path / "a.txt", "auto", "a.txt")]),
        ("two", [ListFile(tmp_path / "b.txt", "domains", "b.txt")]),
    ]
    allow = [ListFile(tmp_path / "allow.txt", "auto", "allow.txt")]
    calls: list = []
    progress = lambda *a: calls.append(a)  # noqa: E731
    assert liststore.compile_store(lists, allow, tmp_path / "fast.sgl", Issues(), progress)
    monkeypatch.setattr(liststore, "write_unique_domains", lambda *a: (False, None))
    assert liststore.compile_store(lists, allow, tmp_path / "matcher.sgl", Issues())
    if not twice:
        assert (tmp_path / "fast.sgl").read_bytes() == (tmp_path / "matcher.sgl").read_bytes()
    # (With a name twice, the trie counts it twice, which may order its ids otherwise.)
    store, reference = (ListStore.open(tmp_path / f) for f in ("fast.sgl", "matcher.sgl"))
    hosts = ["m.x.example.com", "b.org", "10.1.2.3", "2001:db8::1", "d.net", "www.d.net", "y.a"]
    for host in hosts + ["c.example.com", "y.example.com", "z.b.org", "example.com"]:
        assert store.lookup(host, None) == reference.lookup(host, None), host
        assert store.lookup_all(host, "/") == reference.lookup_all(host, "/"), host
    assert store.lookup("m.x.example.com", None).source == "a.txt:2"
    assert store.lookup("b.org", None).category == ("allowlist" if twice else "one")
    assert store.stats() == reference.stats()
    assert store.stats() == {"allowlist": 2 if twice else 1, "one": 4, "two": 2}
    assert calls[-1] == ("indexing", 3, 3)


def test_a_list_with_an_error_compiles_nothing(tmp_path):
    folder = tmp_path / "sg"
    folder.mkdir()  # a squidGuard folder without its files
    issues = Issues()
    lists = [("c", [ListFile(folder, "squidguard", "sg")])]
    assert load_store("main", lists, data_dir=tmp_path, issues=issues) is None
    assert "without a domains" in str(issues.items[0])
    assert not list((tmp_path / "lists").glob("*.sgl"))


def test_a_damaged_store_file_is_compiled_again_not_trusted(tmp_path):
    store = _store(tmp_path, "a.com\nb.com\n")
    path = store.path
    del store
    gc.collect()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError):
        ListStore.open(path)
    again = _store(tmp_path, "a.com\nb.com\n")
    assert again.path == path and again.lookup("x.b.com", None) is not None


def test_inline_entries_only_use_the_reference_matcher(tmp_path):
    parsed = parse_entries([("a.com", 1)], Issues(), source="policy.yaml")
    matcher = load_store("main", [("c", [parsed])], data_dir=tmp_path, issues=Issues())
    assert type(matcher) is Matcher
    assert not (tmp_path / "lists").exists()


def test_the_compiler_runs_without_the_gateway_installed(tmp_path):
    # the subprocess imports only the core: no mitmproxy, SQLAlchemy or Flask
    code = (
        "import sys, schoolgate.core.liststore; "
        "print(sorted({'mitmproxy', 'sqlalchemy', 'flask'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_gateway_reload_switches_version_and_removes_the_old_one(
    gateway_config: Path, gateway_data_dir: Path
):
    from mitmproxy.test import taddons

    from schoolgate.gateway.holder import PolicyHolder

    holder = PolicyHolder()
    with taddons.context(holder) as tctx:
        tctx.configure(
            holder,
            schoolgate_config=str(gateway_config),
            schoolgate_data_dir=str(gateway_data_dir),
        )
        old = holder.policy.matcher
        assert isinstance(old, ListStore) and old.path.parent == gateway_data_dir / "lists"
        old_path = old.path
        assert old.lookup("social.test", None) is not None
        social = gateway_config.parent / "social.txt"
        social.write_text(social.read_text() + "newsocial.test\n")
        assert holder.reload(force=True) is True
        new = holder.policy.matcher
        assert new.path != old_path and new.lookup("x.newsocial.test", None) is not None
        holder.sweep_lists()
        assert old_path.exists()  # the old version is still mapped here
        del old
        gc.collect()
        holder.sweep_lists()
        assert not old_path.exists() and new.path.exists()
