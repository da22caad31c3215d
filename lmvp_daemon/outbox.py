"""The daemon's durable outbox: every watch and every checkpoint it must version, in SQLite.

The daemon works from this database and nothing else, so a crash, `kill -9`, a reboot or an
offline server loses nothing: what was seen, hashed, half-uploaded or half-committed is all
here when it starts again. This module owns the database (``outbox.db`` in the state
directory), the state machine of a checkpoint, retry backoff, and the one-daemon-per-state-dir
lock (``daemon.lock``). It knows nothing of watchdog, HTTP or Qt.

A checkpoint moves through :class:`CheckpointState`::

    queued -> ready -> uploading -> committing -> done
       ^        |          |            |
       |        +----------+------------+--> waiting_retry -> (uploading | committing)
       +-- requeue (file changed) ------+--> failed

A checkpoint is one ``(watch, key, fingerprint)``: the same file rewritten later is a new
checkpoint, re-seeing an unchanged one is not. Its idempotency key is made once, when its
fingerprint is first recorded, and kept across restarts, so a commit retried after a crash
never makes two versions.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import hashlib
import json
import logging
import os
import random
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import platformdirs
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
    func,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

from lmvp_daemon.errors import DaemonError

log = logging.getLogger(__name__)

STATE_DIR_ENV = "LMVP_DAEMON_STATE_DIR"
DB_NAME = "outbox.db"
LOCK_NAME = "daemon.lock"
# Stored in SQLite's `user_version`; raise it (and add a step to _migrate) when the tables change.
SCHEMA_VERSION = 2

BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 300.0

# One entry of a fingerprint: (relative path, size, mtime_ns, inode).
FingerprintEntry = tuple[str, int, int, int]


class OutboxError(DaemonError):
    """A problem with the outbox or its lock, with a message a user can act on."""

    title: str = "Daemon state error"


class CheckpointChanged(OutboxError):
    """A checkpoint was not in the state a transition needs: something else moved it.

    Typically the file changed while it was being hashed or uploaded and the watcher put it
    back to `queued`; the worker holding it should drop it and take the next one.
    """


class CheckpointState(enum.StrEnum):
    queued = "queued"  # seen, waiting to settle
    ready = "ready"  # settled: to be hashed and sent
    uploading = "uploading"
    committing = "committing"
    done = "done"
    failed = "failed"  # permanent error: shown, not retried
    waiting_retry = "waiting_retry"  # transient error: tried again at next_attempt_at


OPEN_STATES = frozenset(CheckpointState) - {CheckpointState.done, CheckpointState.failed}


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


def _utcnow() -> datetime:
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
    created_at: Mapped[datetime] = mapped_column(_UTCDateTime, default=_utcnow)


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
    first_seen_at: Mapped[datetime] = mapped_column(_UTCDateTime, default=_utcnow)
    updated_at: Mapped[datetime] = mapped_column(_UTCDateTime, default=_utcnow)

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
    updated_at: Mapped[datetime] = mapped_column(_UTCDateTime, default=_utcnow)


# --- the outbox ----------------------------------------------------------------------------


class Outbox:
    """The daemon's durable queue of watches and checkpoints.

    Every method is one transaction, committed (and on disk) before it returns, and returns
    detached copies of the rows: change state through the methods, not by assigning.
    """

    def __init__(self, state_dir: Path | None = None) -> None:
        self.state_dir = resolve_state_dir(state_dir)
        self.path = self.state_dir / DB_NAME
        self._engine = _make_engine(self.path)
        _prepare_schema(self._engine, self.path)
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)

    def close(self) -> None:
        """Close every connection to the database. The outbox is unusable afterwards."""
        self._engine.dispose()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- watches ---

    def add_watch(
        self,
        folder: str | os.PathLike[str],
        project: str,
        model: str,
        *,
        include: Sequence[str] | None = None,
        ignore: Sequence[str] | None = None,
    ) -> Watch:
        """Start watching `folder` for checkpoints of `project/model`.

        Returns the new watch. Raises OutboxError if the folder is already watched, or lies
        inside a watched folder, or contains one (a checkpoint would belong to two watches).
        """
        path = _absolute_folder(folder)
        with self._sessions.begin() as session:
            for other in session.scalars(select(Watch)):
                there = Path(other.folder)
                if there == path:
                    raise OutboxError(
                        f"{path} is already watched (for {other.project}/{other.model}): "
                        f"remove that watch first with `lmvp-daemon watch rm {path}`"
                    )
                if path.is_relative_to(there) or there.is_relative_to(path):
                    inner, outer = (path, there) if path.is_relative_to(there) else (there, path)
                    raise OutboxError(
                        f"{inner} is inside {outer}, and one of them is already watched "
                        f"(for {other.project}/{other.model}): a folder can only be watched "
                        "once; watch one of them, not both"
                    )
            watch = Watch(
                folder=str(path),
                project=project,
                model=model,
                include=list(include or []),
                ignore=list(ignore or []),
                enabled=True,
            )
            session.add(watch)
            session.flush()
            log.info("watching %s for %s/%s", path, project, model)
            return watch

    def remove_watch(self, id_or_folder: int | str | os.PathLike[str]) -> Watch:
        """Stop watching a folder and forget its checkpoints (nothing on disk is touched).

        Returns the removed watch. Raises OutboxError if there is no such watch.
        """
        with self._sessions.begin() as session:
            watch = self._find_watch(session, id_or_folder)
            for cp in session.scalars(select(Checkpoint).where(Checkpoint.watch_id == watch.id)):
                session.delete(cp)
            session.delete(watch)
            log.info("stopped watching %s", watch.folder)
            return watch

    def watches(self) -> list[Watch]:
        """Every watch, oldest first."""
        with self._sessions() as session:
            return list(session.scalars(select(Watch).order_by(Watch.id)))

    def set_watch_enabled(self, id_or_folder: int | str | os.PathLike[str], enabled: bool) -> Watch:
        """Enable or disable a watch; a disabled watch's checkpoints are not handed out.

        Returns the watch. Raises OutboxError if there is no such watch.
        """
        with self._sessions.begin() as session:
            watch = self._find_watch(session, id_or_folder)
            watch.enabled = enabled
            return watch

    # --- checkpoints ---

    def record_seen(
        self,
        watch_id: int,
        key: str,
        fingerprint: Iterable[Sequence[Any]],
        metadata: dict[str, Any] | None = None,
    ) -> Checkpoint:
        """Record that checkpoint `key` of a watch was seen with this fingerprint.

        Idempotent: the same fingerprint again returns the checkpoint already recorded, in
        whatever state it is. A new fingerprint replaces the key's open checkpoint if nothing
        was committed for it yet (the file is still being written, or changed before it was
        sent) and puts it back to `queued` with a new idempotency key; otherwise (done, failed,
        or its commit already sent) it becomes a new checkpoint.
        Raises OutboxError if the watch does not exist.
        """
        entries = _normalise_fingerprint(fingerprint)
        digest = _fingerprint_hash(entries)
        now = _utcnow()
        with self._sessions.begin() as session:
            if session.get(Watch, watch_id) is None:
                raise OutboxError(f"no watch with id {watch_id}: list them with `watch list`")
            same = session.scalar(
                select(Checkpoint).where(
                    Checkpoint.watch_id == watch_id,
                    Checkpoint.key == key,
                    Checkpoint.fingerprint_hash == digest,
                )
            )
            if same is not None:
                return same
            replaceable = session.scalar(
                select(Checkpoint)
                .where(
                    Checkpoint.watch_id == watch_id,
                    Checkpoint.key == key,
                    Checkpoint.state.in_(OPEN_STATES),
                    Checkpoint.commit_started.is_(False),
                )
                .order_by(Checkpoint.first_seen_at.desc(), Checkpoint.id.desc())
            )
            if replaceable is not None:
                # Keeps first_seen_at: it still lands in the order it first appeared.
                _reset_to_queued(replaceable, now)
                replaceable.fingerprint = entries
                replaceable.fingerprint_hash = digest
                replaceable.meta = dict(metadata or {})
                replaceable.idempotency_key = uuid.uuid4().hex
                return replaceable
            cp = Checkpoint(
                watch_id=watch_id,
                key=key,
                fingerprint=entries,
                fingerprint_hash=digest,
                meta=dict(metadata or {}),
                state=CheckpointState.queued,
                attempts=0,
                idempotency_key=uuid.uuid4().hex,
                commit_started=False,
                first_seen_at=now,
                updated_at=now,
            )
            session.add(cp)
            session.flush()
            return cp

    def get_checkpoint(self, checkpoint_id: int) -> Checkpoint:
        """The checkpoint with this id. Raises OutboxError if there is none."""
        with self._sessions() as session:
            return _get(session, checkpoint_id)

    def mark_ready(self, checkpoint_id: int) -> Checkpoint:
        """A queued checkpoint has settled: it may now be hashed and sent."""
        return self._move(checkpoint_id, {CheckpointState.queued}, CheckpointState.ready)

    def next_ready(self, now: datetime | None = None) -> Checkpoint | None:
        """The next checkpoint to send, or None if there is nothing to do yet.

        That is a `ready` checkpoint, or a `waiting_retry` one whose time has come, of an
        enabled watch, oldest first. A watch's checkpoints go strictly in the order they were
        first seen, so its versions land in order: one that is not at the head of its watch
        (an older one is still queued, in flight or waiting to retry) is not handed out.
        """
        now = now or _utcnow()
        with self._sessions() as session:
            rows = session.scalars(
                select(Checkpoint)
                .join(Watch, Watch.id == Checkpoint.watch_id)
                .where(Watch.enabled.is_(True), Checkpoint.state.in_(OPEN_STATES))
                .order_by(Checkpoint.first_seen_at, Checkpoint.id)
            )
            heads: dict[int, Checkpoint] = {}
            for cp in rows:
                heads.setdefault(cp.watch_id, cp)
            due = [cp for cp in heads.values() if _is_due(cp, now)]
            return min(due, key=lambda cp: (cp.first_seen_at, cp.id), default=None)

    def set_manifest(self, checkpoint_id: int, manifest: Sequence[ManifestEntry]) -> Checkpoint:
        """Store the hashed files of a checkpoint that is ready, uploading or waiting to retry."""
        with self._sessions.begin() as session:
            cp = _get(session, checkpoint_id)
            _expect(
                cp,
                {CheckpointState.ready, CheckpointState.uploading, CheckpointState.waiting_retry},
                "hashed",
            )
            cp.manifest = [{"path": e.path, "size": e.size, "sha256": e.sha256} for e in manifest]
            cp.updated_at = _utcnow()
            return cp

    def mark_uploading(self, checkpoint_id: int) -> Checkpoint:
        """A worker took the checkpoint and is sending its files."""
        return self._move(
            checkpoint_id,
            {CheckpointState.ready, CheckpointState.waiting_retry},
            CheckpointState.uploading,
        )

    def mark_committing(self, checkpoint_id: int) -> Checkpoint:
        """The files are on the server; the version is being created with the idempotency key.

        From here on the checkpoint is pinned to its content. Raises OutboxError if it has no
        manifest, CheckpointChanged if it is no longer in flight.
        """
        with self._sessions.begin() as session:
            cp = _get(session, checkpoint_id)
            _expect(
                cp,
                {CheckpointState.ready, CheckpointState.uploading, CheckpointState.waiting_retry},
                "committed",
            )
            if cp.manifest is None:
                raise OutboxError(f"checkpoint {cp.key} has no manifest yet: hash it first")
            cp.state = CheckpointState.committing
            cp.commit_started = True
            cp.next_attempt_at = None
            cp.updated_at = _utcnow()
            return cp

    def mark_done(self, checkpoint_id: int, version_number: int) -> Checkpoint:
        """The server made (or already had) version `version_number` of this checkpoint."""
        with self._sessions.begin() as session:
            cp = _get(session, checkpoint_id)
            _expect(cp, {CheckpointState.committing}, "marked done")
            cp.state = CheckpointState.done
            cp.version_number = version_number
            cp.last_error = None
            cp.next_attempt_at = None
            cp.updated_at = _utcnow()
            return cp

    def mark_retry(
        self,
        checkpoint_id: int,
        error: str,
        retry_after: float | None = None,
        *,
        now: datetime | None = None,
    ) -> Checkpoint:
        """A transient error: try again later, with exponential backoff and full jitter.

        The delay is at least `retry_after` seconds when the server asked for that
        (`Retry-After`). Returns the checkpoint with `next_attempt_at` set.
        """
        now = now or _utcnow()
        with self._sessions.begin() as session:
            cp = _get(session, checkpoint_id)
            _expect(
                cp,
                {
                    CheckpointState.ready,
                    CheckpointState.uploading,
                    CheckpointState.committing,
                    CheckpointState.waiting_retry,
                },
                "retried",
            )
            cp.attempts += 1
            delay = backoff_delay(cp.attempts, retry_after)
            cp.state = CheckpointState.waiting_retry
            cp.last_error = error
            cp.next_attempt_at = now + timedelta(seconds=delay)
            cp.updated_at = now
            log.info("%s: %s; retrying in %.1f s", cp.key, error, delay)
            return cp

    def mark_failed(self, checkpoint_id: int, error: str) -> Checkpoint:
        """A permanent error (no permission, file vanished): recorded and shown, not retried."""
        with self._sessions.begin() as session:
            cp = _get(session, checkpoint_id)
            _expect(cp, OPEN_STATES, "marked failed")
            cp.attempts += 1
            cp.state = CheckpointState.failed
            cp.last_error = error
            cp.next_attempt_at = None
            cp.updated_at = _utcnow()
            log.warning("%s failed: %s", cp.key, error)
            return cp

    def requeue(self, checkpoint_id: int) -> Checkpoint:
        """The file changed while it was hashed or sent: back to `queued` to settle again.

        Raises CheckpointChanged if its commit was already sent (it is pinned to its content;
        the changed file is recorded as a new checkpoint by `record_seen`).
        """
        with self._sessions.begin() as session:
            cp = _get(session, checkpoint_id)
            _expect(cp, OPEN_STATES, "requeued")
            if cp.commit_started:
                raise CheckpointChanged(
                    f"checkpoint {cp.key} is already being committed and cannot be requeued"
                )
            _reset_to_queued(cp, _utcnow())
            return cp

    def put_back(self, checkpoint_id: int, reason: str) -> Checkpoint:
        """Stop working on a checkpoint for now (syncing was paused) without counting an
        attempt: it is due again at once, keeping its manifest and idempotency key."""
        now = _utcnow()
        with self._sessions.begin() as session:
            cp = _get(session, checkpoint_id)
            _expect(
                cp,
                {CheckpointState.ready, CheckpointState.uploading, CheckpointState.committing},
                "put back",
            )
            cp.state = CheckpointState.waiting_retry
            cp.last_error = reason
            cp.next_attempt_at = now
            cp.updated_at = now
            return cp

    def retry_waiting_now(self) -> int:
        """Make every checkpoint waiting for a retry due now (the server is back)."""
        now = _utcnow()
        with self._sessions.begin() as session:
            rows = list(
                session.scalars(
                    select(Checkpoint).where(Checkpoint.state == CheckpointState.waiting_retry)
                )
            )
            for cp in rows:
                cp.next_attempt_at = now
            return len(rows)

    def retry_failed(self, checkpoint_id: int | None = None) -> int:
        """Try failed checkpoints again (one, or all when `checkpoint_id` is None), at once and
        with a fresh count of attempts: the user fixed the cause. Returns how many."""
        now = _utcnow()
        with self._sessions.begin() as session:
            query = select(Checkpoint).where(Checkpoint.state == CheckpointState.failed)
            if checkpoint_id is not None:
                query = query.where(Checkpoint.id == checkpoint_id)
            rows = list(session.scalars(query))
            for cp in rows:
                cp.state = CheckpointState.waiting_retry
                cp.attempts = 0
                cp.next_attempt_at = now
                cp.updated_at = now
            return len(rows)

    def resume_interrupted(self, now: datetime | None = None) -> int:
        """At start: what was uploading or committing when the daemon stopped is due again.

        Those checkpoints keep their manifest and idempotency key, so the upload resumes at
        the server's offset and the commit cannot make a second version. Returns how many.
        """
        now = now or _utcnow()
        with self._sessions.begin() as session:
            rows = list(
                session.scalars(
                    select(Checkpoint).where(
                        Checkpoint.state.in_(
                            [CheckpointState.uploading, CheckpointState.committing]
                        )
                    )
                )
            )
            for cp in rows:
                cp.state = CheckpointState.waiting_retry
                cp.next_attempt_at = now
                cp.updated_at = now
            return len(rows)

    # --- runs and metric files ---

    def watch_run(self, watch_id: int) -> WatchRun:
        """The run record of a watch (an empty one if it has none yet)."""
        with self._sessions() as session:
            row = session.get(WatchRun, watch_id)
            return row if row is not None else WatchRun(watch_id=watch_id, metric_state={})

    def set_watch_run(self, watch_id: int, run_id: int) -> None:
        """Remember the server's run that a watch feeds."""
        with self._sessions.begin() as session:
            row = session.get(WatchRun, watch_id) or WatchRun(watch_id=watch_id, metric_state={})
            row.run_id = run_id
            row.updated_at = _utcnow()
            session.merge(row)

    def save_metric_state(self, watch_id: int, state: dict[str, Any], sent: int) -> None:
        """After the server accepted `sent` more points: where the metric files stand now."""
        with self._sessions.begin() as session:
            row = session.get(WatchRun, watch_id) or WatchRun(watch_id=watch_id, metric_state={})
            row.metric_state = state
            row.points_sent = (row.points_sent or 0) + sent
            row.updated_at = _utcnow()
            session.merge(row)

    # --- status ---

    def counts(self) -> dict[CheckpointState, int]:
        """How many checkpoints are in each state (every state present, zero or not)."""
        with self._sessions() as session:
            rows = session.execute(
                select(Checkpoint.state, func.count()).group_by(Checkpoint.state)
            ).all()
        counts = dict.fromkeys(CheckpointState, 0)
        for state, n in rows:
            counts[CheckpointState(state)] = int(n)
        return counts

    def pending(self) -> list[Checkpoint]:
        """Every checkpoint not yet done or failed, in the order they were first seen."""
        with self._sessions() as session:
            return list(
                session.scalars(
                    select(Checkpoint)
                    .where(Checkpoint.state.in_(OPEN_STATES))
                    .order_by(Checkpoint.first_seen_at, Checkpoint.id)
                )
            )

    def failures(self) -> list[Checkpoint]:
        """Every failed checkpoint, most recent first, to show the user."""
        with self._sessions() as session:
            return list(
                session.scalars(
                    select(Checkpoint)
                    .where(Checkpoint.state == CheckpointState.failed)
                    .order_by(Checkpoint.updated_at.desc())
                )
            )

    # --- helpers ---

    def _move(
        self, checkpoint_id: int, allowed: Iterable[CheckpointState], to: CheckpointState
    ) -> Checkpoint:
        with self._sessions.begin() as session:
            cp = _get(session, checkpoint_id)
            _expect(cp, allowed, f"moved to {to}")
            cp.state = to
            cp.next_attempt_at = None
            cp.updated_at = _utcnow()
            return cp

    def _find_watch(self, session: Session, id_or_folder: int | str | os.PathLike[str]) -> Watch:
        if isinstance(id_or_folder, int):
            watch = session.get(Watch, id_or_folder)
        else:
            folder = str(_absolute_folder(id_or_folder))
            watch = session.scalar(select(Watch).where(Watch.folder == folder))
        if watch is None:
            raise OutboxError(
                f"no watch for {id_or_folder}: list them with `lmvp-daemon watch list`"
            )
        return watch


def resolve_state_dir(state_dir: Path | None = None) -> Path:
    """The daemon's state directory: the argument, else $LMVP_DAEMON_STATE_DIR, else the
    platform's user state dir. Created (private to the user) if missing."""
    if state_dir is None:
        env = os.environ.get(STATE_DIR_ENV)
        state_dir = Path(env) if env else Path(platformdirs.user_state_dir("lmvp-daemon"))
    state_dir = state_dir.expanduser().absolute()
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return state_dir


def backoff_delay(
    attempt: int, retry_after: float | None = None, *, rng: random.Random | None = None
) -> float:
    """Seconds to wait before attempt `attempt + 1`: exponential backoff with full jitter.

    A uniform draw in [0, min(cap, base * 2**(attempt-1))] (base 1 s, cap 5 min), so that
    daemons that failed together do not retry together; never less than `retry_after`.
    """
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** max(0, attempt - 1))
    delay = (rng or random).uniform(0, ceiling)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


# --- the lock ------------------------------------------------------------------------------


class LockHandle:
    """Holds `daemon.lock` in a state directory until released (or the process dies)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        """Let another daemon use the state directory. Safe to call twice."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> LockHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def acquire_lock(state_dir: Path | None = None) -> LockHandle:
    """Make this process the only daemon using the state directory, and write its pid there.

    The kernel drops the lock when the process exits, however it dies. Raises OutboxError
    naming the other daemon's pid if one holds it.
    """
    directory = resolve_state_dir(state_dir)
    path = directory / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise OutboxError(f"cannot lock {path}: {exc.strerror}") from exc
        raise OutboxError(
            f"another lmvp-daemon (pid {holder}) is using {directory}: stop it first, "
            f"or give this one its own state directory with ${STATE_DIR_ENV}"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    os.fsync(fd)
    return LockHandle(path, fd)


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
            _migrate(conn, version)
            conn.exec_driver_sql(f"PRAGMA user_version={SCHEMA_VERSION}")


def _migrate(conn: Any, from_version: int) -> None:
    """Bring an older outbox up to SCHEMA_VERSION. Version 0 is a fresh file: nothing to do.
    Version 2 only added the `watch_runs` table, which `create_all` made."""
    del conn, from_version


def _absolute_folder(folder: str | os.PathLike[str]) -> Path:
    return Path(folder).expanduser().resolve()


def _normalise_fingerprint(fingerprint: Iterable[Sequence[Any]]) -> list[list[Any]]:
    entries = []
    for entry in fingerprint:
        path, size, mtime_ns, inode = entry
        entries.append([str(path), int(size), int(mtime_ns), int(inode)])
    return sorted(entries)


def _fingerprint_hash(entries: list[list[Any]]) -> str:
    return hashlib.sha256(json.dumps(entries, separators=(",", ":")).encode()).hexdigest()


def _get(session: Session, checkpoint_id: int) -> Checkpoint:
    cp = session.get(Checkpoint, checkpoint_id)
    if cp is None:
        raise OutboxError(f"no checkpoint with id {checkpoint_id} in the outbox")
    return cp


def _expect(cp: Checkpoint, allowed: Iterable[CheckpointState], action: str) -> None:
    if cp.state not in set(allowed):
        raise CheckpointChanged(f"checkpoint {cp.key} is {cp.state} and cannot be {action}")


def _reset_to_queued(cp: Checkpoint, now: datetime) -> None:
    cp.state = CheckpointState.queued
    cp.manifest = None
    cp.attempts = 0
    cp.last_error = None
    cp.next_attempt_at = None
    cp.updated_at = now


def _is_due(cp: Checkpoint, now: datetime) -> bool:
    if cp.state == CheckpointState.ready:
        return True
    return (
        cp.state == CheckpointState.waiting_retry
        and cp.next_attempt_at is not None
        and cp.next_attempt_at <= now
    )
