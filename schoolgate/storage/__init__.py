"""The database side: SQLAlchemy models and their queries (the older ones are still in
``schoolgate/db.py``, ``store.py`` and ``portal/models.py``)."""
