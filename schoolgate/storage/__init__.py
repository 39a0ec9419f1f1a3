"""The database: SQLAlchemy models, their queries, and the writers that keep them."""
