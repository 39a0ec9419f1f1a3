"""The block page: content, escaping, signed links, variants, plain-text answers, rendering."""

from __future__ import annotations

import html
import os
import re
import shutil
import stat
import struct
import subprocess
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import pytest

from schoolgate.core.model import Action, Decision, Identity, ListMatch, Window
from schoolgate.gateway.blockpage import (
    block_response_parts,
    describe_until,
    load_or_create_secret,
    render_block_page,
    render_block_text,
    sign_ref,
    verify_ref,
    wants_html,
)

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
LONDON = ZoneInfo("Europe/London")
NOW = datetime(2026, 11, 30, 10, 12, tzinfo=LONDON)  # a Monday, P2
SECRET = b"k" * 32
ADVICE = (
    "Safe: keep your personal information safe.",
    "Tell: tell a trusted adult if anything online worries you.",
)
STUDENT = Identity(role="student", site="main", user="ben", group="9B", client_ip="10.20.1.5")
P2 = Window("lesson", "P2", NOW.replace(minute=0), NOW.replace(hour=11, minute=0), "main")


def _decision(**kw) -> Decision:
    values = dict(
        action=Action.BLOCK,
        identity=STUDENT,
        window=P2,
        category="social_media",
        reason="social_media is blocked for student in lesson (P2).",
        rule="rules[0] (mitm_config.yaml:80)",
        match=ListMatch("social_media", "facebook.com", "blocklists/social.txt:3", "domain"),
        until=NOW.replace(hour=11, minute=0),
    )
    values.update(kw)
    return Decision(**values)


LOCKED = dict(
    category="illegal",
    rule="locked category illegal",
    until=None,
    reason="illegal is a locked category: it is blocked for everyone, at all times, "
    "and no exception can open it.",
)
AGE = dict(
    category="age_restricted",
    until=None,
    rule="age restriction Instagram 13+ (mitm_config.yaml:120)",
    reason="Signing up to Instagram needs you to be at least 13.",
)
ERROR = dict(
    category=None,
    window=None,
    until=None,
    rule="fail closed",
    error="KeyError: 'main'",
    reason="The filter could not evaluate its policy, so access is blocked for safety. "
    "IT Support have been told.",
)
READ_ONLY = dict(
    category="wikipedia",
    until=NOW.replace(hour=11, minute=0),
    reason="wikipedia is read-only for student in lesson: POST requests "
    "(posting, editing, signing in) are blocked.",
)


def _page(
    decision: Decision | None = None, url: str = "https://www.facebook.com/groups/x", **kw
) -> str:
    ref = kw.pop("ref", "0123456789abcdef")
    return render_block_page(
        decision or _decision(),
        url=url,
        ref=ref,
        signed_ref=sign_ref(SECRET, ref),
        portal_host="schoolgate.internal",
        advice=ADVICE,
        tz=LONDON,
        now=NOW,
        **kw,
    )


def _links(page: str) -> dict[str, str]:
    found = {}
    for href in re.findall(r'href="([^"]+)"', page):
        href = html.unescape(href)
        found[urlsplit(href).path] = href
    return found


def _buttons(page: str) -> dict[str, dict[str, list[str]]]:
    """Each link's text -> its path and query (``{"path": [...], **query}``)."""
    found = {}
    for href, text in re.findall(r'<a [^>]*href="([^"]+)"[^>]*>([^<]+)</a>', page):
        parts = urlsplit(html.unescape(href))
        found[text.strip()] = {"path": [parts.path], **parse_qs(parts.query)}
    return found


def test_page_says_what_why_and_until_when():
    page = _page()
    assert '<html lang="en-GB">' in page
    assert 'name="viewport"' in page
    assert "<h1" in page and "<h2" in page
    assert "https://www.facebook.com/groups/x" in page
    assert "social media" in page.lower()
    assert "Lesson (P2)" in page
    assert "until 11:00 today" in page
    # the reason in words: no internal names, no ISO times
    assert "Social media is blocked for pupils during lessons (P2, until 11:00 today)." in page
    assert "social_media" not in page.split("<body>")[1].split("href")[0]
    assert "for student" not in page and "T11:00" not in page
    assert "0123456789abcdef" in page  # the reference to quote
    assert "<strong>Safe:</strong> keep your personal information safe." in page
    assert "Report a problem" in page and "Request access" in page


def test_page_has_no_external_resources_and_no_script():
    page = _page()
    assert "<script" not in page.lower()
    assert "<link" not in page.lower() and "<img" not in page.lower()
    assert "@import" not in page and "url(" not in page
    # The only absolute URLs are the blocked one and the portal links.
    urls = set(re.findall(r'(?:src|href)="([^"]+)"', page))
    assert all(html.unescape(u).startswith("http://schoolgate.internal/") for u in urls)


def test_url_is_escaped():
    evil = 'https://evil.example/"><script>alert(1)</script>?q=<b>x</b>&y=1'
    page = _page(url=evil)
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>x</b>" not in page
    # And in the links the URL is URL-encoded, so it comes back whole.
    link = _links(page)["/request"]
    assert parse_qs(urlsplit(link).query)["url"] == [evil]


def test_links_carry_url_category_and_a_signed_ref():
    page = _page(url="https://www.facebook.com/groups/x?a=1&b=2")
    assert _links(page)["/request"].startswith("http://schoolgate.internal/request?")
    buttons = _buttons(page)
    request = buttons["Request access to this page"]
    problem = buttons["Report a problem with this block"]
    assert request["url"] == ["https://www.facebook.com/groups/x?a=1&b=2"]
    assert request["category"] == ["social_media"]
    assert verify_ref(SECRET, request["ref"][0]) == "0123456789abcdef"
    # "report a problem with this block" is the access request for this block, marked as a
    # mistake: not the content-report form (that is for pages that should be blocked)
    assert problem["path"] == ["/request"] and problem["purpose"] == ["erroneous"]
    assert problem["url"] == request["url"] and problem["category"] == ["social_media"]
    assert verify_ref(SECRET, problem["ref"][0]) == "0123456789abcdef"
    assert "/report" not in _links(page)


def test_signed_refs():
    signed = sign_ref(SECRET, "0123456789abcdef")
    assert signed.startswith("0123456789abcdef.")
    assert re.fullmatch(r"[0-9a-f]{16}\.[A-Za-z0-9_-]{22}", signed)
    assert verify_ref(SECRET, signed) == "0123456789abcdef"
    ref, mac = signed.split(".")
    tampered_ref = "1123456789abcdef." + mac
    tampered_mac = ref + "." + ("A" if mac[0] != "A" else "B") + mac[1:]
    for bad in (
        tampered_ref,
        tampered_mac,
        ref,
        ref + ".",
        "." + mac,
        "",
        None,
        signed + "x",
        signed[:-1],
        "a.b.c",
        "x" * 500,
        "0123456789abcdef.é",
    ):
        assert verify_ref(SECRET, bad) is None, bad
    assert verify_ref(b"other" * 7, signed) is None
    with pytest.raises(ValueError):
        sign_ref(SECRET, "a.b")


def test_secret_created_once_with_mode_0600(tmp_path):
    data = tmp_path / "var"
    first = load_or_create_secret(data)
    assert len(first) == 32
    path = data / "secret.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(data) == first
    path.chmod(0o644)
    assert load_or_create_secret(data) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in data.iterdir()] == ["secret.key"]  # no temporary files left
    path.write_bytes(b"short")
    with pytest.raises(ValueError, match="32"):
        load_or_create_secret(data)


def test_locked_variant_offers_no_request():
    page = _page(_decision(**LOCKED))
    links = _links(page)
    assert "/request" not in links and "/report" not in links
    assert "tell IT Support and quote the reference number" in page
    assert "Request access" not in page
    assert "blocked for everyone" in page
    assert "cannot be requested" in page
    # locked may also be said by the caller, whatever the rule text
    assert "/request" not in _links(_page(_decision(), locked=True))


@pytest.mark.parametrize(
    "rule", ["circumvention detector doh", "destination check (mismatch)", "raw tunnel"]
)
def test_circumvention_variant_offers_no_request(rule: str):
    reason = "Used DNS-over-HTTPS via doh.example, which hides the sites looked up."
    page = _page(_decision(category="circumvention", rule=rule, reason=reason, until=None))
    assert "way round the school" in page and html.escape(reason) in page
    buttons = _buttons(page)
    assert "Request access to this page" not in buttons
    problem = buttons["Report a problem with this block"]
    assert problem["path"] == ["/request"] and problem["purpose"] == ["erroneous"]
    assert "Access cannot be requested" in page


def test_age_variant_explains_the_limit():
    page = _page(_decision(**AGE), url="https://www.instagram.com/accounts/emailsignup/")
    assert "age limit" in page
    assert "Signing up to Instagram needs you to be at least 13." in page
    buttons = _buttons(page)
    assert "Request access to this page" not in buttons
    problem = buttons["Report a problem with this block"]
    assert problem["path"] == ["/request"] and problem["purpose"] == ["erroneous"]


def test_error_variant_says_the_filter_failed():
    page = _page(_decision(**ERROR))
    assert "The filter could not check this page" in page
    assert "blocked for safety" in page
    assert "failed" in page
    assert _buttons(page)["Report a problem with this block"]["path"] == ["/request"]
    text = render_block_text(_decision(**ERROR), url="https://x.example/", ref="abc")
    assert text.startswith("Blocked by the school's filter: the filter failed")
    assert "(abc)" in text


def test_read_only_variant():
    page = _page(_decision(**READ_ONLY), url="https://en.wikipedia.org/w/index.php?action=edit")
    assert "read-only" in page and "not sign in, post or edit" in page
    assert "/request" in _links(page)


def test_no_end_in_sight():
    page = _page(_decision(until=None))
    assert "No end in sight" in page


@pytest.mark.parametrize(
    ("until", "text"),
    [
        (NOW.replace(hour=11, minute=0), "until 11:00 today"),
        (NOW.replace(hour=8, minute=40) + timedelta(days=1), "until 08:40 tomorrow"),
        (NOW.replace(hour=8, minute=40) + timedelta(days=7), "until Monday 7 December, 08:40"),
        (
            NOW.replace(hour=8, minute=40) + timedelta(days=40),
            "until Saturday 9 January 2027, 08:40",
        ),
        (NOW.replace(hour=8, minute=40) + timedelta(days=374), "until 9 December 2027"),
        (None, "no end in sight"),
        (NOW - timedelta(minutes=1), "for now"),
    ],
)
def test_describe_until(until, text):
    assert describe_until(until, NOW, LONDON) == text


def test_until_in_the_sites_local_time():
    until = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)  # 11:00 in London (BST)
    now = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    assert describe_until(until, now, LONDON) == "until 11:00 today"
    # 23:30 UTC is already tomorrow in London in summer
    assert describe_until(datetime(2026, 6, 1, 23, 30, tzinfo=UTC), now, LONDON) == (
        "until 00:30 tomorrow"
    )


@pytest.mark.parametrize(
    ("headers", "html_wanted"),
    [
        ({"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}, True),
        ({"Sec-Fetch-Dest": "document", "Accept": "*/*"}, True),
        ({"sec-fetch-dest": "iframe"}, True),
        ({"Sec-Fetch-Mode": "navigate"}, True),
        ({"Accept": "application/json"}, False),
        ({"Accept": "image/avif,image/webp,image/apng,image/*,*/*;q=0.8"}, False),
        ({"Sec-Fetch-Dest": "image", "Accept": "text/html"}, False),
        ({"Sec-Fetch-Dest": "empty", "Accept": "text/html"}, False),  # fetch()
        ({"Sec-Fetch-Dest": "script"}, False),
        ({"X-Requested-With": "XMLHttpRequest", "Accept": "text/html, */*"}, False),
        ({"Accept": "*/*"}, False),  # curl
        ({}, False),
    ],
)
def test_wants_html(headers, html_wanted):
    assert wants_html(headers) is html_wanted


def test_wants_html_with_mitmproxy_headers():
    from mitmproxy.http import Headers

    assert wants_html(Headers(accept="text/html")) is True
    assert wants_html(Headers(**{"x-requested-with": "XMLHttpRequest"})) is False


def test_response_parts_html_and_text():
    kw = dict(
        url="https://www.facebook.com/",
        ref="0123456789abcdef",
        signed_ref=sign_ref(SECRET, "0123456789abcdef"),
        portal_host="schoolgate.internal",
        advice=ADVICE,
        tz=LONDON,
    )
    status, headers, body = block_response_parts(_decision(), headers={"Accept": "text/html"}, **kw)
    assert status == 403
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["cache-control"] == "no-store"
    assert headers["x-schoolgate-ref"] == "0123456789abcdef"
    assert "default-src 'none'" in headers["content-security-policy"]
    assert body.startswith(b"<!doctype html>")

    status, headers, body = block_response_parts(
        _decision(), headers={"Accept": "application/json"}, **kw
    )
    assert status == 403
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert headers["cache-control"] == "no-store"
    lines = body.decode().splitlines()
    assert 1 <= len(lines) <= 2
    assert lines[0] == "Blocked by the school's filter: social media (0123456789abcdef)"


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.mark.e2e
@pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"{CHROMIUM} is not installed (Debian package 'chromium'); "
    "the block page is not rendered in a real browser",
)
@pytest.mark.parametrize("variant", ["rule", "locked", "age", "error"])
@pytest.mark.parametrize(
    ("label", "width", "height"), [("phone", 412, 1400), ("desktop", 1280, 1000)]
)
def test_screenshot_in_chromium(variant, label, width, height, tmp_path):
    decision = {
        "rule": _decision(),
        "locked": _decision(**LOCKED),
        "age": _decision(**AGE),
        "error": _decision(**ERROR),
    }[variant]
    url = (
        "https://www.facebook.com/groups/year9-chat/posts/1234567890?ref=share&"
        "utm_source=<script>alert(1)</script>"
    )
    page = tmp_path / "block.html"
    page.write_text(_page(decision, url=url), encoding="utf-8")
    ARTIFACTS.mkdir(exist_ok=True)
    out = ARTIFACTS / f"blockpage-{variant}-{label}.png"
    out.unlink(missing_ok=True)
    profile = tempfile.mkdtemp(prefix="chromium-")
    try:
        subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--screenshot={out}",
                f"--window-size={width},{height}",
                page.as_uri(),
            ],
            check=True,
            timeout=120,
            capture_output=True,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert out.exists() and out.stat().st_size > 5_000
    assert _png_size(out) == (width, height)
