"""The HTTP server of the portal's own port (``schoolgate run --portal-port``): waitress, with
limits for a port that any device on its network can reach.

Why waitress: one I/O thread reads each connection's request to its end before a worker thread
sees it, so an idle or slow client holds a socket, never a thread; a fixed pool of worker
threads (``threads``) runs the app. Werkzeug's development server, which this replaces, gave
every connection a thread of its own: 3,000 idle connections made 3,000 threads in the
gateway's process and left the proxy unresponsive for minutes.

Around waitress, for a port pupils' devices may reach (``bench/portal_bench.py --idle``
measures them):

* **per address**: at most ``per_address`` open connections from one client address; another
  is closed as soon as it is accepted;
* **in all**: at most ``connections``; when full, the connection idle longest (with no request
  being answered) is closed to make room, so a flood from many addresses cannot keep staff
  out (a browser reopens an idle keep-alive connection without a word);
* **time**: a connection idle for ``idle_timeout`` seconds is closed; a request's line and
  headers must arrive within ``header_timeout`` seconds of its first byte, and the whole
  request (a screenshot upload) within ``request_timeout``;
* refused connections are logged at most once a minute, in one line.

Each open connection costs one file descriptor of the gateway's process, so ``connections``
also bounds what the portal can take from the proxy.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer

log = logging.getLogger(__name__)

REPORT_EVERY = 60.0  # seconds between log lines about refused connections
ACCEPT_BATCH = 64  # connections accepted per wake-up of the I/O thread
_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


@dataclass(frozen=True)
class PortalServerLimits:
    threads: int = 4
    connections: int = 500
    per_address: int = 20
    idle_timeout: float = 60.0
    header_timeout: float = 20.0
    request_timeout: float = 300.0
    max_body_bytes: int = 6 * 1024 * 1024  # a 5 MB screenshot and the form around it
    max_header_bytes: int = 64 * 1024

    def problems(self) -> list[str]:
        """What is wrong with these limits (for the options' validation)."""
        out = []
        for name in ("threads", "connections", "per_address"):
            if getattr(self, name) < 1:
                out.append(f"{name} must be at least 1")
        for name in ("idle_timeout", "header_timeout", "request_timeout"):
            if getattr(self, name) <= 0:
                out.append(f"{name} must be more than 0 seconds")
        return out


class _Channel(HTTPChannel):
    """waitress's connection, remembering when the request it is reading began and which
    address it counts against."""

    request_started = 0.0
    counted_address: str | None = None

    def received(self, data: bytes) -> bool:
        if self.request is None and data:
            self.request_started = time.time()
        return super().received(data)

    def del_channel(self, map=None) -> None:  # noqa: A002 - waitress's name
        address, self.counted_address = self.counted_address, None
        if address is not None:
            self.server.forget(address)
        super().del_channel(map)


class PortalHTTPServer(TcpWSGIServer):
    """waitress's TCP server with the limits above. :meth:`start` serves in a thread of its
    own; :meth:`stop` closes every connection and stops the worker threads."""

    channel_class = _Channel

    def __init__(self, app, host: str, port: int, limits: PortalServerLimits) -> None:
        self.limits = limits
        self.open_per_address: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.evicted = 0
        self._next_report = 0.0
        self._paused_until = 0.0
        self._thread: threading.Thread | None = None
        adj = Adjustments(
            host=host,
            port=port,
            threads=limits.threads,
            # Our own limit closes the idlest connection instead; waitress's (which stops
            # accepting, leaving everyone else waiting) is only a backstop.
            connection_limit=limits.connections + 16,
            channel_timeout=limits.idle_timeout,
            cleanup_interval=max(1.0, min(limits.header_timeout, limits.idle_timeout) / 4),
            asyncore_use_poll=True,  # select() stops at 1,024 descriptors
            max_request_body_size=limits.max_body_bytes,
            max_request_header_size=limits.max_header_bytes,
            expose_tracebacks=False,
            ident="schoolgate",
        )
        super().__init__(app, map={}, adj=adj, sockinfo=adj.listen[0])

    # -- accepting ---------------------------------------------------------------------------
    def readable(self) -> bool:
        if time.time() < self._paused_until:
            return False
        return super().readable()

    def handle_accept(self) -> None:
        # Several at a time: a flood is taken off the listening queue (and refused) quickly.
        for _ in range(ACCEPT_BATCH):
            if not self._accept_one():
                return

    def _accept_one(self) -> bool:
        """Accept one connection (keep it or close it); False when there was none to take."""
        try:
            pair = self.accept()
        except OSError as exc:
            if exc.errno in _OUT_OF_DESCRIPTORS:
                # Out of file descriptors: leave new connections queued for a moment rather
                # than spinning on a listening socket that stays readable.
                self._paused_until = time.time() + 1.0
                log.warning("schoolgate: portal port: cannot accept connections: %s", exc)
            return False
        if pair is None:
            return False
        conn, addr = pair
        address = str(addr[0])
        if self.open_per_address[address] >= self.limits.per_address or (
            len(self.active_channels) >= self.limits.connections and not self._make_room()
        ):
            conn.close()
            self._note_refused(address)
            return True
        try:
            self.set_socket_options(conn)
            channel = self.channel_class(self, conn, addr, self.adj, map=self._map)
        except OSError:  # the client had already gone
            conn.close()
            return True
        channel.counted_address = address
        self.open_per_address[address] += 1
        return True

    def forget(self, address: str) -> None:
        """A connection from ``address`` closed."""
        left = self.open_per_address[address] - 1
        if left > 0:
            self.open_per_address[address] = left
        else:
            del self.open_per_address[address]

    def _make_room(self) -> bool:
        """Close the connection idle longest, if one is idle (no request being answered)."""
        idle = [
            c
            for c in self.active_channels.values()
            if not c.requests and not c.total_outbufs_len and not c.will_close
        ]
        if not idle:
            return False
        min(idle, key=lambda c: c.last_activity).handle_close()
        self.evicted += 1
        return True

    def _note_refused(self, address: str) -> None:
        self.refused[address] += 1
        now = time.time()
        if now < self._next_report:
            return
        self._next_report = now + REPORT_EVERY
        total = sum(self.refused.values())
        worst, count = self.refused.most_common(1)[0]
        log.warning(
            "schoolgate: portal port: refused %d connection(s) from %d address(es) over the "
            "limits (%d per address, %d in all); most from %s (%d)",
            total,
            len(self.refused),
            self.limits.per_address,
            self.limits.connections,
            worst,
            count,
        )
        self.refused.clear()

    # -- timeouts ----------------------------------------------------------------------------
    def maintenance(self, now: float) -> None:
        """waitress closes connections idle for ``idle_timeout``; this also closes those whose
        request is arriving too slowly (a few bytes now and then keep them from being idle)."""
        super().maintenance(now)
        for channel in self.active_channels.values():
            request = channel.request
            if request is None or channel.requests:
                continue
            waited = now - channel.request_started
            if waited > self.limits.request_timeout or (
                not request.headers_finished and waited > self.limits.header_timeout
            ):
                channel.will_close = True

    # -- running -----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="schoolgate-portal", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        # Closing happens in the I/O thread (the trigger runs it there); the loop then has
        # nothing left and returns.
        self.trigger.pull_trigger(lambda: wasyncore.close_all(self._map))
        if self._thread is not None:
            self._thread.join(timeout)
        self.task_dispatcher.shutdown(timeout=timeout)
