"""Indexes for the IT Support queue: its filters (status, kind) in the order it shows them
(oldest first), so a page of a school year's requests is read from an index rather than by
sorting every matching row. (No ``(kind, created_at)``: without table statistics SQLite
prefers it for "open reports" too, and then walks every report ever sent.)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_portal_requests_status_created_at": ["status", "created_at"],
    "ix_portal_requests_kind_status_created_at": ["kind", "status", "created_at"],
}


def upgrade() -> None:
    for name, columns in INDEXES.items():
        op.create_index(name, "portal_requests", columns)


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="portal_requests")
