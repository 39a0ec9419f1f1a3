"""Safeguarding cases for the designated safeguarding lead (``safeguarding_cases``), their
notes and status changes (``safeguarding_case_notes``), and the review of each risk match
(``safeguarding_matches``: a ``search`` or ``page_risk`` event reviewed, with the case it
belongs to or "no concern").

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

from schoolgate.storage.db import UTCDateTime

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "safeguarding_cases",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("subject", sa.String(250), nullable=False, index=True),
        sa.Column("group", sa.String(100), nullable=True),
        sa.Column("status", sa.String(20), nullable=False, index=True),
        sa.Column("outcome", sa.Text, nullable=False, server_default=""),
        sa.Column("opened_by", sa.String(200), nullable=False),
        sa.Column("opened_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("closed_at", UTCDateTime, nullable=True, index=True),
        sa.Column("closed_by", sa.String(200), nullable=True),
    )
    op.create_table(
        "safeguarding_case_notes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "case_id",
            sa.Integer,
            sa.ForeignKey("safeguarding_cases.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("author", sa.String(200), nullable=False),
        sa.Column("status", sa.String(20), nullable=True),
        sa.Column("text", sa.Text, nullable=False, server_default=""),
    )
    op.create_table(
        "safeguarding_matches",
        sa.Column("event_ref", sa.String(40), primary_key=True),
        sa.Column(
            "case_id",
            sa.Integer,
            sa.ForeignKey("safeguarding_cases.id", ondelete="CASCADE"),
            nullable=True,
            index=True,
        ),
        sa.Column("subject", sa.String(250), nullable=True, index=True),
        sa.Column("reviewed_by", sa.String(200), nullable=False),
        sa.Column("reviewed_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("safeguarding_matches")
    op.drop_table("safeguarding_case_notes")
    op.drop_table("safeguarding_cases")
