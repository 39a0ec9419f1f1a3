"""A page's ``<title>`` and ``og:title`` from the first bytes of an HTML response.

Built for a mitmproxy ``responseheaders`` hook that sets ``flow.response.stream`` to a function
which hands each chunk on unchanged and gives a copy to :meth:`TitleSniffer.feed` until it
says it is done: the response is never held back, and the sniffer reads at most ``limit``
bytes of the (decoded) page.

* **Bounded and incremental**: chunks can split anything (a tag, an entity, a UTF-8
  character, the gzip stream); an incomplete construct waits for the next chunk. Reading stops
  at ``</head>`` or ``<body>``, once both titles are found, or at ``limit`` bytes.
* **What a browser would show**: the first ``<title>`` outside comments, ``<script>``,
  ``<style>``, ``<template>``, ``<svg>`` and the other raw-text elements; entities decoded
  (``&amp;``, ``&#8217;``); tags inside a title are text (it is RCDATA); whitespace collapsed.
  ``og:title`` from ``<meta property="og:title" content=...>`` (or ``name=``), with the
  attributes in any order and any quoting.
* **Charset**: the ``Content-Type`` header's, else a byte-order mark, else ``<meta charset>``
  or ``<meta http-equiv="Content-Type">``; labels as browsers read them (``iso-8859-1`` is
  windows-1252). Without any: UTF-8 if the title is valid UTF-8, else windows-1252.
  UTF-16 pages are transcoded as they arrive.
* **Content-Encoding**: identity, ``gzip`` and ``deflate`` are decompressed, never past
  ``limit`` (a decompression bomb costs nothing). Brotli and zstd cannot be bounded that way
  with the libraries at hand: ``supported`` is False and nothing is read (the gateway asks
  for ``gzip, deflate`` on page requests it wants titles of).
"""

from __future__ import annotations

import codecs
import html
import re
import zlib
from dataclasses import dataclass
from typing import Protocol

DEFAULT_LIMIT = 32 * 1024
MAX_TITLE = 300
# Everything that cannot change what the sniffer reads, consumed in one C-level match: text,
# comments, doctypes, end tags other than </head>, and start tags other than the few that
# matter (a <meta> only when it names og:title or a charset). What is left at the match's end
# is a construct :meth:`TitleSniffer._step` reads, an incomplete one, or the end of the data.
_ATTRS = rb"""[^>"']*+(?:(?:"[^"]*+"|'[^']*+')[^>"']*+)*+"""  # attributes, quotes and all
_NAMED = rb"(?:og:title|charset)"
# A <meta> whose attributes, quoted or not, nowhere name og:title or a charset.
_PLAIN_META = (
    rb"<meta(?=[\s/>\x00])(?!(?:[^>\"']|\"[^\"]*\"|'[^']*')*?(?:%s|\"[^\"]*?%s|'[^']*?%s))%s>"
    % (_NAMED, _NAMED, _NAMED, _ATTRS)
)
_READ = rb"title|meta|body|script|style|textarea|xmp|iframe|noembed|noframes|template|svg|math"
_SKIPPABLE = re.compile(
    rb"(?i)(?:[^<]++|<(?:"  # text, or after a "<":
    rb"(?!(?:%s)[\s/>\x00])[a-zA-Z][^\s/>\x00]*+%s>"
    % (_READ, _ATTRS)  # a start tag
    + rb"|/(?!head[\s/>\x00])[a-zA-Z][^>]*+>"  # an end tag, not </head>
    + rb"|!--.*?-->|!\[CDATA\[.*?\]\]>|!(?!--|\[CDATA\[)[^>]*+>|\?[^>]*+>"
    + rb"|(?=[^a-zA-Z!?/])"  # nothing: a "<" that starts nothing
    + rb"|"
    + _PLAIN_META[1:]
    + rb"))*+",
    re.DOTALL,
)
_TAG = re.compile(rb"<([a-zA-Z][^\s/>\x00]*)((?:[^>\"']|\"[^\"]*\"|'[^']*')*)>")
_END_TAG = re.compile(rb"</([a-zA-Z][^\s/>\x00]*)[^>]*>")
_ATTR = re.compile(rb"([^\s=/>\"']+)(?:\s*=\s*(?:\"([^\"]*)\"|'([^']*)'|([^\s>\"']+)))?")
_CHARSET = re.compile(rb"charset\s*=\s*[\"']?\s*([a-zA-Z0-9_.:-]+)", re.IGNORECASE)
_HEADER_CHARSET = re.compile(r"charset\s*=\s*[\"']?\s*([a-zA-Z0-9_.:-]+)", re.IGNORECASE)
# Elements whose content is not markup: a <title> inside them is not the page's title.
_RAW = frozenset({b"script", b"style", b"textarea", b"xmp", b"iframe", b"noembed", b"noframes"})
_SKIP = frozenset({b"template", b"svg", b"math"})  # their titles are not the page's
# Labels browsers read as another encoding (WHATWG Encoding Standard).
_LABELS = {
    "iso-8859-1": "cp1252",
    "iso8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "l1": "cp1252",
    "ascii": "cp1252",
    "us-ascii": "cp1252",
    "windows-1252": "cp1252",
    "x-sjis": "shift_jis",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "utf8": "utf-8",
    "unicode-1-1-utf-8": "utf-8",
}


@dataclass(frozen=True, slots=True)
class PageTitle:
    title: str | None = None
    og_title: str | None = None
    supported: bool = True  # False: a Content-Encoding the sniffer cannot read in bounds

    @property
    def texts(self) -> tuple[str, ...]:
        """The distinct titles, for matching."""
        out = tuple(t for t in (self.title, self.og_title) if t)
        return out if len(out) < 2 or out[0] != out[1] else out[:1]


def is_html(content_type: str | None) -> bool:
    """Whether a response's Content-Type is a page (``text/html``, XHTML)."""
    if not content_type:
        return False
    kind = content_type.partition(";")[0].strip().lower()
    return kind in ("text/html", "application/xhtml+xml")


def codec_of(label: str | None) -> str | None:
    """The Python codec for a charset label, or None for one nobody knows."""
    if not label:
        return None
    label = label.strip().strip("\"'").lower()
    label = _LABELS.get(label, label)
    try:
        return codecs.lookup(label).name
    except LookupError:
        return None


def readable_encoding(content_encoding: str | None) -> bool:
    """Whether :class:`TitleSniffer` can read a body sent in this ``Content-Encoding`` (none,
    gzip or deflate: what it can decompress in bounded memory)."""
    if not content_encoding:
        return True
    names = [e.strip().lower() for e in content_encoding.split(",") if e.strip()]
    names = [n for n in names if n != "identity"]
    return len(names) <= 1 and (not names or names[0] in ("gzip", "x-gzip", "deflate"))


class TitleSniffer:
    """Feed the response body's chunks as they pass; read :meth:`result` at the end."""

    def __init__(
        self,
        content_type: str | None = None,
        content_encoding: str | None = None,
        limit: int = DEFAULT_LIMIT,
    ) -> None:
        self.limit = limit
        self.done = False
        self.supported = True
        self._buf = bytearray()
        self._pos = 0
        self._title: bytes | None = None
        self._og: bytes | None = None
        self._charset: str | None = None
        self._seen_head_charset = False
        found = _HEADER_CHARSET.search(content_type or "")
        if found:
            self._charset = codec_of(found.group(1))
        self._decompressor = self._decompressor_for(content_encoding)
        self._utf16: codecs.IncrementalDecoder | None = None
        if self._charset and self._charset.startswith("utf-16"):
            self._utf16 = codecs.getincrementaldecoder(self._charset)(errors="replace")
        self._first = True
        self._skip_until: bytes | None = None  # a closing tag a skipped element ends with

    def _decompressor_for(self, encoding: str | None) -> _Decompressor | None:
        names = [e.strip().lower() for e in (encoding or "").split(",") if e.strip()]
        names = [n for n in names if n != "identity"]
        if not names:
            return None
        if names == ["gzip"] or names == ["x-gzip"]:
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        if names == ["deflate"]:
            return _Deflate()
        self.supported = False
        self.done = True
        return None

    # -- feeding --------------------------------------------------------------------------
    def feed(self, chunk: bytes) -> bool:
        """Read one chunk of the body as sent; True once nothing more is needed."""
        if self.done or not chunk:
            return self.done
        room = self.limit - len(self._buf)
        if self._decompressor is not None:
            try:
                data = self._decompressor.decompress(chunk, room)
            except zlib.error:
                self.done = True
                return True
        else:
            data = chunk[:room]
        if self._first and data:
            self._first = False
            data = self._bom(data)
        if self._utf16 is not None:
            data = self._utf16.decode(data).encode("utf-8")
        self._buf += data
        self._scan(final=len(self._buf) >= self.limit)
        if len(self._buf) >= self.limit:
            self.done = True
        return self.done

    def _bom(self, data: bytes) -> bytes:
        if data.startswith(codecs.BOM_UTF8):
            self._charset = "utf-8"
            return data[3:]
        for bom, name in ((codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")):
            if data.startswith(bom):
                self._charset = "utf-16"
                self._utf16 = codecs.getincrementaldecoder(name)(errors="replace")
                return data[2:]
        return data

    def result(self) -> PageTitle:
        """The titles found so far (call at the end of the body or once :meth:`feed` is done).
        A title still open when reading stopped is kept, as far as it went."""
        if not self.done:
            self._scan(final=True)
        return PageTitle(self._text(self._title), self._text(self._og), self.supported)

    # -- scanning -------------------------------------------------------------------------
    def _scan(self, final: bool) -> None:
        buf = self._buf
        while not self.done:
            if self._skip_until is not None:
                span = _find_close(buf, self._skip_until, self._pos)
                if span is None:
                    return
                self._pos, self._skip_until = span[1], None
                continue
            skipped = _SKIPPABLE.match(buf, self._pos)
            assert skipped is not None  # it matches the empty string too
            self._pos = lt = skipped.end()
            if lt >= len(buf):
                return
            self._pos = lt
            if not self._step(buf, lt, final):
                return

    def _step(self, buf: bytearray, lt: int, final: bool) -> bool:
        """Read one construct at ``lt``; False when it is not all there yet."""
        for opener, closer in ((b"<!--", b"-->"), (b"<![CDATA[", b"]]>")):
            if buf.startswith(opener, lt):
                end = buf.find(closer, lt + len(opener))
                if end < 0:
                    return False
                self._pos = end + len(closer)
                return True
        if len(buf) < lt + 2:
            return False
        second = buf[lt + 1 : lt + 2]
        if second in (b"!", b"?"):
            end = buf.find(b">", lt)
            if end < 0:
                return False
            self._pos = end + 1
            return True
        if second == b"/":
            found = _END_TAG.match(buf, lt)
            if not found:
                if buf.find(b">", lt) < 0:
                    return False
                self._pos = lt + 2
                return True
            if found.group(1).lower() == b"head":
                self.done = True
            self._pos = found.end()
            return True
        if not second.isalpha():
            self._pos = lt + 1
            return True
        found = _TAG.match(buf, lt)
        if not found:
            return False
        name = found.group(1).lower()
        self._pos = found.end()
        if name == b"title":
            return self._read_title(buf, lt, found.end(), final)
        if name == b"meta":
            self._meta(found.group(2))
        elif name == b"body":
            self.done = True
        elif name in _RAW or name in _SKIP:
            if not found.group(2).rstrip().endswith(b"/"):
                self._skip_until = name
        if self._title is not None and self._og is not None:
            self.done = True
        return True

    def _read_title(self, buf: bytearray, lt: int, start: int, final: bool) -> bool:
        end = _find_close(buf, b"title", start)
        if end is None:
            if not final:
                self._pos = lt  # back to "<title", wait for more
                return False
            text_end = len(buf)
            self._pos = len(buf)
        else:
            text_end, self._pos = end
        if self._title is None:
            self._title = bytes(buf[start:text_end])
        if self._og is not None:
            self.done = True
        return True

    def _meta(self, attributes: bytes) -> None:
        attrs: dict[bytes, bytes] = {}
        for found in _ATTR.finditer(attributes):
            key = found.group(1).lower()
            value = found.group(2) or found.group(3) or found.group(4) or b""
            attrs.setdefault(key, value)
        kind = (attrs.get(b"property") or attrs.get(b"name") or b"").strip().lower()
        if kind == b"og:title" and self._og is None and b"content" in attrs:
            self._og = attrs[b"content"]
        if self._seen_head_charset or self._charset:
            return
        label = attrs.get(b"charset")
        if label is None and attrs.get(b"http-equiv", b"").lower() == b"content-type":
            said = _CHARSET.search(attrs.get(b"content", b""))
            label = said.group(1) if said else None
        if label:
            codec = codec_of(label.decode("ascii", "replace"))
            if codec and not codec.startswith("utf-16"):  # a UTF-16 page says so in its BOM
                self._charset = codec
                self._seen_head_charset = True

    def _text(self, raw: bytes | None) -> str | None:
        if raw is None:
            return None
        if self._utf16 is not None:
            text = raw.decode("utf-8", errors="replace")
        elif self._charset:
            text = raw.decode(self._charset, errors="replace")
        else:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("cp1252", errors="replace")
        text = " ".join(html.unescape(text).split())
        return text[:MAX_TITLE] or None


def _find_close(buf: bytearray, name: bytes, start: int) -> tuple[int, int] | None:
    """Where ``</name ...>`` starts and ends, or None."""
    pattern = _CLOSERS.get(name)
    if pattern is None:
        pattern = _CLOSERS[name] = re.compile(b"</" + re.escape(name) + rb"[\s/>]", re.I)
    found = pattern.search(buf, start)
    if not found:
        return None
    end = buf.find(b">", found.start())
    if end < 0:
        return None
    return found.start(), end + 1


_CLOSERS: dict[bytes, re.Pattern[bytes]] = {}


class _Decompressor(Protocol):
    def decompress(self, data: bytes, max_length: int) -> bytes: ...


class _Deflate:
    """``Content-Encoding: deflate`` is zlib-wrapped by the standard and raw by some servers."""

    def __init__(self) -> None:
        self._inner: zlib._Decompress | None = None

    def decompress(self, data: bytes, max_length: int) -> bytes:
        if self._inner is None:
            raw = not (
                len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
            )
            self._inner = zlib.decompressobj(-zlib.MAX_WBITS if raw else zlib.MAX_WBITS)
        return self._inner.decompress(data, max_length)


def extract_titles(
    body: bytes, content_type: str | None = None, content_encoding: str | None = None
) -> PageTitle:
    """The titles in a whole (or first part of a) body, as :class:`TitleSniffer` reads it."""
    sniffer = TitleSniffer(content_type, content_encoding)
    sniffer.feed(body)
    return sniffer.result()
