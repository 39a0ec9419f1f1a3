"""The risk-term library compiled once per content and kept in the gateway's data dir: a
gateway (or a worker of one) that starts on a library compiled before reads it back instead
of compiling it again, and anything that changes it compiles it afresh."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from schoolgate.core.configfile import ConfigError
from schoolgate.monitoring import compiled
from schoolgate.monitoring.compiled import CompiledLibrary, load_compiled

SUICIDE = "theme: suicide\nterms:\n  - {term: kill myself, severity: 3, firm: true}\n"
BULLYING = "theme: bullying\nterms:\n  - {term: everyone hates you, severity: 2}\n"


@pytest.fixture
def library(tmp_path: Path) -> Path:
    root = tmp_path / "terms"
    (root / "en").mkdir(parents=True)
    (root / "en" / "suicide.yaml").write_text(SUICIDE, encoding="utf-8")
    return root


@pytest.fixture
def compiles(monkeypatch: pytest.MonkeyPatch) -> list[list[Path]]:
    """The libraries really compiled (the saved ones are read back, not compiled)."""
    done: list[list[Path]] = []
    real = compiled.load_matcher

    def counted(roots, *, languages=None):
        done.append(list(roots or []))
        return real(roots, languages=languages)

    monkeypatch.setattr(compiled, "load_matcher", counted)
    return done


def severity(matcher, text: str) -> int:
    return max((m.severity for m in matcher.assess(text).matches), default=0)


def test_a_library_compiled_once_is_read_back_with_the_same_judgement(
    tmp_path: Path, library: Path, compiles: list
):
    folder = CompiledLibrary(tmp_path / "compiled")
    first = folder.load([library])
    again = CompiledLibrary(tmp_path / "compiled").load([library])  # as a new process would
    assert len(compiles) == 1 and again is not first
    for matcher in (first, again):
        assert severity(matcher, "i want to kill myself") == 3
        assert severity(matcher, "maths homework") == 0
    (saved,) = (tmp_path / "compiled").iterdir()  # no temporary file left
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600  # the gateway's own


def test_an_edited_or_added_file_or_other_languages_compile_afresh(
    tmp_path: Path, library: Path, compiles: list
):
    folder = CompiledLibrary(tmp_path / "compiled")
    folder.load([library])
    (library / "en" / "suicide.yaml").write_text(
        SUICIDE.replace("kill myself", "end it all"), encoding="utf-8"
    )
    edited = folder.load([library])
    assert severity(edited, "i want to end it all") == 3
    assert severity(edited, "i want to kill myself") == 0
    (library / "en" / "bullying.yaml").write_text(BULLYING, encoding="utf-8")
    assert severity(folder.load([library]), "everyone hates you") == 2
    assert severity(folder.load([library], languages=("cy",)), "everyone hates you") == 0
    assert len(compiles) == 4


def test_a_library_with_errors_raises_and_nothing_is_saved(tmp_path: Path, library: Path):
    (library / "en" / "suicide.yaml").write_text("theme: nonsense\nterms: 5\n", encoding="utf-8")
    with pytest.raises(ConfigError):
        CompiledLibrary(tmp_path / "compiled").load([library])
    assert not list((tmp_path / "compiled").glob("*"))


def test_a_damaged_saved_library_is_compiled_again(
    tmp_path: Path, library: Path, compiles: list, caplog
):
    folder = CompiledLibrary(tmp_path / "compiled")
    folder.load([library])
    (saved,) = (tmp_path / "compiled").iterdir()
    saved.write_bytes(saved.read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        matcher = folder.load([library])
    assert severity(matcher, "i want to kill myself") == 3 and len(compiles) == 2
    assert "compiling the library again" in caplog.text
    assert severity(folder.load([library]), "i want to kill myself") == 3
    assert len(compiles) == 2  # the damaged file was replaced


def test_a_folder_that_cannot_be_written_still_loads_the_library(
    tmp_path: Path, library: Path, caplog
):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the folder would be")
    with caplog.at_level(logging.WARNING):
        matcher = CompiledLibrary(blocked).load([library])
    assert severity(matcher, "i want to kill myself") == 3
    assert "could not be saved" in caplog.text


def test_only_the_newest_few_versions_are_kept(tmp_path: Path, library: Path):
    folder = CompiledLibrary(tmp_path / "compiled")
    for n in range(compiled.KEEP + 2):
        (library / "en" / "bullying.yaml").write_text(
            BULLYING.replace("hates", f"hates{n}"), encoding="utf-8"
        )
        folder.load([library])
    assert len(list((tmp_path / "compiled").iterdir())) == compiled.KEEP
    # the one in use is one of them: read back, not compiled
    before = {p.name for p in (tmp_path / "compiled").iterdir()}
    folder.load([library])
    assert {p.name for p in (tmp_path / "compiled").iterdir()} == before


def test_the_gateway_keeps_it_in_its_data_dir_unless_told_another_folder(
    tmp_path: Path, library: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv(compiled.FOLDER_ENV, raising=False)
    data_dir = tmp_path / "var"
    load_compiled(data_dir, [library])
    assert len(list((data_dir / "monitoring").glob("library-*.pickle"))) == 1
    shared = tmp_path / "shared"
    monkeypatch.setenv(compiled.FOLDER_ENV, str(shared))
    load_compiled(tmp_path / "other-var", [library])
    assert len(list(shared.glob("library-*.pickle"))) == 1
    assert not (tmp_path / "other-var").exists()
