"""What every ``schoolgate`` subcommand shares: the common options, loading the policy, opening
the database with the operating system user recorded, times and URLs given on the command line,
and the error a command exits with. Subcommand modules import these, never the entry point
(:mod:`schoolgate.cli`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from schoolgate.core.configfile import ConfigError
from schoolgate.core.explain import InputError, facts_for_url, parse_when  # noqa: F401

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2


# A clear message for the user; the command exits non-zero. The same class as the core's
# InputError, which the explanation helpers raise for what a person typed.
CommandError = InputError


# -- options every subcommand takes ---------------------------------------------------------
def add_common_options(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    # On subcommands the default is SUPPRESS so that `schoolgate --config X explain ...` and
    # `schoolgate explain --config X ...` both work (a subparser default would overwrite X).
    default = None if top else argparse.SUPPRESS
    parser.add_argument(
        "--config",
        type=Path,
        default=default,
        help="the policy file (default: the shipped mitm_config.yaml)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=default,
        help="folder for the database and the CA (default: SCHOOLGATE_DATA_DIR, then "
        "/var/lib/schoolgate when installed system-wide, then the checkout's var/)",
    )
    parser.add_argument(
        "--init",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="create the database if there is none yet (the gateway makes it on first start)",
    )


def load(args: argparse.Namespace):
    from schoolgate.core.config import load_policy
    from schoolgate.core.locations import LocationError, locate
    from schoolgate.storage import check_database_url

    try:
        where = locate(getattr(args, "config", None), getattr(args, "data_dir", None))
    except LocationError as exc:
        raise CommandError(str(exc)) from None
    args.locations = where
    try:
        return load_policy(
            where.config.path,
            data_dir=where.data_dir.path,
            check_database_url=check_database_url,
        )
    except ConfigError as exc:
        raise CommandError(f"the configuration has {len(exc.issues)} error(s):\n{exc}") from None


def where_described(args: argparse.Namespace | None, policy) -> str:
    from schoolgate.storage.db import safe_url

    where = getattr(args, "locations", None)
    places = where.describe() if where is not None else f"config {policy.settings.config_path}"
    return f"{places}; database {safe_url(policy.settings.database_url)}"


def open_db(policy, args: argparse.Namespace | None = None, *, changes: bool = False):
    """The database's sessions, with every audit row written through them recording the
    operating system user that ran the command (beside its ``--by``). Refuses a database that
    does not exist yet unless ``--init`` was given (a command run with the wrong folder must not
    start a database the gateway never reads); ``changes``: the command changes state, so say
    which config and database."""
    from sqlalchemy.exc import OperationalError

    from schoolgate.storage.db import database_exists, open_database, record_os_user, safe_url

    url = policy.settings.database_url
    try:
        if not getattr(args, "init", False) and not database_exists(url):
            raise CommandError(
                f"there is no database yet: {where_described(args, policy)}.\n"
                "The gateway creates it when it first starts (./gateway or schoolgate run). "
                "If that is the gateway's, give the same --config/--data-dir (or "
                "SCHOOLGATE_CONFIG/SCHOOLGATE_DATA_DIR) as it has; to create a new database "
                "here, add --init."
            )
        if changes:
            print(f"schoolgate: using {where_described(args, policy)}", file=sys.stderr)
        sessions = open_database(url)
    except OperationalError as exc:  # a server that is down or refuses us: say so, no traceback
        reason = str(exc.orig or exc).strip().splitlines()[0]
        raise CommandError(f"cannot open the database {safe_url(url)}: {reason}") from None
    return record_os_user(sessions, operating_system_user())


NO_LOGIN_UID = 4294967295  # the kernel's "not set" (a service, a container without PAM)


def operating_system_user() -> str:
    """Who ran this command on the server: the effective user, and the person who logged in
    when that differs: the kernel's login uid, which ``sudo`` and ``su`` keep and the user
    cannot change (``root (login alice)``), else ``sudo``'s ``SUDO_USER`` as sudo set it
    (``schoolgate (sudo from alice)``). ``USER`` and ``LOGNAME`` are not read: anyone can set
    them."""
    import os

    uid = os.geteuid()
    name = _user_name(uid)
    try:
        login_uid = int(Path("/proc/self/loginuid").read_text().strip())
    except (OSError, ValueError):
        login_uid = NO_LOGIN_UID
    if login_uid != NO_LOGIN_UID and login_uid != uid:
        return f"{name} (login {_user_name(login_uid)})"
    sudo_user = os.environ.get("SUDO_USER", "").strip()
    if sudo_user and sudo_user != name and login_uid == NO_LOGIN_UID:
        return f"{name} (sudo from {sudo_user[:100]})"
    return name


def _user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # no passwd entry (a container's arbitrary uid)
        return f"uid {uid}"
