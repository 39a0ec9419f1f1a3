"""The portal: staff accounts, access requests and content reports, notification outbox.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

from schoolgate.storage.db import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "staff",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("username", sa.String(200), nullable=False, unique=True),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("roles", sa.String(200), nullable=False),
        sa.Column("groups", sa.Text, nullable=False),
        sa.Column("password_hash", sa.String(300), nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("password_changed_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "portal_requests",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("ref", sa.String(20), nullable=False, unique=True),
        sa.Column("token", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("requester_user", sa.String(200)),
        sa.Column("requester_role", sa.String(50), nullable=False),
        sa.Column("requester_group", sa.String(100)),
        sa.Column("requester_site", sa.String(100), nullable=False),
        sa.Column("client_ip", sa.String(64)),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("host", sa.String(500), nullable=False),
        sa.Column("category", sa.String(100)),
        sa.Column("event_ref", sa.String(40)),
        sa.Column("purpose", sa.String(30), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("screenshot_file", sa.String(100)),
        sa.Column("screenshot_type", sa.String(50)),
        sa.Column("escalated_by", sa.String(200)),
        sa.Column("escalation_note", sa.Text),
        sa.Column("proposal", sa.Text),
        sa.Column("proposed_by", sa.String(200)),
        sa.Column("decided_by", sa.String(200)),
        sa.Column("decided_at", UTCDateTime),
        sa.Column("outcome", sa.Text),
        sa.Column("exception_id", sa.Integer),
    )
    op.create_index("ix_portal_requests_kind", "portal_requests", ["kind"])
    op.create_index("ix_portal_requests_status", "portal_requests", ["status"])
    op.create_index("ix_portal_requests_created_at", "portal_requests", ["created_at"])
    op.create_index("ix_portal_requests_requester_user", "portal_requests", ["requester_user"])
    op.create_table(
        "portal_outbox",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("channel", sa.String(10), nullable=False),
        sa.Column("recipient", sa.Text, nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("next_attempt_at", UTCDateTime, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("sent_at", UTCDateTime),
        sa.Column("last_error", sa.Text),
    )
    op.create_index("ix_portal_outbox_next_attempt_at", "portal_outbox", ["next_attempt_at"])
    op.create_index("ix_portal_outbox_sent_at", "portal_outbox", ["sent_at"])


def downgrade() -> None:
    op.drop_table("portal_outbox")
    op.drop_table("portal_requests")
    op.drop_table("staff")
