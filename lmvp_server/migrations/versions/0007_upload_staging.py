"""upload staging in an object store: an upload's multipart upload, its parts and its writer

With blobs in an S3-compatible store, the bytes of an upload in progress wait there as a
multipart upload (lmvp_server/upload_staging_s3.py): `uploads` records how many bytes are held
(`staged`), the multipart upload, the object holding bytes short of a part (`tail_key`,
`tail_size`), the next part number, and the writer's lease (`writer`, `writer_until`,
`let_go`, `generation`); `upload_parts` lists the parts (number, size, ETag).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(sa.Column("staged", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("multipart_id", sa.String(length=1024), nullable=True))
        batch.add_column(sa.Column("tail_key", sa.String(length=1024), nullable=True))
        batch.add_column(
            sa.Column("tail_size", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("next_part", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("writer", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("writer_until", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("let_go", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("generation", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "upload_parts",
        sa.Column("upload_id", sa.String(length=32), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("etag", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(["upload_id"], ["uploads.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("upload_id", "number"),
    )


def downgrade() -> None:
    op.drop_table("upload_parts")
    with op.batch_alter_table("uploads") as batch:
        for column in (
            "generation",
            "let_go",
            "writer_until",
            "writer",
            "next_part",
            "tail_size",
            "tail_key",
            "multipart_id",
            "staged",
        ):
            batch.drop_column(column)
