"""The library's learned second opinion: a search the terms and rules grade 1 or 2 that reads
like the labelled severity-3 searches is raised to 3, named as the second opinion; a search the
library found nothing in, only above the model's stricter threshold for those (and never with a
model file that has none); never where an allow-phrase or a context phrase judged the words
ordinary, never a page title; a broken model file is refused with its file and field;
``schoolgate train-opinion`` rebuilds the shipped model from the labelled searches, the same
every time."""

from __future__ import annotations

import json
import pickle
import textwrap
from pathlib import Path

import pytest

from schoolgate.cli.main import main
from schoolgate.core.configfile import ConfigError
from schoolgate.monitoring.library import default_root
from schoolgate.monitoring.opinion import TERM, Example, from_json, train
from schoolgate.monitoring.terms import Matcher, load_matcher
from tests.test_monitoring_labelled import EVERYDAY, EVERYDAY_UNSEEN, LABELLED, NEVER_TUNED

SUICIDE = """
    theme: suicide
    terms:
      - {term: kill myself, severity: 3, firm: true}
      - {term: suicide, severity: 2}
    allow: [kill myself laughing]
    """
CONTEXT = """
    context:
      - {phrase: macbeth, lower: 1, themes: [suicide]}
    """
# A hand-made model: "planned when" reads as severity 3, "revision" pulls the other way. Its
# words are as the normaliser reads them (a repeated letter once: "planed").
MODEL = {
    "format": 1,
    "trained_on": {"searches": 4, "severe": 2, "ordinary": 2},
    "threshold": 0.9,
    "alone_threshold": 0.99,
    "bias": -2.0,
    "themes": ["self_harm", "suicide"],
    "theme_bias": [0.0, 0.0],
    "weights": {
        "planed": 2.0,
        "planed when": 3.0,
        "revision": -6.0,
        "laughing": 1.0,
        "tonight": 3.0,
    },
    "theme_weights": {"planed": [0.0, 1.0]},
}


def _library(tmp_path: Path, model: object = MODEL) -> Path:
    root = tmp_path / "terms"
    (root / "en").mkdir(parents=True)
    (root / "en" / "suicide.yaml").write_text(textwrap.dedent(SUICIDE), encoding="utf-8")
    (root / "en" / "context.yaml").write_text(textwrap.dedent(CONTEXT), encoding="utf-8")
    text = model if isinstance(model, str) else json.dumps(model)
    (root / "en" / "second_opinion.json").write_text(text, encoding="utf-8")
    return root


@pytest.fixture
def matcher(tmp_path: Path) -> Matcher:
    return load_matcher([_library(tmp_path)])


def test_a_search_the_library_grades_2_that_reads_as_severe_is_raised_to_3(matcher: Matcher):
    found = matcher.assess("suicide ive planned when", search=True)
    top = found.top
    assert top is not None and found.severity == 3
    assert (top.term, top.theme, top.rule) == (TERM, "suicide", False)
    assert "graded 2 by 'suicide'" in top.note and "score" in top.note
    assert top.source.endswith("second_opinion.json")
    assert [m.term for m in found.active] == [TERM, "suicide"]  # the library's match kept
    # Not a search (a page title): the terms and rules alone.
    assert matcher.assess("suicide ive planned when").severity == 2
    assert matcher.assess("suicide revision planned", search=True).severity == 2


def test_a_search_the_library_found_nothing_in_is_raised_only_above_the_stricter_threshold(
    matcher: Matcher,
):
    opinion = matcher.opinion
    assert opinion is not None and opinion.alone_threshold == 0.99
    # 0.95: above the threshold for a search the library flags, below the one for the others.
    assert opinion.severe(["ive", "planed", "when"])
    assert not opinion.severe(["ive", "planed", "when"], alone=True)
    assert matcher.assess("ive planned when im gonna do it", search=True).severity == 0
    # 0.9975: above both. The theme is the model's pick among all it knows.
    found = matcher.assess("ive planned when tonight", search=True)
    top = found.top
    assert top is not None and found.severity == 3
    assert (top.term, top.theme) == (TERM, "suicide")
    assert "no term or rule found" in top.note and "0.99" in top.note
    assert matcher.assess("ive planned when tonight").severity == 0  # a page title: never


def test_a_model_file_without_the_stricter_threshold_never_raises_what_the_library_missed(
    tmp_path: Path,
):
    model = {k: v for k, v in MODEL.items() if k != "alone_threshold"}
    matcher = load_matcher([_library(tmp_path, model)])
    assert matcher.opinion is not None and matcher.opinion.alone_threshold is None
    assert matcher.assess("ive planned when tonight", search=True).severity == 0
    assert matcher.assess("suicide ive planned when", search=True).severity == 3


def test_it_adds_nothing_where_the_library_already_said_3_or_judged_the_words_ordinary(
    matcher: Matcher,
):
    severe = matcher.assess("planned when to kill myself", search=True)
    assert [m.term for m in severe.active] == ["kill myself"]  # no second alert
    # An allow-phrase covered the term: the words are ordinary, whatever the model says.
    allowed = matcher.assess("planned when i kill myself laughing", search=True)
    assert allowed.severity == 0 and allowed.suppressed
    # A context phrase lowered a term: likewise.
    lowered = matcher.assess("macbeth suicide planned when", search=True)
    assert lowered.severity == 1 and all(m.term != TERM for m in lowered.matches)


def test_the_compiled_library_keeps_the_second_opinion(matcher: Matcher):
    again = pickle.loads(pickle.dumps(matcher))
    assert again.assess("suicide ive planned when", search=True).top.term == TERM


@pytest.mark.parametrize(
    ("model", "where"),
    [
        ({**MODEL, "threshold": 2}, "threshold"),
        ({**MODEL, "alone_threshold": 0.5}, "alone_threshold"),
        ({**MODEL, "alone_threshold": "high"}, "alone_threshold"),
        ({**MODEL, "format": 7}, "format"),
        ({**MODEL, "weights": {"planed": "lots"}}, "weights.planed"),
        ({**MODEL, "theme_weights": {"planed": [1.0]}}, "theme_weights.planed"),
        ({**MODEL, "themes": ["suicide", "gambling"]}, "themes"),
        ({**MODEL, "piece_size": "four"}, "piece_size"),
        ({**MODEL, "piece_size": 40}, "piece_size"),
        ('{"format": 1,\n "threshold": }', "json:2: not JSON"),
    ],
)
def test_a_broken_model_file_is_refused_naming_its_file_and_field(
    tmp_path: Path, model: object, where: str
):
    with pytest.raises(ConfigError) as raised:
        load_matcher([_library(tmp_path, model)])
    message = str(raised.value)
    assert "second_opinion.json" in message and where in message


def test_training_is_the_same_every_time_and_learns_the_severe_phrasings():
    severe = [f"planned when im gonna do it {w}" for w in ("tonight", "soon", "friday", "now")]
    ordinary = [f"planned my revision for {w}" for w in ("maths", "french", "art", "music")]
    ordinary += ["when is the gcse maths exam", "revision timetable ideas", "what to do tonight"]
    examples = [Example(tuple(t.split()), True, frozenset({"suicide"})) for t in severe]
    # Ordinary searches the library flags, and ordinary ones it finds nothing in.
    examples += [Example(tuple(t.split()), False, frozenset()) for t in ordinary[:4]]
    examples += [Example(tuple(t.split()), False, frozenset(), False, True) for t in ordinary[4:]]
    first, second = train(examples, ["suicide"]), train(examples, ["suicide"])
    assert first.to_json() == second.to_json()
    model = from_json(first.to_json())
    assert model.severe("planned when im gonna do it".split())
    assert not model.severe("planned my revision for history".split())
    # Never easier to raise a search the library found nothing in than one it flagged.
    assert model.alone_threshold is not None and model.alone_threshold >= model.threshold
    assert not model.severe("revision timetable ideas".split(), alone=True)


def test_the_pieces_of_words_let_it_read_a_word_it_never_saw():
    severe = ["carrying a shank to school", "got a shank in my bag", "where to hide my shank"]
    severe += ["bought a shank online", "shank in my blazer", "need a shank for friday"]
    ordinary = ["carrying a bag to school", "got a pen in my bag", "where to hide easter eggs"]
    ordinary += ["bought a pen online", "shiny new blazer", "need a lift for friday"]
    examples = [Example(tuple(t.split()), True, frozenset({"weapons_violence"})) for t in severe]
    examples += [Example(tuple(t.split()), False, frozenset()) for t in ordinary]
    whole = train(examples, ["weapons_violence"], piece_size=0)
    pieces = from_json(train(examples, ["weapons_violence"]).to_json())
    assert pieces.piece_size == 4 and "piece_size" not in whole.to_json()
    unseen = ("shanks",)  # in no search it learnt from: "<sha", "shan", "hank" are
    assert whole.score(unseen) == whole.score(("biscuits",))  # whole words: nothing known
    assert pieces.score(unseen) > whole.score(unseen) + 0.1
    assert pieces.score(unseen) > pieces.score(("biscuits",)) + 0.1


def test_the_shipped_model_is_what_train_opinion_makes_of_the_labelled_set(tmp_path: Path, capsys):
    out = tmp_path / "second_opinion.json"
    unseen = (*NEVER_TUNED, *EVERYDAY_UNSEEN)
    leave_out = [arg for split in unseen for arg in ("--leave-out", split)]
    look_alikes = LABELLED.parent / "lookalikes.tsv"
    files = [str(LABELLED), str(look_alikes), str(EVERYDAY)]
    command = ["train-opinion", *files, "--out", str(out), *leave_out]
    assert main(command) == 0
    assert "trained on" in capsys.readouterr().out
    shipped = default_root() / "en" / "second_opinion.json"
    retrain = (
        "retrain: schoolgate train-opinion tests/data/monitoring/searches.tsv "
        "tests/data/monitoring/lookalikes.tsv tests/data/monitoring/everyday.tsv --out "
        "blocklists/safeguarding/en/second_opinion.json, with --leave-out for each split in "
        "NEVER_TUNED and EVERYDAY_UNSEEN"
    )
    made, kept = json.loads(out.read_text()), json.loads(shipped.read_text())
    assert made["trained_on"] == kept["trained_on"], retrain
    assert made["themes"] == kept["themes"], retrain
    # The same words and pairs, and the same weights but for the last digit of the rounding
    # (another interpreter's exp() may differ in the last bit).
    assert made["weights"].keys() == kept["weights"].keys(), retrain
    for name in ("threshold", "alone_threshold", "bias"):
        assert made[name] == pytest.approx(kept[name], abs=1e-4), retrain
    for word, weight in made["weights"].items():
        assert weight == pytest.approx(kept["weights"][word], abs=1e-4), (word, retrain)


def test_train_opinion_names_the_file_line_and_field_of_a_bad_labelled_line(tmp_path: Path, capsys):
    labelled = tmp_path / "ours.tsv"
    labelled.write_text("suicide\t3\ti have planned it\n-\t5\tmaths\n", encoding="utf-8")
    out = tmp_path / "model.json"
    assert main(["train-opinion", str(labelled), "--out", str(out)]) != 0
    assert f"{labelled}:2: severity" in capsys.readouterr().err
    assert not out.exists()


def test_train_opinion_takes_the_share_of_alerts_a_school_tolerates(tmp_path: Path, capsys):
    labelled = tmp_path / "ours.tsv"
    severe = [f"suicide\t3\tplanned when im gonna do it {w}" for w in ("tonight", "soon", "now")]
    ordinary = [f"-\t0\tplanned my revision for {w}" for w in ("maths", "art", "music", "french")]
    labelled.write_text("\n".join(severe + ordinary) + "\n", encoding="utf-8")
    out = tmp_path / "model.json"
    assert main(["train-opinion", str(labelled), "--out", str(out), "--alone-share", "1.5"]) != 0
    assert "1.5" in capsys.readouterr().err and not out.exists()
    assert main(["train-opinion", str(labelled), "--out", str(out), "--alone-share", "0"]) == 0
    strict = json.loads(out.read_text())
    assert main(["train-opinion", str(labelled), "--out", str(out), "--alone-share", "0.5"]) == 0
    loose = json.loads(out.read_text())
    assert strict["alone_threshold"] >= loose["alone_threshold"] >= loose["threshold"]
