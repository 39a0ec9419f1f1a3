"""The migrations and the models agree: a database the migrations made is what the models of
``schoolgate.storage.models`` say; data made before a migration is kept through it and back
(real SQLite files, and a real PostgreSQL server)."""

from __future__ import annotations

import secrets
from datetime import datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import column, inspect, select, table, text
from sqlalchemy.orm import sessionmaker

from schoolgate.portal.auth import active_staff_roles
from schoolgate.storage.db import MIGRATIONS_DIR, make_engine, upgrade
from schoolgate.storage.models import Base, StaffRow


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.e2e)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a real SQLite file, or one on a throwaway PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'schoolgate.db'}"
    server = request.getfixturevalue("pg")
    return server.create_database(f"t_{secrets.token_hex(4)}")


def test_the_models_are_what_the_newest_migration_makes(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        upgrade(engine)
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()
    assert differences == []


def _migrate(engine, revision: str, *, down: bool = False) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(cfg, revision)


def test_staff_roles_become_rows_and_come_back_as_text(database_url: str) -> None:
    engine = make_engine(database_url)
    # The staff table as migration 0012 left it, times stored as naive UTC (as UTCDateTime).
    staff = table("staff", *(column(c) for c in ("id", "username", "display_name", "email",
                  "roles", "groups", "password_hash", "active", "created_at",
                  "password_changed_at")))  # fmt: skip
    at = datetime(2026, 12, 1, 9, 0)
    common = dict(display_name="", email="", groups="", password_hash="x", active=True,
                  created_at=at, password_changed_at=at)  # fmt: skip
    try:
        _migrate(engine, "0012")
        with engine.begin() as connection:
            connection.execute(
                staff.insert(),
                [
                    dict(common, id=1, username="mr.lee", roles="slt,it_support"),
                    dict(common, id=2, username="ms.ng", roles="teacher"),
                    dict(common, id=3, username="old.account", roles=""),
                ],
            )
        _migrate(engine, "head")
        sessions = sessionmaker(engine)
        with sessions() as session:
            held = {row.username: row.role_list for row in session.scalars(select(StaffRow))}
            assert held == {"mr.lee": ["slt", "it_support"], "ms.ng": ["teacher"],
                            "old.account": []}  # fmt: skip
            assert active_staff_roles(session) == {"slt", "it_support", "teacher"}
            lee = session.scalars(select(StaffRow).where(StaffRow.username == "mr.lee")).one()
            assert lee.has_role("it_support") and not lee.has_role("dsl")
            lee.set_roles(["it_support", "dsl"])
            session.commit()
        _migrate(engine, "0012", down=True)
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT username, roles FROM staff ORDER BY id")).all()
            assert not inspect(connection).has_table("staff_roles")
        assert rows == [("mr.lee", "it_support,dsl"), ("ms.ng", "teacher"), ("old.account", "")]
    finally:
        engine.dispose()
