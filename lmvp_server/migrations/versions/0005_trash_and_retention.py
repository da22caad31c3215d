"""trash and retention: soft deletion of versions, models and projects; retention policies

A deleted version, model or project keeps its rows, marked `deleted_at` (and by whom, why, the
aliases a version had, the name a model or project had), until it is purged LMVP_TRASH_DAYS
later; `retention_policy` holds a
model's policy and a project's default.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def _trash_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_by", sa.String(length=64), nullable=True),
    ]


def upgrade() -> None:
    for table, width in (("projects", 64), ("models", 128)):
        for column in [
            *_trash_columns(),
            sa.Column("deleted_name", sa.String(length=width), nullable=True),
            sa.Column("retention_policy", _JSON, nullable=True),
        ]:
            op.add_column(table, column)
        op.create_index(f"ix_{table}_deleted_at", table, ["deleted_at"])
    for column in [
        *_trash_columns(),
        sa.Column("deleted_reason", sa.String(length=255), nullable=True),
        sa.Column("deleted_aliases", _JSON, nullable=True),
    ]:
        op.add_column("versions", column)
    op.create_index("ix_versions_deleted_at", "versions", ["deleted_at"])


def downgrade() -> None:
    op.drop_index("ix_versions_deleted_at", "versions")
    with op.batch_alter_table("versions") as batch_op:
        for name in ("deleted_at", "deleted_by", "deleted_reason", "deleted_aliases"):
            batch_op.drop_column(name)
    for table in ("projects", "models"):
        op.drop_index(f"ix_{table}_deleted_at", table)
        with op.batch_alter_table(table) as batch_op:
            for name in ("deleted_at", "deleted_by", "deleted_name", "retention_policy"):
                batch_op.drop_column(name)
