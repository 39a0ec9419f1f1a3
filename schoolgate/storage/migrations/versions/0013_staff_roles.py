"""Staff roles as rows (``staff_roles``: one per member of staff and role) instead of the
comma-separated ``staff.roles`` text; the roles already given are copied over, in their order.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# The tables as this migration knows them (never the models, which move on).
staff = sa.table("staff", sa.column("id", sa.Integer), sa.column("roles", sa.String))
staff_roles = sa.table(
    "staff_roles",
    sa.column("id", sa.Integer),
    sa.column("staff_id", sa.Integer),
    sa.column("role", sa.String),
)


def upgrade() -> None:
    op.create_table(
        "staff_roles",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "staff_id",
            sa.Integer,
            sa.ForeignKey("staff.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("role", sa.String(50), nullable=False),
        sa.UniqueConstraint("staff_id", "role", name="uq_staff_roles_staff_id_role"),
    )
    connection = op.get_bind()
    rows = []
    for staff_id, text in connection.execute(sa.select(staff.c.id, staff.c.roles)):
        roles = [r.strip() for r in (text or "").split(",") if r.strip()]
        rows += [{"staff_id": staff_id, "role": role} for role in dict.fromkeys(roles)]
    if rows:
        op.bulk_insert(staff_roles, rows)
    with op.batch_alter_table("staff") as batch:
        batch.drop_column("roles")


def downgrade() -> None:
    with op.batch_alter_table("staff") as batch:
        batch.add_column(sa.Column("roles", sa.String(200), nullable=False, server_default=""))
    connection = op.get_bind()
    held: dict[int, list[str]] = {}
    query = sa.select(staff_roles.c.staff_id, staff_roles.c.role).order_by(staff_roles.c.id)
    for staff_id, role in connection.execute(query):
        held.setdefault(staff_id, []).append(role)
    for staff_id, roles in held.items():
        connection.execute(
            sa.update(staff).where(staff.c.id == staff_id).values(roles=",".join(roles))
        )
    op.drop_table("staff_roles")
