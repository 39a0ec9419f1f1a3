"""Category lists: every format, the real-world samples, matching rules and the shipped lists."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from schoolgate.core.configfile import Issues
from schoolgate.core.hosts import normalize_host
from schoolgate.core.lists import ALLOWLIST, MAX_ISSUES_PER_FILE, Matcher, parse_entries, parse_list

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data" / "lists"
# Public lists as schools subscribe to them, unchanged (sources and licences in its README).
SAMPLES = Path(__file__).resolve().parent / "data" / "list-samples"
BLOCKLISTS = ROOT / "blocklists"


def entries(*texts: str, source: str = "policy.yaml") -> list[tuple[str, int]]:
    return [(text, line) for line, text in enumerate(texts, 1)]


def matcher(categories: dict[str, list[str]], allow: list[str] = ()) -> Matcher:
    issues = Issues()
    cats = [
        (name, [parse_entries(entries(*items), issues, source=f"{name}.yaml")])
        for name, items in categories.items()
    ]
    allowlist = [parse_entries(entries(*allow), issues, source="allow.yaml")] if allow else []
    assert not issues, issues.items
    return Matcher.build(cats, allowlist)


def lookup(m: Matcher, url: str):
    """``host/path`` (path None when written without a slash) through normalize_host."""
    host, _, path = url.partition("/")
    return m.lookup(normalize_host(host), "/" + path if _ else None)


# -- formats -----------------------------------------------------------------------------------


def test_mixed_auto_format_reads_every_kind_and_reports_bad_lines():
    issues = Issues()
    pl = parse_list(DATA / "mixed.txt", issues, display_path="lists/mixed.txt")
    assert set(pl.domains) == {
        "facebook.com",
        "instagram.com",
        "tiktok.com",
        "snapchat.com",
        "discord.com",
        "discord.gg",
        "reddit.com",
        "www.example.net",
        "xn--bcher-kva.de",
        "10.1.2.3",
    }
    assert {(h, p) for h, p, _ in pl.paths} == {
        ("twitter.com", "/i/flow/signup"),
        ("example.org", "/some/path"),
    }
    bad = {i.line: i.message for i in issues.warnings}
    assert set(bad) == {11, 12, 16}  # "not a domain line", "bad..domain.com", "evil*.com"
    assert not issues.items  # bad lines in a list file are warnings: the list still loads
    assert all(i.file == "lists/mixed.txt" for i in issues.warnings)
    assert pl.skipped == 3
    assert "localhost" not in pl.domains
    m = Matcher.build([("social", [pl])])
    # duplicates keep the first line
    assert m.lookup("facebook.com", "/").source == "lists/mixed.txt:2"
    assert m.lookup("www.example.net", None).entry == "www.example.net"


def test_hosts_format_ignores_localhost_and_comments():
    issues = Issues()
    pl = parse_list(DATA / "hosts.txt", issues, fmt="hosts")
    assert sorted(pl.domains) == ["ads.example.com", "tracker.example.net", "tracker2.example.net"]
    assert [i.line for i in issues.warnings] == [8]  # a bare name is not a hosts line
    assert pl.skipped == 1


def test_adblock_format():
    issues = Issues()
    pl = parse_list(DATA / "adblock.txt", issues, display_path="adblock.txt")
    assert sorted(set(pl.domains)) == ["ads.example.com", "cdn.example.com"]
    assert {(h, p) for h, p, _ in pl.paths} == {
        ("video.example.org", "/watch"),
        ("www.example.edu", "/forum/"),
    }
    # @@ exceptions and other URL patterns are reported as unsupported; ## is ignored silently
    assert sorted(i.line for i in issues.warnings) == [8, 10]
    assert "not supported" in next(i.message for i in issues.warnings if i.line == 8)
    m = Matcher.build([("ads", [pl])])
    assert lookup(m, "x.ads.example.com/") is not None
    assert lookup(m, "video.example.org/watch?v=1").kind == "path"
    assert lookup(m, "video.example.org/other") is None
    assert lookup(m, "good.example.com/") is None


def test_forced_domains_format_rejects_hosts_and_paths():
    issues = Issues()
    pl = parse_list(DATA / "hosts.txt", issues, fmt="domains")
    assert pl.domains == ["nonsense.example.com"]
    assert [i.line for i in issues.warnings] == [2, 3, 4, 5, 6]  # every "IP name" line
    assert "one domain per line" in issues.warnings[0].message


def test_squidguard_folder(tmp_path):
    issues = Issues()
    pl = parse_list(DATA / "sg_category", issues, display_path="sg")
    assert sorted(pl.domains) == [
        "1.2.3.4",
        "blocked.example",
        "sub.other.example",
        "urlonly.example",
    ]
    assert [(h, p) for h, p, _ in pl.paths] == [("pathsite.example", "/forum/")]
    assert [r[0] for r in pl.regexes] == [r"(^|[./])casino[0-9]*\."]
    assert [(i.file, i.line) for i in issues.warnings] == [("sg/expressions", 2)]
    m = Matcher.build([("sg", [pl])])
    hit = lookup(m, "www.pathsite.example/forum/thread/1")
    assert (hit.kind, hit.entry, hit.source) == ("path", "pathsite.example/forum/", "sg/urls:1")
    assert lookup(m, "pathsite.example/forum/x").kind == "path"
    assert lookup(m, "pathsite.example/") is None
    assert lookup(m, "a.sub.other.example/").source == "sg/domains:2"
    assert lookup(m, "other.example/") is None
    rx = lookup(m, "www.casino77.example/")
    assert (rx.kind, rx.source) == ("regex", "sg/expressions:1")
    assert lookup(m, "www.notcasinos.example/") is None
    assert lookup(m, "1.2.3.4/") is not None
    # an empty folder is reported
    empty = tmp_path / "empty"
    empty.mkdir()
    issues = Issues()
    parse_list(empty, issues, fmt="squidguard")
    assert len(issues) == 1


def test_missing_file_is_reported():
    issues = Issues()
    pl = parse_list(DATA / "nope.txt", issues, display_path="lists/nope.txt")
    assert len(pl) == 0
    assert [(i.file, i.line, i.message) for i in issues.items] == [
        ("lists/nope.txt", 0, "file not found")
    ]


def test_bad_format_name_reported():
    issues = Issues()
    parse_list(DATA / "mixed.txt", issues, fmt="csv")
    assert issues.items[0].field == "format"


def test_crlf_bom_and_latin1(tmp_path):
    f = tmp_path / "crlf.txt"
    f.write_bytes("\ufeffone.example\r\ntwo.example\r\n".encode())
    issues = Issues()
    assert parse_list(f, issues).domains == ["one.example", "two.example"]
    assert not issues
    g = tmp_path / "latin1.txt"
    g.write_bytes(b"ok.example\ncaf\xe9.example\n")
    issues = Issues()
    pl = parse_list(g, issues)
    assert pl.domains == ["ok.example", normalize_host("café.example")]
    assert "Latin-1" in issues.warnings[0].message


def test_many_bad_lines_are_capped_but_counted(tmp_path):
    f = tmp_path / "junk.txt"
    f.write_text("good.example\n" + "bad line here\n" * (MAX_ISSUES_PER_FILE + 50))
    issues = Issues()
    pl = parse_list(f, issues)
    assert pl.skipped == MAX_ISSUES_PER_FILE + 50
    assert len(issues.warnings) == MAX_ISSUES_PER_FILE + 1
    assert "50 more" in issues.warnings[-1].message
    assert pl.domains == ["good.example"]


def test_inline_entries():
    issues = Issues()
    pl = parse_entries(
        [
            ("Facebook.COM", 3),
            ("*.tiktok.com", 4),
            ("instagram.com/accounts/emailsignup", 5),
            ("re:^casino", 6),
            ("two words", 7),
            ("", 8),
            ("re:[", 9),
            ("com", 10),
            ("*.xxx", 11),
        ],
        issues,
        source="policy.yaml",
    )
    assert pl.domains == ["facebook.com", "tiktok.com", "xxx"]
    assert not issues.warnings  # inline entries are the school's own config: errors
    assert pl.paths == [("instagram.com", "/accounts/emailsignup", 5)]
    assert [r[0] for r in pl.regexes] == ["^casino"]
    assert sorted(i.line for i in issues.items) == [7, 8, 9, 10]
    assert "single label" in next(i.message for i in issues.items if i.line == 10)


# -- real samples ----------------------------------------------------------------------------


def test_ut1_folders():
    issues = Issues()
    social = parse_list(SAMPLES / "ut1" / "social_networks", issues, display_path="ut1/social")
    vpn = parse_list(SAMPLES / "ut1" / "vpn", issues)
    doh = parse_list(SAMPLES / "ut1" / "doh", issues)
    translation = parse_list(SAMPLES / "ut1" / "translation", issues)
    assert not issues, issues.items[:5]
    assert len(social.domains) == 715 and len(social.paths) == 1
    assert len(vpn.domains) > 6000
    assert "1.1.1.1" in doh.domains  # bare IPs are kept as host entries
    m = Matcher.build(
        [("social", [social]), ("vpn", [vpn]), ("doh", [doh]), ("translation", [translation])]
    )
    assert lookup(m, "www.facebook.com/").category == "social"
    assert lookup(m, "nordvpn.com").category == "vpn"
    assert lookup(m, "1.1.1.1/dns-query").category == "doh"
    assert lookup(m, "1.1.1.2/") is None
    assert lookup(m, "www.bing.com/translator").category == "translation"
    assert lookup(m, "www.bing.com/search") is None
    assert lookup(m, "www.epicurious.com/community/x").kind == "path"


def test_stevenblack_hosts_sample():
    issues = Issues()
    pl = parse_list(SAMPLES / "stevenblack-social" / "extensions_social_hosts", issues)
    assert not issues
    assert "plus.l.google.com" not in pl.domains  # commented out in the file
    assert len(set(pl.domains)) < len(pl.domains)  # the file repeats lines
    m = Matcher.build([("social", [pl])])
    assert lookup(m, "0-edge-chat.facebook.com/") is not None
    assert lookup(m, "google.com/") is None


def test_jmdugan_plain_hosts_and_adblock_samples():
    issues = Issues()
    easylist = parse_list(SAMPLES / "jmdugan" / "facebook_all.easylist", issues)
    insta = parse_list(SAMPLES / "jmdugan" / "facebook_instagram", issues)
    twitter = parse_list(SAMPLES / "jmdugan" / "twitter_all", issues, fmt="hosts")
    assert not issues
    assert len(easylist.domains) == 3 * len(set(easylist.domains))  # $options repeat each
    m = Matcher.build([("fb", [easylist]), ("ig", [insta]), ("tw", [twitter])])
    assert m.stats()["fb"] == len(set(easylist.domains))
    assert lookup(m, "0.beta.facebook.com/").category == "fb"
    # the easylist also names Instagram hosts: the category defined first wins, both explain
    assert lookup(m, "api.instagram.com/").category == "fb"
    assert [x.category for x in m.lookup_all("api.instagram.com", "/")] == ["fb", "ig"]
    assert lookup(m, "2012.twitter.com/").category == "tw"


# -- matching --------------------------------------------------------------------------------


def test_label_boundaries_case_dot_port_idn():
    m = matcher({"social": ["facebook.com", "bücher.de", "xn--caf-dma.example"]})
    assert lookup(m, "evilfacebook.com/") is None
    assert lookup(m, "facebook.com.evil.net/") is None
    assert lookup(m, "com/") is None
    for host in ("facebook.com", "WWW.FaceBook.COM.", "m.facebook.com:443", "[facebook.com]"):
        hit = m.lookup(normalize_host(host), "/")
        assert hit is not None and hit.entry == "facebook.com", host
    assert m.lookup(normalize_host("www.BÜCHER.de"), None).entry == "xn--bcher-kva.de"
    assert m.lookup(normalize_host("xn--bcher-kva.de"), None) is not None
    assert m.lookup(normalize_host("café.example"), None).entry == "xn--caf-dma.example"


def test_ip_entries_match_only_that_address():
    m = matcher({"doh": ["1.1.1.1", "2606:4700:4700::1111", "0.1.example"]})
    assert m.lookup("1.1.1.1", "/dns-query").entry == "1.1.1.1"
    assert m.lookup("11.1.1.1", None) is None
    long_form = normalize_host("[2606:4700:4700:0:0:0:0:1111]:443")
    assert m.lookup(long_form, None).entry == "2606:4700:4700::1111"
    issues = Issues()
    parse_entries(entries("1.1", "300.1.1.1"), issues, source="x")
    assert len(issues) == 2


def test_path_beats_domain_and_deeper_beats_shallower():
    m = matcher(
        {
            "social": ["facebook.com", "instagram.com"],
            "signup": ["instagram.com/accounts/emailsignup", "m.facebook.com"],
        }
    )
    hit = lookup(m, "www.instagram.com/accounts/emailsignup/?next=1")
    assert (hit.category, hit.kind, hit.entry) == (
        "signup",
        "path",
        "instagram.com/accounts/emailsignup",
    )
    assert hit.source == "signup.yaml:1"
    assert lookup(m, "www.instagram.com/Accounts/EmailSignup").category == "signup"
    assert lookup(m, "www.instagram.com/accounts/%65mailsignup").category == "signup"
    assert lookup(m, "www.instagram.com/explore").category == "social"
    assert lookup(m, "www.instagram.com").category == "social"  # path None: host only
    assert lookup(m, "m.facebook.com/").category == "signup"  # deeper domain
    assert lookup(m, "x.m.facebook.com/").entry == "m.facebook.com"
    assert lookup(m, "www.facebook.com/").category == "social"


def test_equal_specificity_first_category_wins_and_lookup_all():
    m = matcher({"first": ["example.com"], "second": ["example.com", "www.example.com/a"]})
    assert lookup(m, "example.com/").category == "first"
    assert [x.category for x in m.lookup_all("www.example.com", "/a/b")] == ["second", "first"]
    assert [x.category for x in m.lookup_all("example.com", "/")] == ["first", "second"]
    assert m.lookup_all("other.com", "/") == []
    assert m.stats() == {"first": 1, "second": 2}  # "allowlist" only when it has entries


def test_allowlist_precedence():
    m = matcher(
        {
            "social": ["youtube.com", "instagram.com/accounts", "example.org"],
            "video": ["m.example.org"],
        },
        allow=["edu.youtube.com", "instagram.com", "youtube.com/education", "example.org"],
    )
    # domain allow vs path block: the path block is more specific
    assert lookup(m, "instagram.com/accounts/login").category == "social"
    assert lookup(m, "instagram.com/explore").category == ALLOWLIST
    # path allow vs domain block
    hit = lookup(m, "www.youtube.com/education/maths")
    assert (hit.category, hit.kind) == (ALLOWLIST, "path")
    assert lookup(m, "www.youtube.com/watch").category == "social"
    assert lookup(m, "www.youtube.com").category == "social"  # host only: path allow can't apply
    # deeper domain allow vs shallower block
    assert lookup(m, "edu.youtube.com/").category == ALLOWLIST
    # equal specificity: allow wins; a shallower allow loses to a deeper block
    assert lookup(m, "example.org/").category == ALLOWLIST
    assert lookup(m, "a.m.example.org/").category == "video"
    assert lookup(m, "www.example.org/").category == ALLOWLIST
    cats = [x.category for x in m.lookup_all("a.m.example.org", "/")]
    assert cats == ["video", ALLOWLIST, "social"]


def test_regexes_are_least_specific():
    m = matcher(
        {"domains": ["casino.example"], "gambling": ["re:casino"]}, allow=["re:^nocasino\\."]
    )
    assert lookup(m, "www.casino.example/").category == "domains"
    assert lookup(m, "bigcasino.net/").kind == "regex"
    assert lookup(m, "example.net/casino/").category == "gambling"
    assert lookup(m, "nocasino.net/").category == ALLOWLIST


def test_matcher_is_immutable_and_reserved_names():
    m = matcher({"a": ["a.example"]})
    with pytest.raises(AttributeError):
        m._index = {}
    with pytest.raises(ValueError):
        Matcher.build([(ALLOWLIST, [])])
    with pytest.raises(ValueError):
        Matcher.build([("a", []), ("a", [])])


def test_empty_matcher():
    m = Matcher.build([])
    assert m.lookup("example.com", "/") is None
    assert m.lookup("", None) is None
    assert m.lookup_all("example.com", None) == []


# -- shipped lists ----------------------------------------------------------------------------

SHIPPED = ("social_media", "wikipedia", "blogs", "circumvention")


@pytest.fixture(scope="module")
def shipped() -> Matcher:
    issues = Issues()
    cats = [
        (
            name,
            [parse_list(BLOCKLISTS / f"{name}.txt", issues, display_path=f"blocklists/{name}.txt")],
        )
        for name in SHIPPED
    ]
    assert not issues, [str(i) for i in issues.items]
    return Matcher.build(cats)


def test_shipped_lists_have_headers():
    for name in SHIPPED:
        text = (BLOCKLISTS / f"{name}.txt").read_text()
        assert text.startswith("# schoolgate category list:"), name
        assert "Sources:" in text, name


@pytest.mark.parametrize(
    "host",
    [
        "facebook.com",
        "www.facebook.com",
        "m.facebook.com",
        "fbcdn.net",
        "fb.me",
        "m.me",
        "www.instagram.com",
        "cdninstagram.com",
        "linkedin.com",
        "lnkd.in",
        "licdn.com",
        "twitter.com",
        "x.com",
        "t.co",
        "pbs.twimg.com",
        "plus.google.com",
        "tumblr.com",
        "www.pinterest.co.uk",
        "i.pinimg.com",
        "pin.it",
        "web.snapchat.com",
        "sc-cdn.net",
        "web.whatsapp.com",
        "wa.me",
        "whatsapp.net",
        "www.youtube.com",
        "m.youtube.com",
        "youtu.be",
        "i.ytimg.com",
        "www.youtube-nocookie.com",
        "rr1---sn-aigl6n7s.googlevideo.com",
        "tiktok.com",
        "www.tiktok.com",
        "tiktokcdn.com",
        "tiktokv.com",
        "discord.com",
        "discord.gg",
        "cdn.discordapp.com",
        "www.reddit.com",
        "redd.it",
        "redditstatic.com",
        "t.me",
        "web.telegram.org",
        "twitch.tv",
        "video-weaver.lhr03.hls.ttvnw.net",
        "mastodon.social",
        "bsky.app",
        "threads.net",
        "vk.com",
        "weibo.com",
        "kick.com",
        "bere.al",
        "quora.com",
        "wattpad.com",
        "ask.fm",
    ],
)
def test_shipped_social_media_covers(shipped, host):
    hit = shipped.lookup(host, "/")
    assert hit is not None and hit.category == "social_media", host


@pytest.mark.parametrize(
    "host",
    [
        "bbc.co.uk",
        "www.bbc.co.uk",
        "google.com",
        "www.google.com",
        "classroom.google.com",
        "docs.google.com",
        "drive.google.com",
        "accounts.google.com",
        "www.gstatic.com",
        "microsoft.com",
        "www.office.com",
        "teams.microsoft.com",
        "gov.uk",
        "www.gov.uk",
        "www.nationalarchives.gov.uk",
        "oaknationalacademy.com",
        "vimeo.com",
        "snap.com",
        "quad9.net",
        "proton.me",
        "mail.proton.me",
        "icloud.com",
        "translate.google.com",
        "www.wikihow.com",
        "sites.google.com",
        "i0.wp.com",
        "www.edublogs.org",
        "scratch.mit.edu",
        "www.bbc.com",
        "www.apple.com",
        "cloudflare.com",
    ],
)
def test_shipped_lists_leave_education_sites_alone(shipped, host):
    assert shipped.lookup(host, "/") is None, host


def test_shipped_wikipedia_and_blogs_are_separate(shipped):
    assert shipped.lookup("en.wikipedia.org", "/wiki/X").category == "wikipedia"
    assert shipped.lookup("upload.wikimedia.org", None).category == "wikipedia"
    assert shipped.lookup("www.wikidata.org", None).category == "wikipedia"
    assert shipped.lookup("someone.blogspot.com", None).category == "blogs"
    assert shipped.lookup("someone.wordpress.com", None).category == "blogs"
    assert shipped.lookup("medium.com", None).category == "blogs"
    assert shipped.lookup("someone.substack.com", None).category == "blogs"


@pytest.mark.parametrize(
    "host",
    [
        "nordvpn.com",
        "www.expressvpn.com",
        "account.protonvpn.com",
        "vpn-api.proton.me",
        "surfshark.com",
        "windscribe.com",
        "www.hotspotshield.com",
        "tunnelbear.com",
        "psiphon.ca",
        "hola.org",
        "ultrasurf.us",
        "mullvad.net",
        "hide.me",
        "www.croxyproxy.com",
        "www.proxysite.com",
        "kproxy.com",
        "www.torproject.org",
        "dns.google",
        "mozilla.cloudflare-dns.com",
        "dns.quad9.net",
        "doh.opendns.com",
        "dns.nextdns.io",
        "dns.adguard-dns.com",
        "doh.cleanbrowsing.org",
        "1.1.1.1",
        "8.8.8.8",
        "www-bbc-co-uk.translate.goog",
        "mask.icloud.com",
    ],
)
def test_shipped_circumvention_covers(shipped, host):
    hit = shipped.lookup(host, None)
    assert hit is not None and hit.category == "circumvention", host


def test_shipped_no_list_repeats_a_service_of_another(shipped):
    for name in SHIPPED:
        issues = Issues()
        pl = parse_list(BLOCKLISTS / f"{name}.txt", issues)
        for domain in pl.domains:
            assert shipped.lookup(domain, None).category == name, (name, domain)


def test_age_restrictions_yaml():
    data = yaml.safe_load((BLOCKLISTS / "age_restrictions.yaml").read_text())
    by_name = {item["platform"]: item for item in data}
    expected = {
        "Facebook": 13,
        "Instagram": 13,
        "TikTok": 13,
        "Snapchat": 13,
        "X (Twitter)": 13,
        "YouTube": 13,
        "Discord": 13,
        "Reddit": 13,
        "Twitch": 13,
        "Pinterest": 13,
        "Tumblr": 13,
        "WhatsApp": 13,
        "Telegram": 16,
        "BeReal": 13,
        "LinkedIn": 16,
        "Bluesky": 13,
        "Threads": 13,
        "Yubo": 13,
        "Wattpad": 13,
        "VK": 14,
    }
    for name, age in expected.items():
        assert by_name[name]["min_age"] == age, name
    issues = Issues()
    for item in data:
        assert set(item) == {"platform", "min_age", "signup"}
        pl = parse_entries([(s, 1) for s in item["signup"]], issues, source="age.yaml")
        assert len(pl.paths) == len(item["signup"]), item["platform"]  # all are host/path
    assert not issues
    ig = parse_entries([(s, 1) for s in by_name["Instagram"]["signup"]], issues, source="a")
    m = Matcher.build([("signup", [ig])])
    assert m.lookup("www.instagram.com", "/accounts/emailsignup/").kind == "path"
    assert m.lookup("www.instagram.com", "/explore/") is None


def test_path_rules_match_on_segment_boundaries():
    m = matcher({"social": ["youtube.com/watch", "example.org/games/"]}, allow=["youtube.com/edu"])
    for path in ("/edu", "/edu/maths", "/edu?x=1", "/edu.html"):
        assert lookup(m, "www.youtube.com" + path).category == "allowlist", path
    # a longer first segment is not under the rule, for allowing or blocking
    assert lookup(m, "www.youtube.com/education-hack") is None
    assert lookup(m, "www.youtube.com/watchparty") is None
    assert lookup(m, "www.youtube.com/watch?v=1").category == "social"
    assert lookup(m, "example.org/games/chess").category == "social"
    assert lookup(m, "example.org/gamesroom") is None


# A long list is read in runs of clean names (one regular expression match each); whatever
# interrupts a run (a comment, an address, capitals, an overlong name, a bad line) is read on
# its own, and the entries, their lines, the counts and the warnings are the same as when each
# line is read on its own.
_LINES = [
    "example.com", "a.b", "Foo.COM", "1.2.3.4", "x.y1", "# comment", "", "  ", "bad..com",
    "*.wild.org", "||ad.com^", "a" * 254 + ".com", "a" * 63 + "." + "b" * 63 + "." + "c" * 63 +
    "." + "d" * 70, "0.0.0.0 h.com", "e.com/path", "-x.com", "x_.com", "ünï.de", "!x",
    "[Adblock Plus 2.0]", "a.b.c.d.e", "t.tld #comment", "\t", "x.y\t", "::1", "a-b.c-d.e",
]  # fmt: skip


@pytest.mark.parametrize("fmt", ["auto", "domains", "hosts", "adblock"])
def test_a_list_read_in_runs_reads_as_line_by_line(tmp_path, fmt):
    import random

    from schoolgate.core import listformats

    rnd = random.Random(fmt)
    for case in range(300):
        text = "\n".join(rnd.choice(_LINES) for _ in range(rnd.randint(0, 14)))
        text += "\n" if case % 2 else ""
        path = tmp_path / f"{case}.txt"
        path.write_text(text, encoding="utf-8")
        issues = Issues()
        got = parse_list(path, issues, fmt=fmt)
        expected = listformats.ParsedList(source=str(path))
        ref_issues = Issues()
        reader = listformats._Reader(expected, ref_issues, str(path), strict=False)
        listformats._parse_each_line(text.split("\n"), 1, reader, fmt)
        reader.finish()
        assert got.domains == expected.domains, text
        assert list(got.domain_lines) == list(expected.domain_lines), text
        assert (got.paths, got.skipped, got.ignored) == (
            expected.paths,
            expected.skipped,
            expected.ignored,
        )
        assert [(w.line, w.message) for w in issues.warnings + issues.items] == [
            (w.line, w.message) for w in ref_issues.warnings + ref_issues.items
        ]
