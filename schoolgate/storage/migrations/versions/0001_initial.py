"""Initial schema: exceptions, events (decision log), audit trail.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

from schoolgate.storage.db import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "exceptions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("scope", sa.String(20), nullable=False),
        sa.Column("scope_value", sa.String(200), nullable=False),
        sa.Column("target_kind", sa.String(20), nullable=False),
        sa.Column("target", sa.String(500), nullable=False),
        sa.Column("starts", UTCDateTime, nullable=False),
        sa.Column("ends", UTCDateTime, nullable=True),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("revoked_at", UTCDateTime, nullable=True),
        sa.Column("revoked_by", sa.String(200), nullable=True),
        sa.Column("revoke_reason", sa.Text, nullable=True),
    )
    op.create_index("ix_exceptions_ends", "exceptions", ["ends"])
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("ref", sa.String(40), nullable=False, unique=True),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("kind", sa.String(30), nullable=False),
        sa.Column("action", sa.String(10), nullable=False),
        sa.Column("client_ip", sa.String(64)),
        sa.Column("device", sa.String(200)),
        sa.Column("user", sa.String(200)),
        sa.Column("role", sa.String(50)),
        sa.Column("group", sa.String(100)),
        sa.Column("site", sa.String(100)),
        sa.Column("method", sa.String(16)),
        sa.Column("scheme", sa.String(10)),
        sa.Column("host", sa.String(500)),
        sa.Column("url", sa.Text),
        sa.Column("search_term", sa.Text),
        sa.Column("category", sa.String(100)),
        sa.Column("window", sa.String(50)),
        sa.Column("window_name", sa.String(100)),
        sa.Column("rule", sa.Text),
        sa.Column("exception_id", sa.Integer),
        sa.Column("reason", sa.Text),
        sa.Column("detail", sa.Text),
    )
    op.create_index("ix_events_at", "events", ["at"])
    op.create_index("ix_events_kind", "events", ["kind"])
    op.create_index("ix_events_user", "events", ["user"])
    op.create_index("ix_events_host", "events", ["host"])
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(50), nullable=False),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
    )
    op.create_index("ix_audit_at", "audit", ["at"])


def downgrade() -> None:
    op.drop_table("audit")
    op.drop_table("events")
    op.drop_table("exceptions")
