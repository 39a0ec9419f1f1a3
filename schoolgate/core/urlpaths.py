"""URLs as the product compares and records them.

A rule's path is compared with a request's path (list path rules, portal pages) by
:func:`normalize_path` and :func:`path_under`; :func:`strip_url` is a URL as logs keep it.

Both sides are percent-decoded, lower-cased and have empty and ``.`` segments dropped and
``..`` resolved, as web servers do, so that a pupil cannot step around a rule by spelling the
same path another way; a rule then covers its path and what is below it on a segment
boundary, never a longer name that merely starts the same.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit, urlunsplit

__all__ = ["normalize_path", "path_under", "strip_url"]

# What may follow a path rule's last segment in a request that is under it.
_SEGMENT_END = frozenset("/?.;#")


def path_under(path: str, prefix: str) -> bool:
    """Whether ``path`` is ``prefix`` or below it, on a segment boundary: the rule ``/edu``
    covers ``/edu``, ``/edu/maths``, ``/edu?x=1`` and ``/edu.html``, never ``/education``
    (an allowlist entry must not open more than it says)."""
    if not path.startswith(prefix):
        return False
    return len(path) == len(prefix) or prefix[-1] == "/" or path[len(prefix)] in _SEGMENT_END


def normalize_path(path: str) -> str:
    """A path (and query) as path rules compare it: percent-decoded, lower case, and in the
    path part (before ``?``) empty and ``.`` segments dropped and ``..`` resolved, as web
    servers do: ``//accounts/./EmailSignup`` is ``/accounts/emailsignup``."""
    if "%" in path:
        path = unquote(path)
    if "//" in path or "/." in path:
        query = path.find("?")
        if query < 0:
            path = _squash_segments(path)
        else:
            path = _squash_segments(path[:query]) + path[query:]
    return path.lower()


def _squash_segments(path: str) -> str:
    if "//" not in path and "/." not in path:
        return path
    segments: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment and segment != ".":
            segments.append(segment)
    out = "/".join(segments)
    if path.startswith("/"):
        out = "/" + out
    if segments and (path.endswith("/") or path.endswith("/.") or path.endswith("/..")):
        out += "/"
    return out


def strip_url(url: str, keep_paths: bool) -> str:
    """``url`` as the decision log and the sanction records keep it: never with credentials
    (``user:password@``) or a fragment, and without ``keep_paths`` only
    ``scheme://host[:port]/`` (a school that records no paths keeps none anywhere)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url if keep_paths else ""
    netloc = parts.netloc.rpartition("@")[2]
    if not keep_paths:
        return urlunsplit((parts.scheme, netloc, "/", "", ""))
    if netloc != parts.netloc or parts.fragment:
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    return url
