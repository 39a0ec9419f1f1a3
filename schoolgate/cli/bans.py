"""``schoolgate bans list|show|lift`` and ``schoolgate supervise``.

Wired into :mod:`schoolgate.cli` with ``register(sub, add_common_options)``. Every change goes
through :mod:`schoolgate.storage.bans`, which keeps it in the ban audit trail; a running gateway
picks it up within ``schoolgate_bans_interval`` seconds.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from datetime import UTC, datetime

from schoolgate.core import words


def _fail(message: str):
    from schoolgate.cli.common import CommandError

    return CommandError(message)


def _open(args: argparse.Namespace, *, changes: bool = False):
    from schoolgate.cli.common import load, open_db

    policy = load(args)
    return policy, open_db(policy, args, changes=changes)


def _settings(policy):
    from schoolgate.core.sanctions import SanctionSettings

    return policy.settings.sanctions or SanctionSettings()


def _tz(policy):
    return policy.timetables[policy.resolver.default_site].tz


def _local(value: datetime | None, policy, now: datetime | None = None) -> str:
    """A time in words in the school's zone: ``today at 15:10``."""
    if value is None:
        return "no end"
    return words.moment(value, now or datetime.now(UTC), _tz(policy))


def _iso(text: str | None, policy) -> str:
    """An ISO time from the JSON form, in words."""
    return _local(datetime.fromisoformat(text), policy) if text else "-"


def _line(row, policy, now: datetime) -> str:
    from schoolgate.storage.bans import status_of

    if row.ends is None:
        lasts = "no end"
    elif row.ends > now:
        lasts = words.until(row.ends, now, _tz(policy))
    else:
        lasts = f"ended {_local(row.ends, policy, now)}"
    return (
        f"#{row.id:<5} {status_of(row, now):<9} {row.kind:<8} {row.subject:<28} "
        f"since {_local(row.starts, policy, now)}, {lasts}  {row.reason}"
    )


def cmd_bans_list(args: argparse.Namespace) -> int:
    from schoolgate.storage.bans import ban_json, list_bans

    policy, sessions = _open(args)
    now = datetime.now(UTC)
    with sessions() as session:
        rows = list_bans(session, now=now, include_ended=args.all, subject=args.subject)
        if args.json:
            print(json.dumps([ban_json(r, now) for r in rows], indent=2))
            return 0
        if not rows:
            print("no bans in force" if not args.all else "no bans recorded")
        for row in rows:
            print(_line(row, policy, now))
    return 0


def cmd_bans_show(args: argparse.Namespace) -> int:
    from schoolgate.storage.bans import (
        BanError,
        audit_json,
        ban_history,
        ban_json,
        get_ban,
        supervision_json,
        supervisions_of,
    )
    from schoolgate.storage.events import event_json

    policy, sessions = _open(args)
    now = datetime.now(UTC)
    with sessions() as session:
        try:
            row = get_ban(session, args.id)
        except BanError as exc:
            raise _fail(str(exc)) from None
        data = ban_json(row, now)
        data["history"] = [audit_json(a) for a in ban_history(session, row.id)]
        data["supervision_sessions"] = [
            supervision_json(s) for s in supervisions_of(session, row.id)
        ]
        from sqlalchemy import select

        from schoolgate.storage.models import EventRow

        refs = data["events"]
        evidence = []
        if refs:
            query = select(EventRow).where(EventRow.ref.in_(refs)).order_by(EventRow.at)
            evidence = [event_json(e) for e in session.scalars(query)]
        data["evidence"] = evidence
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(
        f"ban #{data['id']} ({data['ref']}): {data['kind']} of {data['subject']}, {data['status']}"
    )
    print(f"  from:    {_local(row.starts, policy)}")
    print(f"  until:   {_local(row.ends, policy)}")
    print(f"  reason:  {data['reason']}")
    print(f"  made by: {data['created_by']}")
    if data["lifted_at"]:
        print(
            f"  lifted:  {_local(row.lifted_at, policy)} by {data['lifted_by']}: "
            f"{data['lift_reason']}"
        )
    if evidence:
        print("  evidence:")
        for e in evidence:
            target = e["url"] or e["host"] or "-"
            at = _iso(e["at"], policy)
            print(f"    {at}  {e['client_ip'] or '-'}  {target}  [{e['ref']}] {e['reason']}")
    if data["supervision_sessions"]:
        print("  supervision sessions:")
        for s in data["supervision_sessions"]:
            span = f"{_iso(s['starts'], policy)} to {_iso(s['ends'], policy)}"
            print(f"    #{s['id']} {span} by {s['staff']}: {s['reason']}")
    print("  history:")
    for a in data["history"]:
        by = f"{a['actor']} (os user {a['os_user']})" if a["os_user"] else a["actor"]
        print(f"    {_iso(a['at'], policy)}  {a['action']:<18} {by}: {a['detail']}")
    return 0


def cmd_bans_lift(args: argparse.Namespace) -> int:
    from schoolgate.storage.bans import BanError, ban_json, lift_ban

    _, sessions = _open(args, changes=True)
    with sessions() as session:
        try:
            row = lift_ban(session, args.id, by=args.by, reason=args.reason or "")
        except BanError as exc:
            raise _fail(str(exc)) from None
        session.commit()
        if args.json:
            print(json.dumps(ban_json(row), indent=2))
        else:
            print(f"lifted {row.kind} #{row.id} of {row.subject}")
    return 0


def cmd_supervise(args: argparse.Namespace) -> int:
    from schoolgate.storage.bans import BanError, start_supervision, supervision_json

    policy, sessions = _open(args, changes=True)
    sanctions = _settings(policy)
    with sessions() as session:
        try:
            row = start_supervision(
                session,
                args.user,
                by=args.by,
                minutes=args.minutes,
                reason=args.reason or "",
                max_minutes=sanctions.supervision_max_minutes,
            )
        except BanError as exc:
            raise _fail(str(exc)) from None
        session.commit()
        if args.json:
            print(json.dumps(supervision_json(row), indent=2))
        else:
            print(
                f"supervision session #{row.id}: {row.subject} supervised by {row.staff} "
                f"{words.until(row.ends, datetime.now(UTC), _tz(policy))}"
            )
    return 0


def register(
    sub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Add ``bans`` and ``supervise`` to the ``schoolgate`` command's subparsers."""
    bans = sub.add_parser("bans", help="circumvention lockouts and bans (list, show, lift)")
    bans_sub = bans.add_subparsers(dest="bans_command", metavar="ACTION", required=True)
    p = bans_sub.add_parser("list", help="bans and lockouts in force")
    common(p)
    p.add_argument("--all", action="store_true", help="include ended and lifted ones")
    p.add_argument("--subject", help="only this user (or device:ADDRESS)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_bans_list)
    p = bans_sub.add_parser("show", help="one ban: evidence, supervision sessions, history")
    common(p)
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_bans_show)
    p = bans_sub.add_parser("lift", help="end a ban early (IT Support or SLT)")
    common(p)
    p.add_argument("id", type=int)
    p.add_argument("--by", required=True, help="who lifts it (kept in the audit trail)")
    p.add_argument("--reason", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_bans_lift)

    p = sub.add_parser("supervise", help="let a banned user browse under a member of staff")
    common(p)
    p.add_argument("user", help="the banned user (or device:ADDRESS)")
    p.add_argument("--by", required=True, help="the supervising member of staff")
    p.add_argument("--minutes", type=int, required=True)
    p.add_argument("--reason", required=True, help="the lesson or activity supervised")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_supervise)
