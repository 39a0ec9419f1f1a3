"""The "your access is suspended" page (lockouts and supervised-only bans) and the one-time
warning page of the first sanction stage.

Same rules as the block page (:mod:`schoolgate.gateway.blockpage`): inline CSS only, no scripts
or any other request, Jinja2 autoescape, strict CSP headers; an HTML page for browser
navigations and one or two lines of text for everything else. The suspension page names the
reason, since and until when, how to appeal, and the references to quote. Times are in words, in
the site's time zone (:mod:`schoolgate.core.words`). "Tell IT Support this is a mistake" opens
the portal's access request for the page asked for, marked as a block made by mistake."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, tzinfo
from urllib.parse import urlencode

from schoolgate.core import words
from schoolgate.core.sanctions import BanState
from schoolgate.gateway.blockpage import SECURITY_HEADERS, template_environment, wants_html

SUSPENDED_STATUS = 403


def _when(value: datetime, tz: tzinfo | None) -> str:
    return words.absolute(value, tz)


def _mistake_link(portal_host: str, url: str | None) -> str:
    """The access request for ``url``, marked as blocked by mistake (the portal's form)."""
    fields = {"url": url, "purpose": "erroneous"} if url else {"purpose": "erroneous"}
    return f"http://{portal_host}/request?{urlencode(fields)}"


def _who(ban: BanState) -> str:
    if ban.subject_kind == "device":
        return f"this device ({ban.subject_value})"
    return ban.subject_value


def render_suspended_page(
    ban: BanState,
    *,
    url: str,
    ref: str,
    portal_host: str,
    appeal: str,
    essentials: Sequence[str] = (),
    tz: tzinfo | None = None,
    now: datetime | None = None,
    school: str = "",
    group: str | None = None,
) -> str:
    """``school``: the school's name; ``group``: the pupil's class or year group (the page
    then says a teacher of that group can supervise them, as the portal lets them)."""
    now = now or datetime.now(UTC)
    context = {
        "school": school,
        "group": group if ban.subject_kind == "user" else None,
        "kind": ban.kind,
        "reason": ban.reason,
        "since": words.moment(ban.starts, now, tz),
        "until": words.until(ban.ends, now, tz) if ban.ends else "until it is lifted",
        "url": url,
        "appeal": appeal,
        "essentials": list(essentials),
        "portal_link": _mistake_link(portal_host, url),
        "ban_ref": f"#{ban.id}" if ban.id is not None else ban.ref,
        "ref": ref,
        "when": _when(now, tz),
        "who": _who(ban),
    }
    return template_environment().get_template("suspended.html").render(context)


def render_suspended_text(
    ban: BanState, *, ref: str, now: datetime | None = None, tz: tzinfo | None = None
) -> str:
    now = now or datetime.now(UTC)
    what = "suspended (supervised use only)" if ban.kind == "ban" else "paused"
    until = words.until(ban.ends, now, tz) if ban.ends else "until lifted"
    return f"Internet access {what} by the school's filter, {until} ({ref})\n{ban.reason}\n"


def suspended_response_parts(
    ban: BanState,
    *,
    url: str,
    ref: str,
    portal_host: str,
    appeal: str,
    headers: Mapping[str, str],
    essentials: Sequence[str] = (),
    tz: tzinfo | None = None,
    now: datetime | None = None,
    school: str = "",
    group: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body for a request from a suspended user (HTML or plain text)."""
    out = dict(SECURITY_HEADERS)
    out["x-schoolgate-ref"] = ref
    out["x-schoolgate-suspended"] = ban.kind
    if wants_html(headers):
        body = render_suspended_page(
            ban,
            url=url,
            ref=ref,
            portal_host=portal_host,
            appeal=appeal,
            essentials=essentials,
            tz=tz,
            now=now,
            school=school,
            group=group,
        )
        out["content-type"] = "text/html; charset=utf-8"
    else:
        body = render_suspended_text(ban, ref=ref, now=now, tz=tz)
        out["content-type"] = "text/plain; charset=utf-8"
    return SUSPENDED_STATUS, out, body.encode("utf-8", "backslashreplace")


def render_warning_page(
    summary: str,
    *,
    ref: str,
    portal_host: str,
    continue_url: str | None,
    next_step: str = "",
    who: str | None = None,
    tz: tzinfo | None = None,
    now: datetime | None = None,
    url: str | None = None,
    school: str = "",
) -> str:
    now = now or datetime.now(UTC)
    context = {
        "school": school,
        "summary": summary,
        "ref": ref,
        "portal_link": _mistake_link(portal_host, url or continue_url),
        "continue_url": continue_url,
        "next_step": next_step,
        "who": who,
        "when": _when(now, tz),
    }
    return template_environment().get_template("warning.html").render(context)


def warning_response_parts(
    summary: str,
    *,
    url: str,
    ref: str,
    portal_host: str,
    blocked: bool,
    next_step: str = "",
    who: str | None = None,
    tz: tzinfo | None = None,
    now: datetime | None = None,
    school: str = "",
) -> tuple[int, dict[str, str], bytes]:
    """The warning page (HTML only: it is shown on a page load). ``blocked``: the page asked
    for is itself blocked (403, no "continue" link); otherwise 200 with a link to continue."""
    out = dict(SECURITY_HEADERS)
    out["x-schoolgate-ref"] = ref
    out["x-schoolgate-warning"] = "circumvention"
    out["content-type"] = "text/html; charset=utf-8"
    body = render_warning_page(
        summary,
        ref=ref,
        portal_host=portal_host,
        continue_url=None if blocked else url,
        next_step=next_step,
        who=who,
        tz=tz,
        now=now,
        url=url,
        school=school,
    )
    return (403 if blocked else 200), out, body.encode("utf-8", "backslashreplace")


__all__ = [
    "render_suspended_page",
    "render_suspended_text",
    "render_warning_page",
    "suspended_response_parts",
    "warning_response_parts",
]
