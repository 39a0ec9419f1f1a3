"""Recognising a Fediverse server (Mastodon, Misskey, Pleroma, Lemmy, ...) from its traffic.

There are tens of thousands of Fediverse servers and new ones every day, so no list can name
them all. They do say what they are, in the protocols they speak: this module looks at one
request and its response (an :class:`Observation`) and returns what it shows
(:func:`detect`), with the evidence, so that the gateway can treat an unlisted server as
social media and record why.

What is enough on its own (``strong`` evidence; the finding is :attr:`Finding.social`):

* a NodeInfo document (``/.well-known/nodeinfo`` links, or the ``/nodeinfo/2.x`` document)
  naming social software (Mastodon, Misskey, Pleroma, Lemmy, Pixelfed, PeerTube, ...);
* a response in an ActivityStreams type: ``application/activity+json``, or
  ``application/ld+json`` with the ActivityStreams profile (plain JSON-LD is schema.org
  markup on ordinary sites, and says nothing);
* a WebFinger answer that links an account to an ActivityPub actor (WebFinger alone is also
  OpenID Connect discovery);
* an instance-metadata API answer with the fields of Mastodon's ``/api/v1|v2/instance``,
  Misskey's ``/api/meta`` or Lemmy's ``/api/v3/site``;
* a ``Server`` header of Fediverse software (``Mastodon``, ``gotosocial``).

What is never enough on its own (``weak`` evidence, recorded but not deciding): a path shaped
like a Fediverse API (``/api/v1/timelines/...``: ordinary sites have ``/api/v1/`` JSON APIs
too) or a client asking for ActivityStreams in ``Accept`` (any client may ask any site).
Software that speaks these protocols but is not social media (Forgejo and Gitea code forges,
Nextcloud, WordPress blogs with the ActivityPub plugin) is recognised and not called social.

Responses are untrusted: a body is read only up to :data:`MAX_BODY` bytes, malformed JSON is
no evidence, and nothing here raises on bad input.

Pure: no mitmproxy, database or web imports.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from schoolgate.core.hosts import normalize_host

__all__ = ["MAX_BODY", "Evidence", "Finding", "Observation", "detect", "software_is_social"]

MAX_BODY = 64 * 1024

# NodeInfo software names (lower case) of social networks: microblogs, forums, image and video
# sharing, live streaming. Forks of Mastodon report "mastodon".
SOCIAL_SOFTWARE = frozenset(
    """
    mastodon hometown fedibird kmyblue misskey sharkey firefish calckey iceshrimp foundkey
    catodon cherrypick meisskey pleroma akkoma lemmy mbin kbin pixelfed peertube friendica
    diaspora hubzilla streams gotosocial bookwyrm funkwhale takahe snac honk microblogpub
    socialhome gnusocial bonfire wafrn loops owncast threads
    """.split()
)
# Software that speaks NodeInfo or ActivityPub but is not social media.
NOT_SOCIAL_SOFTWARE = frozenset(
    "forgejo gitea gitlab nextcloud wordpress writefreely ghost castopod gancio".split()
)
# How the software calls itself in headers, version strings and NodeInfo.
_DISPLAY = {
    "mastodon": "Mastodon",
    "misskey": "Misskey",
    "pleroma": "Pleroma",
    "akkoma": "Akkoma",
    "lemmy": "Lemmy",
    "pixelfed": "Pixelfed",
    "peertube": "PeerTube",
    "gotosocial": "GoToSocial",
    "friendica": "Friendica",
}
_SERVER_HEADERS = {"mastodon": "mastodon", "gotosocial": "gotosocial", "akkoma": "akkoma"}
_NODEINFO_SCHEMA = re.compile(r"^https?://nodeinfo\.diaspora\.software/ns/schema/\d")
_NODEINFO_PATH = re.compile(r"^/nodeinfo/\d+\.\d+(?:\.json)?$")
_COMPATIBLE = re.compile(r"\(compatible;\s*([A-Za-z][A-Za-z0-9_-]*)")
_ACTIVITY_STREAMS = "https://www.w3.org/ns/activitystreams"
_FEDI_API_PATHS = re.compile(
    r"^/api/(?:v1/(?:timelines|statuses|accounts|instance|streaming|notifications|trends)"
    r"|v2/(?:instance|search)|v3/(?:site|post|community|comment)"
    r"|(?:notes|meta|users/show|i)(?:/|$))"
)


@dataclass(frozen=True, slots=True)
class Observation:
    """What the gateway saw of one request and (when it has come) its response.

    Header values are as received; ``body`` is the response body or its first part (only the
    first :data:`MAX_BODY` bytes are read).
    """

    host: str
    path: str = "/"
    method: str = "GET"
    accept: str = ""  # request Accept header
    status: int | None = None  # None: the response is not known yet
    content_type: str = ""  # response Content-Type
    server: str = ""  # response Server header
    body: bytes | str | None = None


@dataclass(frozen=True, slots=True)
class Evidence:
    """One thing the traffic showed; ``strong`` evidence decides on its own."""

    # nodeinfo, activitystreams, webfinger, instance_api, server_header (strong);
    # api_path, accept (weak)
    kind: str
    detail: str
    strong: bool


@dataclass(frozen=True, slots=True)
class Finding:
    host: str
    software: str | None  # lower case NodeInfo name when known ("mastodon")
    evidence: tuple[Evidence, ...]

    @property
    def social(self) -> bool:
        """Whether the host should be treated as social media: strong evidence, and no
        software known to be something else."""
        if self.software is not None and not software_is_social(self.software):
            return False
        return any(e.strong for e in self.evidence)

    def describe(self) -> str:
        what = _DISPLAY.get(self.software or "", self.software or "Fediverse")
        return f"{self.host}: {what} server ({'; '.join(e.detail for e in self.evidence)})"


def software_is_social(name: str) -> bool:
    """Known social software, or unknown software that is not known to be anything else."""
    name = name.lower()
    return name in SOCIAL_SOFTWARE or name not in NOT_SOCIAL_SOFTWARE


# -- helpers --------------------------------------------------------------------------------


def _media_type(value: str) -> tuple[str, dict[str, str]]:
    """``'application/ld+json; profile="x"'`` -> ``('application/ld+json', {'profile': 'x'})``."""
    parts = value.split(";")
    params: dict[str, str] = {}
    for part in parts[1:]:
        key, eq, val = part.partition("=")
        if eq:
            params[key.strip().lower()] = val.strip().strip('"')
    return parts[0].strip().lower(), params


def _is_activity_streams(value: str) -> bool:
    for item in value.split(","):
        media, params = _media_type(item)
        if media == "application/activity+json":
            return True
        if (
            media == "application/ld+json"
            and _ACTIVITY_STREAMS in params.get("profile", "").split()
        ):
            return True
    return False


def _json_body(obs: Observation) -> Any:
    """The response body as JSON, or None (absent, too short to be whole, or not JSON)."""
    body = obs.body
    if body is None:
        return None
    if isinstance(body, str):
        body = body.encode("utf-8", "replace")
    body = body[:MAX_BODY]
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def _path_only(path: str) -> str:
    path = (path or "/").split("?", 1)[0].split("#", 1)[0].lower()
    return path.rstrip("/") or "/"


def _software_of_version(version: Any) -> str:
    """Mastodon-compatible ``version``: ``"4.3.1"`` or ``"2.7.2 (compatible; Pleroma 2.6)"``."""
    found = _COMPATIBLE.search(version) if isinstance(version, str) else None
    return found.group(1).lower() if found else "mastodon"


# -- the checks -------------------------------------------------------------------------------


def _nodeinfo(path: str, doc: Any) -> tuple[str | None, Evidence] | None:
    if path == "/.well-known/nodeinfo" and isinstance(doc, dict):
        links = doc.get("links")
        if isinstance(links, list) and any(
            isinstance(link, dict) and _NODEINFO_SCHEMA.match(str(link.get("rel", "")))
            for link in links
        ):
            return None, Evidence("nodeinfo", "NodeInfo discovery at /.well-known/nodeinfo", True)
    if _NODEINFO_PATH.match(path) and isinstance(doc, dict):
        software = doc.get("software")
        protocols = doc.get("protocols")
        if isinstance(software, dict) and isinstance(software.get("name"), str):
            name = software["name"].strip().lower()
            version = software.get("version")
            shown = f"{name} {version}" if isinstance(version, str) else name
            if isinstance(protocols, list):
                shown += f", protocols {', '.join(str(p) for p in protocols[:5])}"
            return name, Evidence("nodeinfo", f"NodeInfo at {path} says software {shown}", True)
    return None


def _instance_api(path: str, doc: Any) -> tuple[str, Evidence] | None:
    if not isinstance(doc, dict):
        return None
    if path in ("/api/v1/instance", "/api/v2/instance"):
        has_name = isinstance(doc.get("uri") or doc.get("domain"), str)
        has_version = isinstance(doc.get("version"), str)
        mastodonish = (isinstance(doc.get("urls"), dict) and "streaming_api" in doc["urls"]) or (
            isinstance(doc.get("configuration"), dict) and "statuses" in doc["configuration"]
        )
        if has_name and has_version and mastodonish:
            software = _software_of_version(doc["version"])
            return software, Evidence(
                "instance_api",
                f"{path} answers as a Mastodon-compatible server (version {doc['version']})",
                True,
            )
    if path == "/api/meta" and isinstance(doc.get("version"), str):
        if "maintainerName" in doc and ("disableRegistration" in doc or "repositoryUrl" in doc):
            return "misskey", Evidence(
                "instance_api", f"/api/meta answers as Misskey (version {doc['version']})", True
            )
    if path == "/api/v3/site" and isinstance(doc.get("site_view"), dict):
        if isinstance(doc.get("version"), str):
            return "lemmy", Evidence(
                "instance_api", f"/api/v3/site answers as Lemmy (version {doc['version']})", True
            )
    return None


def _webfinger(path: str, doc: Any) -> Evidence | None:
    if path != "/.well-known/webfinger" or not isinstance(doc, dict):
        return None
    links = doc.get("links")
    if not isinstance(links, list):
        return None
    for link in links:
        if (
            isinstance(link, dict)
            and link.get("rel") == "self"
            and _is_activity_streams(str(link.get("type", "")))
        ):
            subject = doc.get("subject")
            who = f" for {subject}" if isinstance(subject, str) else ""
            return Evidence("webfinger", f"WebFinger links an ActivityPub actor{who}", True)
    return None


def detect(obs: Observation) -> Finding | None:
    """What one request and its response show of a Fediverse server, or None.

    Never raises: a malformed observation is no evidence.
    """
    host = normalize_host(obs.host or "")
    if not host:
        return None
    path = _path_only(obs.path)
    evidence: list[Evidence] = []
    software: str | None = None
    answered = obs.status is not None and 200 <= obs.status < 300

    if answered:
        doc = _json_body(obs)
        found = _nodeinfo(path, doc)
        if found is not None:
            software = found[0] or software
            evidence.append(found[1])
        api = _instance_api(path, doc)
        if api is not None:
            software = software or api[0]
            evidence.append(api[1])
        finger = _webfinger(path, doc)
        if finger is not None:
            evidence.append(finger)
        if obs.content_type and _is_activity_streams(obs.content_type):
            media, _params = _media_type(obs.content_type)
            evidence.append(
                Evidence("activitystreams", f"{path} answered in ActivityStreams ({media})", True)
            )
    if obs.status is not None and obs.server:
        name = obs.server.strip().split("/", 1)[0].strip().lower()
        if name in _SERVER_HEADERS:
            software = software or _SERVER_HEADERS[name]
            evidence.append(Evidence("server_header", f"Server: {obs.server.strip()}", True))
    if _FEDI_API_PATHS.match(path):
        evidence.append(Evidence("api_path", f"{obs.method.upper()} {path}", False))
    if obs.accept and _is_activity_streams(obs.accept):
        evidence.append(Evidence("accept", "the client asked for ActivityStreams", False))
    if not evidence:
        return None
    return Finding(host, software, tuple(evidence))
