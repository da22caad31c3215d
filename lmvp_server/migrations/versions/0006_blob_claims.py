"""blob claims and sizes: when a blob was last claimed, for the garbage collector's grace
period, and a project's blobs' sizes where its total is one index range

`blobs.claimed_at` is set when an upload is about to complete into the blob,
`project_blobs.claimed_at` when `blobs/missing` tells a client the project holds it; the
collector (lmvp_server/gc.py) frees neither within its grace period of either time. An index
on `project_blobs.sha256` lets the collector ask whether any project still holds a blob.
`project_blobs.size` repeats the blob's size, indexed with the project, so the project listing
sums a project's bytes from the index alone (services/usage.py).

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
    op.create_index("ix_project_blobs_sha256", "project_blobs", ["sha256"])
    op.add_column("project_blobs", sa.Column("size", sa.BigInteger(), nullable=True))
    op.execute(
        "UPDATE project_blobs SET size = "
        "(SELECT blobs.size FROM blobs WHERE blobs.sha256 = project_blobs.sha256)"
    )
    op.create_index("ix_project_blobs_project_id_size", "project_blobs", ["project_id", "size"])


def downgrade() -> None:
    op.drop_index("ix_project_blobs_project_id_size", "project_blobs")
    op.drop_index("ix_project_blobs_sha256", "project_blobs")
    with op.batch_alter_table("project_blobs") as batch_op:
        batch_op.drop_column("size")
    for table in ("blobs", "project_blobs"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_column("claimed_at")
