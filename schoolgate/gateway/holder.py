"""The policy in force, and reloading it when its files change (or on SIGHUP).

A config that is broken when the gateway starts stops it from starting (``OptionsError`` with
every issue): there is never an open gateway. A reload that fails validation is logged with all
its errors and the last good policy stays in force.

A new policy is an event: every part that subscribed (:meth:`PolicyHolder.subscribe`, a
:class:`PolicyListener`) is told ``policy_changed(old, new)``, as mitmproxy's script loader
re-sends ``configure`` to a reloaded script. See :meth:`PolicyHolder.subscribe` for the order,
the thread and what a failing listener does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Protocol

import yaml
from mitmproxy import ctx, exceptions

from schoolgate.core.config import DEFAULT_CONFIG, default_config, default_data_dir, load_policy
from schoolgate.core.configfile import ConfigError
from schoolgate.core.liststore import remove_unused
from schoolgate.core.locations import LocationError
from schoolgate.core.policy import Policy
from schoolgate.gateway.background import settle_heap
from schoolgate.storage import check_database_url

log = logging.getLogger(__name__)

MAX_WATCHED_FILES = 20_000
# After a policy is installed, compiled list versions no process maps any more are removed at
# each check for this long (other workers move to the new version at their own pace).
SWEEP_SECONDS = 600.0
Fingerprint = tuple[tuple[str, int, int], ...]


class PolicyListener(Protocol):
    """A part that follows the policy in force (see :meth:`PolicyHolder.subscribe`)."""

    def policy_changed(self, old: Policy | None, new: Policy) -> None:
        """``new`` is about to be the policy in force (``old`` is None at the first load)."""


def watched_files(config_path: Path) -> list[Path]:
    """The config file and every existing file or folder it names (lists, timetables, roster).

    Any string in the YAML that is the path of an existing file or folder (relative to the
    config's folder) is watched; folders (squidGuard lists) with the files inside them.
    """
    config_path = Path(config_path)
    found: dict[Path, None] = {config_path: None}
    base = config_path.resolve().parent
    pending = [config_path]
    seen_yaml: set[Path] = set()
    while pending:
        current = pending.pop()
        if current in seen_yaml:
            continue
        seen_yaml.add(current)
        try:
            data = yaml.safe_load(current.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            continue
        for text in _strings(data):
            if len(text) > 4096 or "\n" in text or "://" in text:
                continue
            path = Path(text).expanduser()
            if not path.is_absolute():
                path = base / path
            try:
                if path.is_file():
                    found.setdefault(path, None)
                    if path.suffix in (".yaml", ".yml"):
                        pending.append(path)
                elif path.is_dir() and path != base:
                    found.setdefault(path, None)
                    for root, _dirs, files in os.walk(path):
                        for name in files:
                            found.setdefault(Path(root) / name, None)
                            if len(found) > MAX_WATCHED_FILES:
                                return list(found)
            except OSError:
                continue
    return list(found)


def _with_subscriptions(
    policy: Policy, paths: list[Path], stamp: Fingerprint
) -> tuple[list[Path], Fingerprint]:
    """Watch the subscriptions' files too, fetched or not ("{data_dir}" paths, and files that
    do not exist yet are not found by :func:`watched_files`): the first fetch of one, or a
    refresh, reloads the policy."""
    extra: list[Path] = []
    for sub in policy.subscriptions:
        extra.append(sub.file)
        if sub.file.is_dir():
            extra.extend(sub.file / name for name in ("domains", "urls", "expressions"))
    extra = [p for p in extra if p not in set(paths)]
    if not extra:
        return paths, stamp
    return paths + extra, stamp + fingerprint(extra)


def log_list_warnings(policy: Policy) -> None:
    """At start: every empty category and stale subscription, loudly (see
    :func:`schoolgate.core.subscriptions.list_warnings`)."""
    from schoolgate.core.subscriptions import list_warnings

    for line in list_warnings(policy):
        log.warning("schoolgate: LISTS: %s", line)


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def fingerprint(paths: list[Path]) -> Fingerprint:
    out = []
    for path in paths:
        try:
            st = path.stat()
            out.append((str(path), st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((str(path), -1, -1))
    return tuple(out)


class PolicyHolder:
    """Holds the :class:`Policy` in force; the other addons read ``holder.policy``."""

    name = "schoolgate_policy"

    def __init__(self) -> None:
        self.policy: Policy | None = None
        self.config_path: Path = DEFAULT_CONFIG
        self.data_dir: Path = default_data_dir()
        self.last_error: ConfigError | None = None
        self._paths: list[Path] = []
        self._fingerprint: Fingerprint = ()
        self._hup = threading.Event()
        self._lock = threading.Lock()
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._sweep_until = 0.0
        self._listeners: list[PolicyListener] = []
        # Held while listeners are told of a policy and it is put in force (re-entrant: a
        # listener may read through the holder). A part that starts (``running``) takes it to
        # attach itself to the policy in force without missing one being installed.
        self.install_lock = threading.RLock()

    # -- listeners -------------------------------------------------------------------------
    def subscribe(self, listener: PolicyListener) -> None:
        """Tell ``listener`` of every policy from now on (and of the one in force, at once).

        Each load that succeeds (the first, a file change, SIGHUP, a changed
        ``schoolgate_config``/``schoolgate_data_dir`` option) calls ``policy_changed(old, new)``
        of every listener **in the order they subscribed** (:func:`schoolgate.gateway.
        make_addons` subscribes the parts in the chain's order, so the recorder has the new
        database before the parts that use it hear of the policy), **before** ``holder.policy``
        becomes ``new``: no hook decides with a policy whose parts are not ready for it.
        Listeners therefore read the new settings from ``new``, not from ``holder.policy``.

        The thread: a reload (file change, SIGHUP) calls them on the watcher's worker thread,
        never on the event loop; the first load and a load from a changed option call them on
        the thread that runs ``configure`` (mitmproxy's event loop, while it starts or as the
        option is set), and :meth:`preload` on the runner's thread. A listener whose work takes
        long (writing to a database) hands it to a thread of its own.

        A listener that raises is logged with its name; the other listeners are still told and
        the policy is still put in force. Refused reloads tell nobody.
        """
        with self.install_lock:
            self._listeners.append(listener)
            if self.policy is not None:
                self._tell(listener, None, self.policy)

    @staticmethod
    def _tell(listener: PolicyListener, old: Policy | None, new: Policy) -> None:
        try:
            listener.policy_changed(old, new)
        except Exception:  # noqa: BLE001 - one part's failure must not stop the others
            name = getattr(listener, "name", None) or type(listener).__name__
            log.exception("schoolgate: %s failed to follow the new policy", name)

    def load(self, loader) -> None:
        loader.add_option(
            "schoolgate_config",
            str,
            "",
            "schoolgate's policy file (default: SCHOOLGATE_CONFIG, then "
            "/etc/schoolgate/mitm_config.yaml when installed system-wide, then the checkout's).",
        )
        loader.add_option(
            "schoolgate_data_dir",
            str,
            "",
            "schoolgate's data folder: database, block-page secret (default: SCHOOLGATE_DATA_DIR, "
            "then /var/lib/schoolgate when installed system-wide, then the checkout's var/).",
        )
        loader.add_option(
            "schoolgate_reload_interval",
            float,
            2.0,
            "Seconds between checks for changes to the policy files (0: only on SIGHUP).",
        )

    def configure(self, updated) -> None:
        if "schoolgate_reload_interval" in updated:
            if ctx.options.schoolgate_reload_interval < 0:
                raise exceptions.OptionsError("schoolgate_reload_interval must not be negative")
            self._wake_watcher()  # a sleeping watcher picks up the new interval
        if not ({"schoolgate_config", "schoolgate_data_dir"} & set(updated)):
            return
        try:
            config_path = Path(ctx.options.schoolgate_config or default_config())
        except LocationError as exc:
            raise exceptions.OptionsError(f"schoolgate: {exc}") from None
        data_dir = Path(ctx.options.schoolgate_data_dir or default_data_dir())
        if (
            self.policy is not None
            and config_path == self.config_path
            and data_dir == self.data_dir
        ):
            return
        paths = watched_files(config_path)
        stamp = fingerprint(paths)
        try:
            policy = load_policy(
                config_path, data_dir=data_dir, check_database_url=check_database_url
            )
            paths, stamp = _with_subscriptions(policy, paths, stamp)
        except ConfigError as exc:
            raise exceptions.OptionsError(
                f"schoolgate: {config_path} has {len(exc.issues)} error(s); not starting:\n{exc}"
            ) from None
        except OSError as exc:
            raise exceptions.OptionsError(f"schoolgate: cannot read {config_path}: {exc}") from None
        self.config_path, self.data_dir = config_path, data_dir
        self._install(policy, paths, stamp)
        log.info("schoolgate: policy loaded from %s (%d files watched)", config_path, len(paths))
        log_list_warnings(policy)

    def preload(self, policy: Policy, config_path: Path, data_dir: Path) -> None:
        """Use a policy already loaded (by the runner's check) from these paths."""
        self.config_path, self.data_dir = Path(config_path), Path(data_dir)
        paths = watched_files(self.config_path)
        paths, stamp = _with_subscriptions(policy, paths, fingerprint(paths))
        self._install(policy, paths, stamp)
        log_list_warnings(policy)

    def _install(self, policy: Policy, paths: list[Path], stamp: Fingerprint) -> None:
        with self.install_lock:
            old = self.policy
            for listener in tuple(self._listeners):
                self._tell(listener, old, policy)
            self.policy = policy
            # Still read by the circumvention guard, which compares it on its own.
        self._paths, self._fingerprint = paths, stamp
        self.last_error = None
        self._sweep_until = time.monotonic() + SWEEP_SECONDS

    def sweep_lists(self) -> None:
        """Remove the compiled list versions that no process maps (blocking: off the loop)."""
        removed, _in_use = remove_unused(self.data_dir)
        if removed:
            log.info("schoolgate: removed %d compiled list version(s) no longer in use", removed)

    # -- reloading -------------------------------------------------------------------------
    def request_reload(self) -> None:
        """Reload at the next check, whether or not a file changed (SIGHUP)."""
        log.info("schoolgate: reload requested")
        self._hup.set()
        self._wake_watcher()

    def _wake_watcher(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)  # callable from any thread

    def changed(self) -> bool:
        return fingerprint(self._paths) != self._fingerprint

    def reload(self, *, force: bool = False) -> bool | None:
        """Reload if a watched file changed (or ``force``): True loaded, False refused,
        None nothing to do. Blocking (lists can be large): call it off the event loop."""
        with self._lock:
            if not force and not self.changed():
                return None
            paths = watched_files(self.config_path)
            stamp = fingerprint(paths)
            try:
                policy = load_policy(
                    self.config_path,
                    data_dir=self.data_dir,
                    check_database_url=check_database_url,
                )
                paths, stamp = _with_subscriptions(policy, paths, stamp)
            except (ConfigError, OSError) as exc:
                # Remember the broken state so that it is not retried until a file changes.
                # A file that vanished (the usual reason for the failure) is no longer found
                # by watched_files: keep watching it too, or putting it back is never noticed.
                paths = list(dict.fromkeys(paths + self._paths))
                stamp = fingerprint(paths)
                self._paths, self._fingerprint = paths, stamp
                issues = getattr(exc, "issues", None) or [exc]
                self.last_error = exc if isinstance(exc, ConfigError) else None
                log.error(
                    "schoolgate: reload of %s refused, %d error(s); the last good policy "
                    "stays in force:\n%s",
                    self.config_path,
                    len(issues),
                    "\n".join(str(i) for i in issues),
                )
                return False
            self._install(policy, paths, stamp)
            log.info("schoolgate: policy reloaded from %s", self.config_path)
            return True

    async def _watch(self) -> None:
        # Sleeps until the interval is up or a reload is asked for: no polling on the event loop.
        wake = self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        while True:
            if not self._hup.is_set():
                interval = ctx.options.schoolgate_reload_interval
                try:
                    await asyncio.wait_for(wake.wait(), timeout=interval or 3600)
                except TimeoutError:
                    pass
            wake.clear()
            force = self._hup.is_set()
            self._hup.clear()
            try:
                if await asyncio.to_thread(self.reload, force=force):
                    settle_heap()  # the new policy is built to last; the old one can go
                if time.monotonic() < self._sweep_until:
                    await asyncio.to_thread(self.sweep_lists)
            except Exception:  # noqa: BLE001 - the watcher must survive anything
                log.exception("schoolgate: policy reload failed")

    def running(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._task = loop.create_task(self._watch())
        try:
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        except (NotImplementedError, RuntimeError, AttributeError, ValueError):
            pass  # not the main thread, or no SIGHUP here (Windows)

    def done(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
