"""The embedded sync daemon, seen from the UI thread: its events as Qt signals.

`SyncDaemon` calls its listeners on its own threads; `DaemonBridge` re-emits every event as
the `sync_event` signal and state changes as `state_changed`, which Qt delivers on the UI thread
(queued across threads). Widgets connect to these and never call into the daemon's loop.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal

from lmvp_daemon.service import SyncDaemon
from lmvp_daemon.sync import EventKind, SyncEvent


class DaemonBridge(QObject):
    """Signals for one `SyncDaemon`: `sync_event(SyncEvent)` and
    `state_changed(DaemonState, message)`."""

    sync_event = Signal(object)
    state_changed = Signal(object, str)

    def __init__(self, daemon: SyncDaemon, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.daemon = daemon
        self._unsubscribe = daemon.subscribe(self._forward)

    def close(self) -> None:
        self._unsubscribe()

    def _forward(self, event: SyncEvent) -> None:
        self.sync_event.emit(event)
        if event.kind is EventKind.state and event.state is not None:
            self.state_changed.emit(event.state, event.message)


__all__ = ["DaemonBridge"]
