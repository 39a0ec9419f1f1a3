"""The library's neural reader of searches: a search in words no term or rule holds that the
fine-tuned encoder reads as a severity-3 risk is raised to 3, named as the reader with its
score; never where an allow-phrase or context phrase judged the words ordinary, never a page
title, and not at all when a school turns it off; its files are refused when damaged, with the
file and field; a reader that cannot run leaves the library's grade. The gateway's word pieces
are checked against known ones, and ``schoolgate train-reader`` says what it needs.

The library here is a small one of the tests' own beside the shipped reader's files, so that
what the reader adds is not hidden by the shipped terms (which already find most risks)."""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import sys
import textwrap
from pathlib import Path

import pytest

from schoolgate.cli.main import main
from schoolgate.cli.reader import training_rows
from schoolgate.core.configfile import ConfigError
from schoolgate.monitoring.library import default_root
from schoolgate.monitoring.reader import (
    FILE_NAME,
    MODEL_NAME,
    TERM,
    VOCABULARY_NAME,
    load_reader,
)
from schoolgate.monitoring.terms import load_matcher
from schoolgate.monitoring.wordpiece import WordPiece, words
from tests.test_monitoring_opinion import MODEL

SHIPPED = default_root() / "en"
# A risk in words the small library below holds nothing of: sextortion, in a pupil's words.
RISK = "he sent me money and now says i owe him pics"
ORDINARY = "best revision websites for gcse chemistry"
LIBRARY = """
    theme: sexual_exploitation
    terms:
      - {term: owe him, severity: 2}
      - {term: nudes, severity: 3, firm: true}
    allow: [cash and now says i owe him]
    """


def _library(tmp_path: Path, *, opinion: bool = True, reader: bool = True) -> Path:
    root = tmp_path / "terms"
    folder = root / "en"
    folder.mkdir(parents=True)
    (folder / "local.yaml").write_text(textwrap.dedent(LIBRARY), encoding="utf-8")
    if opinion:
        model = dict(MODEL, themes=["self_harm", "sexual_exploitation"])
        (folder / "second_opinion.json").write_text(json.dumps(model), encoding="utf-8")
    if reader:
        for name in (FILE_NAME, MODEL_NAME, VOCABULARY_NAME):
            (folder / name).symlink_to(SHIPPED / name)
    return root


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return load_matcher([_library(tmp_path_factory.mktemp("reader"))])


def test_the_shipped_library_has_a_reader_whose_files_are_whole():
    matcher = load_matcher()
    reader = matcher.library.reader
    assert reader is not None and reader.source == str(SHIPPED / FILE_NAME)
    assert 0.5 < reader.threshold < 1
    assert reader.score(RISK) > reader.threshold > reader.score(ORDINARY)


def test_a_risk_no_term_holds_is_raised_to_3_by_the_reader(small):
    found = small.assess(RISK, search=True)
    top = found.top
    assert found.severity == 3 and top.term == TERM and top.theme == "sexual_exploitation"
    assert top.note.startswith("graded 2 by 'owe him'; the reader's score ")
    assert top.source.endswith(FILE_NAME)
    # Found in nothing by the library: raised too, the theme named by the second opinion.
    alone = small.assess("he sent me money and now says i have to send pics back", search=True)
    assert alone.severity == 3 and alone.top.term == TERM
    assert alone.top.note.startswith("no term or rule found; the reader's score")
    assert small.assess(ORDINARY, search=True).severity == 0


def test_the_reader_never_overrules_the_library(small):
    # An allow-phrase judged the words ordinary: left as judged, though the reader would not.
    text = "he sent me cash and now says i owe him pics"
    assert small.library.reader.severe(text)
    allowed = small.assess(text, search=True)
    assert allowed.severity == 0 and TERM not in {m.term for m in allowed.matches}
    assert allowed.matches[0].suppressed_by == "cash and now says i owe him"
    # At 3 already: the library's own term stays the reason.
    assert small.assess("he wants nudes " + RISK, search=True).top.term == "nudes"
    # A page title is not a search: the reader does not read it.
    assert small.assess(RISK).severity == 2


def test_a_school_can_keep_the_reader_to_flagged_searches_or_turn_it_off(tmp_path):
    matcher = load_matcher([_library(tmp_path)])
    alone = "he sent me money and now says i have to send pics back"
    matcher.use_models(True, "flagged")
    assert matcher.assess(RISK, search=True).top.term == TERM
    assert matcher.assess(alone, search=True).severity == 0
    matcher.use_models(True, False)
    assert matcher.assess(RISK, search=True).severity == 2
    matcher.use_models(True, True)
    assert matcher.assess(alone, search=True).severity == 3


def test_without_a_second_opinion_to_name_its_theme_the_reader_raises_flagged_searches_only(
    tmp_path,
):
    matcher = load_matcher([_library(tmp_path, opinion=False)])
    assert matcher.assess(RISK, search=True).top.term == TERM
    alone = matcher.assess("he sent me money and now says i have to send pics back", search=True)
    assert alone.severity == 0


def test_a_compiled_library_keeps_its_reader(small):
    again = pickle.loads(pickle.dumps(small))
    assert again.library.reader is not None
    assert again.assess(RISK, search=True).top.term == TERM
    assert again.library.reader.score(RISK) == pytest.approx(small.library.reader.score(RISK))


def _broken(tmp_path: Path, change) -> str:
    root = _library(tmp_path)
    described = root / "en" / FILE_NAME
    data = json.loads(described.read_text())
    described.unlink()
    text = change(data)
    described.write_text(text if isinstance(text, str) else json.dumps(text, indent=2))
    with pytest.raises(ConfigError) as caught:
        load_matcher([root])
    return str(caught.value)


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda d: dict(d, threshold=1.5), "threshold"),
        (lambda d: dict(d, format=7), "format"),
        (lambda d: dict(d, max_tokens="forty"), "max_tokens"),
        (lambda d: dict(d, sha256={**d["sha256"], MODEL_NAME: "0" * 64}), "sha256.reader.onnx"),
        (lambda d: '{\n  "format": 1,\n  oops\n}', "reader.json:3"),
    ],
)
def test_a_damaged_reader_is_refused_with_its_file_and_field(tmp_path, change, where):
    message = _broken(tmp_path, change)
    assert FILE_NAME in message and where in message


def test_a_partial_copy_of_the_model_is_refused(tmp_path):
    root = _library(tmp_path)
    model = root / "en" / MODEL_NAME
    model.unlink()
    model.write_bytes((SHIPPED / MODEL_NAME).read_bytes()[:4096])
    with pytest.raises(ConfigError) as caught:
        load_matcher([root])
    assert "sha256.reader.onnx" in str(caught.value) and "partial copy" in str(caught.value)


def test_a_reader_that_cannot_run_leaves_the_library_grade(tmp_path, caplog):
    root = tmp_path / "copy"
    shutil.copytree(_library(tmp_path), root, symlinks=False)
    matcher = load_matcher([root])
    (root / "en" / MODEL_NAME).write_bytes(b"not a model")  # after it was checked and loaded
    with caplog.at_level(logging.ERROR, logger="schoolgate.monitoring.reader"):
        found = matcher.assess(RISK, search=True)
    assert found.severity == 2 and found.top.term == "owe him"
    assert "the reader could not read a search" in caplog.text


def test_the_reader_scores_a_batch_as_it_scores_each_search():
    reader = load_reader(SHIPPED / FILE_NAME)
    texts = [RISK, ORDINARY, "a much longer search " * 30, "ça va ? 日本"]
    together = reader.logits(texts)
    fresh = load_reader(SHIPPED / FILE_NAME)
    alone = [fresh.logits([t])[0] for t in texts]
    assert together == pytest.approx(alone, abs=1e-4)


# -- word pieces --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pieces() -> WordPiece:
    return WordPiece.from_file(SHIPPED / VOCABULARY_NAME)


def test_words_are_read_lower_case_without_accents_and_apart_from_punctuation():
    assert words("Café CRÈME,  naïve!!") == ["cafe", "creme", ",", "naive", "!", "!"]
    assert words("a\x00b\u200bc\td") == ["abc", "d"]  # NUL and format characters go
    assert words("日本x") == ["日", "本", "x"]


def test_word_pieces_are_the_encoders(pieces):
    ids = pieces.ids
    assert pieces.encode("Kill", 40) == [ids["[CLS]"], ids["kill"], ids["[SEP]"]]
    # A word the vocabulary has not whole: its longest pieces from the start.
    assert pieces.encode("unalive", 40)[1:-1] == [ids["una"], ids["##li"], ids["##ve"]]
    # A character it has no piece for, or a word too long to read: unknown.
    assert pieces.encode("😀 ok", 40)[1:-1] == [ids["[UNK]"], ids["ok"]]
    assert pieces.encode("x" * 101, 40)[1:-1] == [ids["[UNK]"]]


def test_a_long_search_is_cut_to_the_token_limit_and_still_closed(pieces):
    encoded = pieces.encode("word " * 100, 40)
    assert len(encoded) == 40 and encoded[0] == pieces.cls and encoded[-1] == pieces.sep


# -- training -----------------------------------------------------------------------------------


def test_each_search_is_learnt_once_at_its_highest_severity():
    rows = [
        ("a", 2, frozenset({"bullying"})),
        ("b", 0, frozenset()),
        ("a", 3, frozenset({"bullying"})),
    ]
    assert training_rows(rows) == [("a", True), ("b", False)]


def test_the_shipped_reader_was_trained_on_the_shipped_searches():
    """Training needs PyTorch, which the tests do not install; what it was trained on is in
    its file, and must be the shipped searches less the splits it is measured on (so that a
    change to them without retraining it fails here)."""
    from schoolgate.cli.opinion import read_labelled
    from tests.test_monitoring_labelled import (
        EVERYDAY,
        EVERYDAY_UNSEEN,
        LABELLED,
        LOOK_ALIKES,
        NEVER_TUNED,
    )

    themes = set(load_matcher().library.themes)
    leave_out = frozenset((*NEVER_TUNED, *EVERYDAY_UNSEEN))
    rows = training_rows(
        [r for p in (LABELLED, LOOK_ALIKES, EVERYDAY) for r in read_labelled(p, themes, leave_out)]
    )
    data = json.loads((SHIPPED / FILE_NAME).read_text())
    trained, aside = data["trained_on"], data["kept_aside"]
    assert trained["searches"] + aside["searches"] == len(rows)
    assert aside["searches"] == len(rows) // 10
    assert trained["severe"] + aside["severe"] == sum(severe for _, severe in rows)


def test_train_reader_says_what_it_needs_without_pytorch(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # as on the gateway: not installed
    labelled = tmp_path / "labelled.tsv"
    labelled.write_text("suicide\t3\thow to kill myself\n-\t0\tphotosynthesis\n")
    code = main(["train-reader", str(labelled), "--out", str(tmp_path / "en")])
    assert code != 0
    assert "pip install 'schoolgate[reader-training]'" in capsys.readouterr().err
    assert not (tmp_path / "en").exists()
