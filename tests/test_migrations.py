"""The migrations and the models agree: a database the migrations made is what the models of
``schoolgate.storage.models`` say (real SQLite files)."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from schoolgate.storage.db import make_engine, upgrade
from schoolgate.storage.models import Base


def test_the_models_are_what_the_newest_migration_makes(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'schoolgate.db'}")
    try:
        upgrade(engine)
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()
    assert differences == []
