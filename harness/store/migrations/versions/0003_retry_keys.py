"""retry keys

A write retried after a commit whose outcome was unknown (a dropped connection at COMMIT)
must not apply twice: ``reservations.key`` lets a retried reservation find the one it took,
and an index on ``calls.reservation_id`` lets a retried settlement find the rows it wrote.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 02:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("key", sa.String(length=32), nullable=True))
        batch_op.create_index("ix_reservations_key", ["key"], unique=True)
    with op.batch_alter_table("calls", schema=None) as batch_op:
        batch_op.create_index("ix_calls_reservation_id", ["reservation_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("calls", schema=None) as batch_op:
        batch_op.drop_index("ix_calls_reservation_id")
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.drop_index("ix_reservations_key")
        batch_op.drop_column("key")
