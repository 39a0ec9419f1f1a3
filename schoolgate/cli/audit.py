"""``schoolgate audit``: the audit trail, newest first: who changed what (exceptions, staff
accounts, bans, portal decisions, sign-ins, list updates, purges), with the operating system
user beside the actor for changes made with the ``schoolgate`` command.

Wired into :mod:`schoolgate.cli` with ``register(sub, add_common_options)``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any


def audit_json(row) -> dict[str, Any]:
    return {
        "id": row.id,
        "at": row.at.isoformat(),
        "actor": row.actor,
        "os_user": row.os_user,
        "action": row.action,
        "subject": row.subject,
        "detail": row.detail,
    }


def cmd_audit(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from schoolgate.cli.common import CommandError, load, open_db
    from schoolgate.storage.events import parse_since
    from schoolgate.storage.models import AuditRow

    policy = load(args)
    try:
        since = parse_since(args.since, policy)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    query = select(AuditRow)
    if since is not None:
        query = query.where(AuditRow.at >= since)
    if args.actor:
        query = query.where(AuditRow.actor == args.actor)
    if args.action:
        query = query.where(AuditRow.action.startswith(args.action, autoescape=True))
    query = query.order_by(AuditRow.at.desc(), AuditRow.id.desc()).limit(max(args.limit, 1))
    with open_db(policy)() as session:
        rows = [audit_json(row) for row in session.scalars(query)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no audit entries" + (" in that period" if since else ""))
    for row in rows:
        by = row["actor"] + (f" (os user {row['os_user']})" if row["os_user"] else "")
        detail = f": {row['detail']}" if row["detail"] else ""
        print(f"{row['at']}  {row['action']:<24} {by}  {row['subject']}{detail}")
    return 0


def register(
    sub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]
) -> None:
    p = sub.add_parser("audit", help="the audit trail: who changed what, newest first")
    common(p)
    p.add_argument("--since", help="ISO-8601 time or a duration such as 2h, 30m, 7d")
    p.add_argument("--actor", help="only what this person (--by, or staff user) did")
    p.add_argument("--action", help="only actions starting with this (exception., ban., staff.)")
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--json", action="store_true", help="a JSON array of entries")
    p.set_defaults(handler=cmd_audit)
