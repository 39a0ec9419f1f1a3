"""Each gateway process's heartbeat (the console's health view, ``/healthz`` and ``/metrics``),
and the indexes the console's history search filters on.

One row per gateway process (``host:port/worker``), replaced every few seconds by a background
thread of that process: when it started and was last seen, its policy, its decision log's
backlog and counters, and its requests and blocks per minute of the last hour (JSON).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-09
"""

import sqlalchemy as sa
from alembic import op

from schoolgate.storage.db import UTCDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gateway_heartbeats",
        sa.Column("instance", sa.String(300), primary_key=True),
        sa.Column("host", sa.String(200), nullable=False, server_default=""),
        sa.Column("port", sa.Integer, nullable=False, server_default="0"),
        sa.Column("worker", sa.Integer, nullable=False, server_default="0"),
        sa.Column("pid", sa.Integer, nullable=False, server_default="0"),
        sa.Column("version", sa.String(50), nullable=False, server_default=""),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("seen_at", UTCDateTime, nullable=False, index=True),
        sa.Column("stopped_at", UTCDateTime, nullable=True),
        sa.Column("interval", sa.Float, nullable=False, server_default="10"),
        sa.Column("policy_loaded_at", UTCDateTime, nullable=True),
        sa.Column("policy_error", sa.Text, nullable=True),
        sa.Column("runs_jobs", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("sends_mail", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("requests", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("blocks", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("events_pending", sa.Integer, nullable=False, server_default="0"),
        sa.Column("events_written", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("events_rejected", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("events_error", sa.Text, nullable=True),
        sa.Column("minutes", sa.Text, nullable=False, server_default="[]"),
    )
    # The console's history: "this category" and "this group", newest first.
    op.create_index("ix_events_category", "events", ["category"])
    op.create_index("ix_events_group", "events", ["group"])


def downgrade() -> None:
    op.drop_index("ix_events_group", "events")
    op.drop_index("ix_events_category", "events")
    op.drop_table("gateway_heartbeats")
