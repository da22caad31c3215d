"""Schema migrations with Alembic, run from code (no alembic.ini to ship or find), and the
start-up lock that lets several hosts start on one database at once.

`startup_lock` serialises the start-up work (migrating the schema, creating the first admin)
across every process on the database: on PostgreSQL a session-level advisory lock on a fixed
key, held on a connection of its own; on SQLite an exclusive `flock` on a file next to the
database (`lmvp.db.startup-lock`), since SQLite's own locking does not cover Alembic's DDL
(Python's sqlite3 opens no transaction before CREATE TABLE). Whoever comes second waits, then
finds the work done.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

MIGRATIONS = Path(__file__).with_name("migrations")
# The advisory lock's key: any fixed 64-bit number; this one is the bytes of "LMVPinit".
STARTUP_LOCK_KEY = 0x4C4D5650_696E6974

log = logging.getLogger(__name__)


def alembic_config(engine: Engine | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if engine is not None:
        config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
        config.attributes["engine"] = engine
    return config


def upgrade_database(engine: Engine) -> None:
    """Apply every migration not yet applied, under the start-up lock. Safe to call on each
    start, from any number of processes at once."""
    with startup_lock(engine):
        apply_migrations(engine)


def apply_migrations(engine: Engine) -> None:
    """Apply every migration not yet applied; the caller holds `startup_lock`."""
    with engine.begin() as connection:
        config = alembic_config(engine)
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


@contextmanager
def startup_lock(engine: Engine) -> Iterator[None]:
    """Hold the database's start-up lock: one process at a time, across hosts, runs the body.

    Not re-entrant: a process holding it must not ask for it again."""
    if engine.dialect.name == "postgresql":
        with _advisory_lock(engine):
            yield
    elif engine.dialect.name == "sqlite" and _sqlite_file(engine) is not None:
        with _file_lock(Path(f"{_sqlite_file(engine)}.startup-lock")):
            yield
    else:  # an in-memory SQLite database belongs to one process
        yield


@contextmanager
def _advisory_lock(engine: Engine) -> Iterator[None]:
    # Its own engine without a pool: the lock's connection is never one the work needs, and
    # it is closed (which would release the lock too) as soon as the work is done.
    locker = create_engine(engine.url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with locker.connect() as conn:
            key = {"key": STARTUP_LOCK_KEY}
            if not conn.scalar(text("SELECT pg_try_advisory_lock(:key)"), key):
                log.info("waiting for another server's start-up on this database to finish")
                conn.execute(text("SELECT pg_advisory_lock(:key)"), key)
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), key)
    finally:
        locker.dispose()


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another server's start-up on this database to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _sqlite_file(engine: Engine) -> str | None:
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return database
