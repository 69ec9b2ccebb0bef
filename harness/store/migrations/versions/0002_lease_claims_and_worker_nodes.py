"""lease claims and worker nodes

``tasks.claims`` counts a task's claims: the claim number fences every write of one claim.
``workers.node`` says which boot, PID namespace and process a worker row belongs to, so
liveness is checked by PID only where PIDs mean the same thing.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 01:12:03.795700
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claims", sa.Integer(), server_default="0", nullable=False))
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("node", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.drop_column("node")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("claims")
