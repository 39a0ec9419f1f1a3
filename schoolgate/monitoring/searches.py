"""Recognising a search in a request and decoding its term.

:func:`capture` takes what the gateway sees of a request (host, path with its query, method,
and for the few engines that POST a search, the body) and answers a :class:`Search` or None.
It covers the engines pupils use: Google (web, images, videos, news; every country domain),
Bing, DuckDuckGo (``html.`` and ``lite.`` included, GET or POST), Yahoo (``p``), Ecosia, Brave
Search, YouTube (``search_query``, YouTube Music, and the apps' ``youtubei/v1/search`` JSON
POST), the in-app searches of TikTok, Instagram, Pinterest and Reddit, and Qwant, Startpage,
Yandex, Baidu, Ask and Wikipedia.

Decisions, for what a pupil may send:

* **Decoding**: ``+`` and percent escapes; parameter *names* are decoded too (``%71=`` is
  ``q=``). A value that is not UTF-8 is read in the charset the engine was told (Google's
  ``ie``, Yahoo's ``ei``), else with replacement characters and ``malformed`` set. Control
  characters become spaces and whitespace is collapsed.
* **Repeated parameters**: engines differ (first or last wins) and none documents it, so a
  pupil could hide a term behind a harmless one. Every distinct value is kept, in order, joined
  with `` | ``, and ``repeated`` is set: the matcher sees all of them.
* **Length**: a term is cut to :data:`MAX_TERM` characters (``truncated``); at most
  :data:`MAX_RAW` characters of a raw value are decoded, so a megabyte of query costs nothing.
* **Counting once**: a further page of results, infinite scroll, or the images tab of the same
  search is the same search. ``continuation`` marks further pages, and :attr:`Search.key` is
  the same across an engine's tabs; :class:`SearchDeduper` drops repeats within a few minutes.
* **Suggestions** (autocomplete, one request per keystroke) are what a pupil typed and did not
  submit. They are recognised and marked ``suggestion`` (so they are never counted as
  searches), but :func:`capture` only returns them when asked (``suggestions=True``); the
  documented use is to record a suggestion only when it matches a risk term.
"""

from __future__ import annotations

import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote, unquote_to_bytes

from schoolgate.core.hosts import normalize_host
from schoolgate.monitoring.engines import GOOGLE_VERTICALS, Engine, Route, engine_of

MAX_TERM = 500
MAX_RAW = MAX_TERM * 12  # a 4-byte character percent-encoded is 12 characters
MAX_JSON_BODY = 256 * 1024
SEPARATOR = " | "


@dataclass(frozen=True)
class Search:
    """One search: the engine, the decoded term and how it was made. (Not ``slots``: capture
    builds it by setting its ``__dict__`` at once, far cheaper than the frozen ``__init__``'s
    nine ``object.__setattr__`` calls; for the usual query, only the fields that differ from
    their defaults, which the class holds and every reader of a field finds there.)"""

    engine: str
    term: str
    vertical: str = "web"  # web, images, videos, news, shopping, users, hashtags, music
    suggestion: bool = False  # typed, not submitted (autocomplete)
    continuation: bool = False  # a further page of results of the same search
    truncated: bool = False
    repeated: bool = False  # the parameter came more than once: every value is in the term
    malformed: bool = False  # not valid in its charset: replacement characters in the term
    scope: str | None = None  # where inside a site, e.g. "r/selfharm" on Reddit

    @property
    def key(self) -> tuple[str, str, bool]:
        """The same for every page and tab of one search (for :class:`SearchDeduper`)."""
        return (self.engine, " ".join(self.term.casefold().split()), self.suggestion)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"engine": self.engine, "term": self.term}
        out["vertical"] = self.vertical
        for name in ("suggestion", "continuation", "truncated", "repeated", "malformed"):
            if getattr(self, name):
                out[name] = True
        if self.scope:
            out["scope"] = self.scope
        return out


_SUBREDDIT = re.compile(r"/r/([a-z0-9_]{2,32})(/search(?:\.json)?)")
_INSTAGRAM_TAG = re.compile(r"/explore/tags/([^/]{1,200})")
_NOT_JSON = object()
_HASHTAG = Route()
_YAHOO_SUGGEST = Route(("command",), suggestion=True)


@lru_cache(maxsize=8192)
def _engine_as_sent(host: str) -> Engine | None:
    """:func:`engine_of` for a host as the request sent it (a port or capitals): one cached
    look-up for a host seen before, without normalising it again."""
    return engine_of(normalize_host(host))


def needs_body(host: str, path: str | None, method: str) -> bool:
    """Whether :func:`capture` reads this request's body (a search POSTed as a form or JSON)."""
    if method.upper() != "POST" or not path:
        return False
    found = engine_of(normalize_host(host))
    if found is None:
        return False
    route = found[1].get(_route_of(path))
    return route is not None and route.body is not None


def _route_of(path: str) -> str:
    return _route_name(path.partition("?")[0])


def _route_name(head: str) -> str:
    """The route of a path's part before its query: lower case, without a fragment, Yahoo's
    ";_ylt=..." or a trailing slash."""
    if "#" in head:  # (a test is cheaper than a partition, and most have neither)
        head = head.partition("#")[0]
    if ";" in head:
        head = head.partition(";")[0]
    route = head.lower()
    if route[-1:] == "/" and len(route) > 1:
        route = route.rstrip("/") or "/"
    return route


def capture(
    host: str,
    path: str | None,
    method: str = "GET",
    body: bytes | None = None,
    content_type: str | None = None,
    *,
    suggestions: bool = False,
) -> Search | None:
    """The search this request makes, or None.

    ``host`` as sent (a port or capitals are fine); ``path`` with its query; ``body`` only
    matters for a POST that :func:`needs_body` names. ``suggestions``: also return
    autocomplete requests (marked ``suggestion``).
    """
    if not path:
        return None
    found = _engine_as_sent(host)
    if found is None:
        return None
    engine, routes = found
    head, _, query = path.partition("?")
    # The usual: the path before the query is a route as written (routes are lower case,
    # with no "#", ";" or trailing slash), so it needs no cleaning.
    route = routes.get(head)
    scope = None
    vertical_override = None
    if route is None:
        route_name = _route_name(head)
        route = routes.get(route_name) if route_name != head else None
        if route is None:
            route, scope, vertical_override = _pattern_route(engine, route_name, routes)
            if route is None:
                return None
            if vertical_override == "hashtags":
                return _hashtag(engine, scope)
    if route.suggestion and not suggestions:
        return None
    if "#" in query:
        query = query.partition("#")[0]
    quick = route.quick
    if quick is not None and (route.body is None or method == "GET"):
        # The usual query: one match instead of parsing it. Anything else (a repeat, a page,
        # a name to decode, a value not UTF-8) is read below as before.
        quickly = quick.fullmatch(query)
        if quickly is not None:
            raw = quickly[1]
            if "%" not in raw and raw.isascii():
                term, malformed = raw[:MAX_RAW].replace("+", " "), False
            else:
                term, malformed = _decode(raw, None)
            if not malformed:
                if not term.isprintable():
                    term = term.translate(_CONTROLS)
                term = " ".join(term.split())
                if not term:
                    return None
                truncated = len(term) > MAX_TERM
                if truncated:
                    term = term[:MAX_TERM].rstrip()
                search = _new(Search)
                fields: dict[str, object] = {"engine": engine, "term": term}
                # The other fields only where they differ from their defaults (which the
                # class holds): a smaller dict to build.
                vertical = vertical_override or route.vertical
                if vertical != "web":
                    fields["vertical"] = vertical
                if route.suggestion:
                    fields["suggestion"] = True
                if truncated:
                    fields["truncated"] = True
                if scope is not None:
                    fields["scope"] = scope
                _set_fields(search, fields)
                return search
    wanted = route.wanted
    params = _parse(query, wanted)
    is_post = method == "POST" or (method != "GET" and method.upper() == "POST")
    if route.body == "form" and is_post and body:
        if content_type is None or "form" in content_type.lower():
            form = body[: MAX_RAW * 4].decode("utf-8", errors="replace")
            for key, values in _parse(form, wanted).items():
                params.setdefault(key, []).extend(values)
    more = False
    if route.json_param or (route.body == "json" and is_post):
        texts, malformed, more = _json_texts(route, params, body)
    else:
        raw_values = None
        for name in route.params:
            given = params.get(name)
            if given:
                if len(given) > 1:
                    given = [v for v in given if v.strip(" +")]
                elif not given[0].strip(" +"):
                    continue
                if given:
                    raw_values = given
                    break
        if raw_values is None:
            return None
        charset = None
        if route.charset_param:
            given = params.get(route.charset_param)
            charset = given[0] if given else None
        if len(raw_values) == 1:  # the usual case: one value
            raw = raw_values[0]
            if "%" not in raw and raw.isascii():  # _decode's first case, without the call
                texts, malformed = [raw[:MAX_RAW].replace("+", " ")], False
            else:
                text, malformed = _decode(raw, charset)
                texts = [text]
        else:
            texts, malformed = [], False
            for raw in raw_values:
                text, bad = _decode(raw, charset)
                malformed |= bad
                texts.append(text)
    if len(texts) == 1:  # the usual: one value
        term = texts[0]
        if not term.isprintable():
            term = term.translate(_CONTROLS)
        term = " ".join(term.split())
        if not term:
            return None
        repeated = False
    else:
        cleaned: list[str] = []
        for text in texts:
            if not text.isprintable():
                text = text.translate(_CONTROLS)
            text = " ".join(text.split())
            if text and text not in cleaned:
                cleaned.append(text)
        if not cleaned:
            return None
        repeated = len(cleaned) > 1
        term = SEPARATOR.join(cleaned) if repeated else cleaned[0]
    truncated = len(term) > MAX_TERM
    if truncated:
        term = term[:MAX_TERM].rstrip()
    vertical = vertical_override or route.vertical
    if route.vertical_by:
        name, table = route.vertical_by
        for value in params.get(name, ()):
            vertical = table.get(value.lower(), vertical)
        if engine == "google" and "udm" in params:
            vertical = GOOGLE_VERTICALS.get(params["udm"][0], vertical)
    if not more and route.pages and len(params) > 1:
        more = _further_page(params, route.pages)
    search = _new(Search)
    _set_fields(search, {
        "engine": engine, "term": term, "vertical": vertical, "suggestion": route.suggestion,
        "continuation": more, "truncated": truncated, "repeated": repeated,
        "malformed": malformed, "scope": scope,
    })  # fmt: skip
    return search


def _json_texts(
    route: Route, params: dict[str, list[str]], body: bytes | None
) -> tuple[list[str], bool, bool]:
    """A search carried in JSON (a body, or the ``data`` parameter): its texts, whether
    they were malformed, and whether it is a continuation."""
    source: str | bytes | None = None
    if route.json_param:
        source = _unquote_value((params.get(route.json_param) or [""])[0])
    elif body:
        source = body
    if not source:
        return [], False, False
    texts, malformed = [], False
    value = _json_value(source, route.json_path)
    if isinstance(value, str):
        clean = _no_surrogates(value)
        malformed = clean != value
        texts.append(clean)
    return texts, malformed, _json_has_any(source, route.json_more)


_new = object.__new__
# A Search's fields set at once, as its __dict__ (a frozen dataclass refuses setattr).
_set_fields = Search.__dict__["__dict__"].__set__


def _pattern_route(
    engine: str, route_name: str, routes: dict[str, Route]
) -> tuple[Route | None, str | None, str | None]:
    """Routes with a name in the path: a subreddit's search, an Instagram hashtag, Yahoo's
    suggestions."""
    if engine == "reddit":
        found = _SUBREDDIT.fullmatch(route_name)
        if found:
            return routes[found.group(2)], f"r/{found.group(1)}", None
    elif engine == "instagram":
        found = _INSTAGRAM_TAG.fullmatch(route_name)
        if found:
            return _HASHTAG, found.group(1), "hashtags"
    elif engine == "yahoo" and route_name.startswith("/sugg/"):
        return _YAHOO_SUGGEST, None, None
    return None, None, None


def _hashtag(engine: str, tag: str | None) -> Search | None:
    text, bad = _decode(tag or "", None)
    text = " ".join(text.translate(_CONTROLS).split())[:MAX_TERM]  # a rare path
    if not text:
        return None
    return Search(engine=engine, term=f"#{text}", vertical="hashtags", malformed=bad)


def _parse(query: str, wanted: frozenset[str]) -> dict[str, list[str]]:
    """Parameter name (decoded) -> raw values in order, for the names in ``wanted`` (a name
    spelt plainly is looked up as it is: only the others are decoded). Values stay encoded
    until needed."""
    out: dict[str, list[str]] = {}
    if not query:
        return out
    plain = _PLAIN_NAMES
    for item in query.split("&"):
        key, _, value = item.partition("=")
        if key not in wanted:
            if key in plain:  # seen before: nothing to decode, so never a wanted name
                continue
            if "%" in key or "+" in key:
                key = unquote(key.replace("+", " "), errors="replace").strip()
            else:
                stripped = key.strip()
                if stripped == key:
                    if len(plain) >= MAX_PLAIN_NAMES:
                        plain.clear()  # simpler than least-recently-used; refilled at once
                    plain.add(key)
                    continue
                key = stripped
            if key not in wanted:
                continue
        found = out.get(key)
        if found is None:
            out[key] = [value]
        else:
            found.append(value)
    return out


# Parameter names (``hl``, ``source``, ``oq``, ...) seen spelt plainly: nothing to decode or
# strip, so a name not wanted as it is never will be; the look-up is cheaper than the checks.
_PLAIN_NAMES: set[str] = set()
MAX_PLAIN_NAMES = 4096
_CONTROLS = {c: " " for c in (*range(32), 127)}


def _decode(raw: str, charset: str | None) -> tuple[str, bool]:
    """Percent-decoding and ``+``; UTF-8, or ``charset`` when the engine was told one."""
    if "%" not in raw and raw.isascii():
        return raw[:MAX_RAW].replace("+", " "), False
    # A path mitmproxy could not decode as UTF-8 carries surrogate escapes: back to bytes.
    data = unquote_to_bytes(raw[:MAX_RAW].replace("+", " ").encode("utf-8", "surrogateescape"))
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        pass
    if charset:
        try:
            return data.decode(charset.strip()), False
        except (LookupError, UnicodeDecodeError):
            pass
    return data.decode("utf-8", errors="replace"), True


def _no_surrogates(text: str) -> str:
    """JSON escapes can carry lone surrogates (``\\ud800``), which no database stores."""
    if text.isascii():
        return text
    return text.encode("utf-8", errors="replace").decode("utf-8")


def _unquote_value(raw: str) -> str:
    return _decode(raw, None)[0]


def _json_value(source: str | bytes, path: tuple[str, ...]) -> object:
    """The value at ``path`` in a JSON document; a document too big to parse is searched for
    the last key's first string value instead, so padding cannot hide a search."""
    if len(source) <= MAX_JSON_BODY:
        try:
            value: object = json.loads(source)
        except (ValueError, UnicodeDecodeError):
            value = _NOT_JSON
        if value is not _NOT_JSON:
            for key in path:
                if not isinstance(value, dict):
                    return None
                value = value.get(key)
            return value
    text = source if isinstance(source, str) else source.decode("utf-8", errors="replace")
    pattern = '"' + re.escape(path[-1]) + r'"\s*:\s*("(?:[^"\\]|\\.){0,' + str(MAX_RAW) + '}")'
    found = re.search(pattern, text)
    if not found:
        return None
    try:
        return json.loads(found.group(1))
    except ValueError:
        return None


def _json_has_any(source: str | bytes, keys: tuple[str, ...]) -> bool:
    if not keys:
        return False
    needle = source if isinstance(source, str) else source.decode("utf-8", errors="replace")
    present = r'"\s*:\s*(?!null|""|\[\]|\{\})'
    return any(re.search('"' + re.escape(key) + present, needle) for key in keys)


def _further_page(params: dict[str, list[str]], pages: tuple[tuple[str, int | None], ...]) -> bool:
    for name, first in pages:
        for value in params.get(name, ()):
            if first is None:
                if value:
                    return True
                continue
            try:
                if int(value) > first:
                    return True
            except ValueError:
                continue
    return False


class SearchDeduper:
    """Counts a search once: the same person's same search on the same engine again within
    ``window_seconds`` (further pages, another tab, a reload) is a repeat. The window slides
    with each repeat. Memory is bounded (the least recently seen are forgotten first)."""

    def __init__(
        self,
        window_seconds: float = 300.0,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window_seconds
        self.max_entries = max_entries
        self.clock = clock
        self._seen: OrderedDict[tuple[object, ...], float] = OrderedDict()

    def first_time(self, who: str, search: Search) -> bool:
        """True when this is a new search to record; False for a repeat."""
        now = self.clock()
        key = (who, *search.key)
        last = self._seen.pop(key, None)
        self._seen[key] = now
        if len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)
        return last is None or now - last > self.window
