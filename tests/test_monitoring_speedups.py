"""The matcher's C loops (schoolgate/monitoring/speedups.c) against the same loops in Python.

A search is graded by the C loops wherever the package was built with a C compiler, and by
the Python ones elsewhere: a pupil's search must get the same grade either way. These tests
grade many texts both ways (the labelled searches, the same disguised, and random texts made
of the library's own phrases, which wake its rules) and compare every match, and give the C
loops input that is not as the matcher builds it: an error, never a crash or a guess.
"""

from __future__ import annotations

import pickle
import random

import ahocorasick
import pytest

from schoolgate.monitoring import normaliser, opinion, terms
from schoolgate.monitoring.flat import FlatAutomaton
from schoolgate.monitoring.normaliser import Normaliser, normalise, raw_words
from schoolgate.monitoring.rules import satisfied
from schoolgate.monitoring.terms import Matcher, load_matcher
from tests.test_monitoring_labelled import load_labelled

speedups = terms.speedups


@pytest.fixture(scope="module")
def shipped() -> Matcher:
    return load_matcher()


def _python_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(terms, "speedups", None)
    monkeypatch.setattr(normaliser, "speedups", None)
    monkeypatch.setattr(opinion, "speedups", None)


def test_the_c_loops_are_built():
    # ./run-tests installs a C compiler (gcc) before it installs the package; without it the
    # package installs without them and every comparison below would be Python against Python.
    assert speedups is not None, (
        "schoolgate.monitoring.speedups is not built: install gcc, then reinstall the package"
    )


def _texts(matcher: Matcher) -> list[str]:
    labelled = [item.text for item in load_labelled()]
    rng = random.Random(2026)
    phrases = [p for rule in matcher.cooccurrence for group in rule.groups for p in group]
    phrases += [p for rule in matcher.cooccurrence for p in rule.unless]
    phrases += [term.text for term in matcher.terms]
    phrases += [allow.phrase for allow in matcher.allows]
    phrases += [context.phrase for context in matcher.rules]
    words = [word for text in labelled for word in text.split()]
    out = list(labelled)
    for text in labelled:
        shuffled = text.split()
        rng.shuffle(shuffled)
        out.append(" ".join(shuffled))
        out.append(text.upper().replace("O", "0").replace("I", "1").replace(" ", "  . "))
        out.append(f"{text} {rng.choice(labelled)}")
    for _ in range(6000):
        out.append(
            " ".join(
                rng.choice(phrases) if rng.random() < 0.5 else rng.choice(words)
                for _ in range(rng.randint(1, 12))
            )
        )
    out += ["", " ", "a", "kill " * 400, "s u i c i d e", "wanna " * 30, "ｋｉｌｌ ｍｙｓｅｌｆ"]
    return out


def test_c_and_python_grade_every_text_alike(shipped, monkeypatch):
    texts = _texts(shipped)
    with_c = Matcher(shipped.library, cache_size=0)
    graded = [with_c.assess(text) for text in texts]
    _python_only(monkeypatch)
    in_python = Matcher(shipped.library, cache_size=0)
    differ = [
        (text, c, p)
        for text, c, p in zip(texts, graded, map(in_python.assess, texts), strict=True)
        if c != p
    ]
    assert not differ, differ[:3]
    # The comparison means something: rules and terms matched, alerts and allowed ones.
    assert sum(1 for g in graded if g.severity == 3) > 1000
    assert sum(1 for g in graded for m in g.matches if m.rule and m.active) > 1000
    assert sum(1 for g in graded if g.suppressed) > 100


def test_c_and_python_give_the_second_opinion_the_same_sums(shipped, monkeypatch):
    """The model's sum over every word and pair, the same to the last bit, and so every search
    graded alike (the second opinion reads every search)."""
    model = shipped.opinion
    assert model is not None and model.alone_threshold is not None
    texts = _texts(shipped)
    reader = Matcher(shipped.library, cache_size=0)
    words = [reader.normaliser.read(text).words for text in texts]
    assert model.piece_size and model.piece_weights  # the pieces of words are summed too
    model.unseen.clear()
    sums = [model._sum(w) for w in words]
    assert len(model.unseen) > 100  # words in no feature: their pieces alone
    with_c = Matcher(shipped.library, cache_size=0)
    graded = [with_c.assess(text, search=True) for text in texts]
    _python_only(monkeypatch)
    model.unseen.clear()  # each reckons its own unseen words
    assert [model._sum(w) for w in words] == sums
    in_python = Matcher(shipped.library, cache_size=0)
    differ = [
        text
        for text, c in zip(texts, graded, strict=True)
        if c != in_python.assess(text, search=True)
    ]
    assert not differ, differ[:3]
    # The comparison means something: searches raised by the model, flagged or found in nothing.
    raised = [g for g in graded if g.top is not None and g.top.term == opinion.TERM]
    assert sum(1 for g in raised if "no term or rule found" in g.top.note) > 10
    assert sum(1 for g in raised if "graded" in g.top.note) > 10


def test_linear_refuses_what_the_model_did_not_build():
    assert speedups is not None
    with pytest.raises(TypeError):
        speedups.linear(["a", "b"], {}, 0.0)  # words: a tuple
    with pytest.raises(TypeError):
        speedups.linear(("a", "b"), {"a": ("heavy", None)}, 0.0)
    with pytest.raises(TypeError):
        speedups.linear(("a", "b"), {"a": (1.0, ["b"]), "b": (0.0, None)}, 0.0)
    with pytest.raises(TypeError):
        speedups.linear(("a",), {"a": 1.0}, 0.0)
    table = {"a": (1.0, {"b": 0.5}), "b": (2, None)}
    assert speedups.linear(("a", "b", "a", "x", "b"), table, -1.0) == 5.5
    # A word in no feature adds its pieces' weights, kept while fewer than `kept` are.
    parts = {"<xy": 0.25, "xyz": 0.5, "yz>": 1.0, "<q>": 4.0}
    unseen: dict[str, float] = {}
    assert speedups.linear(("a", "xyz", "q"), table, 0.0, parts, 3, unseen, 1) == 6.75
    assert unseen == {"xyz": 1.75}
    unseen["q"] = 8.0  # kept: read, not reckoned again
    assert speedups.linear(("q",), table, 0.0, parts, 3, unseen, 1) == 8.0
    with pytest.raises(TypeError):
        speedups.linear(("a",), table, 0.0, parts, 3, [], 1)  # unseen: a dict
    with pytest.raises(TypeError):
        speedups.linear(("a",), table, 0.0, parts, 3)  # all four, or none
    with pytest.raises(ValueError):
        speedups.linear(("xyz",), table, 0.0, parts, 0, {}, 1)


def test_c_and_python_find_the_same_phrases_and_rules(shipped, monkeypatch):
    """Below the grades: the hits of a text, its rules' candidates and their spans."""
    matcher = Matcher(shipped.library, cache_size=0)
    norms = [matcher.normaliser.read(text) for text in _texts(shipped)[:4000]]
    hits_c = [matcher._scan(norm) for norm in norms]
    rules_c = [matcher._apply_rules(norm, hits) for norm, hits in zip(norms, hits_c, strict=True)]
    _python_only(monkeypatch)
    assert [matcher._scan(norm) for norm in norms] == hits_c
    assert [matcher._apply_rules(n, h) for n, h in zip(norms, hits_c, strict=True)] == rules_c
    assert sum(map(len, rules_c)) > 500


SPELLED_AND_SPACED = [
    "s u i c i d e",
    "how to s u i c i d e",
    "a b",
    "i a m sad",
    "I Am A Big Fan",
    "x y",
    "  leading and trailing  ",
    "double  spaces  a  b  c",
    "tab\tinside",
    "year 9 b",
    "KILL   MYSELF",
    "9 11 2001",
    "",
    "   ",
    "k" * 1001,
    "kill " * 250,
]


def test_c_and_python_read_every_text_alike(shipped, monkeypatch):
    texts = _texts(shipped) + SPELLED_AND_SPACED
    with_c = Normaliser(shipped.spellings)
    first = [with_c.read(text) for text in texts]  # words unknown: read in Python
    again = [with_c.read(text) for text in texts]  # known: the usual search, in C
    _python_only(monkeypatch)
    in_python = Normaliser(shipped.spellings)
    for text in texts:
        in_python.read(text)  # its words learnt, as with_c's were
    python_again = [in_python.read(text) for text in texts]
    assert first == again == python_again
    assert again == [normalise(text, shipped.spellings) for text in texts]


def test_c_and_python_read_every_word_alike(shipped):
    """A word the normaliser has not read yet: leetspeak, spellings, sound-alikes, repeats."""
    spellings = shipped.spellings
    words = {word for text in _texts(shipped) for word in raw_words(text)}
    words |= set(spellings) | {w for read in spellings.values() for w in read.split()}
    rng = random.Random(2026)
    # the letters the sound-alikes and repeats turn on, leetspeak, and a few others
    alphabet = "phckxeiysaoPHCKX0134579@$|!-_ "
    for _ in range(20_000):
        words.add("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 9))))
    words |= {"", "cck", "ccke", "cph", "phh", "xx", "k1ll", "1488", "@$|!", "Kill", "kiIl"}
    in_python = normaliser._read_word
    differ = [
        (word, c, p)
        for word in sorted(words)
        if (c := speedups.read_word(word, spellings)) != (p := in_python(word, spellings))
    ]
    assert not differ, differ[:5]
    assert sum(in_python(word, spellings) != word for word in words) > 5000


def test_read_word_leaves_python_what_is_not_ascii():
    assert speedups.read_word("kíll", {}) is None
    assert speedups.read_word("sucide", {"sucide": "suïcide"}) is None  # a spelling, not ASCII
    assert speedups.read_word("wanna", {"wanna": 2}) is None  # not as built: Python raises
    assert speedups.read_word("k1ll", {"kill": "murder"}) == "murder"  # leetspeak, then spelling
    with pytest.raises(TypeError):
        speedups.read_word(b"kill", {})
    with pytest.raises(TypeError):
        speedups.read_word("kill", [])


def test_read_known_reads_only_the_usual_search():
    one_word = {"kill": "kil", "myself": "myself", "a": "a", "b": "b", "c": "c"}
    assert speedups.read_known("Kill  MYSELF", one_word, 1000) == (
        ("kil", "myself"),
        "kilmyself",
        b"\1\0\0\1\0\0\0\0\0\1",
    )
    # a word read as several ("wanna" -> "want to") or as none
    read = {**one_word, "wanna": "want to", "um": ""}
    assert speedups.read_known("um wanna kill", read, 1000) == (
        ("want", "to", "kil"),
        "wanttokil",
        b"\1\0\0\0\1\0\1\0\0\1",
    )
    assert speedups.read_known("um", read, 1000) is None  # no word left: Python says what
    assert speedups.read_known("kill myself", one_word, 5) is None  # longer than read
    assert speedups.read_known("kill herself", one_word, 1000) is None  # a word not known
    assert speedups.read_known("kill, myself", one_word, 1000) is None  # punctuation
    assert speedups.read_known("kíll myself", one_word, 1000) is None  # not ASCII
    assert speedups.read_known("a b c", one_word, 1000) is None  # spelled letter by letter
    assert speedups.read_known("   ", one_word, 1000) is None
    assert speedups.read_known("kill", {"kill": 3}, 1000) is None  # not as built
    with pytest.raises(TypeError):
        speedups.read_known(b"kill", one_word, 1000)


def _value(length=4, signature=b"\1\0\0\0\1", kind=0, index=0, inner=(), stem=False, more=()):
    return (length, signature, kind, index, inner, stem, more)


@pytest.mark.parametrize(
    "found, error",
    [
        ([(3, _value(length=9))], IndexError),  # would start before the text
        ([(30, _value())], IndexError),  # would end after it
        ([(3, _value(kind=7))], IndexError),  # no such kind
        ([(3, _value(signature="x"))], TypeError),
        ([(3, _value(inner=[1]))], TypeError),
        ([(3, _value(more=[("x",)]))], TypeError),
        ([(3, _value(more=(("x",),)))], TypeError),
        ([(3, (1, 2))], TypeError),
        ([("3", _value())], TypeError),
        ([None], TypeError),
    ],
)
def test_scan_refuses_what_the_matcher_did_not_build(found, error):
    with pytest.raises(error):
        speedups.scan(iter(found), b"\1\0\0\0\1", ("abcd",), {})


class Sly(int):
    """An int whose other methods run Python code: the C loops take exact ints only."""

    def __index__(self) -> int:
        raise AssertionError("Python code ran inside the C loops")

    __bool__ = __hash__ = __index__


@pytest.mark.parametrize(
    "call",
    [
        lambda: speedups.scan([], b"\1", (), {}),  # not an iterator
        lambda: speedups.scan(iter([(Sly(3), _value())]), b"\1\0\0\0\1", ("abcd",), {}),
        lambda: speedups.scan(iter([(3, _value(stem=1))]), b"\1\0\0\0\0", ("abcd",), {}),
        lambda: speedups.screen([], [Sly(1)], ((),) * 2, ((),) * 2, (0,)),
        lambda: speedups.screen([], [1], ((),) * 2, ((), (Sly(0),)), (0, 1)),
        lambda: speedups.screen([], [1], ((), (Sly(0),)), ((), (0,)), (0, 1)),
        lambda: speedups.screen([], [1], ((), (0,)), ((), (0,)), (0, Sly(1))),
        lambda: speedups.places([], b"\1", [Sly(1)], ((0, 1),)),
        lambda: speedups.read_known("kill", {}, Sly(10)),
    ],
)
def test_the_c_loops_take_only_what_the_matcher_builds(call):
    with pytest.raises(TypeError):
        call()


def test_scan_of_a_real_automaton():
    automaton = ahocorasick.Automaton()
    automaton.add_word("kill", _value(index=5))
    automaton.add_word("skill", _value(length=5, signature=b"\1\0\0\0\0\1", kind=1, index=6))
    automaton.make_automaton()
    # "skill kill": words "skill", "kill"; joined "skillkill", breaks at 0, 5 and 9
    bounds = b"\1\0\0\0\0\1\0\0\0\1"
    terms_found, allows, context, words, word_ids = speedups.scan(
        automaton.iter("skillkill"), bounds, ("skill", "kill"), {"kill": 3}
    )
    assert terms_found == [(5, 5, 9)]  # not the "kill" inside "skill"
    assert allows == [(6, 0, 5)]
    assert context == words == []
    assert word_ids == [None, 3]


@pytest.mark.parametrize(
    "call",
    [
        lambda: speedups.screen([(99, 0, 1)], [], ((),), ((),), (0,)),  # unknown phrase
        lambda: speedups.screen([], [1], ((5,),) * 2, ((0,),) * 2, (0, 1)),  # unknown rule
        lambda: speedups.screen([], [1], ((),) * 2, ((), (5,)), (0, 1)),  # a bit past the last
        lambda: speedups.screen([], [1], ((),) * 2, ((), (-1,)), (0, 1)),
        lambda: speedups.screen([], [1], ((), (0,)), ((), (0,)), (0, 9, 1)),  # rule past the bits
        lambda: speedups.screen([], [1], ((), (0,)), ((), (0,)), (-1, 0, -1)),
        lambda: speedups.screen([], [1], ((), (0,)), ((), [0]), (0, 1)),
        lambda: speedups.screen([], [1], ((), [0]), ((), (0,)), (0, 1)),
        lambda: speedups.screen([], [], (), (), ()),  # no offsets at all
        lambda: speedups.screen([(1, 0)], [], ((),) * 2, ((),) * 2, (0,)),
        lambda: speedups.screen((), [], (), (), (0,)),
        lambda: speedups.places([(1, 0, 99)], b"\1\0\1", [], ()),  # outside the text
        lambda: speedups.places([(1, -1, 1)], b"\1\0\1", [], ()),
        lambda: speedups.collect([(7, (0, 1))], ({},), 0, [[]]),  # unknown phrase
        lambda: speedups.collect([(0, (0, 1))], ({0: (3,)},), 0, [[]]),  # unknown group
        lambda: speedups.collect([(0, (0, 1))], ({0: [0]},), 0, [[]]),
        lambda: speedups.collect([(0,)], ({},), 0, [[]]),
    ],
)
def test_rule_loops_refuse_what_the_matcher_did_not_build(call):
    with pytest.raises((IndexError, TypeError)):
        call()


def test_rule_loops_on_a_small_example():
    wakes = ((), (0,), (), (1,))  # phrase 1 wakes rule 0, phrase 3 rule 1
    bits = ((), (0,), (1,), (2,))
    offsets = (0, 2, 4)  # rule 0: bits 0 and 1; rule 1: bits 2 and 3
    # phrase 1 found in the joined text, phrase 2 as a word: rule 0 only (rule 1 lacks bit 3)
    assert speedups.screen([(1, 0, 4)], [None, 2, 3], wakes, bits, offsets) == [0]
    assert speedups.screen([], [None, 2], wakes, bits, offsets) == []
    # rules in ascending order, each once, whatever order the phrases woke them in
    both = ((), (1, 0), (0,), (1,))
    every = ((), (0, 1, 2, 3), (), ())
    assert speedups.screen([(1, 0, 4)], [3, 1, 2], both, every, offsets) == [0, 1]
    # words "aa bb cc": joined "aabbcc"; phrase 1 is "aa bb" (offsets 0 to 4)
    found = speedups.places([(1, 0, 4)], b"\1\0\1\0\1\0\1", [None, None, 2], ((0, 1), (1, 2)))
    assert found == [(1, (0, 2)), (2, (2, 3))]
    groups_of = ({}, {0: (0,)}, {0: (1, -1)})
    spans = [[], []]
    assert speedups.collect(found, groups_of, 0, spans) == 2  # phrase 2 is also an "unless"
    assert spans == [[(0, 2)], [(2, 3)]]


def _settle(word_ids, groups_of, shape, words=(), bounds=b"\1"):
    return speedups.settle(list(words), bounds, list(word_ids), [0], groups_of, (shape,))


def test_settle_on_a_small_example():
    # words "aa bb cc": phrase 1 is "aa bb" (found in the joined text), phrase 2 the word
    # "cc", which is also the rule's "unless"
    words, bounds = [(1, 0, 4)], b"\1\0\1\0\1\0\1"
    groups_of = ({}, {0: (0,)}, {0: (1, -1)})
    assert _settle([None, None, 2], groups_of, (2, False, None, False), words, bounds) == [(0, 2)]
    assert _settle([None, None, 2], groups_of, (2, True, 3, True), words, bounds) == [(0, 2)]
    assert _settle([None, None, 2], groups_of, (2, True, 2, False), words, bounds) == []
    assert _settle([None, 2, None], groups_of, (2, False, None, True), words, bounds) == []
    assert _settle([None, 2, None], groups_of, (2, True, None, False), words, bounds) == []
    assert _settle([None, None, None], groups_of, (2, False, None, False), words, bounds) == []
    # more choices of spans than C tries: Python's to settle (-1)
    many = [1, 2] * 9
    assert _settle(many, ({}, {0: (0,)}, {0: (1,)}), (2, False, 3, False)) == [(0, -1)]


def test_settle_decides_as_rules_satisfied():
    """Random places of a few phrases, random rule shapes: C's answer is Python's."""
    rng = random.Random(25)
    decided = 0
    for _ in range(3000):
        groups = rng.randint(1, 4)
        groups_of = ({},) + tuple(
            {0: tuple(rng.sample([-1, *range(groups)], rng.randint(1, 2)))} for _ in range(6)
        )
        word_ids = [rng.choice([None, None, *range(1, 7)]) for _ in range(rng.randint(0, 14))]
        shape = (groups, rng.random() < 0.5, rng.choice([None, 1, 2, 3, 5, 8]), rng.random() < 0.3)
        found: list[list[tuple[int, int]]] = [[] for _ in range(groups)]
        places = speedups.places([], b"\1", word_ids, ())
        vetoing = speedups.collect(places, groups_of, 0, found)
        if shape[3]:
            found[-1] = [span for span in found[-1] if span[1] == len(word_ids)]
        if shape[1] or shape[2] is not None:
            expected = satisfied(found, shape[2], shape[1])
        else:
            expected = all(found)
        got = _settle(word_ids, groups_of, shape)
        if got and got[0][1] == -1:
            continue  # left to Python
        decided += 1
        assert got == ([(0, vetoing or 0)] if expected else []), (word_ids, groups_of, shape)
    assert decided > 2000


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda: _settle([Sly(1)], ({}, {0: (0,)}), (1, False, None, False)), TypeError),
        (lambda: _settle([1], ({}, {0: (Sly(0),)}), (1, False, None, False)), TypeError),
        (lambda: _settle([1], ({}, {0: [0]}), (1, False, None, False)), TypeError),
        (lambda: _settle([1], ({}, {0: (0,)}), (1, 1, None, False)), TypeError),
        (lambda: _settle([1], ({}, {0: (0,)}), (1, False, Sly(2), False)), TypeError),
        (lambda: _settle([1], ({}, {0: (0,)}), (1, False, None)), TypeError),
        (lambda: _settle([1], ({}, {0: (0,)}), [1, False, None, False]), TypeError),
        (lambda: _settle([1], ({}, {0: (0,)}), (1, False, -1, False)), IndexError),
        (lambda: _settle([1], ({}, {0: (0,)}), (0, False, None, False)), IndexError),
        (lambda: _settle([1], ({}, {0: (3,)}), (1, False, None, False)), IndexError),
        (lambda: _settle([9], ({}, {0: (0,)}), (1, False, None, False)), IndexError),
        (lambda: _settle([1], ({}, None), (1, False, None, False)), IndexError),
        (lambda: _settle([], ({},), (1, False, None, False), [(1, 0, 9)], b"\1\0\1"), IndexError),
        (lambda: _settle([], ({},), (1, False, None, False), [(1, 0)], b"\1\0\1"), TypeError),
        (
            lambda: speedups.settle([], b"\1", [], [1], ({},), ((1, False, None, False),)),
            IndexError,
        ),
        (
            lambda: speedups.settle([], b"\1", [], [Sly(0)], ({},), ((1, False, None, False),)),
            TypeError,
        ),
        (
            lambda: speedups.settle([], b"\1", [], (0,), ({},), ((1, False, None, False),)),
            TypeError,
        ),
        (lambda: speedups.settle([], b"\1", []), TypeError),
    ],
)
def test_settle_refuses_what_the_matcher_did_not_build(call, error):
    with pytest.raises(error):
        call()


@pytest.mark.parametrize("rules", [40, 3000])  # the flags on the stack, then on the heap
def test_screen_of_many_rules(rules):
    # rule n has one group, bit n; phrase n + 1 wakes rule n and has its bit; the phrases
    # found wake every third rule, in descending order
    wakes = ((), *((n,) for n in range(rules)))
    bits = ((), *((n,) for n in range(rules)))
    found = [n + 1 for n in reversed(range(0, rules, 3))]
    got = speedups.screen([], found, wakes, bits, tuple(range(rules + 1)))
    assert got == list(range(0, rules, 3))


# -- the flat automaton (speedups.compile and find) ----------------------------------------

HOSTILE_TEXTS = [
    "ｋｉｌｌ ｍｙｓｅｌｆ",
    "kïll mÿself ñ 日本 \U0001f600 kill",
    "\x00kill\x00myself",
    "k" * 5000,
    "kill" * 1000,
    "selfharm" * 300,
]


def _both_ways(matcher: Matcher, joined: str, bounds: bytes, words: tuple, single: dict):
    flat = speedups.find(matcher._flat.compiled, joined, bounds, words, single)
    walked = speedups.scan(matcher.automaton.iter(joined), bounds, words, single)
    return flat, walked


def test_the_flat_automaton_finds_what_pyahocorasick_finds(shipped):
    """Every text of the C/Python comparison, and hostile ones: the same hits, in the same
    order, as pyahocorasick's walk of the same keys read by scan()."""
    texts = _texts(shipped) + HOSTILE_TEXTS
    found = 0
    for text in texts:
        norm = shipped.normaliser.read(text)
        flat, walked = _both_ways(shipped, norm.joined, norm.bounds, norm.words, shipped._single)
        assert flat == walked, text
        found += sum(map(len, flat[:4]))
    assert found > 50_000
    # the raw joined text too: characters no key has, every break or none
    for text in HOSTILE_TEXTS:
        for bounds in (b"\1" * (len(text) + 1), b"\1" + b"\0" * (len(text) - 1) + b"\1"):
            flat, walked = _both_ways(shipped, text, bounds, (), {})
            assert flat == walked


def test_the_flat_automaton_on_random_keys():
    """Many short keys over a few letters (fail links and keys inside keys everywhere), some
    past ASCII: the same hits in the same order as pyahocorasick's."""
    rng = random.Random(27)
    letters = "abcé日"
    keys = {"".join(rng.choice(letters) for _ in range(rng.randint(1, 6))) for _ in range(300)}
    entries, automaton = [], ahocorasick.Automaton()
    for number, key in enumerate(sorted(keys)):
        tests = tuple(
            (b"\1" + bytes(len(key) - 1) + b"\1", rng.randrange(4), number * 3 + i,
             tuple(rng.sample(range(1, 7), 2)), rng.random() < 0.3)
            for i in range(rng.randint(1, 3))
        )  # fmt: skip
        entries.append((key, tests))
        first, *more = tests
        automaton.add_word(key, (len(key), *first, tuple(more)))
    automaton.make_automaton()
    flat = speedups.compile(entries)
    size, nodes = speedups.footprint(flat)
    assert nodes == automaton.get_stats()["nodes_count"] and size > 0
    # as the Matcher keeps it: made from pyahocorasick's, and again when unpickled
    kept = pickle.loads(pickle.dumps(FlatAutomaton(automaton))).compiled
    for _ in range(2000):
        text = "".join(rng.choice(letters + "xz") for _ in range(rng.randint(0, 40)))
        bounds = bytes(rng.random() < 0.3 for _ in range(len(text) + 1))
        words = tuple(text.split("x"))
        expected = speedups.scan(automaton.iter(text), bounds, words, {"ab": 1})
        assert speedups.find(flat, text, bounds, words, {"ab": 1}) == expected
        assert speedups.find(kept, text, bounds, words, {"ab": 1}) == expected


def test_an_empty_flat_automaton_finds_nothing():
    flat = speedups.compile([])
    assert speedups.find(flat, "kill", b"\1\0\0\0\1", ("kill",), {"kill": 2}) == (
        [], [], [], [], [2],
    )  # fmt: skip


_TEST = (b"\1\0\0\0\1", 0, 0, (), False)


@pytest.mark.parametrize(
    ("entries", "error"),
    [
        (("kill", (_TEST,)), TypeError),  # not a list
        ([("kill", _TEST)], TypeError),  # tests not a tuple of tests
        ([("kill", ())], TypeError),  # a key without patterns
        ([(b"kill", (_TEST,))], TypeError),
        ([("", (_TEST,))], ValueError),
        ([("kill", (_TEST,)), ("kill", (_TEST,))], ValueError),  # a key twice
        ([("kill", ((b"x", 7, 0, (), False),))], ValueError),  # no such kind
        ([("kill", ((b"x", 0, -1, (), False),))], ValueError),
        ([("kill", ((b"x", 0, 2**40, (), False),))], ValueError),
        ([("kill", ((b"x", 0, Sly(1), (), False),))], TypeError),
        ([("kill", ((b"x", 0, 1, (Sly(1),), False),))], TypeError),
        ([("kill", ((b"x", 0, 1, [1], False),))], TypeError),
        ([("kill", ((b"x", 0, 1, (), 1),))], TypeError),
        ([("kill", (("x", 0, 1, (), False),))], TypeError),
        ([("kill", ((b"x", 0, 1, ()),))], TypeError),
    ],
)
def test_compile_refuses_what_the_matcher_did_not_build(entries, error):
    with pytest.raises(error):
        speedups.compile(entries)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda flat: speedups.find(object(), "kill", b"\1\0\0\0\1", (), {}), TypeError),
        (lambda flat: speedups.find(flat, b"kill", b"\1\0\0\0\1", (), {}), TypeError),
        (lambda flat: speedups.find(flat, "kill", b"\1\0\1", (), {}), ValueError),  # short
        (lambda flat: speedups.find(flat, "kill", b"\1" * 9, (), {}), ValueError),
        (lambda flat: speedups.find(flat, "kill", b"\1\0\0\0\1", [], {}), TypeError),
        (lambda flat: speedups.find(flat, "kill", b"\1\0\0\0\1", ()), TypeError),
        (lambda flat: speedups.footprint(None), TypeError),
    ],
)
def test_find_refuses_what_the_matcher_did_not_build(call, error):
    with pytest.raises(error):
        call(speedups.compile([("kill", (_TEST,))]))
