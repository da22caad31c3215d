"""blob claims: when a blob was last claimed, for the garbage collector's grace period

`blobs.claimed_at` is set when an upload is about to complete into the blob,
`project_blobs.claimed_at` when `blobs/missing` tells a client the project holds it; the
collector (lmvp_server/gc.py) frees neither within its grace period of either time.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("blobs", "project_blobs"):
        op.add_column(table, sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    for table in ("blobs", "project_blobs"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_column("claimed_at")
