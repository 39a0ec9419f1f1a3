"""Coordination between the gateways of a trust sharing one database: a ``leases`` table (the
one process that runs the scheduled jobs holds the ``jobs`` lease, see
:mod:`schoolgate.storage.leases`) and claim columns on the notification outbox, so that several
senders never send the same message.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

from schoolgate.storage.db import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("holder", sa.String(300), nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
        sa.Column("renewed_at", UTCDateTime, nullable=False),
    )
    op.add_column("portal_outbox", sa.Column("claimed_by", sa.String(300), nullable=True))
    op.add_column("portal_outbox", sa.Column("claimed_until", UTCDateTime, nullable=True))


def downgrade() -> None:
    # Batch mode: SQLite cannot drop a column in place on older versions.
    with op.batch_alter_table("portal_outbox") as batch:
        batch.drop_column("claimed_until")
        batch.drop_column("claimed_by")
    op.drop_table("leases")
