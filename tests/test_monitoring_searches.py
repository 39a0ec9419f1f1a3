"""Search capture: real URLs of each engine, decoding, repeats, long terms, counting once."""

from __future__ import annotations

import json
from urllib.parse import quote, urlsplit

import pytest

from schoolgate.monitoring.searches import (
    MAX_TERM,
    SearchDeduper,
    capture,
    needs_body,
)


def _url(url: str, **kwargs):
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return capture(parts.netloc, path, **kwargs)


# Real URLs, as browsers and apps send them (tracking parameters shortened).
REAL = [
    # Google: web, images (tbm and udm), videos, news, country domains, pages
    (
        "https://www.google.com/search?q=how+to+revise+for+gcse+maths&oq=how+to+revise"
        "&gs_lcrp=EgZjaHJvbWU&sourceid=chrome&ie=UTF-8",
        "google",
        "how to revise for gcse maths",
        "web",
    ),
    (
        "https://www.google.co.uk/search?q=photosynthesis+diagram&tbm=isch&ved=0ahUKEw&hl=en-GB",
        "google",
        "photosynthesis diagram",
        "images",
    ),
    ("https://www.google.co.uk/search?q=volcano&udm=2&fbs=AEQNm0", "google", "volcano", "images"),
    (
        "https://www.google.com/search?q=french+revolution&tbm=vid",
        "google",
        "french revolution",
        "videos",
    ),
    ("https://www.google.com.au/search?q=bushfire+news&tbm=nws", "google", "bushfire news", "news"),
    ("https://google.de/search?q=caf%C3%A9+kuchen", "google", "café kuchen", "web"),
    ("https://images.google.com/images?q=tiger", "google", "tiger", "images"),
    ("https://www.google.co.uk/webhp?q=bbc+bitesize", "google", "bbc bitesize", "web"),
    ("https://news.google.com/search?q=election&hl=en-GB&gl=GB", "google", "election", "web"),
    # Bing
    (
        "https://www.bing.com/search?q=the+tudors&form=QBLH&sp=-1&pq=the+tudors",
        "bing",
        "the tudors",
        "web",
    ),
    (
        "https://www.bing.com/images/search?q=rainforest+layers&form=HDRSC3&first=1",
        "bing",
        "rainforest layers",
        "images",
    ),
    (
        "https://www.bing.com/videos/search?q=long+division&FORM=HDRSC4",
        "bing",
        "long division",
        "videos",
    ),
    ("https://www.bing.com/news/search?q=climate&FORM=HDRSC6", "bing", "climate", "news"),
    # DuckDuckGo
    (
        "https://duckduckgo.com/?q=romeo+and+juliet+summary&t=h_&ia=web",
        "duckduckgo",
        "romeo and juliet summary",
        "web",
    ),
    ("https://duckduckgo.com/?q=owls&t=h_&iax=images&ia=images", "duckduckgo", "owls", "images"),
    ("https://html.duckduckgo.com/html/?q=periodic+table", "duckduckgo", "periodic table", "web"),
    ("https://lite.duckduckgo.com/lite/?q=river+thames", "duckduckgo", "river thames", "web"),
    (
        "https://links.duckduckgo.com/d.js?q=owls&kl=wt-wt&l=wt-wt&s=0&vqd=4-1234",
        "duckduckgo",
        "owls",
        "web",
    ),
    # Yahoo: p, path parameters, images and video hosts
    (
        "https://uk.search.yahoo.com/search;_ylt=AwrFGzQ;_ylc=X1MDMjExNDcxNzAwMw--?p=world+war+one&fr=sfp",
        "yahoo",
        "world war one",
        "web",
    ),
    ("https://search.yahoo.com/search?p=fractions&fr=yfp-t&ei=UTF-8", "yahoo", "fractions", "web"),
    (
        "https://images.search.yahoo.com/search/images?p=eiffel+tower&fr=yfp",
        "yahoo",
        "eiffel tower",
        "images",
    ),
    (
        "https://video.search.yahoo.com/search/video?p=times+tables+song",
        "yahoo",
        "times tables song",
        "videos",
    ),
    # Ecosia, Brave
    ("https://www.ecosia.org/search?method=index&q=glaciers", "ecosia", "glaciers", "web"),
    ("https://www.ecosia.org/images?q=glaciers", "ecosia", "glaciers", "images"),
    (
        "https://search.brave.com/search?q=plate+tectonics&source=web",
        "brave",
        "plate tectonics",
        "web",
    ),
    ("https://search.brave.com/images?q=plate+tectonics", "brave", "plate tectonics", "images"),
    # YouTube
    (
        "https://www.youtube.com/results?search_query=crash+course+biology",
        "youtube",
        "crash course biology",
        "videos",
    ),
    (
        "https://m.youtube.com/results?search_query=minecraft+redstone&sp=EgIQAQ%253D%253D",
        "youtube",
        "minecraft redstone",
        "videos",
    ),
    ("https://music.youtube.com/search?q=holst+planets", "youtube", "holst planets", "music"),
    # TikTok, Instagram, Pinterest, Reddit (in-app searches)
    (
        "https://www.tiktok.com/search?q=revision%20tips&t=1732000000000",
        "tiktok",
        "revision tips",
        "web",
    ),
    (
        "https://www.tiktok.com/search/video?q=science%20experiment",
        "tiktok",
        "science experiment",
        "videos",
    ),
    (
        "https://www.tiktok.com/api/search/general/full/?aid=1988&keyword=study%20with%20me"
        "&offset=0&search_source=normal_search",
        "tiktok",
        "study with me",
        "web",
    ),
    (
        "https://www.instagram.com/explore/search/keyword/?q=art%20gcse",
        "instagram",
        "art gcse",
        "web",
    ),
    ("https://www.instagram.com/explore/tags/artgcse/", "instagram", "#artgcse", "hashtags"),
    (
        "https://www.pinterest.co.uk/search/pins/?q=art%20journal%20ideas&rs=typed",
        "pinterest",
        "art journal ideas",
        "web",
    ),
    (
        "https://uk.pinterest.com/search/boards/?q=classroom%20display",
        "pinterest",
        "classroom display",
        "boards",
    ),
    ("https://www.reddit.com/search/?q=gcse+revision&type=link", "reddit", "gcse revision", "web"),
    ("https://old.reddit.com/search?q=a+level+physics", "reddit", "a level physics", "web"),
    # Others the event log already recognised
    ("https://www.qwant.com/?q=volcans&t=web", "qwant", "volcans", "web"),
    ("https://www.startpage.com/do/search?query=ada+lovelace", "startpage", "ada lovelace", "web"),
    ("https://yandex.com/search/?text=moscow+metro", "yandex", "moscow metro", "web"),
    ("https://www.baidu.com/s?wd=%E9%95%BF%E5%9F%8E", "baidu", "长城", "web"),
    (
        "https://en.wikipedia.org/w/index.php?search=Ada+Lovelace&title=Special%3ASearch",
        "wikipedia",
        "Ada Lovelace",
        "web",
    ),
    ("https://en.wikipedia.org/wiki/Special:Search?search=mitosis", "wikipedia", "mitosis", "web"),
]


@pytest.mark.parametrize(("url", "engine", "term", "vertical"), REAL)
def test_real_search_urls(url, engine, term, vertical):
    found = _url(url)
    assert found is not None
    assert (found.engine, found.term, found.vertical) == (engine, term, vertical)
    assert not found.suggestion and not found.continuation
    assert not found.truncated and not found.repeated and not found.malformed


@pytest.mark.parametrize(
    "url",
    [
        "https://www.google.com/",
        "https://www.google.com/url?q=https://example.com/&sa=U",  # a result's redirect
        "https://www.google.com/maps/search/?q=cafe",
        "https://www.googleapis.com/search?q=x",
        "https://www.bing.com/maps?q=london",
        "https://www.youtube.com/watch?v=dQw4w9WgXcQ",
        "https://www.facebook.com/search/top?q=x",
        "https://www.reddit.com/r/gcse/",
        "https://www.google.com/search?q=",
        "https://www.google.com/search?q=+++",
        "https://www.google.com/search?hl=en",
        "https://notgoogle.com/search?q=x",
        "https://www.google.evil.example.com/search?q=x",
    ],
)
def test_not_a_search(url):
    assert _url(url) is None


def test_no_path_or_query():
    assert capture("www.google.com", None) is None
    assert capture("www.google.com", "/search") is None


def test_host_spelling_does_not_matter():
    found = capture("WWW.Google.CO.UK:443", "/search?q=tudor+houses")
    assert found is not None and found.term == "tudor houses"
    assert capture("www.google.co.uk.", "/search?q=x").term == "x"


# -- decoding ----------------------------------------------------------------------------------


def test_percent_plus_and_utf8():
    assert _url("https://www.google.com/search?q=na%C3%AFve+caf%C3%A9%2B1").term == "naïve café+1"
    assert _url("https://www.bing.com/search?q=%E2%9C%93%20done").term == "✓ done"


def test_encoded_parameter_name_is_still_the_search():
    assert _url("https://www.google.com/search?%71=hidden+term").term == "hidden term"


def test_latin1_with_google_ie_parameter():
    found = _url("https://www.google.co.uk/search?q=caf%E9&ie=ISO-8859-1")
    assert found.term == "café" and not found.malformed


def test_invalid_utf8_is_marked_and_replaced():
    found = _url("https://www.bing.com/search?q=sui%FFcide")
    assert found.malformed
    assert found.term == "sui\ufffdcide"


def test_raw_non_utf8_bytes_in_path():
    # mitmproxy gives undecodable path bytes as surrogate escapes
    path = b"/search?q=caf\xe9".decode("utf-8", "surrogateescape")
    found = capture("www.google.com", path)
    assert found is not None and found.malformed


def test_controls_and_whitespace_collapse():
    assert _url("https://www.google.com/search?q=a%00b%0A%0Dc%09%09d").term == "a b c d"


def test_repeated_parameter_keeps_every_value():
    found = _url("https://www.google.com/search?q=homework+help&q=self+harm")
    assert found.repeated
    assert found.term == "homework help | self harm"
    same = _url("https://www.google.com/search?q=x&q=x")
    assert same.term == "x" and not same.repeated


def test_first_named_parameter_wins_over_alias():
    found = _url("https://uk.search.yahoo.com/search?q=decoy&p=real+search")
    assert found.term == "real search"


def test_long_terms_are_cut_and_marked():
    found = _url("https://www.bing.com/search?q=" + "ab+" * 5000)
    assert found.truncated and len(found.term) <= MAX_TERM
    # a megabyte of escapes costs no more than its first characters
    found = _url("https://www.bing.com/search?q=" + "%E2%9C%93" * 300_000)
    assert found.truncated and found.term == "✓" * MAX_TERM


# -- POSTed searches ---------------------------------------------------------------------------


def test_duckduckgo_html_post_form():
    assert needs_body("html.duckduckgo.com", "/html/", "POST")
    found = capture(
        "html.duckduckgo.com",
        "/html/",
        "POST",
        b"q=photosynthesis+equation&b=&kl=uk-en",
        "application/x-www-form-urlencoded",
    )
    assert found is not None and found.term == "photosynthesis equation"
    nxt = capture(
        "lite.duckduckgo.com",
        "/lite/",
        "POST",
        b"q=photosynthesis+equation&s=30&dc=31&kl=uk-en",
        "application/x-www-form-urlencoded",
    )
    assert nxt.continuation and nxt.key == found.key


def test_startpage_post_form():
    found = capture("www.startpage.com", "/sp/search", "POST", b"query=war+poems&cat=web", None)
    assert found.term == "war poems"


def _youtubei(body: dict) -> bytes:
    return json.dumps(body).encode()


YOUTUBEI_CONTEXT = {
    "client": {"clientName": "WEB", "clientVersion": "2.20241120.01.00", "hl": "en-GB", "gl": "GB"}
}


def test_youtube_search_api_post():
    assert needs_body("www.youtube.com", "/youtubei/v1/search?prettyPrint=false", "POST")
    assert not needs_body("www.youtube.com", "/youtubei/v1/search", "GET")
    body = _youtubei({"context": YOUTUBEI_CONTEXT, "query": "how volcanoes form"})
    found = capture(
        "www.youtube.com", "/youtubei/v1/search?prettyPrint=false", "POST", body, "application/json"
    )
    assert found is not None
    assert (found.engine, found.term, found.vertical) == ("youtube", "how volcanoes form", "videos")
    app = capture("youtubei.googleapis.com", "/youtubei/v1/search?key=AIza", "POST", body)
    assert app.term == "how volcanoes form"


def test_youtube_continuation_is_not_a_new_search():
    body = _youtubei({"context": YOUTUBEI_CONTEXT, "continuation": "EpADEhJob3cgdm9sY2Fub2Vz"})
    assert capture("www.youtube.com", "/youtubei/v1/search", "POST", body) is None


def test_youtube_padded_body_is_still_read():
    padding = {"pad": "x" * 400_000}
    body = _youtubei({"context": {**YOUTUBEI_CONTEXT, **padding}, "query": "hidden search"})
    found = capture("www.youtube.com", "/youtubei/v1/search", "POST", body)
    assert found is not None and found.term == "hidden search"


def test_youtube_json_escapes_and_lone_surrogates():
    body = b'{"query": "caf\\u00e9 \\ud800 x"}'
    found = capture("www.youtube.com", "/youtubei/v1/search", "POST", body)
    assert found.term == "café ? x" and found.malformed
    assert capture("www.youtube.com", "/youtubei/v1/search", "POST", b"{not json") is None
    assert capture("www.youtube.com", "/youtubei/v1/search", "POST", b'{"query": 5}') is None


def test_pinterest_search_resource():
    data = json.dumps({"options": {"query": "bullet journal", "scope": "pins"}, "context": {}})
    path = "/resource/BaseSearchResource/get/?source_url=%2Fsearch%2Fpins%2F&data=" + quote(data)
    found = capture("www.pinterest.com", path)
    assert found.term == "bullet journal" and not found.continuation
    more = json.dumps({"options": {"query": "bullet journal", "bookmarks": ["Y2JVSG81"]}})
    again = capture("www.pinterest.com", "/resource/BaseSearchResource/get/?data=" + quote(more))
    assert again.continuation and again.key == found.key


# -- counting once -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "later"),
    [
        (
            "https://www.google.com/search?q=tudors",
            "https://www.google.com/search?q=tudors&start=10",
        ),
        (
            "https://www.google.com/search?q=tudors",
            "https://www.google.com/search?q=Tudors&tbm=isch",
        ),
        ("https://www.bing.com/search?q=tudors", "https://www.bing.com/search?q=tudors&first=11"),
        (
            "https://www.bing.com/images/search?q=tudors",
            "https://www.bing.com/images/async?q=tudors&first=36",
        ),
        (
            "https://uk.search.yahoo.com/search?p=tudors",
            "https://uk.search.yahoo.com/search?p=tudors&b=11",
        ),
        ("https://www.ecosia.org/search?q=tudors", "https://www.ecosia.org/search?q=tudors&p=1"),
        (
            "https://search.brave.com/search?q=tudors",
            "https://search.brave.com/search?q=tudors&offset=1",
        ),
        (
            "https://duckduckgo.com/?q=tudors&ia=web",
            "https://links.duckduckgo.com/d.js?q=tudors&s=23",
        ),
        (
            "https://www.reddit.com/search/?q=tudors",
            "https://www.reddit.com/search/?q=tudors&after=t3_abc",
        ),
        (
            "https://www.tiktok.com/api/search/general/full/?keyword=tudors&offset=0",
            "https://www.tiktok.com/api/search/general/full/?keyword=tudors&offset=12",
        ),
    ],
)
def test_pages_and_tabs_are_one_search(first, later):
    one, two = _url(first), _url(later)
    assert not one.continuation
    assert one.key == two.key
    if "start=" in later or "first=" in later or "&p=1" in later or "offset=1" in later:
        assert two.continuation
    dedupe = SearchDeduper(window_seconds=300, clock=lambda: 0.0)
    assert dedupe.first_time("pupil1", one)
    assert not dedupe.first_time("pupil1", two)
    assert dedupe.first_time("pupil2", two)  # someone else's search counts


def test_deduper_window_slides_and_expires():
    now = [0.0]
    dedupe = SearchDeduper(window_seconds=300, clock=lambda: now[0])
    search = _url("https://www.google.com/search?q=tudors")
    assert dedupe.first_time("p", search)
    now[0] = 200
    assert not dedupe.first_time("p", search)  # paging on, 200 s later
    now[0] = 450
    assert not dedupe.first_time("p", search)  # 250 s after the last page
    now[0] = 800
    assert dedupe.first_time("p", search)  # a new search after a quiet spell
    other = _url("https://www.bing.com/search?q=tudors")
    assert dedupe.first_time("p", other)  # another engine is another search


def test_deduper_memory_is_bounded():
    dedupe = SearchDeduper(window_seconds=300, max_entries=100, clock=lambda: 0.0)
    for n in range(1000):
        dedupe.first_time(f"p{n}", _url("https://www.google.com/search?q=x"))
    assert len(dedupe._seen) == 100


# -- suggestions -------------------------------------------------------------------------------

SUGGESTIONS = [
    (
        "https://www.google.com/complete/search?q=how+to+rev&cp=10&client=gws-wiz",
        "google",
        "how to rev",
    ),
    ("https://suggestqueries.google.com/complete/search?client=firefox&q=volc", "google", "volc"),
    (
        "https://www.bing.com/AS/Suggestions?pt=page.home&mkt=en-gb&qry=tud&cp=3&cvid=A1",
        "bing",
        "tud",
    ),
    ("https://duckduckgo.com/ac/?q=periodic&kl=wt-wt", "duckduckgo", "periodic"),
    (
        "https://uk.search.yahoo.com/sugg/gossip/gossip-gb-ura/?command=fract&output=sd1",
        "yahoo",
        "fract",
    ),
    ("https://ac.ecosia.org/autocomplete?q=glac&type=list", "ecosia", "glac"),
    ("https://search.brave.com/api/suggest?q=plate", "brave", "plate"),
    (
        "https://suggestqueries-clients6.youtube.com/complete/search?client=youtube&ds=yt&q=crash",
        "youtube",
        "crash",
    ),
    ("https://www.tiktok.com/api/search/general/sug/?keyword=revis", "tiktok", "revis"),
    (
        "https://www.instagram.com/api/v1/web/search/topsearch/?context=blended&query=art",
        "instagram",
        "art",
    ),
    ("https://www.reddit.com/api/subreddit_autocomplete_v2.json?query=gcs", "reddit", "gcs"),
]


@pytest.mark.parametrize(("url", "engine", "term"), SUGGESTIONS)
def test_suggestions_only_when_asked(url, engine, term):
    assert _url(url) is None
    found = _url(url, suggestions=True)
    assert found is not None
    assert (found.engine, found.term, found.suggestion) == (engine, term, True)


def test_a_suggestion_is_not_the_submitted_search():
    typed = _url("https://www.google.com/complete/search?q=tudors", suggestions=True)
    submitted = _url("https://www.google.com/search?q=tudors")
    assert typed.key != submitted.key


# -- scope ----------------------------------------------------------------------------------


def test_subreddit_search_names_the_community():
    found = _url("https://www.reddit.com/r/GCSE/search/?q=maths+paper+2&restrict_sr=1")
    assert (found.term, found.scope) == ("maths paper 2", "r/gcse")
    assert found.to_json() == {
        "engine": "reddit",
        "term": "maths paper 2",
        "vertical": "web",
        "scope": "r/gcse",
    }
