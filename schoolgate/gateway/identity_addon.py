"""Who is browsing, without a proxy password: the identity sources in the running gateway.

One addon owns them all (:mod:`schoolgate.bindings`), started in ``running()`` from the
policy's ``identity`` section:

* the in-memory copy of the bindings table (:class:`~schoolgate.bindings.cache.BindingCache`),
  which the policy's identity resolver reads on every request (``resolver.use_live``);
* the writer thread for the sources' database writes;
* the DHCP lease files (device names; a device leaving an address ends its sign-in);
* the RADIUS accounting listener (``identity.radius.listen``), in one process only: with
  ``--workers N`` the first worker runs it (``schoolgate_radius=false`` in the others; every
  worker reads the bindings it stores within half a second);
* Windows single sign-on (``Proxy-Authenticate: Negotiate``) in explicit-proxy mode: each
  handshake step runs in a thread, keyed by the client connection, forgotten on disconnect;
  the user of a connection that completed it is its proxy login (``flow.metadata["proxyauth"]``,
  so every other part sees it as one), and its address is bound (``bind_address``);
* the sign-in page's service (the portal's ``/sign-in`` finds it in
  :func:`schoolgate.bindings.live.current`), and the redirect there: a device on a network
  that requires sign-in, that no source knows, is sent to sign in (plain HTTP, and HTTPS
  that is intercepted; HTTPS that is not is refused: see docs/identity.md).

mitmproxy's own ``proxyauth`` and ``identity.negotiate`` both ask for proxy credentials with a
407: the gateway refuses to start with both (mitmproxy's answers first, so Negotiate would
never be offered).

Changes to ``identity.radius``, ``sign_in``, ``negotiate`` or ``dhcp`` take effect when the
gateway restarts (a reload logs that); ``identity.sources``' order and the sign-in networks
follow a reload: a new policy is given this process's bindings before it is in force
(:meth:`IdentitySourcesAddon.policy_changed`), so no hook decides without them.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import weakref
from collections.abc import Awaitable
from typing import TYPE_CHECKING
from urllib.parse import quote

from mitmproxy import connection, ctx, exceptions, http
from mitmproxy.proxy import mode_specs

from schoolgate.bindings.live import LiveIdentity, install
from schoolgate.core.identity import SIGN_IN_REQUIRED
from schoolgate.core.identity_settings import IdentitySources
from schoolgate.gateway.flowmark import SIGN_IN, FlowMark, is_own, put_mark
from schoolgate.gateway.holder import PolicyHolder
from schoolgate.gateway.pages import page
from schoolgate.gateway.recorder import Recorder

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from schoolgate.bindings.negotiate import Handshakes
    from schoolgate.bindings.radius import RadiusListener
    from schoolgate.bindings.writer import BindingWriter

log = logging.getLogger(__name__)

RADIUS_OPTION = "schoolgate_radius"
SIGN_IN_PATH = "/sign-in"
_HTML = {"content-type": "text/html; charset=utf-8", "cache-control": "no-store"}


def _sources(policy) -> IdentitySources:
    from schoolgate.core.config import identity_sources_of

    return identity_sources_of(policy) if policy is not None else IdentitySources()


def _explicit(flow: http.HTTPFlow) -> bool:
    return isinstance(
        flow.client_conn.proxy_mode, (mode_specs.RegularMode, mode_specs.UpstreamMode)
    )


def sign_in_url(portal_host: str, target: str | None = None) -> str:
    url = f"http://{portal_host}{SIGN_IN_PATH}"
    if target:
        url += "?next=" + quote(target[:2000], safe="")
    return url


class IdentitySourcesAddon:
    name = "schoolgate_identity"

    def __init__(self, holder: PolicyHolder, recorder: Recorder) -> None:
        self.holder = holder
        self.recorder = recorder
        self.live: LiveIdentity | None = None
        self.started: IdentitySources | None = None
        self._sessions: sessionmaker[Session] | None = None  # the sources were started on it
        self._writer: BindingWriter | None = None
        self._radius: RadiusListener | None = None
        self._handshakes: Handshakes | None = None
        # Connections that completed a Negotiate handshake: their user, for every later
        # request on them (the requests inside a CONNECT tunnel included).
        self._authenticated: weakref.WeakKeyDictionary[connection.Client, str] = (
            weakref.WeakKeyDictionary()
        )
        self._tunnels: weakref.WeakSet[connection.Client] = weakref.WeakSet()
        holder.subscribe(self)

    # -- options --------------------------------------------------------------------------------
    def load(self, loader) -> None:
        loader.add_option(
            RADIUS_OPTION,
            bool,
            True,
            "Run the RADIUS accounting listener (identity.radius) in this process.",
        )

    def configure(self, updated) -> None:
        if "proxyauth" in updated or self.started is None:
            sources = _sources(self.holder.policy)
            if sources.negotiate is not None and getattr(ctx.options, "proxyauth", None):
                raise exceptions.OptionsError(
                    "schoolgate: identity.negotiate (Windows single sign-on) and the proxyauth "
                    "option both ask browsers for proxy credentials; use one of them "
                    "(docs/identity.md)"
                )

    # -- starting and stopping ------------------------------------------------------------------
    def running(self) -> None:
        # Under the holder's install lock: a policy being installed meanwhile gets the
        # bindings too (its listeners run under that lock, before it is in force).
        with self.holder.install_lock:
            self._start(self.holder.policy)

    def _start(self, policy) -> None:
        sources = _sources(policy)
        self.started = sources
        if not (sources.sources or sources.dhcp):
            return
        sessions = self.recorder.sessions
        if sessions is None:
            raise RuntimeError("the identity sources need the database, which is not open")
        self._sessions = sessions
        from schoolgate.bindings.cache import BindingCache
        from schoolgate.bindings.writer import BindingWriter

        cache = BindingCache(sessions, order=sources.sources)
        live = self.live = LiveIdentity(sources, cache=cache)  # done() stops what started
        writer = BindingWriter(after_write=cache.wake)
        writer.start()
        self._writer = writer
        cache.refresh()  # the bindings in force before the first request is decided
        cache.start()
        if sources.dhcp is not None and sources.dhcp.files:
            live.leases = self._start_leases(sources, sessions, writer)
        if sources.sign_in is not None:
            live.sign_in = self._sign_in_service(sources, sessions, live)
        if sources.negotiate is not None:
            from schoolgate.bindings.negotiate import Handshakes, NegotiateAcceptor

            self._handshakes = Handshakes(NegotiateAcceptor(sources.negotiate))
            live.negotiate_counts.update(challenged=0, completed=0, refused=0)
        if sources.radius is not None and getattr(ctx.options, RADIUS_OPTION, True):
            self._start_radius(sources, sessions, writer, live)
        install(live)
        if policy is not None:
            policy.resolver.use_live(live)
        log.info(
            "schoolgate: identity sources %s%s",
            ", ".join(sources.sources) or "none",
            " and DHCP leases" if live.leases is not None else "",
        )

    def _start_leases(self, sources, sessions, writer):
        from schoolgate.bindings.dhcp import LeaseWatcher
        from schoolgate.bindings.sessions import apply_lease_changes
        from schoolgate.storage.bindings import in_transaction
        from schoolgate.storage.db import utcnow

        def on_change(old, new) -> None:
            def work() -> None:
                ended = in_transaction(
                    sessions, lambda db: apply_lease_changes(db, old, new, utcnow())
                )
                for binding in ended:
                    log.info("schoolgate: ended %s (DHCP)", binding.describe())

            if not writer.submit(work):
                log.warning("schoolgate: the binding writer is busy; a lease change was skipped")

        watcher = LeaseWatcher(
            sources.dhcp.files, check_seconds=sources.dhcp.check_seconds, on_change=on_change
        )
        watcher.check()
        watcher.start()
        return watcher

    def _sign_in_service(self, sources, sessions, live: LiveIdentity):
        from schoolgate.bindings.accounts import Passwords, PortalAccounts
        from schoolgate.bindings.directory import Directory
        from schoolgate.bindings.sessions import SignInService

        settings = sources.sign_in
        directory = Directory(settings.directory) if settings.directory is not None else None
        accounts = (
            PortalAccounts(sessions, settings.portal_accounts_role)
            if settings.portal_accounts_role
            else None
        )
        leases = live.leases
        return SignInService(
            sessions,
            settings,
            directory=Passwords(directory, accounts),  # type: ignore[arg-type]
            devices=leases.lease if leases is not None else None,
            on_change=live.cache.wake if live.cache is not None else None,
        )

    def _start_radius(self, sources, sessions, writer, live: LiveIdentity) -> None:
        from schoolgate.bindings.radius import RadiusListener, accounting_store

        store = accounting_store(writer, sessions, sources.radius)
        listener = RadiusListener(sources.radius, store)
        listener.start()  # OSError: the port is taken; the gateway does not start
        self._radius = listener
        live.radius_counters = lambda: listener.counters
        log.info("schoolgate: RADIUS accounting on %s:%d (UDP)", *(listener.address or ("?", 0)))

    def done(self) -> None:
        self._stop()

    def _stop(self) -> None:
        install(None)
        if self._radius is not None:
            self._radius.stop()
            self._radius = None
        live = self.live
        if live is not None:
            if live.leases is not None:
                live.leases.stop()
            if live.cache is not None:
                live.cache.stop()
        if self._writer is not None:
            self._writer.stop()
            self._writer = None
        self._handshakes = None

    def policy_changed(self, old, new) -> None:
        """Give a new policy this process's bindings, before it is in force; a new database
        (``database.url``) restarts the sources on it."""
        if self.live is not None and self.recorder.sessions is not self._sessions:
            log.info("schoolgate: the database changed; the identity sources restart on it")
            self._stop()
            self.live = None
            self._start(new)
            new.resolver.use_live(self.live)
            return
        live = self.live
        sources = _sources(new)
        if live is not None and live.cache is not None and sources.sources:
            live.cache.reorder(sources.sources)
        new.resolver.use_live(live)
        if self.started is not None and _running_parts(sources) != _running_parts(self.started):
            log.warning(
                "schoolgate: identity.radius, sign_in, negotiate or dhcp changed: the change "
                "takes effect when the gateway restarts"
            )

    # -- Windows single sign-on -----------------------------------------------------------------
    # Both hooks return a coroutine only when there is a handshake to step (the dispatcher
    # awaits it): without Negotiate, nothing is awaited on the request path.
    def http_connect(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if self._handshakes is not None and flow.response is None and _explicit(flow):
            return self._negotiate_connect(flow)
        return None

    async def _negotiate_connect(self, flow: http.HTTPFlow) -> None:
        await self._negotiate(flow)
        if flow.response is None:
            self._tunnels.add(flow.client_conn)

    def requestheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if self._handshakes is None or flow.response is not None or not _explicit(flow):
            return None
        user = self._authenticated.get(flow.client_conn)
        if user is not None:
            flow.metadata["proxyauth"] = (user, "")
            return None
        if flow.client_conn in self._tunnels:
            return None  # inside a CONNECT tunnel: the CONNECT was the place to ask
        return self._negotiate(flow)

    async def _negotiate(self, flow: http.HTTPFlow) -> None:
        from schoolgate.bindings.negotiate import NegotiateFailed

        assert self._handshakes is not None and self.live is not None
        client = flow.client_conn
        user = self._authenticated.get(client)
        if user is not None:
            flow.metadata["proxyauth"] = (user, "")
            return
        value = flow.request.headers.get("Proxy-Authorization")
        counts = self.live.negotiate_counts
        if not value:
            if self.live.binding(client.peername[0]) is not None:
                return  # a source knows this address: decided on its binding
            counts["challenged"] += 1
            flow.response = self._challenge(None)
            return
        del flow.request.headers["Proxy-Authorization"]  # never passed on upstream
        try:
            result = await asyncio.to_thread(self._handshakes.step, client.id, value)
        except NegotiateFailed as exc:
            counts["refused"] += 1
            log.info("schoolgate: Negotiate from %s refused: %s", client.peername[0], exc)
            flow.response = self._challenge(None, refused=True)
            return
        if not result.complete:
            assert result.token is not None  # an unfinished handshake answers with a token
            scheme = value.split(" ", 1)[0]
            flow.response = self._challenge(f"{scheme} {base64.b64encode(result.token).decode()}")
            return
        counts["completed"] += 1
        principal = result.principal
        assert principal is not None
        name = principal.name if principal.is_person else None
        if name is not None:
            self._authenticated[client] = name
            flow.metadata["proxyauth"] = (name, "")
        self._bind(client.peername[0], principal, result.protocol)

    def _bind(self, address: str, principal, protocol: str | None) -> None:
        live = self.live
        sources = self.started
        if live is None or sources is None or sources.negotiate is None:
            return
        if not sources.negotiate.bind_address or "negotiate" not in sources.sources:
            return
        from schoolgate.bindings.names import normalise_address
        from schoolgate.bindings.sessions import record_negotiate
        from schoolgate.storage.bindings import in_transaction
        from schoolgate.storage.db import utcnow

        try:
            address = normalise_address(address)
        except ValueError:
            return
        lease = live.leases.lease(address) if live.leases is not None else None
        sessions = self.recorder.sessions
        settings = sources.negotiate
        if sessions is None:  # never: the sources started on an open database
            return

        def work() -> None:
            in_transaction(
                sessions,
                lambda db: record_negotiate(
                    db,
                    address=address,
                    principal=principal,
                    protocol=protocol,
                    settings=settings,
                    now=utcnow(),
                    lease=lease,
                ),
            )

        if self._writer is None or not self._writer.submit(work):
            log.warning("schoolgate: the binding writer is busy; %s was not bound", address)

    def _challenge(self, token: str | None, *, refused: bool = False) -> http.Response:
        assert self._handshakes is not None
        headers = (
            [(b"Proxy-Authenticate", token.encode())]
            if token
            else [
                (b"Proxy-Authenticate", scheme.encode())
                for scheme in self._handshakes.acceptor.schemes()
            ]
        )
        policy = self.holder.policy
        portal = policy.settings.portal_host if policy is not None else "schoolgate.internal"
        sign_in = self.started is not None and self.started.sign_in is not None
        words = (
            "This device could not sign in to the school's web filter automatically."
            if refused
            else "The school's web filter needs to know who is using this device."
        )
        link = sign_in_url(portal) if sign_in else ""
        body = page("Sign in", "Sign in needed", words, link=link, link_text="Sign in here")
        response = http.Response.make(407, body, _HTML)
        for name, value in headers:
            response.headers.add(name.decode(), value.decode())
        return response

    def client_disconnected(self, client: connection.Client) -> None:
        if self._handshakes is not None:
            self._handshakes.forget(client.id)

    # -- the sign-in page -----------------------------------------------------------------------
    def request(self, flow: http.HTTPFlow) -> None:
        policy = self.holder.policy
        if (
            flow.response is not None
            or flow.error
            or policy is None
            or not policy.resolver.sign_in_networks
            or is_own(flow.metadata)
        ):
            return
        auth = flow.metadata.get("proxyauth")
        identity = policy.identify(flow.client_conn.peername[0], auth[0] if auth else None)
        if identity.source != SIGN_IN_REQUIRED:
            return
        portal = policy.settings.portal_host
        target = flow.request.pretty_url if flow.request.method in ("GET", "HEAD") else None
        url = sign_in_url(portal, target)
        put_mark(flow.metadata, FlowMark(action=SIGN_IN, client_ip=identity.client_ip))
        flow.response = http.Response.make(
            302 if flow.request.method in ("GET", "HEAD") else 303,
            page(
                "Sign in",
                "Sign in to use the internet",
                link=url,
                link_text="Sign in to the school's network",
            ),
            {**_HTML, "location": url},
        )


def _running_parts(sources: IdentitySources) -> tuple:
    return (sources.radius, sources.sign_in, sources.negotiate, sources.dhcp)
