"""The ORM models: the domain of DESIGN.md ("Domain") as tables. No SQLite-only constructs."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from lmvp_server.db import Base, UTCDateTime, utcnow

# JSONB on PostgreSQL (indexable, compact), plain JSON text elsewhere.
JSONType = JSON().with_variant(JSONB(), "postgresql")
# The same, where None is SQL NULL rather than JSON `null` (so `IS NULL` finds it).
NullableJSON = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
# SQLite only auto-increments an INTEGER PRIMARY KEY, PostgreSQL wants BIGINT for a log.
BigID = BigInteger().with_variant(Integer(), "sqlite")


class Role(enum.IntEnum):
    """Project roles, ordered: each role can do everything the ones below it can."""

    viewer = 10
    contributor = 20
    maintainer = 30
    owner = 40


class TokenScope(enum.StrEnum):
    read = "read"
    write = "write"


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    password_hash: Mapped[str | None] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Token(Base):
    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    # The first characters of the token, shown in listings so people can tell tokens apart.
    prefix: Mapped[str] = mapped_column(String(16))
    # sha256 of the whole token: tokens are 256-bit random, so a fast hash is enough.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(16), default=TokenScope.write.value)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    user: Mapped[User] = relationship(lazy="joined")


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # In the trash since then (services/trash.py), by that user; purged LMVP_TRASH_DAYS later.
    # Meanwhile `name` is `<name>~<id>` (no name can hold `~`), so the name is free for a new
    # project, and `deleted_name` keeps the name to restore.
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    deleted_by: Mapped[str | None] = mapped_column(String(64))
    deleted_name: Mapped[str | None] = mapped_column(String(64))
    # The default retention policy of the project's models (services/retention.py).
    retention_policy: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON)


class Membership(Base):
    __tablename__ = "memberships"

    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    user: Mapped[User] = relationship(lazy="joined")


class Model(Base):
    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The last version number handed out; bumped under a row lock so numbers are never reused.
    version_counter: Mapped[int] = mapped_column(Integer, default=0)
    # Bumped by every change to the model's versions or aliases: listings are cached by it.
    revision: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # In the trash since then, by that user, under a free name (see Project); its versions go
    # and come back with it.
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    deleted_by: Mapped[str | None] = mapped_column(String(64))
    deleted_name: Mapped[str | None] = mapped_column(String(128))
    # Its retention policy; None follows the project's default.
    retention_policy: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON)


class Version(Base):
    __tablename__ = "versions"
    __table_args__ = (
        UniqueConstraint("model_id", "number"),
        UniqueConstraint("model_id", "idempotency_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    author_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    message: Mapped[str] = mapped_column(Text, default="")
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("versions.id", ondelete="SET NULL"))
    source_host: Mapped[str] = mapped_column(String(255), default="")
    source_path: Mapped[str] = mapped_column(Text, default="")
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    file_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The run this version was taken from and the run's step at that moment (plots mark it).
    run_id: Mapped[int | None] = mapped_column(
        ForeignKey("runs.id", ondelete="SET NULL"), index=True
    )
    step: Mapped[int | None] = mapped_column(BigInteger)
    # In the trash since then (deleted by hand or by a retention policy; services/trash.py):
    # left out of listings, `latest` and aliases, restorable until purged LMVP_TRASH_DAYS later.
    # Its files stay referenced (the garbage collector keeps their blobs) until then.
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    deleted_by: Mapped[str | None] = mapped_column(String(64))
    # Why: "by hand", or the retention policy that removed it.
    deleted_reason: Mapped[str | None] = mapped_column(String(255))
    # The aliases that pointed at it when it was deleted; a restore puts back those still free.
    deleted_aliases: Mapped[list[str] | None] = mapped_column(NullableJSON)

    author: Mapped[User | None] = relationship(lazy="joined")
    parent: Mapped[Version | None] = relationship(remote_side=[id], lazy="joined", join_depth=1)
    files: Mapped[list[VersionFile]] = relationship(
        order_by="VersionFile.path", cascade="all, delete-orphan", passive_deletes=True
    )


class VersionFile(Base):
    __tablename__ = "version_files"
    __table_args__ = (UniqueConstraint("version_id", "path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), index=True)


class Alias(Base):
    __tablename__ = "aliases"

    model_id: Mapped[int] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    version_id: Mapped[int] = mapped_column(
        ForeignKey("versions.id", ondelete="CASCADE"), index=True
    )
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Blob(Base):
    """Bytes held by the blob store, once however many projects and versions use them."""

    __tablename__ = "blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Last time an upload was about to complete into it (lmvp_server/gc.py): the garbage
    # collector leaves a blob claimed within its grace period alone. NULL: never since created.
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Its bytes are its chunks (`BlobChunk`, assembled from a chunk pack), not one object of the
    # store (lmvp_server/services/chunks.py).
    chunked: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    chunks: Mapped[list[BlobChunk]] = relationship(
        order_by="BlobChunk.position", viewonly=True, lazy="select"
    )


class Chunk(Base):
    """A chunk whose frame the blob store holds at `chunks/<sha256>` (compressed where that
    paid), once however many projects and blobs use it (lmvp_server/services/chunks.py)."""

    __tablename__ = "chunks"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Raw bytes, and the stored frame's bytes (NULL until the frame is in the store).
    size: Mapped[int] = mapped_column(BigInteger)
    stored_size: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Last time a pack was about to store it (lmvp_server/gc.py keeps it for the grace period).
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ProjectChunk(Base):
    """A project holds a chunk once someone sent its bytes into that project (or assembled a
    blob listing it)."""

    __tablename__ = "project_chunks"

    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    sha256: Mapped[str] = mapped_column(ForeignKey("chunks.sha256"), primary_key=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Last time `chunks/missing` or an assembly told a client the project holds it: kept through
    # the grace period so the assembly that follows finds it.
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class BlobChunk(Base):
    """The chunk at `position` of a chunked blob: its raw bytes are the blob's bytes from
    `offset` for `size` bytes."""

    __tablename__ = "blob_chunks"

    blob_sha256: Mapped[str] = mapped_column(
        ForeignKey("blobs.sha256", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    # Indexed: the garbage collector asks whether any blob lists a chunk.
    chunk_sha256: Mapped[str] = mapped_column(ForeignKey("chunks.sha256"), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    offset: Mapped[int] = mapped_column(BigInteger)


class ProjectBlob(Base):
    """A project holds a blob only once someone uploaded its bytes into that project."""

    __tablename__ = "project_blobs"
    __table_args__ = (Index("ix_project_blobs_project_id_size", "project_id", "size"),)

    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    # Indexed on its own too: the garbage collector asks whether any project holds a blob.
    sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"), primary_key=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The blob's size, copied here so a project's total is one index range (services/usage.py).
    size: Mapped[int | None] = mapped_column(BigInteger)
    # Last time `blobs/missing` told a client the project holds it (lmvp_server/gc.py): kept
    # through the grace period so the commit that follows finds it. NULL: never since created.
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Upload(Base):
    """A tus upload in progress; its bytes so far wait in `<data_dir>/uploads/<id>`, or in the
    object store (`lmvp_server.upload_staging`, `lmvp_server.upload_staging_s3`)."""

    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    sha256: Mapped[str] = mapped_column(String(64))
    length: Mapped[int] = mapped_column(BigInteger)
    filename: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Staged in an object store (lmvp_server/upload_staging_s3.py); unused by the local staging,
    # whose partial file's size is the offset. Bytes held, the multipart upload, the object
    # holding bytes short of a part, the next part number to use.
    staged: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    multipart_id: Mapped[str | None] = mapped_column(String(1024))
    tail_key: Mapped[str | None] = mapped_column(String(1024))
    tail_size: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    next_part: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # Where the multipart upload is when not at the staging key `<prefix>/uploads/<id>`: the
    # blob's own key, for an upload that declared its sha256 (completed only once verified).
    multipart_key: Mapped[str | None] = mapped_column(String(1024))
    # The lease of the request writing to it: who, until when (renewed while bytes flow), whether
    # a newer request asked it to let go, and a number bumped by each new writer.
    writer: Mapped[str | None] = mapped_column(String(64))
    writer_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    let_go: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class UploadPart(Base):
    """A part of an upload staged as a multipart upload in an object store."""

    __tablename__ = "upload_parts"

    upload_id: Mapped[str] = mapped_column(
        ForeignKey("uploads.id", ondelete="CASCADE"), primary_key=True
    )
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    etag: Mapped[str] = mapped_column(String(128))
    # The upload's running sha256 after this part (lmvp_server/sha256_state.py), for an upload
    # staged at its blob's key: what a worker taking it over continues.
    hash_state: Mapped[bytes | None] = mapped_column(LargeBinary)


class Event(Base):
    """The append-only audit log, also the source of the live event stream."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_project_id_id", "project_id", "id"),)

    id: Mapped[int] = mapped_column(BigID, primary_key=True, autoincrement=True)
    # Kept (as NULL) when the project is deleted; `project_name` still tells which it was.
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id", ondelete="SET NULL"))
    project_name: Mapped[str] = mapped_column(String(64), default="")
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(String(64))
    model_name: Mapped[str | None] = mapped_column(String(128))
    version_number: Mapped[int | None] = mapped_column(Integer)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    actor: Mapped[User | None] = relationship(lazy="joined")


class RunStatus(enum.StrEnum):
    running = "running"
    finished = "finished"
    failed = "failed"


class Run(Base):
    """One training session of a model: its parameters, status and metric series."""

    __tablename__ = "runs"
    __table_args__ = (Index("ix_runs_model_id_id", "model_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200), default="")
    host: Mapped[str] = mapped_column(String(255), default="")
    params: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.running.value)
    author_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Last change to the run or its points; bumping it is also how ingestion takes its lock.
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    author: Mapped[User | None] = relationship(lazy="joined")


class MetricKey(Base):
    """One metric series of a run (`loss`, `eval/accuracy`), with a summary kept up to date as
    points arrive, so listings and snapshots never scan the points.

    The points and tiles refer to this row's id rather than repeating (run, key) text: their
    primary keys stay two and three integers wide at millions of rows.
    """

    __tablename__ = "metric_keys"
    __table_args__ = (UniqueConstraint("run_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    point_count: Mapped[int] = mapped_column(BigInteger, default=0)
    first_step: Mapped[int | None] = mapped_column(BigInteger)
    last_step: Mapped[int | None] = mapped_column(BigInteger)
    # NULL is NaN when last_step is set (see MetricPoint).
    last_value: Mapped[float | None] = mapped_column(Double)
    # Tiles exist for levels 0 .. tile_levels - 1 (see MetricTile).
    tile_levels: Mapped[int] = mapped_column(Integer, default=0)


class MetricPoint(Base):
    """A point of a series: unique per (key, step), so a batch sent twice stores nothing new.

    `value` NULL means NaN: SQLite cannot store NaN (it turns it into NULL anyway) and
    PostgreSQL sorts NaN above every number, which would make it every bucket's maximum.
    Infinities are stored as they are on both. `wall_time` is seconds since the Unix epoch.
    On SQLite the table is WITHOUT ROWID: rows live in primary-key order, so a key's points
    are one contiguous range of the b-tree.
    """

    __tablename__ = "metric_points"
    __table_args__ = ({"sqlite_with_rowid": False},)

    key_id: Mapped[int] = mapped_column(
        ForeignKey("metric_keys.id", ondelete="CASCADE"), primary_key=True
    )
    step: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    value: Mapped[float | None] = mapped_column(Double)
    wall_time: Mapped[float] = mapped_column(Double)


class MetricTile(Base):
    """A pre-computed summary of the points of one key in an aligned range of steps.

    Level `l` tiles cover `TILE_BASE * 4**l` steps each (`tile` = step // width). Each holds the
    point count and four representative points (first, last, minimum, maximum: what the M4
    downsampling keeps), so downsampling a million points to two thousand reads about a
    thousand tiles instead of a million points. Maintained by ingestion; NULL values as in
    `MetricPoint`, and min/max are NULL when every value in the tile is NaN.
    """

    __tablename__ = "metric_tiles"
    __table_args__ = ({"sqlite_with_rowid": False},)

    key_id: Mapped[int] = mapped_column(
        ForeignKey("metric_keys.id", ondelete="CASCADE"), primary_key=True
    )
    level: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    tile: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    point_count: Mapped[int] = mapped_column(BigInteger)
    first_step: Mapped[int] = mapped_column(BigInteger)
    first_value: Mapped[float | None] = mapped_column(Double)
    first_wall: Mapped[float] = mapped_column(Double)
    last_step: Mapped[int] = mapped_column(BigInteger)
    last_value: Mapped[float | None] = mapped_column(Double)
    last_wall: Mapped[float] = mapped_column(Double)
    min_step: Mapped[int | None] = mapped_column(BigInteger)
    min_value: Mapped[float | None] = mapped_column(Double)
    min_wall: Mapped[float | None] = mapped_column(Double)
    max_step: Mapped[int | None] = mapped_column(BigInteger)
    max_value: Mapped[float | None] = mapped_column(Double)
    max_wall: Mapped[float | None] = mapped_column(Double)


class LoginFailure(Base):
    """A failed password login, kept for the throttling window (see `login_guard`): in the
    database so that every worker of a server counts the same failures."""

    __tablename__ = "login_failures"
    __table_args__ = (
        Index("ix_login_failures_username_at", "username", "at"),
        Index("ix_login_failures_address_at", "address", "at"),
        Index("ix_login_failures_at", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The name as typed (accounts that do not exist are throttled alike), at most 64 chars.
    username: Mapped[str] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
