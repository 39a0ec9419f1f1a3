"""The search engines :func:`~schoolgate.monitoring.searches.capture` knows: each engine's
hosts, and for each of its endpoints (a :class:`Route`) how a search is carried."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from schoolgate.core.hosts import is_google_host
from schoolgate.core.safesearch import DDG_HOSTS


@dataclass(frozen=True, slots=True)
class Route:
    """How one engine endpoint carries a search.

    ``params``: the term's parameter names, the engine's own first. ``pages``: parameters that
    mark a further page, with the value of the first page (a value above it is a further page;
    ``None``: any non-empty value is). ``body``: ``"form"`` or ``"json"`` for a POSTed search;
    ``json``: where the term is in a JSON value (a body, or the ``data`` parameter).
    """

    params: tuple[str, ...] = ("q",)
    vertical: str = "web"
    suggestion: bool = False
    pages: tuple[tuple[str, int | None], ...] = ()
    body: str | None = None
    json_param: str | None = None
    json_path: tuple[str, ...] = ()
    json_more: tuple[str, ...] = ()  # JSON keys that mark a continuation
    charset_param: str | None = None
    vertical_by: tuple[str, dict[str, str]] | None = None
    # The parameters capture reads: the others of a query are skipped unparsed.
    wanted: frozenset[str] = field(init=False, default=frozenset())
    # The usual query in one match: the term's parameter once, and no other name capture
    # reads (but the charset's) nor one it would have to decode or strip (see capture).
    quick: re.Pattern[str] | None = field(init=False, default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = {*self.params, *(name for name, _ in self.pages), "udm"}
        for name in (self.json_param, self.charset_param, self.vertical_by and self.vertical_by[0]):
            if name:
                names.add(name)
        object.__setattr__(self, "wanted", frozenset(names))
        if self.params and not self.json_param:
            read = "|".join(map(re.escape, sorted(names - {self.charset_param}, reverse=True)))
            # (Other names spelt plainly in ASCII: no escape, "+" or space to decode or strip.)
            other = rf"(?!(?:{read})(?![^=&]))[A-Za-z0-9_.\-]*+(?:=[^&]*+)?+"
            term = "|".join(map(re.escape, self.params))
            quick = re.compile(rf"(?:{other}&)*+(?:{term})=([^&]*+)(?:&{other})*+")
            object.__setattr__(self, "quick", quick)


# Routes are lower case, without a trailing slash or Yahoo's ";_ylt=..." path parameters.
GOOGLE_VERTICALS = {
    "isch": "images",
    "vid": "videos",
    "nws": "news",
    "shop": "shopping",
    "bks": "books",
    "2": "images",
    "7": "videos",
    "12": "news",
    "14": "web",
    "28": "shopping",
    "36": "books",
}
_GOOGLE_PAGE = (("start", 0),)
GOOGLE = {
    "/search": Route(pages=_GOOGLE_PAGE, charset_param="ie", vertical_by=("tbm", GOOGLE_VERTICALS)),
    "/": Route(pages=_GOOGLE_PAGE, charset_param="ie"),
    "/webhp": Route(pages=_GOOGLE_PAGE, charset_param="ie"),
    "/images": Route(vertical="images", charset_param="ie"),
    "/m/search": Route(pages=_GOOGLE_PAGE, charset_param="ie"),
    "/complete/search": Route(suggestion=True),
}
GOOGLE_SUGGEST = {"/complete/search": Route(suggestion=True)}
_BING_PAGE = (("first", 1),)
BING = {
    "/search": Route(pages=_BING_PAGE),
    "/images/search": Route(vertical="images", pages=_BING_PAGE),
    "/images/async": Route(vertical="images", pages=_BING_PAGE),
    "/videos/search": Route(vertical="videos", pages=_BING_PAGE),
    "/videos/asyncv2": Route(vertical="videos", pages=_BING_PAGE),
    "/news/search": Route(vertical="news", pages=_BING_PAGE),
    "/shop": Route(vertical="shopping", pages=_BING_PAGE),
    "/as/suggestions": Route(("qry",), suggestion=True),
    "/osjson.aspx": Route(("query",), suggestion=True),
}
_DDG_PAGE = (("s", 0),)
_DDG_VERTICALS = ("ia", {"images": "images", "videos": "videos", "news": "news"})
DUCKDUCKGO = {
    "/": Route(vertical_by=_DDG_VERTICALS),
    "/html": Route(pages=_DDG_PAGE, body="form"),
    "/lite": Route(pages=_DDG_PAGE, body="form"),
    "/d.js": Route(pages=_DDG_PAGE),
    "/i.js": Route(vertical="images", pages=_DDG_PAGE),
    "/v.js": Route(vertical="videos", pages=_DDG_PAGE),
    "/news.js": Route(vertical="news", pages=_DDG_PAGE),
    "/ac": Route(suggestion=True),
}
_YAHOO_PAGE = (("b", 1),)
YAHOO = {
    "/search": Route(("p", "q"), pages=_YAHOO_PAGE, charset_param="ei"),
    "/search/images": Route(("p", "q"), "images", pages=_YAHOO_PAGE, charset_param="ei"),
    "/search/video": Route(("p", "q"), "videos", pages=_YAHOO_PAGE, charset_param="ei"),
    "/search/news": Route(("p", "q"), "news", pages=_YAHOO_PAGE, charset_param="ei"),
}
_ECOSIA_PAGE = (("p", 0),)
ECOSIA = {
    "/search": Route(pages=_ECOSIA_PAGE),
    "/images": Route(vertical="images", pages=_ECOSIA_PAGE),
    "/videos": Route(vertical="videos", pages=_ECOSIA_PAGE),
    "/news": Route(vertical="news", pages=_ECOSIA_PAGE),
}
ECOSIA_SUGGEST = {"/autocomplete": Route(suggestion=True), "/": Route(suggestion=True)}
_BRAVE_PAGE = (("offset", 0),)
BRAVE = {
    "/search": Route(pages=_BRAVE_PAGE),
    "/images": Route(vertical="images", pages=_BRAVE_PAGE),
    "/videos": Route(vertical="videos", pages=_BRAVE_PAGE),
    "/news": Route(vertical="news", pages=_BRAVE_PAGE),
    "/api/suggest": Route(suggestion=True),
}
YOUTUBE = {
    "/results": Route(("search_query", "q"), "videos"),
    "/search": Route(("search_query", "q"), "videos"),
    "/youtubei/v1/search": Route(
        (), "videos", body="json", json_path=("query",), json_more=("continuation",)
    ),
}
YOUTUBE_MUSIC = {**YOUTUBE, "/search": Route(("q",), "music")}
YOUTUBE_SUGGEST = {"/complete/search": Route(suggestion=True)}
_TIKTOK_PAGE = (("offset", 0), ("cursor", 0))
TIKTOK = {
    "/search": Route(),
    "/search/video": Route(vertical="videos"),
    "/search/user": Route(vertical="users"),
    "/search/live": Route(vertical="live"),
    "/search/photo": Route(vertical="images"),
    "/api/search/general/full": Route(("keyword",), pages=_TIKTOK_PAGE),
    "/api/search/item/full": Route(("keyword",), "videos", pages=_TIKTOK_PAGE),
    "/api/search/user/full": Route(("keyword",), "users", pages=_TIKTOK_PAGE),
    "/api/search/general/sug": Route(("keyword",), suggestion=True),
}
INSTAGRAM = {
    "/explore/search/keyword": Route(),
    "/web/search/topsearch": Route(("query",), suggestion=True),
    "/api/v1/web/search/topsearch": Route(("query",), suggestion=True),
}
PINTEREST = {
    "/search/pins": Route(),
    "/search/boards": Route(vertical="boards"),
    "/search/users": Route(vertical="users"),
    "/search/videos": Route(vertical="videos"),
    "/resource/basesearchresource/get": Route(
        (), json_param="data", json_path=("options", "query"), json_more=("bookmarks",)
    ),
    "/resource/advancedtypeaheadresource/get": Route(
        (), suggestion=True, json_param="data", json_path=("options", "term")
    ),
}
_REDDIT_PAGE = (("after", None),)
REDDIT = {
    "/search": Route(pages=_REDDIT_PAGE),
    "/search.json": Route(pages=_REDDIT_PAGE),
    "/api/subreddit_autocomplete_v2.json": Route(("query",), suggestion=True),
}
QWANT = {
    "/": Route(vertical_by=("t", {"images": "images", "videos": "videos", "news": "news"})),
    "/search": Route(),
}
STARTPAGE = {
    "/do/search": Route(("query", "q"), body="form"),
    "/do/dsearch": Route(("query", "q"), body="form"),
    "/sp/search": Route(("query", "q"), body="form"),
}
YANDEX = {"/search": Route(("text",)), "/images/search": Route(("text",), "images")}
BAIDU = {"/s": Route(("wd", "word"), charset_param="ie")}
ASK = {"/web": Route(), "/search": Route()}
WIKIPEDIA = {
    "/w/index.php": Route(("search",)),
    "/wiki/special:search": Route(("search",)),
    "/w/api.php": Route(("search",), suggestion=True),
}

Engine = tuple[str, dict[str, Route]]
EXACT_HOSTS: dict[str, Engine] = {
    **dict.fromkeys(("bing.com", "www.bing.com", "cn.bing.com"), ("bing", BING)),
    # The hosts whose searches safe search rewrites, and its own safe.duckduckgo.com.
    **dict.fromkeys(
        sorted(DDG_HOSTS | {"safe.duckduckgo.com"}),
        ("duckduckgo", DUCKDUCKGO),
    ),
    **dict.fromkeys(("ecosia.org", "www.ecosia.org"), ("ecosia", ECOSIA)),
    "ac.ecosia.org": ("ecosia", ECOSIA_SUGGEST),
    "search.brave.com": ("brave", BRAVE),
    **dict.fromkeys(
        ("youtube.com", "www.youtube.com", "m.youtube.com", "youtubei.googleapis.com"),
        ("youtube", YOUTUBE),
    ),
    "music.youtube.com": ("youtube", YOUTUBE_MUSIC),
    "suggestqueries-clients6.youtube.com": ("youtube", YOUTUBE_SUGGEST),
    **dict.fromkeys(("tiktok.com", "www.tiktok.com", "m.tiktok.com"), ("tiktok", TIKTOK)),
    **dict.fromkeys(("instagram.com", "www.instagram.com"), ("instagram", INSTAGRAM)),
    **dict.fromkeys(
        (
            "reddit.com",
            "www.reddit.com",
            "old.reddit.com",
            "new.reddit.com",
            "np.reddit.com",
            "sh.reddit.com",
            "m.reddit.com",
        ),
        ("reddit", REDDIT),
    ),
    **dict.fromkeys(("qwant.com", "www.qwant.com"), ("qwant", QWANT)),
    **dict.fromkeys(
        ("startpage.com", "www.startpage.com", "eu.startpage.com"), ("startpage", STARTPAGE)
    ),
    **dict.fromkeys(("baidu.com", "www.baidu.com", "m.baidu.com"), ("baidu", BAIDU)),
    **dict.fromkeys(("ask.com", "www.ask.com"), ("ask", ASK)),
}


def _country_host(host: str, name: str) -> bool:
    """``pinterest.com``, ``uk.pinterest.com``, ``pinterest.co.uk``: like Google's domains."""
    parts = host.split(".")
    try:
        index = parts.index(name)
    except ValueError:
        return False
    tail = parts[index + 1 :]
    return 1 <= len(tail) <= 2 and all(0 < len(label) <= 3 for label in tail)


@lru_cache(maxsize=8192)
def engine_of(host: str) -> Engine | None:
    """The engine and its routes for a normalised host, or None (a couple of string checks;
    cached, since a school's requests go to the same hosts again and again)."""
    found = EXACT_HOSTS.get(host)
    if found is not None:
        return found
    if "google" in host:
        if host == "suggestqueries.google.com":
            return ("google", GOOGLE_SUGGEST)
        if is_google_host(host):
            return ("google", GOOGLE)
        return None
    if host.endswith("search.yahoo.com"):
        return ("yahoo", YAHOO)
    if "pinterest." in host and _country_host(host, "pinterest"):
        return ("pinterest", PINTEREST)
    if host.startswith(("yandex.", "www.yandex.")) and _country_host(host, "yandex"):
        return ("yandex", YANDEX)
    if host.endswith(".wikipedia.org"):
        return ("wikipedia", WIKIPEDIA)
    return None
