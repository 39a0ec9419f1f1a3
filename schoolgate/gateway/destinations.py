"""Where each connection really goes: checked before anything is decided on a name.

:class:`DestinationCheck` runs before the circumvention guard and Enforcement, and leaves its
verdict for them (:data:`DESTINATION`: a :class:`~schoolgate.core.destination.Destination` and
the :class:`~schoolgate.core.destination.Handling` for the person, in ``flow.metadata`` or, for
a TLS ClientHello, as the ``schoolgate_destination`` attribute of the hook's data):

* ``http_connect``: a CONNECT target that is not exactly one host and port is malformed.
* ``tls_clienthello``, for a connection that will not be decrypted: its SNI must name the
  destination. A client that chose an address (CONNECT to an IP, or any connection in
  transparent mode) must have chosen one of the SNI's addresses; a CONNECT to one name with the
  SNI of another must reach an address of both (the tunnel then goes to that address). A
  malformed SNI is malformed.
* ``request``: a Host header (or ``:authority``) that is not one host, or two of them, is
  malformed; a request to an address with a Host header naming a site must go to one of the
  site's addresses (the same check holds for intercepted TLS, where the SNI stands in when the
  Host names no site).
* every upstream connection to a name goes to an address from the gateway's resolver
  (:mod:`~schoolgate.gateway.resolver`, cached: a warm connection adds no lookup), so what was
  verified is what is reached.

A destination that fails (and is refused for the person's role) is described in the facts the
circumvention detectors see; Enforcement refuses it. Lookups are asynchronous: only a name not
in the cache makes a hook wait.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from mitmproxy import connection, ctx, exceptions, http, tls

from schoolgate.core.authority import AuthorityError, parse_authority, parse_server_name
from schoolgate.core.destination import (
    LOCAL,
    NAMED,
    VERIFIED,
    Destination,
    DnsAnswer,
    Handling,
    Verdict,
    first_shared,
    handling,
    malformed,
    verify,
)
from schoolgate.gateway.flowinfo import (
    address_target,
    is_address,
    remember_tunnel_user,
    request_view,
    target_host,
    tunnel_user,
    user_of,
)
from schoolgate.gateway.holder import PolicyHolder
from schoolgate.gateway.resolver import HostsFileError, Resolver, read_hosts_file

log = logging.getLogger(__name__)

DESTINATION = "schoolgate_destination"  # flow.metadata key / ClientHelloData attribute
# A cached answer older than this is asked again before a mismatch is refused: the client may
# have just had a newer answer than the gateway's.
RECHECK_AFTER = 5.0

Verdicts = tuple[Destination, Handling]


def destination_of(subject: Any) -> Verdicts | None:
    """The verdict :class:`DestinationCheck` left on a flow or a ClientHello, if any."""
    if isinstance(subject, tls.ClientHelloData):
        return getattr(subject, DESTINATION, None)
    return subject.metadata.get(DESTINATION)


def _names_a_server(hello: Any) -> bool:
    """Whether a ClientHello carries a server name extension (read or not)."""
    try:
        return any(kind == 0 for kind, _ in hello.extensions)
    except Exception:  # noqa: BLE001 - a hello mitmproxy could not take apart names nothing
        return False


def _peer(client: connection.Client) -> str | None:
    peer = client.peername
    return str(peer[0]) if peer else None


class DestinationCheck:
    name = "schoolgate_destinations"

    def __init__(self, holder: PolicyHolder, resolver: Resolver | None = None) -> None:
        self.holder = holder
        self.resolver = resolver or Resolver()
        # Address -> the verdict on a connection to it that names no site: the same on every
        # request to it for as long as the policy (its allowed_ip_literals) is the same one.
        self._unnamed: tuple[Any, dict[str, Destination]] = (None, {})

    # -- options ----------------------------------------------------------------------------
    def load(self, loader) -> None:
        loader.add_option(
            "schoolgate_hosts_file",
            str,
            "",
            "A hosts file (the /etc/hosts format) the gateway's resolver reads before DNS: "
            "names it lists never go to DNS.",
        )
        loader.add_option(
            "schoolgate_dns_cache",
            float,
            60.0,
            "Seconds the gateway's resolver keeps an answer (0: look up every new connection).",
        )

    def configure(self, updated) -> None:
        if "schoolgate_hosts_file" not in updated and "schoolgate_dns_cache" not in updated:
            return
        ttl = ctx.options.schoolgate_dns_cache
        if ttl < 0:
            raise exceptions.OptionsError("schoolgate_dns_cache must not be negative")
        path = ctx.options.schoolgate_hosts_file
        try:
            hosts = read_hosts_file(path) if path else {}
        except HostsFileError as exc:
            raise exceptions.OptionsError(f"schoolgate_hosts_file: {exc}") from None
        except OSError as exc:
            raise exceptions.OptionsError(
                f"schoolgate_hosts_file: cannot read {path}: {exc}"
            ) from None
        self.resolver.configure(hosts=hosts, ttl=ttl)

    # -- who, and what their role gets ------------------------------------------------------
    def _handling(self, destination: Destination, client_ip: str | None, user: str | None):
        policy = self.holder.policy
        if destination.ok:
            return Handling.PASS
        if policy is None:
            return Handling.REFUSE
        circ = policy.settings.circumvention
        role = policy.identify(client_ip, user).role
        filtered = circ.filters(role) if circ is not None else True
        to_name = circ is not None and circ.destination_mismatch == "connect_to_name"
        return handling(destination, filtered=filtered, connect_to_name=to_name)

    def _local(self, address: str) -> bool:
        policy = self.holder.policy
        circ = policy.settings.circumvention if policy is not None else None
        return circ is not None and circ.address_allowed(address)

    async def _answer(self, name: str, *, recheck: bool = False) -> DnsAnswer:
        answer = await self.resolver.lookup(name)
        if recheck and self.resolver.clock() - answer.at > RECHECK_AFTER:
            answer = await self.resolver.lookup(name, fresh=True)
        return answer

    def _verify(self, address: str, name: str | None) -> Destination | Awaitable[Destination]:
        """The verdict on ``address`` claiming to be ``name``: at once when the name's answer
        is cached and settles it, else a coroutine that looks it up."""
        if name is None or is_address(name):
            if name is not None and name != address:
                literal = DnsAnswer(name, (name,), frozenset({name}))
                return verify(address, name, literal, local=self._local)
            return self._verify_unnamed(address)
        answer = self.resolver.cached(name)
        if answer is not None:
            found = verify(address, name, answer, local=self._local)
            if found.verdict is not Verdict.MISMATCH or (
                self.resolver.clock() - answer.at <= RECHECK_AFTER
            ):
                return found
        return self._verify_later(address, name)

    def _verify_unnamed(self, address: str) -> Destination:
        """``verify(address, None, ...)``, remembered for the policy in force."""
        policy = self.holder.policy
        for_policy, known = self._unnamed
        if for_policy is not policy:
            known = {}
            self._unnamed = (policy, known)
        try:
            return known[address]
        except KeyError:
            found = known[address] = verify(address, None, None, local=self._local)
            if len(known) > 4096:
                known.clear()
            return found

    async def _verify_later(self, address: str, name: str) -> Destination:
        answer = await self._answer(name)
        found = verify(address, name, answer, local=self._local)
        if found.verdict is Verdict.MISMATCH and self.resolver.clock() - answer.at > RECHECK_AFTER:
            found = verify(address, name, await self._answer(name, recheck=True), local=self._local)
        return found

    # -- CONNECT --------------------------------------------------------------------------------
    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response:
            return
        remember_tunnel_user(flow.client_conn, user_of(flow))
        host = flow.request.host
        try:
            parse_authority(
                f"[{host}]:{flow.request.port}" if ":" in host else f"{host}:{flow.request.port}"
            )
        except AuthorityError as exc:
            found = malformed("the CONNECT target", str(exc))
            flow.metadata[DESTINATION] = (found, Handling.REFUSE)

    # -- TLS that will not be decrypted ---------------------------------------------------------
    def tls_clienthello(self, data: tls.ClientHelloData) -> Awaitable | None:
        context = data.context
        raw_sni = data.client_hello.sni
        sni = None
        if raw_sni is None and _names_a_server(data.client_hello):
            # mitmproxy leaves out a server name that is not a host name: it is there, unread.
            found = malformed("the TLS server name", "not a host name")
            setattr(data, DESTINATION, (found, Handling.REFUSE))
            return None
        if raw_sni is not None:
            try:
                sni = parse_server_name(raw_sni)
            except AuthorityError as exc:
                found = malformed(f"the TLS server name {raw_sni[:100]!r}", str(exc))
                setattr(data, DESTINATION, (found, Handling.REFUSE))
                return None
        address = context.server.address
        policy = self.holder.policy
        if not address or policy is None:
            return None  # nowhere to go / Enforcement fails closed
        client_ip = _peer(context.client)
        user = tunnel_user(context.client)
        target = target_host(address[0])
        if policy.should_intercept(policy.identify(client_ip, user), sni or target):
            return None  # decrypted: each request is checked
        if not is_address(target):
            if sni == target:
                return None  # the client named it, and the gateway resolves that name
            if sni is None:
                # Encrypted, undecrypted and naming no site: the server at the name may be a
                # shared one that serves any site asked for inside.
                found = Destination(
                    Verdict.NO_NAME,
                    target,
                    None,
                    f"an encrypted connection to {target} that names no site (no SNI), which "
                    "the filter cannot see into",
                )
                self._settle_tls(data, found, address[1], client_ip, user)
                return None
            return self._two_names(data, target, sni, address[1], client_ip, user)
        verdict = self._verify(target, sni)
        if isinstance(verdict, Destination):
            self._settle_tls(data, verdict, address[1], client_ip, user)
            return None
        return self._settle_tls_later(data, verdict, address[1], client_ip, user)

    async def _settle_tls_later(self, data, pending, port, client_ip, user) -> None:
        self._settle_tls(data, await pending, port, client_ip, user)

    def _settle_tls(
        self,
        data: tls.ClientHelloData,
        found: Destination,
        port: int,
        client_ip: str | None,
        user: str | None,
    ) -> None:
        action = self._handling(found, client_ip, user)
        if action is Handling.CONNECT_TO_NAME and found.answers:
            data.context.server.address = (found.answers[0], port)
        setattr(data, DESTINATION, (found, action))

    async def _two_names(self, data, target: str, sni: str, port: int, client_ip, user) -> None:
        """A CONNECT to ``target`` carrying TLS for ``sni``, not decrypted: it must reach an
        address of both names."""
        target_answer = await self._answer(target)
        sni_answer = await self._answer(sni)
        if sni_answer.error == "failed" or target_answer.error == "failed":
            found = verify(target, sni, None, local=self._local)
        else:
            shared = first_shared(target_answer.addresses, sni_answer)
            if shared is None and sni_answer.addresses:
                sni_answer = await self._answer(sni, recheck=True)
                shared = first_shared(target_answer.addresses, sni_answer)
            if shared is not None:
                data.context.server.address = (shared, port)
                return
            if sni_answer.error is not None:
                found = verify(target, sni, sni_answer, local=self._local)
            else:
                found = Destination(
                    Verdict.MISMATCH,
                    target,
                    sni,
                    f"the tunnel goes to {target}, which shares no address with {sni}",
                    sni_answer.addresses,
                )
        self._settle_tls(data, found, port, client_ip, user)

    # -- HTTP -----------------------------------------------------------------------------------
    def request(self, flow: http.HTTPFlow) -> Awaitable | None:
        if flow.response or flow.error:
            return None
        view = request_view(flow.request)
        if view.host_problem is not None:
            flow.metadata[DESTINATION] = (malformed("Host", view.host_problem), Handling.REFUSE)
            return None
        target = address_target(view.host)
        if target is None:
            return None  # NAMED: the gateway resolves the name itself
        name = view.named_host
        if (name is None or is_address(name)) and view.scheme == "https":
            sni = flow.client_conn.sni
            if sni:
                try:
                    name = parse_server_name(sni)
                except AuthorityError as exc:
                    flow.metadata[DESTINATION] = (malformed("SNI", str(exc)), Handling.REFUSE)
                    return None
        found = self._verify(target, name)
        if isinstance(found, Destination):
            self._settle(flow, found)
            return None
        return self._settle_later(flow, found)

    async def _settle_later(self, flow: http.HTTPFlow, pending: Awaitable[Destination]) -> None:
        self._settle(flow, await pending)

    def _settle(self, flow: http.HTTPFlow, found: Destination) -> None:
        if found is LOCAL or found is VERIFIED:
            return  # as NAMED: nothing for the others to do
        action = self._handling(found, _peer(flow.client_conn), user_of(flow))
        if action is Handling.CONNECT_TO_NAME and found.name is not None:
            # To the name (the Host header stays as the client wrote it): server_connect
            # resolves it with the gateway's resolver.
            flow.request.data.host = found.name
        flow.metadata[DESTINATION] = (found, action)

    # -- every upstream connection ----------------------------------------------------------
    def running(self) -> None:
        """From now on every name mitmproxy connects to is resolved by the gateway's resolver:
        the event loop's ``getaddrinfo`` (which asyncio's ``open_connection`` asks, and only
        for names) is replaced by :meth:`Resolver.getaddrinfo` for this loop. mitmproxy keeps
        the name as the connection's address, so it still reuses the connection for the next
        request to the name, and asyncio still tries each of the name's addresses in turn."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self.resolver.install(loop)

    def done(self) -> None:
        self.resolver.uninstall()


__all__ = ["DESTINATION", "NAMED", "DestinationCheck", "destination_of"]
