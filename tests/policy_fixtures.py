"""Small school configs for policy and CLI tests, written into a temporary folder."""

from __future__ import annotations

import copy
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

ROOT = Path(__file__).resolve().parents[1]
LONDON = ZoneInfo("Europe/London")
DEFAULT_TIMETABLE = ROOT / "schedules" / "default.yaml"

ROSTER = """username,role,group,date_of_birth
alice,staff,,1985-03-02
ben,student,9B,2012-01-15
cara,student,9C,2012-02-20
dev,student,7A,2015-06-01
eve,student,8C,
fin,student,Year 10,
gus,pupil,11X,17/05/2010
"""

BASE: dict[str, Any] = {
    "portal": {"host": "schoolgate.internal"},
    "roles": {
        "student": {"safe_search": True, "youtube_restrict": "strict", "age_checks": True},
        "staff": {"youtube_restrict": "moderate"},
        "guest": {"intercept": False, "age_checks": True},
    },
    "identity": {
        "networks": [
            {"cidr": "10.20.0.0/16", "role": "student"},
            {"cidr": "10.10.0.0/16", "role": "staff"},
        ],
        "role_aliases": {"pupil": "student"},
    },
    "sites": {"main": {"timetable": str(DEFAULT_TIMETABLE)}},
    "categories": {
        "illegal": {"locked": True, "entries": ["bad.example"]},
        "circumvention": {"entries": ["vpn.example", "proxy.example"]},
        "social_media": {
            "entries": [
                "facebook.com",
                "instagram.com",
                "youtube.com",
                "bücher-social.example",
                "games.example/play",
            ],
            "teachers_may_open": True,
        },
        "wikipedia": {"entries": ["wikipedia.org"], "default": "allow"},
    },
    "allowlist": {"entries": ["education.facebook.com", "youtube.com/edu"]},
    "rules": [
        {
            "roles": ["student", "staff"],
            "windows": ["lesson", "registration"],
            "categories": ["social_media"],
            "action": "block",
        },
        {
            "roles": ["staff"],
            "windows": ["break", "lunch", "before_school", "after_school", "closed"],
            "categories": ["social_media"],
            "action": "allow",
        },
        {
            "roles": ["student"],
            "windows": ["break", "lunch"],
            "categories": ["social_media"],
            "action": "allow",
        },
        {
            "roles": ["student"],
            "groups": ["11X"],
            "windows": ["after_school"],
            "categories": ["social_media"],
            "action": "allow",
            "note": "Year 11 study club",
        },
        {
            "roles": ["student", "staff"],
            "windows": ["lesson", "registration"],
            "categories": ["wikipedia"],
            "action": "read_only",
        },
        {"roles": ["guest"], "windows": "*", "categories": ["wikipedia"], "action": "read_only"},
        {"roles": "*", "windows": "*", "categories": ["circumvention"], "action": "block"},
    ],
    "read_only": {"blocked_paths": ["action=edit", "special:userlogin", "/login"]},
    "age_restrictions": [
        {"platform": "Instagram", "min_age": 13, "signup": ["instagram.com/accounts/emailsignup"]},
        {"platform": "LinkedIn", "min_age": 16, "signup": ["linkedin.com/signup"]},
    ],
}


def write_config(
    tmp_path: Path,
    changes: dict[str, Any] | None = None,
    *,
    roster: str | None = ROSTER,
    text: str | None = None,
) -> Path:
    """Write BASE (updated with ``changes`` at the top level) and a roster; return the path."""
    data = copy.deepcopy(BASE)
    data["database"] = {"url": f"sqlite:///{tmp_path}/schoolgate.db"}
    if roster is not None:
        (tmp_path / "roster.csv").write_text(roster, encoding="utf-8")
        data["identity"]["roster"] = "roster.csv"
    for key, value in (changes or {}).items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path = tmp_path / "mitm_config.yaml"
    path.write_text(
        text if text is not None else yaml.safe_dump(data, sort_keys=False, allow_unicode=True),
        encoding="utf-8",
    )
    return path


def local(text: str) -> datetime:
    """A wall-clock time at the default school (Europe/London)."""
    return datetime.fromisoformat(text).replace(tzinfo=LONDON)


def today_for(span: timedelta) -> datetime:
    """The time now (UTC), once ``span`` from now is still today: in the last ``span`` of a day,
    after waiting for the next one (a test of a time later today would otherwise skip)."""
    now = datetime.now(UTC)
    if (now + span).date() != now.date():
        tomorrow = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
        time.sleep((tomorrow - now).total_seconds() + 1)
        now = datetime.now(UTC)
    return now
