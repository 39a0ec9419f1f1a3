"""Hosts the detectors know by name: public DNS resolvers (and their addresses), Tor gateways
and infrastructure, and the services that fetch a site and serve it under their own name
(translators, caches, archives). Pure data; :mod:`.hostnames` classifies a host with it."""

from __future__ import annotations

import ipaddress
import re

# Public DNS-over-HTTPS / DNS-over-TLS resolvers: exact names...
DOH_HOSTS = frozenset(
    """
    dns.google dns.google.com 8888.google dns64.dns.google one.one.one.one
    dns.quad9.net dns9.quad9.net dns10.quad9.net dns11.quad9.net dns12.quad9.net
    doh.opendns.com doh.familyshield.opendns.com
    dns.adguard-dns.com family.adguard-dns.com unfiltered.adguard-dns.com dns.adguard.com
    dns-family.adguard.com dns-unfiltered.adguard.com
    doh.cleanbrowsing.org doh.mullvad.net dns.mullvad.net adblock.dns.mullvad.net
    base.dns.mullvad.net extended.dns.mullvad.net family.dns.mullvad.net all.dns.mullvad.net
    doh.dns.sb dns.twnic.tw doh.libredns.gr dns.alidns.com doh.pub doh.360.cn
    dns.switch.ch dns.digitale-gesellschaft.ch doh.ffmuc.net doh.applied-privacy.net
    dns.njal.la doh.xfinity.com dns.brahma.world doh.tiar.app doh.crypto.sx ordns.he.net
    odvr.nic.cz anycast.uncensoreddns.org unicast.uncensoreddns.org dns.decloudus.com
    """.split()
)
# ...names whose every sub-domain is a resolver endpoint...
DOH_SUFFIXES = frozenset(
    """
    cloudflare-dns.com cloudflare-gateway.com dns.nextdns.io d.adguard-dns.com
    dns.controld.com freedns.controld.com dns0.eu
    """.split()
)
# ...and their addresses (clients use these for DoH/DoT without any name).
RESOLVER_IPS = frozenset(
    str(ipaddress.ip_address(a))
    for a in """
    1.1.1.1 1.0.0.1 1.1.1.2 1.0.0.2 1.1.1.3 1.0.0.3 8.8.8.8 8.8.4.4 9.9.9.9 9.9.9.10
    9.9.9.11 149.112.112.112 149.112.112.10 149.112.112.11 208.67.222.222 208.67.220.220
    208.67.222.123 208.67.220.123 94.140.14.14 94.140.15.15 94.140.14.15 94.140.15.16
    94.140.14.140 94.140.14.141 185.228.168.168 185.228.169.168 185.228.168.9 185.228.169.9
    194.242.2.2 194.242.2.3 185.222.222.222 45.11.45.11 223.5.5.5 223.6.6.6 76.76.2.0
    76.76.10.0 193.110.81.0 185.253.5.0
    2606:4700:4700::1111 2606:4700:4700::1001 2001:4860:4860::8888 2001:4860:4860::8844
    2620:fe::fe 2620:fe::9 2620:119:35::35 2620:119:53::53 2a10:50c0::ad1:ff 2a10:50c0::ad2:ff
    """.split()
)

TOR2WEB_SUFFIXES = frozenset(
    """
    onion.to onion.ly onion.ws onion.pet onion.city onion.cab onion.link onion.sh onion.dog
    onion.rip onion.lu onion.direct onion.guide onion.casa onion.plus onion.re tor2web.org
    tor2web.io tor2web.fi onion.moe onion.foundation
    """.split()
)
TOR_INFRA_HOSTS = frozenset(
    """
    bridges.torproject.org snowflake-broker.torproject.net snowflake-broker.freehaven.net
    snowflake-broker.bamsoftware.com aus1.torproject.org aus2.torproject.org
    """.split()
)
TOR_INFRA_SUFFIXES = frozenset({"torproject.net"})

TRANSLATE_GOOGLE = re.compile(
    r"translate\.google(?:\.com?)?\.[a-z]{2,3}\Z|translate\.googleusercontent\.com\Z"
)
TRANSLATE_YANDEX = re.compile(r"translate\.yandex\.(?:com|ru|net|by|kz|ua|com\.tr)\Z")
ARCHIVE_TODAY = re.compile(r"(?:www\.)?archive\.(?:ph|today|is|li|vn|fo|md)\Z")
WRAPPER_HOSTS = {
    "web.archive.org": "wayback",
    "wayback.archive.org": "wayback",
    "archive.org": "wayback",
    "www.archive.org": "wayback",
    "webcache.googleusercontent.com": "google-cache",
    "cc.bingj.com": "bing-cache",
    "yandexwebcache.net": "yandex-cache",
    "cachedview.nl": "cachedview",
    "www.cachedview.nl": "cachedview",
    "cachedview.com": "cachedview",
    "www.cachedview.com": "cachedview",
    "www.translatetheweb.com": "microsoft-translator",
    "translatetheweb.com": "microsoft-translator",
    "www.microsofttranslator.com": "microsoft-translator",
    "googleweblight.com": "google-weblight",
    "www.googleweblight.com": "google-weblight",
    "12ft.io": "12ft",
    "r.jina.ai": "jina-reader",
    "timetravel.mementoweb.org": "memento",
    "ghostarchive.org": "ghostarchive",
}
WRAPPER_LABELS = {
    "google-translate-proxy": "Google Translate's website proxy",
    "google-translate": "Google Translate (website mode)",
    "yandex-translate": "Yandex Translate (website mode)",
    "microsoft-translator": "Microsoft Translator (website mode)",
    "wayback": "the Internet Archive's Wayback Machine",
    "archive-today": "archive.today",
    "google-cache": "Google's cache",
    "bing-cache": "Bing's cache",
    "yandex-cache": "Yandex's cache",
    "cachedview": "a cached-page viewer",
    "google-weblight": "Google Web Light",
    "12ft": "12ft.io",
    "jina-reader": "a page-fetching reader service",
    "memento": "the Memento time-travel service",
    "ghostarchive": "Ghostarchive",
}


def wrapper_label(name: str) -> str:
    """How the e-safety team and the block page name a wrapper service."""
    return WRAPPER_LABELS.get(name, name)
