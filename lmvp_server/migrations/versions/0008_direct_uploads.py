"""uploads straight to their blob's key: where the multipart upload is, and the running sha256

An upload that declared its sha256, staged in an object store, goes up as a multipart upload at
the blob's own key (lmvp_server/upload_staging_s3.py), completed only once its bytes hash to
the declared sha256: `uploads.multipart_key` records that key (NULL: the staging key), and
`upload_parts.hash_state` the running sha256 after each part (lmvp_server/sha256_state.py),
which a worker taking the upload over continues.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(sa.Column("multipart_key", sa.String(length=1024), nullable=True))
    with op.batch_alter_table("upload_parts") as batch:
        batch.add_column(sa.Column("hash_state", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("upload_parts") as batch:
        batch.drop_column("hash_state")
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("multipart_key")
