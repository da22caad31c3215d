"""Turning settled checkpoints into versions: scan the watched folders into the outbox, then
hash, upload and commit each ready checkpoint, in order, exactly once.

Everything goes through the outbox first, so a crash at any point loses nothing: on restart
interrupted uploads resume at the server's offset (the tus state lives in the state dir) and a
commit is retried with the idempotency key it was first sent with, so it can never make a
second version. A checkpoint is taken only once its fingerprint (size, mtime, inode of every
file) has been still for the settle window, and is put back to wait if it changes while it is
hashed or uploaded.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path

from lmvp import Client, FileEntry, LocalFile, TransferPaused
from lmvp.errors import (
    AuthenticationError,
    IntegrityError,
    LMVPError,
    NotFound,
    PermissionDenied,
    RequestError,
    ServerUnavailable,
)
from lmvp_daemon.checkpoints import (
    DEFAULT_INCLUDE,
    Fingerprint,
    WatchRootError,
    WatchRules,
    files_of,
    fingerprint,
    scan,
    step_from_name,
)
from lmvp_daemon.errors import OutboxError
from lmvp_daemon.metrics_sync import (
    MetricSync,
    PointsListener,
    describe_skipped,
    is_metric_file,
)
from lmvp_daemon.outbox import CheckpointChanged, Outbox
from lmvp_daemon.outbox_db import Checkpoint, CheckpointState, ManifestEntry, Watch

log = logging.getLogger(__name__)

DEFAULT_SETTLE_SECONDS = 2.0


class EventKind(StrEnum):
    """What a `SyncEvent` reports."""

    queued = "queued"  # a checkpoint settled and waits its turn to be sent
    progress = "progress"  # bytes of a checkpoint reached the server (`sent` of `total`)
    committed = "committed"  # a checkpoint became version `version`
    retry = "retry"  # a transient error; tried again later (`message` says why)
    offline = "offline"  # the server could not be reached; tried again later
    failed = "failed"  # a permanent error, shown and not retried (`message` says why)
    watch_error = "watch_error"  # a watched folder is missing or unreadable
    paused = "paused"  # a checkpoint was put back because syncing was paused
    metrics = "metrics"  # `sent` new metric points of a watch's run reached the server
    # The watch's metric file `key` (relative to its folder) holds `skipped` malformed records
    # so far (more than said before): bad data in the file, skipped; the rest was sent.
    metrics_skipped = "metrics_skipped"
    # Training alerts (`lmvp_daemon.alerts`), each said once per condition; `key` names the
    # metric (or the last checkpoint), `message` says what happened, `step` where.
    loss_nan = "loss_nan"  # a loss became NaN or infinite
    loss_diverged = "loss_diverged"  # a loss jumped far over its recent average
    checkpoints_silent = "checkpoints_silent"  # no checkpoint for twice the job's usual pace
    # The watch's run `version` (its id) on the server was marked finished: its files stopped
    # growing for the run-idle time; `run_reopened`: it grew again and runs again.
    run_finished = "run_finished"
    run_reopened = "run_reopened"
    state = "state"  # the daemon's overall state changed (`state`; see `DaemonState`)


class DaemonState(StrEnum):
    """The daemon's overall state, as a tray icon shows it."""

    idle = "idle"  # nothing to send
    syncing = "syncing"  # checkpoints settling, queued or being sent
    paused = "paused"  # the user paused syncing
    offline = "offline"  # the server cannot be reached; checkpoints wait in the outbox
    error = "error"  # a checkpoint failed or a watched folder is missing: the user must look


@dataclass(frozen=True)
class SyncEvent:
    """What the daemon reports to its listeners (the CLI status, the desktop app)."""

    kind: EventKind
    watch_id: int = 0
    key: str = ""
    # The watch's project and model (filled in by `SyncDaemon` for every event of a watch).
    project: str = ""
    model: str = ""
    version: int | None = None
    message: str = ""
    # For `progress`: bytes of the checkpoint on the server so far, and in all.
    sent: int = 0
    total: int = 0
    # For `state`.
    state: DaemonState | None = None
    # For `metrics_skipped`.
    skipped: int = 0
    # For the alerts: the step of the metric point that raised it.
    step: int | None = None


Listener = Callable[[SyncEvent], None]


@dataclass(frozen=True)
class _Settling:
    """A queued checkpoint waiting for its settle window: when it last changed, and how it
    looked then."""

    changed_at: datetime
    fingerprint: Fingerprint


class Syncer:
    """Moves checkpoints from the watched folders to the server, through the outbox."""

    def __init__(
        self,
        outbox: Outbox,
        client: Client,
        *,
        settle_seconds: float = DEFAULT_SETTLE_SECONDS,
        listener: Listener | None = None,
        on_points: PointsListener | None = None,
    ) -> None:
        """`on_points` hears of the metric points each watch's run accepted."""
        self.outbox = outbox
        self.client = client
        self.settle = timedelta(seconds=settle_seconds)
        self.listener = listener or (lambda _event: None)
        self.upload_state_dir = outbox.state_dir / "uploads"
        self.metrics = MetricSync(
            outbox, client, on_skipped=self._metrics_skipped, on_points=on_points
        )
        self.host = socket.gethostname()
        # Queued checkpoints waiting to settle, by (watch id, key): kept in memory only, since
        # a restart rescans everything and the outbox's updated_at says when each changed.
        self._settling: dict[tuple[int, str], _Settling] = {}

    def _metrics_skipped(self, watch_id: int, file: str, count: int) -> None:
        message = describe_skipped(file, count)
        self.listener(
            SyncEvent(EventKind.metrics_skipped, watch_id, file, message=message, skipped=count)
        )

    def scan_watches(self, now: datetime | None = None) -> None:
        """Record every checkpoint in the enabled watched folders; mark those that have been
        still for the settle window as ready."""
        for watch in self.outbox.watches():
            if not watch.enabled:
                continue
            self.metrics.mark_all(watch)
            try:
                found = scan(Path(watch.folder), rules_of(watch))
            except WatchRootError as exc:
                # A missing folder is an error to show, never "every file was deleted".
                self.listener(SyncEvent(EventKind.watch_error, watch.id, message=str(exc)))
                continue
            # Oldest first, the order training wrote them (and so the order of the versions),
            # not the directory's order: reversed on tmpfs, hashed on ext4.
            for key, fp in sorted(found.items(), key=_written_order):
                self._record(watch, key, fp, now)

    def record_changed(
        self, changed: Iterable[tuple[int, str]], now: datetime | None = None
    ) -> None:
        """Record only the checkpoints that file system events said may have changed, as
        (watch id, key) pairs; each starts (again) to wait for its settle window.

        A key whose checkpoint vanished (or is an empty directory so far) is dropped; keys of
        unknown or disabled watches are ignored. `mark_settled` later marks them ready.
        """
        now = now or datetime.now(UTC)
        watches = {w.id: w for w in self.outbox.watches() if w.enabled}
        rules: dict[int, WatchRules] = {}
        for watch_id, key in changed:
            watch = watches.get(watch_id)
            if watch is None:
                continue
            rules.setdefault(watch_id, rules_of(watch))
            fp = fingerprint(Path(watch.folder), key, rules=rules[watch_id])
            if fp is None or not fp.files:
                self._settling.pop((watch_id, key), None)
                continue
            cp = self.outbox.record_seen(watch_id, key, fp.files, step_from_name(key))
            if cp.state is CheckpointState.queued:
                self._settling[(watch_id, key)] = _Settling(now, fp)
            else:
                self._settling.pop((watch_id, key), None)

    def mark_settled(self, now: datetime | None = None) -> int:
        """Mark ready each waiting checkpoint that has not changed for the settle window,
        checking its fingerprint once more at that moment (a change starts the window again;
        a vanished checkpoint is dropped). Returns how many became ready."""
        now = now or datetime.now(UTC)
        due = [k for k, s in self._settling.items() if now - s.changed_at >= self.settle]
        if not due:
            return 0
        watches = {w.id: w for w in self.outbox.watches() if w.enabled}
        marked = 0
        for watch_id, key in due:
            waiting = self._settling.pop((watch_id, key))
            watch = watches.get(watch_id)
            if watch is None:
                continue
            fp = fingerprint(Path(watch.folder), key, rules=rules_of(watch))
            if fp is None or not fp.files:
                continue
            cp = self.outbox.record_seen(watch_id, key, fp.files, step_from_name(key))
            if cp.state is not CheckpointState.queued:
                continue
            if fp != waiting.fingerprint:
                self._settling[(watch_id, key)] = _Settling(now, fp)
                continue
            self.outbox.mark_ready(cp.id)
            self.listener(SyncEvent(EventKind.queued, watch_id, key))
            marked += 1
        return marked

    def has_waiting(self) -> bool:
        """Whether a checkpoint is waiting for its settle window."""
        return bool(self._settling)

    def seconds_to_next_settle(self, now: datetime | None = None) -> float | None:
        """Seconds until the earliest waiting checkpoint's settle window ends (0 if one
        already has), or None if none is waiting: how long the daemon may sleep."""
        if not self._settling:
            return None
        now = now or datetime.now(UTC)
        earliest = min(s.changed_at for s in self._settling.values()) + self.settle
        return max(0.0, (earliest - now).total_seconds())

    def _record(self, watch: Watch, key: str, fp: Fingerprint, now: datetime | None) -> None:
        cp = self.outbox.record_seen(watch.id, key, fp.files, step_from_name(key))
        now = now or datetime.now(UTC)  # after record_seen, which may have just set updated_at
        if cp.state is not CheckpointState.queued:
            self._settling.pop((watch.id, key), None)
            return
        changed_at = cp.updated_at
        waiting = self._settling.get((watch.id, key))
        if waiting is not None and waiting.fingerprint == fp:
            # An event newer than the outbox's last change restarted the window.
            changed_at = max(changed_at, waiting.changed_at)
        if now - changed_at >= self.settle:
            self._settling.pop((watch.id, key), None)
            self.outbox.mark_ready(cp.id)
            self.listener(SyncEvent(EventKind.queued, watch.id, key))
        else:
            self._settling[(watch.id, key)] = _Settling(changed_at, fp)

    def sync_ready(self, *, limit: int | None = None) -> int:
        """Send ready checkpoints until none is due (or `limit` were handled); returns how
        many were handled."""
        handled = 0
        while limit is None or handled < limit:
            cp = self.outbox.next_ready(datetime.now(UTC))
            if cp is None:
                break
            self.sync_checkpoint(cp)
            handled += 1
        return handled

    def sync_checkpoint(self, cp: Checkpoint) -> None:
        """Hash, upload and commit one checkpoint; on failure leave it in the state that says
        what happens next (retry later, wait for the file to settle again, or failed)."""
        watch = next((w for w in self.outbox.watches() if w.id == cp.watch_id), None)
        if watch is None:
            return
        try:
            self._send(watch, cp)
        except CheckpointChanged:
            log.info("%s changed while it was being sent; it waits to settle again", cp.key)
        except TransferPaused as exc:
            self.outbox.put_back(cp.id, exc.message)
            self.listener(SyncEvent(EventKind.paused, watch.id, cp.key, message=exc.message))
        except ServerUnavailable as exc:
            self.outbox.mark_retry(cp.id, exc.message)
            self.listener(SyncEvent(EventKind.offline, watch.id, cp.key, message=str(exc)))
        except IntegrityError as exc:
            # The bytes changed under the upload: the server refused them. Start over.
            self.outbox.requeue(cp.id)
            self.listener(SyncEvent(EventKind.retry, watch.id, cp.key, message=str(exc)))
        except OSError as exc:
            if not Path(watch.folder).is_dir():
                # The whole folder went away (unmounted, renamed): not this checkpoint's fault.
                # Retry once it is back, rather than giving the checkpoint up for good.
                message = f"watched folder {watch.folder} is gone: {exc}"
                self.outbox.mark_retry(cp.id, message)
                self.listener(SyncEvent(EventKind.watch_error, watch.id, cp.key, message=message))
            else:
                self.outbox.mark_failed(cp.id, str(exc))
                self.listener(SyncEvent(EventKind.failed, watch.id, cp.key, message=str(exc)))
        except (AuthenticationError, PermissionDenied, NotFound, RequestError) as exc:
            self.outbox.mark_failed(cp.id, exc.message)
            self.listener(SyncEvent(EventKind.failed, watch.id, cp.key, message=exc.message))
        except LMVPError as exc:
            self.outbox.mark_retry(cp.id, exc.message)
            self.listener(SyncEvent(EventKind.retry, watch.id, cp.key, message=exc.message))
        # Put back to wait (it changed while it was hashed or sent): no file event may come
        # again for it, so start its settle window here rather than at the next full rescan.
        try:
            requeued = self.outbox.get_checkpoint(cp.id).state is CheckpointState.queued
        except OutboxError:  # its watch was removed meanwhile
            return
        if requeued:
            self.record_changed([(cp.watch_id, cp.key)])

    def _send(self, watch: Watch, cp: Checkpoint) -> None:
        root, rules = Path(watch.folder), rules_of(watch)
        ref = f"{watch.project}/{watch.model}"
        manifest = cp.manifest_entries
        self.client.ensure_model(ref)
        if manifest is None:
            # Hashed and sent in one go, as `lmvp.update` does: large files go out while (or
            # without) being hashed, and their hash is pinned in the manifest afterwards.
            self._still(root, cp, rules)
            self.outbox.mark_uploading(cp.id)
            local = [
                LocalFile(rel, path, path.stat().st_size)
                for rel, path in files_of(root, cp.key, rules=rules)
            ]
            sent = self.client.send_files(
                watch.project,
                local,
                progress=_ProgressReporter(
                    self.listener, watch.id, cp.key, sum(f.size for f in local)
                ),
                state_dir=self.upload_state_dir,
            )
            manifest = [ManifestEntry(f.relpath, f.size, f.sha256) for f in sent]
            # Size, mtime and inode the same after sending: what was hashed is what is there.
            self._still(root, cp, rules)
            self.outbox.set_manifest(cp.id, manifest)
        else:
            # Hashed by an earlier attempt (or before a crash): the files must still be those.
            self._still(root, cp, rules)
            self.outbox.mark_uploading(cp.id)
            # Only the bytes the project lacks are sent (`send_files` asks; its `set_total`
            # gives the reporter their size), under the hashes pinned in the manifest.
            paths = dict(files_of(root, cp.key, rules=rules))
            self.client.send_files(
                watch.project,
                [LocalFile(m.path, paths[m.path], m.size, m.sha256) for m in manifest],
                progress=_ProgressReporter(self.listener, watch.id, cp.key, 0),
                state_dir=self.upload_state_dir,
            )
        # The server checked the bytes it got against the manifest, but a file appended to (or
        # rewritten after the part already sent) still hashes right on the server: only the
        # fingerprint says it changed. Committing now would version a half-written file.
        self._still(root, cp, rules)
        # The run's points up to this checkpoint first, so that the version's metrics snapshot
        # (taken by the server at the checkpoint's step) has them; a Trainer checkpoint folder
        # carries its own trainer_state.json.
        self.metrics.mark(watch.id, [root / m.path for m in manifest if is_metric_file(m.path)])
        self.metrics.sync(watch)
        run_id = self.metrics.run_id(watch)
        self.outbox.mark_committing(cp.id)
        step = cp.meta.get("step")
        version = self.client.commit_version(
            ref,
            [FileEntry(m.path, m.size, m.sha256) for m in manifest],
            message=f"{cp.key} (synced by lmvp-daemon)",
            metadata={**cp.meta, "checkpoint": cp.key},
            idempotency_key=cp.idempotency_key,
            source_host=self.host,
            source_path=str(root / cp.key),
            run=run_id,
            step=step if isinstance(step, int) else None,
        )
        self.outbox.mark_done(cp.id, version.number)
        self.listener(SyncEvent(EventKind.committed, watch.id, cp.key, version=version.number))

    def _still(self, root: Path, cp: Checkpoint, rules: WatchRules) -> Fingerprint:
        current = fingerprint(root, cp.key, rules=rules)
        if current is None:
            raise FileNotFoundError(f"{root / cp.key} vanished before it was sent")
        if [list(f) for f in current.files] != [list(f) for f in cp.fingerprint_entries]:
            self.outbox.record_seen(cp.watch_id, cp.key, current.files, step_from_name(cp.key))
            raise CheckpointChanged(f"{cp.key} changed since it settled")
        return current


class _ProgressReporter:
    """Turns byte counts of one checkpoint's upload into `progress` events, at most ten a
    second (and always the last), so that a listener drawing a bar is not flooded."""

    _EVERY = 0.1

    def __init__(self, listener: Listener, watch_id: int, key: str, total: int) -> None:
        self.listener = listener
        self.watch_id = watch_id
        self.key = key
        self.total = total
        self.sent = 0
        self._last = 0.0

    def __call__(self, n: int) -> None:
        self.sent += n
        now = time.monotonic()
        if now - self._last >= self._EVERY or self.sent >= self.total:
            self._last = now
            self.listener(
                SyncEvent(
                    EventKind.progress, self.watch_id, self.key, sent=self.sent, total=self.total
                )
            )

    def set_total(self, total: int) -> None:
        self.total = total


def rules_of(watch: Watch) -> WatchRules:
    return WatchRules(include=watch.include or DEFAULT_INCLUDE, ignore=watch.ignore or ())


def _written_order(item: tuple[str, Fingerprint]) -> tuple[int, str]:
    """Sort key of a found checkpoint: when its newest file was last written, then its key."""
    key, fp = item
    return max((f.mtime_ns for f in fp.files), default=0), key
