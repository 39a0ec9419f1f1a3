"""Alembic environment: schoolgate passes its own connection
(see ``schoolgate.storage.db.upgrade``)."""

from alembic import context

from schoolgate.storage.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # `alembic` run by hand with sqlalchemy.url in an ini file
    from schoolgate.storage.db import make_engine

    url = context.config.get_main_option("sqlalchemy.url")
    if url is None:
        raise SystemExit("alembic: no sqlalchemy.url in the ini file, and no connection given")
    connection = make_engine(url).connect()

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
