"""schoolgate's enforcing gateway: mitmproxy addons, and the runner behind ``schoolgate run``.

One small addon per concern, in this order (each reads the ones before it):

* :class:`~schoolgate.gateway.holder.PolicyHolder`: the policy in force; reloads on change.
* :class:`~schoolgate.gateway.recorder.Recorder`: the database and the decision log.
* :class:`~schoolgate.gateway.jobs_addon.JobsAddon`: the scheduled jobs (expiry, escalation,
  list updates, reports, purge) in this process.
* :class:`~schoolgate.gateway.exception_cache.ExceptionCache`: exceptions in force.
* :class:`~schoolgate.gateway.pages.GatewayPages`: PAC file, CA download; marks portal requests.
* :class:`~schoolgate.gateway.portal_addon.PortalAddon`: the portal app at the portal host, and
  its notification sender.
* :class:`~schoolgate.gateway.circumvention_addon.CircumventionGuard`: circumvention detection,
  sanctions, and the suspension page for banned users (before any other decision).
* :class:`~schoolgate.gateway.enforce.Enforcement`: CONNECT, TLS and request decisions.
* :class:`~schoolgate.gateway.alerts_addon.AlertsAddon`: alerts to the e-safety team for blocks
  in alert and locked categories, batched (after Enforcement).
"""

from __future__ import annotations

from schoolgate.gateway.alerts_addon import AlertsAddon
from schoolgate.gateway.circumvention_addon import CircumventionGuard
from schoolgate.gateway.enforce import Enforcement
from schoolgate.gateway.exception_cache import ExceptionCache
from schoolgate.gateway.holder import PolicyHolder
from schoolgate.gateway.jobs_addon import JobsAddon
from schoolgate.gateway.pages import GatewayPages
from schoolgate.gateway.portal_addon import PortalAddon
from schoolgate.gateway.recorder import Recorder

__all__ = [
    "AlertsAddon",
    "JobsAddon",
    "CircumventionGuard",
    "Enforcement",
    "ExceptionCache",
    "GatewayPages",
    "PolicyHolder",
    "PortalAddon",
    "Recorder",
    "make_addons",
    "make_chain",
    "Services",
]


def make_addons() -> list:
    """A fresh, wired set of schoolgate's addons, in the order they must run."""
    holder = PolicyHolder()
    recorder = Recorder(holder)
    jobs = JobsAddon(holder, recorder)
    exceptions = ExceptionCache(recorder)
    pages = GatewayPages(holder, recorder)
    portal = PortalAddon(holder, recorder)
    guard = CircumventionGuard(holder, recorder)
    enforcement = Enforcement(holder, exceptions, recorder)
    alerts = AlertsAddon(holder, recorder)
    return [holder, recorder, jobs, exceptions, pages, portal, guard, enforcement, alerts]


class Services:
    """The addons that serve the others (policy, database, jobs, exceptions, own pages, portal)
    as children of one addon.

    mitmproxy offers every event (about eight a request) to every top-level addon, and each
    offer costs a coroutine, a context manager and a generator, whether or not the addon has
    that hook; a child costs a ``getattr``. Grouping six addons here saves ~40 offers a request.
    The guard, Enforcement and the alerts stay top-level: an exception in one child's hook
    skips its later siblings for that event, and the decision must never be skipped.
    """

    name = "schoolgate_services"

    def __init__(self, children: list) -> None:
        self.addons = children


def make_chain(addons: list | None = None) -> list:
    """The addons as mitmproxy should load them: :class:`Services`, then the guard,
    Enforcement and the alerts (``make_addons()`` keeps the flat list, for tests)."""
    addons = addons if addons is not None else make_addons()
    *services, guard, enforcement, alerts = addons
    assert isinstance(guard, CircumventionGuard) and isinstance(enforcement, Enforcement)
    assert isinstance(alerts, AlertsAddon)
    return [Services(services), guard, enforcement, alerts]
