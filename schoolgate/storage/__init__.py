"""Storage: the database models, their queries and the writers that keep them. It imports the
core and nothing above it.

* :mod:`schoolgate.storage.storable`: text from the network made storable (escaped, never
  dropped) before it reaches a database row;
* :mod:`schoolgate.storage.spool`: the local append-only spool every event reaches before its
  block page is sent, replayed after a crash;
* :mod:`schoolgate.storage.batches`: writing batches of events, split when the database
  refuses one, with a dead-letter file for what it still refuses.
"""


def check_database_url(url: str) -> None:
    """:func:`schoolgate.storage.db.check_database_url` (the database kind known, its driver
    installed), importing SQLAlchemy only once there is a URL to check: what the processes
    that open the database pass to ``load_policy(check_database_url=...)``."""
    from schoolgate.storage.db import check_database_url as check

    check(url)
