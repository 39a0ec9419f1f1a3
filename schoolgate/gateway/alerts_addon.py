"""Alerts to the designated safeguarding lead and e-safety team, in the running gateway.

:class:`AlertsAddon` is placed **after** :class:`~schoolgate.gateway.enforce.Enforcement`.
Its ``request``, ``http_connect`` and ``tls_clienthello`` hooks read the block Enforcement
describes (its :class:`~schoolgate.gateway.flowmark.FlowMark`, on the flow or, for a refused
ClientHello, on the ``ClientHelloData``) and, when its category is alerted (the
``alerts.categories`` and every locked category), put a
:class:`~schoolgate.jobs.alerts.BlockFact` on an in-memory queue: O(1), no lock held, no
database.

A background thread feeds the :class:`~schoolgate.jobs.alerts.AlertBatcher` from that queue, and
queues what it yields (the first block at once, then one digest per ``batch_minutes``) into
the portal's outbox in one transaction (``Notifier.notify(audience="esafety")``), from where
the outbox sender e-mails and posts them with retries. If the database cannot be reached the
alerts stay here and are tried again on the next round: nothing is lost. ``done()`` sends
the digests of the periods still open.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from mitmproxy import ctx, exceptions, http, tls

from schoolgate.core.policy import Policy
from schoolgate.gateway.background import Periodic
from schoolgate.gateway.flowmark import FlowMark, flow_mark, hello_mark
from schoolgate.gateway.holder import PolicyHolder
from schoolgate.gateway.recorder import Recorder
from schoolgate.jobs.alerts import Alert, AlertBatcher, AlertSettings, BlockFact, alerts_of, render

log = logging.getLogger(__name__)

INTERVAL_OPTION = "schoolgate_alerts_interval"


class AlertsAddon:
    name = "schoolgate_alerts"

    def __init__(
        self,
        holder: PolicyHolder,
        recorder: Recorder,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.holder = holder
        self.recorder = recorder
        self.clock = clock or (lambda: datetime.now(UTC))
        self.settings = AlertSettings()
        self.batcher = AlertBatcher(clock=self.clock)
        # Read by the hooks; replaced whole (never mutated) when the policy changes.
        self._wanted: frozenset[str] = frozenset()
        self._inbox: deque[BlockFact] = deque()  # hooks append, the thread pops
        self._outgoing: list[Alert] = []  # yielded, not yet in the outbox
        self._lock = threading.Lock()  # one pump at a time (the thread, done(), tests)
        self._worker = Periodic("schoolgate-alerts", self.pump, first=True)
        self._outbox = OutboxQueue(
            holder, recorder, audience="esafety", what="block alert", clock=self.clock
        )
        holder.subscribe(self)

    # -- mitmproxy lifecycle ------------------------------------------------------------------
    def load(self, loader) -> None:
        loader.add_option(
            INTERVAL_OPTION,
            float,
            5.0,
            "Seconds between checks for alert digests that are due (and retries of alerts "
            "that could not be queued).",
        )

    def configure(self, updated) -> None:
        if INTERVAL_OPTION in updated and getattr(ctx.options, INTERVAL_OPTION) <= 0:
            raise exceptions.OptionsError(f"{INTERVAL_OPTION} must be positive")

    def running(self) -> None:
        if not self._worker.started:
            self._worker.start(getattr(ctx.options, INTERVAL_OPTION, 5.0))

    def done(self) -> None:
        self._worker.stop(timeout=10)
        self.pump(final=True)

    # -- settings -----------------------------------------------------------------------------
    def policy_changed(self, old: Policy | None, new: Policy) -> None:
        """Alert the categories ``new`` alerts, batched as it says."""
        settings = alerts_of(new)  # read when the config was loaded: nothing to fail here
        self.settings = settings
        self._wanted = settings.alerted(new)

    # -- hooks (event loop: O(1), no database) ------------------------------------------------
    def _offer(self, mark: FlowMark) -> None:
        if not mark.blocked:
            return
        category = mark.category
        if category is None or category not in self._wanted or mark.alert_offered:
            return
        mark.alert_offered = True
        self._inbox.append(
            BlockFact(
                category=category,
                at=self.clock(),
                ref=mark.ref or "-",
                host=mark.host,
                user=mark.user,
                client_ip=mark.client_ip,
                role=mark.role,
                search_term=mark.search_term,
            )
        )
        self._worker.wake()

    def _hook(self, mark: FlowMark) -> None:
        try:
            self._offer(mark)
        except Exception:  # noqa: BLE001 - an alert failure must never touch the traffic
            log.exception("schoolgate: could not take a block for alerting")

    def request(self, flow: http.HTTPFlow) -> None:
        mark = flow_mark(flow.metadata)
        if mark is not None:  # an allowed request has none: nothing more to do
            self._hook(mark)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        mark = flow_mark(flow.metadata)
        if mark is not None:
            self._hook(mark)

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        mark = hello_mark(data)
        if mark is not None:
            self._hook(mark)

    # -- the background thread ----------------------------------------------------------------
    def pump(self, now: datetime | None = None, *, final: bool = False) -> bool:
        """Feed the batcher, take what is due (everything with ``final``) and queue it in the
        outbox. False if some alerts could not be queued yet (they are kept)."""
        with self._lock:
            self.batcher.configure(self._wanted, self._batch())
            while self._inbox:
                self.batcher.offer(self._inbox.popleft())
            now = now or self.clock()
            ready = self.batcher.flush(now) if final else self.batcher.due(now)
            self._outgoing.extend(ready)
            return self._send()

    def _batch(self) -> int:
        return self.settings.batch_minutes

    def _send(self) -> bool:
        return self._outbox.queue(
            self._outgoing,
            lambda alert, tz, school: render(alert, tz=tz, school=school),
            event=lambda alert: f"alert.{alert.kind}",
        )


class OutboxQueue:
    """Queues alerts in the portal's outbox for one audience, in one transaction, rendered
    in the school's zone: what :class:`AlertsAddon` and the monitoring's DSL alerts share.
    The alerts it queued are taken off the list it is given; if the database cannot be
    reached they stay there, to be tried again (the failure logged once, until it works)."""

    def __init__(
        self, holder: PolicyHolder, recorder: Recorder, *, audience: str, what: str, clock
    ) -> None:
        self.holder = holder
        self.recorder = recorder
        self.audience = audience
        self.what = what  # "block alert", for the log
        self.clock = clock
        self._failing = False

    def queue(
        self,
        pending: list[Any],
        render_one: Callable[[Any, Any, str], tuple[str, str]],
        *,
        event: Callable[[Any], str],
    ) -> bool:
        """False if some could not be queued yet (they are kept in ``pending``)."""
        if not pending:
            return True
        sessions = self.recorder.sessions
        policy = self.holder.policy
        if sessions is None or policy is None:
            return False
        from schoolgate.jobs.notify import notifier_for

        notifier = notifier_for(policy.settings.notifications, clock=self.clock)
        alerts = list(pending)
        if notifier is None:
            log.warning(
                "schoolgate: %d %s(s) not sent: no notifications configured "
                "(notifications.smtp or notifications.webhook)",
                len(alerts),
                self.what,
            )
            pending.clear()
            return True
        tz = _school_tz(policy)
        school = policy.settings.wording.school_name
        try:
            with sessions() as session:
                for alert in alerts:
                    subject, body = render_one(alert, tz, school)
                    notifier.notify(
                        session,
                        audience=self.audience,
                        event=event(alert),
                        subject=subject,
                        body=body,
                        ref=alert.ref,
                    )
                session.commit()
        except Exception:  # noqa: BLE001 - kept and retried on the next round
            if not self._failing:
                log.exception(
                    "schoolgate: cannot queue %d %s(s) yet; will retry", len(alerts), self.what
                )
            self._failing = True
            return False
        if self._failing:
            log.info("schoolgate: queueing %ss again", self.what)
        self._failing = False
        del pending[: len(alerts)]
        log.info("schoolgate: %d %s(s) queued for %s", len(alerts), self.what, self.audience)
        return True


def _school_tz(policy: Any):
    try:
        return policy.timetables[policy.resolver.default_site].tz
    except Exception:  # noqa: BLE001 - UTC will do
        return None
