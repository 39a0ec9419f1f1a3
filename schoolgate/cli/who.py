"""``schoolgate who [ADDRESS|USER] [--json] [--history]``: who each address is bound to, by
which identity source, until when (the bindings table every gateway and worker reads)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any


def _when(value: datetime | None, now: datetime, tz) -> str:
    from schoolgate.core import words

    return words.moment(value, now, tz) if value is not None else "-"


def cmd_who(args: argparse.Namespace) -> int:
    from schoolgate.cli.common import EXIT_OK, load, open_db
    from schoolgate.cli.words import site_tz
    from schoolgate.storage.bindings import lookup

    policy = load(args)
    now = datetime.now(UTC)
    with open_db(policy, args)() as db:
        found = lookup(db, args.target, history=args.history, now=now, limit=args.limit)
    if args.json:
        print(json.dumps([b.to_json() for b in found], indent=2))
        return EXIT_OK
    if not found:
        what = args.target or "any address"
        print(f"nobody is bound to {what}" if not args.history else f"no bindings for {what}")
        if not _sources(policy):
            print(
                "schoolgate: no identity source is configured (identity.sources)", file=sys.stderr
            )
        return EXIT_OK
    tz = site_tz(policy, None)
    print(f"{'address':<16} {'who':<18} {'source':<10} {'device':<20} {'since':<18} until")
    for b in found:
        until = _when(b.expires_at, now, tz)
        if b.ended_at is not None:
            until = f"ended {_when(b.ended_at, now, tz)}: {b.end_reason or ''}"
        print(
            f"{b.address:<16} {b.who():<18} {b.source:<10} {(b.device or '-'):<20} "
            f"{_when(b.started_at, now, tz):<18} {until}"
        )
    return EXIT_OK


def _sources(policy) -> tuple[str, ...]:
    from schoolgate.core.config import identity_sources_of

    return identity_sources_of(policy).sources


def register(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("who", help="who is on which address (RADIUS, sign-in, single sign-on)")
    common(p)
    p.add_argument("target", nargs="?", metavar="ADDRESS|USER", help="one address or one user")
    p.add_argument("--json", action="store_true", help="a JSON array of bindings")
    p.add_argument("--history", action="store_true", help="also the bindings that ended, and why")
    p.add_argument("--limit", type=int, default=500)
    p.set_defaults(handler=cmd_who)
