"""The block page: what was blocked, why, until when, and what the user can do about it.

One small HTML page (``templates/block.html``, Jinja2 with autoescape, inline CSS only: no
scripts, fonts, images or any other request, so it renders even when everything else is
blocked) for browser navigations, and a one-line ``text/plain`` answer for everything else
(XHR/fetch, images, scripts, API clients), both with status 403.

Links to the portal carry the blocked URL, the category and a *signed* reference
(``<ref>.<mac>``, HMAC-SHA256 with the gateway's secret, truncated to 128 bits) so that a
request for access can be tied to the logged decision without trusting the query string. The
user sees the plain reference to quote to IT Support.

Variants: a failed policy evaluation ("the filter failed, blocked for safety"); a locked
category and an age-restricted sign-up page, which nothing can open, get no "request access"
link. "Report a problem with this block" opens the same access request, marked as a block made
by mistake (the content-report form is for pages that should be blocked, not for this); a
locked category offers no form, only the reference to quote to IT Support.

Every time and window is in words, in the site's time zone (:mod:`schoolgate.core.words`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, tzinfo
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import jinja2

from schoolgate.core import words
from schoolgate.core.model import Decision
from schoolgate.core.words import DEFAULT_WORDING, Wording
from schoolgate.storage.storable import escape_text

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).with_name("templates")
SECRET_FILE = "secret.key"
SECRET_BYTES = 32
MAC_BYTES = 16
AGE_CATEGORY = "age_restricted"
LOCKED_RULE_PREFIX = "locked category "
# Rules of the blocks that are ways round the filter (a detector's finding, a destination the
# filter cannot verify, a tunnel that is neither TLS nor HTTP): no access request opens them.
CIRCUMVENTION_RULE_PREFIXES = ("circumvention detector ", "destination check", "raw tunnel")
RULE_VARIANTS = frozenset({"rule", "read_only"})  # the blocks a request for access can open

# Headers for every block answer. The page is served on the blocked site's own origin, so a
# strict CSP makes sure nothing in it (or injected into it) can run or load anything.
SECURITY_HEADERS = {
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "content-security-policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
        "form-action 'none'"
    ),
}


# -- signed references -------------------------------------------------------------------------


def _mac(secret: bytes, ref: str) -> str:
    digest = hmac.new(secret, ref.encode("utf-8"), hashlib.sha256).digest()[:MAC_BYTES]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def sign_ref(secret: bytes, ref: str) -> str:
    """``<ref>.<HMAC-SHA256(secret, ref) truncated to 128 bits, URL-safe base64>``."""
    if not ref or "." in ref:
        raise ValueError(f"a reference must be non-empty and have no dot: {ref!r}")
    return f"{ref}.{_mac(secret, ref)}"


def verify_ref(secret: bytes, signed: str | None) -> str | None:
    """The reference if ``signed`` carries a valid MAC for it, else None (constant-time)."""
    if not signed or not isinstance(signed, str) or len(signed) > 200:
        return None
    ref, dot, mac = signed.rpartition(".")
    if not dot or not ref or "." in ref:
        return None
    if hmac.compare_digest(_mac(secret, ref).encode("ascii"), mac.encode("ascii", "replace")):
        return ref
    return None


def load_or_create_secret(data_dir: Path | str) -> bytes:
    """``data_dir/secret.key``: 32 random bytes, mode 0600, created once (safe against two
    processes starting together: the file appears complete or not at all)."""
    folder = Path(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SECRET_FILE
    if not path.exists():
        temp = folder / f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_bytes(SECRET_BYTES))
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(temp, path)  # atomic, and fails if another process won the race
            except FileExistsError:
                pass
        finally:
            temp.unlink(missing_ok=True)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("%s was readable by others (mode %o); setting it to 0600", path, mode)
        path.chmod(0o600)
    secret = path.read_bytes()
    if len(secret) < SECRET_BYTES:
        raise ValueError(
            f"{path} holds {len(secret)} bytes; it needs {SECRET_BYTES}. "
            "Delete it to make a new one (old block-page links stop verifying)."
        )
    return secret


# -- what kind of answer -----------------------------------------------------------------------

_HTML_DESTS = frozenset({"document", "iframe", "frame", "embed", "object", "nested-document"})


def wants_html(headers: Mapping[str, str]) -> bool:
    """Whether a request is a page load that should get the HTML block page.

    ``X-Requested-With`` (XHR) says no; ``Sec-Fetch-Dest`` decides when the browser sends it
    (document/iframe: yes; image, script, fetch's ``empty``...: no); then ``Sec-Fetch-Mode:
    navigate``; then ``Accept`` naming ``text/html``. No Accept, or ``*/*`` alone (curl, API
    clients): plain text. Each header is looked up once: pass the request view's headers
    (:func:`~schoolgate.gateway.flowinfo.request_view`), not a request with thousands.
    """
    if isinstance(headers, dict):  # names as written: read them once, in lower case
        headers = {name.lower(): value for name, value in headers.items()}
    # Otherwise a mapping that looks names up whatever their case (mitmproxy's Headers).
    get = headers.get
    if get("x-requested-with"):
        return False
    dest = (get("sec-fetch-dest") or "").strip().lower()
    if dest:
        return dest in _HTML_DESTS
    if (get("sec-fetch-mode") or "").strip().lower() == "navigate":
        return True
    accept = (get("accept") or "").lower()
    return "text/html" in accept or "application/xhtml+xml" in accept


# -- wording -----------------------------------------------------------------------------------


def describe_until(until: datetime | None, now: datetime, tz: tzinfo | None = None) -> str:
    """``until 11:00 today``, ``until 15:10 tomorrow``, ``until Wednesday 9 December, 15:10``,
    ``until 9 December 2027``; ``no end in sight`` (None), in the site's local time ``tz``."""
    if until is None:
        return "no end in sight"
    return words.until(until, now, tz)


def _label(name: str | None) -> str:
    return (name or "").replace("_", " ").strip()


def _advice_items(advice: Sequence[str]) -> list[tuple[str, str]]:
    """``"Safe: keep ..."`` -> ``("Safe", "keep ...")`` so the SMART letter can be bold."""
    items = []
    for sentence in advice:
        head, sep, rest = sentence.partition(": ")
        if sep and 0 < len(head) <= 20:
            items.append((head, rest))
        else:
            items.append(("", sentence))
    return items


def portal_links(
    *, portal_host: str, url: str, category: str | None, signed_ref: str
) -> tuple[str, str]:
    """The request-access link, and the "report a problem with this block" link: the same
    access request, marked as a block made by mistake."""
    fields = {"url": url, "category": category or "", "ref": signed_ref}
    # A byte of the URL that was not UTF-8 (kept as a surrogate) goes back to being that byte.
    request = urlencode(fields, errors="surrogateescape")
    problem = urlencode(fields | {"purpose": "erroneous"}, errors="surrogateescape")
    return (f"http://{portal_host}/request?{request}", f"http://{portal_host}/request?{problem}")


def _variant(decision: Decision, locked: bool | None) -> str:
    if decision.error:
        return "error"
    if decision.category == AGE_CATEGORY:
        return "age"
    if locked or (locked is None and decision.rule.startswith(LOCKED_RULE_PREFIX)):
        return "locked"
    if decision.rule.startswith(CIRCUMVENTION_RULE_PREFIXES):
        return "circumvention"
    if words.READ_ONLY_MARK in decision.reason:
        return "read_only"
    return "rule"


@lru_cache(maxsize=1)
def template_environment() -> jinja2.Environment:
    """The Jinja environment of the gateway's own pages (``gateway/templates``): HTML-escaped,
    and an undefined name is an error rather than an empty string. Made once."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,  # every template here is HTML
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )


def render_block_page(
    decision: Decision,
    *,
    url: str,
    ref: str,
    signed_ref: str,
    portal_host: str,
    advice: Sequence[str],
    tz: tzinfo | None = None,
    now: datetime | None = None,
    locked: bool | None = None,
    wording: Wording = DEFAULT_WORDING,
) -> str:
    """The HTML block page. ``tz``: the site's zone for times; ``locked``: whether the category
    is locked (None: read from the decision's rule); ``wording``: the school's words."""
    now = now or datetime.now(UTC)
    local_now = now.astimezone(tz) if tz is not None else now
    variant = _variant(decision, locked)
    window = decision.window
    request_link, problem_link = portal_links(
        portal_host=portal_host, url=url, category=decision.category, signed_ref=signed_ref
    )
    try:
        host = urlsplit(url).hostname or url
    except ValueError:
        host = url
    context: dict[str, Any] = {
        "variant": variant,
        "url": escape_text(url),  # a byte that was not UTF-8 shown as \xNN
        "host": escape_text(host),
        "school": wording.school_name,
        "category": words.category_words(decision.category),
        "window": wording.window(window) if window else None,
        "until": describe_until(decision.until, now, tz) if variant in RULE_VARIANTS else None,
        "until_known": decision.until is not None,
        "sentence": words.decision_sentence(decision, now=now, tz=tz, wording=wording),
        "reason": " ".join(decision.reason.split()),
        "role": wording.people(decision.identity.role),
        "user": decision.identity.user,
        "ref": ref,
        "when": words.absolute(local_now),
        "advice": _advice_items(advice),
        "request_link": request_link if variant in RULE_VARIANTS else None,
        "problem_link": problem_link if variant != "locked" else None,
    }
    return template_environment().get_template("block.html").render(context)


def render_block_text(
    decision: Decision,
    *,
    url: str,
    ref: str,
    tz: tzinfo | None = None,
    now: datetime | None = None,
    wording: Wording = DEFAULT_WORDING,
) -> str:
    """The short answer for XHR, images and API clients: one or two lines."""
    if decision.error:
        first = "Blocked by the school's filter: the filter failed, so access is blocked for safety"
    else:
        first = f"Blocked by the school's filter: {_label(decision.category) or 'blocked'}"
    now = now or datetime.now(UTC)
    if _variant(decision, None) == "circumvention":
        reason = " ".join(decision.reason.split())  # the finding itself: no rule to explain
    else:
        reason = words.decision_sentence(decision, now=now, tz=tz, wording=wording)
    return f"{first} ({ref})\n{reason}\n" if reason else f"{first} ({ref})\n"


def block_response_parts(
    decision: Decision,
    *,
    url: str,
    ref: str,
    signed_ref: str,
    portal_host: str,
    advice: Sequence[str],
    headers: Mapping[str, str],
    tz: tzinfo | None = None,
    now: datetime | None = None,
    locked: bool | None = None,
    wording: Wording = DEFAULT_WORDING,
) -> tuple[int, dict[str, str], bytes]:
    """Status, response headers and body for a blocked request (HTML or plain text)."""
    out = dict(SECURITY_HEADERS)
    out["x-schoolgate-ref"] = ref
    if wants_html(headers):
        body = render_block_page(
            decision,
            url=url,
            ref=ref,
            signed_ref=signed_ref,
            portal_host=portal_host,
            advice=advice,
            tz=tz,
            now=now,
            locked=locked,
            wording=wording,
        )
        out["content-type"] = "text/html; charset=utf-8"
    else:
        body = render_block_text(decision, url=url, ref=ref, tz=tz, now=now, wording=wording)
        out["content-type"] = "text/plain; charset=utf-8"
    return 403, out, body.encode("utf-8", "backslashreplace")


__all__ = [
    "block_response_parts",
    "describe_until",
    "load_or_create_secret",
    "portal_links",
    "render_block_page",
    "render_block_text",
    "sign_ref",
    "verify_ref",
    "wants_html",
]
