"""Circumvention detectors: what each must catch, and the ordinary traffic none may flag.

Run ``python3 tests/test_circumvention.py`` for a timing figure (µs per inspect on
ORDINARY_TRAFFIC); timing is deliberately not a test assertion.
"""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from urllib.parse import quote, urlsplit

import pytest

from schoolgate.circumvention import (
    DETECTOR_HEADERS,
    DETECTORS,
    KINDS,
    CircumventionEvent,
    Detectors,
    DetectorsFailed,
    TrafficFacts,
    detector_names,
    normalise_for_detection,
)
from schoolgate.core.circumvention_settings import DETECTOR_NAMES, known_detectors
from schoolgate.core.destination import Destination, Verdict
from schoolgate.core.hosts import host_suffixes, normalize_host, registrable_domain

# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)
EDGE = CHROME + " Edg/126.0.2592.87"
FIREFOX = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0"
SAFARI_IPAD = (
    "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Mobile/15E148 Safari/604.1"
)
CHROMEBOOK = (
    "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)
ANDROID_CHROME = (
    "Mozilla/5.0 (Linux; Android 14; SM-A546B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.6478.122 Mobile Safari/537.36"
)
TEAMS_APP = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36 Edg/120.0.0.0 Teams/24165.1410.2974.6689/49"
)
WINDOWS_UPDATE = "Windows-Update-Agent/10.0.10011.16384 Client-Protocol/2.71"
APPLE_UPDATE = "com.apple.Mobile.SoftwareUpdate/1 CFNetwork/1496.0.7 Darwin/23.5.0"
TOR_BROWSER = "Mozilla/5.0 (Windows NT 10.0; rv:128.0) Gecko/20100101 Firefox/128.0"

LISTED = {
    "nordvpn.com": "nordvpn.com",
    "expressvpn.com": "expressvpn.com",
    "croxyproxy.com": "croxyproxy.com",
    "hidemyass.com": "hidemyass.com",
    "proxysite.com": "proxysite.com",
    "psiphon.ca": "psiphon.ca",
    "torproject.org": "torproject.org",
}


def lookup(host: str) -> str | None:
    for suffix in host_suffixes(host):
        if suffix in LISTED:
            return LISTED[suffix]
    return None


SCHOOL = Detectors(
    circumvention_lookup=lookup,
    allowed_ip_literals=("10.0.0.0/8", "127.0.0.0/8", "::1/128"),
)


def req(
    url: str,
    *,
    ua: str | None = CHROME,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    sni: str | None | bool = True,
    http_host: str | None | bool = True,
) -> TrafficFacts:
    """A decrypted (https) or plain (http) request as the gateway adapter would describe it."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    if netloc.startswith("["):
        host = netloc[: netloc.index("]") + 1]
        rest = netloc[len(host) :]
    else:
        host, _, rest = netloc.partition(":")
        rest = ":" + rest if rest else ""
    port = int(rest[1:]) if rest.startswith(":") and rest[1:] else None
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    hdrs = {"accept": "text/html,application/xhtml+xml,*/*;q=0.8", "accept-language": "en-GB"}
    if ua:
        hdrs["user-agent"] = ua
    hdrs.update(headers or {})
    https = parts.scheme == "https"
    return TrafficFacts(
        stage="request",
        host=host,
        port=port,
        sni=(host if https else None) if sni is True else sni or None,
        http_host=host if http_host is True else http_host or None,
        method=method,
        path=path,
        headers=hdrs,
        scheme=parts.scheme,
        tls_seen=True if https else None,
    )


def connect(host: str, port: int = 443) -> TrafficFacts:
    return TrafficFacts(stage="connect", host=host, port=port)


def tls(host: str, port: int = 443, sni: str | None | bool = True) -> TrafficFacts:
    return TrafficFacts(
        stage="tls", host=host, port=port, sni=host if sni is True else sni, tls_seen=True
    )


def events(facts: TrafficFacts, detectors: Detectors = SCHOOL) -> list[CircumventionEvent]:
    return detectors.inspect(facts)


def fired(facts: TrafficFacts, name: str, detectors: Detectors = SCHOOL) -> CircumventionEvent:
    found = [e for e in detectors.inspect(facts) if e.detector == name]
    assert len(found) == 1, f"{name} should fire once on {facts}: {found}"
    return found[0]


def silent(facts: TrafficFacts, name: str, detectors: Detectors = SCHOOL) -> None:
    found = [e for e in detectors.inspect(facts) if e.detector == name]
    assert not found, f"{name} should not fire on {facts}: {found}"


# --------------------------------------------------------------------------------------------
# Ordinary traffic: nothing may fire
# --------------------------------------------------------------------------------------------

ORDINARY_TRAFFIC: list[TrafficFacts] = [
    # BBC Bitesize, Oak, Seneca, Sparx, Hegarty, Kahoot, Quizlet
    connect("www.bbc.co.uk"),
    tls("www.bbc.co.uk"),
    req("https://www.bbc.co.uk/bitesize/subjects/z826n39"),
    req("https://www.bbc.co.uk/bitesize/guides/zt3r8mn/revision/1", ua=SAFARI_IPAD),
    req("https://www.thenational.academy/pupils/programmes/maths-secondary-year-9/units"),
    req(
        "https://www.thenational.academy/_next/image?url=https%3A%2F%2Foaknationalacademy-res"
        ".cloudinary.com%2Fimage%2Fupload%2Fv1%2Fthumb.png&w=640&q=75"
    ),
    req("https://app.senecalearning.com/classroom/course/4c9c/section/7d1e/session"),
    req("https://www.sparxmaths.uk/student/homework", ua=CHROMEBOOK),
    req("https://app.sparx-learning.com/api/sessions?school=abc", headers={"accept": "*/*"}),
    req("https://www.hegartymaths.com/"),
    req("https://kahoot.it/", ua=ANDROID_CHROME),
    connect("kahoot.it"),
    req("https://play.kahoot.it/v2/?quizId=7b1f0f2e-5a4b-4c1e-9c1e-2f4b8d1f0a11"),
    req("https://quizlet.com/gb/532145/gcse-biology-cells-flash-cards/"),
    # Google search, its result redirect, Docs, Classroom, Drive, sign-in
    req(
        "https://www.google.com/search?q=photosynthesis+diagram&rlz=1C1GCEA_enGB1000GB1000"
        "&oq=photo&gs_lcrp=EgZjaHJvbWUqBwgBEAAYgAQyBggAEEUYOTIHCAEQABiABA&sourceid=chrome&ie=UTF-8"
    ),
    req("https://www.google.co.uk/search?q=how+to+write+https%3A%2F%2F+links&hl=en-GB"),
    req("https://www.google.com/url?q=https://www.bbc.co.uk/bitesize&sa=U&ved=2ahUKEwi&usg=AOv"),
    req(
        "https://docs.google.com/document/d/1AbCdEfGhIjKlMnOpQrStUvWxYz0123456789/edit?usp=sharing"
    ),
    req(
        "https://docs.google.com/document/d/1AbCdEf/save?id=1AbCdEf&sid=5a1b&vc=1&c=1&w=1",
        method="POST",
        headers={"content-type": "application/x-www-form-urlencoded;charset=UTF-8"},
    ),
    req("https://classroom.google.com/u/0/c/NjY3ODk1NDMyMTA5/a/NjY4MDAwMTIzNDU2/details"),
    req("https://drive.google.com/drive/u/0/my-drive"),
    req("https://lh3.googleusercontent.com/a/ACg8ocK1abcDEF=s96-c"),
    req(
        "https://accounts.google.com/o/oauth2/v2/auth?client_id=123.apps.googleusercontent.com"
        "&redirect_uri=https://create.kahoot.it/auth/google/callback&response_type=code"
        "&scope=openid%20email"
    ),
    req(
        "https://accounts.google.com/ServiceLogin?continue=https://classroom.google.com/"
        "&passive=true"
    ),
    req("https://translate.google.com/?sl=en&tl=fr&text=good%20morning&op=translate"),
    req("https://translate.google.co.uk/"),
    # Microsoft 365: sign-in with redirect_uri, Teams, OneDrive, SharePoint, Outlook safe links
    req(
        "https://login.microsoftonline.com/common/oauth2/v2.0/authorize?client_id=4765445b"
        "&redirect_uri=https%3A%2F%2Fwww.office.com%2Flandingv2&response_type=code%20id_token"
        "&scope=openid%20profile&response_mode=form_post&nonce=638"
    ),
    req(
        "https://login.microsoftonline.com/abc/oauth2/authorize?client_id=5e3ce6c0"
        "&redirect_uri=https://teams.microsoft.com/go&state=xyz",
        ua=TEAMS_APP,
    ),
    req(
        "https://login.live.com/oauth20_authorize.srf?client_id=000000004C12AE6F"
        "&redirect_uri=https://login.live.com/oauth20_desktop.srf&response_type=token",
        ua=EDGE,
    ),
    req("https://teams.microsoft.com/v2/", ua=TEAMS_APP),
    req("https://onedrive.live.com/?id=root&cid=1A2B3C4D5E6F", ua=EDGE),
    req(
        "https://stmarys-my.sharepoint.com/personal/j_smith_stmarys_org_uk/_layouts/15/onedrive.aspx"
    ),
    req("https://outlook.office.com/mail/inbox", ua=EDGE),
    req(
        "https://eur01.safelinks.protection.outlook.com/?url=https%3A%2F%2Fwww.bbc.co.uk%2F"
        "&data=05%7C02%7C&sdata=abc%3D&reserved=0",
        ua=EDGE,
    ),
    # YouTube embeds (the policy decides on YouTube; it is not circumvention)
    req(
        "https://www.youtube.com/embed/dQw4w9WgXcQ?rel=0&enablejsapi=1"
        "&origin=https%3A%2F%2Fwww.bbc.co.uk",
        headers={"referer": "https://www.bbc.co.uk/bitesize"},
    ),
    req("https://www.youtube-nocookie.com/embed/dQw4w9WgXcQ"),
    # CDNs
    req("https://fonts.gstatic.com/s/roboto/v30/KFOmCnqEu92Fr1Mu4mxK.woff2", ua=FIREFOX),
    req("https://fonts.googleapis.com/css2?family=Roboto:wght@400;700&display=swap"),
    req("https://ajax.googleapis.com/ajax/libs/jquery/3.7.1/jquery.min.js"),
    req("https://cdn.jsdelivr.net/npm/bootstrap@5.3.3/dist/css/bootstrap.min.css"),
    req("https://cdnjs.cloudflare.com/ajax/libs/mathjax/3.2.2/es5/tex-mml-chtml.js"),
    req(
        "https://res.cloudinary.com/demo/image/fetch/w_300/https://upload.wikimedia.org/wikipedia"
        "/commons/1/13/Benedict_Cumberbatch_2011.png"
    ),
    req("https://en.wikipedia.org/wiki/Photosynthesis", ua=FIREFOX),
    req("https://archive.org/details/texts"),
    req("https://www.facebook.com/sharer/sharer.php?u=https%3A%2F%2Fwww.bbc.co.uk%2Fnews"),
    req("https://www.instagram.com/p/C8abcDEFghi/"),
    req(
        "https://www.google-analytics.com/g/collect?v=2&tid=G-ABC123&dl=https%3A%2F%2F"
        "www.bbc.co.uk%2Fbitesize",
        method="POST",
    ),
    # Windows, Apple and Chrome updates and connectivity checks
    req(
        "http://download.windowsupdate.com/c/msdownload/update/software/secu/2024/06/"
        "windows10.0-kb5039211-x64.cab",
        ua=WINDOWS_UPDATE,
    ),
    req(
        "https://fe3cr.delivery.mp.microsoft.com/ClientWebService/client.asmx",
        ua=WINDOWS_UPDATE,
        method="POST",
        headers={"content-type": "application/soap+xml; charset=utf-8"},
    ),
    req("http://www.msftconnecttest.com/connecttest.txt", ua="Microsoft NCSI"),
    req("https://mesu.apple.com/assets/com_apple_MobileAsset_SoftwareUpdate/", ua=APPLE_UPDATE),
    connect("gdmf.apple.com"),
    req("http://captive.apple.com/hotspot-detect.html", ua="CaptiveNetworkSupport-481 wispr"),
    req("http://connectivitycheck.gstatic.com/generate_204", ua=ANDROID_CHROME),
    req(
        "https://update.googleapis.com/service/update2/json?cup2key=14:abc&cup2hreq=def",
        method="POST",
        headers={"content-type": "application/json"},
    ),
    req(
        "http://ocsp.digicert.com/MFEwTzBNMEswSTAJBgUrDgMCGgUABBSAUQYBMq2awn1Rh6Doh%2FsBYgFV7g",
        ua="Microsoft-CryptoAPI/10.0",
    ),
    connect("mtalk.google.com", 5228),  # Chrome's push channel goes through the proxy
    # TLS and HTTP/2 shapes: matching SNI, www vs apex, CDN names, HTTP/2 :authority
    tls("www.google.com"),
    tls("fonts.gstatic.com"),
    req("https://www.bbc.co.uk/", sni="bbc.co.uk"),
    req("https://bbc.co.uk/", sni="www.bbc.co.uk"),
    req("https://stmarys.kent.sch.uk/news", sni="www.stmarys.kent.sch.uk"),
    req("https://www.example-school.sch.uk/", sni="example-school.sch.uk"),
    req("https://d1a2b3c4d5e6f7.cloudfront.net/static/app.js", ua=SAFARI_IPAD),
    tls("a248.e.akamai.net"),
    req("https://apis.google.com/js/api.js", sni="www.google.com"),  # same site, coalesced
    req("https://www.gstatic.com/og/_/js/k=og.qtm.en_US", sni="www.google.com"),  # HTTP/2 family
    TrafficFacts(
        stage="request",
        host="classroom.google.com",
        port=443,
        sni="classroom.google.com",
        http_host="classroom.google.com",
        method="GET",
        path="/u/0/h",
        headers={"user-agent": CHROME, "accept": "*/*"},
        scheme="https",
        tls_seen=True,
    ),
    TrafficFacts(stage="connect", host="WWW.BBC.CO.UK", port=443),  # upper case is not a disguise
    # The school's own servers by IP (allowed) and Tor Browser (looks like Firefox ESR)
    req("http://10.0.0.5/printers/", ua=FIREFOX),
    connect("127.0.0.1", 8080),
    req("https://www.bbc.co.uk/news", ua=TOR_BROWSER),
    # Search engines' and sites' own redirectors and helpers (they carry URLs, fetch nothing)
    req(
        "https://www.bing.com/ck/a?!&&p=4f1e2d3c&ptn=3&ver=2&hsh=3&fclid=1a2b"
        "&u=a1aHR0cHM6Ly93d3cuYmJjLmNvLnVrL2JpdGVzaXpl&ntb=1",
        ua=EDGE,
    ),
    req("https://duckduckgo.com/l/?uddg=https%3A%2F%2Fwww.bbc.co.uk%2Fbitesize&rut=abc"),
    req("https://l.facebook.com/l.php?u=https%3A%2F%2Fwww.bbc.co.uk%2F&h=AT0abc"),
    req("https://www.youtube.com/redirect?event=video_description&q=https%3A%2F%2Fwww.oak.org"),
    req(
        "https://www.google.com/recaptcha/api2/anchor?ar=1&k=6LcAbCdEfGhIjKlMnOp"
        "&co=aHR0cHM6Ly93d3cua2Fob290LmNvbTo0NDM.&hl=en&v=abc&size=invisible&cb=xyz"
    ),
    req("https://en.wikipedia.org/w/index.php?search=photosynthesis&title=Special%3ASearch"),
    req("https://moodle.example-school.sch.uk/login/index.php"),
    req("https://moodle.example-school.sch.uk/mod/url/view.php?id=532&redirect=1"),
    req("https://clients2.google.com/service/update2/crx?os=win&arch=x64&prod=chromecrx"),
    req("https://detectportal.firefox.com/canonical.html", ua=FIREFOX),
    req(
        "https://challenges.cloudflare.com/cdn-cgi/challenge-platform/h/g/turnstile/if/ov2/av0"
        "/rcv0/0/abcde/0x4AAAAAAA/auto/fbE/normal/auto/"
    ),
    # Foreign-language sites with IDN names
    req("https://münchen.de/", ua=FIREFOX),
    req("https://xn--r8jz45g.jp/", ua=FIREFOX),
]


def _facts_id(f: TrafficFacts) -> str:
    return f"{f.stage}:{f.http_host or f.host}:{f.port}{(f.path or '')[:40]}"


def test_enough_ordinary_traffic() -> None:
    assert len(ORDINARY_TRAFFIC) >= 40


@pytest.mark.parametrize("facts", ORDINARY_TRAFFIC, ids=_facts_id)
def test_ordinary_traffic_is_not_circumvention(facts: TrafficFacts) -> None:
    assert SCHOOL.inspect(facts) == []


def test_ordinary_traffic_without_a_lookup_or_allowed_ips() -> None:
    plain = Detectors()
    for facts in ORDINARY_TRAFFIC:
        found = plain.inspect(facts)
        # Only the school's own IPs (not allowed in this instance) may be reported.
        assert all(e.detector == "ip_literal" for e in found), (facts, found)


# --------------------------------------------------------------------------------------------
# listed_host
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("facts", "kind"),
    [
        (connect("nordvpn.com"), "vpn"),
        (connect("downloads.nordcdn.com.nordvpn.com"), "vpn"),
        (req("https://www.croxyproxy.com/"), "proxy"),
        (req("https://www.hidemyass.com/en-gb/proxy"), "proxy"),
        (connect("dist.torproject.org"), "tor"),
        (tls("www.bbc.co.uk", sni="www.expressvpn.com"), "vpn"),
        (connect("NordVPN.com"), "vpn"),
    ],
)
def test_listed_host(facts: TrafficFacts, kind: str) -> None:
    event = fired(facts, "listed_host")
    assert event.kind == kind
    assert event.severity == 2
    assert event.evidence["list_entry"] in LISTED.values()


def test_listed_host_needs_a_lookup() -> None:
    assert not [
        e for e in Detectors().inspect(connect("nordvpn.com")) if e.detector == "listed_host"
    ]
    silent(connect("www.nordstrom.com"), "listed_host")


# --------------------------------------------------------------------------------------------
# doh / dot
# --------------------------------------------------------------------------------------------

DNS_QUERY = (
    base64.urlsafe_b64encode(
        bytes.fromhex("abcd01000001000000000000076578616d706c6503636f6d0000010001")
    )
    .decode()
    .rstrip("=")
)


@pytest.mark.parametrize(
    "facts",
    [
        connect("dns.google"),
        connect("cloudflare-dns.com"),
        connect("mozilla.cloudflare-dns.com"),
        connect("1.1.1.1"),
        connect("8.8.8.8"),
        connect("dns.quad9.net"),
        connect("doh.opendns.com"),
        connect("dns.nextdns.io"),
        connect("dns.adguard-dns.com"),
        tls("104.16.248.249", sni="cloudflare-dns.com"),
        req(
            "https://dns.google/dns-query",
            method="POST",
            headers={
                "content-type": "application/dns-message",
                "accept": "application/dns-message",
            },
        ),
        req(f"https://doh.example.net/dns-query?dns={DNS_QUERY}"),
        req(f"https://my-own-resolver.example.net/q?dns={DNS_QUERY}"),
        req("https://dns.google/resolve?name=example.com&type=A"),
        req(
            "https://cloudflare-dns.com/dns-query?name=example.com&type=AAAA",
            headers={"accept": "application/dns-json"},
        ),
        req("https://selfhosted.example.org/custom", headers={"accept": "application/dns-json"}),
    ],
    ids=lambda f: f"{f.stage}:{f.host}{f.path or ''}"[:60],
)
def test_doh(facts: TrafficFacts) -> None:
    event = fired(facts, "doh")
    assert event.kind == "doh"
    assert event.severity == 2
    assert event.evidence["reasons"]


def test_doh_path_alone_is_weak() -> None:
    assert fired(req("https://api.example.org/resolve?name=foo"), "doh").severity == 1


@pytest.mark.parametrize(
    "facts",
    [
        req("https://www.bbc.co.uk/news/dns-outage-explained-123"),
        req("https://developers.google.com/speed/public-dns/docs/doh"),
        req("https://www.google.com/search?q=what+is+dns-query"),
        req("https://example.org/q?dns=not-a-dns-message"),
        connect("www.google.com"),
        connect("developers.cloudflare.com"),
        connect("www.quad9.net"),
    ],
)
def test_not_doh(facts: TrafficFacts) -> None:
    silent(facts, "doh")


def test_dot() -> None:
    event = fired(connect("dns.google", 853), "dot")
    assert (event.kind, event.severity) == ("dot", 2)
    assert "resolver" in event.summary
    assert fired(connect("1.1.1.1", 853), "dot").kind == "dot"
    assert fired(connect("resolver.example.net", 853), "dot").kind == "dot"
    silent(connect("dns.google", 853), "odd_port")
    silent(connect("dns.google", 853), "doh")
    silent(tls("dns.google", 853), "dot")  # reported once, at the CONNECT
    silent(connect("dns.google", 443), "dot")


# --------------------------------------------------------------------------------------------
# ip_literal
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("facts", "severity", "ip"),
    [
        (connect("93.184.215.14"), 1, "93.184.215.14"),
        (req("http://93.184.215.14/"), 1, "93.184.215.14"),
        (
            connect("[2606:2800:21f:cb07:6820:80da:af6b:8b2c]"),
            1,
            "2606:2800:21f:cb07:6820:80da:af6b:8b2c",
        ),
        (req("http://3232235777/"), 3, "192.168.1.1"),
        (req("http://0xC0A80101/"), 3, "192.168.1.1"),
        (req("http://0300.0250.0001.0001/"), 3, "192.168.1.1"),
        (req("http://0xc0.0xa8.0x01.0x01/"), 3, "192.168.1.1"),
        (req("http://192.168.257/"), 3, "192.168.1.1"),
        (req("http://1572395042/"), 3, "93.184.216.34"),
        (connect("::ffff:93.184.215.14"), 2, "93.184.215.14"),
        (connect("0x5d.0xb8.215.14"), 3, "93.184.215.14"),
    ],
)
def test_ip_literal(facts: TrafficFacts, severity: int, ip: str) -> None:
    event = fired(facts, "ip_literal")
    assert (event.kind, event.severity, event.evidence["ip"]) == ("ip_literal", severity, ip)


def test_ip_literal_allowed_ranges() -> None:
    silent(req("http://10.20.30.40/intranet"), "ip_literal")
    silent(connect("127.0.0.1", 8080), "ip_literal")
    silent(connect("[::1]", 8443), "ip_literal")
    # A disguised loopback is still loopback: allowed, and named as such.
    silent(req("http://127.1/"), "ip_literal")
    assert fired(req("http://127.1/"), "ip_literal", Detectors()).severity == 3


@pytest.mark.parametrize(
    "host",
    ["www.bbc.co.uk", "3.bp.blogspot.com", "1dot1dot1dot1.cloudflare-dns.com", "123movies.example",
     "0x.example.com", "example.cafe", "1.2.3.4.5"],
)  # fmt: skip
def test_not_ip_literal(host: str) -> None:
    silent(connect(host), "ip_literal")


# --------------------------------------------------------------------------------------------
# domain_fronting / no_sni
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("facts", "inner"),
    [
        # meek-azure: SNI of a Microsoft CDN, Host of the Tor bridge's front
        (req("https://ajax.aspnetcdn.com/", http_host="meek.azureedge.net"), "meek.azureedge.net"),
        # Google front with an App Engine app behind it
        (req("https://www.google.com/", http_host="my-relay.appspot.com"), "my-relay.appspot.com"),
        # CloudFront: two distributions are two sites
        (req("https://d111111abcdef8.cloudfront.net/", http_host="d2222222xyz.cloudfront.net"),
         "d2222222xyz.cloudfront.net"),
        # The SNI says one thing, the HTTP/2 :authority another
        (req("https://www.bbc.co.uk/", http_host="www.nordvpn.com"), "www.nordvpn.com"),
        # CONNECT to an allowed name, then a ClientHello for another
        (tls("www.bbc.co.uk", sni="www.croxyproxy.com"), "www.croxyproxy.com"),
    ],
)  # fmt: skip
def test_domain_fronting(facts: TrafficFacts, inner: str) -> None:
    event = fired(facts, "domain_fronting")
    assert (event.kind, event.severity, event.wrapped_host) == ("domain_fronting", 3, inner)


@pytest.mark.parametrize(
    "facts",
    [
        req("https://www.x.com/", sni="x.com"),
        req("https://mail.google.com/", sni="accounts.google.com"),
        req("https://www.gstatic.com/", sni="www.google.com"),
        req("https://www.bbc.co.uk/", sni="www.bbc.co.uk.", http_host="www.bbc.co.uk:443"),
        req("https://www.bbc.co.uk/", sni="WWW.BBC.CO.UK"),
        tls("151.101.0.81", sni="www.bbc.co.uk"),  # dialled an IP, named the site: not fronting
        tls("www.bbc.co.uk", sni="cloudflare-ech.com"),  # Encrypted Client Hello public name
        connect("www.bbc.co.uk"),
    ],
)
def test_not_domain_fronting(facts: TrafficFacts) -> None:
    silent(facts, "domain_fronting")


def test_no_sni() -> None:
    event = fired(tls("www.example.com", sni=None), "no_sni")
    assert (event.kind, event.severity) == ("no_sni", 1)
    assert fired(tls("", sni=None), "no_sni").kind == "no_sni"  # transparent, nothing named
    silent(tls("www.example.com"), "no_sni")
    silent(tls("www.example.com", 993, sni=None), "no_sni")
    silent(connect("www.example.com"), "no_sni")  # not known yet at CONNECT
    silent(tls("93.184.215.14", sni=None), "no_sni")  # IP dialled: ip_literal reports it


# --------------------------------------------------------------------------------------------
# wrapped_site / web_proxy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("facts", "wrapped"),
    [
        (req("https://www-example-com.translate.goog/page?_x_tr_sl=auto&_x_tr_tl=en"),
         "www.example.com"),
        (connect("www-example-com.translate.goog"), "www.example.com"),
        (req("https://my--school-co-uk.translate.goog/"), "my-school.co.uk"),
        (req("https://www-nordvpn-com.translate.goog/"), "www.nordvpn.com"),
        (req("https://translate.google.com/translate?sl=auto&tl=en&u=https://www.example.com/games"),
         "www.example.com"),
        (req("https://translate.google.co.uk/translate?hl=en&sl=fr&u=http%3A%2F%2Fexample.org%2F"),
         "example.org"),
        (req("https://web.archive.org/web/20240101000000/https://www.example.com/"),
         "www.example.com"),
        (req("https://web.archive.org/web/2024*/example.com"), "example.com"),
        (req("https://web.archive.org/web/20230101000000im_/http://www.example.com/logo.png"),
         "www.example.com"),
        (req("https://web.archive.org/web/https://www.example.com/games/"), "www.example.com"),
        (req("https://archive.org/wayback/available?url=example.com"), "example.com"),
        (req("https://archive.ph/newest/https://www.example.com/"), "www.example.com"),
        (req("https://archive.ph/2023.05.01-101010/https://www.example.com/"), "www.example.com"),
        (req("https://archive.today/https://www.example.com/page"), "www.example.com"),
        (req("https://webcache.googleusercontent.com/search?q=cache:https://www.example.com/&hl=en"),
         "www.example.com"),
        (req("https://webcache.googleusercontent.com/search?q=cache:AbCdEf12345:www.example.com/+game"),
         "www.example.com"),
        (req("https://translate.yandex.com/translate?url=https://www.example.com/&lang=en-ru"),
         "www.example.com"),
        (req("https://www.translatetheweb.com/?from=&to=en&a=https%3A%2F%2Fwww.example.com"),
         "www.example.com"),
        (req("https://googleweblight.com/i?u=https://www.example.com/"), "www.example.com"),
        (req("https://12ft.io/proxy?q=https%3A%2F%2Fwww.example.com%2Farticle"), "www.example.com"),
        (req("https://r.jina.ai/https://www.example.com/"), "www.example.com"),
    ],
)  # fmt: skip
def test_wrapped_site(facts: TrafficFacts, wrapped: str) -> None:
    event = fired(facts, "wrapped_site")
    assert (event.kind, event.wrapped_host) == ("wrapped_site", wrapped)
    assert event.evidence["wrapped_host"] == wrapped
    assert event.severity == (2 if "nordvpn" in wrapped else 1)  # listed target: more serious


def test_wrapped_site_without_a_decodable_host() -> None:
    event = fired(req("https://archive.ph/Wx7Yz"), "wrapped_site")
    assert event.wrapped_host is None
    assert event.severity == 1
    assert fired(req("https://cc.bingj.com/cache.aspx?q=games&d=4501&w=AbCd"), "wrapped_site")


@pytest.mark.parametrize(
    "facts",
    [
        req("https://translate.google.com/"),
        req("https://translate.google.com/?sl=en&tl=de&text=hello"),
        req("https://web.archive.org/"),
        req("https://web.archive.org/_static/js/ruffle.js"),
        req("https://archive.org/details/texts"),
        req("https://archive.ph/"),
        req("https://archive.ph/faq"),
        connect("web.archive.org"),  # no path yet: cannot tell
        req("https://www.google.com/url?q=https://www.example.com/"),  # a redirector, not a wrapper
        req("https://translate.goog.example.com/"),
    ],
)
def test_not_wrapped_site(facts: TrafficFacts) -> None:
    silent(facts, "wrapped_site")


def _uv(url: str) -> str:
    xored = "".join(chr(ord(c) ^ 2) if i % 2 else c for i, c in enumerate(url))
    return quote(xored, safe="")


@pytest.mark.parametrize(
    ("facts", "wrapped"),
    [
        (req("https://unblocker.example.net/browse.php?u=https%3A%2F%2Fwww.example.com%2F&b=4"),
         "www.example.com"),
        (req("https://unblocker.example.net/browse.php?u=Oi8vd3d3LmV4YW1wbGUuY29tLw%3D%3D&b=13"),
         "www.example.com"),
        (req("https://unblocker.example.net/browse.php?u=XyZ%2Fencrypted&b=5&f=norefer"), None),
        (req("https://proxy.example.net/index.php?q=aHR0cHM6Ly93d3cuZXhhbXBsZS5jb20v&hl=3ed"),
         "www.example.com"),
        (req("https://proxy.example.net/proxy.php?url=http://www.example.com/"), "www.example.com"),
        (req("https://proxy.example.net/cgi-bin/nph-proxy.cgi/010110A/https/www.example.com/"),
         "www.example.com"),
        (req("https://185.12.34.56/?__cpo=aHR0cHM6Ly93d3cuZXhhbXBsZS5jb20"), "www.example.com"),
        (req(f"https://maths-help.example.app/service/{_uv('https://www.example.com/')}"),
         "www.example.com"),
        (req(f"https://maths-help.example.app/uv/service/{_uv('https://discord.com/app')}"),
         "discord.com"),
        (req("https://maths-help.example.app/scram/https%3A%2F%2Fwww.example.com%2F"),
         "www.example.com"),
        (req("https://rh.example.app/0123456789abcdef0123456789abcdef/https://www.example.com/"),
         "www.example.com"),
        (req("https://maths-help.example.app/bare/v3/",
             headers={"x-bare-url": "https://www.example.com/games"}), "www.example.com"),
        (req("https://maths-help.example.app/wisp/", headers={"upgrade": "websocket"}), None),
        (req("https://maths-help.example.app/main/https://www.example.com/"), "www.example.com"),
        (req("https://some.example.net/search?q=aHR0cHM6Ly93d3cuZXhhbXBsZS5jb20v"),
         "www.example.com"),
    ],
)  # fmt: skip
def test_web_proxy(facts: TrafficFacts, wrapped: str | None) -> None:
    event = fired(facts, "web_proxy")
    assert (event.kind, event.severity, event.wrapped_host) == ("proxy", 2, wrapped)
    assert event.evidence["proxy"]


@pytest.mark.parametrize(
    "facts",
    [
        req("https://www.example-school.sch.uk/index.php?q=homework+timetable"),
        req("https://www.example-school.sch.uk/index.php?url=https://www.bbc.co.uk/"),
        req("https://forum.example.org/go.php?url=https://www.example.com/"),
        req("https://www.example-school.sch.uk/index.php?option=com_content&view=article&id=7"),
        req("https://forum.example.org/viewtopic.php?t=123&url=https://www.example.com/"),
        req("https://www.facebook.com/sharer/sharer.php?u=https://www.bbc.co.uk/"),
        req("https://twitter.com/intent/tweet?url=https%3A%2F%2Fwww.bbc.co.uk%2F&text=hi"),
        req("https://www.gov.uk/service/apply-for-a-passport"),
        req("https://www.example.com/service/aGVsbG8gd29ybGQ"),
        req("https://www.example.com/p/some-post"),
        req("https://www.example.com/go/maths"),
        req("https://www.example.com/approximately-right"),
        req("https://www.example.com/cdn-cgi/image/width=80/https://www.example.com/a.jpg"),
        req("https://external-content.duckduckgo.com/iu/?u=https%3A%2F%2Fwww.example.com%2Fa.png"),
        req("https://www.google.com/search?q=proxy+server+definition"),
    ],
)
def test_not_web_proxy(facts: TrafficFacts) -> None:
    silent(facts, "web_proxy")


# --------------------------------------------------------------------------------------------
# odd_port / non_tls_tunnel
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("port", "kind", "severity", "protocol"),
    [
        (1194, "vpn", 3, "OpenVPN"),
        (1723, "vpn", 3, "PPTP"),
        (51820, "vpn", 3, "WireGuard"),
        (9001, "tor", 3, "Tor"),
        (9030, "tor", 3, "Tor"),
        (1080, "proxy", 3, "SOCKS"),
        (22, "odd_port", 2, "SSH"),
        (3389, "odd_port", 2, "RDP"),
        (5222, "odd_port", 1, "XMPP"),
        (25565, "odd_port", 1, "Minecraft"),
        (31337, "odd_port", 1, "unknown"),
    ],
)
def test_odd_port(port: int, kind: str, severity: int, protocol: str) -> None:
    event = fired(connect("vpn.example.net", port), "odd_port")
    assert (event.kind, event.severity) == (kind, severity)
    assert protocol in event.evidence["likely_protocol"]
    assert event.evidence["port"] == str(port)


def test_odd_port_stages_and_config() -> None:
    assert fired(req("http://proxy.example.net:3128/"), "odd_port").kind == "proxy"
    silent(tls("vpn.example.net", 1194), "odd_port")  # reported at the CONNECT
    silent(req("https://www.example.com:8443/"), "odd_port")
    silent(connect("www.example.com", 8080), "odd_port")
    silent(connect("mtalk.google.com", 5228), "odd_port")
    only_443 = Detectors(allowed_ports=(443,))
    assert fired(connect("www.example.com", 8080), "odd_port", only_443).kind == "odd_port"


def test_odd_port_on_the_schools_own_network_is_not_reported() -> None:
    # Printers and internal apps on odd ports, at addresses the school allows.
    silent(req("http://10.0.0.5:9100/status"), "odd_port")
    silent(connect("10.0.0.5", 3389), "odd_port")
    assert fired(connect("203.0.113.5", 3389), "odd_port").kind == "odd_port"


def test_non_tls_tunnel() -> None:
    tunnel = TrafficFacts(stage="tls", host="vpn.example.net", port=443, tls_seen=False)
    event = fired(tunnel, "non_tls_tunnel")
    assert (event.kind, event.severity) == ("non_tls_tunnel", 2)
    plain = TrafficFacts(stage="request", host="x.example.net", port=443, method="GET", path="/",
                         scheme="http")  # fmt: skip
    assert fired(plain, "non_tls_tunnel").kind == "non_tls_tunnel"
    silent(TrafficFacts(stage="connect", host="www.bbc.co.uk", port=443), "non_tls_tunnel")
    silent(tls("www.bbc.co.uk"), "non_tls_tunnel")
    # Neither TLS nor HTTP is a tunnel on any port (SSH to 22, a VPN on 80).
    for port in (22, 80, 1194):
        raw = TrafficFacts(stage="tls", host="home.example.net", port=port, tls_seen=False)
        assert "neither TLS nor HTTP" in fired(raw, "non_tls_tunnel").summary
    silent(TrafficFacts(stage="request", host="x.example.net", port=80, method="GET", path="/",
                        scheme="http"), "non_tls_tunnel")  # fmt: skip


# --------------------------------------------------------------------------------------------
# vpn_client
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ua", "severity"),
    [
        ("OpenVPN Connect/3.4.4 (Windows 10.0.19045; x64)", 2),
        ("WireGuard/0.5.3 (Windows 10.0.19045; amd64)", 2),
        ("NordVPN/7.20.4.0 (Windows NT 10.0.19045)", 3),
        ("ExpressVPN/12.73.0 (Windows)", 3),
        ("ProtonVPN/3.2.11 (Windows_NT 10.0.22631)", 3),
        ("Psiphon3/193 (Windows)", 3),
        ("Ultrasurf/22.01", 3),
        ("HotspotShield/12.3.1 (Android 14)", 3),
        ("Hola/1.234.567 (Windows)", 3),
        ("Lantern/7.6.45 (windows/amd64)", 3),
        ("Windscribe/2.10.15 (Windows)", 3),
        ("TunnelBear/4.6.2 (Android 13)", 3),
        ("okhttp/4.9.3 Surfshark/3.4.0", 3),
        ("Mozilla/5.0 (Linux; Android 13) AppleWebKit/537.36 Psiphon/190", 3),
    ],
)
def test_vpn_client(ua: str, severity: int) -> None:
    event = fired(req("https://api.example.net/v1/servers", ua=ua), "vpn_client")
    assert (event.kind, event.severity) == ("vpn_client", severity)
    assert event.evidence["user-agent"] == ua


@pytest.mark.parametrize(
    "ua",
    [CHROME, EDGE, FIREFOX, SAFARI_IPAD, CHROMEBOOK, ANDROID_CHROME, TEAMS_APP, WINDOWS_UPDATE,
     APPLE_UPDATE, TOR_BROWSER, "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0)",
     "Mozilla/5.0 (compatible; Holafly/1.0)", "Lanterns-Festival-App/2.0", "curl/8.5.0",
     "Dalvik/2.1.0 (Linux; U; Android 14; SM-A546B Build/UP1A)"],
)  # fmt: skip
def test_not_vpn_client(ua: str) -> None:
    silent(req("https://www.bbc.co.uk/", ua=ua), "vpn_client")


# --------------------------------------------------------------------------------------------
# disguised_host and normalise_for_detection
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "host", "disguises"),
    [
        ("www.bbc.co.uk", "www.bbc.co.uk", []),
        ("WWW.BBC.CO.UK", "www.bbc.co.uk", []),
        ("www.bbc.co.uk:443", "www.bbc.co.uk", []),
        ("www.example.com.", "www.example.com", ["trailing-dot"]),
        ("%77%77%77.example.com", "www.example.com", ["percent-encoding"]),
        ("%2577ww.example.com", "www.example.com", ["percent-encoding", "double-percent-encoding"]),
        ("www。example。com", "www.example.com", ["unicode-dot"]),
        ("ｅｘａｍｐｌｅ.com", "example.com", ["fullwidth-characters"]),
        ("exa\u200bmple.com", "example.com", ["invisible-characters"]),
        ("www.bbc.co.uk@example.com", "example.com", ["userinfo"]),
        ("münchen.de", "xn--mnchen-3ya.de", []),
        ("例え.jp", "xn--r8jz45g.jp", []),
        ("xn--r8jz45g.jp", "xn--r8jz45g.jp", []),
        ("аpple.com", "xn--pple-43d.com", ["mixed-script"]),  # Cyrillic а
        ("xn--pple-43d.com", "xn--pple-43d.com", ["mixed-script"]),
        ("аррӏе.com", "xn--80ak6aa92e.com", ["whole-script-confusable"]),
        ("сайт.рф", "xn--80aswg.xn--p1ai", []),  # ordinary Russian IDN
        ("xn--abc-.com", "xn--abc-.com", ["invalid-punycode"]),
        ("3232235777", "192.168.1.1", ["ipv4-decimal"]),
        ("0xC0A80101", "192.168.1.1", ["ipv4-hex"]),
        ("0300.0250.0001.0001", "192.168.1.1", ["ipv4-octal"]),
        ("0xc0.0xa8.0x01.0x01", "192.168.1.1", ["ipv4-hex"]),
        ("127.1", "127.0.0.1", ["ipv4-short"]),
        ("[::ffff:7f00:1]", "127.0.0.1", ["ipv4-mapped-ipv6"]),
        ("[2001:DB8::1]:8443", "2001:db8::1", []),
    ],
)
def test_normalise_for_detection(raw: str, host: str, disguises: list[str]) -> None:
    assert normalise_for_detection(raw) == (host, disguises)


@pytest.mark.parametrize("facts", ORDINARY_TRAFFIC, ids=_facts_id)
def test_normalisation_agrees_with_the_lists(facts: TrafficFacts) -> None:
    host, disguises = normalise_for_detection(facts.host)
    assert host == normalize_host(facts.host)
    assert disguises == []


@pytest.mark.parametrize(
    ("facts", "disguise"),
    [
        (connect("www.example.com."), "trailing-dot"),
        (req("http://%77%77%77.example.com/"), "percent-encoding"),
        (req("https://www.bbc.co.uk/", http_host="www.example.com."), "trailing-dot"),
        (connect("xn--pple-43d.com"), "mixed-script"),
        (connect("www。example。com"), "unicode-dot"),
    ],
)
def test_disguised_host(facts: TrafficFacts, disguise: str) -> None:
    event = fired(facts, "disguised_host")
    assert (event.kind, event.severity) == ("disguised_host", 1)
    assert disguise in event.evidence["disguises"]


def test_homograph_of_a_listed_host() -> None:
    event = fired(connect("nordvрn.com"), "disguised_host")  # Cyrillic р
    assert event.severity == 2
    assert event.evidence["looks_like"] == "nordvpn.com"
    assert "homograph-of-listed-host" in event.evidence["disguises"]


def test_ip_forms_are_ip_literal_not_disguised_host() -> None:
    silent(req("http://0xC0A80101/"), "disguised_host")
    silent(connect("WWW.BBC.CO.UK"), "disguised_host")


# --------------------------------------------------------------------------------------------
# tor
# --------------------------------------------------------------------------------------------


def test_tor() -> None:
    onion = "duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion"
    assert fired(connect(onion), "tor").severity == 3
    gateway = fired(req(f"https://{onion[:-6]}.onion.ly/"), "tor")
    assert (gateway.kind, gateway.severity) == ("tor", 2)
    assert fired(connect("snowflake-broker.torproject.net"), "tor").severity == 3
    assert fired(req("https://bridges.torproject.org/moat/fetch", method="POST"), "tor")
    silent(connect("www.tor.com"), "tor")
    silent(connect("www.editor.example.com"), "tor")
    silent(connect("onion.example.com"), "tor")


# --------------------------------------------------------------------------------------------
# The Detectors object and events
# --------------------------------------------------------------------------------------------


def test_the_config_knows_the_detectors_the_gateway_runs() -> None:
    # The core checks ``circumvention.detectors`` against its own list of names (it may not
    # import the detectors): the same names, in the order they run.
    assert tuple(name for name, _ in DETECTORS) == DETECTOR_NAMES == detector_names()
    assert known_detectors() == detector_names()


def test_names_and_enabled() -> None:
    assert SCHOOL.names == detector_names()
    for name in ("listed_host", "doh", "dot", "ip_literal", "domain_fronting", "no_sni",
                 "wrapped_site", "web_proxy", "odd_port", "non_tls_tunnel", "vpn_client",
                 "disguised_host", "tor"):  # fmt: skip
        assert name in SCHOOL.names
    only = Detectors(enabled=["ip_literal", "doh"])
    assert only.names == ("doh", "ip_literal")
    assert {e.detector for e in only.inspect(connect("1.1.1.1", 1194))} == {"doh", "ip_literal"}
    with pytest.raises(ValueError, match="unknown"):
        Detectors(enabled=["doh", "telepathy"])


def test_events_are_complete_and_serialisable() -> None:
    facts = req(
        "https://www-example-com.translate.goog/?_x_tr_sl=auto",
        ua="NordVPN/7.20.4.0 (Windows NT 10.0.19045)",
    )
    found = SCHOOL.inspect(facts)
    assert {e.detector for e in found} == {"wrapped_site", "vpn_client"}
    for event in found:
        assert event.kind in KINDS
        assert 1 <= event.severity <= 3
        assert event.summary.endswith(".")
        assert event.evidence["host"] == "www-example-com.translate.goog"
        assert event.evidence["stage"] == "request"
        json.dumps(event.to_json())
        assert event.key[:2] == (event.detector, event.kind)
    with pytest.raises(TypeError):
        event.evidence["host"] = "x"  # type: ignore[index]


def test_all_kinds_can_be_produced() -> None:
    samples = [
        connect("nordvpn.com"), connect("www.croxyproxy.com"), connect("dns.google"),
        connect("dns.google", 853), connect("93.184.215.14"),
        req("https://www.google.com/", http_host="x.appspot.com"), tls("a.example.com", sni=None),
        req("https://web.archive.org/web/2024/https://example.com/"), connect("a.example", 31337),
        TrafficFacts(stage="tls", host="a.example.com", port=443, tls_seen=False),
        connect("a.example.com."), req("https://a.example.com/", ua="NordVPN/7.0"),
        connect("x.onion"),
        TrafficFacts(stage="tls", host="", port=443, sni="www.gov.uk", tls_seen=True,
                     destination=Destination(Verdict.MISMATCH, "203.0.113.9", "www.gov.uk")),
    ]  # fmt: skip
    kinds = {e.kind for f in samples for e in SCHOOL.inspect(f)}
    assert kinds == set(KINDS)


def test_unverified_destination_reports_what_was_refused() -> None:
    facts = TrafficFacts(
        stage="tls",
        host="",
        port=443,
        sni="www.gov.uk",
        tls_seen=True,
        destination=Destination(
            Verdict.MISMATCH,
            "203.0.113.9",
            "www.gov.uk",
            "the connection goes to 203.0.113.9, which is not an address of www.gov.uk",
        ),
    )
    event = fired(facts, "unverified_destination")
    assert (event.kind, event.severity) == ("unverified_destination", 3)
    assert "203.0.113.9" in event.summary and event.evidence["claimed_name"] == "www.gov.uk"
    no_name = replace(facts, destination=Destination(Verdict.NO_NAME, "203.0.113.9"))
    assert fired(no_name, "unverified_destination").severity == 1
    silent(replace(facts, destination=None), "unverified_destination")


def test_doh_json_with_a_type_is_a_strong_sign() -> None:
    strong = fired(req("https://doh.example.net/resolve?name=example.com&type=A"), "doh")
    weak = fired(req("https://api.example.net/resolve?name=thing"), "doh")
    assert (strong.severity, weak.severity) == (2, 1)


def test_a_failing_lookup_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    def broken(host: str) -> str | None:
        raise RuntimeError("list not loaded")

    dets = Detectors(circumvention_lookup=broken)
    with pytest.raises(DetectorsFailed) as failure:
        dets.inspect(connect("1.1.1.1"))
    # The others ran and their findings are kept; the failure is raised so that the
    # gateway refuses what it could not check.
    assert {e.detector for e in failure.value.events} == {"doh", "ip_literal"}
    assert failure.value.detectors == ["listed_host"]
    assert "listed_host failed" in caplog.text


def test_registrable_domain() -> None:
    assert registrable_domain("www.bbc.co.uk") == "bbc.co.uk"
    assert registrable_domain("mail.google.com") == "google.com"
    assert registrable_domain("www.stmarys.kent.sch.uk") == "stmarys.kent.sch.uk"
    assert registrable_domain("relay.appspot.com") == "relay.appspot.com"
    assert registrable_domain("localhost") == "localhost"


# -- the detectors that look only at the destination run once for each clean one ---------------

SAMPLE_TRAFFIC = [
    *ORDINARY_TRAFFIC,
    connect("nordvpn.com"),
    req("https://www.croxyproxy.com/"),
    tls("www.bbc.co.uk", sni="www.expressvpn.com"),
    connect("dns.google", 853),
    req("https://dns.google/resolve?name=example.com&type=A"),
    req("http://93.184.215.14/"),
    req("http://0xC0A80101/"),
    connect("::ffff:93.184.215.14"),
    req("https://ajax.aspnetcdn.com/", http_host="meek.azureedge.net"),
    req("https://www.bbc.co.uk/", http_host="www.nordvpn.com"),
    req("http://example.org:6667/"),
    req("https://www.bbc.co.uk/", sni=None),
    tls("www.bbc.co.uk", sni=None),
]


def _described(found: list[CircumventionEvent]) -> list[tuple]:
    return [(e.detector, e.kind, e.severity, e.summary) for e in found]


def test_a_second_look_finds_what_the_first_did() -> None:
    first = Detectors(circumvention_lookup=lookup, allowed_ip_literals=("10.0.0.0/8",))
    again = [_described(first.inspect(f)) for f in SAMPLE_TRAFFIC]
    fresh = [
        _described(
            Detectors(circumvention_lookup=lookup, allowed_ip_literals=("10.0.0.0/8",)).inspect(f)
        )
        for f in SAMPLE_TRAFFIC
    ]
    assert [_described(first.inspect(f)) for f in SAMPLE_TRAFFIC] == again == fresh
    assert any(again), "the sample holds circumvention"


def test_a_clean_destination_still_has_its_paths_and_headers_checked() -> None:
    detectors = Detectors(circumvention_lookup=lookup)
    assert detectors.inspect(req("https://www.example.org/")) == []
    # the same site, now used as a web proxy and by a VPN app: those detectors still run
    proxied = req("https://www.example.org/browse.php?u=https%3A%2F%2Fwww.instagram.com%2F")
    assert "web_proxy" in {e.detector for e in detectors.inspect(proxied)}
    vpn = req("https://www.example.org/", ua="NordVPN/6.12 (Windows)")
    fresh = {e.detector for e in Detectors(circumvention_lookup=lookup).inspect(vpn)}
    assert {e.detector for e in detectors.inspect(vpn)} == fresh
    # a listed destination is never remembered as clean
    for _ in range(3):
        assert fired(connect("nordvpn.com"), "listed_host", detectors)


# -- the gateway passes the detectors only the headers they read -------------------------------


class _NotedHeaders(dict):
    """Headers that note each name a detector asks for."""

    def __init__(self, *args, asked: set[str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.asked = asked

    def get(self, key, default=None):
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key) -> bool:
        self.asked.add(key)
        return super().__contains__(key)


def test_the_detectors_read_no_header_beyond_those_the_gateway_passes() -> None:
    asked: set[str] = set()
    detectors = Detectors(circumvention_lookup=lookup)
    flagged = [
        req("https://www.example.org/", headers={"x-bare-url": "https://www.instagram.com/"}),
        req("https://www.example.org/", ua="NordVPN/6.1 (Windows)"),
        req("https://cloudflare-dns.com/dns-query", headers={"accept": "application/dns-message"}),
    ]
    for facts in [*SAMPLE_TRAFFIC, *flagged]:  # copies: the samples are shared with others
        detectors.inspect(replace(facts, headers=_NotedHeaders(facts.headers, asked=asked)))
    assert {"user-agent", "accept", "x-bare-url"} <= asked
    assert asked <= DETECTOR_HEADERS, f"add {sorted(asked - DETECTOR_HEADERS)} to DETECTOR_HEADERS"


def test_the_wrapped_page_path_is_read_where_the_wrapper_shows_it() -> None:
    from schoolgate.circumvention import wrapped_path

    assert wrapped_path("/web/2024/https://social.test/feed?x=1", "social.test") == "/feed?x=1"
    encoded = "/translate?u=https%3A%2F%2Fwww.instagram.com%2Faccounts%2Femailsignup%2F&sl=auto"
    assert wrapped_path(encoded, "www.instagram.com") == "/accounts/emailsignup/"
    goog = "/accounts/emailsignup?_x_tr_sl=auto&_x_tr_tl=en&next=x"
    assert wrapped_path(goog, "www.instagram.com", "google-translate-proxy") == (
        "/accounts/emailsignup?next=x"
    )
    assert wrapped_path("/newest/http://social.test:8080/x", "social.test") == "/x"
    assert wrapped_path("/web/2024/social.test", "social.test") == "/"
    assert wrapped_path("/aHR0cHM6Ly9zb2NpYWwudGVzdC8=", "social.test") is None  # base64
    event = fired(req("https://web.archive.org/web/2024/https://social.test/feed"), "wrapped_site")
    assert event.evidence["wrapped_path"] == "/feed"
