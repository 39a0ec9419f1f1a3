"""The portal (:mod:`schoolgate.portal`) served by the gateway at the portal host name.

Every path of the portal host except the gateway's own pages (``/``, ``/ca*``, the PAC/WPAD
files: :mod:`schoolgate.gateway.pages`, which marks the rest for this addon) goes to the Flask
app through mitmproxy's ``asgiapp.WSGIApp``, over HTTP and over HTTPS (decrypted with the
gateway's CA: the portal host is always intercepted). Nothing for the portal host ever reaches
an upstream: if the app is not ready, the answer is a 503 page.

* **Identity**: any ``X-Schoolgate-User`` the client sent (in any spelling that a WSGI server
  would read as the same header, such as ``X_Schoolgate_User``) is removed, and the gateway
  sets its own from the proxy login (``flow.metadata["proxyauth"][0]``). The app's
  ``identify`` reads ``REMOTE_ADDR`` and that header.
* **Policy**: the app reads ``holder.policy`` on every request, so a reload applies at once.
* **Notifications**: the outbox sender starts with the gateway and stops on shutdown; it uses
  ``notifications.smtp`` / ``notifications.webhook``. When a new policy changes them (or
  ``portal.slt_required``, or the database), the app is rebuilt with the new settings
  (:meth:`PortalAddon.policy_changed`). With
  several workers on one host only one runs the sender (``schoolgate_portal_sender=false`` in
  the others): they share one outbox.

Served on a port of its own (``schoolgate run --portal-port``), :class:`StandalonePortal` builds
the same app without trusting the user header and serves it with
:class:`~schoolgate.gateway.portal_server.PortalHTTPServer`.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
from typing import Any

from mitmproxy import http
from mitmproxy.addons import asgiapp

from schoolgate.gateway.flowmark import KEY
from schoolgate.gateway.health import OPS_PATHS
from schoolgate.gateway.holder import PolicyHolder
from schoolgate.gateway.portal_server import PortalHTTPServer, PortalServerLimits
from schoolgate.gateway.recorder import Recorder

log = logging.getLogger(__name__)

USER_HEADER = "X-Schoolgate-User"
SENDER_OPTION = "schoolgate_portal_sender"
DEFAULT_PORTAL_HOST = "127.0.0.1"  # the portal's own port: loopback unless told otherwise
_USER_KEY = USER_HEADER.upper().replace("-", "_")

_UNAVAILABLE = (
    b"<!doctype html><html lang=en><head><meta charset=utf-8><title>Portal unavailable</title>"
    b"</head><body><h1>The portal is not available just now</h1><p>Please try again in a "
    b"minute, or contact IT Support.</p></body></html>"
)


def portal_settings(policy) -> dict[str, Any]:
    """What the app is built from (besides the database and the secret), from the policy."""
    notifications = policy.settings.notifications
    return {
        "smtp": notifications.smtp,
        "webhook": notifications.webhook,
        "slt_required": policy.settings.portal.slt_required,
    }


def build_app(
    holder: PolicyHolder,
    sessions,
    secret: bytes,
    settings: dict[str, Any],
    *,
    trust_user_header: bool = True,
    admin: bool = False,
    live_streams: int = 2,
):
    """The portal's Flask app for the policy in ``holder`` (the sender is not started)."""
    from schoolgate.portal.app import create_app, make_identify

    def policy_getter():
        return holder.policy

    return create_app(
        policy_getter=policy_getter,
        session_factory=sessions,
        secret=secret,
        data_dir=holder.data_dir,
        identify=make_identify(policy_getter, trust_user_header=trust_user_header),
        smtp=settings["smtp"],
        webhook_url=settings["webhook"],
        slt_required=settings["slt_required"],
        start_sender=False,
        admin=admin,
        live_streams=live_streams,
    )


def _scheme_fix(app):
    """mitmproxy's ASGI scope says ``HTTP``/``HTTPS``; WSGI wants lower case (Flask's
    ``is_secure`` and the URLs it builds depend on it)."""

    def wsgi(environ, start_response):
        environ["wsgi.url_scheme"] = str(environ.get("wsgi.url_scheme", "http")).lower()
        return app(environ, start_response)

    return wsgi


class PortalAddon(asgiapp.WSGIApp):
    """Serves the portal for flows :class:`~schoolgate.gateway.pages.GatewayPages` marked."""

    def __init__(self, holder: PolicyHolder, recorder: Recorder) -> None:
        self.holder = holder
        self.recorder = recorder
        self.app = None
        self._key: tuple | None = None  # (sessions, secret, settings json) the app was built for
        self._running = False
        self._lock = threading.Lock()
        super().__init__(_scheme_fix(self._wsgi), "", None)
        holder.subscribe(self)

    @property
    def name(self) -> str:  # one instance; not asgiapp's host:port name
        return "schoolgate_portal"

    # -- the app ------------------------------------------------------------------------------
    def _wsgi(self, environ, start_response):
        app = self.app
        if app is None:  # pragma: no cover - should_serve answers 503 first
            start_response("503 Service Unavailable", [("Content-Type", "text/html")])
            return [_UNAVAILABLE]
        return app(environ, start_response)

    def policy_changed(self, old, new) -> None:
        """A new policy: rebuild the app if its settings or the database changed."""
        self.refresh(new)

    def refresh(self, policy=None) -> None:
        """Build (or rebuild) the app if the database, the secret or the portal's settings
        (of ``policy``, by default the one in force) changed since it was built."""
        policy = policy or self.holder.policy
        sessions = self.recorder.sessions
        if policy is None or sessions is None or not self.recorder.secret:
            return
        with self._lock:
            settings = portal_settings(policy)
            key = (
                id(sessions),
                self.recorder.secret,
                json.dumps(settings, sort_keys=True, default=str),
            )
            if key == self._key and self.app is not None:
                return
            try:
                app = build_app(self.holder, sessions, self.recorder.secret, settings)
            except Exception:  # noqa: BLE001 - keep the previous app (if any)
                log.exception("schoolgate: the portal could not be (re)built")
                return
            old, self.app, self._key = self.app, app, key
            if self._running and self._sends():
                self._sender(app).start()
            if old is not None:
                log.info("schoolgate: portal settings changed; portal rebuilt")
                self._stop_sender(old)

    @staticmethod
    def _sender(app):
        return app.extensions["schoolgate_portal"].sender

    def _stop_sender(self, app) -> None:
        sender = self._sender(app)
        # Joining can take a moment (a send in progress): never on the event loop.
        threading.Thread(target=sender.stop, name="schoolgate-outbox-stop", daemon=True).start()

    @staticmethod
    def _sends() -> bool:
        from mitmproxy import ctx

        return bool(getattr(ctx.options, SENDER_OPTION, True))

    # -- mitmproxy hooks ----------------------------------------------------------------------
    def load(self, loader) -> None:
        loader.add_option(
            SENDER_OPTION,
            bool,
            True,
            "Send the portal's notifications (outbox) from this process.",
        )

    def running(self) -> None:
        self._running = True
        self.refresh()
        if self.app is not None:
            log.info("schoolgate: portal served at %s", self.holder.policy.settings.portal_host)
            if self._sends():
                self._sender(self.app).start()
                log.info("schoolgate: portal notification sender started")

    def configure(self, updated) -> None:
        self.refresh()

    def done(self) -> None:
        self._running = False
        if self.app is not None:
            self._sender(self.app).stop()

    def should_serve(self, flow: http.HTTPFlow) -> bool:
        mark = flow.metadata.get(KEY)  # flowmark.for_portal, without its call: every request
        return bool(mark is not None and mark.portal and flow.live and not flow.error)

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or not self.should_serve(flow):
            return
        if self.app is None:
            flow.response = http.Response.make(
                503, _UNAVAILABLE, {"content-type": "text/html; charset=utf-8"}
            )
            return
        prepare(flow)
        await super().request(flow)
        if flow.response is None:  # pragma: no cover - serve() always answers
            flow.response = http.Response.make(500, b"portal error")


def prepare(flow: http.HTTPFlow) -> None:
    """Make the request what the app may trust: the user header only from the proxy login,
    and a Host header (HTTP/2 has none: Flask would see ``localhost``)."""
    headers = flow.request.headers
    for name in {name for name in headers if name.upper().replace("-", "_") == _USER_KEY}:
        del headers[name]
    auth = flow.metadata.get("proxyauth")
    if auth and auth[0]:
        headers[USER_HEADER] = str(auth[0])
    if "host" not in headers:
        headers["Host"] = flow.request.pretty_host


class StandalonePortal:
    """The portal on a port of its own (``schoolgate run --portal-port P [--portal-host A]``),
    for staff on an admin network: :class:`~schoolgate.gateway.portal_server.PortalHTTPServer`
    (waitress: a fixed pool of worker threads, connection limits and timeouts) in the gateway's
    process. It listens on ``schoolgate_portal_host`` (default loopback), never on the proxy's
    address unless that is given. The user header is not trusted there
    (``make_identify(..., trust_user_header=False)``). It does not send notifications itself:
    the gateway's :class:`PortalAddon` sender does (within its 5-second poll).

    Only here: ``/healthz`` and ``/metrics`` (:mod:`schoolgate.gateway.health`, given the
    gateway's ``health`` addon), and the console's live stream (the app is built with
    ``admin=True``: this server sends answers as they are made)."""

    name = "schoolgate_portal_standalone"

    def __init__(self, holder: PolicyHolder, recorder: Recorder, health=None) -> None:
        self.holder = holder
        self.recorder = recorder
        self.ops = None
        if health is not None:
            from schoolgate.gateway.health import ops_app

            self.ops = ops_app(health)
        self.server: PortalHTTPServer | None = None
        self._live_streams = 2
        self._app = None
        self._key: tuple | None = None
        self._lock = threading.Lock()

    def load(self, loader) -> None:
        loader.add_option(
            "schoolgate_portal_port",
            int,
            0,
            "Also serve the portal on this port (0: only at the portal host through the proxy).",
        )
        loader.add_option(
            "schoolgate_portal_host",
            str,
            DEFAULT_PORTAL_HOST,
            "The address the portal's own port listens on (an IP address; :: or 0.0.0.0 for "
            "all). Default: loopback only.",
        )
        loader.add_option(
            "schoolgate_portal_threads", int, 4, "Worker threads of the portal's own port."
        )
        loader.add_option(
            "schoolgate_portal_connections",
            int,
            500,
            "Open connections to the portal's own port, in all (when full, the idlest closes).",
        )
        loader.add_option(
            "schoolgate_portal_connections_per_address",
            int,
            20,
            "Open connections to the portal's own port from one client address.",
        )
        loader.add_option(
            "schoolgate_portal_idle_timeout",
            int,
            60,
            "Seconds before an idle connection to the portal's own port is closed.",
        )
        loader.add_option(
            "schoolgate_portal_header_timeout",
            int,
            20,
            "Seconds a request to the portal's own port has to send its line and headers.",
        )

    def configure(self, updated) -> None:
        from mitmproxy import ctx, exceptions

        if "schoolgate_portal_host" in updated:
            try:
                ipaddress.ip_address(ctx.options.schoolgate_portal_host)
            except ValueError:
                raise exceptions.OptionsError(
                    "schoolgate_portal_host (--portal-host) must be an IP address, not "
                    f"{ctx.options.schoolgate_portal_host!r}"
                ) from None
        limits = self.limits(ctx.options)
        problems = limits.problems()
        if problems:
            raise exceptions.OptionsError("portal port: " + "; ".join(problems))
        # The console's live streams may hold at most half the server's threads.
        self._live_streams = max(1, limits.threads // 2)

    @staticmethod
    def limits(options) -> PortalServerLimits:
        return PortalServerLimits(
            threads=options.schoolgate_portal_threads,
            connections=options.schoolgate_portal_connections,
            per_address=options.schoolgate_portal_connections_per_address,
            idle_timeout=float(options.schoolgate_portal_idle_timeout),
            header_timeout=float(options.schoolgate_portal_header_timeout),
        )

    def _current(self):
        policy = self.holder.policy
        settings = portal_settings(policy)
        key = (
            id(self.recorder.sessions),
            self.recorder.secret,
            json.dumps(settings, sort_keys=True, default=str),
        )
        with self._lock:
            if key != self._key or self._app is None:
                self._app = build_app(
                    self.holder,
                    self.recorder.sessions,
                    self.recorder.secret,
                    settings,
                    trust_user_header=False,
                    admin=True,
                    live_streams=self._live_streams,
                )
                self._key = key
            return self._app

    def _wsgi(self, environ, start_response):
        environ.pop("HTTP_" + _USER_KEY, None)
        if self.ops is not None and environ.get("PATH_INFO", "") in OPS_PATHS:
            return self.ops(environ, start_response)
        return self._current()(environ, start_response)

    def running(self) -> None:
        from mitmproxy import ctx

        port = ctx.options.schoolgate_portal_port
        if not port or self.server is not None or self.holder.policy is None:
            return
        host = ctx.options.schoolgate_portal_host
        self._current()
        try:
            self.server = PortalHTTPServer(self._wsgi, host, port, self.limits(ctx.options))
        except OSError as exc:
            log.error("schoolgate: cannot serve the portal on %s: %s", _url(host, port), exc)
            return
        self.server.start()
        log.info("schoolgate: portal also served at %s", _url(host, port))

    def done(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
