"""What this process knows now of who is on which address, for the decisions and the portal.

:class:`LiveIdentity` is the gateway's side of the identity sources once they run: the bindings
copy in memory (:class:`~schoolgate.bindings.cache.BindingCache`), the DHCP leases
(:class:`~schoolgate.bindings.dhcp.LeaseWatcher`), the sign-in page's service and the RADIUS
listener's counters. The policy's identity resolver reads :meth:`LiveIdentity.binding` and
:meth:`LiveIdentity.device` on every request (dictionary look-ups); the portal's sign-in page
finds the process's one instance with :func:`current` (the portal runs in the gateway's
process, behind the same addon chain).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from schoolgate.core.binding import Binding

if TYPE_CHECKING:
    from schoolgate.bindings.cache import BindingCache
    from schoolgate.bindings.dhcp import LeaseWatcher
    from schoolgate.bindings.radius import RadiusCounters
    from schoolgate.bindings.sessions import SignInService
    from schoolgate.core.identity_settings import IdentitySources


@dataclass
class LiveIdentity:
    sources: IdentitySources
    cache: BindingCache | None = None
    leases: LeaseWatcher | None = None
    sign_in: SignInService | None = None
    radius_counters: Callable[[], RadiusCounters | None] = field(default=lambda: None)
    negotiate_counts: dict[str, int] = field(default_factory=dict)

    def binding(self, address: str) -> Binding | None:
        """The binding in force for ``address`` (first source in the configured order)."""
        cache = self.cache
        return cache.lookup(address) if cache is not None else None

    def device(self, address: str) -> str | None:
        """The device name a DHCP lease gives ``address`` (host name, else MAC address)."""
        leases = self.leases
        if leases is None:
            return None
        lease = leases.lease(address)
        return lease.device if lease is not None else None

    def wait_until(
        self, address: str, done: Callable[[Binding | None], bool], timeout: float = 3.0
    ) -> bool:
        """Until ``done(binding in force on address)`` in this process's copy, so that the page
        after a sign-in or sign-out is decided on it. Blocking: for the portal's threads.
        Whether it happened within ``timeout`` seconds."""
        cache = self.cache
        if cache is None:
            return False
        deadline = time.monotonic() + timeout
        while True:
            if done(cache.lookup(address, traffic=False)):
                return True
            if time.monotonic() >= deadline:
                return False
            cache.wake()
            time.sleep(0.02)

    def metrics(self) -> dict[str, int | float]:
        """Counters for a metrics exporter: ``radius_<counter>``, ``negotiate_<outcome>``,
        ``bindings_addresses``, ``bindings_failing`` (1 while the database cannot be read),
        ``dhcp_problems``."""
        out: dict[str, int | float] = {}
        counters = self.radius_counters()
        if counters is not None:
            out.update({f"radius_{k}": v for k, v in counters.snapshot().items()})
        out.update({f"negotiate_{k}": v for k, v in self.negotiate_counts.items()})
        if self.cache is not None:
            out["bindings_addresses"] = self.cache.addresses()
            out["bindings_failing"] = int(self.cache.failing)
        if self.leases is not None:
            out["dhcp_leases"] = len(self.leases.leases)
            out["dhcp_problems"] = len(self.leases.problems)
        return out


_current: LiveIdentity | None = None
_lock = threading.Lock()


def install(live: LiveIdentity | None) -> None:
    """Make ``live`` this process's (None: the identity sources stopped)."""
    global _current
    with _lock:
        _current = live


def current() -> LiveIdentity | None:
    return _current


def read_once(sources: IdentitySources, sessions) -> LiveIdentity:
    """The bindings in force and the DHCP leases as they are now, read once (blocking): for a
    command run on its own (``schoolgate explain --ip``), which has no gateway to follow."""
    from schoolgate.bindings.cache import BindingCache
    from schoolgate.bindings.dhcp import LeaseWatcher

    cache = BindingCache(sessions, order=sources.sources)
    if sources.sources and not cache.refresh():
        raise RuntimeError("cannot read the bindings from the database")
    leases = None
    if sources.dhcp is not None and sources.dhcp.files:
        leases = LeaseWatcher(sources.dhcp.files)
        leases.check()
    return LiveIdentity(sources, cache=cache, leases=leases)
