"""Circumvention detection and sanctions in the running gateway.

:class:`CircumventionGuard` is one mitmproxy addon, placed after
:class:`~schoolgate.gateway.pages.GatewayPages` and before
:class:`~schoolgate.gateway.enforce.Enforcement`:

* ``http_connect``, ``tls_clienthello``, ``request`` (and ``tcp_start`` for tunnels that carry
  neither TLS nor HTTP) build :class:`~schoolgate.circumvention.TrafficFacts` and run the
  configured :class:`~schoolgate.circumvention.Detectors`. A finding is kept once per
  connection (its :attr:`~schoolgate.circumvention.CircumventionEvent.key`), recorded through
  the decision log's queue as an event of kind ``circumvention`` with all its evidence, and
  counted on the sanction :class:`~schoolgate.bans.Ladder`.
* A stage that puts a lockout or ban in force does so in memory at once; a background thread
  writes it to the database and re-reads the bans and supervision sessions in force every
  ``schoolgate_bans_interval`` seconds (a ban made by another gateway, the portal or the CLI,
  and a ban lifted, take effect within that time). Hooks never touch the database.
* A suspended subject's requests get the suspension page (``request``); tunnels that are not
  intercepted are refused at the CONNECT or the ClientHello. The portal and the configured
  essentials stay open. A warning stage shows the warning page once, on the next page load.
* While a supervision session runs, the user browses under the normal policy and every request
  is recorded (kind ``supervised``) with the session's id.

Anything that fails here is logged and lets the request go on to Enforcement, which decides it
(and fails closed itself): a broken detector must not open or close the internet.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from mitmproxy import connection, ctx, exceptions, http, tcp, tls

from schoolgate.bans import (
    DISABLED,
    BanBook,
    BanState,
    CircumventionSettings,
    Ladder,
    Outcome,
    SanctionSettings,
    Supervision,
    subject_for,
)
from schoolgate.circumvention import CircumventionEvent, Detectors, TrafficFacts
from schoolgate.core.words import wording_of
from schoolgate.eventlog import new_ref
from schoolgate.gateway.background import Periodic
from schoolgate.gateway.flowinfo import request_view
from schoolgate.gateway.holder import PolicyHolder
from schoolgate.gateway.recorder import Recorder
from schoolgate.hosts import normalize_host
from schoolgate.model import Identity

log = logging.getLogger(__name__)

# Sanction stages the e-safety team is told about (alert: a role that is not sanctioned).
ALERTED_ACTIONS = frozenset({"alert", "warn", "lockout", "ban"})
ALERT_TEXT = (
    "An attempt to get round the school's web filter reached the '{action}' stage.\n\n"
    "Who: {subject} ({role})\nWhen: {at}\nWhat: {summary} (detector {detector})\n"
    "Event reference: {ref}\nBan reference: {ban_ref}\n\n"
    "The evidence is in the decision log: schoolgate events --kind circumvention"
)

EVENT_KIND = "circumvention"
SUPERVISED_KIND = "supervised"
SUSPENDED_KIND = "suspended"
_TEXT = {"content-type": "text/plain; charset=utf-8", "cache-control": "no-store"}


def _user_of(flow: http.HTTPFlow) -> str | None:
    auth = flow.metadata.get("proxyauth")
    return auth[0] if auth else None  # never the password


def _url_of(request: http.Request) -> Callable[[], str]:
    return lambda: request.pretty_url


def _peer_ip(client: connection.Client) -> str | None:
    peer = client.peername
    return str(peer[0]) if peer else None


class CircumventionGuard:
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
        self._generation = -1
        self._seen: weakref.WeakKeyDictionary[connection.Client, set] = weakref.WeakKeyDictionary()
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
        self._sync()

    def running(self) -> None:
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        if not self._worker.started:
            self._sync()
            self.replay_recent()
            self.refresh()
            self._worker.start(getattr(ctx.options, "schoolgate_bans_interval", 3.0))

    def done(self) -> None:
        self._worker.stop(timeout=10)
        self.save_pending()  # anything still unwritten
        self.send_alerts()

    # -- settings -----------------------------------------------------------------------------
    def _sync(self) -> None:
        """Follow the policy in force (rebuilt when the holder loads a new one)."""
        policy = self.holder.policy
        if policy is None or self.holder.generation == self._generation:
            return
        self._generation = self.holder.generation
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

    def _inspect(
        self,
        client: connection.Client,
        facts: TrafficFacts,
        identity: Identity | None,
        *,
        user: str | None,
        url: str | Callable[[], str] | None,
        method: str | None,
    ) -> list[Outcome]:
        detectors = self.detectors
        if detectors is None:
            return []
        found = detectors.inspect(facts)
        if not found:
            return []
        seen = self._seen.get(client)
        if seen is None:
            seen = self._seen[client] = set()
        outcomes = []
        for event in found:
            if event.key in seen:
                continue
            seen.add(event.key)
            if callable(url):  # built only for evidence: pretty_url costs ~10 us a request
                url = url()
            outcomes.append(
                self._handle(event, facts, identity, client, user=user, url=url, method=method)
            )
        return outcomes

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
    ) -> Outcome:
        at = self.clock()
        client_ip = _peer_ip(client)
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
        )
        if outcome.ban is not None:
            with self._lock:
                self.book = self.book.with_ban(outcome.ban)
                self._unsaved.append((outcome.ban, role, client_ip))
            self._worker.wake()
            self._warnings.pop(subject, None)
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
        self._record_event(
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

    def _window(self, identity: Identity | None, at: datetime) -> tuple[str | None, str | None]:
        policy = self.holder.policy
        if policy is None or identity is None:
            return None, None
        try:
            window = policy.window(identity.site, at)
        except Exception:  # noqa: BLE001
            return None, None
        return window.kind, window.name

    def _record_event(
        self,
        event: CircumventionEvent,
        facts: TrafficFacts,
        identity: Identity | None,
        outcome: Outcome,
        *,
        ref: str,
        at: datetime,
        user: str | None,
        client_ip: str | None,
        url: str | None,
        method: str | None,
    ) -> None:
        from schoolgate.eventlog import _strip_url

        policy = self.holder.policy
        keep_paths = policy.settings.keep_paths if policy is not None else True
        window, window_name = self._window(identity, at)
        detail: dict[str, Any] = {
            **event.to_json(),
            "stage": facts.stage,
            "key": list(event.key),
            "sanction": outcome.to_json(),
        }
        if facts.sni is not None:
            detail["sni"] = facts.sni
        if facts.port is not None:
            detail["port"] = facts.port
        if identity is not None and (identity.rule or identity.source != "default"):
            detail["identity"] = f"{identity.source}: {identity.rule}"
        self.recorder.record(
            {
                "ref": ref,
                "at": at,
                "kind": EVENT_KIND,
                "action": outcome.action,
                "client_ip": client_ip,
                "user": (identity.user if identity is not None else None) or user,
                "role": identity.role if identity is not None else None,
                "group": identity.group if identity is not None else None,
                "site": identity.site if identity is not None else None,
                "method": method,
                "scheme": facts.scheme,
                "host": normalize_host(facts.host) if facts.host else None,
                "url": _strip_url(url, keep_paths) if url else None,
                "category": EVENT_KIND,
                "window": window,
                "window_name": window_name,
                "rule": f"circumvention detector {event.detector}",
                "reason": event.summary,
                "detail": detail,
            }
        )

    # -- hooks --------------------------------------------------------------------------------
    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response:
            return
        try:
            self._sync()
            user = _user_of(flow)
            host = flow.request.host
            self._tunnel[flow.client_conn] = (user, host)
            client_ip = _peer_ip(flow.client_conn)
            identity = self._identify(client_ip, user)
            facts = TrafficFacts(stage="connect", host=host, port=flow.request.port, scheme="https")
            self._inspect(flow.client_conn, facts, identity, user=user, url=None, method=None)
            if identity is None or self.exempt(host):
                return
            ban = self.book.suspended(self.subject_of(identity, user, client_ip), self.clock())
            policy = self.holder.policy
            if ban is not None and not policy.should_intercept(identity, host):
                ref = new_ref()
                flow.metadata["schoolgate"] = {
                    "ref": ref,
                    "action": "block",
                    "stage": "connect",
                    "suspended": ban.ref,
                }
                flow.response = http.Response.make(
                    403,
                    f"Internet access suspended by the school's filter: {ban.reason}\n"
                    f"Reference: {ref}\n",
                    _TEXT,
                )
        except Exception:  # noqa: BLE001 - Enforcement still decides
            log.exception("schoolgate: circumvention check of CONNECT failed")

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        try:
            self._sync()
            context = data.context
            client = context.client
            sni = data.client_hello.sni
            address = context.server.address
            port = address[1] if address else 443
            tunnel = self._tunnel.get(client)
            user = tunnel[0] if tunnel else None
            # Regular mode: the host the client asked the proxy for; transparent: the SNI.
            host = tunnel[1] if tunnel else (sni or "")
            client_ip = _peer_ip(client)
            identity = self._identify(client_ip, user)
            facts = TrafficFacts(
                stage="tls", host=host, port=port, sni=sni, scheme="https", tls_seen=True
            )
            self._inspect(client, facts, identity, user=user, url=None, method=None)
            name = sni or host
            if identity is None or not name or self.exempt(name):
                return
            ban = self.book.suspended(self.subject_of(identity, user, client_ip), self.clock())
            if ban is not None and not self.holder.policy.should_intercept(identity, name):
                data.ignore_connection = True
                context.server.error = f"access suspended by schoolgate: {ban.reason}"
        except Exception:  # noqa: BLE001
            log.exception("schoolgate: circumvention check of ClientHello failed")

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        """A tunnel that carries neither TLS nor HTTP (SSH, OpenVPN over port 443)."""
        try:
            if flow.client_conn.tls_established:
                return
            self._sync()
            address = flow.server_conn.address
            tunnel = self._tunnel.get(flow.client_conn)
            user = tunnel[0] if tunnel else None
            host = tunnel[1] if tunnel else (address[0] if address else "")
            client_ip = _peer_ip(flow.client_conn)
            identity = self._identify(client_ip, user)
            facts = TrafficFacts(
                stage="tls", host=host, port=address[1] if address else None, tls_seen=False
            )
            self._inspect(flow.client_conn, facts, identity, user=user, url=None, method=None)
        except Exception:  # noqa: BLE001
            log.exception("schoolgate: circumvention check of a TCP tunnel failed")

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error:
            return
        try:
            self._sync()
            req = flow.request
            view = request_view(req)
            headers = view.headers
            host = view.named_host or view.host
            policy = self.holder.policy
            if policy is not None and host == policy.settings.portal_host:
                return
            user = _user_of(flow)
            client_ip = _peer_ip(flow.client_conn)
            identity = self._identify(client_ip, user)
            # Positional (stage, host, port, sni, http_host, method, path, headers, scheme,
            # tls_seen): keywords cost a fifth more, on every request.
            facts = TrafficFacts(
                "request",
                view.host,
                view.port,
                flow.client_conn.sni,
                view.host_header,  # HTTP/2 and 3: the :authority, not among the headers
                view.method,
                view.path,
                headers,
                view.scheme,
                True if view.scheme == "https" else None,
            )
            self._inspect(
                flow.client_conn, facts, identity, user=user, url=_url_of(req), method=view.method
            )
            if identity is None:
                return
            subject = self.subject_of(identity, user, client_ip)
            # Most requests are from someone with no ban, lockout or warning: one lookup each.
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
                flow.metadata["schoolgate_supervision"] = {
                    "id": sup.id,
                    "ref": sup.ref,
                    "staff": sup.staff,
                    "subject": subject,
                    "user": identity.user or user,
                    "role": identity.role,
                    "site": identity.site,
                    "group": identity.group,
                }
                return
            if subject in self._warnings:
                self._maybe_warn(flow, subject, identity, now)
        except Exception:  # noqa: BLE001 - Enforcement still decides
            log.exception("schoolgate: circumvention check of a request failed")

    def _tz(self, identity: Identity):
        policy = self.holder.policy
        timetable = policy.timetables.get(identity.site) if policy is not None else None
        return timetable.tz if timetable is not None else None

    def _suspend(
        self, flow: http.HTTPFlow, ban: BanState, identity: Identity, subject: str, now: datetime
    ) -> None:
        from schoolgate.blockpage import wants_html
        from schoolgate.suspension import suspended_response_parts

        ref = new_ref()
        url = flow.request.pretty_url
        policy = self.holder.policy
        portal = policy.settings.portal_host if policy is not None else "schoolgate.internal"
        status, headers, body = suspended_response_parts(
            ban,
            url=url,
            ref=ref,
            portal_host=portal,
            appeal=self.sanctions.appeal,
            headers=flow.request.headers,
            essentials=self.sanctions.essentials,
            tz=self._tz(identity),
            now=now,
            school=wording_of(policy).school_name,
            group=identity.group,
        )
        flow.response = http.Response.make(status, body, headers)
        flow.metadata["schoolgate"] = {"ref": ref, "action": "block", "suspended": ban.ref}
        if wants_html(flow.request.headers):  # page loads only: not every background request
            from schoolgate.eventlog import _strip_url

            keep = policy.settings.keep_paths if policy is not None else True
            self.recorder.record(
                {
                    "ref": ref,
                    "at": now,
                    "kind": SUSPENDED_KIND,
                    "action": "block",
                    "client_ip": _peer_ip(flow.client_conn),
                    "user": identity.user,
                    "role": identity.role,
                    "group": identity.group,
                    "site": identity.site,
                    "method": flow.request.method,
                    "scheme": flow.request.scheme,
                    "host": normalize_host(flow.request.pretty_host),
                    "url": _strip_url(url, keep),
                    "rule": f"{ban.kind} {ban.ref}",
                    "reason": ban.reason,
                    "detail": {
                        "ban_ref": ban.ref,
                        "ban_id": ban.id,
                        "subject": subject,
                        "until": ban.ends.isoformat() if ban.ends else None,
                    },
                }
            )

    def _maybe_warn(
        self, flow: http.HTTPFlow, subject: str, identity: Identity, now: datetime
    ) -> None:
        from schoolgate.blockpage import wants_html
        from schoolgate.suspension import warning_response_parts

        summary, ref, at = self._warnings[subject]
        if now - at > timedelta(minutes=self.sanctions.window_minutes):
            del self._warnings[subject]
            return
        if flow.request.method not in ("GET", "HEAD") or not wants_html(flow.request.headers):
            return
        del self._warnings[subject]
        policy = self.holder.policy
        portal = policy.settings.portal_host if policy is not None else "schoolgate.internal"
        blocked = False
        if policy is not None:
            match = policy.matcher.lookup(
                normalize_host(flow.request.pretty_host), flow.request.path
            )
            blocked = match is not None and match.category == self.circumvention.category
        next_stage = next((s for s in self.sanctions.stages if s.action != "warn"), None)
        next_step = ""
        if next_stage is not None:
            next_step = f"More attempts within {self.sanctions.window_minutes} minutes lead to " + (
                "a short lockout." if next_stage.action == "lockout" else "a ban."
            )
        status, headers, body = warning_response_parts(
            summary,
            url=flow.request.pretty_url,
            ref=ref,
            portal_host=portal,
            blocked=blocked,
            next_step=next_step,
            who=identity.user,
            tz=self._tz(identity),
            now=now,
            school=wording_of(policy).school_name,
        )
        flow.response = http.Response.make(status, body, headers)
        flow.metadata["schoolgate"] = {"ref": ref, "action": "block" if blocked else "warn"}

    def response(self, flow: http.HTTPFlow) -> None:
        sup = flow.metadata.get("schoolgate_supervision")
        if not sup:
            return
        try:
            from schoolgate.eventlog import _strip_url

            policy = self.holder.policy
            keep = policy.settings.keep_paths if policy is not None else True
            decided = flow.metadata.get("schoolgate") or {}
            blocked = decided.get("action") == "block"
            self.recorder.record(
                {
                    "ref": new_ref(),
                    "at": self.clock(),
                    "kind": SUPERVISED_KIND,
                    "action": "block" if blocked else "allow",
                    "client_ip": _peer_ip(flow.client_conn),
                    "user": sup.get("user"),
                    "role": sup.get("role"),
                    "group": sup.get("group"),
                    "site": sup.get("site"),
                    "method": flow.request.method,
                    "scheme": flow.request.scheme,
                    "host": normalize_host(flow.request.pretty_host),
                    "url": _strip_url(flow.request.pretty_url, keep),
                    "rule": f"supervision #{sup.get('id')} by {sup.get('staff')}",
                    "reason": f"supervised by {sup.get('staff')}",
                    "detail": {
                        "supervision_id": sup.get("id"),
                        "supervision_ref": sup.get("ref"),
                        "staff": sup.get("staff"),
                        "subject": sup.get("subject"),
                        "status": flow.response.status_code if flow.response else None,
                        "blocked_ref": decided.get("ref") if blocked else None,
                    },
                }
            )
        except Exception:  # noqa: BLE001
            log.exception("schoolgate: could not record a supervised request")

    def error(self, flow: http.HTTPFlow) -> None:
        if flow.metadata.get("schoolgate_supervision") and flow.response is None:
            self.response(flow)

    # -- the database (background thread) -----------------------------------------------------
    def save_pending(self) -> bool:
        """Write the bans made here that are not in the database yet (blocking)."""
        sessions = self.recorder.sessions
        if sessions is None:
            return False
        with self._lock:
            while self._unsaved:
                self._saving.append(self._unsaved.popleft())
            items = list(self._saving)
        if not items:
            return True
        from schoolgate.bans_store import save_bans

        try:
            with sessions() as session:
                save_bans(session, items)
                session.commit()
        except Exception:  # noqa: BLE001 - kept and retried
            log.exception("schoolgate: cannot save %d ban(s) yet; will retry", len(items))
            return False
        with self._lock:
            self._saving = [i for i in self._saving if i not in items]
        return True

    def send_alerts(self) -> bool:
        """Queue e-mails/webhooks to the e-safety team for the stages reached (blocking).

        They go into the portal's outbox in one transaction; its sender retries failures, and
        alerts that cannot even be queued stay here for the next round.
        """
        sessions = self.recorder.sessions
        policy = self.holder.policy
        if sessions is None or policy is None or not self._alerts:
            return True
        from schoolgate.portal.notify import notifier_for

        notifier = notifier_for(policy.settings.extra.get("notifications"), clock=self.clock)
        alerts = list(self._alerts)
        if notifier is None:
            log.warning(
                "schoolgate: %d circumvention alert(s) not sent: no notifications "
                "configured (notifications.smtp or notifications.webhook)",
                len(alerts),
            )
            for _ in alerts:
                self._alerts.popleft()
            return True
        try:
            with sessions() as session:
                for alert in alerts:
                    notifier.notify(
                        session,
                        audience="esafety",
                        event=f"circumvention.{alert['action']}",
                        subject=f"schoolgate: circumvention {alert['action']} for "
                        f"{alert['subject']}",
                        body=ALERT_TEXT.format(**alert),
                        ref=alert["ref"],
                    )
                session.commit()
        except Exception:  # noqa: BLE001 - kept and retried
            log.exception("schoolgate: cannot queue %d alert(s) yet; will retry", len(alerts))
            return False
        for _ in alerts:
            self._alerts.popleft()
        return True

    def refresh(self) -> bool:
        """Save what is pending, then read the bans and supervision sessions in force."""
        sessions = self.recorder.sessions
        if sessions is None:
            return False
        self.save_pending()
        self.send_alerts()
        from schoolgate.bans_store import bans_current, note_expired, supervisions_current

        now = self.clock()
        try:
            with sessions() as session:
                bans = bans_current(session, now)
                sups = supervisions_current(session, now)
                if note_expired(session, now):
                    session.commit()
        except Exception:  # noqa: BLE001 - keep the last good book
            if not self._failing:
                log.exception("schoolgate: cannot read bans; keeping the last ones read")
            self._failing = True
            return False
        if self._failing:
            log.info("schoolgate: reading bans again")
        self._failing = False
        with self._lock:
            stored = {b.ref for b in bans}
            local = [b for b, _, _ in (*self._saving, *self._unsaved) if b.ref not in stored]
            book = BanBook((*bans, *local), sups)
            if (book.bans, book.supervisions) != (self.book.bans, self.book.supervisions):
                log.info(
                    "schoolgate: %d ban(s) and %d supervision session(s) in force",
                    len(book.bans),
                    len(book.supervisions),
                )
            self.book = book
        self.refreshed_at = now
        self._read_others_attempts(sessions, now)
        return True

    def _read_others_attempts(self, sessions, now: datetime) -> None:
        """Circumvention events recorded since the last look (by any process on this
        database), handed to the event loop to be counted: the ladder is the loop's alone."""
        window_start = now - timedelta(minutes=self.sanctions.window_minutes)
        since = window_start
        if self._remote_since is not None:
            # events are written a moment after they happen: look back a little
            since = max(window_start, self._remote_since - timedelta(minutes=2))
        rows = self._recorded_attempts(sessions, since)
        if rows is None:
            return  # counted at the next look
        self._remote_since = now
        if not rows:
            return
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.count_recorded, rows, now)
        else:
            self.count_recorded(rows, now)

    @staticmethod
    def _recorded_attempts(sessions, since: datetime) -> list | None:
        """(ref, at, detail) of the circumvention events since ``since``; None if unreadable."""
        from sqlalchemy import select

        from schoolgate.db import EventRow

        try:
            with sessions() as session:
                return session.execute(
                    select(EventRow.ref, EventRow.at, EventRow.detail)
                    .where(EventRow.kind == EVENT_KIND, EventRow.at >= since)
                    .order_by(EventRow.at, EventRow.id)
                ).all()
        except Exception:  # noqa: BLE001
            log.exception("schoolgate: cannot read recent circumvention events")
            return None

    def count_recorded(self, rows, now: datetime | None = None) -> int:
        """Count (quietly: no stage fires for them) the recorded attempts in ``rows`` (ref, at,
        detail JSON) that this process has not counted yet; the next attempt, wherever it is
        made, meets the stage the total reaches. Returns how many were new."""
        import json

        now = now or self.clock()
        counted = self._counted
        new = 0
        for ref, at, text in rows:
            if ref in counted:
                continue
            counted[ref] = at
            try:
                detail = json.loads(text or "{}")
                self.ladder.observe(
                    detail["sanction"]["subject"],
                    tuple(detail.get("key") or ()),
                    int(detail.get("severity", 2)),
                    at=at,
                    quiet=True,
                )
                new += 1
            except (ValueError, KeyError, TypeError):
                continue
        cutoff = now - timedelta(minutes=self.sanctions.window_minutes + 5)
        if len(counted) > 256:
            self._counted = {r: at for r, at in counted.items() if at > cutoff}
        if new:
            log.info(
                "schoolgate: counted %d circumvention attempt(s) recorded by another gateway "
                "process (or before a restart)",
                new,
            )
        return new

    def replay_recent(self) -> int:
        """After a restart: count the circumvention events of the last window again (quietly:
        no stage fires for them), so that a restart does not reset the ladder."""
        sessions = self.recorder.sessions
        if sessions is None or self._replayed:
            return 0
        now = self.clock()
        since = now - timedelta(minutes=self.sanctions.window_minutes)
        rows = self._recorded_attempts(sessions, since)
        if rows is None:
            return 0
        count = self.count_recorded(rows, now)
        self._remote_since = now
        self._replayed = True
        return count

    def wake(self) -> None:
        self._worker.wake()
