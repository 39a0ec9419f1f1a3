"""The database: SQLAlchemy models and their queries."""
