"""The daemon as one object: its loop, its state, and the controls the CLI and the desktop use.

`SyncDaemon` runs the watch → settle → send loop over a `Syncer` and a `FolderWatcher`, either
in the calling thread (`lmvp-daemon run`) or in a thread of its own (`start`/`stop`, as the
desktop app embeds it). Listeners subscribed with `subscribe` receive every `SyncEvent`
(queued, progress, committed, retry, offline, failed, watch_error, paused; the training alerts
of `lmvp_daemon.alerts`; `run_finished`/`run_reopened` from `lmvp_daemon.run_end`) plus a `state`
event whenever the overall `DaemonState` changes. Listeners run on the daemon's threads and must
return quickly (a Qt app forwards them to its UI thread with a queued signal).

One daemon per state directory: a `SyncDaemon` takes the directory's lock when it is made (and
refuses with `StateDirInUse`, naming the holder's pid, when `lmvp-daemon run` or the desktop app
already syncs from it) and holds it until `close`.

The loop's thread owns the daemon's state. The controls (`pause`, `resume`, `retry_failed`,
`set_bandwidth_limit`, `set_settle_seconds`, `set_run_idle_seconds`, `set_divergence_factor`)
may be called from any thread: they queue a command
that the loop's thread applies at its next turn (at once, in the caller's thread, while no loop
runs), and return without waiting for the outbox; the `state` event says when it took effect.

Front ends read and change the outbox through `read_outbox`, `add_watch`, `remove_watch` and
`set_watch_enabled`, which give frozen views (`lmvp_daemon.views`), never ORM rows; they are
SQLite transactions, to be called off a UI thread. Every event of a watch carries its project
and model, so a listener needs no table of watches of its own.

Pause and the bandwidth limit act at once, also on an upload in flight: a paused upload stops
between two slices and is put back, keeping what the server holds. Both persist in the state
directory (the `paused` file, `settings.json`), so `lmvp-daemon pause` from another shell, or a
restart, sees the same.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from lmvp import Client, Throttle
from lmvp.errors import LMVPError, ServerUnavailable
from lmvp_daemon.alerts import DEFAULT_DIVERGENCE_FACTOR, AlertDetector
from lmvp_daemon.errors import DaemonError
from lmvp_daemon.outbox import Outbox
from lmvp_daemon.outbox_db import CheckpointState, Watch
from lmvp_daemon.run_end import DEFAULT_RUN_IDLE_SECONDS, RunEnds
from lmvp_daemon.state_dir import DAEMON, acquire_lock
from lmvp_daemon.sync import (
    DEFAULT_SETTLE_SECONDS,
    DaemonState,
    EventKind,
    Listener,
    Syncer,
    SyncEvent,
)
from lmvp_daemon.views import CheckpointInfo, OutboxView, WatchInfo
from lmvp_daemon.watcher import FolderWatcher, InotifyLimitError

log = logging.getLogger(__name__)

T = TypeVar("T")

PAUSE_FILE = "paused"
SETTINGS_FILE = "settings.json"
STATUS_FILE = "status.json"
# While the server is unreachable, how often to ask whether it is back (checkpoints waiting
# for their retry would otherwise keep the daemon "offline" until their backoff ran out).
_PING_SECONDS = 5.0
# How often folders the kernel would not let us watch are rescanned instead.
_POLL_SECONDS = 5.0
# Alert events, and how many of the latest ones the status file keeps.
ALERTS = (EventKind.loss_nan, EventKind.loss_diverged, EventKind.checkpoints_silent)
_STATUS_ALERTS = 20
# What shows that a watched folder still produces (its run is not finished).
_ACTIVITY = (EventKind.queued, EventKind.committed, EventKind.metrics)
_BUSY = (
    CheckpointState.queued,
    CheckpointState.ready,
    CheckpointState.uploading,
    CheckpointState.committing,
    CheckpointState.waiting_retry,
)


class SyncDaemon:
    """Watches the outbox's folders and sends settled checkpoints until stopped."""

    def __init__(
        self,
        outbox: Outbox,
        client: Client,
        *,
        settle_seconds: float = DEFAULT_SETTLE_SECONDS,
        interval: float = 1.0,
        rescan_seconds: float = 60.0,
        run_idle_seconds: float = DEFAULT_RUN_IDLE_SECONDS,
        divergence_factor: float = DEFAULT_DIVERGENCE_FACTOR,
        holder: str = DAEMON,
    ) -> None:
        """Raises `StateDirInUse` if another daemon syncs from the outbox's state directory;
        `holder` (`state_dir.DAEMON` or `DESKTOP`) is what a refused one is told to stop.
        A watch's run is marked finished after `run_idle_seconds` without anything new in its
        folder; a loss over `divergence_factor` times its recent average is an alert."""
        self.outbox = outbox
        self.client = client
        self.interval = interval
        self.rescan_seconds = rescan_seconds
        self.state_dir = outbox.state_dir
        self._state_lock = acquire_lock(self.state_dir, holder=holder)
        # Uploads stop between two slices once paused (also by `lmvp-daemon pause` from another
        # shell), once a pause was asked for (before the loop applies it), or stopping.
        self._pause_requested = threading.Event()
        self.throttle = Throttle(
            paused_when=lambda: self._stop.is_set() or self._pause_requested.is_set() or self.paused
        )
        client.throttle = self.throttle
        self.alerts = AlertDetector(self._on_alert, divergence_factor=divergence_factor)
        self.run_ends = RunEnds(outbox, client, self._emit, idle_seconds=run_idle_seconds)
        self.syncer = Syncer(
            outbox,
            client,
            settle_seconds=settle_seconds,
            listener=self._on_event,
            on_points=self.alerts.points,
        )
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()
        # Commands for the loop's thread, and that thread while `run` runs (under the RLock).
        self._commands: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = (
            queue.SimpleQueue()
        )
        self._commands_lock = threading.RLock()
        self._loop_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._rescan_requested = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = DaemonState.idle
        self._state_message = ""
        self._offline_since: float | None = None
        self._last_ping = 0.0
        self._failed_since_commit = False
        self._watch_errors: dict[int, str] = {}
        # (project, model) by watch id, for the events; replaced whole, read by any thread.
        self._targets: dict[int, tuple[str, str]] = {}
        # Malformed metric records by watch id and file, as `metrics_skipped` events said.
        self._metric_skips: dict[int, dict[str, int]] = {}
        # The latest alerts, for the status file: {"kind", "watch", "key", "message", "at"}.
        self._recent_alerts: list[dict[str, Any]] = []
        # Watched folders by watch id (replaced whole, like `_targets`).
        self._folders: dict[int, str] = {}
        self._settings_mtime: float | None = None
        self._apply_settings()

    # --- listening ---------------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` with every event from now on; returns a function that unsubscribes."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return unsubscribe

    @property
    def state(self) -> DaemonState:
        return self._state

    @property
    def state_message(self) -> str:
        """Why the daemon is offline or in error (empty otherwise)."""
        return self._state_message

    def metric_skips(self) -> dict[int, dict[str, int]]:
        """Malformed metric records skipped so far, by watch id and by file (relative to the
        watched folder): bad data in a training job's files, never sent, where everything else
        was. A `metrics_skipped` event says when a count grows. Reads the outbox: call it off
        a UI thread."""
        return self.syncer.metrics.saved_skips()

    # --- controls ----------------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        """Whether syncing is paused (by this daemon's `pause`, applied, or `lmvp-daemon pause`)."""
        return (self.state_dir / PAUSE_FILE).exists()

    def pause(self) -> Future[None]:
        """Stop sending: uploads in flight stop between two slices and are put back;
        checkpoints are still recorded. Persists until `resume`. Applied by the loop's thread;
        the returned future is done (and the `paused` state event sent) once it was."""
        self._pause_requested.set()  # an upload in flight stops at its next slice already
        return self._submit(self._apply_pause)

    def resume(self) -> Future[None]:
        """Send again after `pause` (applied by the loop's thread, as `pause` is)."""
        return self._submit(self._apply_resume)

    @property
    def bandwidth_limit(self) -> float | None:
        """Bytes per second all uploads together may use, or None for no limit."""
        return self.throttle.limit

    def set_bandwidth_limit(self, bytes_per_second: float | None) -> Future[None]:
        """Limit uploads (None: no limit); applies to uploads in flight too, and persists."""
        return self._submit(lambda: self._apply_bandwidth_limit(bytes_per_second))

    @property
    def settle_seconds(self) -> float:
        """How long a checkpoint must stay unchanged before it is sent."""
        return self.syncer.settle.total_seconds()

    def set_settle_seconds(self, seconds: float) -> Future[None]:
        """Change the settle window (from the checkpoints' next change on)."""

        def apply() -> None:
            self.syncer.settle = timedelta(seconds=seconds)

        return self._submit(apply)

    @property
    def run_idle_seconds(self) -> float:
        """How long a watched folder may produce nothing before its run is marked finished."""
        return self.run_ends.idle_seconds

    def set_run_idle_seconds(self, seconds: float) -> Future[None]:
        """Change the run-idle time (counted from each folder's last activity)."""

        def apply() -> None:
            self.run_ends.idle_seconds = seconds

        return self._submit(apply)

    @property
    def divergence_factor(self) -> float:
        """How many times its recent average a loss may reach before it is said to diverge."""
        return self.alerts.divergence_factor

    def set_divergence_factor(self, factor: float) -> Future[None]:
        """Change the divergence alert's factor (from the next point on)."""

        def apply() -> None:
            self.alerts.divergence_factor = factor

        return self._submit(apply)

    def job_ended(self, folder: str | os.PathLike[str], *, failed: bool = False) -> Future[None]:
        """The job writing into a watched folder exited (a front end that started it knows):
        the folder's run is marked finished (or failed) once what it wrote was sent, without
        waiting for the run-idle time. Unknown folders are ignored."""
        path = Path(folder).expanduser().resolve()

        def apply() -> None:
            for watch in self.outbox.watches():
                if Path(watch.folder) == path:
                    self.run_ends.ended(watch.id, "failed" if failed else "finished")

        return self._submit(apply)

    def reload_watches(self) -> None:
        """Take added, removed, enabled or disabled watches into account now (a full rescan
        at the loop's next turn) rather than at the periodic rescan."""
        self._rescan_requested.set()
        self._wake.set()

    def retry_failed(self, checkpoint_id: int | None = None) -> Future[int]:
        """Send failed checkpoints again (one, or all): the user fixed the cause. The future
        gives how many will be sent again."""
        return self._submit(lambda: self._apply_retry_failed(checkpoint_id))

    # --- the outbox, for front ends (SQLite: call these off a UI thread) ------------------------

    def read_outbox(self) -> OutboxView:
        """The watches, the checkpoints still to send and the failed ones, as frozen views."""
        return OutboxView(
            tuple(WatchInfo.of(w) for w in self.outbox.watches()),
            tuple(CheckpointInfo.of(c) for c in self.outbox.pending()),
            tuple(CheckpointInfo.of(c) for c in self.outbox.failures()),
        )

    def add_watch(
        self,
        folder: str | os.PathLike[str],
        project: str,
        model: str,
        *,
        include: list[str] | None = None,
        ignore: list[str] | None = None,
    ) -> WatchInfo:
        """Watch `folder` for checkpoints of `project/model`, from the loop's next turn on.
        Raises OutboxError (a folder inside or around another watch, say) with what to do."""
        watch = self.outbox.add_watch(folder, project, model, include=include, ignore=ignore)
        self.reload_watches()
        return WatchInfo.of(watch)

    def remove_watch(self, id_or_folder: int | str | os.PathLike[str]) -> WatchInfo:
        """Stop watching a folder (nothing on disk or on the server is touched)."""
        watch = self.outbox.remove_watch(id_or_folder)
        self._submit(lambda: self._forget_watch(watch.id))
        self.reload_watches()
        return WatchInfo.of(watch)

    def set_watch_enabled(
        self, id_or_folder: int | str | os.PathLike[str], enabled: bool
    ) -> WatchInfo:
        """Enable or disable a watch (a disabled one's checkpoints wait; nothing is lost)."""
        watch = self.outbox.set_watch_enabled(id_or_folder, enabled)
        self.reload_watches()
        return WatchInfo.of(watch)

    # --- running -----------------------------------------------------------------------------

    def start(self) -> None:
        """Run the loop in a thread of its own (returns at once)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="lmvp-daemon", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the loop to end and wait for it. An upload in flight stops between two slices
        (what the server holds is kept, and resumed at the next start)."""
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def close(self) -> None:
        """Stop the loop (if it runs) and let another daemon use the state directory."""
        self.stop()
        self._state_lock.release()

    def __enter__(self) -> SyncDaemon:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def request_stop(self) -> None:
        """Ask the loop to end soon (safe from a signal handler)."""
        self._stop.set()
        self._wake.set()

    def run(self) -> None:
        """The loop, in the calling thread, until `request_stop`."""
        with self._commands_lock:
            self._loop_thread = threading.current_thread()
        try:
            self._loop()
        finally:
            with self._commands_lock:
                self._run_commands()  # what was asked while it stopped
                self._loop_thread = None

    def run_once(self) -> None:
        """One pass without watching (`lmvp-daemon run --once`), in the calling thread and
        instead of `run`: resume what the last stop interrupted, record every checkpoint, and
        send those that have settled, unless paused."""
        self.outbox.resume_interrupted()
        self.syncer.scan_watches()
        self._sync_ready()

    def _loop(self) -> None:
        resumed = self.outbox.resume_interrupted()
        if resumed:
            log.info("resuming %d checkpoint(s) interrupted by the last stop", resumed)
        self.run_ends.load()
        with FolderWatcher(changed=self._wake) as watcher:
            next_rescan = 0.0
            try:
                while not self._stop.is_set():
                    # Cleared before anything that woke it is looked at, never after: a stop,
                    # command or file event arriving during this turn then ends the next wait at
                    # once instead of being slept through (a quit waited out `interval` so).
                    self._wake.clear()
                    self._run_commands()
                    self._apply_settings()
                    # Watch first, then scan: a change between the two is seen twice, never lost.
                    if (
                        time.monotonic() >= next_rescan
                        or watcher.rescan_needed()
                        or self._rescan_requested.is_set()
                    ):
                        self._rescan_requested.clear()
                        self._watch_errors.clear()
                        rescan_in = self.rescan_seconds
                        try:
                            watcher.watch(self._load_watches())
                        except InotifyLimitError as exc:
                            # No events for some folders: say so, and poll them by rescanning
                            # often until the limit is raised.
                            log.warning("%s", exc.message)
                            self._watch_errors[0] = exc.message
                            rescan_in = min(rescan_in, _POLL_SECONDS)
                        self.syncer.scan_watches()
                        next_rescan = time.monotonic() + rescan_in
                    self.syncer.record_changed(watcher.take_dirty())
                    for watch_id, paths in watcher.take_metric_dirty().items():
                        self.syncer.metrics.mark(watch_id, paths)
                    self.syncer.mark_settled()
                    handled = 0
                    if not self.paused:
                        self._ping_if_offline()
                        self._sync_metrics()
                        handled = self._sync_ready()
                        self.alerts.check()
                        if self._offline_since is None:
                            self.run_ends.check()
                    # Idle and nothing happened: no need to ask the outbox again (it costs a
                    # query a turn, the daemon's main cost while it watches and waits).
                    if (
                        handled
                        or self._state is not DaemonState.idle
                        or self.syncer.has_waiting()
                        or self.paused
                        or self._watch_errors
                    ):
                        self._refresh_state()
                    # Sleep until an event, the next settle deadline or rescan; wake at least
                    # every `interval` to notice retries coming due and pause/resume.
                    timeouts = [self.interval, next_rescan - time.monotonic()]
                    settle_in = self.syncer.seconds_to_next_settle()
                    if settle_in is not None:
                        timeouts.append(settle_in + 0.01)
                    for due_in in (self.alerts.seconds_to_next(), self.run_ends.seconds_to_next()):
                        if due_in is not None:
                            timeouts.append(due_in + 0.01)
                    self._wake.wait(max(0.0, min(timeouts)))
            finally:
                _write_status(self.state_dir, None, "")

    # --- commands ------------------------------------------------------------------------------

    def _submit(self, command: Callable[[], T]) -> Future[T]:
        """Have the loop's thread run `command` at its next turn; while no loop runs, nothing
        else touches the daemon's state, so it runs at once in this thread."""
        future: Future[T] = Future()
        with self._commands_lock:
            loop = self._loop_thread
            if loop is not None and loop is not threading.current_thread():
                self._commands.put((command, future))
                self._wake.set()
            else:
                _run_command(command, future)  # holding the lock: no loop starts meanwhile
        return future

    def _run_commands(self) -> None:
        while True:
            try:
                command, future = self._commands.get_nowait()
            except queue.Empty:
                return
            _run_command(command, future)

    def _forget_watch(self, watch_id: int) -> None:
        self.run_ends.forget(watch_id)
        self.alerts.forget(watch_id)

    def _apply_pause(self) -> None:
        try:
            (self.state_dir / PAUSE_FILE).touch()
        finally:
            self._pause_requested.clear()
        self._refresh_state()

    def _apply_resume(self) -> None:
        self._pause_requested.clear()
        (self.state_dir / PAUSE_FILE).unlink(missing_ok=True)
        self._refresh_state()

    def _apply_bandwidth_limit(self, bytes_per_second: float | None) -> None:
        self.throttle.limit = bytes_per_second
        write_settings(self.state_dir, {"bandwidth_limit": bytes_per_second})
        self._settings_mtime = _mtime(self.state_dir / SETTINGS_FILE)

    def _apply_retry_failed(self, checkpoint_id: int | None) -> int:
        count = self.outbox.retry_failed(checkpoint_id)
        if count:
            self._failed_since_commit = False
            self._refresh_state()
        return count

    def _sync_ready(self) -> int:
        """Send ready checkpoints one by one until none is due, or until paused (also by
        `lmvp-daemon pause` from another shell) or asked to pause or stop: a checkpoint put back
        by that is due again at once. Returns how many were handled."""
        handled = 0
        while not (self._stop.is_set() or self._pause_requested.is_set() or self.paused):
            if not self.syncer.sync_ready(limit=1):
                break
            handled += 1
        return handled

    def _sync_metrics(self) -> None:
        """Send the new points of changed metric files, watch by watch."""
        if self._offline_since is not None or not self.syncer.metrics.has_dirty():
            return
        for watch in self.outbox.watches():
            if not watch.enabled:
                continue
            try:
                sent = self.syncer.metrics.sync(watch)
            except ServerUnavailable as exc:
                self._on_event(SyncEvent(EventKind.offline, watch.id, message=exc.message))
                return
            except LMVPError as exc:
                log.warning("metrics of %s not sent: %s", watch.folder, exc.message)
                continue
            if sent:
                self._emit(SyncEvent(EventKind.metrics, watch.id, sent=sent))

    # --- state -------------------------------------------------------------------------------

    def _on_event(self, event: SyncEvent) -> None:
        if event.kind is EventKind.offline:
            if self._offline_since is None:
                self._offline_since = time.monotonic()
            self._state_message = event.message
        elif event.kind is EventKind.committed:
            self._offline_since = None
            self._failed_since_commit = False
        elif event.kind is EventKind.failed:
            self._failed_since_commit = True
            self._state_message = f"{event.key}: {event.message}"
        elif event.kind is EventKind.watch_error:
            self._watch_errors[event.watch_id] = event.message
        elif event.kind is EventKind.metrics_skipped:
            self._metric_skips.setdefault(event.watch_id, {})[event.key] = event.skipped
            self._write_status()
        self._emit(event)
        if event.kind is not EventKind.progress:
            self._refresh_state()

    def _on_alert(self, event: SyncEvent) -> None:
        """A training alert: logged, kept for the status file, and sent to the listeners."""
        self._recent_alerts.append(
            {
                "kind": event.kind.value,
                "watch": event.watch_id,
                "key": event.key,
                "message": event.message,
                "at": time.time(),
            }
        )
        del self._recent_alerts[:-_STATUS_ALERTS]
        self._write_status()
        self._emit(event)

    def _write_status(self) -> None:
        _write_status(
            self.state_dir,
            self._state,
            self._state_message,
            self._metric_skips,
            self._recent_alerts,
        )

    def _note_activity(self, event: SyncEvent) -> None:
        """A watched folder produced: its run goes on; a settled checkpoint sets the pace."""
        folder = self._folders.get(event.watch_id)
        self.run_ends.activity(event.watch_id, folder)
        if event.kind is not EventKind.queued or folder is None:
            return
        try:
            written_at = _newest_mtime(Path(folder) / event.key)
        except OSError:
            return  # gone already: nothing to time
        self.alerts.checkpoint(event.watch_id, event.key, written_at)

    def _emit(self, event: SyncEvent) -> None:
        if event.kind in _ACTIVITY and event.watch_id:
            self._note_activity(event)
        if event.watch_id and not event.project:
            target = self._targets.get(event.watch_id)
            if target is None:  # a watch added since the last rescan
                self._load_watches()
                target = self._targets.get(event.watch_id)
            if target is not None:
                event = dataclasses.replace(event, project=target[0], model=target[1])
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(event)
            except Exception:  # a listener's bug must not stop the syncing
                log.exception("a daemon event listener failed on %s", event)

    def _load_watches(self) -> list[Watch]:
        """The outbox's watches; also what the events name as their project and model."""
        watches = self.outbox.watches()
        self._targets = {w.id: (w.project, w.model) for w in watches}
        self._folders = {w.id: w.folder for w in watches}
        return watches

    def _refresh_state(self) -> None:
        if self.paused:
            state, message = DaemonState.paused, ""
        elif self._offline_since is not None:
            state, message = DaemonState.offline, self._state_message
        elif self._watch_errors:
            state, message = DaemonState.error, next(iter(self._watch_errors.values()))
        elif self._failed_since_commit:
            state, message = DaemonState.error, self._state_message
        elif self.syncer.has_waiting() or any(self.outbox.counts()[s] for s in _BUSY):
            state, message = DaemonState.syncing, ""
        else:
            state, message = DaemonState.idle, ""
        if state is self._state and message == self._state_message:
            return
        changed = state is not self._state
        self._state, self._state_message = state, message
        self._write_status()
        if changed:
            log.info("state: %s%s", state.value, f" ({message})" if message else "")
            self._emit(SyncEvent(EventKind.state, state=state, message=message))

    def _ping_if_offline(self) -> None:
        """While offline, ask the server every few seconds whether it is back; if it is, the
        checkpoints waiting for a retry are due at once."""
        if self._offline_since is None or time.monotonic() - self._last_ping < _PING_SECONDS:
            return
        self._last_ping = time.monotonic()
        try:
            self.client.whoami()
        except LMVPError:
            return
        log.info("server %s is reachable again", self.client.server)
        self._offline_since = None
        self.outbox.retry_waiting_now()

    def _apply_settings(self) -> None:
        mtime = _mtime(self.state_dir / SETTINGS_FILE)
        if mtime == self._settings_mtime:
            return
        self._settings_mtime = mtime
        limit = read_settings(self.state_dir).get("bandwidth_limit")
        self.throttle.limit = float(limit) if isinstance(limit, int | float) and limit > 0 else None


def _run_command(command: Callable[[], T], future: Future[T]) -> None:
    """Run one command, its result or error going to `future` (whoever asked may look)."""
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(command())
    except Exception as exc:  # handed to whoever waits on the future, and logged
        log.warning("a daemon command failed: %s", exc)
        future.set_exception(exc)


def event_logger(logger: logging.Logger) -> Listener:
    """A listener that logs each event worth a line: a checkpoint queued, committed, retried,
    failed, a watch error, a pause, a training alert, a run finished or reopened (progress,
    metrics and state changes would flood a log; the daemon logs state changes itself)."""
    # metrics_skipped: the metric sync logs a warning itself.
    quiet = (EventKind.progress, EventKind.state, EventKind.metrics, EventKind.metrics_skipped)
    loud = (EventKind.failed, EventKind.watch_error, *ALERTS)

    def log_event(event: SyncEvent) -> None:
        if event.kind in quiet:
            return
        level = logging.WARNING if event.kind in loud else logging.INFO
        detail = f" -> version {event.version}" if event.version else ""
        logger.log(level, "%s %s%s %s", event.kind.value, event.key, detail, event.message)

    return log_event


# --- settings and status files, shared with the CLI ---------------------------------------------


def read_settings(state_dir: Path) -> dict[str, Any]:
    return _read_json(state_dir / SETTINGS_FILE)


def write_settings(state_dir: Path, changes: dict[str, Any]) -> None:
    settings = {**read_settings(state_dir), **changes}
    _write_json(state_dir / SETTINGS_FILE, settings)


def read_status(state_dir: Path) -> dict[str, Any]:
    """What the running daemon last wrote about its state (empty when none runs)."""
    data = _read_json(state_dir / STATUS_FILE)
    return data if data.get("state") else {}


def _write_status(
    state_dir: Path,
    state: DaemonState | None,
    message: str,
    metric_skips: dict[int, dict[str, int]] | None = None,
    alerts: list[dict[str, Any]] | None = None,
) -> None:
    """The status file: the state, its message, the pid, the malformed metric records
    skipped so far (`metric_skips`: `[{"watch": id, "file": path, "skipped": n}, ...]`), and
    the latest training alerts (`alerts`: `[{"kind", "watch", "key", "message", "at"}, ...]`)."""
    try:
        if state is None:
            (state_dir / STATUS_FILE).unlink(missing_ok=True)
        else:
            skips = [
                {"watch": watch_id, "file": file, "skipped": count}
                for watch_id, files in sorted((metric_skips or {}).items())
                for file, count in sorted(files.items())
            ]
            _write_json(
                state_dir / STATUS_FILE,
                {
                    "state": state.value,
                    "message": message,
                    "pid": os.getpid(),
                    "metric_skips": skips,
                    "alerts": alerts or [],
                },
            )
    except OSError as exc:
        log.warning("could not write %s: %s", state_dir / STATUS_FILE, exc)


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; empty when the file is missing or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _newest_mtime(path: Path) -> float:
    """When a checkpoint (a file, or a directory's newest file) was last written. Raises
    OSError when it is gone."""
    st = path.stat()
    if not path.is_dir():
        return st.st_mtime
    return max([st.st_mtime, *(p.stat().st_mtime for p in path.rglob("*") if p.is_file())])


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)(i?)(?:b|b/s|bps)?\s*$", re.IGNORECASE)


def parse_rate(text: str) -> float | None:
    """A bandwidth such as `50M`, `2.5MB`, `800k`, `1GiB` in bytes per second; `off`/`none`/`0`
    for no limit. Raises `DaemonError` for anything else."""
    if text.strip().lower() in ("off", "none", "0", "unlimited"):
        return None
    match = _RATE.match(text)
    if not match:
        raise DaemonError(
            f"{text!r} is not a bandwidth: give bytes per second such as 50M, 800k or 1GiB, or off"
        )
    number, unit, binary = float(match[1]), match[2].lower(), match[3]
    base = 1024 if binary else 1000
    value = number * float(base ** {"": 0, "k": 1, "m": 2, "g": 3}[unit])
    if value <= 0:
        return None
    return value


__all__ = [
    "ALERTS",
    "PAUSE_FILE",
    "SyncDaemon",
    "event_logger",
    "parse_rate",
    "read_settings",
    "read_status",
    "write_settings",
]
