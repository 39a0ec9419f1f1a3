"""schoolgate's enforcing gateway: mitmproxy addons, and the runner behind ``schoolgate run``.

One small addon per concern, loaded into mitmproxy as one addon (:func:`make_chain`), in
this order (each reads the ones before it):

* :class:`~schoolgate.gateway.holder.PolicyHolder`: the policy in force; reloads on change and
  tells each new policy to the parts that subscribed (``policy_changed(old, new)``), in this
  order, before it is in force.
* :class:`~schoolgate.gateway.recorder.Recorder`: the database and the decision log.
* :class:`~schoolgate.gateway.limits.ConnectionLimits`: connections per client address, idle
  and slow-client timeouts, requests with too many headers (431).
* :class:`~schoolgate.gateway.jobs_addon.JobsAddon`: the scheduled jobs (expiry, escalation,
  list updates, reports, purge) in this process.
* :class:`~schoolgate.gateway.exception_cache.ExceptionCache`: exceptions in force.
* :class:`~schoolgate.gateway.pages.GatewayPages`: PAC file, CA download; marks portal requests.
* :class:`~schoolgate.gateway.portal_addon.PortalAddon`: the portal app at the portal host, and
  its notification sender.
* :class:`~schoolgate.gateway.identity_addon.IdentitySourcesAddon`: who is on which address
  (RADIUS, sign-in, Windows single sign-on, DHCP), and the redirect to the sign-in page.
* :class:`~schoolgate.gateway.destinations.DestinationCheck`: where each connection really
  goes (a Host or SNI checked against the destination with the gateway's own resolver), and
  every upstream connection made to an address that resolver gave.
* :class:`~schoolgate.gateway.circumvention_addon.CircumventionGuard`: circumvention detection,
  sanctions, and the suspension page for banned users (before any other decision).
* :class:`~schoolgate.gateway.fediverse_addon.FediverseWatch`: unlisted Fediverse servers
  recognised from their responses, treated as social media from then on.
* :class:`~schoolgate.gateway.enforce.Enforcement`: CONNECT, TLS and request decisions.
* :class:`~schoolgate.gateway.alerts_addon.AlertsAddon`: alerts to the e-safety team for blocks
  in alert and locked categories, batched (after Enforcement).
* :class:`~schoolgate.gateway.monitoring_addon.MonitoringAddon`: searches and page titles
  graded against the risk-term library and recorded (``search``, ``page_risk``); the DSL told
  of risk terms (after Enforcement, so that it knows what was blocked).
* :class:`~schoolgate.gateway.auth_cache.ProxyAuthCache`: proxy logins (``proxyauth``) checked
  once and remembered, not checked again on every plain-HTTP request.
* :class:`~schoolgate.gateway.health.HealthAddon`: counts requests and blocks (last, once they
  are decided), the event loop's pulse, and this process's heartbeat in the database.
"""

from __future__ import annotations

from schoolgate.gateway.alerts_addon import AlertsAddon
from schoolgate.gateway.auth_cache import ProxyAuthCache
from schoolgate.gateway.circumvention_addon import CircumventionGuard
from schoolgate.gateway.destinations import DestinationCheck
from schoolgate.gateway.dispatch import Schoolgate
from schoolgate.gateway.enforce import Enforcement
from schoolgate.gateway.exception_cache import ExceptionCache
from schoolgate.gateway.fediverse_addon import FediverseWatch
from schoolgate.gateway.health import HealthAddon
from schoolgate.gateway.holder import PolicyHolder
from schoolgate.gateway.identity_addon import IdentitySourcesAddon
from schoolgate.gateway.jobs_addon import JobsAddon
from schoolgate.gateway.limits import ConnectionLimits
from schoolgate.gateway.monitoring_addon import MonitoringAddon
from schoolgate.gateway.pages import GatewayPages
from schoolgate.gateway.portal_addon import PortalAddon
from schoolgate.gateway.recorder import Recorder

__all__ = [
    "AlertsAddon",
    "ConnectionLimits",
    "JobsAddon",
    "MonitoringAddon",
    "CircumventionGuard",
    "DestinationCheck",
    "Enforcement",
    "ExceptionCache",
    "FediverseWatch",
    "GatewayPages",
    "HealthAddon",
    "IdentitySourcesAddon",
    "PolicyHolder",
    "PortalAddon",
    "ProxyAuthCache",
    "Recorder",
    "make_addons",
    "make_chain",
    "Schoolgate",
]


def make_addons() -> list:
    """A fresh, wired set of schoolgate's addons, in the order they must run."""
    holder = PolicyHolder()
    recorder = Recorder(holder)
    limits = ConnectionLimits()
    jobs = JobsAddon(holder, recorder)
    exceptions = ExceptionCache(recorder)
    pages = GatewayPages(holder, recorder)
    portal = PortalAddon(holder, recorder)
    identity = IdentitySourcesAddon(holder, recorder)
    destinations = DestinationCheck(holder)
    guard = CircumventionGuard(holder, recorder)
    fediverse = FediverseWatch(holder, recorder)
    enforcement = Enforcement(holder, exceptions, recorder, detected=fediverse)
    alerts = AlertsAddon(holder, recorder)
    monitoring = MonitoringAddon(holder, recorder)
    logins = ProxyAuthCache()
    health = HealthAddon(holder, recorder, jobs, portal)
    return [
        holder,
        recorder,
        limits,
        jobs,
        exceptions,
        pages,
        portal,
        identity,
        destinations,
        guard,
        fediverse,
        enforcement,
        alerts,
        monitoring,
        logins,
        health,
    ]


def make_chain(addons: list | None = None) -> list:
    """The addons as mitmproxy should load them: one :class:`~schoolgate.gateway.dispatch.
    Schoolgate` addon that calls the parts in order, each part's failure kept from the others,
    a failure of any part on the way to a decision refusing the flow, and an answer waiting for
    the sanction events the recorder must sync first (``make_addons()`` keeps the flat list,
    for tests)."""
    addons = addons if addons is not None else make_addons()
    enforcement = next(a for a in addons if isinstance(a, Enforcement))
    recorder = next((a for a in addons if isinstance(a, Recorder)), None)
    if recorder is None:
        return [Schoolgate(addons, decider=enforcement)]
    return [
        Schoolgate(
            addons, decider=enforcement, barrier=recorder.durable_barrier, pending=recorder.durable
        )
    ]
