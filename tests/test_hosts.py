"""Host normalisation: every spelling of a host compares equal."""

import pytest

from schoolgate.core.hosts import (
    host_suffixes,
    is_registry_suffix,
    normalize_host,
    registrable_domain,
)


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("facebook.com", "facebook.com"),
        ("WWW.Facebook.COM", "www.facebook.com"),
        ("www.facebook.com.", "www.facebook.com"),
        ("www.facebook.com:443", "www.facebook.com"),
        ("https://www.facebook.com/path", "www.facebook.com"),
        ("user:pw@www.facebook.com", "www.facebook.com"),
        ("fa%63ebook.com", "facebook.com"),
        ("bücher.de", "xn--bcher-kva.de"),
        ("BÜCHER.de.", "xn--bcher-kva.de"),
        ("xn--bcher-kva.de", "xn--bcher-kva.de"),
        ("[::1]:8080", "::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("10.0.0.1:80", "10.0.0.1"),
        ("", ""),
        ("   ", ""),
    ],
)
def test_normalize_host(raw, expected):
    assert normalize_host(raw) == expected


def test_suffixes_walk_label_boundaries():
    assert host_suffixes("a.b.example.com") == [
        "a.b.example.com",
        "b.example.com",
        "example.com",
        "com",
    ]


def test_ipv6_has_one_spelling():
    assert normalize_host("[2001:DB8:0:0::1]:443") == "2001:db8::1"
    assert normalize_host("2001:0db8:0000::0001") == "2001:db8::1"


def test_capital_sigma_lowers_as_browsers_do():
    # Python lowers a word-final capital sigma to "ς"; IDNA (and so the browser) to "σ".
    # Found by test_properties.py: "AΣ中.AA" must be the host "aσ中.aa", not "aς中.aa".
    assert normalize_host("AΣ中.AA") == normalize_host("aσ中.aa") == "xn--a-0mb4628c.aa"
    assert normalize_host("aς中.aa") == "xn--a-ymb7628c.aa"  # a real final sigma stays one


def test_a_host_with_a_capital_sigma_is_one_host_to_decide():
    # The URL host and the Host header name the same site: decided once, not as two hosts.
    from mitmproxy.test import tutils

    from schoolgate.gateway.flowinfo import request_hosts

    request = tutils.treq(host="AΣ中.test", port=80, authority=b"")
    request.headers["host"] = "AΣ中.test"
    assert request_hosts(request) == ("aσ中.test", [])
    assert request_hosts(request, sni="AΣ中.test") == ("aσ中.test", [])


@pytest.mark.parametrize(
    "host,site",
    [
        ("www.bbc.co.uk", "bbc.co.uk"),
        ("www.stmarys.kent.sch.uk", "stmarys.kent.sch.uk"),  # the *.sch.uk rule
        ("someone.github.io", "someone.github.io"),  # shared hosting: each user's own site
        ("x-y.translate.goog", "x-y.translate.goog"),
        ("a.b.school.internal", "school.internal"),  # a top-level domain the list lacks
        ("co.uk", "co.uk"),  # a suffix is its own
        ("localhost", "localhost"),
        ("", ""),
    ],
)
def test_registrable_domain_follows_the_public_suffix_list(host, site):
    assert registrable_domain(host) == site


def test_a_registry_suffix_is_a_registrys_not_a_shared_hosts():
    assert all(map(is_registry_suffix, ["co.uk", "kent.sch.uk", "com.au", "police.uk"]))
    assert not any(map(is_registry_suffix, ["github.io", "bbc.co.uk", "nhs.uk.example", ""]))
