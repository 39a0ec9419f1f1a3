"""The pure core of "where does it really go": strict Host/authority/SNI reading, the verdict
on an address that claims a name, what a role gets for it, and the allowed raw destinations."""

from __future__ import annotations

import pytest

from schoolgate.core.authority import (
    Authority,
    AuthorityError,
    address_host,
    parse_authority,
    parse_server_name,
)
from schoolgate.core.destination import (
    DnsAnswer,
    Handling,
    Verdict,
    first_shared,
    handling,
    malformed,
    parse_raw_destination,
    raw_allowed,
    verify,
)

# -- Host headers, :authority and CONNECT targets -------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port", "ip"),
    [
        ("www.facebook.com", "www.facebook.com", None, False),
        ("WWW.Facebook.COM", "www.facebook.com", None, False),
        ("www.facebook.com.", "www.facebook.com", None, False),  # a fully qualified name
        ("www.facebook.com.:8443", "www.facebook.com", 8443, False),
        ("social.test:80", "social.test", 80, False),
        ("_dmarc.example.org", "_dmarc.example.org", None, False),
        ("localhost", "localhost", None, False),
        ("93.184.216.34", "93.184.216.34", None, True),
        ("93.184.216.34:443", "93.184.216.34", 443, True),
        ("[2001:DB8::1]", "2001:db8::1", None, True),
        ("[2001:db8:0:0::1]:8080", "2001:db8::1", 8080, True),
        ("[::ffff:127.0.0.1]:80", "127.0.0.1", 80, True),  # one spelling of an IPv4 address
        ("xn--bcher-kva.example", "xn--bcher-kva.example", None, False),
    ],
)
def test_one_host_and_an_optional_port(text: str, host: str, port: int | None, ip: bool) -> None:
    assert parse_authority(text) == Authority(host, port, ip)


@pytest.mark.parametrize(
    "text",
    [
        "www.facebook.com::",  # the shapes: extra colons...
        "www.facebook.com:80:",
        "www.facebook.com;",  # ...trailing punctuation...
        "www.facebook.com, www.bbc.co.uk",  # ...two hosts in one header
        "www.facebook.com:",  # an empty port
        "www.facebook.com:0",
        "www.facebook.com:65536",
        "www.facebook.com:+80",
        "www.facebook.com:8o",
        "",
        ".",
        ".facebook.com",
        "www..facebook.com",
        "www.facebook.com..",
        "www.face book.com",
        "www.facebook.com\t",
        "www.faceb%6fok.com",  # percent-encoding
        "user@www.facebook.com",  # userinfo
        "http://www.facebook.com",
        "www.facebook.com/path",
        "www.facebook.com?x",
        "www.facebook.com#x",
        "www.facebook.com\\x",
        "www.fаcebook.com",  # a Cyrillic а: names are sent in punycode
        "www.facebook。com",  # an ideographic full stop
        "www．facebook．com",  # fullwidth
        "2130706433",  # 127.0.0.1 as a number: a browser and a name server disagree
        "0x7f000001",
        "0x7f.1",
        "127.1",
        "127.0.0.01",  # octal to inet_aton
        "0177.0.0.1",
        "256.1.1.1",
        "1.2.3.4.5",
        "facebook.123",  # ends in a number but is not an address
        "[2001:db8::1",  # no closing bracket
        "[2001:db8::1]x",
        "[2001:db8::1]:",
        "[not-an-address]",
        "[fe80::1%eth0]",  # a zone is no destination
        "2001:db8::1",  # IPv6 without brackets
        "a" * 64 + ".example",  # a label over 63
        ("a" * 60 + ".") * 5 + "example",  # a name over 253
    ],
)
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(AuthorityError):
        parse_authority(text)


def test_a_server_name_is_a_name_only() -> None:
    assert parse_server_name("WWW.Example.ORG.") == "www.example.org"
    for text in ("93.184.216.34", "example.org:443", "exa mple.org", "", "[::1]", "ex%61.org"):
        with pytest.raises(AuthorityError):
            parse_server_name(text)


def test_address_spelling() -> None:
    assert address_host("::ffff:10.0.0.1") == "10.0.0.1"
    assert address_host("2001:0DB8::0001") == "2001:db8::1"
    assert address_host("10.0.0.1") == "10.0.0.1"
    assert address_host("www.example.org") is None


# -- the verdict on an address that claims a name ---------------------------------------------


def local(address: str) -> bool:
    return address.startswith("10.")


GOV = DnsAnswer("www.gov.uk", ("151.101.0.144", "151.101.64.144"), frozenset({"151.101.0.144"}))


def test_an_address_of_the_name_is_verified() -> None:
    found = verify("151.101.64.144", "www.gov.uk", GOV, local=local)
    assert found.verdict is Verdict.VERIFIED and found.ok
    # one the name had a little while ago still counts (a client's DNS cache)
    older = DnsAnswer("www.gov.uk", ("151.101.0.144",), frozenset({"151.101.0.144", "1.2.3.4"}))
    assert verify("1.2.3.4", "www.gov.uk", older, local=local).verdict is Verdict.VERIFIED


def test_another_address_is_a_mismatch() -> None:
    found = verify("203.0.113.9", "www.gov.uk", GOV, local=local)
    assert found.verdict is Verdict.MISMATCH and found.unknown
    assert "203.0.113.9" in found.detail and "www.gov.uk" in found.detail
    assert found.answers == GOV.addresses


def test_no_name_a_name_with_no_address_and_a_failed_lookup() -> None:
    assert verify("203.0.113.9", None, None, local=local).verdict is Verdict.NO_NAME
    assert verify("10.1.2.3", None, None, local=local).verdict is Verdict.LOCAL
    gone = DnsAnswer("nowhere.test", (), frozenset(), "no_address")
    assert verify("203.0.113.9", "nowhere.test", gone, local=local).verdict is Verdict.UNRESOLVABLE
    failed = DnsAnswer("www.gov.uk", (), frozenset(), "failed")
    assert verify("203.0.113.9", "www.gov.uk", failed, local=local).verdict is Verdict.LOOKUP_FAILED
    assert verify("203.0.113.9", "www.gov.uk", None, local=local).verdict is Verdict.LOOKUP_FAILED


@pytest.mark.parametrize(
    ("verdict", "filtered", "to_name", "expected"),
    [
        (Verdict.VERIFIED, True, False, Handling.PASS),
        (Verdict.LOCAL, True, False, Handling.PASS),
        (Verdict.NO_NAME, True, False, Handling.REFUSE),
        (Verdict.NO_NAME, False, False, Handling.PASS),
        (Verdict.MISMATCH, True, False, Handling.REFUSE),
        (Verdict.MISMATCH, True, True, Handling.CONNECT_TO_NAME),
        (Verdict.MISMATCH, False, False, Handling.CONNECT_TO_NAME),  # never the client's address
        (Verdict.UNRESOLVABLE, False, True, Handling.REFUSE),
        (Verdict.LOOKUP_FAILED, False, True, Handling.REFUSE),  # fail closed, for everyone
        (Verdict.MALFORMED, False, True, Handling.REFUSE),
    ],
)
def test_what_each_role_gets(verdict, filtered, to_name, expected) -> None:
    found = malformed("Host", "x") if verdict is Verdict.MALFORMED else None
    if found is None:
        found = verify("203.0.113.9", "www.gov.uk", GOV, local=local)
        found = type(found)(verdict, "203.0.113.9", "www.gov.uk")
    assert handling(found, filtered=filtered, connect_to_name=to_name) is expected


def test_first_shared_address() -> None:
    assert first_shared(["9.9.9.9", "151.101.64.144"], GOV) == "151.101.64.144"
    assert first_shared(["9.9.9.9"], GOV) is None


# -- destinations a tunnel may reach with anything -----------------------------------------------


def test_raw_destinations() -> None:
    entries = [
        parse_raw_destination(text)
        for text in (
            "10.1.2.3",
            "10.9.0.0/16:1433",
            "[2001:db8::/32]:22",
            "mis.school.example",
            "print.school.example:9100",
        )
    ]
    assert raw_allowed(entries, "10.1.2.3", 22)
    assert raw_allowed(entries, "10.9.200.1", 1433) and not raw_allowed(entries, "10.9.0.1", 22)
    assert raw_allowed(entries, "2001:db8::5", 22) and not raw_allowed(entries, "2001:db9::5", 22)
    assert raw_allowed(entries, "mis.school.example", 5000)
    assert raw_allowed(entries, "api.mis.school.example", 5000)  # and its sub-domains
    assert not raw_allowed(entries, "evilmis.school.example", 5000)
    assert raw_allowed(entries, "print.school.example", 9100)
    assert not raw_allowed(entries, "print.school.example", 22)
    assert not raw_allowed(entries, "203.0.113.9", 22)
    for bad in ("10.1.2.3:0", "mis..example", "[2001:db8::/32]x", "10.0.0.0/33", "host:99999"):
        with pytest.raises(ValueError):
            parse_raw_destination(bad)
