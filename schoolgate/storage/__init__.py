"""Storage: what the gateway keeps on disk and in the database, and how it gets there safely.

* :mod:`schoolgate.storage.storable`: text from the network made storable (escaped, never
  dropped) before it reaches a database row;
* :mod:`schoolgate.storage.spool`: the local append-only spool every event reaches before its
  block page is sent, replayed after a crash;
* :mod:`schoolgate.storage.batches`: writing batches of events, split when the database
  refuses one, with a dead-letter file for what it still refuses.
"""
