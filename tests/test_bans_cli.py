"""``schoolgate bans list|show|lift`` and ``schoolgate supervise``."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import schoolgate.cli.main as cli
from schoolgate.core.sanctions import BanState


def run(capsys, *argv: str) -> tuple[int, str, str]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "bans" not in sub.choices:  # until the lead wires bans_cli into cli.py
        from schoolgate.cli.bans import register

        register(sub, cli._common)
    args = parser.parse_args(list(argv))
    try:
        code = args.handler(args)
    except cli.CommandError as exc:
        print(f"schoolgate: {exc}", file=__import__("sys").stderr)
        code = 1
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def env(gateway_config: Path, gateway_data_dir: Path):
    from schoolgate.core.config import load_policy
    from schoolgate.storage.bans import save_ban
    from schoolgate.storage.db import open_database
    from schoolgate.storage.models import EventRow

    policy = load_policy(gateway_config, data_dir=gateway_data_dir)
    sessions = open_database(policy.settings.database_url)
    now = datetime.now(UTC)
    with sessions() as s:
        s.add(
            EventRow(
                ref="ev1",
                at=now,
                kind="circumvention",
                action="ban",
                user="ben",
                client_ip="10.20.0.5",
                host="proxy.test",
                url="http://proxy.test/",
                reason="Connected to proxy.test",
            )
        )
        save_ban(
            s,
            BanState(
                "bcli1",
                "user:ben",
                "ban",
                now,
                now + timedelta(days=7),
                "three attempts",
                events=("ev1",),
            ),
            role="student",
        )
        s.commit()
    return ["--config", str(gateway_config), "--data-dir", str(gateway_data_dir)]


def test_list_show_supervise_lift(env, capsys):
    code, out, _ = run(capsys, "bans", "list", *env)
    assert code == 0 and "user:ben" in out and "active" in out
    code, out, _ = run(capsys, "bans", "list", "--json", *env)
    data = json.loads(out)
    assert [(b["id"], b["who"], b["kind"], b["status"]) for b in data] == [
        (1, "ben", "ban", "active")
    ]

    code, out, err = run(
        capsys,
        "supervise",
        "ben",
        "--by",
        "mr.jones",
        "--minutes",
        "45",
        "--reason",
        "ICT lesson",
        *env,
    )
    assert code == 0, err
    assert "supervision session #1" in out and "mr.jones" in out
    code, _, err = run(
        capsys, "supervise", "alex", "--by", "mr.jones", "--minutes", "45", "--reason", "x", *env
    )
    assert code == 1 and "not banned" in err

    code, out, _ = run(capsys, "bans", "show", "1", "--json", *env)
    shown = json.loads(out)
    assert [h["action"] for h in shown["history"]] == ["ban.create", "supervision.start"]
    assert shown["evidence"][0]["ref"] == "ev1"
    assert shown["supervision_sessions"][0]["staff"] == "mr.jones"
    code, out, _ = run(capsys, "bans", "show", "1", *env)
    assert "evidence" in out and "proxy.test" in out and "supervision.start" in out

    code, out, _ = run(
        capsys, "bans", "lift", "1", "--by", "it.support", "--reason", "appeal upheld", *env
    )
    assert code == 0 and "lifted ban #1" in out
    code, _, err = run(capsys, "bans", "lift", "1", "--by", "it.support", "--reason", "x", *env)
    assert code == 1 and "already lifted" in err
    code, out, _ = run(capsys, "bans", "list", *env)
    assert "no bans in force" in out
    code, out, _ = run(capsys, "bans", "list", "--all", "--json", *env)
    assert json.loads(out)[0]["status"] == "lifted"
    assert json.loads(out)[0]["lift_reason"] == "appeal upheld"


def test_show_unknown(env, capsys):
    code, _, err = run(capsys, "bans", "show", "99", *env)
    assert code == 1 and "no ban #99" in err


def test_lift_needs_by_and_reason(env, capsys):
    with pytest.raises(SystemExit):
        run(capsys, "bans", "lift", "1", *env)
