"""Windows single sign-on: the proxy's side of ``Proxy-Authorization: Negotiate`` (pyspnego).

A domain-joined Windows laptop (and Chrome, Edge, Firefox, curl on any system with a Kerberos
ticket) answers the proxy's ``407 Proxy-Authenticate: Negotiate`` with a SPNEGO token holding a
Kerberos service ticket for ``HTTP/<proxy host>``; the gateway decrypts it with that
principal's key from a keytab (``identity.negotiate.keytab``, exported from Active Directory
with ktpass or msktutil) and learns the user with no prompt and no call to a domain controller.

NTLM is what Windows falls back to when it cannot get a ticket (the proxy named by its IP
address, a missing SPN, a device not on the domain). Checking an NTLM answer needs the user's
password hash: without a helper on the domain controller's side (Squid uses Samba's winbind
``ntlm_auth``, which asks the DC over its secure channel) the only way is a local file of
hashes (``identity.negotiate.ntlm.users_file``: ``DOMAIN:user:password`` or smbpasswd lines),
which suits a handful of staff accounts, not a school's pupils; see docs/identity.md.

NTLM takes two requests on one connection (negotiate -> challenge -> authenticate), so the
handshakes in progress are kept per client connection (:class:`Handshakes`), bounded in number.

pyspnego and MIT Kerberos read the keytab, the NTLM file and the NTLM policy from the process
environment (``KRB5_KTNAME``, ``NTLM_USER_FILE``, ``LM_COMPAT_LEVEL``): the acceptor sets them
for this process. ``LM_COMPAT_LEVEL=5`` refuses LM and NTLMv1 answers (crackable offline).

Each step is a blocking call into GSSAPI (a decryption, and a write to the replay cache): the
gateway runs it in a thread, not on the event loop.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import spnego
from spnego.exceptions import SpnegoError

from schoolgate.bindings.names import Principal, UnusableName, parse_principal
from schoolgate.core.identity_settings import NegotiateSettings

log = logging.getLogger(__name__)

MAX_TOKEN_TEXT = 96 * 1024  # base64; Windows' MaxTokenSize is 48 000 bytes (large PACs)
HANDSHAKE_LIMIT = 10_000  # unfinished handshakes kept (one per client connection)


class NegotiateFailed(Exception):
    """The client's answer was refused: malformed, not for us, forged, or a realm we do not
    accept. The gateway answers 407 again (and never lets the request through unnamed)."""


@dataclass(frozen=True)
class StepResult:
    """One step of a handshake: a token to send back, and the principal once complete."""

    token: bytes | None  # for ``Proxy-Authenticate: <scheme> <base64>``
    principal: Principal | None = None
    name: str | None = None  # as the protocol gave it: pupil1@SCHOOL.LOCAL, SCHOOL\\pupil1
    protocol: str | None = None  # "kerberos" or "ntlm"

    @property
    def complete(self) -> bool:
        return self.principal is not None


def parse_authorization(value: str) -> tuple[str, bytes]:
    """``Negotiate <base64>`` / ``NTLM <base64>`` -> (scheme, token). Raises
    :class:`NegotiateFailed` for anything else."""
    scheme, _, data = value.strip().partition(" ")
    canonical = {"negotiate": "Negotiate", "ntlm": "NTLM"}.get(scheme.lower())
    if canonical is None:
        raise NegotiateFailed(f"not a Negotiate or NTLM answer ({scheme[:20]!r})")
    data = data.strip()
    if not data or len(data) > MAX_TOKEN_TEXT:
        raise NegotiateFailed(f"{canonical} answer with no token or an oversized one")
    try:
        token = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise NegotiateFailed(f"{canonical} token is not base64") from None
    return canonical, token


class NegotiateAcceptor:
    """Accepts Negotiate (Kerberos, or NTLM inside it) and plain NTLM handshakes."""

    def __init__(self, settings: NegotiateSettings) -> None:
        self.settings = settings
        os.environ["KRB5_KTNAME"] = f"FILE:{settings.keytab}"
        if settings.ntlm_users_file is not None:
            os.environ["NTLM_USER_FILE"] = str(settings.ntlm_users_file)
            os.environ["LM_COMPAT_LEVEL"] = "5"  # NTLMv2 only
        else:
            os.environ.pop("NTLM_USER_FILE", None)  # an inherited one must not enable NTLM

    @property
    def ntlm(self) -> bool:
        return self.settings.ntlm_users_file is not None

    def schemes(self) -> list[str]:
        """What the 407 offers, best first (one ``Proxy-Authenticate`` header each)."""
        return ["Negotiate", "NTLM"] if self.ntlm else ["Negotiate"]

    def new_context(self, scheme: str) -> Any:
        if scheme == "NTLM":
            if not self.ntlm:
                raise NegotiateFailed("NTLM is not enabled (identity.negotiate.ntlm)")
            return spnego.server(protocol="ntlm", options=spnego.NegotiateOptions.use_ntlm)
        # pyspnego's own SPNEGO layer: Kerberos through GSSAPI, NTLM in Python, the same on
        # every machine whatever GSSAPI plug-ins it has.
        return spnego.server(
            hostname=self.settings.service_host or "unspecified",
            service="HTTP",
            protocol="negotiate",
            options=spnego.NegotiateOptions.use_negotiate,
        )

    def step(self, context: Any, token: bytes) -> StepResult:
        try:
            out = context.step(token)
        except SpnegoError as exc:
            raise NegotiateFailed(f"token refused: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - any library error refuses the token
            raise NegotiateFailed(f"token refused ({type(exc).__name__}: {exc})") from None
        if not context.complete:
            return StepResult(out)
        protocol = getattr(context, "negotiated_protocol", None)
        name = context.client_principal
        if not name:
            raise NegotiateFailed("the handshake completed without a user name")
        if protocol == "ntlm" and not self.ntlm:
            # pyspnego refuses NTLM without a users file; never accept it by another path.
            raise NegotiateFailed("NTLM is not enabled (identity.negotiate.ntlm)")
        try:
            principal = parse_principal(name, keep_realm=self.settings.keep_realm)
        except UnusableName as exc:
            raise NegotiateFailed(f"unusable principal {name!r}: {exc}") from None
        realms = self.settings.realms
        if realms and (principal.realm or "").upper() not in realms:
            raise NegotiateFailed(f"{name!r} is not in an accepted realm ({', '.join(realms)})")
        return StepResult(out, principal, name, protocol)


class Handshakes:
    """Handshakes in progress by client connection (NTLM's second leg must use the context of
    its first). Bounded: the oldest unfinished ones are dropped first. Thread-safe."""

    def __init__(self, acceptor: NegotiateAcceptor, limit: int = HANDSHAKE_LIMIT) -> None:
        self.acceptor = acceptor
        self.limit = limit
        self._pending: OrderedDict[str, tuple[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def step(self, connection: str, authorization: str) -> StepResult:
        """Take one ``Proxy-Authorization`` value from ``connection``. Raises
        :class:`NegotiateFailed` (the handshake on that connection starts over)."""
        scheme, token = parse_authorization(authorization)
        with self._lock:
            held = self._pending.pop(connection, None)
        context = held[1] if held is not None and held[0] == scheme else None
        if context is None:
            context = self.acceptor.new_context(scheme)
        result = self.acceptor.step(context, token)  # NegotiateFailed: nothing kept
        if not result.complete:
            with self._lock:
                self._pending[connection] = (scheme, context)
                while len(self._pending) > self.limit:
                    self._pending.popitem(last=False)
        return result

    def forget(self, connection: str) -> None:
        """The connection closed."""
        with self._lock:
            self._pending.pop(connection, None)

    def __len__(self) -> int:
        return len(self._pending)
