"""Detectors of services that fetch other sites for the pupil: hosts in the school's
``circumvention`` list (``listed_host``), translators, caches and archives (``wrapped_site``)
and web-proxy software (``web_proxy``)."""

from __future__ import annotations

import re
from urllib.parse import unquote

from schoolgate.circumvention.decoders import WRAPPER_DECODERS, match_web_proxy, url_host
from schoolgate.circumvention.evidence import DetectorContext, event, other_names
from schoolgate.circumvention.facts import CircumventionEvent, TrafficFacts
from schoolgate.circumvention.hostnames import HostInfo
from schoolgate.circumvention.knownhosts import WRAPPER_LABELS

_TOR_WORD = re.compile(r"(?:^|[./-])(?:tor|torproject|onion)(?:[./-]|$)")


def _kind_for_entry(entry: str, host: str) -> str:
    text = f"{entry} {host}".lower()
    if "vpn" in text:
        return "vpn"
    if _TOR_WORD.search(entry.lower()) or _TOR_WORD.search(host):
        return "tor"
    return "proxy"


def listed_host(
    det: DetectorContext, f: TrafficFacts, hi: HostInfo
) -> list[CircumventionEvent] | None:
    """A host in the school's ``circumvention`` list (VPNs, web proxies, anonymisers, Tor)."""
    lookup = det.circumvention_lookup
    if lookup is None:
        return None
    if (f.sni is None or f.sni == f.host) and (f.http_host is None or f.http_host == f.host):
        if not hi.host or not lookup(hi.host):  # the usual case: one name, not listed
            return None
    events = None
    for role, info in other_names(f, hi):
        entry = lookup(info.host)
        if entry:
            kind = _kind_for_entry(entry, info.host)
            what = {"vpn": "a VPN service", "tor": "a Tor service"}.get(kind, "a proxy service")
            via = "" if role == "host" else f" (named in the {role.replace('_', ' ')})"
            events = events or []
            events.append(
                event(
                    "listed_host",
                    kind,
                    2,
                    f"Connected to {info.host}{via}, listed as {what} for getting round "
                    f"the filter (list entry {entry}).",
                    f,
                    hi,
                    listed_host=info.host,
                    list_entry=entry,
                    matched_in=role,
                )
            )
    return events


def wrapped_site(
    det: DetectorContext, f: TrafficFacts, hi: HostInfo
) -> list[CircumventionEvent] | None:
    """A site shown through a translator, cache or archive; the policy checks ``wrapped_host``."""
    wrapper = hi.wrapper
    if wrapper is None:
        return None
    decoded = WRAPPER_DECODERS[wrapper](hi.host, f.path)
    if decoded is None:
        return None
    wrapped, how = decoded
    severity = 1
    entry = None
    if wrapped and det.circumvention_lookup is not None:
        entry = det.circumvention_lookup(wrapped)
        if entry:
            severity = 2
    label = WRAPPER_LABELS.get(wrapper, wrapper)
    return [
        event(
            "wrapped_site",
            "wrapped_site",
            severity,
            f"Opened {wrapped or 'a page'} through {label} ({hi.host}), which fetches the "
            "site so the filter sees only the wrapper.",
            f,
            hi,
            wrapped_host=wrapped,
            wrapper=wrapper,
            decoded=how,
            wrapped_listed_entry=entry,
            wrapped_path=wrapped_path(f.path, wrapped, wrapper) if wrapped else None,
        )
    ]


_AFTER_HOST = re.compile(r"(?::\d{1,5})?(/[^\s&#]*)?")


def wrapped_path(path: str | None, wrapped: str, wrapper: str = "") -> str | None:
    """The path of the wrapped URL in a wrapper's request path, where it can be read (a plain
    or percent-encoded URL after the wrapped host; a translate.goog path is the site's own), so
    that the wrapped page is decided with its path. None when it cannot be read."""
    if not path:
        return None
    if wrapper == "google-translate-proxy":
        base, _, query = path.partition("?")
        kept = [p for p in query.split("&") if p and not p.startswith("_x_tr_")]
        return base + ("?" + "&".join(kept) if kept else "")
    text = unquote(path)
    at = text.lower().find(wrapped)
    if at < 0:
        return None
    found = _AFTER_HOST.match(text, at + len(wrapped))
    return (found.group(1) if found else None) or "/"


def has_proxy_sign(path: str) -> bool:
    """Whether a path has any of the signs a web proxy's paths are matched on (the cheap test
    before :func:`match_web_proxy`'s patterns; the detectors' quiet check asks it too, so a
    sign added here is never skipped there)."""
    return (
        "prox" in path
        or ".php" in path
        or "/service/" in path
        or "/scram" in path
        or "/bare/" in path
        or "/wisp" in path
        or "nph-" in path
        or "__cpo=" in path
        or "aHR0c" in path
        or "/main/" in path
        or "/go/" in path
        or "/p/" in path
        or "/surf/" in path
        or (len(path) > 34 and path[33] == "/")
    )


def web_proxy(
    det: DetectorContext, f: TrafficFacts, hi: HostInfo
) -> list[CircumventionEvent] | None:
    """Web-proxy software recognised from its URL or headers (Glype, Ultraviolet, ...)."""
    headers = f.headers
    found: tuple[str | None, str] | None = None
    bare = headers.get("x-bare-url") or headers.get("x-bare-host")
    if bare:
        found = (url_host(bare), "bare-server web proxy request (x-bare-* headers)")
    else:
        path = f.path
        if not path:
            return None
        if has_proxy_sign(path):
            found = match_web_proxy(path)
    if found is None:
        return None
    wrapped, how = found
    return [
        event(
            "web_proxy",
            "proxy",
            2,
            f"Used a web proxy on {hi.host or f.host} ({how})"
            f"{' to reach ' + wrapped if wrapped else ''}, which hides sites from the filter.",
            f,
            hi,
            wrapped_host=wrapped,
            proxy=how,
        )
    ]
