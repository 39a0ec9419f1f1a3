"""Circumvention sanctions: bans (lockouts and supervised-only bans), their audit trail and
supervision sessions.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

from schoolgate.storage.db import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bans",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("ref", sa.String(40), nullable=False, unique=True),
        sa.Column("subject", sa.String(250), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("starts", UTCDateTime, nullable=False),
        sa.Column("ends", UTCDateTime, nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("stage", sa.Integer, nullable=True),
        sa.Column("points", sa.Float, nullable=True),
        sa.Column("events", sa.Text, nullable=False),
        sa.Column("role", sa.String(50), nullable=True),
        sa.Column("client_ip", sa.String(64), nullable=True),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("lifted_at", UTCDateTime, nullable=True),
        sa.Column("lifted_by", sa.String(200), nullable=True),
        sa.Column("lift_reason", sa.Text, nullable=True),
        sa.Column("expiry_noted_at", UTCDateTime, nullable=True),
    )
    op.create_index("ix_bans_subject", "bans", ["subject"])
    op.create_index("ix_bans_ends", "bans", ["ends"])
    op.create_table(
        "ban_audit",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("ban_id", sa.Integer, sa.ForeignKey("bans.id"), nullable=True),
        sa.Column("supervision_id", sa.Integer, nullable=True),
        sa.Column("subject", sa.String(250), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
    )
    op.create_index("ix_ban_audit_at", "ban_audit", ["at"])
    op.create_index("ix_ban_audit_ban_id", "ban_audit", ["ban_id"])
    op.create_index("ix_ban_audit_subject", "ban_audit", ["subject"])
    op.create_table(
        "supervision_sessions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("ref", sa.String(40), nullable=False, unique=True),
        sa.Column("subject", sa.String(250), nullable=False),
        sa.Column("ban_id", sa.Integer, sa.ForeignKey("bans.id"), nullable=True),
        sa.Column("staff", sa.String(200), nullable=False),
        sa.Column("starts", UTCDateTime, nullable=False),
        sa.Column("ends", UTCDateTime, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("ended_at", UTCDateTime, nullable=True),
        sa.Column("ended_by", sa.String(200), nullable=True),
    )
    op.create_index("ix_supervision_sessions_subject", "supervision_sessions", ["subject"])
    op.create_index("ix_supervision_sessions_ends", "supervision_sessions", ["ends"])


def downgrade() -> None:
    op.drop_table("supervision_sessions")
    op.drop_table("ban_audit")
    op.drop_table("bans")
