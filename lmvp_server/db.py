"""Database engine and sessions. The same code runs on SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Engine, MetaData, create_engine, event, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from lmvp_server.file_modes import private_sqlite

log = logging.getLogger(__name__)

# Stable constraint names so Alembic migrations read the same on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite drops the zone otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use utcnow()")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


def make_engine(url: str, *, pool: tuple[int, int] = (10, 20)) -> Engine:
    """Create the engine; on PostgreSQL with `pool` = (pool_size, max_overflow) (see
    `Settings.database_pool`); on SQLite turn on WAL, foreign keys and a generous busy timeout, and
    make the database file 0600 before SQLite opens it (its `-wal` and `-shm` files take that
    mode): it holds the password hashes."""
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:" and not database.startswith("file:"):
            private_sqlite(Path(database))
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    pool_size, max_overflow = pool
    # No ping before each use of a pooled connection: it cost a round trip and 0.2-0.3 ms of
    # the worker's CPU per request (a third of a cached listing's). A connection the database
    # dropped (a restart, a failover) fails the one request that meets it instead: SQLAlchemy
    # then replaces every older connection of the pool, and that request gets 503 with
    # Retry-After (errors.py), which clients retry. TCP keepalives find a peer gone silently,
    # and connections are renewed every half hour, before idle-connection killers act.
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_recycle=1800,
        connect_args={
            "keepalives": 1,
            "keepalives_idle": 60,
            "keepalives_interval": 10,
            "keepalives_count": 6,
        },
    )


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def database_lost(exc: DBAPIError) -> bool:
    """Whether a database error means the database went away (a restart or failover dropped the
    connection, the database is out of reach, or it gave up on a lock), not a bug."""
    return exc.connection_invalidated or isinstance(exc, OperationalError)


def close_session(session: Session) -> None:
    """End a session. Closing rolls back on its connection, and the database may have dropped
    that connection since the session's last query (a restart between a request's last query and
    its end, with the answer on its way already). Nothing is lost then: what was committed is
    committed, the rest died with the connection. So the connection is thrown away with one line
    in the log, rather than an error raised where nobody can answer it."""
    try:
        session.close()
    except DBAPIError as exc:
        if not database_lost(exc):
            raise
        log.warning("the database dropped a connection as a session ended: %s", exc.orig)
        session.invalidate()


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        close_session(session)
