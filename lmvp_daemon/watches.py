"""The folders the daemon watches, and the run on the server that each one feeds.

This module owns the watch rows of the outbox: adding a folder (refusing one that is
already watched, or inside or around a watched one), removing, listing, enabling and
disabling it; and, per watch, the `WatchRun` record: the server's run its checkpoints and
metric points go to, and how far its metric files were sent. `WatchRegistry` is the half of
`lmvp_daemon.outbox.Outbox` that does this; the checkpoint queue is the other half.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from lmvp_daemon.errors import OutboxError
from lmvp_daemon.outbox_db import Checkpoint, Watch, WatchRun, utcnow

log = logging.getLogger(__name__)


class WatchRegistry:
    """The watches of an outbox and their runs; `Outbox` opens the database it works in.

    Like every method of the outbox, each one is one transaction, committed before it
    returns, and returns detached copies of the rows.
    """

    _sessions: sessionmaker[Session]

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
            row.updated_at = utcnow()
            session.merge(row)

    def save_metric_state(self, watch_id: int, state: dict[str, Any], sent: int) -> None:
        """After the server accepted `sent` more points: where the metric files stand now."""
        with self._sessions.begin() as session:
            row = session.get(WatchRun, watch_id) or WatchRun(watch_id=watch_id, metric_state={})
            row.metric_state = state
            row.points_sent = (row.points_sent or 0) + sent
            row.updated_at = utcnow()
            session.merge(row)

    # --- helpers ---

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


def _absolute_folder(folder: str | os.PathLike[str]) -> Path:
    return Path(folder).expanduser().resolve()
