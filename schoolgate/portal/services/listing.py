"""Changing a site for everyone from a request: un-listing it (blocked by mistake) or adding it
to a category (a content report). Both always need SLT (IT Support propose, SLT approve; a
member of SLT does it directly), and both are limited to the host the request is about: the
form cannot name another site.

The views turn a :class:`ListingError` into a 400 page with its message.
"""

from __future__ import annotations

import re
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from schoolgate.core.hosts import normalize_host
from schoolgate.core.policy import Policy
from schoolgate.storage.exceptions import ExceptionRequestError, validate_exception

_ENTRY = re.compile(r"^[a-z0-9.\-]+(/[A-Za-z0-9._~\-/%]*)?$")
_CATEGORY_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")
_FILE_LOCK = threading.Lock()


class ListingError(ValueError):
    """A change to a list that cannot be made as asked (the message says why)."""


def request_host(host: str) -> str:
    """The host a request or report is about, as lists and exceptions spell it."""
    return normalize_host(host or "")


def unlist_proposal(
    policy: Policy, *, row_host: str, given_host: str, ref: str, note: str, at: datetime
) -> dict[str, Any]:
    """A permanent host exception for everyone for the request's host (kind ``unlist``).

    ``given_host``: what the form sent, if anything; it must be the request's own host. The
    host must be in a category's list (otherwise there is nothing to un-list), and never in a
    locked category."""
    host = request_host(row_host)
    if not host:
        raise ListingError("This request names no site to un-list.")
    if given_host.strip() and request_host(given_host) != host:
        raise ListingError(
            f"Only the site this request is about ({host}) can be un-listed from it. "
            "For another site, use its own request."
        )
    match = policy.matcher.lookup(host, None)
    if match is None or match.category == "allowlist":
        raise ListingError(f"{host} is not in any category's list: there is nothing to un-list.")
    try:
        validate_exception(
            policy,
            scope="everyone",
            scope_value="",
            target_kind="host",
            target=host,
            starts=at,
            ends=None,
        )
    except ExceptionRequestError as exc:
        raise ListingError(f"That cannot be un-listed: {exc}.") from None
    return {
        "scope": "everyone",
        "scope_value": "",
        "target_kind": "host",
        "target": host,
        "starts": at.isoformat(),
        "ends": None,
        "kind": "unlist",
        "category": match.category,
        "reason": f"erroneous list entry in {match.category} (request {ref}): {note[:500]}",
    }


def categorise_proposal(
    policy: Policy, *, row_host: str, category: str, entry: str, ref: str
) -> dict[str, Any]:
    """Adding the report's host (or a page on it) to a category's local list (kind
    ``categorise``)."""
    if category not in policy.categories or not _CATEGORY_NAME.match(category):
        raise ListingError("Choose one of the configured categories.")
    entry = re.sub(r"^[a-z]+://", "", entry.strip().lower()).rstrip("/")
    if not entry or not _ENTRY.match(entry) or "." not in entry.split("/", 1)[0]:
        raise ListingError(
            "Give a host (example.com) or a host and path (example.com/page), with no spaces."
        )
    host = request_host(row_host)
    entry_host, slash, path = entry.partition("/")
    if request_host(entry_host) != host:
        raise ListingError(
            f"Only the site this report is about ({host}), or a page on it, can be added from it."
        )
    return {
        "scope": "everyone",
        "scope_value": "",
        "target_kind": "entry",
        "target": host + slash + path,
        "ends": None,
        "kind": "categorise",
        "category": category,
        "reason": f"report {ref}",
    }


def local_list_path(policy: Policy, category: str) -> Path:
    """``blocklists/local/<category>.txt`` next to the config file."""
    config = Path(policy.settings.config_path).resolve()
    return config.parent / "blocklists" / "local" / f"{category}.txt"


def add_to_list(policy: Policy, proposal: dict[str, Any], *, by: str, ref: str, at: datetime):
    """Append the proposal's entry to its category's local list (the gateway reloads lists
    when files change); returns the file's path."""
    path = local_list_path(policy, proposal["category"])
    stamp = at.isoformat(timespec="seconds")
    with _FILE_LOCK:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as handle:
            handle.write(f"# added by {by} at {stamp} for report {ref}\n{proposal['target']}\n")
    return path
