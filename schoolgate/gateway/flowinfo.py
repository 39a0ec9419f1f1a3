"""Cheap facts about a flow for the hot path (``Request.pretty_host`` re-parses and
IDNA-checks the Host header on every access: ~8 us)."""

from __future__ import annotations

from mitmproxy import http


def header_host(request: http.Request) -> str | None:
    """The host named by the Host header (HTTP/2: ``:authority``), lower case, no port."""
    value = request.host_header
    if not value:
        return None
    value = value.strip().lower()
    if value.startswith("["):  # [v6]:port
        end = value.find("]")
        return value[1:end] if end > 0 else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".") or None


def request_hosts(request: http.Request, sni: str | None = None) -> tuple[str, list[str]]:
    """The host to decide on (as the user sees it: the Host header, else the request's), and
    any other host this request also reaches or names: where the connection goes
    (``request.host``: an absolute URL, the CONNECT target or, transparent, the address) and
    the TLS SNI. Each is decided: a Host header cannot smuggle a request to a blocked host."""
    target = request.host.lower().rstrip(".")
    named = header_host(request)
    primary = named or target
    others = []
    if target != primary:
        others.append(target)
    if sni:
        sni = sni.lower().rstrip(".")
        if sni != primary and sni != target:
            others.append(sni)
    return primary, others
