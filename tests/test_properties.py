"""Property-based tests (hypothesis) over host and URL normalisation, list matching, the
policy and the config loaders.

The invariants: normalisation never raises and is idempotent; every spelling of a host or URL
means what its plain form means; NO ALLOW THAT A NORMALISED FORM WOULD BLOCK; and a loader
either loads completely or reports every problem (with its file and a message) as
``ConfigError``, never any other exception.
"""

from __future__ import annotations

import copy
import random
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

import idna  # a dependency of httpx (test extras): IDNA 2008 / UTS 46, as browsers do it
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from schoolgate.cli.main import CommandError, facts_for_url
from schoolgate.core.config import load_policy
from schoolgate.core.configfile import ConfigError, Issues
from schoolgate.core.hosts import normalize_host
from schoolgate.core.identity import load_roster
from schoolgate.core.lists import Matcher, parse_entries
from schoolgate.core.model import Action, RequestFacts
from schoolgate.core.policy import Policy
from schoolgate.core.timetable import Timetable, load_timetable
from tests.policy_fixtures import BASE, DEFAULT_TIMETABLE, ROSTER, local, write_config

# database=None: no .hypothesis folder in the checkout; failures print their example.
FAST = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
SLOW = settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

# -- strategies ---------------------------------------------------------------------------------

label = st.from_regex(r"[a-z][a-z0-9]{0,6}(-[a-z0-9]{1,4})?", fullmatch=True).filter(
    lambda s: not s.startswith("xn")
)
tld = st.from_regex(r"[a-z]{2,6}", fullmatch=True)
domain = st.builds(
    lambda labels, top: ".".join([*labels, top]), st.lists(label, min_size=1, max_size=3), tld
)
# Unicode letters, the IDNA "deviation" characters ß and ς included (browsers keep them, UTS 46
# non-transitional; IDNA 2003 would turn ß into ss).
UNICODE_LETTERS = (
    "abcdefghijklmnopqrstuvwxyzß"
    "àáâäçèéêëìíîïñòóôöùúûüýÿāčďěňřšťž"
    "абвгдежзийклмнопрстуфхцчшщыэюя"
    "αβγδεζηθικλμνξοπρσςτυφχψω"
    "日本語中文한국"
)
unicode_label = st.text(alphabet=UNICODE_LETTERS, min_size=1, max_size=8)


def _percent_some(text: str, rnd: random.Random, *, only_letters: bool = True) -> str:
    out = []
    for ch in text:
        ok = ch.isascii() and (ch.isalpha() or not only_letters)
        if ok and rnd.random() < 0.3:
            out.append(f"%{ord(ch):02{'X' if rnd.random() < 0.5 else 'x'}}")
        else:
            out.append(ch)
    return "".join(out)


def _mixed_case(text: str, rnd: random.Random) -> str:
    # Only letters whose case round-trips: "ß".upper() is "SS" and "ς".upper().lower() is "σ",
    # other names altogether (a browser would send those as the other name too).
    return "".join(
        ch.upper() if ch.upper().lower() == ch and rnd.random() < 0.5 else ch for ch in text
    )


def _upper(text: str) -> str:
    return _mixed_case(text, _ALWAYS)


class _Always(random.Random):
    def random(self) -> float:
        return 0.0


_ALWAYS = _Always()


def spell_host(host: str, rnd: random.Random, *, userinfo: bool = True) -> str:
    """Another spelling of ``host`` that means the same host."""
    if not host.isascii() and rnd.random() < 0.5:
        host = idna.encode(host, uts46=True, transitional=False).decode("ascii")
    if rnd.random() < 0.5:
        host = _mixed_case(host, rnd)
    if rnd.random() < 0.4:
        host = _percent_some(host, rnd)
    if rnd.random() < 0.3:
        host += "."
    if rnd.random() < 0.3:
        host += f":{rnd.choice([80, 443, 8080, 1])}"
    if userinfo and rnd.random() < 0.2:
        host = rnd.choice(["user@", "user:pw@", "a@b@"]) + host
    return host


def spell_path(path: str, rnd: random.Random) -> str:
    """Another spelling of ``path`` that a web server reads as the same path."""
    query = ""
    if "?" in path:
        path, query = path.split("?", 1)
        query = "?" + query
    segments = path.split("/")[1:]
    out: list[str] = []
    for segment in segments:
        roll = rnd.random()
        if roll < 0.1:
            out.append("")  # "//"
        elif roll < 0.2:
            out.append(".")  # "/./"
        elif roll < 0.25:
            out.append("\0")  # "/%2e/", encoded below (after the letters)
        elif roll < 0.3:
            out.extend(["zz", ".."])  # "/zz/../"
        out.append(_mixed_case(segment, rnd) if rnd.random() < 0.5 else segment)
    spelled = "/" + "/".join(out)
    if rnd.random() < 0.3:
        spelled = _percent_some(spelled, rnd)
    if rnd.random() < 0.2:
        spelled = spelled.replace("/", "%2F").replace("%2F", "/", 1)
    return spelled.replace("\0", rnd.choice(["%2e", "%2E"])) + query


# -- normalize_host -----------------------------------------------------------------------------


@FAST
@given(st.text())
def test_normalize_host_never_raises_and_is_idempotent(raw):
    once = normalize_host(raw)
    assert isinstance(once, str)
    assert normalize_host(once) == once


@FAST
@given(st.text(alphabet=st.characters(codec="ascii")) | st.binary().map(lambda b: quote(b)))
def test_normalize_host_idempotent_on_ascii_and_percent_text(raw):
    once = normalize_host(raw)
    assert normalize_host(once) == once


@FAST
@given(domain, st.randoms(use_true_random=False))
def test_every_spelling_of_a_host_normalises_alike(host, rnd):
    assert normalize_host(host) == host
    assert normalize_host(spell_host(host, rnd)) == host


@FAST
@given(st.lists(unicode_label, min_size=1, max_size=3), tld, st.randoms(use_true_random=False))
def test_idn_and_punycode_normalise_alike(labels, top, rnd):
    host = ".".join([*labels, top])
    try:
        puny = idna.encode(host, uts46=True, transitional=False).decode("ascii")
    except idna.IDNAError:
        assume(False)
    assert normalize_host(host) == puny
    assert normalize_host(_upper(host)) == puny
    assert normalize_host(spell_host(host, rnd)) == puny
    assert normalize_host(puny.upper() + ".") == puny


@FAST
@given(st.ip_addresses(v=6), st.randoms(use_true_random=False))
def test_ipv6_spellings(address, rnd):
    plain = address.compressed
    assert normalize_host(plain) == plain
    assert normalize_host(address.exploded.upper()) == plain
    assert normalize_host(f"[{address.exploded}]") == plain
    assert normalize_host(f"[{plain}]:{rnd.randint(1, 65535)}") == plain


# -- the matcher --------------------------------------------------------------------------------


def _matcher(domains: list[str], paths: list[str] = ()) -> Matcher:
    issues = Issues()
    entries = [(d, i) for i, d in enumerate([*domains, *paths], 1)]
    parsed = parse_entries(entries, issues, source="t.yaml")
    assert not issues.items, issues.items
    return Matcher.build([("cat", [parsed])])


@FAST
@given(
    st.lists(domain, min_size=1, max_size=5),
    st.data(),
    st.lists(label, max_size=2),
    st.randoms(use_true_random=False),
)
def test_host_under_a_listed_domain_always_matches(domains, data, subs, rnd):
    listed = data.draw(st.sampled_from(domains))
    host = ".".join([*subs, listed])
    matcher = _matcher(domains)
    for spelled in (host, spell_host(host, rnd), spell_host(host, rnd)):
        found = matcher.lookup(normalize_host(spelled), data.draw(st.sampled_from([None, "/x"])))
        assert found is not None, spelled
        assert found.category == "cat"


@FAST
@given(st.lists(unicode_label, min_size=1, max_size=2), tld, label, st.randoms())
def test_idn_list_entry_matches_punycode_request_and_back(labels, top, sub, rnd):
    host = ".".join([*labels, top])
    try:
        puny = idna.encode(host, uts46=True, transitional=False).decode("ascii")
    except idna.IDNAError:
        assume(False)
    for listed, requested in ((host, puny), (puny, host), (_upper(host), f"{sub}.{puny}")):
        matcher = _matcher([listed])
        assert matcher.lookup(normalize_host(spell_host(requested, rnd)), "/") is not None


@FAST
@given(domain, st.from_regex(r"[a-z0-9-]{1,6}", fullmatch=True), st.sampled_from([None, "/"]))
def test_shared_suffix_without_a_label_boundary_never_matches(listed, prefix, path):
    matcher = _matcher([listed])
    assert matcher.lookup(normalize_host(prefix + listed), path) is None


path_segment = st.from_regex(r"[a-zA-Z0-9_~-]{1,8}", fullmatch=True)


@FAST
@given(
    domain,
    st.lists(path_segment, min_size=1, max_size=3),
    st.lists(path_segment, max_size=2),
    st.randoms(use_true_random=False),
)
def test_path_rules_match_case_insensitively_and_decoded(host, rule_segments, more, rnd):
    rule_path = "/" + "/".join(rule_segments)
    matcher = _matcher(["unrelated.example"], [host + rule_path])
    request = rule_path + ("/" + "/".join(more) if more else "")
    for spelled in (request, request.upper(), spell_path(request, rnd)):
        found = matcher.lookup(normalize_host(spell_host(host, rnd)), spelled)
        assert found is not None and found.kind == "path", (request, spelled)
    # a different first segment is not under the rule
    assert matcher.lookup(host, "/zz" + rule_path.lower().replace("/", "-", 1)) is None


# -- the policy: no allow that a normalised form would block -----------------------------------

AT = local("2026-11-24T10:30")  # Tuesday P2, a lesson: social media blocked for students
STUDENT_IP = "10.20.1.2"

# (host, path) pairs that the fixture config blocks for a student in a lesson, and the
# sub-domains and paths that may be added without changing that.
BLOCKED = [
    ("facebook.com", "/"),
    ("instagram.com", "/"),
    ("youtube.com", "/watch?v=abc"),
    ("bücher-social.example", "/"),
    ("games.example", "/play"),  # a path rule (social_media)
    ("bad.example", "/"),  # locked
    ("vpn.example", "/"),  # circumvention, always
    ("instagram.com", "/accounts/emailsignup"),  # age restriction path rule
    ("linkedin.com", "/signup"),  # age restriction path rule (only blocked by it)
]


@pytest.fixture(scope="module")
def policy() -> Policy:
    with tempfile.TemporaryDirectory() as tmp:
        loaded = load_policy(write_config(Path(tmp)), data_dir=tmp)
        yield loaded


def _decide(policy: Policy, host: str, path: str):
    return policy.decide(
        RequestFacts(host=host, at=AT, path=path, method="GET", client_ip=STUDENT_IP)
    )


@SLOW
@given(
    st.sampled_from(BLOCKED),
    st.lists(label.filter(lambda s: s not in ("education",)), max_size=2),
    st.lists(path_segment, max_size=2),
    st.sampled_from(["", "?q=1", "?a=b&c=d"]),
    st.randoms(use_true_random=False),
)
def test_no_spelling_of_a_blocked_url_is_allowed(policy, target, subs, more, query, rnd):
    host, path = target
    host = ".".join([*subs, host])
    if more and "?" not in path:
        path = path.rstrip("/") + "/" + "/".join(more)
    if query and "?" not in path:
        path += query
    plain = _decide(policy, host, path)
    assert plain.action is Action.BLOCK, (host, path, plain.reason)
    for _ in range(3):
        s_host, s_path = spell_host(host, rnd, userinfo=False), spell_path(path, rnd)
        decision = _decide(policy, s_host, s_path)
        assert decision.action is Action.BLOCK, (s_host, s_path, decision.reason)
        assert decision.category == plain.category
        # the same spelling as a URL, the way `schoolgate explain` reads it
        fragment = rnd.choice(["", "#top", "#/accounts"])
        userinfo = rnd.choice(["", "user@", "user:pw@"])
        url = f"{rnd.choice(['http', 'https', 'HTTPS'])}://{userinfo}{s_host}{s_path}{fragment}"
        facts = facts_for_url(url, at=AT, method="GET", client_ip=STUDENT_IP, user=None)
        decision = policy.decide(facts)
        assert decision.action is Action.BLOCK, (url, decision.reason)


@FAST
@given(st.text(max_size=60), st.text(max_size=60))
def test_decide_never_raises_and_plain_allowed_hosts_stay_consistent(policy, host, path):
    decision = _decide(policy, host, path)
    assert decision.action in (Action.ALLOW, Action.BLOCK)
    # deciding on the normalised host gives the same answer (one spelling, one decision)
    again = _decide(policy, normalize_host(host), path)
    assert again.action is decision.action, (host, normalize_host(host), path)


@FAST
@given(st.text(max_size=80))
def test_facts_for_url_never_crashes(url):
    try:
        facts = facts_for_url(url, at=AT, method="GET", client_ip=None, user=None)
    except CommandError:
        return
    assert facts.host
    normalize_host(facts.host)


# -- the config loaders -------------------------------------------------------------------------

yaml_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.sampled_from(["*", "", "lesson", "student", "block", "10.0.0.0/8", "24:00", "2026-02-30"]),
)
yaml_value = st.recursive(
    yaml_scalar,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(max_size=8) | st.integers(), children, max_size=3)
    ),
    max_leaves=6,
)


def _nodes(data: Any, path: tuple = ()) -> list[tuple]:
    """Every path to a node inside nested dicts and lists."""
    out = [path]
    if isinstance(data, dict):
        for key, value in data.items():
            out.extend(_nodes(value, (*path, key)))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            out.extend(_nodes(value, (*path, index)))
    return out


@st.composite
def mutated(draw, base: Any) -> Any:
    """``base`` with one to three mutations: a node replaced, deleted, or a key added."""
    data = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        nodes = _nodes(data)
        path = draw(st.sampled_from(nodes))
        kind = draw(st.sampled_from(["replace", "delete", "add_key"]))
        if not path:
            if kind == "replace":
                data = draw(yaml_value)
            continue
        parent = data
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        if kind == "replace":
            parent[last] = draw(yaml_value)
        elif kind == "delete":
            del parent[last]
        elif isinstance(parent[last], dict):
            parent[last][draw(st.text(min_size=1, max_size=10))] = draw(yaml_value)
        else:
            parent[last] = draw(yaml_value)
    return data


def _check_config_error(exc: ConfigError) -> None:
    assert exc.issues, "ConfigError without issues"
    for issue in exc.issues:
        assert issue.file, issue
        assert issue.message and issue.message.strip(), issue


def _check_policy(policy: Policy) -> None:
    """A loaded policy is whole: every site has a timetable, the default site exists."""
    assert isinstance(policy, Policy)
    assert policy.timetables
    assert policy.resolver.default_site in policy.timetables
    assert policy.matcher is not None
    assert "guest" in policy.roles


def _load(tmp: Path, text: str | bytes) -> None:
    path = tmp / "mitm_config.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    try:
        loaded = load_policy(path, data_dir=tmp)
    except ConfigError as exc:
        _check_config_error(exc)
    else:
        _check_policy(loaded)


@pytest.fixture(scope="module")
def config_dir():
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        write_config(path)  # the roster beside it
        yield path


def _base_config(tmp: Path) -> dict:
    data = copy.deepcopy(BASE)
    data["database"] = {"url": f"sqlite:///{tmp}/schoolgate.db"}
    data["identity"]["roster"] = "roster.csv"
    return data


@SLOW
@given(st.data())
def test_load_policy_on_mutated_configs(config_dir, data):
    config = data.draw(mutated(_base_config(config_dir)))
    _load(config_dir, yaml.safe_dump(config, allow_unicode=True, sort_keys=False))


@SLOW
@given(st.binary(max_size=300) | st.text(max_size=300))
def test_load_policy_on_random_files(config_dir, blob):
    _load(config_dir, blob)


def test_load_policy_unmodified_base_loads(config_dir):
    _load(config_dir, yaml.safe_dump(_base_config(config_dir), allow_unicode=True))


TIMETABLE_DATA = yaml.safe_load(DEFAULT_TIMETABLE.read_text(encoding="utf-8"))


def _load_timetable(tmp: Path, text: str | bytes) -> None:
    path = tmp / "timetable.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    issues = Issues()
    timetable = load_timetable(path, issues, site="main", display_path="timetable.yaml")
    if issues.items:
        assert timetable is None, "a timetable with errors was returned"
        _check_config_error(ConfigError(issues.items))
    else:
        assert isinstance(timetable, Timetable)
        timetable.window_at(AT)


@SLOW
@given(st.data())
def test_load_timetable_on_mutated_timetables(config_dir, data):
    timetable = data.draw(mutated(TIMETABLE_DATA))
    _load_timetable(config_dir, yaml.safe_dump(timetable, allow_unicode=True, sort_keys=False))


@SLOW
@given(st.binary(max_size=300) | st.text(max_size=300))
def test_load_timetable_on_random_files(config_dir, blob):
    _load_timetable(config_dir, blob)


csv_cell = st.sampled_from(
    ["alice", "ben", "student", "staff", "pupil", "9B", "", "2012-01-15", "17/05/2010", "x"]
) | st.text(max_size=10)


@st.composite
def roster_text(draw) -> str | bytes:
    kind = draw(st.sampled_from(["rows", "mutate", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "rows":
        rows = draw(st.lists(st.lists(csv_cell, max_size=6), max_size=6))
        header = draw(st.sampled_from(["username,role,group,date_of_birth", "site", ""]))
        return header + "\n" + "\n".join(",".join(row) for row in rows)
    lines = ROSTER.splitlines()
    index = draw(st.integers(0, len(lines) - 1))
    lines[index] = draw(st.text(max_size=40))
    return "\n".join(lines)


@SLOW
@given(roster_text())
def test_load_roster_reports_or_loads(config_dir, text):
    path = config_dir / "roster-fuzz.csv"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    issues = Issues()
    entries = _roster(path, issues)
    assert isinstance(entries, dict)
    if issues.items:
        _check_config_error(ConfigError(issues.items))
    for name, entry in entries.items():
        assert name == entry.username and name == name.lower() and name.strip()
        assert entry.role in {"student", "staff", "guest"}


def _roster(path: Path, issues: Issues):
    return load_roster(
        path,
        issues,
        roles={"student", "staff", "guest"},
        aliases={"pupil": "student"},
        sites={"main"},
        display_path="roster.csv",
    )


# -- bugs these properties found, kept as regression tests ------------------------------------


def test_roster_not_utf8_is_read_as_windows_1252_with_a_warning(tmp_path):
    config = write_config(tmp_path)
    (tmp_path / "roster.csv").write_bytes(
        b"username,role,group,date_of_birth\nzo\xe9,student,9B,\n"
    )
    policy = load_policy(config, data_dir=tmp_path)
    assert policy.identify(None, "zo\u00e9").group == "9B"
    assert any("Windows-1252" in w for w in policy.warnings)


def test_facts_for_url_unbalanced_bracket_is_a_clear_error():
    with pytest.raises(CommandError, match="not a URL"):
        facts_for_url("[", at=AT, method="GET", client_ip=None, user=None)


def test_backslash_before_at_goes_where_browsers_go():
    facts = facts_for_url(
        "http://facebook.com\\@evil.example/", at=AT, method="GET", client_ip=None, user=None
    )
    assert facts.host == "facebook.com"


def test_idn_deviation_characters_are_spelt_as_browsers_do():
    # Browsers (UTS 46, non-transitional) send faß.example as xn--fa-hia.example.
    assert normalize_host("faß.example") == "xn--fa-hia.example"
    assert normalize_host("FAß.example.") == "xn--fa-hia.example"
