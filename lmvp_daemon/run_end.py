"""When a watched folder's run ends: marking it finished on the server once its job stopped
producing, and running again when the job goes on.

A watch's run is active while its folder produces: metric points the server accepted,
checkpoints that settled or were committed (`RunEnds.activity`, fed from the daemon's events).
After `idle_seconds` without any, and with none of its checkpoints still waiting to be sent,
the run is marked `finished` (`Client.finish_run`) and a `run_finished` event says so. Sooner
when its job is seen to exit: on Linux, the processes holding a file of the folder open are
found (`lmvp_daemon.writers`, a `/proc` scan at most every `WRITER_SCAN_SECONDS` per watch while
it produces), and once all of them are gone the run ends without waiting for the idle time; a
front end that started the job itself says so with `ended`. If the
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
from lmvp_daemon.writers import Process, alive, find_writers

log = logging.getLogger(__name__)

DEFAULT_RUN_IDLE_SECONDS = 300.0
# After the server refused or could not be reached, when to try again.
_RETRY_SECONDS = 5.0
# How often a producing folder's writers are looked for (a scan of /proc), at most.
WRITER_SCAN_SECONDS = 10.0
# How often known writers are checked for being alive (cheap: one stat file each).
_WRITER_CHECK_SECONDS = 1.0
# After the writers exited, how long a front end that started the job has to say how it ended.
_WRITER_GRACE_SECONDS = 1.0


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
        # The processes seen writing into each watch's folder, and when it was last scanned.
        self._writers: dict[int, set[Process]] = {}
        self._scanned: dict[int, float] = {}

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

    def activity(self, watch_id: int, folder: str | None = None) -> None:
        """The watch's folder produced something: its run is running (again). With the
        `folder`, the processes writing into it are looked for (now and then)."""
        if watch_id in self._ended and watch_id not in self._finished:
            return  # what its exited writer left behind, still being sent
        self._ended.pop(watch_id, None)
        now = self._clock()
        self._last[watch_id] = now
        self._retry_at.pop(watch_id, None)
        if (
            folder is not None
            and not self._writers.get(watch_id)
            and now - self._scanned.get(watch_id, -WRITER_SCAN_SECONDS) >= WRITER_SCAN_SECONDS
        ):
            self._scanned[watch_id] = now
            writers = find_writers(folder)
            if writers:
                log.debug("%s is written by process(es) %s", folder, sorted(writers))
                self._writers[watch_id] = writers
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
        self._writers.pop(watch_id, None)
        self._scanned.pop(watch_id, None)
        self._last.pop(watch_id, None)
        self._retry_at.pop(watch_id, None)
        self._finished.pop(watch_id, None)

    def seconds_to_next(self) -> float | None:
        """Seconds until the next run may be finished (None: no run is waiting to be)."""
        if not self._last:
            return None
        due = min(self._due(w) for w in self._last)
        if any(w in self._last for w in self._writers):
            due = min(due, self._clock() + _WRITER_CHECK_SECONDS)
        return max(0.0, due - self._clock())

    def check(self) -> None:
        """Finish each run whose folder has been idle for `idle_seconds`."""
        now = self._clock()
        for watch_id, writers in list(self._writers.items()):
            if watch_id in self._last and not any(alive(p) for p in writers):
                del self._writers[watch_id]
                log.info("the job writing into watch %d exited", watch_id)
                # Finished, unless whoever started the job says otherwise (`ended`) meanwhile.
                self._ended.setdefault(watch_id, "finished")
                due = now - self.idle_seconds + _WRITER_GRACE_SECONDS
                self._last[watch_id] = min(self._last[watch_id], due)
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
