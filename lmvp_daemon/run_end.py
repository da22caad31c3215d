"""When a watched folder's run ends: marking it finished on the server once its job stopped
producing, and running again when the job goes on.

A watch's run is active while its folder produces: metric points the server accepted,
checkpoints that settled or were committed (`RunEnds.activity`, fed from the daemon's events).
After `idle_seconds` without any, and with none of its checkpoints still waiting to be sent,
the run is marked `finished` (`Client.finish_run`) and a `run_finished` event says so. If the
folder produces again later (a resumed job, a last checkpoint), nothing is lost: the points and
versions go to the same run, which is first marked `running` again (`run_reopened`), since it
is the same folder's training that goes on, as a person reading the run list expects.

At start, a watch's last activity is taken from when its metric files were last sent (the
outbox's `WatchRun.updated_at`), so a job that ended while the daemon was off is finished once
its idle time has passed, not left running forever. A run already finished on the server (by
`lmvp.Run` itself, or by this before a restart) is left as it is, without an event.

It lives in the loop's thread (no locking); `seconds_to_next` says when to look again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from lmvp import Client
from lmvp.errors import LMVPError
from lmvp_daemon.outbox import Outbox
from lmvp_daemon.sync import EventKind, SyncEvent

log = logging.getLogger(__name__)

DEFAULT_RUN_IDLE_SECONDS = 300.0
# After the server refused or could not be reached, when to try again.
_RETRY_SECONDS = 5.0


class RunEnds:
    """Finishes the runs of watches that stopped producing, and reopens them if they go on."""

    def __init__(
        self,
        outbox: Outbox,
        client: Client,
        emit: Callable[[SyncEvent], None],
        *,
        idle_seconds: float = DEFAULT_RUN_IDLE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.outbox = outbox
        self.client = client
        self.emit = emit
        self.idle_seconds = idle_seconds
        self._clock = clock
        # Last activity (clock time) of each watch whose run is not known to be finished.
        self._last: dict[int, float] = {}
        # When to look at a watch again after a failed attempt.
        self._retry_at: dict[int, float] = {}
        # Watches whose run this marked finished (or found finished), by watch id: run id.
        self._finished: dict[int, int] = {}
        # Watches whose writer was seen to exit, and the status their run ends with.
        self._ended: dict[int, str] = {}

    def load(self) -> None:
        """Take each watch's last activity from the outbox (at the daemon's start)."""
        now, wall = self._clock(), datetime.now(UTC)
        for watch in self.outbox.watches():
            run = self.outbox.watch_run(watch.id)
            if run.run_id is None or watch.id in self._last:
                continue
            updated = run.updated_at
            if updated.tzinfo is None:
                updated = updated.replace(tzinfo=UTC)
            self._last[watch.id] = now - max(0.0, (wall - updated).total_seconds())

    def activity(self, watch_id: int) -> None:
        """The watch's folder produced something: its run is running (again)."""
        if watch_id in self._ended and watch_id not in self._finished:
            return  # what its exited writer left behind, still being sent
        self._ended.pop(watch_id, None)
        self._last[watch_id] = self._clock()
        self._retry_at.pop(watch_id, None)
        run_id = self._finished.pop(watch_id, None)
        if run_id is None:
            return
        try:
            self.client.finish_run(run_id, "running")
        except LMVPError as exc:
            log.warning("run %d goes on but could not be marked running: %s", run_id, exc.message)
            return
        log.info("run %d goes on: marked running again", run_id)
        self.emit(
            SyncEvent(
                EventKind.run_reopened,
                watch_id,
                version=run_id,
                message=f"run {run_id} goes on: its folder produced again",
            )
        )

    def ended(self, watch_id: int, status: str = "finished") -> None:
        """The job writing into the watch's folder exited (`status` finished, or failed when it
        crashed): its run ends as soon as what it wrote was sent, not after the idle time."""
        self._ended[watch_id] = status
        self._last[watch_id] = self._clock() - self.idle_seconds
        self._retry_at.pop(watch_id, None)

    def forget(self, watch_id: int) -> None:
        self._ended.pop(watch_id, None)
        self._last.pop(watch_id, None)
        self._retry_at.pop(watch_id, None)
        self._finished.pop(watch_id, None)

    def seconds_to_next(self) -> float | None:
        """Seconds until the next run may be finished (None: no run is waiting to be)."""
        if not self._last:
            return None
        due = min(self._due(w) for w in self._last)
        return max(0.0, due - self._clock())

    def check(self) -> None:
        """Finish each run whose folder has been idle for `idle_seconds`."""
        now = self._clock()
        for watch_id in [w for w in self._last if self._due(w) <= now]:
            self._finish(watch_id, now)

    def _due(self, watch_id: int) -> float:
        return max(self._last[watch_id] + self.idle_seconds, self._retry_at.get(watch_id, 0.0))

    def _finish(self, watch_id: int, now: float) -> None:
        run_id = self.outbox.watch_run(watch_id).run_id
        if run_id is None:
            self._last.pop(watch_id, None)
            return
        if any(cp.watch_id == watch_id for cp in self.outbox.pending()):
            # A checkpoint still to send belongs to the run: finish after it went.
            self._retry_at[watch_id] = now + _RETRY_SECONDS
            return
        status = self._ended.get(watch_id, "finished")
        try:
            if self.client.run(run_id).status == "running":
                self.client.finish_run(run_id, status)
                finished_now = True
            else:
                finished_now = False
        except LMVPError as exc:
            log.warning("run %d could not be marked finished yet: %s", run_id, exc.message)
            self._retry_at[watch_id] = now + _RETRY_SECONDS
            return
        self._last.pop(watch_id, None)
        self._retry_at.pop(watch_id, None)
        self._finished[watch_id] = run_id
        if finished_now:
            why = (
                "its job exited"
                if watch_id in self._ended
                else f"nothing new for {self.idle_seconds:g} s"
            )
            log.info("run %d %s: %s", run_id, status, why)
            self.emit(
                SyncEvent(
                    EventKind.run_finished,
                    watch_id,
                    version=run_id,
                    message=f"run {run_id} {status}: {why}",
                )
            )


__all__ = ["DEFAULT_RUN_IDLE_SECONDS", "RunEnds"]
