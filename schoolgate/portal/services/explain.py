"""The console's ``explain`` form: the decision for a URL and a person, exactly as
``schoolgate explain`` prints it (the same code makes both: the identity given by user, role or
address, the time in the site's zone, the exceptions in force at that time)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy.orm import Session

FIELDS = ("url", "user", "role", "group", "site", "ip", "at", "method", "date_of_birth")


class ExplainError(ValueError):
    """The question cannot be answered as asked (the message says why, as the CLI would)."""


@dataclass(frozen=True)
class Explained:
    lines: list[str]
    json: dict[str, Any]
    allowed: bool


def explain(session: Session, policy: Any, form: Any, *, now: datetime) -> Explained:
    """``form``: a mapping with the command's options (``url``, ``user``, ``role``, ``group``,
    ``site``, ``ip``, ``at``, ``method``, ``date_of_birth``, ``host_only``)."""
    from schoolgate.core.explain import (
        InputError,
        decision_lines,
        facts_for_url,
        identity_override,
        parse_when,
    )
    from schoolgate.core.policy import ExceptionSet
    from schoolgate.storage.exceptions import exceptions_current

    values = {name: (form.get(name) or "").strip()[:2000] for name in FIELDS}
    args = SimpleNamespace(**{k: (v or None) for k, v in values.items()})
    if not args.url:
        raise ExplainError("give a URL (or a site name)")
    if not (args.user or args.role or args.ip):
        raise ExplainError("say whose request it is: a user name, a role or an address")
    try:
        override = identity_override(args, policy)
        at = parse_when(args.at, policy, override.site if override else None) if args.at else now
        facts = facts_for_url(
            args.url,
            at=at,
            method=args.method or "GET",
            client_ip=args.ip,
            user=args.user,
            host_only=bool(form.get("host_only")),
        )
    except InputError as exc:
        raise ExplainError(str(exc)) from None
    exceptions = ExceptionSet(exceptions_current(session, at))
    decision = policy.decide(facts, exceptions, identity=override)
    lines = decision_lines(decision, policy, args.url, None if args.at else now)
    return Explained(
        lines=lines,
        json={"url": args.url, **decision.to_json()},
        allowed=decision.allowed,
    )


__all__ = ["ExplainError", "Explained", "explain"]
