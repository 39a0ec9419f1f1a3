"""Safe search and YouTube Restricted Mode, enforced at the proxy and locked on.

Pure functions: :func:`enforce` says which request headers to set and how to rewrite the path
(with its query) of an intercepted request; the gateway applies it. What it does, per service:

* **Google** (``google.<tld>``, ``www.google.co.uk``...): on search paths (``/search``,
  ``/images``, ``/webhp``, ``/imghp``, ``/videohp``, ``/complete/search``, ``/s``, ``/m/search``,
  and ``/`` with a query) every ``safe`` parameter is removed and ``safe=active`` added: a
  user's ``safe=off`` (or several of them) loses, and the account's SafeSearch setting is
  overridden for that request. Google's documented network-wide mechanism is DNS:
  ``www.google.com`` -> ``forcesafesearch.google.com``; schools can add it too (it also covers
  devices whose HTTPS is not intercepted).
* **Bing** (``bing.com``, ``www.bing.com``, ``cn.bing.com``): on ``/search``,
  ``/images/...``, ``/videos/...``, ``/news/search``, ``/shop`` and autosuggest every ``adlt``
  parameter is removed and ``adlt=strict`` added. The ``SRCHHPGUSR`` cookie's ``ADLT`` field is
  left alone (the parameter wins for the request; editing cookies would need the request's
  headers). DNS alternative: ``strict.bing.com``.
* **DuckDuckGo** (``duckduckgo.com``, ``html.``/``lite.``/``links.duckduckgo.com``): ``kp=1``
  (strict; ``-1`` moderate, ``-2`` off) replaces any ``kp`` on the search pages; the result
  endpoints (``/d.js``, ``/i.js``, ``/v.js``, ``/news.js``) get ``p=1`` and lose ``ex`` (their
  moderate/off switch). A search POSTed to ``html.duckduckgo.com`` carries its settings in the
  body, which this does not edit: the DNS mapping ``safe.duckduckgo.com`` covers it.
* **YouTube**: the ``YouTube-Restrict: Strict`` (or ``Moderate``) request header, which Google
  documents for proxies, on ``youtube.com``, ``www.youtube.com``, ``m.youtube.com``,
  ``youtubei.googleapis.com``, ``youtube.googleapis.com``, ``www.youtube-nocookie.com``
  (and ``music.youtube.com``).

Other hosts are answered with None after a couple of string checks (no parsing, no regex).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote_plus

from schoolgate.core.hosts import is_google_host

YOUTUBE_HOSTS = frozenset(
    {
        "youtube.com",
        "www.youtube.com",
        "m.youtube.com",
        "music.youtube.com",
        "youtubei.googleapis.com",
        "youtube.googleapis.com",
        "www.youtube-nocookie.com",
    }
)
YOUTUBE_HEADER = "YouTube-Restrict"
YOUTUBE_VALUES = {"strict": "Strict", "moderate": "Moderate"}

GOOGLE_PATHS = frozenset(
    {
        "/search",
        "/images",
        "/webhp",
        "/imghp",
        "/videohp",
        "/complete/search",
        "/s",
        "/m/search",
    }
)
BING_HOSTS = frozenset({"bing.com", "www.bing.com", "cn.bing.com"})
BING_PREFIXES = ("/search", "/images/", "/videos/", "/news/search", "/shop", "/as/suggestions")
DDG_HOSTS = frozenset(
    {
        "duckduckgo.com",
        "www.duckduckgo.com",
        "html.duckduckgo.com",
        "lite.duckduckgo.com",
        "links.duckduckgo.com",
        "start.duckduckgo.com",
    }
)
DDG_PAGES = frozenset({"/", "/html", "/html/", "/lite", "/lite/"})
DDG_ENDPOINTS = frozenset({"/d.js", "/i.js", "/v.js", "/news.js"})


@dataclass(frozen=True, slots=True)
class SafeSearchChange:
    """What to change in a request: headers to set, the new path (None: unchanged), and a
    short note for the log."""

    set_headers: dict[str, str] = field(default_factory=dict)
    new_path: str | None = None
    what: str = ""


def force_params(path: str, values: dict[str, str | None]) -> str:
    """``path`` with every parameter named in ``values`` removed (whatever its case or
    percent-encoding), then ``name=value`` appended for each value that is not None. The
    other parameters keep their order and spelling."""
    route, sep, query = path.partition("?")
    query, hash_sep, fragment = query.partition("#")
    names = {name.lower() for name in values}
    kept = []
    if sep:
        for item in query.split("&"):
            if not item:
                continue
            key = item.partition("=")[0]
            if "%" in key or "+" in key:
                key = unquote_plus(key)
            if key.strip().lower() in names:
                continue
            kept.append(item)
    kept.extend(f"{name}={value}" for name, value in values.items() if value is not None)
    new = f"{route}?{'&'.join(kept)}" if kept else route
    return f"{new}#{fragment}" if hash_sep else new


def _rewrite(path: str, values: dict[str, str | None], what: str) -> SafeSearchChange | None:
    new_path = force_params(path, values)
    return None if new_path == path else SafeSearchChange({}, new_path, what)


def may_change(host: str) -> bool:
    """False when :func:`enforce` answers None for ``host`` whatever the path and settings:
    a host none of the services above can be. :func:`enforce` asks it first, so a service it
    learns must be added here; the gateway asks it alone, for every request, and remembers
    the answer."""
    return host in YOUTUBE_HOSTS or "google." in host or "bing." in host or "duckduckgo." in host


def enforce(
    host: str, path: str | None, *, safe_search: bool, youtube_restrict: str | None
) -> SafeSearchChange | None:
    """The change that enforces safe search / Restricted Mode on one request, or None.

    ``host`` normalised (lower case, no port, see :func:`schoolgate.core.hosts.normalize_host`);
    ``path`` with its query, as sent (None for a request whose path is not known).
    ``youtube_restrict``: ``"strict"``, ``"moderate"`` or None.
    """
    if not may_change(host):  # the one list of the hosts handled below
        return None
    if youtube_restrict and host in YOUTUBE_HOSTS:
        value = YOUTUBE_VALUES.get(youtube_restrict.lower(), "Strict")
        return SafeSearchChange(
            {YOUTUBE_HEADER: value}, None, f"youtube restricted mode {value.lower()}"
        )
    if not safe_search or not path:
        return None
    if "google." in host:
        if not is_google_host(host):
            return None
        route = path.partition("?")[0].lower()
        if route in GOOGLE_PATHS or (route == "/" and "?" in path):
            return _rewrite(path, {"safe": "active"}, "google safe=active")
        return None
    if "bing." in host:
        if host in BING_HOSTS and path.lower().startswith(BING_PREFIXES):
            return _rewrite(path, {"adlt": "strict"}, "bing adlt=strict")
        return None
    if "duckduckgo." in host:
        if host not in DDG_HOSTS:
            return None
        route = path.partition("?")[0].lower()
        if route in DDG_ENDPOINTS:
            return _rewrite(path, {"kp": "1", "p": "1", "ex": None}, "duckduckgo p=1")
        if route in DDG_PAGES and (route != "/" or "?" in path):
            return _rewrite(path, {"kp": "1"}, "duckduckgo kp=1")
        return None
    return None
