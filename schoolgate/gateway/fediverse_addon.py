"""Unlisted Fediverse servers, recognised from their responses and treated as social media.

In the ``response`` hook, a response that can show what its server is (NodeInfo, WebFinger,
the instance APIs of Mastodon, Misskey and Lemmy, an ActivityStreams content type, a
``Server: Mastodon`` header) from a host that no list names is given to
:func:`schoolgate.core.fediverse.detect`. A host found to be social is put in the config's
``fediverse.category`` at once in this process (the next request to it is decided as that
category), and kept with the evidence in the database (``detected_hosts``) by a background
thread, from which every worker reads them back. The request that showed it has already been
answered: recognition is from what was seen, never a guess before.

Only those few responses are looked at, and only their first
:data:`~schoolgate.core.fediverse.MAX_BODY` bytes: ordinary traffic costs one dictionary
look-up of the path and a header or two.
"""

from __future__ import annotations

import logging
import queue
from datetime import UTC, datetime

from mitmproxy import ctx, exceptions, http

from schoolgate.core.fediverse import MAX_BODY, Observation, detect
from schoolgate.core.hosts import normalize_host
from schoolgate.gateway.background import Periodic
from schoolgate.gateway.flowmark import answered
from schoolgate.gateway.holder import PolicyHolder
from schoolgate.gateway.recorder import Recorder

log = logging.getLogger(__name__)

# Paths whose answers say what a server is (see schoolgate.core.fediverse).
TELLING_PATHS = frozenset(
    {
        "/.well-known/nodeinfo",
        "/.well-known/webfinger",
        "/api/v1/instance",
        "/api/v2/instance",
        "/api/meta",
        "/api/v3/site",
    }
)
_SERVER_NAMES = ("mastodon", "gotosocial", "akkoma")
MAX_PENDING = 1000


def reads_body(path: str, content_type: str, server: str) -> bool:
    """Whether Fediverse recognition reads this response's body (a path, type or server that
    tells a Fediverse server): other parts must then leave the body as it is."""
    base = path.split("?", 1)[0].rstrip("/").lower() or "/"
    if base in TELLING_PATHS or base.startswith("/nodeinfo/"):
        return True
    if "activity+json" in content_type or "activitystreams" in content_type:
        return True
    return bool(server) and server.split("/", 1)[0].strip().lower() in _SERVER_NAMES


class FediverseWatch:
    name = "schoolgate_fediverse"

    def __init__(self, holder: PolicyHolder, recorder: Recorder) -> None:
        self.holder = holder
        self.recorder = recorder
        # host -> category: read by Enforcement for every request to an unlisted host.
        self.current: dict[str, str] = {}
        self._pending: queue.Queue = queue.Queue(MAX_PENDING)
        self._worker = Periodic("schoolgate-fediverse", self.sync)

    def load(self, loader) -> None:
        loader.add_option(
            "schoolgate_detected_interval",
            float,
            10.0,
            "Seconds between re-reads of the hosts recognised from their traffic (a Fediverse "
            "server) by any worker, and writes of those this one recognised.",
        )

    def configure(self, updated) -> None:
        if "schoolgate_detected_interval" in updated:
            if ctx.options.schoolgate_detected_interval <= 0:
                raise exceptions.OptionsError("schoolgate_detected_interval must be positive")

    # -- the hook ---------------------------------------------------------------------------
    def response(self, flow: http.HTTPFlow) -> None:
        policy = self.holder.policy
        response = flow.response
        if policy is None or policy.fediverse_category is None or response is None:
            return
        if answered(flow.metadata):  # answered by the gateway itself (a block)
            return
        content_type = response.headers.get("content-type", "")
        server = response.headers.get("server", "")
        if not reads_body(flow.request.path, content_type.lower(), server):
            return
        host = normalize_host(flow.request.pretty_host)
        if not host or host in self.current or host == policy.settings.portal_host:
            return
        if policy.matcher.lookup(host, None) is not None:
            return  # listed already (or on the allowlist): the lists decide
        try:
            body = (response.content or b"")[:MAX_BODY]
        except ValueError:  # a body that does not decode is no evidence
            body = b""
        finding = detect(
            Observation(
                host=host,
                path=flow.request.path,
                method=flow.request.method,
                accept=flow.request.headers.get("accept", ""),
                status=response.status_code,
                content_type=content_type,
                server=server,
                body=body,
            )
        )
        if finding is None or not finding.social:
            return
        category = policy.fediverse_category
        self.current = {**self.current, host: category}  # replaced whole: readers never lock
        evidence = finding.describe()
        log.warning("schoolgate: %s; treated as %s from now on", evidence, category)
        try:
            self._pending.put_nowait(
                (host, category, finding.software, evidence, flow.client_conn.peername[0])
            )
        except queue.Full:
            log.error("schoolgate: too many recognised hosts waiting; %s not kept", host)
        self._worker.wake()

    # -- the database (background thread) ---------------------------------------------------
    def sync(self) -> None:
        """Write what this worker recognised, then read back what every worker has."""
        sessions = self.recorder.sessions
        if sessions is None:
            return
        from schoolgate.storage.detected import Detection, detected_hosts, save_detection
        from schoolgate.storage.exceptions import audit

        while True:
            try:
                host, category, software, evidence, client_ip = self._pending.get_nowait()
            except queue.Empty:
                break
            found = Detection(host, category, software, evidence, datetime.now(UTC), client_ip)
            with sessions.begin() as session:
                if save_detection(session, found):
                    audit(session, "schoolgate", "detected.add", f"host {host}", evidence)
        with sessions() as session:
            rows = {row.host: row.category for row in detected_hosts(session)}
        policy = self.holder.policy
        if policy is not None:  # a category the config no longer has is not applied
            rows = {h: c for h, c in rows.items() if c in policy.categories}
        if rows != self.current:
            self.current = rows

    def running(self) -> None:
        if not self._worker.started:
            try:
                self.sync()
            except Exception:  # noqa: BLE001 - the thread retries
                log.exception("schoolgate: could not read the recognised hosts")
            self._worker.start(ctx.options.schoolgate_detected_interval)

    def done(self) -> None:
        self._worker.stop(timeout=5)
        try:
            self.sync()  # keep what was recognised since the last round
        except Exception:  # noqa: BLE001
            log.exception("schoolgate: could not keep the recognised hosts")
