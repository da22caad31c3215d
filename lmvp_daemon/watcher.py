"""Telling the daemon which checkpoints changed, from file system events (watchdog/inotify).

This module owns one question: since the daemon last asked, which checkpoints of which
watches may have changed? `FolderWatcher` schedules a recursive watchdog observer on each
enabled watch's folder, maps every event path (both ends of a move) to a checkpoint key with
`WatchRules.checkpoint_key`, and collects the (watch id, key) pairs in a thread-safe set.
`changed` is set whenever something was added, so the daemon can sleep until then.

Events are hints, never the truth: the syncer fingerprints what it is told about, and the
daemon rescans everything at start, periodically and whenever `rescan_needed()` says so
(the kernel's event queue overflowed, an observer died, a watched folder vanished), because
inotify drops events when its queue overflows. watchdog (7.1 and later, as pyproject.toml
pins) reports that overflow as an `EventsLostEvent` for each watch, which is what asks for
the rescan here; nothing depends on the wording of watchdog's log.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    EventsLostEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

from lmvp_daemon.checkpoints import WatchRules
from lmvp_daemon.errors import DaemonError
from lmvp_daemon.metric_files import FILE_NAMES as METRIC_FILE_NAMES
from lmvp_daemon.outbox_db import Watch
from lmvp_daemon.sync import rules_of

log = logging.getLogger(__name__)


DirtyKey = tuple[int, str]
"""(watch id, checkpoint key) of a checkpoint that may have changed."""

# Reads (our own hashing opens every file) and directory-modified noise are left out. A watch
# gets EventsLostEvent only if its filter lists it.
_EVENTS = [
    EventsLostEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileClosedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    DirCreatedEvent,
    DirMovedEvent,
    DirDeletedEvent,
]


class InotifyLimitError(DaemonError):
    """The kernel refused another inotify watch or instance: a limit must be raised."""

    title = "Too many watched folders"


class FolderWatcher:
    """Watches the enabled watches' folders and collects the checkpoints that may have changed.

    Use as a context manager (or `start()` / `stop()`); call `watch()` with the outbox's
    watches at start and on every rescan, `take_dirty()` to collect what changed, and wait on
    `changed` in between (clearing it before each take).
    """

    def __init__(self, changed: threading.Event | None = None) -> None:
        # Set whenever something may have changed; `changed` lets the caller share one event
        # with other reasons to wake up.
        self.changed = changed or threading.Event()
        self._lock = threading.Lock()
        self._dirty: set[DirtyKey] = set()
        self._metric_dirty: set[tuple[int, Path]] = set()
        self._rescan = threading.Event()
        self._observer: BaseObserver = Observer()
        self._scheduled: dict[int, _Scheduled] = {}
        # Enabled watches whose folder is missing: scheduled once it is back.
        self._missing: dict[int, Path] = {}

    def start(self) -> None:
        """Start the observer thread."""
        self._observer.start()

    def stop(self) -> None:
        """Stop the observer and wait for its threads to end."""
        self._observer.stop()
        if self._observer.is_alive():
            self._observer.join(timeout=10)

    def __enter__(self) -> FolderWatcher:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def watch(self, watches: Iterable[Watch]) -> None:
        """Observe exactly the enabled watches' folders.

        Schedules new ones, unschedules removed or disabled ones, and schedules again a
        folder that was replaced (another inode) or whose observer died. A folder that does
        not exist now is left unscheduled (the syncer's scan reports it) and tried again on
        the next call. Raises InotifyLimitError if the kernel's inotify limits are reached.
        """
        wanted = {w.id: w for w in watches if w.enabled}
        alive = {id(e.watch) for e in self._observer.emitters if e.is_alive()}
        for watch_id, scheduled in list(self._scheduled.items()):
            watch = wanted.get(watch_id)
            current = _identity(scheduled.root)
            if (
                watch is None
                or Path(watch.folder) != scheduled.root
                or current != scheduled.identity
                or id(scheduled.observed) not in alive
            ):
                self._unschedule(watch_id)
        self._missing = {}
        for watch_id, watch in wanted.items():
            if watch_id not in self._scheduled and not self._schedule(watch):
                self._missing[watch_id] = Path(watch.folder)

    def take_dirty(self) -> set[DirtyKey]:
        """The checkpoints that may have changed since the last call. It leaves `changed` as it
        is: whoever waits on it clears it before taking, so that nothing that sets it between
        the two is lost (it may be shared with other reasons to wake)."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        return dirty

    def take_metric_dirty(self) -> dict[int, set[Path]]:
        """The metric files (by watch id) that changed since the last call."""
        with self._lock:
            dirty, self._metric_dirty = self._metric_dirty, set()
        out: dict[int, set[Path]] = {}
        for watch_id, path in dirty:
            out.setdefault(watch_id, set()).add(path)
        return out

    def rescan_needed(self) -> bool:
        """Whether events may have been lost since the last call (queue overflow, a dead
        observer, a watched folder removed, moved or back): then the daemon must rescan all.

        Costs one stat per watched folder: inotify says nothing when the folder itself is
        renamed."""
        if any(not e.is_alive() for e in self._observer.emitters):
            self._rescan.set()
        if any(_identity(s.root) != s.identity for s in self._scheduled.values()):
            self._rescan.set()
        if any(_identity(root) is not None for root in self._missing.values()):
            self._rescan.set()
        needed = self._rescan.is_set()
        self._rescan.clear()
        return needed

    def request_rescan(self) -> None:
        """Ask for a full rescan (used when events were lost) and wake the daemon."""
        self._rescan.set()
        self.changed.set()

    # -- helpers ------------------------------------------------------------

    def _schedule(self, watch: Watch) -> bool:
        """Start observing a watch's folder; False if it is missing (the scan reports that)."""
        root = Path(watch.folder)
        identity = _identity(root)
        if identity is None:
            return False
        handler = _Handler(self, watch.id, root, rules_of(watch))
        try:
            observed = self._observer.schedule(
                handler, os.fspath(root), recursive=True, event_filter=_EVENTS
            )
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise InotifyLimitError(
                    f"Cannot watch {root}: the kernel's limit of inotify watches per user "
                    "(sysctl fs.inotify.max_user_watches) is reached; every subfolder needs "
                    "one. Raise it, e.g. `sudo sysctl fs.inotify.max_user_watches=524288`, "
                    "and make it permanent with a line `fs.inotify.max_user_watches=524288` "
                    "in /etc/sysctl.d/90-lmvp.conf; or watch a smaller folder."
                ) from exc
            if exc.errno == errno.EMFILE:
                raise InotifyLimitError(
                    f"Cannot watch {root}: the kernel's limit of inotify instances per user "
                    "(sysctl fs.inotify.max_user_instances) is reached. Raise it, e.g. "
                    "`sudo sysctl fs.inotify.max_user_instances=1024`, or stop other "
                    "programs that watch files."
                ) from exc
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return False  # vanished just now
            raise
        self._scheduled[watch.id] = _Scheduled(root, identity, observed)
        log.info("watching %s for changes", root)
        return True

    def _unschedule(self, watch_id: int) -> None:
        scheduled = self._scheduled.pop(watch_id)
        # KeyError: its emitter already stopped itself (the folder was deleted).
        with contextlib.suppress(KeyError):
            self._observer.unschedule(scheduled.observed)

    def _mark_metric(self, watch_id: int, path: Path) -> None:
        with self._lock:
            self._metric_dirty.add((watch_id, path))
        self.changed.set()

    def _mark(self, keys: Iterable[DirtyKey]) -> None:
        with self._lock:
            before = len(self._dirty)
            self._dirty.update(keys)
            grew = len(self._dirty) != before
        if grew:
            self.changed.set()


@dataclass(frozen=True)
class _Scheduled:
    root: Path
    identity: tuple[int, int]
    observed: ObservedWatch


class _Handler(FileSystemEventHandler):
    """Maps one watch's events to dirty checkpoint keys (runs on the observer's thread)."""

    def __init__(self, watcher: FolderWatcher, watch_id: int, root: Path, rules: WatchRules):
        self.watcher = watcher
        self.watch_id = watch_id
        self.root = root
        self.rules = rules

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, EventsLostEvent):
            # The kernel's queue overflowed: events of every watch were dropped.
            log.warning(
                "events under %s were lost (the kernel's inotify queue overflowed): "
                "rescanning the watched folders",
                self.root,
            )
            self.watcher.request_rescan()
            return
        paths = [os.fsdecode(event.src_path)]
        if event.event_type == "moved" and event.dest_path:
            paths.append(os.fsdecode(event.dest_path))
        keys: set[DirtyKey] = set()
        for path in paths:
            if Path(path) == self.root:
                # The watched folder itself was removed or moved: the scan must say so.
                self.watcher.request_rescan()
                continue
            if os.path.basename(path) in METRIC_FILE_NAMES and not event.is_directory:
                self.watcher._mark_metric(self.watch_id, Path(path))
            keys.update(self._keys_of(path))
            # Files written right after their folder was created may give no event of their
            # own, and a folder moved in gives none for its contents: walk the subtree.
            if event.is_directory and event.event_type in ("created", "moved"):
                keys.update(self._keys_below(path))
        if keys:
            self.watcher._mark(keys)

    def _keys_of(self, path: str) -> list[DirtyKey]:
        try:
            rel = os.path.relpath(path, self.root)
            key = self.rules.checkpoint_key(rel)
        except ValueError:
            return []  # outside the folder (a move out of it, or a moved watch root)
        return [(self.watch_id, key)] if key is not None else []

    def _keys_below(self, directory: str) -> list[DirtyKey]:
        if not os.path.isdir(directory):
            return []
        keys: list[DirtyKey] = []
        for current, dirs, files in os.walk(directory):
            for name in files + dirs:
                keys.extend(self._keys_of(os.path.join(current, name)))
        return keys


def _identity(root: Path) -> tuple[int, int] | None:
    try:
        st = root.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if os.path.isdir(root) else None
