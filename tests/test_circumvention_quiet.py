"""The detectors' proof that a request holds nothing (:meth:`Detectors.quiet`), which lets the
gateway skip them on an ordinary request: it may never say "nothing" of a request in which
:meth:`Detectors.inspect` finds something, whatever the spelling of its names, and it holds
only for the set (policy and lists) that learnt it."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from test_circumvention import CHROME, SAMPLE_TRAFFIC, TOR_BROWSER, connect, lookup, req, tls

from schoolgate.circumvention import Detectors, TrafficFacts
from schoolgate.circumvention import registry as registry_module


def names_of(f: TrafficFacts) -> tuple:
    return (f.stage, f.host, f.port, f.sni, f.http_host, f.scheme, f.tls_seen)


def school() -> Detectors:
    return Detectors(
        circumvention_lookup=lookup, allowed_ip_literals=("10.0.0.0/8", "127.0.0.0/8", "::1/128")
    )


# How a request may be named: ordinary sites and every trick the detectors look for in names,
# spelt as a pupil might spell them (case, trailing dots, ports, addresses, Host against SNI,
# HTTP/2's :authority as the Host).
NAMES: list[TrafficFacts] = [
    req("https://www.bbc.co.uk/"),
    req("http://www.bbc.co.uk/"),
    req("https://WWW.BBC.CO.UK/"),
    req("https://www.bbc.co.uk./"),
    req("https://www.bbc.co.uk:8443/"),
    req("http://www.bbc.co.uk:8080/"),
    req("http://www.bbc.co.uk:6667/"),
    req("http://www.bbc.co.uk:443/"),
    req("https://www.bbc.co.uk/", sni=None),
    req("https://www.bbc.co.uk/", sni="www.nordvpn.com"),
    req("https://www.bbc.co.uk/", http_host="www.nordvpn.com"),
    req("https://www.bbc.co.uk/", http_host="www.bbc.co.uk:443"),
    req("https://www.bbc.co.uk/", sni="dns.google"),
    req("https://www.bbc.co.uk/", http_host="www.torproject.org"),
    req("https://nordvpn.com/"),
    req("https://NordVPN.com./"),
    req("https://www.croxyproxy.com/"),
    req("https://dns.google/"),
    req("https://DNS.GOOGLE./"),
    req("https://cloudflare-dns.com/"),
    req("https://1.1.1.1/"),
    req("http://93.184.215.14/"),
    req("http://10.1.2.3/"),
    req("http://10.1.2.3:6667/"),
    req("http://0xC0A80101/"),
    req("http://3232235777/"),
    req("http://[::ffff:93.184.215.14]/"),
    req("http://[::1]/"),
    req("https://translate.google.com/"),
    req("https://www-bbc-co-uk.translate.goog/"),
    req("https://web.archive.org/"),
    req("https://WEB.ARCHIVE.ORG./"),
    req("http://abcdefghijklmnop.onion/"),
    req("https://example.onion.ly/"),
    req("https://xn--pple-43d.com/"),
    req("https://ex%61mple.com/"),
    req("https://user@example.com/"),
    req("http://example.org:1194/"),
    req("http://example.org:853/"),
    req("https://dns.google:853/"),
]

# Paths: ordinary ones and those each path-reading detector looks for.
PATHS = [
    "/",
    "/page",
    "/bitesize/guides/zt3r8mn/revision/1",
    "/search?q=hello&source=hp",
    "/dns-query?dns=AAABAAABAAAAAAAAA3d3dwdleGFtcGxlA2NvbQAAAQAB",
    "/dns-query",
    "/resolve?name=example.com&type=A",
    "/resolve?name=example.com",
    "/browse.php?u=https%3A%2F%2Fwww.instagram.com%2F&b=4",
    "/index.php?q=aHR0cHM6Ly93d3cuaW5zdGFncmFtLmNvbS8",
    "/service/hvtrs8%2F-wuw%2Cinutcgrcm%2Ccmm-",
    "/cgi-bin/nph-proxy.cgi/010110A/https/www.instagram.com/",
    "/proxy?url=https://www.instagram.com/",
    "/?__cpo=aHR0cHM6Ly93d3cuaW5zdGFncmFtLmNvbQ",
    "/web/2024/https://www.instagram.com/",
    "/web/20240101000000/https://www.instagram.com/",
    "/translate?sl=auto&tl=en&u=https://www.instagram.com/",
    "/https://www.instagram.com/",
    "/0123456789abcdef0123456789abcdef/https://www.instagram.com/",
    "/p/https://www.instagram.com/",
    "/go/https://www.instagram.com/",
    "/main/https/www.instagram.com/",
    "/surf/https://www.instagram.com/",
    "/bare/v1/",
    "/wisp/",
    "/scramjet/https%3A%2F%2Fwww.instagram.com",
]

# Headers: a browser's, and those the header-reading detectors look for.
HEADERS: list[dict[str, str]] = [
    {},
    {"user-agent": CHROME, "accept": "text/html,application/xhtml+xml,*/*;q=0.8"},
    {"user-agent": TOR_BROWSER},
    {"user-agent": "NordVPN/6.12 (Windows)"},
    {"user-agent": "Mozilla/5.0 WireGuard/1.0"},
    {"accept": "application/dns-message"},
    {"accept": "application/DNS-JSON"},
    {"content-type": "application/dns-message"},
    {"x-bare-url": "https://www.instagram.com/"},
    {"x-bare-host": "www.instagram.com"},
]


def test_nothing_is_quiet_before_it_was_inspected() -> None:
    detectors = school()
    for f in NAMES:
        assert not detectors.quiet(names_of(f), f.path, f.headers)


def test_quiet_never_hides_what_inspect_finds() -> None:
    """Every name, path and header set together: where the set that learnt the names says
    quiet, a fresh set finds nothing, and raises nothing."""
    learnt = school()
    reference = school()
    for f in NAMES:
        learnt.inspect(replace(f, path="/", headers={"user-agent": CHROME}))
    said_quiet = 0
    for f, path, headers in itertools.product(NAMES, PATHS, HEADERS):
        facts = replace(f, path=path, headers=headers)
        if learnt.quiet(names_of(facts), path, headers):
            said_quiet += 1
            assert reference.inspect(facts) == [], facts
    assert said_quiet, "ordinary requests are proved quiet"


def test_every_sample_is_quiet_only_if_nothing_is_found() -> None:
    learnt = school()
    for f in SAMPLE_TRAFFIC:
        learnt.inspect(f)
    for f in SAMPLE_TRAFFIC:
        if f.stage == "request" and learnt.quiet(names_of(f), f.path, f.headers):
            assert school().inspect(f) == [], f


@pytest.mark.parametrize(
    "flagged",
    [
        req("https://nordvpn.com/"),
        req("https://dns.google/"),
        req("https://web.archive.org/web/2024/https://www.instagram.com/"),
        req("http://93.184.215.14/"),
        req("http://example.org:6667/"),
        req("https://www.bbc.co.uk/", http_host="www.nordvpn.com"),
        req("https://www.bbc.co.uk/", sni="cloudflare-dns.com"),
    ],
)
def test_a_flagged_name_is_never_remembered_as_quiet(flagged: TrafficFacts) -> None:
    detectors = school()
    for _ in range(3):
        assert detectors.inspect(flagged)
        ordinary = replace(flagged, path="/", headers={"user-agent": CHROME})
        detectors.inspect(ordinary)
        assert not detectors.quiet(names_of(ordinary), "/", {"user-agent": CHROME})


def test_a_quiet_site_still_has_its_paths_and_headers_read() -> None:
    detectors = school()
    site = req("https://www.example.org/")
    assert detectors.inspect(site) == []
    assert detectors.quiet(names_of(site), "/other", {"user-agent": CHROME})
    proxied = replace(site, path="/browse.php?u=https%3A%2F%2Fwww.instagram.com%2F")
    assert not detectors.quiet(names_of(proxied), proxied.path, proxied.headers)
    assert {e.detector for e in detectors.inspect(proxied)} == {"web_proxy"}
    vpn = replace(site, headers={"user-agent": "NordVPN/6.12 (Windows)"})
    assert not detectors.quiet(names_of(vpn), vpn.path, vpn.headers)
    assert {e.detector for e in detectors.inspect(vpn)} == {"vpn_client"}
    # and the site is still quiet for an ordinary request after those
    assert detectors.quiet(names_of(site), "/", {"user-agent": CHROME})


def test_other_spellings_and_stages_of_a_quiet_name_are_not_quiet() -> None:
    detectors = school()
    site = req("https://www.example.org/")
    detectors.inspect(site)
    for other in [
        replace(site, host="WWW.EXAMPLE.ORG"),
        replace(site, host="www.example.org."),
        replace(site, port=8443),
        replace(site, sni="www.nordvpn.com"),
        replace(site, sni=None),
        replace(site, http_host="www.example.org:443"),
        replace(site, scheme="http", tls_seen=None),
        tls("www.example.org"),
        connect("www.example.org"),
    ]:
        assert not detectors.quiet(names_of(other), "/", {})


def test_a_new_set_of_detectors_knows_nothing_quiet() -> None:
    """A new policy (or list) makes a new set: nothing it has not inspected is quiet, and a
    site listed since is found."""
    site = req("https://www.newproxy.test/")
    before = school()
    assert before.inspect(site) == []
    assert before.quiet(names_of(site), "/", {})
    after = Detectors(circumvention_lookup=lambda h: "newproxy.test" if "newproxy" in h else None)
    assert not after.quiet(names_of(site), "/", {})
    assert {e.detector for e in after.inspect(site)} == {"listed_host"}
    assert not after.quiet(names_of(site), "/", {})


def test_a_set_running_a_detector_it_does_not_know_proves_nothing(monkeypatch) -> None:
    def custom(det, f, hi):
        return None

    monkeypatch.setitem(registry_module.REGISTRY, "custom_check", custom)
    detectors = Detectors(circumvention_lookup=lookup)
    site = req("https://www.example.org/")
    assert detectors.inspect(site) == []
    assert not detectors.quiet(names_of(site), "/", {})
    # the same for a detector registered over a built-in one
    monkeypatch.delitem(registry_module.REGISTRY, "custom_check")
    monkeypatch.setitem(registry_module.REGISTRY, "web_proxy", custom)
    detectors = Detectors(circumvention_lookup=lookup)
    assert detectors.inspect(site) == []
    assert not detectors.quiet(names_of(site), "/", {})
    # and for the built-in set, it is quiet
    monkeypatch.undo()
    detectors = Detectors(circumvention_lookup=lookup)
    assert detectors.inspect(site) == []
    assert detectors.quiet(names_of(site), "/", {})
