"""schoolgate's enforcing gateway: mitmproxy addons, and the runner behind ``schoolgate run``.

One small addon per concern, in this order (each reads the ones before it):

* :class:`~schoolgate.gateway.holder.PolicyHolder`: the policy in force; reloads on change.
* :class:`~schoolgate.gateway.recorder.Recorder`: the database and the decision log.
* :class:`~schoolgate.gateway.jobs_addon.JobsAddon`: the scheduled jobs (expiry, escalation,
  list updates, reports, purge) in this process.
* :class:`~schoolgate.gateway.exception_cache.ExceptionCache`: exceptions in force.
* :class:`~schoolgate.gateway.pages.GatewayPages`: PAC file, CA download, portal placeholders.
* :class:`~schoolgate.gateway.circumvention_addon.CircumventionGuard`: circumvention detection,
  sanctions, and the suspension page for banned users (before any other decision).
* :class:`~schoolgate.gateway.enforce.Enforcement`: CONNECT, TLS and request decisions.
"""

from __future__ import annotations

from schoolgate.gateway.circumvention_addon import CircumventionGuard
from schoolgate.gateway.enforce import Enforcement
from schoolgate.gateway.exception_cache import ExceptionCache
from schoolgate.gateway.holder import PolicyHolder
from schoolgate.gateway.jobs_addon import JobsAddon
from schoolgate.gateway.pages import GatewayPages
from schoolgate.gateway.recorder import Recorder

__all__ = [
    "JobsAddon",
    "CircumventionGuard",
    "Enforcement",
    "ExceptionCache",
    "GatewayPages",
    "PolicyHolder",
    "Recorder",
    "make_addons",
]


def make_addons() -> list:
    """A fresh, wired set of schoolgate's addons, in the order they must run."""
    holder = PolicyHolder()
    recorder = Recorder(holder)
    jobs = JobsAddon(holder, recorder)
    exceptions = ExceptionCache(recorder)
    pages = GatewayPages(holder, recorder)
    guard = CircumventionGuard(holder, recorder)
    enforcement = Enforcement(holder, exceptions, recorder)
    return [holder, recorder, jobs, exceptions, pages, guard, enforcement]
