"""Hosts recognised from their traffic (``detected_hosts``): an unlisted Fediverse server,
with the evidence, treated as social media from then on. What an access request asks to have
opened (``portal_requests.wants``: this page or the whole site).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

from schoolgate.storage.db import UTCDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "detected_hosts",
        sa.Column("host", sa.String(300), primary_key=True),
        sa.Column("category", sa.String(100), nullable=False),
        sa.Column("software", sa.String(100), nullable=True),
        sa.Column("evidence", sa.Text, nullable=False, server_default=""),
        sa.Column("first_seen", UTCDateTime, nullable=False),
        sa.Column("last_seen", UTCDateTime, nullable=False),
        sa.Column("client_ip", sa.String(64), nullable=True),
    )
    op.add_column("portal_requests", sa.Column("wants", sa.String(20), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("portal_requests") as batch:
        batch.drop_column("wants")
    op.drop_table("detected_hosts")
