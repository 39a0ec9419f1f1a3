"""Two-factor sign-in (TOTP) for local staff accounts: the enrolled secret (encrypted with a
key derived from the gateway's secret.key), when it was confirmed, the last time step used (a
code is never accepted twice) and the hashed recovery codes.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

from schoolgate.storage.db import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("staff") as batch:
        batch.add_column(sa.Column("totp_secret", sa.Text, nullable=True))
        batch.add_column(sa.Column("totp_enabled_at", UTCDateTime, nullable=True))
        batch.add_column(sa.Column("totp_last_step", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("totp_recovery", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("staff") as batch:
        batch.drop_column("totp_recovery")
        batch.drop_column("totp_last_step")
        batch.drop_column("totp_enabled_at")
        batch.drop_column("totp_secret")
