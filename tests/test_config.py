"""Config validation: every error names file, line and field; nothing half-loaded."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from policy_fixtures import DEFAULT_TIMETABLE, ROOT, write_config

from schoolgate.core.config import DEFAULT_CONFIG, load_policy
from schoolgate.core.configfile import ConfigError
from schoolgate.storage import check_database_url

GOOD = f"""\
roles:
  student: {{age_checks: true}}
  staff: {{}}
identity:
  networks:
    - {{cidr: 10.20.0.0/16, role: student}}
sites:
  main: {{timetable: {DEFAULT_TIMETABLE}}}
categories:
  social_media: {{entries: [facebook.com]}}
rules:
  - {{roles: [student], windows: [lesson], categories: [social_media], action: block}}
"""


def issues_of(tmp_path: Path, text: str, roster: str | None = None) -> list[str]:
    path = tmp_path / "mitm_config.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    if roster is not None:
        (tmp_path / "roster.csv").write_text(roster, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_policy(path, data_dir=tmp_path)
    return [str(issue) for issue in info.value.issues]


def has(issues: list[str], where: str, *words: str) -> bool:
    return any(where in i and all(w in i for w in words) for i in issues)


def test_the_shipped_config_loads():
    policy = load_policy(DEFAULT_CONFIG, data_dir=ROOT / "var")
    assert {"student", "staff", "guest"} <= set(policy.roles)
    assert {"social_media", "circumvention", "wikipedia", "blogs", "illegal"} <= set(
        policy.categories
    )
    assert policy.categories["illegal"].locked
    assert policy.settings.portal_host == "schoolgate.internal"


def test_good_minimal_config_loads(tmp_path):
    (tmp_path / "mitm_config.yaml").write_text(GOOD)
    policy = load_policy(tmp_path / "mitm_config.yaml", data_dir=tmp_path)
    assert "guest" in policy.roles  # built in, fail closed


def test_yaml_syntax_error_names_the_line(tmp_path):
    issues = issues_of(tmp_path, "roles:\n  student: {\n  staff: x\n")
    assert len(issues) == 1 and "mitm_config.yaml:" in issues[0] and "invalid YAML" in issues[0]


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_policy(tmp_path / "nope.yaml")
    assert "file not found" in str(info.value)


def test_all_errors_are_reported_together_with_line_and_field(tmp_path):
    text = GOOD.replace(
        "{cidr: 10.20.0.0/16, role: student}", "{cidr: 10.20.0.300/16, role: pupil}"
    )
    text = text.replace("windows: [lesson]", "windows: [lessons]")
    text = text.replace("action: block", "action: deny")
    text += "colour: blue\n"
    issues = issues_of(tmp_path, text)
    assert has(issues, "mitm_config.yaml:6", "identity.networks[0].cidr", "expected a network")
    assert has(issues, "mitm_config.yaml:6", "identity.networks[0].role", "unknown role 'pupil'")
    assert has(issues, "mitm_config.yaml:12", "rules[0].windows[0]", "unknown window kind")
    assert has(issues, "mitm_config.yaml:12", "rules[0].action", "expected one of")
    assert has(issues, "mitm_config.yaml:13", "colour", "unknown key")
    assert len(issues) >= 5


def test_unknown_key_suggests_the_right_one(tmp_path):
    issues = issues_of(tmp_path, GOOD + "categorys: {}\n")
    assert has(issues, ":13", "categorys", "did you mean 'categories'")


def test_rule_naming_unknown_role_and_category(tmp_path):
    text = GOOD.replace("roles: [student], windows", "roles: [prefect], windows")
    text = text.replace("categories: [social_media]", "categories: [gaming]")
    issues = issues_of(tmp_path, text)
    assert has(issues, ":12", "rules[0].roles[0]", "unknown role 'prefect'")
    assert has(issues, ":12", "rules[0].categories[0]", "unknown category 'gaming'")


def test_rule_missing_fields(tmp_path):
    text = GOOD.replace(
        "- {roles: [student], windows: [lesson], categories: [social_media], action: block}",
        "- {roles: [student]}",
    )
    issues = issues_of(tmp_path, text)
    assert has(issues, ":12", "rules[0]", "missing required field 'windows'")
    assert has(issues, ":12", "rules[0]", "missing required field 'categories'")
    assert has(issues, ":12", "rules[0]", "missing required field 'action'")


def test_no_rule_can_open_a_locked_category(tmp_path):
    text = GOOD.replace(
        "social_media: {entries: [facebook.com]}",
        "social_media: {entries: [facebook.com], locked: true}",
    )
    text = text.replace("action: block", "action: allow")
    issues = issues_of(tmp_path, text)
    assert has(issues, ":12", "rules[0].action", "locked")


def test_missing_list_file_and_timetable(tmp_path):
    text = GOOD.replace("{entries: [facebook.com]}", "{lists: [blocklists/nope.txt]}")
    text = text.replace(str(DEFAULT_TIMETABLE), "schedules/nope.yaml")
    issues = issues_of(tmp_path, text)
    assert has(issues, ":10", "categories.social_media.lists[0]", "list file not found")
    assert any("nope.yaml" in i and "not found" in i for i in issues)


def test_wrong_types(tmp_path):
    text = GOOD.replace("student: {age_checks: true}", "student: {age_checks: maybe}")
    text = text.replace("networks:\n", "networks: 10.0.0.0/8\nx_networks:\n")
    issues = issues_of(tmp_path, text)
    assert has(issues, ":2", "roles.student.age_checks", "expected true or false")


def test_unknown_default_site(tmp_path):
    issues = issues_of(tmp_path, GOOD + "default_site: annexe\n")
    assert has(issues, ":13", "default_site", "unknown site 'annexe'")


def test_duplicate_keys_are_errors(tmp_path):
    issues = issues_of(tmp_path, GOOD + "rules: []\n")
    assert has(issues, ":13", "rules", "duplicate key")


def test_roster_errors_name_the_csv_line_and_column(tmp_path):
    roster = (
        "username,role,group,date_of_birth\n"
        "ann,student,9B,2012-01-01\n"
        "bob,wizard,9B,2012-01-01\n"
        "cat,student,9B,31/31/2012\n"
        "ann,student,9C,2012-02-02\n"
    )
    text = GOOD.replace("identity:\n", "identity:\n  roster: roster.csv\n")
    issues = issues_of(tmp_path, text, roster=roster)
    assert has(issues, "roster.csv:3", "role", "unknown role 'wizard'")
    assert has(issues, "roster.csv:4", "date_of_birth", "expected a date")
    assert has(issues, "roster.csv:5", "username", "appears twice")


def test_roster_missing_columns(tmp_path):
    text = GOOD.replace("identity:\n", "identity:\n  roster: roster.csv\n")
    issues = issues_of(tmp_path, text, roster="user,role\nann,student\n")
    assert has(issues, "roster.csv:1", "header", "missing column")


def test_age_restriction_errors(tmp_path):
    text = GOOD + (
        "age_restrictions:\n"
        "  - {platform: Instagram, min_age: thirteen, signup: [instagram.com/x]}\n"
        "  - {platform: TikTok, min_age: 13}\n"
    )
    issues = issues_of(tmp_path, text)
    assert has(issues, ":14", "age_restrictions[0].min_age", "expected a whole number")
    assert has(issues, ":15", "age_restrictions[1]", "missing required field 'signup'")


def test_timetable_errors_come_with_the_config_errors(tmp_path):
    bad_tt = tmp_path / "tt.yaml"
    bad_tt.write_text(
        DEFAULT_TIMETABLE.read_text().replace(
            'start: "09:00", end: "10:00"', 'start: "25:00", end: "10:00"'
        )
    )
    text = GOOD.replace(str(DEFAULT_TIMETABLE), "tt.yaml").replace("action: block", "action: nope")
    issues = issues_of(tmp_path, text)
    assert any(i.startswith(str(Path("tt.yaml"))) or "tt.yaml:" in i for i in issues)
    assert has(issues, "mitm_config.yaml:12", "rules[0].action")


def test_a_broken_config_yields_no_policy_at_all(tmp_path):
    path = write_config(
        tmp_path,
        {
            "rules": [
                {
                    "roles": ["student"],
                    "windows": ["lesson"],
                    "categories": ["nope"],
                    "action": "block",
                }
            ]
        },
    )
    with pytest.raises(ConfigError):
        load_policy(path)


def test_a_database_url_is_checked_with_its_line(tmp_path):
    # The core alone (explain, the tests) knows only the shape of a database URL; the processes
    # that open the database pass the storage layer's check, whose message is reported as any
    # other problem of the config, at database.url's line.
    text = "database:\n  url: schoolgate.db\n" + GOOD
    issues = issues_of(tmp_path, text)
    assert has(issues, "mitm_config.yaml:2", "database.url", "not a database URL")

    path = tmp_path / "mitm_config.yaml"
    path.write_text("database:\n  url: oracle9://u@db/schoolgate\n" + GOOD, encoding="utf-8")
    assert load_policy(path, data_dir=tmp_path).settings.database_url.startswith("oracle9://")
    with pytest.raises(ConfigError) as info:
        load_policy(path, data_dir=tmp_path, check_database_url=check_database_url)
    (issue,) = info.value.issues
    assert (issue.line, issue.field) == (2, "database.url")
    assert "unknown database kind 'oracle9'" in issue.message
