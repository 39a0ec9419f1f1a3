"""Reading the destination out of a URL: the wrapped site in a translator's, cache's or
archive's request (:data:`WRAPPER_DECODERS`) and the target of a web proxy
(:func:`match_web_proxy`), plain, percent-encoded, base64 or in Ultraviolet's XOR encoding."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from urllib.parse import parse_qsl, unquote, urlsplit

from schoolgate.circumvention.hostnames import analyse_host

# A host name a URL may name (a label of letters at the end: not "1.2.3" or "localhost").
_HOSTNAME = re.compile(
    r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)+(?:[a-z]{2,63}|xn--[a-z0-9-]{1,59})\Z"
)
_SCHEME = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]{0,9}://")
_EMBEDDED_URL = re.compile(r"(?:https?|wss?)(?::|%3A)(?:/|%2F){1,2}", re.IGNORECASE)


def url_host(value: str, *, bare_ok: bool = True) -> str | None:
    """The host of a URL (or, with ``bare_ok``, of ``example.com/page``); None if none."""
    v = value.strip()
    if not v:
        return None
    if "://" not in v[:12] and "%" in v[:24]:
        v = unquote(v)
    if v.startswith("//"):
        v = "http:" + v
    elif not _SCHEME.match(v):
        if not bare_ok:
            return None
        v = "http://" + v
    elif v.split(":", 1)[0].lower() not in ("http", "https", "ws", "wss", "ftp"):
        return None
    try:
        netloc = urlsplit(v).netloc
    except ValueError:
        return None
    info = analyse_host(netloc)
    if info.ip is not None:
        return info.host
    if info.host and _HOSTNAME.match(info.host):
        return info.host
    return None


def _b64_text(value: str) -> str | None:
    s = value.strip().replace(" ", "+").replace("-", "+").replace("_", "/")
    s += "=" * (-len(s) % 4)
    try:
        return base64.b64decode(s, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None


def b64_url_host(value: str) -> str | None:
    """Host of a base64-encoded URL (Glype drops the leading "http": ``Oi8v`` = ``://``)."""
    text = _b64_text(value)
    if not text:
        return None
    if text.startswith(("://", "s://")):
        text = "http" + text
    if not text.lower().startswith(("http://", "https://")):
        return None
    return url_host(text, bare_ok=False)


def query_params(path: str) -> dict[str, str]:
    if "?" not in path:
        return {}
    params: dict[str, str] = {}
    for k, v in parse_qsl(path.split("?", 1)[1], keep_blank_values=True):
        params.setdefault(k, v)
    return params


def _target(value: str, *, bare_ok: bool) -> tuple[str | None, str]:
    host = url_host(value, bare_ok=bare_ok)
    if host:
        return host, "url"
    host = b64_url_host(value)
    if host:
        return host, "base64 url"
    return None, ""


def _path_url_host(path: str) -> str | None:
    m = _EMBEDDED_URL.search(path)
    return url_host(path[m.start() :], bare_ok=False) if m else None


# Wrapper decoders: (host, path) -> (wrapped host or None, how) when the request is a wrapped
# page, None when it is not (the service's home page, its text translator, ...).
Decoded = tuple[str | None, str] | None


def _dec_translate_goog(host: str, path: str | None) -> Decoded:
    label = host[: -len(".translate.goog")]
    if not label:
        return None
    # Google's encoding: "." -> "-", "-" -> "--" (www-example-com -> www.example.com).
    decoded = label.replace("--", "\x00").replace("-", ".").replace("\x00", "-")
    wrapped = url_host(decoded)
    return wrapped, f"host name {label!r} decodes to {decoded!r}"


def _params_decoder(*names: str, paths: tuple[str, ...] = ()) -> Callable[..., Decoded]:
    def decode(host: str, path: str | None) -> Decoded:
        if path is None or (paths and not path.startswith(paths)):
            return None
        params = query_params(path)
        for name in names:
            value = params.get(name)
            if value:
                wrapped, how = _target(value, bare_ok=True)
                if wrapped:
                    return wrapped, f"{name}= parameter ({how})"
        return None

    return decode


def _path_decoder(host: str, path: str | None) -> Decoded:
    if not path:
        return None
    wrapped = _path_url_host(path)
    return (wrapped, "URL in the path") if wrapped else None


_WAYBACK = re.compile(r"/web/(?:([0-9*]{1,14}[a-z_]{0,4}\*?)/)?(.+)", re.DOTALL)


def _dec_wayback(host: str, path: str | None) -> Decoded:
    if not path:
        return None
    if path.startswith("/wayback/available"):
        wrapped = url_host(query_params(path).get("url", ""))
        return (wrapped, "availability query") if wrapped else None
    m = _WAYBACK.match(path)
    if not m:
        return None
    wrapped = url_host(m.group(2))
    if wrapped is None and not m.group(1):
        return None
    when = f" captured {m.group(1)}" if m.group(1) else ""
    return wrapped, f"archived copy{when}"


_ARCHIVE_ID = re.compile(r"/(?=[a-z]*[A-Z0-9])[A-Za-z0-9]{4,6}/?\Z")
_ARCHIVE_PREFIX = re.compile(
    r"/(?:(?:newest|oldest|\d{4}[\d.\-]*|o/[A-Za-z0-9]+)/)?(.*)", re.DOTALL
)


def _dec_archive_today(host: str, path: str | None) -> Decoded:
    if not path or path == "/":
        return None
    if _ARCHIVE_ID.match(path):
        return None, "archived page id (destination not in the URL)"
    m = _ARCHIVE_PREFIX.match(path)
    target = m.group(1) if m else ""
    if not target or target.startswith(("submit", "search", "timegate", "timemap", "?")):
        return None
    first = target.split("/", 1)[0]
    if "://" not in target and "." not in first:
        return None
    wrapped = url_host(target)
    return (wrapped, "archived copy") if wrapped else None


_CACHE_ID = re.compile(r"[A-Za-z0-9_-]{6,20}:(?!//)")


def _dec_google_cache(host: str, path: str | None) -> Decoded:
    if not path:
        return None
    q = query_params(path).get("q", "")
    if not q.startswith("cache:"):
        return None
    rest = q[6:]
    m = _CACHE_ID.match(rest)
    if m:
        rest = rest[m.end() :]
    rest = rest.split(" ", 1)[0].split("+", 1)[0]
    return url_host(rest), "cached copy"


def _dec_bing_cache(host: str, path: str | None) -> Decoded:
    if path and path.startswith("/cache.aspx"):
        return None, "cached copy (destination not in the URL)"
    return None


def _dec_ghostarchive(host: str, path: str | None) -> Decoded:
    if path and path.startswith("/archive/"):
        return None, "archived page id (destination not in the URL)"
    return _params_decoder("term", paths=("/search",))(host, path)


_12FT_QUERY = _params_decoder("q")

WRAPPER_DECODERS: dict[str, Callable[[str, str | None], Decoded]] = {
    "google-translate-proxy": _dec_translate_goog,
    "google-translate": _params_decoder("u"),
    "yandex-translate": _params_decoder("url"),
    "microsoft-translator": _params_decoder("a"),
    "wayback": _dec_wayback,
    "archive-today": _dec_archive_today,
    "google-cache": _dec_google_cache,
    "bing-cache": _dec_bing_cache,
    "yandex-cache": _params_decoder("url"),
    "cachedview": _params_decoder("url", "u", "q"),
    "google-weblight": _params_decoder("lite_url", "u"),
    "12ft": lambda h, p: _12FT_QUERY(h, p) or _path_decoder(h, p),
    "jina-reader": _path_decoder,
    "memento": _path_decoder,
    "ghostarchive": _dec_ghostarchive,
}


def _uv_decode(encoded: str) -> str:
    """Ultraviolet's default "xor" codec: every second character XOR 2, then URL-encoded."""
    text = unquote(encoded)
    return "".join(chr(ord(c) ^ 2) if i % 2 else c for i, c in enumerate(text))


_UV = re.compile(r"/service/([^?#]+)")
_SCRAMJET = re.compile(r"/scram(?:jet)?/(?:service/)?([^?#]+)")
_CGIPROXY = re.compile(r"/nph-[a-z]*proxy\.(?:cgi|pl)/[^/]*/(?:(https?)/([^/?#]+))?")
_RAMMERHEAD = re.compile(r"/[a-z0-9]{32}/((?:https?|wss?)(?::|%3A).*)", re.DOTALL)
_PROXY_PREFIX = re.compile(
    r"/(?:main|proxy|browse|go|surf|p)/((?:https?|wss?)(?::|%3A)(?:/|%2F).*)", re.DOTALL
)
_PROXY_SCRIPTS = ("/browse.php", "/proxy.php", "/proxy", "/proxy/")


def match_web_proxy(path: str) -> tuple[str | None, str] | None:
    """Recognise a web-proxy URL; returns (wrapped host or None, which proxy), else None."""
    base = path.split("?", 1)[0]
    if "/service/" in base:  # Ultraviolet (/service/, /uv/service/)
        m = _UV.search(base)
        if m:
            decoded = _uv_decode(m.group(1))
            if decoded.lower().startswith(("http://", "https://", "ws://", "wss://")):
                return url_host(decoded, bare_ok=False), "Ultraviolet web proxy"
    if "/scram" in base:
        m = _SCRAMJET.search(base)
        if m:
            wrapped = url_host(unquote(m.group(1)), bare_ok=False)
            if wrapped:
                return wrapped, "Scramjet web proxy"
    if "nph-" in base:
        m = _CGIPROXY.search(base)
        if m:
            return (url_host(m.group(2)) if m.group(2) else None), "CGIProxy web proxy"
    if base.startswith("/bare/") or "/bare/v" in base:
        return None, "bare-server web proxy back end"
    if "/wisp" in base and (base.endswith("/wisp") or "/wisp/" in base):
        return None, "wisp tunnel (web proxy back end)"
    if len(base) > 34 and base[33] == "/":
        m = _RAMMERHEAD.match(path)
        if m:
            return url_host(m.group(1), bare_ok=False), "Rammerhead web proxy"
    m = _PROXY_PREFIX.match(path)
    if m:
        wrapped = url_host(m.group(1), bare_ok=False)
        if wrapped:
            return wrapped, "web proxy (URL in the path)"
    if "?" not in path:
        return None
    params = query_params(path)
    cpo = params.get("__cpo")
    if cpo:
        return b64_url_host(cpo), "CroxyProxy web proxy"
    script = base.endswith(_PROXY_SCRIPTS)
    if script or base.endswith("/index.php"):  # PHProxy: index.php?q=<url or base64 url>
        for name in ("u", "url", "q") if script else ("q",):
            value = params.get(name)
            if value:
                wrapped, how = _target(value, bare_ok=False)
                if wrapped:
                    return wrapped, f"web proxy script {base} ({name}= {how})"
        if base.endswith("/browse.php") and "u" in params and "b" in params:
            return None, "Glype web proxy (encoded URL)"
    q = params.get("q", "")
    if q.startswith("aHR0c"):  # base64 of "http"
        wrapped = b64_url_host(q)
        if wrapped:
            return wrapped, "web proxy (base64 URL in q=)"
    return None


# --------------------------------------------------------------------------------------------
# Ports and user agents
# --------------------------------------------------------------------------------------------
