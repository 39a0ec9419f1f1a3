"""Page titles from the first bytes of a response: real-world HTML shapes, any chunking."""

from __future__ import annotations

import gzip
import zlib

import pytest

from schoolgate.monitoring.titles import (
    PageTitle,
    TitleSniffer,
    codec_of,
    extract_titles,
    is_html,
    readable_encoding,
)

# The head of a news article, as such pages are written (trimmed)
NEWS = b"""<!DOCTYPE html>
<html lang="en-GB" class="no-js">
<head>
<meta charset="utf-8">
<!-- <title>An old title left in a comment</title> -->
<script>window.__INITIAL = {"title": "<title>not this</title>", "n": 1 < 2};</script>
<style>.title::before{content:"<title>"}</style>
<meta name="viewport" content="width=device-width, initial-scale=1">
<title data-rh="true">Teenagers &amp; social media: what parents &#8217;ought&#x2019;
  to know - BBC News</title>
<meta data-rh="true" content='Teenagers and social media' property="og:title"/>
<link rel="canonical" href="https://www.bbc.co.uk/news/x">
</head>
<body><svg><title>icon</title></svg><h1>Body</h1></body></html>
"""


def _chunked(data: bytes, size: int, **kwargs) -> PageTitle:
    sniffer = TitleSniffer(**kwargs)
    for i in range(0, len(data), size):
        if sniffer.feed(data[i : i + size]):
            break
    return sniffer.result()


def test_news_page_title_and_og_title():
    found = extract_titles(NEWS, "text/html; charset=utf-8")
    assert (
        found.title == "Teenagers & social media: what parents \u2019ought\u2019 to know - BBC News"
    )
    assert found.og_title == "Teenagers and social media"
    assert found.texts == (found.title, found.og_title)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 1000])
def test_any_chunking_gives_the_same_titles(size):
    assert _chunked(NEWS, size) == extract_titles(NEWS)


def test_stops_at_body_and_ignores_svg_titles():
    page = b"<html><body><svg><title>icon</title></svg><title>late</title>"
    assert extract_titles(page).title is None
    page = b"<html><head><svg><title>icon</title></svg><title>Real</title></head>"
    assert extract_titles(page).title == "Real"


def test_done_early_so_the_rest_is_not_copied():
    sniffer = TitleSniffer()
    assert sniffer.feed(b"<head><title>A</title><meta property=og:title content=B>")
    assert sniffer.result() == PageTitle("A", "B")
    sniffer = TitleSniffer()
    assert not sniffer.feed(b"<head><title>A</title>")  # og:title may still come
    assert sniffer.feed(b"</head><body>" + b"x" * 10000)


def test_tags_inside_a_title_are_text_and_whitespace_collapses():
    page = b"<title>\n  Maths <b>homework</b>\t help &lt;3  \n</title>"
    assert extract_titles(page).title == "Maths <b>homework</b> help <3"


def test_title_attributes_case_and_unquoted_meta():
    page = b"<HTML><HEAD><TITLE lang=en>Shouting</TITLE><META NAME=og:title CONTENT=Quiet></HEAD>"
    assert extract_titles(page) == PageTitle("Shouting", "Quiet")


def test_cdata_and_processing_instructions_are_skipped():
    page = (
        b"<?xml version='1.0'?><!DOCTYPE html><html><head><![CDATA[<title>no</title>]]>"
        b"<title>XHTML page</title></head>"
    )
    assert extract_titles(page, "application/xhtml+xml").title == "XHTML page"


def test_first_title_wins():
    assert extract_titles(b"<title>one</title><title>two</title>").title == "one"


def test_no_title():
    assert extract_titles(b"<html><head></head><body>hi</body>") == PageTitle()
    assert extract_titles(b"") == PageTitle()
    assert extract_titles(b"plain text, no markup") == PageTitle()


def test_unclosed_title_at_end_of_body_is_kept_as_far_as_it_went():
    found = extract_titles(b"<head><title>Cut off here")
    assert found.title == "Cut off here"


def test_limit_bounds_what_is_read():
    page = b"<head>" + b"<meta name=x content=y>" * 5000 + b"<title>too far</title>"
    sniffer = TitleSniffer(limit=4096)
    assert sniffer.feed(page)
    assert sniffer.result().title is None
    assert len(sniffer._buf) <= 4096


def test_a_very_long_title_is_cut():
    found = extract_titles(b"<title>" + b"word " * 1000 + b"</title>")
    assert len(found.title) == 300


# -- charsets ---------------------------------------------------------------------------------


def test_charset_from_header_wins():
    page = "<meta charset=utf-8><title>Caf\u00e9</title>".encode("cp1252")
    assert extract_titles(page, "text/html; charset=ISO-8859-1").title == "Caf\u00e9"


def test_charset_from_meta_http_equiv():
    page = (
        b'<meta http-equiv="Content-Type" content="text/html; charset=windows-1251">'
        + "<title>\u041f\u0440\u0438\u0432\u0435\u0442</title>".encode("cp1251")
    )
    assert extract_titles(page).title == "\u041f\u0440\u0438\u0432\u0435\u0442"


def test_no_charset_utf8_then_windows_1252():
    assert extract_titles("<title>na\u00efve</title>".encode()).title == "na\u00efve"
    assert extract_titles("<title>na\u00efve</title>".encode("cp1252")).title == "na\u00efve"


def test_utf8_character_split_across_chunks():
    page = "<title>\u2713 done \u00e9t\u00e9</title>".encode()
    assert _chunked(page, 1).title == "\u2713 done \u00e9t\u00e9"


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-be"])
def test_utf16_page_with_bom(codec):
    text = "<html><head><title>Wide page</title></head>"
    data = (b"\xfe\xff" + text.encode("utf-16-be")) if codec == "utf-16-be" else text.encode(codec)
    assert _chunked(data, 3).title == "Wide page"


def test_charset_labels():
    assert codec_of("ISO-8859-1") == "cp1252"
    assert codec_of("utf8") == "utf-8"
    assert codec_of("no-such-charset") is None


# -- content encodings ---------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 10, 100000])
def test_gzip_body(size):
    found = _chunked(gzip.compress(NEWS), size, content_encoding="gzip")
    assert found.og_title == "Teenagers and social media"


def test_deflate_zlib_and_raw():
    assert extract_titles(zlib.compress(NEWS), content_encoding="deflate").og_title
    raw = zlib.compressobj(wbits=-15)
    data = raw.compress(NEWS) + raw.flush()
    assert extract_titles(data, content_encoding="deflate").og_title


def test_gzip_bomb_is_read_only_to_the_limit():
    bomb = gzip.compress(b"<head>" + b" " * 5_000_000)
    sniffer = TitleSniffer(content_encoding="gzip", limit=8192)
    for i in range(0, len(bomb), 4096):
        if sniffer.feed(bomb[i : i + 4096]):
            break
    assert len(sniffer._buf) <= 8192
    assert sniffer.done


def test_brotli_is_declined_not_misread():
    sniffer = TitleSniffer(content_encoding="br")
    assert sniffer.done and sniffer.feed(b"\x1b\x00") is True
    assert sniffer.result() == PageTitle(supported=False)


@pytest.mark.parametrize(
    "encoding", [None, "", "identity", "gzip", "GZIP", "x-gzip", "deflate", "gzip, identity", "br",
                 "zstd", "gzip, br", "gzip, gzip", "compress"],
)  # fmt: skip
def test_the_gateway_streams_a_page_to_the_reader_only_in_an_encoding_it_reads(encoding):
    # The hook decides on the event loop; the reader reads on the grading thread: the same
    # answer, or a page would be copied for nothing (or a readable one never read).
    assert readable_encoding(encoding) == (not TitleSniffer(content_encoding=encoding).done)


def test_broken_gzip_stops_quietly():
    sniffer = TitleSniffer(content_encoding="gzip")
    assert sniffer.feed(b"not gzip at all")
    assert sniffer.result() == PageTitle()


def test_is_html():
    assert is_html("text/html; charset=utf-8")
    assert is_html("application/xhtml+xml")
    assert not is_html("application/json")
    assert not is_html(None)
