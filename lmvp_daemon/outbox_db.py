"""The outbox database, ``outbox.db``: its tables, their schema version and migrations, and
the connection settings every transaction of the daemon relies on.

This module owns what is stored and how the file is opened: the rows (`Watch`, `Checkpoint`,
`WatchRun`) and the values their columns hold (`CheckpointState`, `ManifestEntry`), the
schema version in SQLite's ``user_version`` and the steps that bring an older file up to it,
and the pragmas (WAL, ``synchronous=FULL``, ``BEGIN IMMEDIATE``) that make every committed
transition durable. How the rows change is `lmvp_daemon.outbox` (checkpoints) and
`lmvp_daemon.watches` (watches and their runs).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Engine,
    Enum,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from lmvp.private_files import private_sqlite, warn_if_open
from lmvp_daemon.errors import OutboxError

DB_NAME = "outbox.db"
# Stored in SQLite's `user_version`; raise it (and add the step that brings an older file up to
# it in _prepare_schema) when the tables change. Versions 0 (a fresh file) and 1 need no step:
# 2 only added the `watch_runs` table, which `create_all` makes.
SCHEMA_VERSION = 2

# One entry of a fingerprint: (relative path, size, mtime_ns, inode).
FingerprintEntry = tuple[str, int, int, int]


class CheckpointState(enum.StrEnum):
    """Where a checkpoint stands; the transitions between states are `lmvp_daemon.outbox`'s."""

    queued = "queued"  # seen, waiting to settle
    ready = "ready"  # settled: to be hashed and sent
    uploading = "uploading"
    committing = "committing"
    done = "done"
    failed = "failed"  # permanent error: shown, not retried
    waiting_retry = "waiting_retry"  # transient error: tried again at next_attempt_at


@dataclass(frozen=True)
class ManifestEntry:
    """One hashed file of a checkpoint, as the version's manifest lists it."""

    path: str
    size: int
    sha256: str


# --- the tables ----------------------------------------------------------------------------


class _UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime (SQLite drops the zone otherwise)."""

    impl = DateTime()
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the outbox; use an aware UTC datetime")
        # Stored naive in UTC so that SQLite compares the text in time order.
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


def utcnow() -> datetime:
    """Now, as the aware UTC datetime the outbox's columns take."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """The daemon's own declarative base: its tables have nothing to do with the server's."""

    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Watch(Base):
    """A folder the daemon watches, and the `project/model` its checkpoints become versions of."""

    __tablename__ = "watches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    folder: Mapped[str] = mapped_column(Text, unique=True)  # absolute, symlinks resolved
    project: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200))
    include: Mapped[list[str]] = mapped_column(JSON, default=list)
    ignore: Mapped[list[str]] = mapped_column(JSON, default=list)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(_UTCDateTime, default=utcnow)


class Checkpoint(Base):
    """One checkpoint (a file or a checkpoint directory) in one state of its content."""

    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("watch_id", "key", "fingerprint_hash"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    watch_id: Mapped[int] = mapped_column(ForeignKey("watches.id", ondelete="CASCADE"), index=True)
    # Path of the checkpoint relative to the watched folder, with forward slashes.
    key: Mapped[str] = mapped_column(Text)
    # Sorted [path, size, mtime_ns, inode] of every file: what "unchanged" is checked against.
    fingerprint: Mapped[list[list[Any]]] = mapped_column(JSON)
    fingerprint_hash: Mapped[str] = mapped_column(String(64))
    # [{path, size, sha256}] once hashed; None before.
    manifest: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, default=None)
    # `metadata` is taken by SQLAlchemy's declarative classes, hence the attribute name.
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    state: Mapped[CheckpointState] = mapped_column(
        Enum(CheckpointState, native_enum=False, length=16), default=CheckpointState.queued
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    next_attempt_at: Mapped[datetime | None] = mapped_column(_UTCDateTime, default=None)
    idempotency_key: Mapped[str] = mapped_column(String(32), unique=True)
    # Set once a commit was sent: from then on the checkpoint is pinned to its content, since
    # the server may already hold a version made with its idempotency key.
    commit_started: Mapped[bool] = mapped_column(Boolean, default=False)
    version_number: Mapped[int | None] = mapped_column(Integer, default=None)
    first_seen_at: Mapped[datetime] = mapped_column(_UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(_UTCDateTime, default=utcnow)

    @property
    def fingerprint_entries(self) -> list[FingerprintEntry]:
        """The fingerprint as typed tuples."""
        return [(str(p), int(s), int(m), int(i)) for p, s, m, i in self.fingerprint]

    @property
    def manifest_entries(self) -> list[ManifestEntry] | None:
        """The manifest as :class:`ManifestEntry` values, or None if not hashed yet."""
        if self.manifest is None:
            return None
        return [ManifestEntry(e["path"], int(e["size"]), e["sha256"]) for e in self.manifest]


class WatchRun(Base):
    """The run a watched folder feeds on the server, and how far its metric files were sent."""

    __tablename__ = "watch_runs"

    watch_id: Mapped[int] = mapped_column(
        ForeignKey("watches.id", ondelete="CASCADE"), primary_key=True
    )
    # The server's run id; None until the first checkpoint or metric point needs it.
    run_id: Mapped[int | None] = mapped_column(Integer, default=None)
    # `MetricFileReader.to_state()` as of the last points the server accepted.
    metric_state: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    points_sent: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(_UTCDateTime, default=utcnow)


def open_engine(path: Path) -> Engine:
    """Open (creating it if need be) the outbox database at `path`, migrated to SCHEMA_VERSION.

    Raises OutboxError if the file was written by a newer lmvp-daemon.
    """
    # It lists the user's checkpoints and the server's upload addresses: the user's alone,
    # whatever the state directory's mode (which a warning names if others may enter it).
    warn_if_open(path.parent, "the daemon's state directory")
    private_sqlite(path)
    engine = _make_engine(path)
    _prepare_schema(engine, path)
    return engine


# --- private helpers -----------------------------------------------------------------------


def _make_engine(path: Path) -> Engine:
    engine = create_engine(
        f"sqlite:///{path}", connect_args={"check_same_thread": False, "timeout": 30}
    )

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, say when transactions begin (see _begin_immediate).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        # FULL: a committed transition survives a power cut too, and the outbox writes little.
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn: Any) -> None:
        # Take the write lock up front: a read-then-write transaction that upgrades later can
        # fail with "database is locked" when the CLI writes at the same time.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _prepare_schema(engine: Engine, path: Path) -> None:
    with engine.begin() as conn:
        version = int(conn.exec_driver_sql("PRAGMA user_version").scalar_one())
        if version > SCHEMA_VERSION:
            raise OutboxError(
                f"{path} was written by a newer lmvp-daemon (schema {version}, this one knows "
                f"{SCHEMA_VERSION}): upgrade lmvp, or use another state directory"
            )
        Base.metadata.create_all(conn)
        if version < SCHEMA_VERSION:
            conn.exec_driver_sql(f"PRAGMA user_version={SCHEMA_VERSION}")
