"""The rough edges a new network manager meets with the commands: role aliases wherever a role
is named, rules counted as written, `jobs list` in words with its last runs, `export` of an
unknown user, `allow list --all` marking what has ended."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from policy_fixtures import write_config

from schoolgate.cli.main import main
from schoolgate.core.config import load_policy
from schoolgate.core.configfile import ConfigError
from schoolgate.storage.db import open_database
from schoolgate.storage.models import ExceptionRow


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


ALIASES = {
    "identity": {
        "networks": [
            {"cidr": "10.20.0.0/16", "role": "pupil"},
            {"cidr": "10.10.0.0/16", "role": "Teacher"},
        ],
        "role_aliases": {"pupil": "student", "teacher": "staff"},
    },
    "rules": [
        {
            "roles": ["pupil", "teacher"],
            "windows": ["lesson"],
            "categories": ["social_media"],
            "action": "block",
        },  # fmt: skip
        {"roles": ["teacher"], "windows": "*", "categories": ["social_media"], "action": "allow"},
        {"roles": "*", "windows": "*", "categories": ["circumvention"], "action": "block"},
    ],
    "bans": {"roles": ["pupil"]},
}


def test_role_aliases_are_honoured_wherever_a_role_is_named(tmp_path, capsys):
    config = write_config(tmp_path, ALIASES)
    policy = load_policy(config, data_dir=tmp_path)
    # identity.networks (any case), rules and bans.roles all mean the roles themselves
    assert policy.identify("10.20.1.1", None).role == "student"
    assert policy.identify("10.10.1.1", None).role == "staff"
    assert ("student", None, "lesson", "social_media") in policy.rules
    assert policy.rules[("staff", None, "break", "social_media")].action == "allow"
    assert policy.settings.sanctions.roles == frozenset({"student"})

    base = ["--config", config]
    at = ["--at", "2026-11-24T10:30"]
    code, out, err = run(capsys, "explain", "https://facebook.com/", "--role", "teacher", *at,
                         "--json", *base)  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["role"] == "staff"
    code, out, _ = run(capsys, "explain", "https://facebook.com/", "--role", "PUPIL", *at, *base)
    assert "--role PUPIL (= student)" in out and out.startswith("BLOCK")
    code, _, err = run(capsys, "explain", "https://facebook.com/", "--role", "wizard", *base)
    assert code == 1 and "aliases: pupil = student, teacher = staff" in err

    grant = ["allow", "add", "--category", "social_media", "--for", "role=pupil"]
    code, out, err = run(capsys, *grant, "--minutes", "30", "--by", "it", "--init", *base)
    assert code == 0, err
    with open_database(policy.settings.database_url)() as session:
        (row,) = session.query(ExceptionRow).all()
        assert (row.scope, row.scope_value) == ("role", "student")
    code, out, _ = run(capsys, "explain", "https://facebook.com/", "--ip", "10.20.1.1", "--json",
                       *base)  # fmt: skip
    assert json.loads(out)["exception_id"] == row.id


def test_an_alias_cannot_take_the_name_of_another_role(tmp_path):
    changes = {"identity": {"role_aliases": {"staff": "student"}}}
    with pytest.raises(ConfigError, match="'staff' is a role of its own"):
        load_policy(write_config(tmp_path, changes), data_dir=tmp_path)


def test_the_portals_approval_form_takes_an_alias(tmp_path, gateway_config):
    from test_portal import Portal, item_id, post

    data = yaml.safe_load(gateway_config.read_text())
    data["identity"]["role_aliases"] = {"pupil": "student"}
    gateway_config.write_text(yaml.safe_dump(data))
    portal = Portal(tmp_path, gateway_config, slt_required={"scopes": [], "longer_than_days": None})
    ref = portal.ask()
    page = f"/it/item/{item_id(portal, ref)}"
    answer = post(portal.staff("alice"), page, f"{page}/approve", scope="role",
                  scope_value="pupil", target_kind="host", target="social.test",
                  duration="7d")  # fmt: skip
    assert answer.status_code == 303, answer.text
    (exc,) = portal.exceptions()
    assert (exc.scope, exc.scope_value) == ("role", "student")


def test_check_config_counts_rules_as_written(tmp_path, capsys):
    code, out, err = run(capsys, "check-config", write_config(tmp_path))
    assert code == 0, err
    written = re.search(r"rules: (\d+) \((\d+) role x window x category combinations\)", out)
    assert written, out
    assert int(written.group(1)) == 7  # policy_fixtures.BASE has 7 rules
    assert int(written.group(2)) > 7


def test_export_of_an_unknown_user_says_so(tmp_path, capsys):
    base = ["--config", write_config(tmp_path), "--init"]
    code, out, err = run(capsys, "export", "--user", "nobody.here", *base)
    assert code == 1 and out == ""
    assert "nothing is held about 'nobody.here'" in err and "spelling" in err
    code, out, err = run(capsys, "export", "--user", "ben", *base)  # on the roster
    assert code == 0, err
    assert json.loads(out)["roster"]["group"] == "9B"


def test_jobs_list_in_words_with_next_and_last_runs(tmp_path, capsys, monkeypatch):
    base = ["--config", write_config(tmp_path)]
    code, out, err = run(capsys, "jobs", "list", *base)
    assert code == 0, err
    assert "expire: records exceptions, overrides and bans that have ended" in out
    assert "  runs every minute; next today at " in out
    assert "purge: deletes records past their retention period\n  runs every day at 02:30" in out
    assert out.count("  last never run") == out.count("  runs ")
    for internal in ("trigger", "interval[", "cron[", "timezone", "0:01:00", "T0"):
        assert internal not in out

    code, out, err = run(capsys, "jobs", "run", "expire", "--init", *base)
    assert code == 0, err
    code, out, _ = run(capsys, "jobs", "list", *base)
    assert re.search(r"expire: .*\n  runs every minute; next .*\n  last today at \d\d:\d\d, ok: "
                     r"nothing had ended", out), out  # fmt: skip

    # a job that fails is shown with its error
    import schoolgate.jobs.scheduler as jobs

    def broken(ctx):
        raise RuntimeError("the list server said no")

    monkeypatch.setitem(jobs.JOBS, "purge", broken)
    with pytest.raises(RuntimeError):
        run(capsys, "jobs", "run", "purge", *base)
    code, out, _ = run(capsys, "jobs", "list", "--json", *base)
    purge = {job["name"]: job for job in json.loads(out)}["purge"]
    assert purge["outcome"] == "failed"
    assert purge["error"] == "RuntimeError: the list server said no"
    assert purge["schedule"] == "every day at 02:30"
