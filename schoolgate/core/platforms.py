"""Platform families: the host names that make up Facebook, YouTube, TikTok and the rest.

A platform's pages load from CDN hosts of its own and its apps call API hosts, so a decision
about "YouTube" is a decision about a family of names. ``blocklists/platforms.yaml`` names
them (see its header for the format); :func:`load_platforms` reads it, reporting every mistake
with its file, line and field, and :class:`Platforms` answers the questions the policy asks:

* which platform does a host belong to (:meth:`Platforms.lookup`), on label boundaries only
  (``notyoutube.com`` is not ``youtube.com``) and most specific entry first
  (``youtubei.googleapis.com`` is YouTube while ``storage.googleapis.com`` is nobody's);
* does opening a platform open this host (:meth:`Platforms.family_covers`), and does a
  page-level approval on the platform open it (:meth:`Platforms.static_of`: only the
  family's static hosts are opened beside the approved page).

Shared infrastructure (Google's API and static domains, the big CDNs, hosting platforms) is
refused as a family entry: opening YouTube must not open half the web, and blocking it must not
break Google Classroom. Only a platform's own sub-domains of such names may be listed.

Pure: no mitmproxy, database or web imports.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from schoolgate.core.configfile import Issues, Section, load_yaml
from schoolgate.core.hosts import is_registry_suffix, normalize_host

__all__ = [
    "SHARED_INFRASTRUCTURE",
    "Platform",
    "PlatformMatch",
    "Platforms",
    "load_platforms",
]

# Names shared by many unrelated services. A family may list a platform's own sub-domain of
# one of these (youtubei.googleapis.com), never the name itself or a parent of it.
SHARED_INFRASTRUCTURE = frozenset(
    """
    google.com googleapis.com gstatic.com googleusercontent.com ggpht.com gvt1.com gvt2.com
    appspot.com firebaseapp.com web.app withgoogle.com
    akamai.net akamaihd.net akamaized.net akamaiedge.net akamaitechnologies.com edgesuite.net
    edgekey.net akadns.net akamai.com
    cloudfront.net amazonaws.com awsstatic.com elasticbeanstalk.com
    azureedge.net azurefd.net azurewebsites.net windows.net trafficmanager.net msedge.net
    msecnd.net microsoft.com office.com office.net live.com
    fastly.net fastlylb.net cloudflare.com cloudflare.net cloudflare-ipfs.com workers.dev
    pages.dev r2.dev
    llnwd.net footprint.net cdn77.org b-cdn.net bunny.net stackpathdns.com edgecastcdn.net
    jsdelivr.net unpkg.com cdnjs.com
    github.io githubusercontent.com gitlab.io herokuapp.com vercel.app netlify.app glitch.me
    onrender.com fly.dev
    kunluncan.com alikunlun.com alicdn.com aliyuncs.com cdngslb.com bsgslb.com wsglb0.com
    wscdns.com myqcloud.com qq.com
    apple.com icloud.com mzstatic.com
    """.split()
)

_KEY_RE = re.compile(r"[a-z0-9][a-z0-9_-]*\Z")
_HOST_RE = re.compile(r"(?:[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?\.)+[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\Z")
_KEYS = frozenset({"name", "category", "hosts", "static", "note"})


@dataclass(frozen=True, slots=True)
class Platform:
    """One platform: its own hosts (pages, sign-in, API) and its static hosts (CDN, media)."""

    key: str
    name: str
    category: str | None
    hosts: tuple[str, ...]
    static: tuple[str, ...]
    source: str  # "file:line" of the platform's key, for messages
    note: str = ""

    @property
    def family(self) -> tuple[str, ...]:
        """Every entry of the family: what an approval of the whole platform opens."""
        return self.hosts + self.static


@dataclass(frozen=True, slots=True)
class PlatformMatch:
    """The family entry a host falls under, whether it is a static host, and the platforms
    that list it (the first is the one whose host it is; a static host can be shared)."""

    host: str
    entry: str
    static: bool
    platforms: tuple[Platform, ...]

    @property
    def platform(self) -> Platform:
        return self.platforms[0]


class Platforms:
    """An immutable set of platform families with lookups by host name."""

    __slots__ = ("_by_key", "_index")

    def __init__(self, platforms: Collection[Platform] = ()) -> None:
        by_key: dict[str, Platform] = {}
        index: dict[str, tuple[bool, tuple[Platform, ...]]] = {}
        for platform in platforms:
            if platform.key in by_key:
                raise ValueError(f"platform {platform.key!r} given twice")
            by_key[platform.key] = platform
            for entries, static in ((platform.hosts, False), (platform.static, True)):
                for entry in entries:
                    old = index.get(entry)
                    if old is None:
                        index[entry] = (static, (platform,))
                    elif old[0] and static:
                        index[entry] = (True, (*old[1], platform))
                    else:
                        raise ValueError(
                            f"{entry} is a host of {old[1][0].key!r} and cannot be in "
                            f"{platform.key!r} as well"
                        )
        self._by_key = by_key
        self._index = index

    # -- the set ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self) -> Iterator[Platform]:
        return iter(self._by_key.values())

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def __getitem__(self, key: str) -> Platform:
        return self._by_key[key]

    def get(self, key: str) -> Platform | None:
        return self._by_key.get(key)

    # -- lookups ---------------------------------------------------------------------------
    def lookup(self, host: str) -> PlatformMatch | None:
        """The most specific family entry ``host`` is (or is under), or None.

        Label boundaries only: ``m.youtube.com`` is YouTube, ``notyoutube.com`` is not. An IP
        address belongs to no platform.
        """
        host = normalize_host(host)
        if not host or host[-1].isdigit() or ":" in host:
            return None
        index = self._index
        name = host
        while True:
            found = index.get(name)
            if found is not None:
                return PlatformMatch(host, name, found[0], found[1])
            dot = name.find(".")
            if dot < 0:
                return None
            name = name[dot + 1 :]

    def family_covers(self, key: str, host: str) -> bool:
        """Whether opening platform ``key`` (an exception, approval or teacher opening for the
        whole platform) opens ``host``."""
        match = self.lookup(host)
        return match is not None and any(p.key == key for p in match.platforms)

    def static_of(self, key: str, host: str) -> bool:
        """Whether ``host`` is one of platform ``key``'s static hosts: what a page-level
        approval on the platform opens besides the approved page itself."""
        match = self.lookup(host)
        return match is not None and match.static and any(p.key == key for p in match.platforms)

    def __repr__(self) -> str:
        return f"<Platforms {', '.join(self._by_key)}>"


# -- reading --------------------------------------------------------------------------------


def _family_entry(text: str) -> tuple[str | None, str]:
    """One host of a family, normalised; ``(None, reason)`` when it cannot be one."""
    raw = text.strip()
    if raw.startswith("*."):
        raw = raw[2:]
    if not raw:
        return None, "empty host name"
    if "/" in raw or "://" in raw:
        return None, f"a host name without a path or scheme is expected, got {text!r}"
    if "*" in raw:
        return None, f"wildcards are not needed (a name includes its sub-domains): {text!r}"
    try:
        ipaddress.ip_address(raw.strip("[]"))
    except ValueError:
        pass
    else:
        return None, f"an IP address is not part of a platform's family: {text!r}"
    host = normalize_host(raw)
    if not host or len(host) > 253 or not _HOST_RE.fullmatch(host):
        return None, f"not a host name: {text!r}"
    if is_registry_suffix(host):
        return None, f"{host} is a public suffix: the names under it belong to unrelated sites"
    if host in SHARED_INFRASTRUCTURE:
        return None, (
            f"{host} is shared infrastructure used by many services; list the platform's own "
            f"sub-domain of it instead (e.g. youtubei.googleapis.com)"
        )
    return host, ""


def load_platforms(
    path: Path | str,
    issues: Issues,
    *,
    shown: str | None = None,
    categories: Collection[str] | None = None,
) -> Platforms:
    """Read a platforms file; report every problem into ``issues``.

    Returns the platforms that could be read (the caller refuses the file when ``issues`` has
    errors). ``categories``, when given, are the category names a platform may name.
    """
    path = Path(path)
    shown = shown or str(path)
    data = load_yaml(path, issues, shown=shown)
    if data is None:
        return Platforms()
    root = Section(data, file=shown, path="", issues=issues)
    root.check_keys({"platforms"})
    table = root.section("platforms", required=True)
    if table is None:
        return Platforms()
    not_text = set()
    for raw_key in table.data:
        if not isinstance(raw_key, str):
            not_text.add(str(raw_key))
            table.error(
                raw_key,
                f"a platform key must be text such as 'youtube': YAML read this one as "
                f"{raw_key!r}; put it in quotes",
            )

    platforms: list[Platform] = []
    # entry -> (platform key, static, line) of its first appearance
    seen: dict[str, tuple[str, bool, int]] = {}
    for key, sec in root.named_sections("platforms"):
        if key in not_text:
            continue
        if not _KEY_RE.match(key):
            sec.error(None, "a platform key is lower case letters, digits, '_' or '-'")
            continue
        sec.check_keys(_KEYS)
        name = sec.text("name", required=True)
        category = sec.text("category")
        if category and categories is not None and category not in categories:
            sec.error("category", f"unknown category {category!r}")
        note = sec.text("note") or ""
        lists: dict[bool, list[str]] = {False: [], True: []}
        for field_key, static in (("hosts", False), ("static", True)):
            for text, line, field_name in sec.strings(field_key, required=not static):
                entry, why = _family_entry(text)
                if entry is None:
                    issues.add(shown, line, field_name, why)
                    continue
                first = seen.get(entry)
                if first is not None:
                    other, other_static, other_line = first
                    if other == key:
                        issues.add(
                            shown, line, field_name, f"{entry} is listed twice (line {other_line})"
                        )
                        continue
                    if not (static and other_static):
                        issues.add(
                            shown,
                            line,
                            field_name,
                            f"{entry} is already in platform {other!r} (line {other_line}); "
                            "a host belongs to one platform (only static hosts can be shared)",
                        )
                        continue
                else:
                    seen[entry] = (key, static, line)
                lists[static].append(entry)
        if not lists[False]:
            if "hosts" in sec:
                sec.error("hosts", "a platform needs at least one host of its own")
            continue
        if not name:
            continue
        platforms.append(
            Platform(
                key=key,
                name=name,
                category=category or None,
                hosts=tuple(lists[False]),
                static=tuple(lists[True]),
                source=f"{shown}:{table.line_of(key)}",
                note=note,
            )
        )
    return Platforms(platforms)


def read_platforms(
    root: Section, base: Path, issues: Issues, categories: Collection[str]
) -> Platforms | None:
    """The config's ``platforms: blocklists/platforms.yaml``: the families of hosts that make up
    each platform (a block, an exception or a page approval covers the family)."""
    text = root.text("platforms")
    if not text:
        return None
    path = Path(text).expanduser()
    path = path if path.is_absolute() else base / path
    try:
        shown = str(path.resolve().relative_to(base))
    except ValueError:
        shown = str(path)
    if not path.is_file():
        root.error("platforms", f"file not found: {shown}")
        return None
    return load_platforms(path, issues, shown=shown, categories=list(categories))
