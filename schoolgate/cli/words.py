"""How the ``schoolgate`` commands print decisions, windows, times and exceptions for people:
in words, in the site's time zone (:mod:`schoolgate.core.words`). ``--json`` outputs keep the
internal names and ISO times; they are not made here.
"""

from __future__ import annotations

from datetime import datetime

from schoolgate.core import words
from schoolgate.core.explain import (  # noqa: F401 - the commands' words, with the explanation's
    decision_lines,
    ends_words,
    identity_override,
    site_tz,
)
from schoolgate.core.model import Decision


def print_decision(decision: Decision, policy, url: str, now: datetime | None) -> None:
    """``now``: the time now when the decision is for now (times are said from it: "11:00
    today"); None for a decision at another time (full dates)."""
    for line in decision_lines(decision, policy, url, now):
        print(line)


def describe_exception(row, policy, now: datetime) -> str:
    from schoolgate.storage.exceptions import to_plain

    wording = words.wording_of(policy)
    return words.exception_words(to_plain(row), now=now, tz=site_tz(policy, None), wording=wording)


def exception_status(row, now: datetime) -> str:
    """``revoked``, ``ended``, ``future`` (starts later) or ``active``."""
    if row.revoked_at is not None:
        return "revoked"
    if row.ends is not None and row.ends <= now:
        return "ended"
    return "future" if row.starts > now else "active"
