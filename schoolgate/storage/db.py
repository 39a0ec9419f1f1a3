"""The database: the engine and its sessions, the schema upgraded by Alembic migrations.

SQLite in the data dir by default; PostgreSQL (``postgresql+psycopg://...``, the ``postgres``
extra) lets several gateways of a trust share one database. The schema is only ever created by
migrations (``storage/migrations``), so upgrading schoolgate keeps a school's data. The tables
are the models of :mod:`schoolgate.storage.models`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    DateTime,
    Engine,
    TypeDecorator,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on every backend (SQLite has no zones)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use an aware one")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


def utcnow() -> datetime:
    return datetime.now(UTC)


def record_os_user(sessions: sessionmaker[Session], name: str) -> sessionmaker[Session]:
    """Every audit row written through ``sessions`` (any table with an ``os_user`` column:
    ``audit``, ``ban_audit``) records ``name`` as the operating system user, beside the actor
    the command was given (``--by``). What the ``schoolgate`` command opens its database with."""
    sessions.configure(info={"os_user": name})
    event.listen(sessions, "before_flush", _stamp_os_user)
    return sessions


def _stamp_os_user(session: Any, _context: Any, _instances: Any) -> None:
    name = session.info.get("os_user")
    if not name:
        return
    for row in session.new:
        if hasattr(row, "os_user") and row.os_user is None:
            row.os_user = name


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the CLI and portal read while the gateway's writer thread writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class DatabaseURLError(ValueError):
    """A database URL schoolgate cannot use (unknown scheme, driver not installed)."""


# Several gateways may start at once on an empty PostgreSQL database: the migrations run under
# this advisory lock, so one creates the schema and the others find it done.
MIGRATION_LOCK_KEY = 0x5C4001
# Per gateway process: the event writer, the exception and ban refreshers, the jobs and the
# portal each hold at most one connection at a time, so a small pool is plenty; a trust sizes
# PostgreSQL's max_connections as gateways x (POOL_SIZE + MAX_OVERFLOW).
POOL_SIZE = 4
MAX_OVERFLOW = 6
POSTGRES_HINT = (
    "PostgreSQL needs the psycopg driver: pip install 'schoolgate[postgres]' "
    "(the psycopg[binary] package)"
)


def database_url(url: str | URL) -> URL:
    """``url`` parsed; ``postgres://`` and plain ``postgresql://`` mean psycopg 3, the driver
    schoolgate is tested with (SQLAlchemy's own default would be psycopg2)."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseURLError(f"not a database URL: {exc}") from None
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def safe_url(url: str | URL) -> str:
    """``url`` without its password, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return str(url).rpartition("@")[2]


def check_database_url(url: str | URL) -> None:
    """Raise :class:`DatabaseURLError` unless ``url`` names a database kind whose driver is
    installed (what ``schoolgate check-config`` reports; nothing is connected to)."""
    parsed = database_url(url)
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        raise DatabaseURLError(_unknown_kind(parsed)) from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        raise DatabaseURLError(_missing_driver(parsed, exc)) from None


def _unknown_kind(parsed: URL) -> str:
    return (
        f"unknown database kind {parsed.drivername!r}; use sqlite:///PATH or "
        "postgresql+psycopg://USER@HOST/DB"
    )


def _missing_driver(parsed: URL, exc: ImportError) -> str:
    hint = f"; {POSTGRES_HINT}" if parsed.get_backend_name() == "postgresql" else ""
    return f"cannot use {parsed.drivername} ({exc}){hint}"


def make_engine(url: str | URL) -> Engine:
    """An engine for ``url``; SQLite files get WAL mode and their folder created, PostgreSQL a
    small pool whose connections are checked before use (a restarted server is survived)."""
    parsed = database_url(url)
    backend = parsed.get_backend_name()
    kwargs: dict[str, Any] = {}
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    else:
        kwargs.update(
            pool_pre_ping=True,
            pool_size=POOL_SIZE,
            max_overflow=MAX_OVERFLOW,
            pool_timeout=30,
            # Replace connections now and then: firewalls and poolers drop idle ones quietly.
            pool_recycle=1800,
        )
    if backend == "postgresql":
        # Fail fast when the server is unreachable (the writer keeps events and retries; the
        # refreshers keep what they read last) instead of waiting for TCP's own timeout.
        kwargs["connect_args"] = {"connect_timeout": 5, "application_name": "schoolgate"}
    try:
        engine = create_engine(parsed, future=True, **kwargs)
    except ImportError as exc:
        raise DatabaseURLError(_missing_driver(parsed, exc)) from None
    except NoSuchModuleError:
        raise DatabaseURLError(_unknown_kind(parsed)) from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration (creates it on an empty database)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Held to the end of this transaction (DDL is transactional on PostgreSQL).
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")


def database_exists(url: str | URL) -> bool:
    """Whether ``url`` names a schoolgate database already made (its migrations have run):
    an SQLite file is not created by asking, and an empty PostgreSQL database is not one."""
    parsed = database_url(url)
    if parsed.get_backend_name() == "sqlite":
        name = parsed.database
        if not name or name == ":memory:":
            return False
        if not Path(name).is_file():
            return False
    engine = make_engine(parsed)
    try:
        with engine.connect() as connection:
            return inspect(connection).has_table("alembic_version")
    finally:
        engine.dispose()


def open_database(url: str | URL) -> sessionmaker[Session]:
    """Engine + migrations + a session factory: what every command and addon starts with."""
    engine = make_engine(url)
    upgrade(engine)
    return sessionmaker(engine, expire_on_commit=False)
