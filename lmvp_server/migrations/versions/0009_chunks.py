"""chunks: which chunks a project holds, and the ordered chunk list of a blob sent as chunks

Issue 17's chunk protocol (lmvp_server/services/chunks.py): a client sends only the chunks a
project lacks, then asks the server to assemble the file from them. `chunks` is one row per
chunk whose frame the blob store holds at `chunks/<sha256>` (raw size, stored frame size, when
stored, when last claimed: the garbage collector's grace period, as for blobs); `project_chunks`
which chunks a project holds (sent into it, or listed by a blob it assembled); `blob_chunks`
the ordered chunks of a blob (position, chunk, raw size, offset in the blob), and
`blobs.chunked` marks a blob whose bytes are those chunks rather than one object of the store.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chunks",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("stored_size", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("sha256"),
    )
    op.create_table(
        "project_chunks",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["sha256"], ["chunks.sha256"]),
        sa.PrimaryKeyConstraint("project_id", "sha256"),
    )
    op.create_index("ix_project_chunks_sha256", "project_chunks", ["sha256"])
    op.create_table(
        "blob_chunks",
        sa.Column("blob_sha256", sa.String(length=64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("chunk_sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["blob_sha256"], ["blobs.sha256"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["chunk_sha256"], ["chunks.sha256"]),
        sa.PrimaryKeyConstraint("blob_sha256", "position"),
    )
    op.create_index("ix_blob_chunks_chunk_sha256", "blob_chunks", ["chunk_sha256"])
    with op.batch_alter_table("blobs") as batch:
        batch.add_column(
            sa.Column("chunked", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("blobs") as batch:
        batch.drop_column("chunked")
    op.drop_index("ix_blob_chunks_chunk_sha256", "blob_chunks")
    op.drop_table("blob_chunks")
    op.drop_index("ix_project_chunks_sha256", "project_chunks")
    op.drop_table("project_chunks")
    op.drop_table("chunks")
