"""Alembic environment: schoolgate passes its own connection (see ``schoolgate.db.upgrade``)."""

from alembic import context

from schoolgate.db import Base

connection = context.config.attributes.get("connection")
if connection is None:  # `alembic` run by hand with sqlalchemy.url in an ini file
    from schoolgate.db import make_engine

    connection = make_engine(context.config.get_main_option("sqlalchemy.url")).connect()

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
