"""Co-occurrence rules of the risk-term library: a word from every group, anywhere in a search."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from schoolgate.core.configfile import ConfigError
from schoolgate.monitoring.terms import Matcher, load_matcher

LIBRARY = {
    "en/groups.yaml": """
        groups:
          fiction: [macbeth, novel]
          painless: [painless, peaceful, without it hurting]
          soft: [<painless>, gentle]
        spellings:
          to: ['2']
        """,
    "en/suicide.yaml": """
        theme: suicide
        terms:
          - {term: suicide, severity: 2}
        rules:
          - rule: a painless way to go
            all:
              - [<soft>]
              - [way to go, die, overdos*]
            within: 5
            severity: 3
            unless: [<fiction>, dentist]
            note: seeking a method that does not hurt
          - rule: how many tablets
            all:
              - [how many]
              - [paracetamol, ibuprofen]
              - [die, kill me]
            ordered: true
            severity: 3
            firm: true
          - rule: giving up
            all: [[give up, giving up], [on life]]
            severity: 2
        allow: [peaceful way to go to sleep]
        context:
          - {phrase: pshe, lower: 1}
        """,
}


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return root


def _matcher(root: Path, files: dict[str, str]) -> Matcher:
    return load_matcher([_write(root, files)])


@pytest.fixture
def matcher(tmp_path) -> Matcher:
    return _matcher(tmp_path, LIBRARY)


def _found(matcher: Matcher, text: str) -> list[tuple[str, int]]:
    return [(m.term, m.severity) for m in matcher.assess(text).active]


@pytest.mark.parametrize(
    "text",
    [
        "most painless way to go",
        "is drowning a peaceful way 2 go",  # text-speak reaches rule phrases too
        "how do u die without it hurting",  # a named group inside a named group
        "PAINLESS overdosing??",  # a stem, any case
        "gentle way to go",
    ],
)
def test_a_word_from_every_group_matches(matcher, text):
    found = matcher.assess(text).active
    assert [(m.theme, m.term, m.severity, m.rule) for m in found] == [
        ("suicide", "a painless way to go", 3, True)
    ]
    assert found[0].note == "seeking a method that does not hurt"


@pytest.mark.parametrize(
    "text",
    [
        "painless",  # one group only
        "the most painless way to go to the dentist",  # unless
        "a painless way to die in macbeth",  # unless, through a named group
        "painless tattoo aftercare tips for anyone who wants to know the way to go",  # within 5
        "a peaceful way to go to sleep",  # an allow-phrase covers the words found
        "painfully slow wifi way to go",  # "painfully" is not "painless"
    ],
)
def test_what_does_not_match(matcher, text):
    assert _found(matcher, text) == []


def test_ordered_groups_must_come_in_order(matcher):
    assert _found(matcher, "how many paracetamol to die") == [("how many tablets", 3)]
    assert _found(matcher, "die paracetamol how many") == []


def test_context_lowers_a_rule_unless_it_is_firm(matcher):
    assert _found(matcher, "i feel like giving up on life") == [("giving up", 2)]
    assert _found(matcher, "pshe giving up on life") == [("giving up", 1)]
    assert _found(matcher, "pshe how many ibuprofen would kill me") == [("how many tablets", 3)]


def test_a_school_removes_a_shipped_rule(tmp_path):
    shipped = _write(tmp_path / "shipped", LIBRARY)
    school = _write(
        tmp_path / "school",
        {"en/mine.yaml": "theme: suicide\nremove: [a painless way to go]\n"},
    )
    matcher = load_matcher([shipped, school])
    assert _found(matcher, "most painless way to go") == []
    assert _found(matcher, "how many paracetamol to die") == [("how many tablets", 3)]


def test_rule_mistakes_name_file_line_and_field(tmp_path):
    files = {
        **LIBRARY,
        "en/your_school.yaml": """
            theme: suicide
            rules:
              - rule: unknown group
                all: [[<painles>], [die]]
                severity: 3
              - rule: a star inside
                all: [[over*dose], [die]]
                severity: 3
              - rule: too far
                all: [[a1], [b1]]
                within: 31
                severity: 3
              - rule: suicide
                all: [[a2], [b2]]
                severity: 2
              - rule: six groups
                all: [[a], [b], [c], [d], [e], [f]]
                severity: 1
            groups:
              loop: [<loop>, x]
            """,
    }
    with pytest.raises(ConfigError) as raised:
        _matcher(tmp_path, files)
    errors = [str(issue) for issue in raised.value.issues]
    where = str(tmp_path / "en" / "your_school.yaml")  # read after suicide.yaml

    def has(line: int, text: str) -> bool:
        return any(e.startswith(f"{where}:{line}:") and text in e for e in errors)

    assert has(5, "unknown group <painles> (did you mean <painless>?)"), errors
    assert has(8, "'*' only ends a stem"), errors
    assert has(12, "rules[2].within: expected a whole number of at most 30, got 31"), errors
    assert has(14, "'suicide' is already a term or rule of suicide"), errors
    assert has(18, "rules[4].all: at most 5 word groups in one rule"), errors
    assert has(21, "group <loop> contains itself"), errors
    assert len(errors) == 6, errors


ENDS = {
    "en/spellings.yaml": "spellings:\n  kill: [unalive]\n  to: ['2']\n  want to: [wanna]\n",
    "en/suicide.yaml": """
        theme: suicide
        rules:
          - rule: wanting to unalive
            all:
              - [want to, how to, ways to]
              - [kill, kill rn]
            ordered: true
            ends: true
            severity: 3
          - rule: the quickest way to go
            all: [[quickest way to go]]
            ends: true
            severity: 3
        """,
}


@pytest.mark.parametrize(
    "text",
    [
        "i want to unalive",  # "unalive" reads as "kill": nothing after it
        "i wanna unalive rn",  # a phrase of the last group may run to the end
        "ways 2 unalive",
        "whats the quickest way 2 go",
    ],
)
def test_a_rule_that_ends_the_text_matches_only_there(tmp_path, text):
    assert [m.severity for m in _matcher(tmp_path, ENDS).assess(text).active] == [3]


@pytest.mark.parametrize(
    "text",
    [
        "i want to kill it at the talent show",  # the phrase is not the last words
        "how to kill time on a long flight",
        "quickest way to go to london from leeds",
    ],
)
def test_a_rule_that_ends_the_text_does_not_match_before_its_end(tmp_path, text):
    assert _found(_matcher(tmp_path, ENDS), text) == []


def test_ends_must_be_true_or_false(tmp_path):
    files = {
        **ENDS,
        "en/mine.yaml": """
            theme: suicide
            rules:
              - rule: mine
                all: [[a1], [b1]]
                ends: at the end
                severity: 3
            """,
    }
    with pytest.raises(ConfigError) as raised:
        _matcher(tmp_path, files)
    errors = [str(issue) for issue in raised.value.issues]
    where = str(tmp_path / "en" / "mine.yaml")
    assert any(e.startswith(f"{where}:6:") and "rules[0].ends" in e for e in errors), errors
    assert len(errors) == 1, errors
