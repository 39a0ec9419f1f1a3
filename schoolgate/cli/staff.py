"""``schoolgate staff add|passwd|list``: the portal's staff accounts.

Wired into :mod:`schoolgate.cli` with ``register(subparsers, add_common_options)``. Each change
is in the audit trail with ``--by`` (default ``cli``) and the operating system user. Passwords
are read from the terminal (asked twice) or, with ``--password-stdin``, one line from standard
input (for scripts); never from the command line, where ``ps`` and shell history would show
them.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable

from schoolgate.core.staff_signin import STAFF_ROLES


def register(subparsers, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``staff`` to the ``schoolgate`` command; ``common`` adds --config/--data-dir."""
    staff = subparsers.add_parser("staff", help="portal staff accounts (add, passwd, list)")
    staff_sub = staff.add_subparsers(dest="staff_command", metavar="ACTION", required=True)

    p = staff_sub.add_parser("add", help="make a staff account for the portal")
    common(p)
    p.add_argument("username")
    p.add_argument(
        "--role",
        action="append",
        required=True,
        choices=STAFF_ROLES,
        help="it_support, slt, teacher, network_manager or dsl (repeat for several)",
    )
    p.add_argument("--group", action="append", default=[], help="a teaching group (repeat)")
    p.add_argument("--email", default="", help="for notifications")
    p.add_argument("--name", default="", help="the name shown in the portal")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.add_argument("--by", default="cli", help="who makes the account (kept in the audit trail)")
    p.set_defaults(handler=cmd_staff, func=cmd_staff)

    p = staff_sub.add_parser("passwd", help="set a staff member's password")
    common(p)
    p.add_argument("username")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.add_argument("--by", default="cli", help="who sets it (kept in the audit trail)")
    p.set_defaults(handler=cmd_staff, func=cmd_staff)

    p = staff_sub.add_parser(
        "reset-two-factor",
        help="turn two-factor sign-in off for an account (a lost phone); it is set up again "
        "at the next sign-in when the role needs it, or from the staff home page",
    )
    common(p)
    p.add_argument("username")
    p.set_defaults(handler=cmd_staff, func=cmd_staff)

    p = staff_sub.add_parser("list", help="list staff accounts")
    common(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_staff, func=cmd_staff)


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("New password: ")
    if getpass.getpass("Again: ") != first:
        raise ValueError("the two passwords differ")
    return first


def cmd_staff(args: argparse.Namespace) -> int:
    from schoolgate.cli.common import CommandError, load, open_db
    from schoolgate.portal.auth import AccountError, add_staff, set_password
    from schoolgate.storage.models import StaffRow

    for name in ("config", "data_dir"):
        if not hasattr(args, name):
            setattr(args, name, None)
    try:
        sessions = open_db(load(args), args, changes=args.staff_command != "list")
        with sessions() as session:
            if args.staff_command == "list":
                rows = session.query(StaffRow).order_by(StaffRow.username).all()
                if args.json:
                    print(json.dumps([_row_json(row) for row in rows], indent=2))
                    return 0
                if not rows:
                    print("no staff accounts")
                for row in rows:
                    state = "" if row.active else "  (disabled)"
                    print(
                        f"{row.username:<20} {','.join(row.role_list):<30} {row.groups or '-':<20} "
                        f"{row.email or '-'}{state}"
                    )
                return 0
            if args.staff_command == "reset-two-factor":
                return _reset_two_factor(session, args.username)
            password = _password(args)
            if args.staff_command == "add":
                add_staff(
                    session,
                    username=args.username,
                    password=password,
                    roles=args.role,
                    groups=args.group,
                    email=args.email,
                    display_name=args.name,
                )
                action = "staff.add"
            else:
                set_password(session, args.username, password)
                action = "staff.passwd"
            from schoolgate.storage.exceptions import audit

            audit(session, args.by or "cli", action, f"staff {args.username.lower()}", "")
            session.commit()
            print(f"{action.split('.')[1]}: {args.username.lower()}: done")
            return 0
    except (AccountError, ValueError, CommandError) as exc:
        print(f"schoolgate: {exc}", file=sys.stderr)
        return 1


def _reset_two_factor(session, username: str) -> int:
    from schoolgate.cli.common import CommandError
    from schoolgate.portal import totp
    from schoolgate.portal.auth import find_staff
    from schoolgate.storage.exceptions import audit

    row = find_staff(session, username)
    if row is None:
        raise CommandError(f"no staff account {username!r}")
    was_on = totp.is_enabled(row)
    totp.disable(row)
    audit(session, "cli", "staff.totp_reset", f"staff {row.username}", "two-factor sign-in off")
    session.commit()
    if was_on:
        print(f"two-factor sign-in turned off for {row.username}: they set it up again at their "
              "next sign-in (when their role needs it) or from the staff home page")  # fmt: skip
    else:
        print(f"two-factor sign-in was not on for {row.username}: nothing to reset")
    return 0


def _row_json(row) -> dict:
    return {
        "username": row.username,
        "name": row.display_name,
        "email": row.email,
        "roles": row.role_list,
        "groups": row.group_list,
        "active": row.active,
        "two_factor": bool(row.totp_enabled_at and row.totp_secret),
        "created_at": row.created_at.isoformat(),
    }
