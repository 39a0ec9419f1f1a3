"""Portal sign-in kept in the database, shared by every worker and gateway: failed sign-ins
(``login_failures``, counted per account and kind of source address, and per address) and
staff sessions (``staff_sessions``: signing out ends one on the server). The audit trails
record the operating system user that ran a state-changing command (``os_user``).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

from schoolgate.storage.db import UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "login_failures",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("username", sa.String(200), nullable=False),
        sa.Column("source", sa.String(100), nullable=False),
        sa.Column("client_ip", sa.String(64), nullable=False),
    )
    op.create_index("ix_login_failures_at", "login_failures", ["at"])
    op.create_index("ix_login_failures_account", "login_failures", ["username", "source", "at"])
    op.create_index("ix_login_failures_address", "login_failures", ["client_ip", "at"])
    op.create_table(
        "staff_sessions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("staff_id", sa.Integer, sa.ForeignKey("staff.id"), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("seen_at", UTCDateTime, nullable=False),
        sa.Column("ended_at", UTCDateTime, nullable=True),
        sa.Column("end_reason", sa.String(100), nullable=True),
        sa.Column("client_ip", sa.String(64), nullable=True),
    )
    op.create_index("ix_staff_sessions_staff_id", "staff_sessions", ["staff_id"])
    op.create_index("ix_staff_sessions_seen_at", "staff_sessions", ["seen_at"])
    op.add_column("audit", sa.Column("os_user", sa.String(200), nullable=True))
    op.add_column("ban_audit", sa.Column("os_user", sa.String(200), nullable=True))


def downgrade() -> None:
    # Batch mode: SQLite cannot drop a column in place on older versions.
    with op.batch_alter_table("ban_audit") as batch:
        batch.drop_column("os_user")
    with op.batch_alter_table("audit") as batch:
        batch.drop_column("os_user")
    op.drop_table("staff_sessions")
    op.drop_table("login_failures")
