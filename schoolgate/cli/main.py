"""The ``schoolgate`` command: run the gateway, check the config, explain decisions, manage
exceptions, list recorded events. Every command takes ``--config`` and ``--data-dir``, so it
works on the same policy and database as the running gateway; without them it finds them as the
gateway does (:mod:`schoolgate.core.locations`). A command never creates a new database unless
given ``--init`` (the gateway creates it on its first start), and one that changes something
says which config and database it used.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from schoolgate.cli.common import (
    EXIT_FAIL,
    EXIT_OK,
    CommandError,
    add_common_options,
    facts_for_url,
    load,
    open_db,
    parse_when,
    where_described,
)
from schoolgate.cli.words import (
    describe_exception,
    exception_status,
    identity_override,
    print_decision,
    site_tz,
)
from schoolgate.core import words
from schoolgate.core.configfile import ConfigError
from schoolgate.core.model import Decision, RequestFacts


# -- check-config ------------------------------------------------------------------------------
def cmd_check_config(args: argparse.Namespace) -> int:
    from schoolgate.core.config import load_policy
    from schoolgate.core.locations import LocationError, locate
    from schoolgate.storage import check_database_url

    try:
        where = locate(args.path or args.config, args.data_dir)
    except LocationError as exc:
        raise CommandError(str(exc)) from None
    try:
        policy = load_policy(
            where.config.path,
            data_dir=where.data_dir.path,
            check_database_url=check_database_url,
        )
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        print(f"{len(exc.issues)} error(s); the configuration was not loaded.", file=sys.stderr)
        return EXIT_FAIL
    from schoolgate.core.subscriptions import list_warnings

    stats = policy.matcher.stats()
    for warning in policy.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for line in list_warnings(policy):
        if not any(line in warning for warning in policy.warnings):
            print(f"warning: {line}", file=sys.stderr)
    print(
        f"OK: {policy.settings.config_path}"
        + (f" ({len(policy.warnings)} warning(s))" if policy.warnings else "")
    )
    print(f"  sites: {', '.join(policy.sites)}; roles: {', '.join(policy.roles)}")
    written = policy.rule_count if policy.rule_count is not None else len(policy.rules)
    print(
        f"  categories: {', '.join(policy.categories)}; rules: {written} "
        f"({len(policy.rules)} role x window x category combinations)"
    )
    print(f"  list entries: {json.dumps(stats)}")
    from schoolgate.portal.services.console import switched_off_for_url

    for item in switched_off_for_url(policy):
        print(f"switched off: {item.what}\n  {item.fix}", file=sys.stderr)
    return EXIT_OK


# -- explain ------------------------------------------------------------------------------
def cmd_explain(args: argparse.Namespace) -> int:
    if not (args.user or args.role or args.ip):
        raise CommandError("say whose request it is: --user NAME, --role ROLE or --ip ADDR")
    if bool(args.url) == bool(args.batch):
        raise CommandError("give either a URL or --batch FILE")
    policy = load(args)
    override = identity_override(args, policy)
    site = override.site if override else None
    at = parse_when(args.at, policy, site)
    from schoolgate.core.policy import ExceptionSet
    from schoolgate.storage.db import database_exists
    from schoolgate.storage.exceptions import exceptions_current

    detected: dict[str, str] = {}
    if getattr(args, "init", False) or database_exists(policy.settings.database_url):
        from schoolgate.storage.detected import detected_hosts

        sessions = open_db(policy, args)
        with sessions() as session:
            exceptions = ExceptionSet(exceptions_current(session, at))
            detected = {row.host: row.category for row in detected_hosts(session)}
        if args.ip and not args.user and override is None:
            _use_live_bindings(policy, sessions)
    else:  # before the gateway's first start: the policy alone still answers
        where = where_described(args, policy)
        print(f"schoolgate: no database yet ({where}): no exceptions applied", file=sys.stderr)
        exceptions = ExceptionSet()

    notes: dict[str, str] = {}

    def decide(url: str) -> tuple[Decision, RequestFacts]:
        facts = facts_for_url(
            url,
            at=at,
            method=args.method,
            client_ip=args.ip,
            user=args.user,
            host_only=args.host_only,
        )
        # What the gateway sees: only the host name of HTTPS it does not decrypt.
        identity = override or policy.identify(facts.client_ip, facts.user)
        why = policy.host_only_reason(identity, facts)
        notes[url] = why or ""
        if why:
            facts = dataclasses.replace(facts, path=None, method=None)
        return policy.decide(facts, exceptions, identity=override, detected=detected), facts

    def seen(url: str) -> dict:
        why = notes.get(url)
        return {"decided_on": "host" if why else "request", "host_only_reason": why or None}

    if args.batch:
        stream = sys.stdin if args.batch == "-" else _open_text(args.batch)
        for number, line in enumerate(stream, 1):
            url = line.strip()
            if not url or url.startswith("#"):
                continue
            try:
                decision, _ = decide(url)
            except CommandError as exc:
                print(json.dumps({"url": url, "line": number, "error": str(exc)}))
                continue
            print(json.dumps({"url": url, **decision.to_json(), **seen(url)}))
        return EXIT_OK
    decision, _ = decide(args.url)
    if args.json:
        print(json.dumps({"url": args.url, **decision.to_json(), **seen(args.url)}, indent=2))
    else:
        print_decision(decision, policy, args.url, None if args.at else at)
        if notes.get(args.url):
            print(f"  seen as:  the host name only ({notes[args.url]}): the gateway decides on "
                  "the host alone, and this is that decision")  # fmt: skip
    return EXIT_OK


def _use_live_bindings(policy, sessions) -> None:
    """``explain --ip``: decide on who the address is bound to now (RADIUS, sign-in, single
    sign-on), as the gateway would."""
    from schoolgate.bindings.live import read_once
    from schoolgate.core.config import identity_sources_of

    sources = identity_sources_of(policy)
    if not (sources.sources or sources.dhcp):
        return
    try:
        policy.resolver.use_live(read_once(sources, sessions))
    except RuntimeError as exc:
        raise CommandError(str(exc)) from None


def _open_text(path: str):
    try:
        return open(path, encoding="utf-8")  # noqa: SIM115 - read to the end by the caller
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}") from None


# -- timetable ------------------------------------------------------------------------------
def cmd_timetable(args: argparse.Namespace) -> int:
    policy = load(args)
    site = args.site or policy.resolver.default_site
    if site not in policy.timetables:
        raise CommandError(f"unknown site {site!r}; sites are {', '.join(policy.sites)}")
    timetable = policy.timetables[site]
    if args.date:
        try:
            day = date.fromisoformat(args.date)
        except ValueError:
            raise CommandError(f"not a date: {args.date!r} (e.g. 2026-11-24)") from None
    else:
        day = datetime.now(timetable.tz).date()
    windows = timetable.windows_on(day)
    if args.json:
        print(
            json.dumps(
                {
                    "site": site,
                    "date": day.isoformat(),
                    "day_type": timetable.day_type(day),
                    "windows": [w.to_json() for w in windows],
                },
                indent=2,
            )
        )
        return EXIT_OK
    print(f"{site}: {day:%A %d %B %Y} ({timetable.day_type(day)}, {timetable.tz.key})")
    for w in windows:
        start = w.start.astimezone(timetable.tz)
        end = w.end.astimezone(timetable.tz)
        end_text = end.strftime("%H:%M") if end.date() == day else end.strftime("%H:%M %a")
        start_text = start.strftime("%H:%M") if start.date() == day else start.strftime("%H:%M %a")
        print(f"  {start_text:>9} - {end_text:<9} {w.kind:<14} {w.name}")
    return EXIT_OK


# -- allow (exceptions) --------------------------------------------------------------------
def _scope(text: str) -> tuple[str, str]:
    scope, _, value = text.partition("=")
    return scope.strip().lower(), value.strip()


def cmd_allow_add(args: argparse.Namespace) -> int:
    from schoolgate.storage.exceptions import ExceptionRequestError, add_exception

    policy = load(args)
    targets = {"host": args.host, "page": args.page, "platform": args.platform,
               "category": args.category}  # fmt: skip
    given = [(kind, value) for kind, value in targets.items() if value]
    if len(given) != 1:
        raise CommandError("give one of --host HOST, --page HOST/PATH, --platform KEY, "
                           "--category NAME")  # fmt: skip
    scope, value = _scope(args.scope)
    starts = parse_when(args.start, policy) if args.start else datetime.now(UTC)
    if args.permanent:
        ends = None
    elif args.until:
        ends = parse_when(args.until, policy)
    elif args.minutes:
        ends = starts + timedelta(minutes=args.minutes)
    else:
        raise CommandError("say how long: --until TIME, --minutes N or --permanent")
    with open_db(policy, args, changes=True)() as session:
        try:
            row = add_exception(
                session,
                policy,
                scope=scope,
                scope_value=value,
                target_kind=given[0][0],
                target=given[0][1],
                starts=starts,
                ends=ends,
                created_by=args.by,
                reason=args.reason or "",
            )
        except ExceptionRequestError as exc:
            raise CommandError(str(exc)) from None
        session.commit()
        print(f"added exception #{row.id}: {describe_exception(row, policy, datetime.now(UTC))}")
    return EXIT_OK


def _row_json(row, now: datetime) -> dict[str, Any]:
    return {
        "id": row.id,
        "kind": row.kind,
        "scope": row.scope,
        "scope_value": row.scope_value,
        "target_kind": row.target_kind,
        "target": row.target,
        "starts": row.starts.isoformat(),
        "ends": row.ends.isoformat() if row.ends else None,
        "created_by": row.created_by,
        "reason": row.reason,
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
        "revoked_by": row.revoked_by,
        "status": exception_status(row, now),
    }


def cmd_allow_list(args: argparse.Namespace) -> int:
    from schoolgate.storage.exceptions import list_exceptions

    policy = load(args)
    now = datetime.now(UTC)
    tz = site_tz(policy, None)
    with open_db(policy, args)() as session:
        rows = list_exceptions(session, at=None if args.all else now, revoked=args.all)
        if not args.all:
            rows = [r for r in rows if r.ends is None or r.ends > now]
        if args.json:
            print(json.dumps([_row_json(r, now) for r in rows], indent=2))
            return EXIT_OK
        if not rows:
            print("no exceptions in force" if not args.all else "no exceptions recorded")
        for row in rows:
            status = exception_status(row, now)
            mark = ""
            if status == "revoked":
                by = f" by {row.revoked_by}" if row.revoked_by else ""
                mark = f"[REVOKED {words.moment(row.revoked_at, now, tz)}{by}]  "
            elif status == "ended":
                mark = "[ENDED]  "
            elif status == "future":
                mark = "[LATER]  "
            reason = f"  ({row.reason})" if row.reason else ""
            print(f"#{row.id}  {mark}{describe_exception(row, policy, now)}{reason}")
    return EXIT_OK


def cmd_allow_revoke(args: argparse.Namespace) -> int:
    from schoolgate.storage.exceptions import ExceptionRequestError, revoke_exception

    policy = load(args)
    with open_db(policy, args, changes=True)() as session:
        try:
            row = revoke_exception(session, args.id, by=args.by, reason=args.reason or "")
        except ExceptionRequestError as exc:
            raise CommandError(str(exc)) from None
        session.commit()
        print(f"revoked exception #{row.id}")
    return EXIT_OK


# -- parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="schoolgate", description=__doc__.split("\n\n")[0])
    add_common_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("check-config", help="validate the configuration and print every error")
    add_common_options(p)
    p.add_argument("path", nargs="?", type=Path, help="config file (default: --config)")
    p.set_defaults(handler=cmd_check_config)

    p = sub.add_parser("explain", help="why a URL is allowed or blocked for someone")
    add_common_options(p)
    p.add_argument("url", nargs="?")
    p.add_argument("--batch", metavar="FILE", help="one URL a line ('-' for standard input)")
    p.add_argument("--user", help="a user name (roster)")
    p.add_argument("--role", help="decide for this role directly")
    p.add_argument("--group", help="with --role: the class or year group")
    p.add_argument("--site", help="with --role: the site (default: the default site)")
    p.add_argument("--date-of-birth", help="with --role: for age checks (YYYY-MM-DD)")
    p.add_argument("--ip", help="the client address")
    p.add_argument("--at", help="ISO-8601 time (default: now; no zone = the site's local time)")
    p.add_argument("--method", default="GET")
    p.add_argument(
        "--host-only",
        action="store_true",
        help="decide as for HTTPS that is not intercepted (site name only)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_explain)

    p = sub.add_parser("timetable", help="print a day's windows")
    add_common_options(p)
    p.add_argument("--date", help="YYYY-MM-DD (default: today)")
    p.add_argument("--site")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_timetable)

    allow = sub.add_parser("allow", help="time-limited exceptions (create, list, revoke)")
    allow_sub = allow.add_subparsers(dest="allow_command", metavar="ACTION", required=True)
    p = allow_sub.add_parser("add", help="open a host or category for someone for a time")
    add_common_options(p)
    p.add_argument("--host", help="a site (a platform's site opens its family)")
    p.add_argument("--page", help="one page, e.g. tiktok.com/@bbcnews (docs/lists.md)")
    p.add_argument("--platform", help="a platform by its key in the platforms file")
    p.add_argument("--category")
    p.add_argument(
        "--for",
        dest="scope",
        required=True,
        metavar="SCOPE[=VALUE]",
        help="user=NAME, group=9B, role=student, network=CIDR, site=NAME, everyone",
    )
    p.add_argument("--start", help="ISO-8601 (default: now)")
    p.add_argument("--until", help="ISO-8601 end")
    p.add_argument("--minutes", type=int)
    p.add_argument("--permanent", action="store_true")
    p.add_argument("--by", required=True, help="who grants it (kept in the audit trail)")
    p.add_argument("--reason", help="why (curriculum activity, erroneous block, ...)")
    p.set_defaults(handler=cmd_allow_add)
    p = allow_sub.add_parser("list", help="exceptions in force")
    add_common_options(p)
    p.add_argument(
        "--all", action="store_true", help="also those ended, revoked or starting later, marked"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_allow_list)
    p = allow_sub.add_parser("revoke", help="end an exception now")
    add_common_options(p)
    p.add_argument("id", type=int)
    p.add_argument("--by", required=True)
    p.add_argument("--reason")
    p.set_defaults(handler=cmd_allow_revoke)

    p = sub.add_parser("run", help="run the gateway (mitmproxy with schoolgate's addons)")
    add_common_options(p)
    p.add_argument("--listen-host", default="0.0.0.0")
    p.add_argument("--listen-port", type=int, default=8080)
    p.add_argument(
        "--mode",
        default="regular",
        help="mitmproxy mode: regular (explicit proxy, default), transparent, ...",
    )
    p.add_argument("--quiet", action="store_true", help="do not print one line per request")
    p.add_argument(
        "--set",
        action="append",
        metavar="NAME=VALUE",
        help="a mitmproxy option (repeatable), e.g. --set proxyauth=@/etc/schoolgate/htpasswd",
    )
    p.add_argument(
        "--portal-port",
        type=int,
        metavar="PORT",
        help="also serve the portal on this port (on --portal-host) for an admin network; "
        "there the proxy login is not known, so requesters are identified by address only",
    )
    p.add_argument(
        "--portal-host",
        metavar="ADDRESS",
        help="the IP address the --portal-port listens on (default 127.0.0.1, loopback only; "
        "the admin network's address of this host, or 0.0.0.0 / :: for all)",
    )
    p.add_argument(
        "--workers",
        type=_workers_count,
        default=1,
        metavar="N|auto",
        help="run N gateway processes on the one listening port (SO_REUSEPORT; the kernel "
        "spreads connections over them), 'auto' for one per core; default 1",
    )
    p.add_argument(
        "--pin-workers",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with --workers: keep each worker on a core of its own (default: yes when there "
        "are at least as many cores as workers; --pin-workers pins them in turn even then)",
    )
    p.add_argument(
        "--steer-connections",
        action="store_true",
        help="with --workers: give each new connection to the worker on the core that "
        "received it (SO_INCOMING_CPU, Linux 6.2+) instead of by hash; for network cards "
        "that spread receiving over the cores (several queues, or RPS), not for one queue",
    )
    # A worker under `--workers`: set by the supervisor, not by people.
    p.add_argument("--worker", type=_worker_slot, help=argparse.SUPPRESS)
    p.add_argument("--worker-cpu", type=int, help=argparse.SUPPRESS)
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("events", help="list what the gateway recorded")
    add_common_options(p)
    p.add_argument("--since", help="ISO-8601 time or a duration such as 2h, 30m, 7d")
    p.add_argument("--kind", help="block, allow, error, circumvention, search, page_risk, ...")
    p.add_argument("--user")
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--json", action="store_true", help="a JSON array of events")
    p.add_argument(
        "--follow",
        action="store_true",
        help="then keep printing events as they are recorded, until interrupted (with --json: "
        "one JSON object a line)",
    )
    p.set_defaults(handler=cmd_events)

    # Commands that live beside their subsystem.
    from schoolgate.cli.audit import register as register_audit
    from schoolgate.cli.bans import register as register_bans
    from schoolgate.cli.opinion import register as register_opinion
    from schoolgate.cli.ops import register as register_ops
    from schoolgate.cli.reader import register as register_reader
    from schoolgate.cli.staff import register as register_staff
    from schoolgate.cli.who import register as register_who

    register_bans(sub, add_common_options)
    register_who(sub, add_common_options)
    register_staff(sub, add_common_options)
    register_ops(sub, add_common_options)
    register_audit(sub, add_common_options)
    register_opinion(sub, add_common_options)
    register_reader(sub, add_common_options)
    return parser


def _workers_count(text: str) -> int:
    # Imported here: the gateway package loads mitmproxy, which other commands do not need.
    from schoolgate.gateway.workers import parse_workers

    return parse_workers(text)


def _worker_slot(text: str) -> tuple[int, int]:
    from schoolgate.gateway.workers import parse_worker

    return parse_worker(text)


def cmd_run(args: argparse.Namespace) -> int:
    from schoolgate.gateway.runner import run_gateway

    return run_gateway(args)


def cmd_events(args: argparse.Namespace) -> int:
    from schoolgate.storage.events import follow_events, latest_id, list_events, parse_since

    policy = load(args)
    try:
        since = parse_since(args.since, policy)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    sessions = open_db(policy, args)
    with sessions() as session:
        rows = list_events(session, since=since, kind=args.kind, user=args.user, limit=args.limit)
        last = latest_id(session)
    tz = site_tz(policy, None)
    if args.follow:
        # One JSON object a line (an array cannot be streamed), or a line of words each.
        for row in rows:
            _print_event(row, tz, args.json)
        sys.stdout.flush()
        for row in follow_events(sessions, after=last, kind=args.kind, user=args.user):
            _print_event(row, tz, args.json)
            sys.stdout.flush()
        return EXIT_OK
    if args.json:
        print(json.dumps([row for row in rows], indent=2))
        return EXIT_OK
    if not rows:
        print("no events recorded" + (" in that period" if since else ""))
    for row in rows:
        _print_event(row, tz, False)
    return EXIT_OK


def _print_event(row: dict, tz, as_json: bool) -> None:
    if as_json:
        print(json.dumps(row))
        return
    who = row["user"] or row["client_ip"] or "-"
    target = row["url"] or row["host"] or "-"
    at = words.moment(datetime.fromisoformat(row["at"]), datetime.now(UTC), tz, seconds=True)
    print(
        f"{at:<22}  {row['kind']:<13} {who:<16} {row['role'] or '-':<8} "
        f"{row['category'] or '-':<14} {target}  [{row['ref']}] {row['reason'] or ''}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except CommandError as exc:
        print(f"schoolgate: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `schoolgate events | head`: the reader has gone; not an error
        sys.stderr.close()
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
