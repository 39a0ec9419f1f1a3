"""`schoolgate check-config`, `explain`, `timetable` and `allow`, as IT Support use them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from policy_fixtures import write_config

from schoolgate.cli.main import main

SCRIPT = shutil.which("schoolgate", path=str(Path(sys.executable).parent)) or shutil.which(
    "schoolgate"
)


@pytest.fixture()
def config(tmp_path):
    return write_config(tmp_path)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_console_script_is_installed_and_checks_the_shipped_config(tmp_path):
    assert SCRIPT, "the `schoolgate` console script is not installed"
    done = subprocess.run(
        [SCRIPT, "check-config", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK:")


def test_check_config_prints_every_error_and_fails(tmp_path, capsys):
    path = write_config(
        tmp_path,
        {
            "rules": [
                {
                    "roles": ["nobody"],
                    "windows": ["lesson"],
                    "categories": ["social_media"],
                    "action": "block",
                },
                {
                    "roles": ["student"],
                    "windows": ["playtime"],
                    "categories": ["social_media"],
                    "action": "block",
                },
            ]
        },
    )
    code, out, err = run(capsys, "check-config", path)
    assert code == 1
    assert "unknown role 'nobody'" in err and "unknown window kind 'playtime'" in err
    assert "2 error(s)" in err
    assert "mitm_config.yaml:" in err


def test_explain_json_has_the_contract_keys(config, capsys):
    code, out, _ = run(
        capsys,
        "explain",
        "https://www.facebook.com/",
        "--ip",
        "10.20.0.9",
        "--at",
        "2026-11-24T10:30",
        "--json",
        "--config",
        config,
    )
    assert code == 0
    data = json.loads(out)
    assert data["action"] == "block"
    assert data["role"] == "student"
    assert data["window"] == "lesson"
    assert data["category"] == "social_media"
    assert "blocked" in data["reason"]
    assert data["until"].startswith("2026-11-24T11:00")


def test_explain_text_names_identity_window_list_and_rule(config, capsys):
    code, out, _ = run(
        capsys,
        "--config",
        config,
        "explain",
        "https://m.facebook.com/x",
        "--user",
        "ben",
        "--at",
        "2026-11-24T10:30",
    )
    assert code == 0
    assert out.startswith("BLOCK")
    assert "role student, group 9B" in out and "roster" in out
    assert "lesson (P2)" in out
    assert "social media: facebook.com" in out
    assert "rules[0]" in out
    # another time than now (--at): full dates in words, never an ISO timestamp
    assert (
        "reason:   Social media is blocked for pupils during lessons (P2, until 11:00 on "
        "Tuesday 24 November 2026)." in out
    )
    assert "window:   lesson (P2), 10:00 to 11:00 on Tuesday 24 November 2026" in out
    assert "until:    11:00 on Tuesday 24 November 2026" in out
    people_lines = [line for line in out.splitlines() if line.startswith(("  reason", "  window"))]
    assert all("_" not in line and "2026-11-24T" not in line for line in people_lines)


def test_explain_by_role_and_null_category(config, capsys):
    code, out, _ = run(
        capsys,
        "explain",
        "https://www.bbc.co.uk/bitesize",
        "--role",
        "staff",
        "--at",
        "2026-11-24T10:30",
        "--json",
        "--config",
        config,
    )
    data = json.loads(out)
    assert data["action"] == "allow" and data["category"] is None and data["role"] == "staff"


def test_explain_needs_an_identity(config, capsys):
    code, _, err = run(capsys, "explain", "https://x.org/", "--config", config)
    assert code == 1 and "--user" in err


def test_explain_batch_from_file_and_stdin(config, tmp_path, capsys, monkeypatch):
    urls = tmp_path / "urls.txt"
    urls.write_text(
        "https://www.youtube.com/watch?v=1\n# a comment\n\nhttps://www.bbc.co.uk/\n"
        "https://en.wikipedia.org/wiki/Cell\n"
    )
    code, out, _ = run(
        capsys,
        "explain",
        "--batch",
        urls,
        "--role",
        "student",
        "--at",
        "2026-11-24T10:30",
        "--config",
        config,
    )
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [d["action"] for d in lines] == ["block", "allow", "allow"]
    assert lines[0]["url"] == "https://www.youtube.com/watch?v=1"
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("https://facebook.com/\n"))
    code, out, _ = run(
        capsys,
        "explain",
        "--batch",
        "-",
        "--role",
        "student",
        "--at",
        "2026-11-24T11:05",
        "--config",
        config,
    )
    assert json.loads(out)["action"] == "allow" and json.loads(out)["window"] == "break"


def test_timetable_prints_the_day(config, capsys):
    code, out, _ = run(capsys, "timetable", "--date", "2026-11-24", "--config", config)
    assert code == 0
    assert "Tuesday 24 November 2026" in out
    for expected in (
        "08:40 - 09:00",
        "registration",
        "11:00 - 11:20",
        "break",
        "lunch",
        "after_school",
        "before_school",
    ):
        assert expected in out, expected


def test_timetable_json_for_a_closed_day(config, capsys):
    code, out, _ = run(capsys, "timetable", "--date", "2026-10-28", "--json", "--config", config)
    data = json.loads(out)
    assert [w["kind"] for w in data["windows"]] == ["closed"]
    assert "half term" in data["day_type"].lower()


def test_allow_add_list_revoke_changes_explain(config, capsys):
    base = ["--config", config]
    ask = ["explain", "https://www.youtube.com/watch?v=abc", "--user", "ben", "--json", *base]
    code, out, err = run(
        capsys,
        "allow",
        "add",
        "--category",
        "social_media",
        "--for",
        "group=9B",
        "--minutes",
        "60",
        "--by",
        "mrs.khan",
        "--reason",
        "Media studies",
        "--init",
        *base,
    )
    assert code == 0, err
    assert "exception #1" in out
    assert "social media open for group 9B until " in out and "by mrs.khan" in out
    code, out, _ = run(capsys, *ask)
    data = json.loads(out)
    assert data["action"] == "allow" and data["exception_id"] == 1

    code, out, _ = run(capsys, "allow", "list", "--json", *base)
    listed = json.loads(out)
    assert [e["id"] for e in listed] == [1] and listed[0]["scope_value"] == "9B"

    code, out, _ = run(capsys, "allow", "revoke", "1", "--by", "it.support", *base)
    assert code == 0
    code, out, _ = run(capsys, *ask)
    assert json.loads(out)["exception_id"] is None
    code, out, _ = run(capsys, "allow", "list", *base)
    assert "no exceptions in force" in out
    code, out, _ = run(capsys, "allow", "list", "--all", *base)
    assert out.startswith("#1  [REVOKED today at ") and " by it.support]" in out
    code, out, _ = run(capsys, "allow", "list", "--all", "--json", *base)
    assert json.loads(out)[0]["status"] == "revoked"


def test_allow_refuses_locked_unknown_and_past(config, capsys):
    base = ["--config", config, "--by", "it.support", "--init"]
    code, _, err = run(
        capsys, "allow", "add", "--category", "illegal", "--for", "everyone", "--permanent", *base
    )
    assert code == 1 and "locked" in err
    code, _, err = run(
        capsys,
        "allow",
        "add",
        "--host",
        "www.bad.example",
        "--for",
        "everyone",
        "--permanent",
        *base,
    )
    assert code == 1 and "locked" in err
    code, _, err = run(
        capsys, "allow", "add", "--category", "gaming", "--for", "everyone", "--permanent", *base
    )
    assert code == 1 and "unknown category" in err
    code, _, err = run(
        capsys,
        "allow",
        "add",
        "--host",
        "youtube.com",
        "--for",
        "role=wizard",
        "--permanent",
        *base,
    )
    assert code == 1 and "unknown role" in err
    code, _, err = run(
        capsys,
        "allow",
        "add",
        "--host",
        "youtube.com",
        "--for",
        "group=9B",
        "--until",
        "2020-01-01T10:00",
        *base,
    )
    assert code == 1 and "past" in err
    code, _, err = run(
        capsys, "allow", "add", "--host", "youtube.com", "--for", "group", "--minutes", "5", *base
    )
    assert code == 1 and "needs a value" in err


def test_allow_is_audited(config, capsys):
    from sqlalchemy import select

    from schoolgate.core.config import load_policy
    from schoolgate.storage.db import open_database
    from schoolgate.storage.models import AuditRow

    run(
        capsys,
        "allow",
        "add",
        "--host",
        "youtube.com",
        "--for",
        "user=ben",
        "--minutes",
        "30",
        "--by",
        "mr.lee",
        "--reason",
        "Revision video",
        "--config",
        config,
        "--init",
    )
    run(
        capsys, "allow", "revoke", "1", "--by", "it.support", "--reason", "done", "--config", config
    )
    with open_database(load_policy(config).settings.database_url)() as session:
        rows = list(session.scalars(select(AuditRow).order_by(AuditRow.id)))
    assert [(r.actor, r.action) for r in rows] == [
        ("mr.lee", "exception.add"),
        ("it.support", "exception.revoke"),
    ]
    assert "Revision video" in rows[0].detail


def test_bad_lines_in_a_subscribed_list_are_warnings_not_a_refusal(tmp_path, capsys):
    # UT1's vpn list (real, third-party; shipped as a snapshot) beside a list with a bad line.
    ut1 = Path(__file__).resolve().parents[1] / "blocklists" / "ut1" / "vpn"
    bad = tmp_path / "bad.txt"
    bad.write_text("good-vpn.example\nnot a domain\n")
    categories = {
        "circumvention": {"lists": [str(ut1), str(bad)]},
        "social_media": {"entries": ["facebook.com"]},
    }
    path = write_config(tmp_path, {"categories": categories, "rules": [], "age_restrictions": None})
    code, out, err = run(capsys, "check-config", path)
    assert code == 0, err
    assert "warning(s)" in out
    assert "bad.txt:2" in err and "warning:" in err
    code, out, _ = run(
        capsys,
        "explain",
        "http://good-vpn.example/",
        "--role",
        "student",
        "--json",
        "--config",
        path,
    )
    assert json.loads(out)["category"] == "circumvention"
