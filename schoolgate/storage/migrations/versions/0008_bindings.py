"""Address -> person bindings from the identity sources (RADIUS accounting, sign-in, Negotiate),
and the change counter every process polls to keep its copy current (see
:mod:`schoolgate.storage.bindings`).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

from schoolgate.storage.db import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bindings",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("address", sa.String(64), nullable=False),
        sa.Column("source", sa.String(20), nullable=False),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("user", sa.String(200), nullable=True),
        sa.Column("role", sa.String(50), nullable=True),
        sa.Column("device", sa.String(200), nullable=True),
        sa.Column("mac", sa.String(17), nullable=True),
        sa.Column("session_id", sa.String(200), nullable=True),
        sa.Column("origin", sa.String(200), nullable=False),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("last_seen", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=True),
        sa.Column("idle_seconds", sa.Integer, nullable=True),
        sa.Column("ends_by", UTCDateTime, nullable=True),
        sa.Column("ended_at", UTCDateTime, nullable=True),
        sa.Column("end_reason", sa.Text, nullable=True),
        sa.Column("version", sa.Integer, nullable=False),
    )
    op.create_index("ix_bindings_address", "bindings", ["address"])
    op.create_index("ix_bindings_user", "bindings", ["user"])
    op.create_index("ix_bindings_version", "bindings", ["version"])
    # One binding in force per address and source: two gateways racing for an address cannot
    # both win.
    op.create_index(
        "uq_bindings_in_force",
        "bindings",
        ["address", "source"],
        unique=True,
        sqlite_where=sa.text("ended_at IS NULL"),
        postgresql_where=sa.text("ended_at IS NULL"),
    )
    version = op.create_table(
        "binding_version",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
    )
    op.bulk_insert(version, [{"id": 1, "version": 0}])


def downgrade() -> None:
    op.drop_table("binding_version")
    op.drop_index("uq_bindings_in_force", table_name="bindings")
    op.drop_index("ix_bindings_version", table_name="bindings")
    op.drop_index("ix_bindings_user", table_name="bindings")
    op.drop_index("ix_bindings_address", table_name="bindings")
    op.drop_table("bindings")
