"""The connections each person has open, so that a lockout or ban can close them.

A ban stops new requests at once, but a tunnel that is not decrypted (a visitor's HTTPS, a
site under ``interception.no_intercept``, an allowed raw destination) or a WebSocket carries on
for as long as it is open, without another request the gateway could refuse. So the
circumvention guard notes every tunnel and WebSocket a subject opens (not those to the portal or
the essentials), and when a lockout or ban comes into force for the subject, here or read from
the database, their connections are closed the way mitmproxy's own inactivity timeout closes
one: the task that reads from the client is cancelled, and everything behind it closes with it.
The client's next connection meets the suspension.
"""

from __future__ import annotations

import logging
import weakref

from mitmproxy import connection, ctx

log = logging.getLogger(__name__)


def close_client(client: connection.Client) -> bool:
    """Close a live client connection (and its server connections); False if it is gone."""
    try:
        server = ctx.master.addons.get("proxyserver")
    except AttributeError:  # no master (a test without one)
        return False
    handler = getattr(server, "connections", {}).get(client.id) if server is not None else None
    if handler is None:
        return False
    io = handler.transports.get(handler.client)
    task = io.handler if io is not None else None
    if task is None or task.done():
        return False
    task.cancel("suspended by schoolgate")
    return True


class OpenTunnels:
    """Subject -> the client connections it has open (weakly held: a closed connection
    drops out by itself) and the host each goes to."""

    def __init__(self, close=close_client) -> None:
        self.close = close
        self._by_subject: dict[str, weakref.WeakKeyDictionary[connection.Client, str]] = {}

    def opened(self, subject: str | None, client: connection.Client, host: str) -> None:
        if subject is None:
            return
        held = self._by_subject.get(subject)
        if held is None:
            if len(self._by_subject) >= 50_000:
                self._forget_closed()
            held = self._by_subject[subject] = weakref.WeakKeyDictionary()
        held[client] = host

    def _forget_closed(self) -> None:
        for subject in [s for s, held in self._by_subject.items() if not held]:
            del self._by_subject[subject]

    def subjects(self) -> list[str]:
        """The subjects with a connection open."""
        self._forget_closed()
        return list(self._by_subject)

    def open_for(self, subject: str) -> list[tuple[connection.Client, str]]:
        held = self._by_subject.get(subject)
        return list(held.items()) if held else []

    def cut(self, subject: str) -> int:
        """Close every connection ``subject`` has open; how many were closed."""
        held = self._by_subject.pop(subject, None)
        if not held:
            return 0
        return sum(1 for client in list(held) if self.close(client))
