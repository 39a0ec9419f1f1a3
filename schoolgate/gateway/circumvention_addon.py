"""Circumvention detection and sanctions in the running gateway.

:class:`CircumventionGuard` is one mitmproxy addon, placed after
:class:`~schoolgate.gateway.pages.GatewayPages` and before
:class:`~schoolgate.gateway.enforce.Enforcement`:

* ``http_connect``, ``tls_clienthello``, ``request`` (and ``tcp_start`` for tunnels that carry
  neither TLS nor HTTP) build :class:`~schoolgate.circumvention.TrafficFacts` and run the
  configured :class:`~schoolgate.circumvention.Detectors` (a request that
  :meth:`~schoolgate.circumvention.Detectors.quiet` proves holds nothing, the usual case, is
  not inspected further: its names found nothing before under the same policy, and its path
  and headers carry no sign any detector looks for). A finding is kept once per
  connection (its :attr:`~schoolgate.circumvention.CircumventionEvent.key`), recorded through
  the decision log's queue as an event of kind ``circumvention`` with all its evidence, and
  counted on the sanction :class:`~schoolgate.core.sanctions.Ladder`: once an attempt, however many
  findings it makes (a connection's CONNECT, ClientHello and first request are one attempt).
* The findings that block a filtered role (DoH, DoT, a web proxy, Tor) and the sites shown
  through a wrapper are left on the flow for Enforcement (:mod:`~schoolgate.gateway.findings`).
* A stage that puts a lockout or ban in force does so in memory at once, and closes the
  tunnels and WebSockets the subject has open (:mod:`~schoolgate.gateway.tunnels`); a
  background thread (:mod:`~schoolgate.gateway.ban_sync`) writes it to the database and re-reads
  the bans and supervision sessions in force every ``schoolgate_bans_interval`` seconds (a ban
  made by another gateway, the portal or the CLI, and a ban lifted, take effect within that
  time, and close what is open too). Hooks never touch the database.
* A suspended subject's requests get the suspension page (``request``); tunnels that are not
  intercepted are refused at the CONNECT or the ClientHello. The portal and the configured
  essentials stay open. A warning stage shows the warning page once, on the next page load,
  and no lockout or ban comes before the pupil has seen it
  (:mod:`~schoolgate.gateway.sanction_pages`).
* While a supervision session runs, the user browses under the normal policy and every request
  is recorded (kind ``supervised``) with the session's id.

Nothing here catches its own failures: a detector or hook that raises makes the dispatch refuse
the traffic with the page that says the filter failed (it could not be checked), and a detector
that failed still has the others' findings recorded.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

from mitmproxy import connection, ctx, exceptions, http, tcp, tls

from schoolgate.circumvention import CircumventionEvent, Detectors, DetectorsFailed, TrafficFacts
from schoolgate.core.circumvention_settings import CircumventionSettings
from schoolgate.core.destination import Destination
from schoolgate.core.hosts import normalize_host
from schoolgate.core.model import Identity
from schoolgate.core.policy import Policy
from schoolgate.core.sanctions import (
    DISABLED,
    BanBook,
    BanState,
    Ladder,
    Outcome,
    SanctionSettings,
    Supervision,
    subject_for,
)
from schoolgate.gateway.attempt_record import attempt_record
from schoolgate.gateway.background import Periodic
from schoolgate.gateway.ban_sync import BanSync
from schoolgate.gateway.findings import mark
from schoolgate.gateway.flowinfo import (
    RequestView,
    is_address,
    request_view,
    target_host,
    user_of,
)
from schoolgate.gateway.flowmark import BLOCK, FlowMark, SupervisionMark, put_mark, supervise
from schoolgate.gateway.holder import PolicyHolder
from schoolgate.gateway.recorder import Recorder
from schoolgate.gateway.sanction_pages import (
    SanctionPages,
    peer_ip,
    refused_destination,
)
from schoolgate.gateway.tunnels import OpenTunnels
from schoolgate.storage.eventlog import new_ref

log = logging.getLogger(__name__)

# Sanction stages the e-safety team is told about (alert: a role that is not sanctioned).
ALERTED_ACTIONS = frozenset({"alert", "warn", "lockout", "ban"})

_TEXT = {"content-type": "text/plain; charset=utf-8", "cache-control": "no-store"}


_user_of = user_of


class _Attempt:
    """One attempt of a pupil's, which counts once on the ladder however many findings it
    makes: a connection's CONNECT, TLS ClientHello and first request together, or one later
    request on the connection. It counts with its most serious finding's points: a finding
    more serious than those counted so far (found at a later stage) adds only the difference."""

    __slots__ = ("points",)

    def __init__(self) -> None:
        self.points = 0.0


def _url_of(request: http.Request) -> Callable[[], str]:
    return lambda: request.pretty_url


class CircumventionGuard(SanctionPages, BanSync):
    name = "schoolgate_circumvention"

    def __init__(self, holder: PolicyHolder, recorder: Recorder, *, clock=None) -> None:
        self.holder = holder
        self.recorder = recorder
        self.clock = clock or (lambda: datetime.now(UTC))
        self.book = BanBook()
        self.circumvention = CircumventionSettings()
        self.sanctions: SanctionSettings = DISABLED
        self.detectors: Detectors | None = None
        self.ladder = Ladder(DISABLED, clock=self.clock)
        self.refreshed_at: datetime | None = None
        self._seen: weakref.WeakKeyDictionary[connection.Client, set] = weakref.WeakKeyDictionary()
        self._attempts: weakref.WeakKeyDictionary[connection.Client, _Attempt] = (
            weakref.WeakKeyDictionary()
        )
        self.tunnels = OpenTunnels()
        self._tunnel: weakref.WeakKeyDictionary[connection.Client, tuple[str | None, str]] = (
            weakref.WeakKeyDictionary()
        )
        self._warnings: dict[str, tuple[str, str, datetime]] = {}  # subject -> summary, ref, at
        # Stages that the e-safety team must hear about, sent from the background thread.
        self._alerts: deque[dict[str, str]] = deque()
        self._unsaved: deque[tuple[BanState, str | None, str | None]] = deque()
        self._saving: list[tuple[BanState, str | None, str | None]] = []
        self._lock = threading.Lock()
        self._worker = Periodic("schoolgate-bans", self.refresh)
        self._failing = False
        self._replayed = False
        # Attempts counted on the ladder, by event ref: this process's own and those that other
        # workers or gateways on the same database recorded (read back by refresh()), so that a
        # pupil's attempts count together wherever they land, and none counts twice.
        self._counted: dict[str, datetime] = {}
        self._remote_since: datetime | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        holder.subscribe(self)

    # -- mitmproxy lifecycle ------------------------------------------------------------------
    def load(self, loader) -> None:
        loader.add_option(
            "schoolgate_bans_interval",
            float,
            3.0,
            "Seconds between re-reads of the bans and supervision sessions in force.",
        )

    def configure(self, updated) -> None:
        if "schoolgate_bans_interval" in updated and ctx.options.schoolgate_bans_interval <= 0:
            raise exceptions.OptionsError("schoolgate_bans_interval must be positive")

    def running(self) -> None:
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        if not self._worker.started:
            self.replay_recent()
            self.refresh()
            self._worker.start(getattr(ctx.options, "schoolgate_bans_interval", 3.0))

    def done(self) -> None:
        self._worker.stop(timeout=10)
        self.save_pending()  # anything still unwritten
        self.send_alerts()

    # -- settings -----------------------------------------------------------------------------
    def policy_changed(self, old: Policy | None, policy: Policy) -> None:
        """Follow a new policy (the holder tells its listeners before it is in force)."""
        circ = policy.settings.circumvention or CircumventionSettings()
        sanctions = policy.settings.sanctions or SanctionSettings()
        category = circ.category
        matcher = policy.matcher

        def lookup(host: str) -> str | None:
            match = matcher.lookup(host, None)
            return match.entry if match is not None and match.category == category else None

        try:
            self.detectors = (
                Detectors(
                    circumvention_lookup=lookup,
                    allowed_ip_literals=circ.allowed_ip_literals,
                    allowed_ports=circ.allowed_ports,
                    enabled=circ.detectors,
                )
                if circ.enabled
                else None
            )
        except ValueError:
            log.exception("schoolgate: circumvention detectors not configured; all enabled")
            self.detectors = Detectors(circumvention_lookup=lookup)
        self.circumvention = circ
        self.sanctions = sanctions
        self.ladder.configure(sanctions)

    # -- what the gateway and the lead's wiring call ------------------------------------------
    def subject_of(
        self, identity: Identity | None, user: str | None = None, client_ip: str | None = None
    ) -> str | None:
        if identity is not None:
            return subject_for(identity.user or user, identity.client_ip or client_ip)
        return subject_for(user, client_ip)

    def suspended(
        self, identity: Identity, host: str | None = None, at: datetime | None = None
    ) -> BanState | None:
        """The lockout or ban that suspends this identity now (None: browse normally). With
        ``host``: None for the portal and the essentials."""
        if host is not None and self.exempt(host):
            return None
        return self.book.suspended(self.subject_of(identity), at or self.clock())

    def supervision_for(self, identity: Identity, at: datetime | None = None) -> Supervision | None:
        at = at or self.clock()
        subject = self.subject_of(identity)
        if self.book.ban_for(subject, at) is None:
            return None
        return self.book.supervision_for(subject, at)

    def exempt(self, host: str) -> bool:
        host = normalize_host(host)
        policy = self.holder.policy
        if policy is not None and host == policy.settings.portal_host:
            return True
        return self.sanctions.essential(host)

    # -- detection ----------------------------------------------------------------------------
    def _identify(self, client_ip: str | None, user: str | None) -> Identity | None:
        policy = self.holder.policy
        if policy is None:
            return None
        try:
            return policy.identify(client_ip, user)
        except Exception:  # noqa: BLE001
            log.exception("schoolgate: cannot identify %s", client_ip)
            return None

    def _attempt(self, client: connection.Client, stage: str) -> _Attempt:
        if stage == "request":
            # The first request of a connection is the attempt its CONNECT and TLS began;
            # every later request is an attempt of its own.
            return self._attempts.pop(client, None) or _Attempt()
        attempt = self._attempts.get(client)
        if attempt is None:
            attempt = self._attempts[client] = _Attempt()
        return attempt

    def _inspect(
        self,
        client: connection.Client,
        facts: TrafficFacts,
        identity: Identity | None | Callable[[], Identity | None],
        *,
        user: str | None,
        url: str | Callable[[], str] | None,
        method: str | None,
    ) -> list[CircumventionEvent]:
        """Run the detectors; record (and count, once an attempt) what is new on this
        connection; return everything found at this stage. If a detector failed, what the
        others found is recorded and the failure raised (the traffic is then refused)."""
        detectors = self.detectors
        if detectors is None:
            return []
        failure = None
        try:
            found = detectors.inspect(facts)
        except DetectorsFailed as exc:
            found, failure = exc.events, exc
        if found:
            if callable(identity):  # asked for only now: most traffic finds nothing
                identity = identity()
            self._handle_new(client, facts, identity, found, user=user, url=url, method=method)
        if failure is not None:
            raise failure
        return found

    def _handle_new(
        self,
        client: connection.Client,
        facts: TrafficFacts,
        identity: Identity | None,
        found: list[CircumventionEvent],
        *,
        user: str | None,
        url: str | Callable[[], str] | None,
        method: str | None,
    ) -> None:
        seen = self._seen.get(client)
        if seen is None:
            seen = self._seen[client] = set()
        attempt = self._attempt(client, facts.stage)
        # The most serious finding is the one the attempt counts with.
        for event in sorted(found, key=lambda e: -e.severity):
            if event.key in seen:
                continue
            seen.add(event.key)
            if callable(url):  # built only for evidence: pretty_url costs ~10 us a request
                url = url()
            more = self.sanctions.points_for(event.severity) - attempt.points
            outcome = self._handle(
                event,
                facts,
                identity,
                client,
                user=user,
                url=url,
                method=method,
                count=more > 0,
                points=more,
            )
            if outcome.counted:
                attempt.points += outcome.points

    def _handle(
        self,
        event: CircumventionEvent,
        facts: TrafficFacts,
        identity: Identity | None,
        client: connection.Client,
        *,
        user: str | None,
        url: str | None,
        method: str | None,
        count: bool = True,
        points: float | None = None,
    ) -> Outcome:
        at = self.clock()
        client_ip = peer_ip(client)
        subject = self.subject_of(identity, user, client_ip) or "device:unknown"
        ref = new_ref()
        self._counted[ref] = at
        role = identity.role if identity is not None else None
        sanctionable = self.sanctions.enabled and role in self.sanctions.roles
        outcome = self.ladder.observe(
            subject,
            tuple(event.key),
            event.severity,
            at=at,
            sanctionable=sanctionable,
            current=self.book.ban_for(subject, at),
            reason=event.summary,
            event_ref=ref,
            count=count,
            points=points,
        )
        if outcome.ban is not None:
            with self._lock:
                self.book = self.book.with_ban(outcome.ban)
                self._unsaved.append((outcome.ban, role, client_ip))
            self._worker.wake()
            self._warnings.pop(subject, None)
            self._cut_tunnels(subject, at)
        elif outcome.action == "warn":
            self._warnings[subject] = (event.summary, ref, at)
        if outcome.action in ALERTED_ACTIONS:
            self._alerts.append(
                {
                    "action": outcome.action,
                    "subject": subject,
                    "role": role or "unknown",
                    "summary": event.summary,
                    "detector": event.detector,
                    "ref": ref,
                    "at": at.isoformat(),
                    "ban_ref": outcome.ban.ref if outcome.ban else "",
                }
            )
            self._worker.wake()
        self.recorder.record(
            attempt_record(
                self.holder.policy,
                event,
                facts,
                identity,
                outcome,
                ref=ref,
                at=at,
                user=user,
                client_ip=client_ip,
                url=url,
                method=method,
            )
        )
        level = logging.WARNING if outcome.counted else logging.INFO
        log.log(
            level,
            "schoolgate: circumvention %s/%s by %s (%s): %s [%s] -> %s",
            event.detector,
            event.kind,
            subject,
            role,
            event.summary,
            ref,
            outcome.action,
        )
        return outcome

    # -- hooks --------------------------------------------------------------------------------
    # An exception here is not caught: the dispatch refuses the traffic (the filter could not
    # check it) and Enforcement records that.
    def _filtered(self, identity: Identity | None) -> bool:
        return self.circumvention.filters(identity.role if identity is not None else None)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response:
            return
        user = _user_of(flow)
        host = flow.request.host
        client = flow.client_conn
        self._tunnel[client] = (user, host)
        client_ip = peer_ip(client)
        identity = self._identify(client_ip, user)
        facts = TrafficFacts(
            stage="connect",
            host=host,
            port=flow.request.port,
            scheme="https",
            destination=refused_destination(flow),
        )
        found = self._inspect(client, facts, identity, user=user, url=None, method=None)
        if found:
            mark(flow, found, filtered=self._filtered(identity))
        if identity is None or self.exempt(host):
            return
        subject = self.subject_of(identity, user, client_ip)
        self.tunnels.opened(subject, client, host)
        ban = self.book.suspended(subject, self.clock())
        policy = self.holder.policy
        if ban is not None and (policy is None or not policy.should_intercept(identity, host)):
            ref = new_ref()
            put_mark(
                flow.metadata, FlowMark(action=BLOCK, ref=ref, stage="connect", suspended=ban.ref)
            )
            flow.response = http.Response.make(
                403,
                f"Internet access suspended by the school's filter: {ban.reason}\n"
                f"Reference: {ref}\n",
                _TEXT,
            )

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        context = data.context
        client = context.client
        sni = data.client_hello.sni
        address = context.server.address
        port = address[1] if address else 443
        tunnel = self._tunnel.get(client)
        user = tunnel[0] if tunnel else None
        # Regular mode: the host the client asked the proxy for; transparent: the SNI.
        host = tunnel[1] if tunnel else (sni or "")
        client_ip = peer_ip(client)
        identity = self._identify(client_ip, user)
        facts = TrafficFacts(
            stage="tls",
            host=host,
            port=port,
            sni=sni,
            scheme="https",
            tls_seen=True,
            destination=refused_destination(data),
        )
        found = self._inspect(client, facts, identity, user=user, url=None, method=None)
        if found:
            mark(data, found, filtered=self._filtered(identity))
        name = sni or host
        if identity is None or not name or self.exempt(name):
            return
        subject = self.subject_of(identity, user, client_ip)
        if tunnel is None:
            self.tunnels.opened(subject, client, name)
        ban = self.book.suspended(subject, self.clock())
        policy = self.holder.policy
        if ban is not None and (policy is None or not policy.should_intercept(identity, name)):
            data.ignore_connection = True
            context.server.error = f"access suspended by schoolgate: {ban.reason}"

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        """A tunnel that carries neither TLS nor HTTP (SSH, OpenVPN over port 443)."""
        if flow.client_conn.tls_established:
            return
        client = flow.client_conn
        address = flow.server_conn.address
        tunnel = self._tunnel.get(client)
        user = tunnel[0] if tunnel else None
        host = tunnel[1] if tunnel else (address[0] if address else "")
        client_ip = peer_ip(client)
        identity = self._identify(client_ip, user)
        facts = TrafficFacts(
            stage="tls", host=host, port=address[1] if address else None, tls_seen=False
        )
        self._inspect(client, facts, identity, user=user, url=None, method=None)
        if identity is None or self.exempt(host):
            return
        subject = self.subject_of(identity, user, client_ip)
        self.tunnels.opened(subject, client, host)
        ban = self.book.suspended(subject, self.clock())
        if ban is not None and not flow.server_conn.error:
            flow.server_conn.error = f"access suspended by schoolgate: {ban.reason}"

    def websocket_start(self, flow: http.HTTPFlow) -> None:
        """An open WebSocket is cut, with its connection, if its user is suspended later."""
        client_ip = peer_ip(flow.client_conn)
        user = _user_of(flow)
        identity = self._identify(client_ip, user)
        host = flow.request.host
        if identity is None or self.exempt(host):
            return
        self.tunnels.opened(self.subject_of(identity, user, client_ip), flow.client_conn, host)

    def _cut_tunnels(self, subject: str | None, at: datetime) -> None:
        """Close what ``subject`` has open (tunnels, WebSockets, kept-alive connections)
        now that a lockout or ban is in force for them: a ban is not only for new requests."""
        if subject is None or self.book.suspended(subject, at) is None:
            return
        cut = self.tunnels.cut(subject)
        if cut:
            log.info("schoolgate: closed %d open connection(s) of suspended %s", cut, subject)

    def cut_suspended(self) -> int:
        """Close the open connections of every subject suspended now (after the bans in
        force were read again: a ban made elsewhere, in the portal or the CLI)."""
        at = self.clock()
        total = 0
        for subject in self.tunnels.subjects():
            if self.book.suspended(subject, at) is not None:
                total += self.tunnels.cut(subject)
        if total:
            log.info("schoolgate: closed %d open connection(s) of suspended users", total)
        return total

    def _inspect_request(
        self,
        flow: http.HTTPFlow,
        view: RequestView,
        written: str,
        tls_seen: bool | None,
        destination: Destination | None,
    ) -> list[Identity | None]:
        """Run the detectors on a request; mark the flow with what they found. Returns the
        request's identity in a list if it was asked for (something was found), else []."""
        client = flow.client_conn
        user = _user_of(flow)
        client_ip = peer_ip(client)
        # Positional (stage, host, port, sni, http_host, method, path, headers, scheme,
        # tls_seen, destination): keywords cost a fifth more.
        facts = TrafficFacts(
            "request",
            written,
            view.port,
            client.sni,
            view.host_header,  # HTTP/2 and 3: the :authority, not among the headers
            view.method,
            view.path,
            view.headers,
            view.scheme,
            tls_seen,
            destination,
        )
        known: list[Identity | None] = []

        def who() -> Identity | None:
            if not known:
                known.append(self._identify(client_ip, user))
            return known[0]

        found = self._inspect(
            client, facts, who, user=user, url=_url_of(flow.request), method=view.method
        )
        if found:
            mark(flow, found, filtered=self._filtered(who()))
        return known

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error:
            return
        req = flow.request
        view = request_view(req)
        host = view.named_host or view.host
        policy = self.holder.policy
        if policy is not None and host == policy.settings.portal_host:
            return
        client = flow.client_conn
        # Who it is matters only to what was found, and to someone with a ban, lockout or
        # warning: most requests are neither, and skip it. Asked for once at most.
        known: list[Identity | None] | None = None
        detectors = self.detectors
        if detectors is not None:
            written = view.host
            named = view.named_host
            header = view.host_header  # (not None when it names a host)
            if named is not None and header is not None and named != written:
                if is_address(target_host(written)):
                    # Transparent mode (or a request to an address): the client wrote no host
                    # but the Host header; the address is the destination check's, not one to
                    # report.
                    written = header
            scheme = view.scheme
            tls_seen = True if scheme == "https" else None
            destination = refused_destination(flow) if flow.metadata else None
            # Most requests: the detectors are sure to find nothing (the same names found
            # nothing before, under this policy, and the path and headers carry no sign any
            # detector looks for); then neither facts nor findings are made.
            if destination is not None or not detectors.quiet(
                ("request", written, view.port, client.sni, header, scheme, tls_seen),
                view.path,
                view.headers,
            ):
                known = self._inspect_request(flow, view, written, tls_seen, destination)
        if not self.book.bans and not self._warnings:
            return  # no one is suspended, supervised (a ban's) or warned
        user = _user_of(flow)
        client_ip = peer_ip(client)
        identity = known[0] if known else self._identify(client_ip, user)
        if identity is None:
            return
        subject = self.subject_of(identity, user, client_ip)
        if subject is None:  # no user and no address: no one with a ban or warning
            return
        if not self.book.names(subject) and subject not in self._warnings:
            return
        if self.exempt(host):
            return
        now = self.clock()
        ban = self.book.suspended(subject, now)
        if ban is not None:
            self._suspend(flow, ban, identity, subject, now)
            return
        sup = self.book.supervision_for(subject, now)
        if sup is not None and self.book.ban_for(subject, now) is not None:
            supervise(
                flow.metadata,
                SupervisionMark(
                    id=sup.id,
                    ref=sup.ref,
                    staff=sup.staff,
                    subject=subject,
                    user=identity.user or user,
                    role=identity.role,
                    site=identity.site,
                    group=identity.group,
                ),
            )
            return
        if subject in self._warnings:
            self._maybe_warn(flow, subject, identity, now)
