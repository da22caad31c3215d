"""The daemon's durable outbox: every watch and every checkpoint it must version, in SQLite.

The daemon works from this database and nothing else, so a crash, `kill -9`, a reboot or an
offline server loses nothing: what was seen, hashed, half-uploaded or half-committed is all
here when it starts again. This module owns the checkpoint queue: the state machine of a
checkpoint, the order checkpoints are handed out in, and retry backoff. `Outbox` is the
object the daemon, its CLI and the desktop app hold; it opens the database
(`lmvp_daemon.outbox_db`: tables, schema, migrations) in the state directory
(`lmvp_daemon.state_dir`, with the one-daemon-per-state-dir lock) and takes its watches
and their runs from `lmvp_daemon.watches`. It knows nothing of watchdog, HTTP or Qt.

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

import hashlib
import json
import logging
import random
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from lmvp_daemon.errors import OutboxError
from lmvp_daemon.outbox_db import (
    DB_NAME,
    Checkpoint,
    CheckpointState,
    ManifestEntry,
    Watch,
    open_engine,
    utcnow,
)
from lmvp_daemon.state_dir import resolve_state_dir
from lmvp_daemon.watches import WatchRegistry

log = logging.getLogger(__name__)

BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 300.0


class CheckpointChanged(OutboxError):
    """A checkpoint was not in the state a transition needs: something else moved it.

    Typically the file changed while it was being hashed or uploaded and the watcher put it
    back to `queued`; the worker holding it should drop it and take the next one.
    """


OPEN_STATES = frozenset(CheckpointState) - {CheckpointState.done, CheckpointState.failed}


class Outbox(WatchRegistry):
    """The daemon's durable queue of watches and checkpoints.

    Every method is one transaction, committed (and on disk) before it returns, and returns
    detached copies of the rows: change state through the methods, not by assigning. The
    watch methods (`add_watch`, `watches`, `watch_run`, ...) are `WatchRegistry`'s.
    """

    def __init__(self, state_dir: Path | None = None) -> None:
        self.state_dir = resolve_state_dir(state_dir)
        self.path = self.state_dir / DB_NAME
        self._engine = open_engine(self.path)
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
        now = utcnow()
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
        enabled watch, oldest first. A watch's checkpoints go strictly in order, so its
        versions land in order: one that is not at the head of its watch (an earlier one is
        still queued, in flight or waiting to retry) is not handed out. The order is the
        training step's where the names carry one (a rescan after a pause records the new
        checkpoints in directory order, which put step 2600 before step 2400, issue 18), else
        the order they were first seen.
        """
        now = now or utcnow()
        with self._sessions() as session:
            rows = session.scalars(
                select(Checkpoint)
                .join(Watch, Watch.id == Checkpoint.watch_id)
                .where(Watch.enabled.is_(True), Checkpoint.state.in_(OPEN_STATES))
                .order_by(Checkpoint.first_seen_at, Checkpoint.id)
            )
            open_by_watch: dict[int, list[Checkpoint]] = {}
            for cp in rows:
                open_by_watch.setdefault(cp.watch_id, []).append(cp)
            heads = [_head(checkpoints) for checkpoints in open_by_watch.values()]
            due = [cp for cp in heads if _is_due(cp, now)]
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
            cp.updated_at = utcnow()
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
            cp.updated_at = utcnow()
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
            cp.updated_at = utcnow()
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
        now = now or utcnow()
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
            cp.updated_at = utcnow()
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
            _reset_to_queued(cp, utcnow())
            return cp

    def put_back(self, checkpoint_id: int, reason: str) -> Checkpoint:
        """Stop working on a checkpoint for now (syncing was paused) without counting an
        attempt: it is due again at once, keeping its manifest and idempotency key."""
        now = utcnow()
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
        now = utcnow()
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
        now = utcnow()
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
        now = now or utcnow()
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
            cp.updated_at = utcnow()
            return cp


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


# --- private helpers -----------------------------------------------------------------------


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


def _step(cp: Checkpoint) -> int | None:
    step = (cp.meta or {}).get("step")
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def _head(checkpoints: list[Checkpoint]) -> Checkpoint:
    """The checkpoint a watch sends next, of its open ones (in the order first seen): the
    first seen, or, when that one has a step, the one with the lowest step."""
    first = checkpoints[0]
    if _step(first) is None:
        return first
    stepped = [cp for cp in checkpoints if _step(cp) is not None]
    return min(stepped, key=lambda cp: (_step(cp), cp.first_seen_at, cp.id))


def _is_due(cp: Checkpoint, now: datetime) -> bool:
    if cp.state == CheckpointState.ready:
        return True
    return (
        cp.state == CheckpointState.waiting_retry
        and cp.next_attempt_at is not None
        and cp.next_attempt_at <= now
    )
