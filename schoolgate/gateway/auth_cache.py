"""Proxy logins checked once, not on every request.

mitmproxy's ``proxyauth`` checks the ``Proxy-Authorization`` of every plain-HTTP request
again (a CONNECT tunnel is checked once), on the event loop. With an htpasswd file that is a
bcrypt hash each time (about 2 ms at Apache's default cost 5, 60 ms at cost 10, 240 ms at
cost 12: the whole gateway waits, for every pupil), and with LDAP a bind to the directory
for each request. :class:`ProxyAuthCache` wraps mitmproxy's validator so that a user name and
password that passed are remembered for ``schoolgate_proxyauth_cache`` seconds (default 300;
0 turns it off): later requests with the same login cost a keyed hash.

What is remembered: the user name and an HMAC-SHA256 of the password under a key made at
random when the gateway starts, never the password. Failed logins are not remembered (each is
checked again). A password changed or an account disabled in the directory stops working
when its entry ends (at most ``schoolgate_proxyauth_cache`` seconds later); setting the
option (or ``proxyauth``) again forgets everything.

Replacing the ``proxyauth`` addon's ``validator`` reaches inside mitmproxy, so it is done only on
the mitmproxy versions the tests cover (:mod:`schoolgate.borrowed`); on another, every login is
checked by mitmproxy as it would be without schoolgate, and a warning says so.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Callable

from mitmproxy import ctx, exceptions
from mitmproxy.addons import proxyauth

from schoolgate import borrowed

log = logging.getLogger(__name__)

MAX_LOGINS = 100_000  # a trust's users several times over; then the oldest go first


class CachedValidator:
    """mitmproxy's proxyauth validator (``inner``), with logins that passed remembered for
    ``seconds``."""

    def __init__(
        self,
        inner: Callable[[str, str], bool],
        seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_logins: int = MAX_LOGINS,
    ) -> None:
        self.inner = inner
        self.seconds = seconds
        self.clock = clock
        self.max_logins = max_logins
        self._key = os.urandom(32)
        # login -> when it ends; only mitmproxy's hooks use it, all on the event loop
        self._passed: dict[tuple[str, bytes], float] = {}

    def __call__(self, username: str, password: str) -> bool:
        digest = hmac.digest(self._key, password.encode("utf-8", "surrogateescape"), "sha256")
        login = (username, digest)
        now = self.clock()
        ends = self._passed.get(login)
        if ends is not None and ends > now:
            return True
        if not self.inner(username, password):
            return False
        if len(self._passed) >= self.max_logins:
            self._make_room(now)
        self._passed[login] = now + self.seconds
        return True

    def _make_room(self, now: float) -> None:
        for login, ends in list(self._passed.items()):
            if ends <= now:
                del self._passed[login]
        if len(self._passed) >= self.max_logins:  # still full: the oldest tenth go
            for login in list(self._passed)[: max(1, self.max_logins // 10)]:
                del self._passed[login]

    @property
    def remembered(self) -> int:
        # Not __len__: mitmproxy tests `if self.validator:`, and an empty cache must not read
        # as "no login required".
        return len(self._passed)


def _worth_caching(validator: object) -> bool:
    # "any" and a single user:password cost less than the keyed hash.
    return validator is not None and not isinstance(
        validator, (proxyauth.AcceptAll, proxyauth.SingleUser)
    )


def validator_shape_problem(auth: object) -> str | None:
    """What in mitmproxy's ``proxyauth`` addon ``auth`` differs from what the cache relies on
    (a ``validator`` attribute, None or called with the user name and password), or None."""
    if not isinstance(auth, proxyauth.ProxyAuth):
        return f"the proxyauth addon is a {type(auth).__name__}, not mitmproxy's ProxyAuth"
    if "validator" not in getattr(proxyauth.ProxyAuth, "__annotations__", {}):
        return "ProxyAuth has no validator attribute"
    for name in ("Validator", "AcceptAll", "SingleUser"):
        if not isinstance(getattr(proxyauth, name, None), type):
            return f"mitmproxy.addons.proxyauth has no {name}"
    validator = getattr(auth, "validator", None)
    if validator is not None and not callable(validator):
        return "ProxyAuth.validator is not callable"
    return None


class ProxyAuthCache:
    name = "schoolgate_proxyauth_cache"

    def load(self, loader) -> None:
        loader.add_option(
            "schoolgate_proxyauth_cache",
            float,
            300.0,
            "Seconds a proxy login (proxyauth: htpasswd or LDAP) that passed is remembered, "
            "so that it is not checked again on every plain-HTTP request; 0 checks every time.",
        )

    def configure(self, updated) -> None:
        if "schoolgate_proxyauth_cache" in updated:
            seconds = ctx.options.schoolgate_proxyauth_cache
            if not 0 <= seconds <= 86_400:
                raise exceptions.OptionsError(
                    f"schoolgate_proxyauth_cache must be between 0 and 86400 seconds, not {seconds}"
                )
        if not updated & {"proxyauth", "schoolgate_proxyauth_cache"}:
            return
        auth = ctx.master.addons.get("proxyauth")
        if auth is None:
            return
        if not borrowed.borrow(
            "the proxy login cache (mitmproxy's ProxyAuth.validator)",
            "mitmproxy",
            lambda: validator_shape_problem(auth),
            "mitmproxy checks every proxy login itself (a plain-HTTP request is checked again "
            "each time)",
        ):
            return
        validator = getattr(auth, "validator", None)
        if isinstance(validator, CachedValidator):
            validator = validator.inner  # a new cache: forget what the old one remembered
        seconds = ctx.options.schoolgate_proxyauth_cache
        if seconds > 0 and validator is not None and _worth_caching(validator):
            auth.validator = CachedValidator(validator, seconds)
            log.info(
                "schoolgate: proxy logins that pass are remembered for %g s "
                "(schoolgate_proxyauth_cache)",
                seconds,
            )
        else:
            auth.validator = validator
