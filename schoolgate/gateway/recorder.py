"""The database and the decision log of the running gateway.

Opens the policy's database when the gateway starts, starts the background
:class:`~schoolgate.eventlog.EventLog` writer, and on shutdown flushes everything queued.
Hooks only ever call :meth:`Recorder.record`, which never blocks. A new policy that names
another database (``database.url``) moves the log there: the decisions from then on are
recorded in the new database, and what was queued for the old one is written there first.
"""

from __future__ import annotations

import logging

from mitmproxy import exceptions

from schoolgate.gateway.holder import PolicyHolder
from schoolgate.policy import Policy

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 15.0


class Recorder:
    name = "schoolgate_recorder"

    def __init__(self, holder: PolicyHolder) -> None:
        self.holder = holder
        self.sessions = None  # a sessionmaker once the database is open
        self.eventlog = None
        self.secret: bytes = b""
        self._url: str | None = None
        self._data_dir = None
        holder.subscribe(self)

    def configure(self, updated) -> None:
        policy = self.holder.policy
        if policy is None:
            return
        if self.eventlog is None:
            # At start-up a database that cannot be opened stops the gateway starting.
            self._open(policy.settings.database_url)
        if self._data_dir != self.holder.data_dir:
            from schoolgate.blockpage import load_or_create_secret

            try:
                self.holder.data_dir.mkdir(parents=True, exist_ok=True)
                self.secret = load_or_create_secret(self.holder.data_dir)
            except OSError as exc:
                raise exceptions.OptionsError(
                    f"schoolgate: cannot use the data folder {self.holder.data_dir}: {exc}"
                ) from None
            self._data_dir = self.holder.data_dir

    @property
    def url(self) -> str | None:
        """The URL of the database the decisions are recorded in (None: none open yet)."""
        return self._url

    def policy_changed(self, old: Policy | None, new: Policy) -> None:
        """Follow a changed database URL (a failure keeps the old database)."""
        if self.eventlog is None:
            return  # nothing open yet: configure opens it, and refuses to start without it
        try:
            self._open(new.settings.database_url)
        except exceptions.OptionsError as exc:
            log.error("%s; still recording to the previous database", exc)

    def _open(self, url: str) -> None:
        if url == self._url:
            return
        from schoolgate.db import open_database
        from schoolgate.eventlog import EventLog

        try:
            sessions = open_database(url)
        except Exception as exc:  # noqa: BLE001 - any driver error means no log: refuse
            raise exceptions.OptionsError(
                f"schoolgate: cannot open the database {_safe_url(url)}: {exc}"
            ) from None
        old = self.eventlog
        self.sessions = sessions
        self.eventlog = EventLog(sessions)
        self.eventlog.start()
        self._url = url
        if old is not None:
            old.close(CLOSE_TIMEOUT)
        log.info("schoolgate: recording decisions to %s", _safe_url(url))

    def record(self, event: dict) -> None:
        eventlog = self.eventlog
        if eventlog is None:
            log.warning("schoolgate: no decision log open; event %s not recorded", event.get("ref"))
            return
        eventlog.record(event)

    def done(self) -> None:
        eventlog = self.eventlog
        if eventlog is None:
            return
        log.info("schoolgate: flushing the decision log")
        if eventlog.flush(CLOSE_TIMEOUT):
            # Left open: requests still in flight are decided, and recorded, until the event
            # loop stops after this hook; closing here dropped those events. The log's own
            # exit handler closes it, writing them, when the process exits.
            return
        eventlog.close(0)  # the database is still failing: spill or log what is left


def _safe_url(url: str) -> str:
    """A database URL without its password, for logs."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return url.split("@")[-1]
