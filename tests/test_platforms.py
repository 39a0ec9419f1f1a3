"""Platform families: the shipped blocklists/platforms.yaml, its loader and its lookups."""

from __future__ import annotations

from pathlib import Path

import pytest

from schoolgate.core.configfile import Issues
from schoolgate.core.lists import Matcher, parse_list
from schoolgate.core.platforms import (
    SHARED_INFRASTRUCTURE,
    Platform,
    Platforms,
    load_platforms,
)

ROOT = Path(__file__).resolve().parents[1]
BLOCKLISTS = ROOT / "blocklists"
PLATFORMS = BLOCKLISTS / "platforms.yaml"

# The shipped lists of each category a platform may name (as mitm_config.yaml
# builds them).
CATEGORY_LISTS = {
    "social_media": ["social_media.txt", "ut1/social_networks"],
    "chat": ["chat.txt", "ut1/chat"],
}


@pytest.fixture(scope="module")
def shipped() -> Platforms:
    issues = Issues()
    platforms = load_platforms(PLATFORMS, issues, categories=CATEGORY_LISTS)
    assert not issues.items, [str(i) for i in issues.items]
    assert not issues.warnings, [str(i) for i in issues.warnings]
    return platforms


def test_shipped_file_has_the_platforms_pupils_use(shipped):
    for key in (
        "facebook", "instagram", "tiktok", "youtube", "snapchat", "x", "discord", "whatsapp",
        "reddit", "pinterest", "twitch", "roblox", "threads", "imgur", "9gag", "4chan", "ok",
        "odysee", "xiaohongshu", "character_ai", "mastodon", "bluesky", "telegram",
    ):  # fmt: skip
        assert key in shipped, key
        assert shipped[key].name and shipped[key].hosts, key


@pytest.mark.parametrize(
    ("platform", "entries"),
    [
        ("facebook", ["fbcdn.net", "facebook.net", "fb.com", "messenger.com", "m.me"]),
        ("instagram", ["cdninstagram.com"]),
        (
            "youtube",
            ["ytimg.com", "googlevideo.com", "youtube-nocookie.com", "youtubei.googleapis.com"],
        ),
        ("tiktok", ["tiktokcdn.com", "ibytedtos.com", "byteoversea.com", "ttwstatic.com"]),
    ],
)
def test_families_hold_the_hosts_their_pages_need(shipped, platform, entries):
    family = shipped[platform].family
    for entry in entries:
        assert entry in family, (platform, entry)


@pytest.mark.parametrize(
    ("host", "platform", "static"),
    [
        ("www.facebook.com", "facebook", False),
        ("scontent-lhr8-1.xx.fbcdn.net", "facebook", True),
        ("static.cdninstagram.com", "instagram", True),
        ("www.instagram.com", "instagram", False),
        ("www.youtube.com", "youtube", False),
        ("WWW.YouTube.COM.", "youtube", False),
        ("youtube.com:443", "youtube", False),
        ("i.ytimg.com", "youtube", True),
        ("rr1---sn-aigl6n7s.googlevideo.com", "youtube", True),
        ("youtubei.googleapis.com", "youtube", False),
        ("yt3.ggpht.com", "youtube", True),
        ("p16-sign-va.tiktokcdn.com", "tiktok", True),
        ("www.tiktok.com", "tiktok", False),
        ("cdn.discordapp.com", "discord", True),
        ("discordapp.com", "discord", False),
        ("i.redd.it", "reddit", True),
        ("redd.it", "reddit", False),
        ("beta.character.ai", "character_ai", False),
    ],
)
def test_lookup_finds_the_most_specific_entry(shipped, host, platform, static):
    match = shipped.lookup(host)
    assert match is not None, host
    assert match.platform.key == platform
    assert match.static is static


@pytest.mark.parametrize(
    "host",
    [
        "storage.googleapis.com",  # Google's shared API domain: not YouTube's
        "fonts.gstatic.com",
        "lh3.googleusercontent.com",
        "d111111abcdef8.cloudfront.net",
        "notyoutube.com",  # label boundaries only
        "youtube.com.evil.example",
        "fakefacebook.com",
        "classroom.google.com",
        "8.8.8.8",
        "2001:4860:4860::8888",
        "",
    ],
)
def test_lookup_leaves_other_hosts_alone(shipped, host):
    assert shipped.lookup(host) is None


def test_a_platform_approval_opens_its_family_and_nothing_more(shipped):
    assert shipped.family_covers("instagram", "static.cdninstagram.com")
    assert shipped.family_covers("instagram", "www.instagram.com")
    assert not shipped.family_covers("instagram", "www.facebook.com")
    assert shipped.family_covers("youtube", "i.ytimg.com")
    assert not shipped.family_covers("youtube", "storage.googleapis.com")
    assert not shipped.family_covers("nosuchplatform", "www.youtube.com")


def test_a_page_approval_opens_only_static_hosts_besides_the_page(shipped):
    assert shipped.static_of("tiktok", "p16-sign-va.tiktokcdn.com")
    assert not shipped.static_of("tiktok", "www.tiktok.com")  # other pages stay closed
    assert not shipped.static_of("tiktok", "static.cdninstagram.com")
    # Threads shows Instagram's images: the static host is shared, Instagram's pages are not.
    assert shipped.static_of("threads", "scontent.cdninstagram.com")
    assert shipped.static_of("instagram", "scontent.cdninstagram.com")
    assert not shipped.family_covers("threads", "www.instagram.com")


def test_no_family_holds_shared_infrastructure_whole(shipped):
    for platform in shipped:
        for entry in platform.family:
            assert entry not in SHARED_INFRASTRUCTURE, (platform.key, entry)


def test_every_family_host_is_in_its_categorys_shipped_lists(shipped):
    """A block of the category covers the whole family."""
    issues = Issues()
    matchers = {
        cat: Matcher.build([(cat, [parse_list(BLOCKLISTS / p, issues) for p in paths])])
        for cat, paths in CATEGORY_LISTS.items()
    }
    assert not issues.items
    missing = [
        (platform.key, entry)
        for platform in shipped
        for entry in platform.family
        if matchers[platform.category].lookup(entry, "/") is None
    ]
    assert missing == []


# -- the loader's errors --------------------------------------------------------------------

BAD = """\
platforms:
  youtube:
    name: YouTube
    hosts: [youtube.com, youtube.com]
    static: [googleapis.com, ytimg.com]
  copycat:
    name: Copycat
    hostz: [copycat.example]
    hosts: [copycat.example, youtube.com, www.copycat.example/page]
  empty:
    name: Empty
    hosts: []
  Bad Key:
    name: Bad
    hosts: [bad.example]
  nameless:
    hosts: [nameless.example, 10.0.0.1, co.uk, "*.wild.example", "a*b.example"]
    category: gaming
  yes:
    name: Boolean key
    hosts: [yes.example]
  sharing:
    name: Shares YouTube's static host
    hosts: [sharing.example]
    static: [ytimg.com]
"""


def _issues_of(tmp_path: Path, text: str) -> tuple[Platforms, Issues]:
    path = tmp_path / "platforms.yaml"
    path.write_text(text)
    issues = Issues()
    platforms = load_platforms(path, issues, shown="platforms.yaml", categories=["social_media"])
    return platforms, issues


def test_loader_reports_every_mistake_with_file_line_and_field(tmp_path):
    platforms, issues = _issues_of(tmp_path, BAD)
    found = {(i.line, i.field): i.message for i in issues.items}
    assert all(i.file == "platforms.yaml" for i in issues.items)
    assert "listed twice (line 4)" in found[(4, "platforms.youtube.hosts[1]")]
    assert "shared infrastructure" in found[(5, "platforms.youtube.static[0]")]
    assert "did you mean 'hosts'" in found[(8, "platforms.copycat.hostz")]
    assert "already in platform 'youtube' (line 4)" in found[(9, "platforms.copycat.hosts[1]")]
    assert "without a path" in found[(9, "platforms.copycat.hosts[2]")]
    assert "at least one host" in found[(12, "platforms.empty.hosts")]
    assert "lower case" in found[(14, "platforms.Bad Key")]
    assert "missing required field 'name'" in found[(17, "platforms.nameless")]
    assert "IP address" in found[(17, "platforms.nameless.hosts[1]")]
    assert "public suffix" in found[(17, "platforms.nameless.hosts[2]")]
    assert "wildcards" in found[(17, "platforms.nameless.hosts[4]")]
    assert "unknown category 'gaming'" in found[(18, "platforms.nameless.category")]
    assert "read this one as True; put it in quotes" in found[(19, "platforms.True")]
    assert [i for i in issues.items if i.field == "platforms.True"] == [
        i for i in issues.items if i.line == 19
    ]
    # a leading "*." means the same as the name; a static host may be shared
    assert not [m for (line, _f), m in found.items() if line in (23, 24, 25)]
    assert platforms.static_of("sharing", "i.ytimg.com")
    assert platforms.static_of("youtube", "i.ytimg.com")
    assert platforms["copycat"].hosts == ("copycat.example",)
    assert platforms["youtube"].source == "platforms.yaml:2"
    assert [p.key for p in platforms] == ["youtube", "copycat", "sharing"]


def test_loader_reports_a_missing_file_and_broken_yaml(tmp_path):
    issues = Issues()
    assert len(load_platforms(tmp_path / "nope.yaml", issues, shown="nope.yaml")) == 0
    assert [str(i) for i in issues.items] == ["nope.yaml: file not found"]
    _platforms, issues = _issues_of(tmp_path, "platforms:\n  a: [unclosed\n")
    assert issues.items and issues.items[0].line and "invalid YAML" in issues.items[0].message


def test_platforms_refuse_a_host_in_two_families():
    one = Platform("one", "One", None, ("one.example",), ("cdn.example",), "x:1")
    two = Platform("two", "Two", None, ("one.example",), (), "x:2")
    with pytest.raises(ValueError, match="one.example"):
        Platforms([one, two])
    shares = Platform("three", "Three", None, ("three.example",), ("cdn.example",), "x:3")
    assert Platforms([one, shares]).static_of("three", "img.cdn.example")
