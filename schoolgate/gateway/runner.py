"""``schoolgate run``: mitmproxy in-process with schoolgate's addons on embedded defaults.

* the policy: ``--config`` (default: the shipped ``mitm_config.yaml``); a config with errors
  refuses to start, printing every error (never an open gateway);
* the data folder: ``--data-dir`` (default ``./var``) holds the SQLite database, the block-page
  secret and mitmproxy's CA (``<data-dir>/ca``);
* ``connection_strategy=lazy``: blocked hosts are never contacted, block pages work over TLS;
* ``block_global`` stays mitmproxy's default (clients with public addresses are refused): the
  gateway serves the school LAN. ``SCHOOLGATE_ALLOW_PUBLIC_CLIENTS=1`` turns that off;
* ``--set NAME=VALUE`` (repeatable): any other mitmproxy option, e.g. ``proxyauth``;
* ``--portal-port P``: the portal also on a port of its own (for an admin network), where the
  user header is not trusted (staff sign in; requesters are known by address only), served
  by waitress with limits (:mod:`schoolgate.gateway.portal_server`) on ``--portal-host``
  (default 127.0.0.1: never the proxy's address unless given);
* ``--workers N`` (or ``auto``: one per core): N processes on the one listening port, under a
  supervisor (:mod:`schoolgate.gateway.workers`).

SIGTERM and SIGINT shut down cleanly (the decision log flushes everything queued); SIGHUP
reloads the policy.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from mitmproxy import exceptions, options
from mitmproxy.tools.dump import DumpMaster

from schoolgate.core.config import load_policy
from schoolgate.core.configfile import ConfigError
from schoolgate.core.locations import LocationError, locate
from schoolgate.gateway import make_addons, make_chain
from schoolgate.gateway.hook_table import use_hook_table
from schoolgate.storage import check_database_url
from schoolgate.storage.db import safe_url

log = logging.getLogger(__name__)

QUIET_LOGGERS = ("tornado", "asyncio", "hpack", "quic", "alembic", "sqlalchemy", "passlib")


def _truthy(text: str | None) -> bool:
    return (text or "").strip().lower() in ("1", "true", "yes", "on")


def mitm_options(args: argparse.Namespace, data_dir: Path) -> dict:
    """The mitmproxy options schoolgate runs with."""
    mode = getattr(args, "mode", None) or "regular"
    opts = {
        "listen_host": getattr(args, "listen_host", None) or "",
        "listen_port": getattr(args, "listen_port", None) or 8080,
        "mode": [mode],
        "confdir": str((data_dir / "ca").resolve()),
        "connection_strategy": "lazy",
    }
    allow_public = getattr(args, "allow_public_clients", False) or _truthy(
        os.environ.get("SCHOOLGATE_ALLOW_PUBLIC_CLIENTS")
    )
    if allow_public:
        opts["block_global"] = False
    if getattr(args, "quiet", False):
        opts["termlog_verbosity"] = "error"  # as `mitmdump -q`
    return opts


def set_options(opts: options.Options, specs: list[str]) -> None:
    """``--set NAME=VALUE`` as mitmproxy's CLI does, plus float options (which
    ``OptManager.set`` does not parse)."""
    plain = []
    for spec in specs:
        name, sep, value = spec.partition("=")
        # mitmproxy checks a default against its option's type: a float default, a float option.
        if sep and name in opts and isinstance(opts.default(name), float):
            try:
                opts.update(**{name: float(value)})
            except ValueError:
                raise exceptions.OptionsError(f"{name} must be a number, not {value!r}") from None
        else:
            plain.append(spec)
    if plain:
        opts.set(*plain)


def make_master(opts: options.Options, *, quiet: bool) -> DumpMaster:
    """mitmproxy's master as the gateway runs it, before schoolgate's addons are added. Three
    things differ from ``mitmdump``, and ``bench/gateway_bench.py`` measures them apart from
    the addons (its "lean" proxy is this master with no addons):

    * the root logger at INFO, not DEBUG: mitmproxy logs at debug level on its hot path, and
      each such record costs CPU on every request even when nothing prints it;
    * ``quiet``: no Dumper, the addon that prints each flow (``mitmdump -q`` keeps it, printing
      nothing, and mitmproxy still offers it every event of every request);
    * events dispatched through a table of the hooks that exist
      (:mod:`~schoolgate.gateway.hook_table`), not offered to every addon in turn.
    """
    logging.getLogger().setLevel(logging.INFO)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    master = DumpMaster(opts, with_termlog=True, with_dumper=not quiet)
    use_hook_table(master)
    return master


def run_gateway(args: argparse.Namespace) -> int:
    try:
        where = locate(getattr(args, "config", None), getattr(args, "data_dir", None))
    except LocationError as exc:
        print(f"schoolgate: {exc}", file=sys.stderr)
        return 1
    config_path, data_dir = where.config.path, where.data_dir.path
    # Validate before bringing anything up: a broken config never starts a gateway.
    try:
        policy = load_policy(config_path, data_dir=data_dir, check_database_url=check_database_url)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        print(
            f"schoolgate: {len(exc.issues)} error(s) in the configuration; "
            "the gateway was not started.",
            file=sys.stderr,
        )
        return 1
    except OSError as exc:
        print(f"schoolgate: cannot read {config_path}: {exc}", file=sys.stderr)
        return 1
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / "ca").mkdir(exist_ok=True)
    except OSError as exc:
        print(f"schoolgate: cannot create the data folder {data_dir}: {exc}", file=sys.stderr)
        return 1
    worker = getattr(args, "worker", None)
    workers = getattr(args, "workers", None) or 1
    if worker is None and workers > 1:
        from schoolgate.gateway.workers import can_share_port

        if not can_share_port():
            workers = 1  # one process serves everything; the warning says why
    if worker is None:  # once, not from every worker
        print(
            f"schoolgate: {where.describe()}; database {safe_url(policy.settings.database_url)}",
            file=sys.stderr,
        )
    if worker is None and workers == 1 and getattr(args, "steer_connections", False):
        # Not an error: `--workers auto` on a one-core host gives one process.
        print(
            "schoolgate: --steer-connections does nothing with one process (--workers 1)",
            file=sys.stderr,
        )
    try:
        if worker is None and workers > 1:
            database_url = policy.settings.database_url
            del policy  # the workers map the compiled lists; the supervisor keeps no copy
            return _supervise(args, config_path, data_dir, database_url, workers)
        return asyncio.run(_serve(args, config_path, data_dir, policy, worker))
    except KeyboardInterrupt:
        return 130


def _supervise(
    args: argparse.Namespace, config_path: Path, data_dir: Path, database_url: str, count: int
) -> int:
    """``--workers N``: check what a worker would only find out N times over, make the state
    they share, then run the supervisor."""
    from schoolgate.gateway import workers

    opts = mitm_options(args, data_dir)
    mode = opts["mode"][0]
    problem = workers.check_steering(args, count) or workers.check_mode(mode)
    if problem is None:
        host, port = workers.listen_address(mode, opts["listen_host"], opts["listen_port"])
        if not port:
            problem = "--workers needs a fixed --listen-port (not 0)"
        else:
            problem = workers.check_port_free(host, port)
    if problem is not None:
        print(f"schoolgate: {problem}; the gateway was not started.", file=sys.stderr)
        return 1
    if getattr(args, "steer_connections", False):
        _warn_of_steering_limits()
    try:
        workers.prepare_shared_state(data_dir, Path(opts["confdir"]), database_url)
    except Exception as exc:  # noqa: BLE001 - any failure here would stop every worker too
        print(f"schoolgate: cannot prepare {data_dir}: {exc}", file=sys.stderr)
        return 1
    supervisor = workers.Supervisor(
        count, lambda index: workers.worker_argv(args, data_dir, index, count)
    )
    return asyncio.run(supervisor.run())


def _warn_of_steering_limits() -> None:
    """``--steer-connections`` where it cannot help: an older kernel ignores it, and a network
    card that receives on one core would send every connection to one worker."""
    from schoolgate.gateway import workers

    if not workers.kernel_steers():
        workers.say(
            f"--steer-connections: this kernel ({os.uname().release}) does not steer within "
            "a SO_REUSEPORT group (Linux 6.2 and later do); connections go by hash"
        )
    for card, queues in workers.receive_spread().items():
        if queues < 2:
            workers.say(
                f"--steer-connections: {card} receives on one queue, so every connection "
                "through it goes to one worker; spread it with RPS (echo <mask of the "
                f"cores> > /sys/class/net/{card}/queues/rx-0/rps_cpus) or leave steering off"
            )


async def _serve(
    args: argparse.Namespace,
    config_path: Path,
    data_dir: Path,
    policy,
    worker: tuple[int, int] | None = None,
) -> int:
    opts = options.Options()
    master = make_master(opts, quiet=bool(getattr(args, "quiet", False)))
    addons = make_addons()
    holder = addons[0]
    holder.preload(policy, config_path, data_dir)
    portal_port = getattr(args, "portal_port", None)
    if worker is not None:
        _become_worker(
            master,
            *worker,
            getattr(args, "worker_cpu", None),
            steer=bool(getattr(args, "steer_connections", False)),
        )
    try:
        master.addons.add(*make_chain(addons))
        if portal_port:
            from schoolgate.gateway.health import HealthAddon
            from schoolgate.gateway.portal_addon import StandalonePortal

            health = next((a for a in addons if isinstance(a, HealthAddon)), None)
            master.addons.add(StandalonePortal(addons[0], addons[1], health))
        opts.update(
            **mitm_options(args, data_dir),
            schoolgate_config=str(config_path),
            schoolgate_data_dir=str(data_dir),
        )
        if getattr(args, "set", None):
            set_options(opts, args.set)
        if worker is not None:
            opts.update(schoolgate_worker=worker[0])
        if worker is not None and worker[0] > 1:
            # One process runs the jobs and sends the portal's notifications: worker 1 (after
            # --set, which every worker gets and which must not turn them on here).
            # RADIUS accounting too: one listener on the port (every worker reads the
            # bindings it stores).
            opts.update(
                schoolgate_jobs=False, schoolgate_portal_sender=False, schoolgate_radius=False
            )
        if portal_port:
            opts.update(schoolgate_portal_port=portal_port)
            if getattr(args, "portal_host", None):
                opts.update(schoolgate_portal_host=args.portal_host)
    except exceptions.OptionsError as exc:
        print(f"schoolgate: {exc}", file=sys.stderr)
        return 1

    loop = asyncio.get_running_loop()

    def stop(signame: str) -> None:
        log.info("schoolgate: %s received, shutting down", signame)
        master.shutdown()

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop, sig.name)
        except (NotImplementedError, RuntimeError):
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(master.shutdown))
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        await master.run()
    except SystemExit as exc:  # errorcheck: errors logged during startup
        return int(exc.code or 1)
    return 0


def _become_worker(
    master: DumpMaster, index: int, count: int, cpu: int | None = None, steer: bool = False
) -> None:
    """Worker ``index`` of ``count`` under a supervisor: exit with it, move to its core (if
    the supervisor gave it one), join the port's ``SO_REUSEPORT`` group (asking for the
    connections its core receives, with ``steer``), and tag the log lines (before anything
    logs)."""
    from schoolgate.gateway import workers

    parent = os.environ.get("SCHOOLGATE_SUPERVISOR_PID", "")
    if parent.isdigit():
        workers.exit_with_parent(int(parent))
    problem = workers.pin_to_cpu(cpu) if cpu is not None else None
    steer_cpu = cpu if steer and cpu is not None and problem is None else None
    workers.listen_with_reuse_port(asyncio.get_running_loop(), steer_cpu)
    workers.tag_log_lines(master, index)
    worker = f"schoolgate: worker {index} of {count} (pid {os.getpid()})"
    if problem is not None:
        log.warning("%s cannot be kept on CPU %d (%s); it runs on any core", worker, cpu, problem)
    else:
        steered = ", taking the connections that core receives" if steer_cpu is not None else ""
        log.info("%s%s%s", worker, "" if cpu is None else f" on CPU {cpu}", steered)
