"""Explaining a decision to a person: a request given as text (a URL, a time, a role to
assume) turned into the core's facts, and the decision put into lines of words. The
``schoolgate explain`` command and the console's explain form both use it, so they say the
same."""

from __future__ import annotations

from datetime import UTC, date, datetime, tzinfo
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from schoolgate.core import words
from schoolgate.core.model import Decision, Identity, RequestFacts

if TYPE_CHECKING:
    from schoolgate.core.policy import Policy


class InputError(Exception):
    """What a person typed cannot be read; the message says what is wrong."""


def parse_when(text: str | None, policy: Policy, site: str | None = None) -> datetime:
    """ISO-8601; without a zone it is the site's local time."""
    if text is None:
        return datetime.now(UTC)
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"not an ISO-8601 time: {text!r} (e.g. 2026-11-24T10:30)") from None
    if value.tzinfo is None:
        site = site or policy.resolver.default_site
        value = value.replace(tzinfo=policy.timetables[site].tz)
    return value


def facts_for_url(
    url: str,
    *,
    at: datetime,
    method: str | None,
    client_ip: str | None,
    user: str | None,
    host_only: bool = False,
) -> RequestFacts:
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    # Browsers read "\" as "/" in http(s) URLs: http://a.com\@b.com/ goes to a.com.
    scheme, sep, rest = text.partition("://")
    if scheme.lower() in ("http", "https"):
        text = scheme + sep + rest.replace("\\", "/")
    try:
        parts = urlsplit(text)
        hostname = parts.hostname
    except ValueError as exc:
        raise InputError(f"not a URL: {url!r} ({exc})") from None
    if not hostname:
        raise InputError(f"not a URL: {url!r}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    try:
        port = parts.port
    except ValueError:
        raise InputError(f"bad port in {url!r}") from None
    return RequestFacts(
        host=hostname,
        at=at,
        path=None if host_only else path,
        method=None if host_only else (method or "GET").upper(),
        port=port or (443 if parts.scheme == "https" else 80),
        scheme=parts.scheme,
        client_ip=client_ip,
        user=user,
    )


def site_tz(policy: Policy, site: str | None) -> tzinfo:
    timetable = policy.timetables.get(site or "") or policy.timetables[policy.resolver.default_site]
    return timetable.tz


def ends_words(
    value: datetime | None, policy: Policy, site: str | None, now: datetime | None
) -> str:
    """When something ends, in words in the site's zone: ``11:00 today`` from ``now``, or the
    full date when ``now`` is None (an explanation for another time than now)."""
    if value is None:
        return "no end in sight"
    tz = site_tz(policy, site)
    if now is None:
        return words.absolute(value, tz)
    return words.until(value, now, tz).removeprefix("until ")


def decision_lines(decision: Decision, policy: Policy, url: str, now: datetime | None) -> list[str]:
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


def identity_override(args: Any, policy: Policy) -> Identity | None:
    # ``args``: the command's options (an argparse namespace, or the console form's values).
    """The identity ``explain --role`` (and its --site, --user, --group, --ip, date of birth)
    gives, or None when the request's own address and user decide."""
    if not args.role:
        return None
    role = policy.role_named(args.role)  # a role alias ("teacher") means its role ("staff")
    if role is None:
        aliases = ", ".join(f"{a} = {r}" for a, r in sorted(policy.role_aliases.items()))
        raise InputError(
            f"unknown role {args.role!r}; roles are {', '.join(policy.roles)}"
            + (f" (aliases: {aliases})" if aliases else "")
        )
    site = args.site or policy.resolver.default_site
    if site not in policy.timetables:
        raise InputError(f"unknown site {site!r}; sites are {', '.join(policy.sites)}")
    dob = None
    if args.date_of_birth:
        try:
            dob = date.fromisoformat(args.date_of_birth)
        except ValueError:
            raise InputError(f"not a date: {args.date_of_birth!r}") from None
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
