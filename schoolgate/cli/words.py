"""How the ``schoolgate`` commands print decisions, windows, times and exceptions for people:
in words, in the site's time zone (:mod:`schoolgate.core.words`). ``--json`` outputs keep the
internal names and ISO times; they are not made here.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from schoolgate.core import words
from schoolgate.core.model import Decision, Identity


def site_tz(policy, site: str | None):
    timetable = policy.timetables.get(site or "") or policy.timetables[policy.resolver.default_site]
    return timetable.tz


def ends_words(value: datetime | None, policy, site: str | None, now: datetime | None) -> str:
    """When something ends, in words in the site's zone: ``11:00 today`` from ``now``, or the
    full date when ``now`` is None (an explanation for another time than now)."""
    if value is None:
        return "no end in sight"
    tz = site_tz(policy, site)
    if now is None:
        return words.absolute(value, tz)
    return words.until(value, now, tz).removeprefix("until ")


def print_decision(decision: Decision, policy, url: str, now: datetime | None) -> None:
    """``now``: the time now when the decision is for now (times are said from it: "11:00
    today"); None for a decision at another time (full dates)."""
    for line in decision_lines(decision, policy, url, now):
        print(line)


def decision_lines(decision: Decision, policy, url: str, now: datetime | None) -> list[str]:
    """What ``schoolgate explain`` prints (the console's explain form shows the same)."""
    ident = decision.identity
    verdict = "ALLOW" if decision.allowed else "BLOCK"
    tz = site_tz(policy, ident.site or (decision.window.site if decision.window else None))
    sentence = words.decision_sentence(
        decision,
        now=now or datetime.now(UTC),
        tz=tz,
        wording=words.wording_of(policy),
        relative=now is not None,
    )
    lines = [f"{verdict}  {url}", f"  reason:   {sentence}"]
    who = ident.user or ident.client_ip or "(no user)"
    group = f", group {ident.group}" if ident.group else ""
    lines.append(f"  identity: {who} -> role {ident.role}{group} at site {ident.site or '-'}")
    lines.append(f"            by {ident.rule}")
    if decision.window:
        w = decision.window
        wording = words.wording_of(policy)
        when = words.span(w.start, w.end, site_tz(policy, w.site))
        lines.append(f"  window:   {wording.window(w)}, {when}")
    if decision.match:
        m = decision.match
        lines.append(f"  list:     {words.plain(m.category)}: {m.entry} ({m.source})")
    else:
        lines.append("  list:     no list entry matches")
    lines.append(f"  decided:  {decision.rule}")
    site = ident.site or (decision.window.site if decision.window else None)
    if (not decision.allowed and decision.window) or decision.until:
        lines.append(f"  until:    {ends_words(decision.until, policy, site, now)}")
    if decision.error:
        lines.append(f"  error:    {decision.error}")
    return lines


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


def _command_error(message: str) -> Exception:
    from schoolgate.cli.common import CommandError

    return CommandError(message)


def identity_override(args, policy) -> Identity | None:
    """The identity ``explain --role`` (and its --site, --user, --group, --ip, date of birth)
    gives, or None when the request's own address and user decide."""
    if not args.role:
        return None
    role = policy.role_named(args.role)  # a role alias ("teacher") means its role ("staff")
    if role is None:
        aliases = ", ".join(f"{a} = {r}" for a, r in sorted(policy.role_aliases.items()))
        raise _command_error(
            f"unknown role {args.role!r}; roles are {', '.join(policy.roles)}"
            + (f" (aliases: {aliases})" if aliases else "")
        )
    site = args.site or policy.resolver.default_site
    if site not in policy.timetables:
        raise _command_error(f"unknown site {site!r}; sites are {', '.join(policy.sites)}")
    dob = None
    if args.date_of_birth:
        try:
            dob = date.fromisoformat(args.date_of_birth)
        except ValueError:
            raise _command_error(f"not a date: {args.date_of_birth!r}") from None
    given = args.role if role == args.role else f"{args.role} (= {role})"
    return Identity(
        role=role,
        site=site,
        user=args.user,
        group=args.group,
        date_of_birth=dob,
        client_ip=args.ip,
        source="given",
        rule=f"--role {given} given on the command line",
    )
