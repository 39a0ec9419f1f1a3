"""Page-level approvals: what "this page" opens, precisely.

An approval of one page, ``tiktok.com/@bbcnews``, opens:

1. **The page and what is below it** on that host and its sub-domains:
   ``www.tiktok.com/@bbcnews``, ``/@bbcnews/video/7312...``, ``/@bbcnews?lang=en``; never
   ``/@bbcnewsfake`` (segment boundaries, as path rules of the lists) nor ``/@someoneelse``.
2. **The platform's static hosts** (its family's CDN, image, video and script hosts in
   ``blocklists/platforms.yaml``), so that the page loads as it should. A host of the family
   that is not static (its API hosts, its other sites) stays blocked.
3. **The page's own calls to its own host**: a script on the approved page fetching
   ``www.tiktok.com/api/...`` (TikTok builds its pages that way). Such a request is opened only
   when the browser says it is a script's request, not a page load (``Sec-Fetch-Dest: empty``,
   which every current browser sends and a page cannot set), and its ``Referer`` is the
   approved page on the same host. Following a link to another page is a page load and is
   refused, so the rest of the platform stays closed; a client forging both headers (not a
   browser) gets the platform's data as JSON, not its pages.

A page approval needs the path: for a role whose HTTPS is not decrypted, or a site in
``no_intercept``, the gateway sees only the host name, and a page approval opens nothing there
but the static hosts.

Pure: no mitmproxy, database or web imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from schoolgate.core.hosts import normalize_host
from schoolgate.core.urlpaths import normalize_path, path_under

__all__ = ["PageTarget", "parse_page", "script_request"]

# Sec-Fetch-Dest values of requests a page's scripts make (fetch, XMLHttpRequest, beacons).
SCRIPT_DESTS = frozenset({"empty"})


@dataclass(frozen=True, slots=True)
class PageTarget:
    host: str  # "tiktok.com"
    prefix: str  # "/@bbcnews", normalised as list path rules are

    @property
    def text(self) -> str:
        return self.host + self.prefix

    def host_matches(self, host: str) -> bool:
        return host == self.host or host.endswith("." + self.host)

    def covers(self, host: str, path: str | None) -> bool:
        """Whether a request for ``host`` and ``path`` is the page or below it."""
        if path is None or not self.host_matches(host):
            return False
        return path_under(normalize_path(path), self.prefix)

    def opened_by_page(self, host: str, referer: str | None, fetch_dest: str | None) -> bool:
        """Whether a request to ``host`` is the approved page's own script calling its host."""
        if not referer or (fetch_dest or "").lower() not in SCRIPT_DESTS:
            return False
        try:
            parts = urlsplit(referer)
            ref_host = normalize_host(parts.hostname or "")
        except ValueError:
            return False
        if ref_host != host:
            return False
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return self.covers(ref_host, path)


def parse_page(text: str) -> PageTarget | None:
    """``tiktok.com/@bbcnews`` or ``https://www.tiktok.com/@bbcnews?x=1`` -> the page target
    (host and path; the query is dropped, the page is its path); None when it is not a page
    (no host, or no path beyond ``/``)."""
    text = (text or "").strip()
    if not text:
        return None
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        host = normalize_host(parts.hostname or "")
    except ValueError:
        return None
    if host.startswith("www.") and host.count(".") >= 2:
        host = host[4:]  # the page is the same on tiktok.com and www.tiktok.com
    if not host or "." not in host:
        return None
    prefix = normalize_path(parts.path or "/").rstrip("/")
    if not prefix:
        return None
    return PageTarget(host, prefix)


def script_request(fetch_dest: str | None) -> bool:
    return (fetch_dest or "").lower() in SCRIPT_DESTS
