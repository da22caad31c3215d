"""Alembic environment: migrations run on the connection `lmvp_server.migrate` hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from lmvp_server import models  # noqa: F401  (registers the tables on Base.metadata)
from lmvp_server.db import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as conn:
        _run(conn)


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies the table
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `lmvp-server migrate`")
run_migrations_online()
