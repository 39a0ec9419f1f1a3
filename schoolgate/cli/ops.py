"""Operations commands: reports, subject access and erasure, list updates, purge, jobs.

Wired into ``schoolgate.cli.main.build_parser`` with ``ops_cli.register(sub, add_common_options)``.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path
from typing import Any

from schoolgate.core.configfile import ConfigError


def _cli():
    import schoolgate.cli.common

    return schoolgate.cli.common


def _fail(message: str) -> Exception:
    return _cli().CommandError(message)


def _context(args: argparse.Namespace, *, progress: bool | None = False, changes: bool = False):
    from schoolgate.jobs.scheduler import JobContext

    cli = _cli()
    policy = cli.load(args)
    sessions = cli.open_db(policy, args, changes=changes)
    return policy, JobContext(policy=lambda: policy, sessions=sessions, progress=progress)


# -- report -------------------------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    from schoolgate.jobs.scheduler import reports_folder
    from schoolgate.reports.build import build_report, period_for, previous_period, reports_of
    from schoolgate.reports.render import render_csv, write_report

    policy, ctx = _context(args)
    settings = reports_of(policy)
    try:
        on = date.fromisoformat(args.date) if args.date else None
    except ValueError:
        raise _fail(f"--date takes YYYY-MM-DD, got {args.date!r}") from None
    if args.previous:
        period = previous_period(args.period, policy, ctx.now())
    else:
        period = period_for(args.period, policy, on=on)
    with ctx.sessions() as session:
        report = build_report(session, period, policy=policy, settings=settings, now=ctx.now())
    if args.format == "csv" and args.out is None:
        sys.stdout.write(render_csv(report))
        return 0
    folder = args.out or reports_folder(policy, settings)
    for path in write_report(report, Path(folder), (args.format,)):
        print(path)
    return 0


# -- subject access and erasure -----------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    from schoolgate.jobs.retention import export_user

    policy, ctx = _context(args)
    with ctx.sessions() as session:
        data = export_user(session, args.user, policy=policy, now=ctx.now())
    if "roster" not in data and not any(data.get("counts", {}).values()):
        # Nothing at all: most often a misspelt name. Say so rather than print an empty record.
        raise _fail(
            f"nothing is held about {data['subject']!r}: not on the roster, and no events, "
            "exceptions, audit entries, requests, bans or staff account name them. Check the "
            "spelling (the proxy login or roster user name); if it is right, that is the answer "
            "to the request."
        )
    if args.html:
        text = render_export_html(data)
    else:
        text = json.dumps(data, indent=2, default=str) + "\n"
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(args.out)
    else:
        sys.stdout.write(text)
    return 0


def render_export_html(data: dict[str, Any]) -> str:
    from schoolgate.reports.render import render_subject_access

    return render_subject_access(data)


def cmd_erase(args: argparse.Namespace) -> int:
    from schoolgate.jobs.retention import erase_user, retention_of

    policy, ctx = _context(args, changes=args.yes)
    settings = retention_of(policy)
    with ctx.sessions.begin() as session:
        plan = erase_user(session, args.user, policy=policy, settings=settings, apply=args.yes,
                          now=ctx.now(), actor=args.by or "schoolgate erase")  # fmt: skip
    if args.json:
        print(json.dumps({"applied": bool(args.yes), **plan.as_dict()}, indent=2))
        return 0
    verb = "Erased" if args.yes else "Would erase"
    print(f"{verb} for {plan.subject}:")
    for key, n in plan.erase.items():
        print(f"  {key}: {n}")
    if plan.keep:
        print("Kept (exempt from erasure):")
        for key, (n, why) in plan.keep.items():
            print(f"  {key}: {n}\n    why: {why}")
    if not args.yes:
        print("Nothing was changed. Run again with --yes to erase.")
    return 0


# -- lists --------------------------------------------------------------------------------------
def _print_results(results, as_json: bool) -> int:
    if as_json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    for r in results:
        if not as_json:
            mark = "OK     " if r.accepted else "REFUSED"
            print(f"{mark} {r.category}: {r.message} ({r.source} -> {r.file})")
            for issue in r.issues[:5]:
                print(f"        {issue}")
    return 0 if all(r.accepted for r in results) else 1


def cmd_lists_update(args: argparse.Namespace) -> int:
    from schoolgate.jobs.listupdate import list_updates_of, refresh_subscriptions, update_all

    policy, ctx = _context(args, changes=True)
    settings = list_updates_of(policy)
    if not settings.sources and not settings.subscriptions:
        raise _fail("no list sources configured (a category's subscriptions, or "
                    "list_updates.sources, in the config)")  # fmt: skip
    progress = None if not args.no_progress else False
    actor = args.by or "schoolgate lists update"
    with ctx.sessions.begin() as session:
        results = update_all(settings, session=session, categories=args.category or None,
                             progress=progress, actor=actor)  # fmt: skip
        results += refresh_subscriptions(
            settings, now=ctx.now(), session=session, categories=args.category or None,
            due_only=False, progress=progress, actor=actor,
        )  # fmt: skip
    if not results:
        raise _fail(f"no configured source for {', '.join(args.category)}")
    if any(r.accepted for r in results):
        _compile_lists(args)
    return _print_results(results, args.json)


def _compile_lists(args: argparse.Namespace) -> None:
    """Compile the updated lists now, with a progress bar, rather than in each gateway."""
    from schoolgate.jobs.listupdate import compile_lists

    try:
        compile_lists(args.config, args.data_dir, progress=False if args.no_progress else None)
    except ConfigError as exc:
        raise _fail(f"the configuration has {len(exc.issues)} error(s):\n{exc}") from None


def cmd_lists_import(args: argparse.Namespace) -> int:
    from schoolgate.jobs.listupdate import audit_result, fetch_and_install, list_updates_of

    policy, ctx = _context(args, changes=True)
    settings = list_updates_of(policy)
    target = args.into
    fmt = args.format
    if target is None and not args.category:
        raise _fail("say where the list goes: --category C or --into FILE")
    if target is None:
        match = [s for s in settings.sources if s.category == args.category]
        if not match:
            raise _fail(f"give --into FILE: no configured source for category {args.category!r}")
        target, fmt = match[0].file, fmt or match[0].format
    result = fetch_and_install(
        str(args.source), Path(target), category=args.category or Path(target).stem,
        fmt=fmt or "auto", max_shrink=settings.max_shrink if args.max_shrink is None
        else args.max_shrink, progress=None if not args.no_progress else False, force=args.force,
    )  # fmt: skip
    with ctx.sessions.begin() as session:
        audit_result(session, result, args.by or "schoolgate lists import")
    if result.accepted:
        _compile_lists(args)
    return _print_results([result], args.json)


def cmd_lists_stats(args: argparse.Namespace) -> int:
    from schoolgate.jobs.listupdate import list_stats, list_updates_of

    policy = _cli().load(args)
    settings = list_updates_of(policy)
    rows = list_stats(policy, settings)
    sources = {s.category: s.url for s in settings.sources}
    for row in rows:
        row["update_url"] = sources.get(row["category"])
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        lock = " (locked)" if row["locked"] else ""
        print(f"{row['category']:<16}{row['entries']:>10,} entries{lock}")
        for src in row["sources"]:
            print(f"{'':<18}{src}")
        if row["update_url"]:
            print(f"{'':<18}updated from {row['update_url']}")
        for sub in row.get("subscriptions", ()):
            print(f"{'':<18}subscription {sub['name']}: {sub['url']} ({sub['schedule']}, "
                  f"{sub['licence'] or 'licence not given'})")  # fmt: skip
            print(f"{'':<20}{sub['status']}")
    return 0


# -- purge and jobs -------------------------------------------------------------------------------
def cmd_purge(args: argparse.Namespace) -> int:
    from schoolgate.jobs.scheduler import job_purge

    _policy, ctx = _context(args, changes=True)
    result = job_purge(ctx)
    deleted = result["deleted"]
    if args.json:
        print(json.dumps(result, indent=2))
    elif not deleted:
        print("nothing past its retention period")
    else:
        for key, n in deleted.items():
            print(f"deleted {n} {key}")
    return 0


def cmd_jobs_list(args: argparse.Namespace) -> int:
    """Each job: what it does, when it runs (in words), its next run and how its last went."""
    from datetime import UTC, datetime

    from schoolgate.core import words
    from schoolgate.jobs.scheduler import (
        JOB_PURPOSES,
        job_schedules,
        job_triggers,
        stored_next_runs,
    )
    from schoolgate.storage.db import database_exists
    from schoolgate.storage.job_runs import last_runs

    cli = _cli()
    policy = cli.load(args)
    now = datetime.now(UTC)
    tz = policy.timetables[policy.resolver.default_site].tz
    stored: dict = {}
    last: dict = {}
    if database_exists(policy.settings.database_url):
        sessions = cli.open_db(policy, args)
        stored = stored_next_runs(sessions)
        with sessions() as session:
            last = last_runs(session)
    triggers = job_triggers(policy)
    out = []
    for name, schedule in job_schedules(policy).items():
        next_run = stored.get(name) or triggers[name].get_next_fire_time(None, now)
        run = last.get(name)
        out.append(
            {
                "name": name,
                "does": JOB_PURPOSES.get(name, ""),
                "schedule": schedule.words(),
                "next_run": next_run.isoformat() if next_run else None,
                "next_run_stored": name in stored,
                "last_started": run.started_at.isoformat() if run else None,
                "last_finished": run.finished_at.isoformat() if run else None,
                "outcome": run.outcome if run else None,
                "summary": run.summary if run else None,
                "error": run.error if run else None,
                "ran_on": run.host if run else None,
            }
        )
        if args.json:
            continue
        due = words.moment(next_run, now, tz) if next_run else "not scheduled"
        if next_run is not None and next_run <= now:
            due = f"due since {due} (runs when the gateway is running)"
        if run is None:
            done = "never run"
        else:
            said = run.summary if run.outcome == "ok" else run.error
            done = f"{words.moment(run.started_at, now, tz)}, {run.outcome}" + (
                f": {said}" if said else ""
            )
        print(f"{name}: {JOB_PURPOSES.get(name, '')}")
        print(f"  runs {schedule.words()}; next {due}")
        print(f"  last {done}")
    if args.json:
        print(json.dumps(out, indent=2))
    return 0


def cmd_jobs_run(args: argparse.Namespace) -> int:
    from schoolgate.jobs.scheduler import run_recorded

    _policy, ctx = _context(args, progress=None, changes=True)
    result = run_recorded(args.name, ctx)
    print(json.dumps(result, indent=2, default=str))
    return 0


def register(sub: Any, common: Any) -> None:
    """Add ``report``, ``export``, ``erase``, ``lists``, ``purge`` and ``jobs``."""
    p = sub.add_parser("report", help="the e-safety report for a day, week or term")
    common(p)
    p.add_argument("--period", choices=("day", "week", "term"), default="day")
    p.add_argument("--date", help="a day in the period (YYYY-MM-DD; default today)")
    p.add_argument("--previous", action="store_true", help="the last complete day or week")
    p.add_argument("--format", choices=("html", "csv"), default="html")
    p.add_argument("--out", type=Path, help="folder (default: <data-dir>/reports; CSV "
                   "without --out goes to standard output)")  # fmt: skip
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser("export", help="everything held about a person (subject access)")
    common(p)
    p.add_argument("--user", required=True)
    p.add_argument("--html", action="store_true", help="readable HTML instead of JSON")
    p.add_argument("--out", help="write to this file instead of standard output")
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("erase", help="erase a person's data (safeguarding evidence is kept)")
    common(p)
    p.add_argument("--user", required=True)
    p.add_argument("--yes", action="store_true", help="really erase (default: say what would go)")
    p.add_argument("--by", help="who asked for it (kept in the audit trail)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_erase)

    lists = sub.add_parser("lists", help="category lists: update, import, stats")
    lists_sub = lists.add_subparsers(dest="lists_command", metavar="ACTION", required=True)
    p = lists_sub.add_parser("update", help="refresh lists from their configured URLs")
    common(p)
    p.add_argument("--category", action="append", help="only this category (repeatable)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--by")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_lists_update)
    p = lists_sub.add_parser("import", help="check a list file or URL and swap it in")
    common(p)
    p.add_argument("source", help="a file or an http(s):// URL")
    p.add_argument("--category", help="its category (its configured file is replaced)")
    p.add_argument("--into", type=Path, help="the list file to replace")
    p.add_argument("--format", choices=("auto", "domains", "hosts", "adblock"))
    p.add_argument("--max-shrink", type=float, help="refuse a list that shrinks by more")
    p.add_argument("--force", action="store_true", help="accept even if it shrank")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--by")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_lists_import)
    p = lists_sub.add_parser("stats", help="entries per category")
    common(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_lists_stats)

    p = sub.add_parser("purge", help="delete records past their retention period")
    common(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_purge)

    jobs = sub.add_parser("jobs", help="the scheduled jobs: list them, run one now")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    p = jobs_sub.add_parser("list", help="each job, when it runs, and how its last run went")
    common(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_jobs_list)
    p = jobs_sub.add_parser("run", help="run one job now")
    common(p)
    p.add_argument(
        "name", choices=("expire", "escalate", "lists", "report_day", "report_week", "purge")
    )
    p.set_defaults(handler=cmd_jobs_run)
