"""The gateway's own resolver: the one place where a name becomes the address it connects to.

* The system's resolver (``getaddrinfo``: ``/etc/hosts``, then the school's DNS servers), as
  mitmproxy itself would use, run in asyncio's thread pool;
* before it, an optional hosts file of the gateway's own (mitmproxy option
  ``schoolgate_hosts_file``, the ``/etc/hosts`` format: ``address name [name ...]``), for a
  split-horizon name or a test's loopback origins; a name it lists never goes to DNS, and a
  name listed at ``0.0.0.0`` or ``::`` (as blocklist hosts files write it) has no address;
* a cache: an answer is used for ``schoolgate_dns_cache`` seconds (default 60), a name with no
  address is remembered for 30 seconds and a failed lookup for 5, so a warm connection adds no
  lookup, and concurrent lookups of one name share one query. Each name also keeps the
  addresses it had in the last half hour (``DnsAnswer.known``): a client's DNS cache may still
  hold one of them after the gateway's answer has moved on (round-robin and CDN names), and a
  connection to such an address is still the named site. When a lookup fails and the name had
  an answer in that time, the last answer is used.

Nothing here decides anything: :mod:`schoolgate.core.destination` judges the answers.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from math import inf
from pathlib import Path
from typing import Any

from schoolgate.core.authority import AuthorityError, address_host, parse_server_name
from schoolgate.core.destination import DnsAnswer

log = logging.getLogger(__name__)

NEGATIVE_SECONDS = 30.0
FAILED_SECONDS = 5.0
KEEP_SECONDS = 1800.0  # how long an address stays among a name's known addresses
LOOKUP_TIMEOUT = 5.0
MAX_NAMES = 65536
MAX_KNOWN = 64  # addresses kept a name

GetAddrInfo = Callable[[str], Awaitable[list[str]]]


class HostsFileError(ValueError):
    """A line of the hosts file that is not ``address name [name ...]``."""


def read_hosts_file(path: str | Path) -> dict[str, tuple[str, ...]]:
    """``name -> addresses`` from a file in the ``/etc/hosts`` format (comments with ``#``).
    Raises :class:`HostsFileError` naming the file and line of the first mistake."""
    names: dict[str, list[str]] = {}
    nowhere = {"0.0.0.0", "::"}
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            address = address_host(fields[0])
            if address is None:
                raise HostsFileError(f"{path}:{number}: {fields[0]!r} is not an IP address")
            if len(fields) < 2:
                raise HostsFileError(f"{path}:{number}: an address with no name")
            for raw in fields[1:]:
                try:
                    name = parse_server_name(raw)
                except AuthorityError as exc:
                    raise HostsFileError(f"{path}:{number}: {raw!r}: {exc}") from None
                listed = names.setdefault(name, [])
                if address not in nowhere and address not in listed:
                    listed.append(address)
    return {name: tuple(addresses) for name, addresses in names.items()}


class Resolver:
    def __init__(
        self,
        *,
        getaddrinfo: GetAddrInfo | None = None,
        clock: Callable[[], float] = time.monotonic,
        ttl: float = 60.0,
    ) -> None:
        # The query function (name -> addresses); None: the system's, through the event loop
        # it runs on (the loop's own getaddrinfo, from before install()).
        self.query = getaddrinfo
        self._installed: tuple[asyncio.AbstractEventLoop, Callable[..., Any]] | None = None
        self.clock = clock
        self.ttl = ttl
        self.hosts: dict[str, tuple[str, ...]] = {}
        self._listed: dict[str, DnsAnswer] = {}
        self._answers: dict[str, DnsAnswer] = {}
        self._known: dict[str, dict[str, float]] = {}  # name -> address -> last seen
        self._pending: dict[str, asyncio.Future[DnsAnswer]] = {}
        self.lookups = 0  # queries sent to the system resolver (for the benchmarks)
        self.hits = 0

    def configure(self, *, hosts: dict[str, tuple[str, ...]] | None = None, ttl: float) -> None:
        self.ttl = ttl
        if hosts is not None and hosts != self.hosts:
            self.hosts = hosts
            # Answers that never age (looked up "at" infinity): nothing to ask again.
            self._listed = {
                name: DnsAnswer(name, found, frozenset(found), None if found else "no_address", inf)
                for name, found in hosts.items()
            }
            self._answers.clear()

    def _fresh(self, answer: DnsAnswer, now: float) -> bool:
        if answer.error is None:
            life = self.ttl
        else:
            life = FAILED_SECONDS if answer.error == "failed" else NEGATIVE_SECONDS
        return now - answer.at < life

    def cached(self, name: str) -> DnsAnswer | None:
        """The answer for ``name`` if one is in the cache and fresh (no lookup)."""
        listed = self._listed.get(name)
        if listed is not None:
            return listed
        answer = self._answers.get(name)
        if answer is not None and self._fresh(answer, self.clock()):
            self.hits += 1
            return answer
        return None

    async def lookup(self, name: str, *, fresh: bool = False) -> DnsAnswer:
        """The answer for ``name``: from the cache unless ``fresh`` (a new query even if the
        cached answer is still fresh), else one query shared with anyone asking meanwhile."""
        if not fresh:
            answer = self.cached(name)
            if answer is not None:
                return answer
        elif name in self.hosts:
            return self.cached(name)  # type: ignore[return-value]
        pending = self._pending.get(name)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[DnsAnswer] = asyncio.get_running_loop().create_future()
        self._pending[name] = future
        try:
            answer = await self._query(name)
            future.set_result(answer)
        except BaseException as exc:  # noqa: BLE001 - cancelled: the others must not hang
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning if nobody waits
            raise
        finally:
            del self._pending[name]
        return answer

    async def _query(self, name: str) -> DnsAnswer:
        self.lookups += 1
        error = None
        try:
            raw = await asyncio.wait_for(self._system(name), LOOKUP_TIMEOUT)
        except socket.gaierror as exc:
            raw = []
            no_name = exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5))
            error = "no_address" if no_name else "failed"
            if not no_name:
                log.warning("schoolgate: cannot look up %s: %s", name, exc)
        except (TimeoutError, OSError) as exc:
            raw = []
            error = "failed"
            log.warning("schoolgate: cannot look up %s: %s", name, exc or "timed out")
        now = self.clock()
        addresses = tuple(dict.fromkeys(a for a in map(address_host, raw) if a))
        if error is None and not addresses:
            error = "no_address"
        known = self._remember(name, addresses, now)
        last = self._answers.get(name)
        if error == "failed" and known and last is not None and last.error is None:
            # The resolver is down for a moment: keep to what the name was lately, and ask
            # again when a failure would have been asked again.
            answer = DnsAnswer(name, last.addresses, known, None, now - self.ttl + FAILED_SECONDS)
        else:
            answer = DnsAnswer(name, addresses, known, error, now)
        if len(self._answers) >= MAX_NAMES:
            self._answers.clear()
            self._known.clear()
        self._answers[name] = answer
        return answer

    async def _system(self, name: str) -> list[str]:
        if self.query is not None:
            return await self.query(name)
        loop = asyncio.get_running_loop()
        lookup = self._installed[1] if self._installed is not None else loop.getaddrinfo
        infos = await lookup(name, None, type=socket.SOCK_STREAM)
        return [str(info[4][0]) for info in infos]

    # -- the event loop's resolver ----------------------------------------------------------
    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make ``loop.getaddrinfo`` this resolver for names (addresses go to the loop's own)."""
        if self._installed is not None:
            return
        self._installed = (loop, loop.getaddrinfo)
        loop.getaddrinfo = self.getaddrinfo  # type: ignore[method-assign]

    def uninstall(self) -> None:
        if self._installed is not None:
            loop, original = self._installed
            if loop.getaddrinfo == self.getaddrinfo:
                loop.getaddrinfo = original  # type: ignore[method-assign]
            self._installed = None

    async def getaddrinfo(
        self, host: Any, port: Any, *, family: int = 0, type: int = 0, proto: int = 0, flags=0
    ) -> list[tuple]:
        """``loop.getaddrinfo`` answered from this resolver for a name, and by the loop's
        own for an address (or no host)."""
        text = host.decode("idna") if isinstance(host, bytes) else host
        name = text.lower().rstrip(".") if text else ""
        if not name or address_host(name) is not None or self._installed is None:
            original = self._installed[1] if self._installed is not None else None
            if original is None:
                raise socket.gaierror(socket.EAI_FAIL, "the gateway's resolver is not running")
            return await original(host, port, family=family, type=type, proto=proto, flags=flags)
        answer = await self.lookup(name)
        if answer.error is not None or not answer.addresses:
            if answer.error == "failed":
                raise socket.gaierror(socket.EAI_AGAIN, f"cannot look up {name} just now")
            raise socket.gaierror(socket.EAI_NONAME, f"{name} has no address")
        if isinstance(port, bytes):
            port = port.decode("ascii")
        if isinstance(port, str):
            port = int(port) if port.isdigit() else socket.getservbyname(port)
        infos = []
        for address in answer.addresses:
            fam = socket.AF_INET6 if ":" in address else socket.AF_INET
            if family not in (0, socket.AF_UNSPEC, fam):
                continue
            sockaddr = (address, port or 0) if fam == socket.AF_INET else (address, port or 0, 0, 0)
            infos.append((fam, type or socket.SOCK_STREAM, proto, "", sockaddr))
        if not infos:
            raise socket.gaierror(socket.EAI_ADDRFAMILY, f"{name} has no address of that family")
        return infos

    def _remember(self, name: str, addresses: Iterable[str], now: float) -> frozenset[str]:
        seen = self._known.get(name)
        if seen is None:
            seen = self._known[name] = {}
        for address in addresses:
            seen[address] = now
        cutoff = now - KEEP_SECONDS
        stale = [a for a, at in seen.items() if at < cutoff]
        for address in stale:
            del seen[address]
        while len(seen) > MAX_KNOWN:
            del seen[min(seen, key=seen.__getitem__)]
        return frozenset(seen)
