"""What the daemon's front ends (the desktop app) hold of its outbox: frozen copies of the
watches and checkpoints (`WatchInfo`, `CheckpointInfo`, together an `OutboxView`).

They are plain values, made from the outbox's ORM rows on whatever thread read them, and safe
to keep and pass to any other thread: a row's attributes may go back to the database when
read, and its columns are the outbox's business, not the UI's.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmvp_daemon.outbox_db import Checkpoint, CheckpointState, Watch


@dataclass(frozen=True)
class WatchInfo:
    """A watched folder and the `project/model` its checkpoints become versions of."""

    id: int
    folder: str
    project: str
    model: str
    enabled: bool

    @property
    def target(self) -> str:
        """`project/model`."""
        return f"{self.project}/{self.model}"

    @classmethod
    def of(cls, watch: Watch) -> WatchInfo:
        return cls(watch.id, watch.folder, watch.project, watch.model, watch.enabled)


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint of a watch as the outbox has it: where it stands, its version once
    committed, and the last error (why it waits or failed)."""

    id: int
    watch_id: int
    key: str
    state: CheckpointState
    version: int | None = None
    last_error: str | None = None

    @classmethod
    def of(cls, checkpoint: Checkpoint) -> CheckpointInfo:
        return cls(
            checkpoint.id,
            checkpoint.watch_id,
            checkpoint.key,
            checkpoint.state,
            checkpoint.version_number,
            checkpoint.last_error,
        )


@dataclass(frozen=True)
class OutboxView:
    """The watches, the checkpoints still to send and the failed ones, read together."""

    watches: tuple[WatchInfo, ...]
    pending: tuple[CheckpointInfo, ...]
    failures: tuple[CheckpointInfo, ...]


__all__ = ["CheckpointInfo", "OutboxView", "WatchInfo"]
