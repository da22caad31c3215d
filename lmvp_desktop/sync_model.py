"""Qt models for the sync panel: the watched folders, and the queue of checkpoints with their
progress, state and errors; plus the delegate that draws a progress bar in a queue cell.

`WatchesModel` lists the outbox's watches (a checkbox enables or disables one; the model asks
for the change through `enable_requested` and is reloaded by whoever applies it), with the
malformed records the daemon skipped in each watch's metric files, by file: bad data in the
training job's files, told apart from data lost on the way (there is none).
`QueueModel` keeps one row per checkpoint (watch, key): loaded from the outbox (what is
pending and what failed), then kept current by the daemon's events, so that progress needs
no database read. Finished rows stay (the last `DONE_ROWS` of them) so the user sees what
went through.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    Qt,
    Signal,
)
from PySide6.QtGui import QColor, QPainter
from PySide6.QtWidgets import (
    QApplication,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionProgressBar,
    QStyleOptionViewItem,
    QWidget,
)

from lmvp_daemon.metrics_sync import describe_skipped
from lmvp_daemon.outbox_db import CheckpointState
from lmvp_daemon.sync import EventKind, SyncEvent
from lmvp_daemon.views import CheckpointInfo, WatchInfo

DONE_ROWS = 200
_ERROR_COLOUR = QColor("#c62828")
_WARNING_COLOUR = QColor("#b26a00")
ModelIndex = QModelIndex | QPersistentModelIndex

# Roles for what the views and tests read beyond the text.
ProgressRole = Qt.ItemDataRole.UserRole + 1  # float 0..1, or None when nothing is known
RowStateRole = Qt.ItemDataRole.UserRole + 2  # QueueState
CheckpointIdRole = Qt.ItemDataRole.UserRole + 3  # the outbox's id, or None
WatchIdRole = Qt.ItemDataRole.UserRole + 4


class QueueState(enum.StrEnum):
    """A queue row's state as the user reads it (finer than the outbox's: offline, paused)."""

    settling = "settling"  # seen, waiting until it stops changing
    queued = "queued"
    uploading = "uploading"
    committing = "committing"
    done = "done"
    retrying = "retrying"  # a transient error; tried again later
    offline = "offline"  # waits for the server
    paused = "paused"
    failed = "failed"  # needs the user: retry once the cause is fixed

    @property
    def label(self) -> str:
        return {
            QueueState.settling: "Waiting to settle",
            QueueState.queued: "Queued",
            QueueState.uploading: "Uploading",
            QueueState.committing: "Committing",
            QueueState.done: "Synced",
            QueueState.retrying: "Will retry",
            QueueState.offline: "Waiting for server",
            QueueState.paused: "Paused",
            QueueState.failed: "Failed",
        }[self]


_FROM_OUTBOX = {
    CheckpointState.queued: QueueState.settling,
    CheckpointState.ready: QueueState.queued,
    CheckpointState.uploading: QueueState.uploading,
    CheckpointState.committing: QueueState.committing,
    CheckpointState.done: QueueState.done,
    CheckpointState.failed: QueueState.failed,
    CheckpointState.waiting_retry: QueueState.retrying,
}


@dataclass(frozen=True)
class QueueRow:
    """One checkpoint in the queue."""

    watch_id: int
    key: str
    target: str  # "project/model"
    state: QueueState
    checkpoint_id: int | None = None
    sent: int = 0
    total: int = 0
    version: int | None = None
    message: str = ""

    @property
    def progress(self) -> float | None:
        """How much of it reached the server (0..1), or None before anything is known."""
        if self.state is QueueState.done:
            return 1.0
        if self.total > 0:
            return min(1.0, self.sent / self.total)
        return None


class WatchColumn(enum.IntEnum):
    folder = 0
    target = 1
    enabled = 2
    skipped = 3


class WatchesModel(QAbstractTableModel):
    """The watched folders: folder, project/model, an "enabled" checkbox, and the malformed
    metric records skipped in the folder's files (per file, from the daemon).

    `enable_requested(watch_id, enabled)` is emitted when the user ticks the box; the panel
    applies it to the outbox and calls `set_watches` with the result.
    """

    enable_requested = Signal(int, bool)

    _HEADERS = ("Folder", "Project / model", "Enabled", "Skipped metric records")

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._watches: list[WatchInfo] = []
        self._skips: dict[int, dict[str, int]] = {}

    def set_watches(self, watches: Sequence[WatchInfo]) -> None:
        self.beginResetModel()
        self._watches = list(watches)
        self.endResetModel()

    def add_metric_skips(self, skips: dict[int, dict[str, int]]) -> None:
        """Take the daemon's malformed metric records by watch and file (`metric_skips`, or one
        `metrics_skipped` event's). Counts only grow: an older snapshot never lowers one."""
        changed: set[int] = set()
        for watch_id, files in skips.items():
            known = self._skips.setdefault(watch_id, {})
            for file, count in files.items():
                if count > known.get(file, 0):
                    known[file] = count
                    changed.add(watch_id)
        for row, watch in enumerate(self._watches):
            if watch.id in changed:
                index = self.index(row, WatchColumn.skipped)
                self.dataChanged.emit(index, index)

    def metric_skips(self, watch_id: int) -> dict[str, int]:
        """The malformed records skipped in one watch's metric files, by file."""
        return dict(self._skips.get(watch_id, {}))

    def watch_at(self, row: int) -> WatchInfo:
        return self._watches[row]

    def rowCount(self, parent: ModelIndex = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._watches)

    def columnCount(self, parent: ModelIndex = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(WatchColumn)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if orientation is Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return self._HEADERS[section]
        return None

    def data(self, index: ModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        watch = self._watches[index.row()]
        column = WatchColumn(index.column())
        if role == WatchIdRole:
            return watch.id
        if column is WatchColumn.enabled:
            if role == Qt.ItemDataRole.CheckStateRole:
                return Qt.CheckState.Checked if watch.enabled else Qt.CheckState.Unchecked
            return None
        if column is WatchColumn.skipped:
            skips = sorted(self._skips.get(watch.id, {}).items())
            if role == Qt.ItemDataRole.DisplayRole:
                return ", ".join(f"{file}: {count}" for file, count in skips)
            if role == Qt.ItemDataRole.ToolTipRole:
                return "\n".join(describe_skipped(f, n) for f, n in skips) or None
            if role == Qt.ItemDataRole.ForegroundRole and skips:
                return _WARNING_COLOUR
            return None
        if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ToolTipRole):
            if column is WatchColumn.folder:
                return watch.folder
            return f"{watch.project}/{watch.model}"
        return None

    def flags(self, index: ModelIndex) -> Qt.ItemFlag:
        flags = super().flags(index)
        if index.isValid() and index.column() == WatchColumn.enabled:
            flags |= Qt.ItemFlag.ItemIsUserCheckable
        return flags

    def setData(self, index: ModelIndex, value: Any, role: int = Qt.ItemDataRole.EditRole) -> bool:
        if (
            not index.isValid()
            or index.column() != WatchColumn.enabled
            or role != Qt.ItemDataRole.CheckStateRole
        ):
            return False
        checked = Qt.CheckState(value) == Qt.CheckState.Checked
        self.enable_requested.emit(self._watches[index.row()].id, checked)
        return True


class QueueColumn(enum.IntEnum):
    checkpoint = 0
    target = 1
    state = 2
    progress = 3
    message = 4


class QueueModel(QAbstractTableModel):
    """Every checkpoint the daemon is sending, sent, or could not send."""

    _HEADERS = ("Checkpoint", "Project / model", "State", "Progress", "Message")

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._rows: list[QueueRow] = []
        self._index: dict[tuple[int, str], int] = {}
        self._targets: dict[int, str] = {}
        # Events applied so far, and the count when each row last changed by one.
        self._events = 0
        self._touched: dict[tuple[int, str], int] = {}

    # --- feeding -----------------------------------------------------------------------------

    def set_watches(self, watches: Sequence[WatchInfo]) -> None:
        """Know the watches' project/model (for the target column); drops rows of watches that
        no longer exist."""
        self._targets = {w.id: f"{w.project}/{w.model}" for w in watches}
        gone = [r for r in self._rows if r.watch_id not in self._targets]
        if gone:
            self._replace_all([r for r in self._rows if r.watch_id in self._targets])

    def mark(self) -> int:
        """A point in the stream of events: pass it to `load` with the outbox snapshot read
        after it, so that the snapshot does not undo what newer events said."""
        return self._events

    def load(
        self,
        pending: Sequence[CheckpointInfo],
        failures: Sequence[CheckpointInfo],
        *,
        mark: int | None = None,
    ) -> None:
        """Merge the outbox's open and failed checkpoints into the rows (ids, states, errors).

        Rows an event changed after `mark` (the snapshot is older than that) only take the
        checkpoint's id; done rows, known from events only, are kept."""
        mark = self._events if mark is None else mark
        seen: set[tuple[int, str]] = set()
        for cp in [*pending, *failures]:
            key = (cp.watch_id, cp.key)
            seen.add(key)
            old = self.row_for(*key)
            if old is not None and self._touched.get(key, 0) > mark:
                if old.checkpoint_id is None:
                    self._put(replace(old, checkpoint_id=cp.id))
                continue
            state = _FROM_OUTBOX[cp.state]
            if old is not None and old.state is QueueState.paused and state is QueueState.retrying:
                state = old.state  # put back by a pause: say so
            self._put(
                QueueRow(
                    watch_id=cp.watch_id,
                    key=cp.key,
                    target=self._targets.get(cp.watch_id, ""),
                    state=state,
                    checkpoint_id=cp.id,
                    sent=old.sent if old else 0,
                    total=old.total if old else 0,
                    version=cp.version,
                    message=cp.last_error or "" if state is not QueueState.uploading else "",
                )
            )
        # Neither open nor failed in the snapshot, and no newer event: sent meanwhile (or its
        # watch is gone). Done rows stay, as the record of what went through.
        stale = [
            r
            for r in self._rows
            if (r.watch_id, r.key) not in seen
            and r.state is not QueueState.done
            and self._touched.get((r.watch_id, r.key), 0) <= mark
        ]
        if stale:
            self._replace_all([r for r in self._rows if r not in stale])

    def apply_event(self, event: SyncEvent) -> None:
        """Update the row of the event's checkpoint (adding it when new)."""
        if not event.key or event.kind in (
            EventKind.state,
            EventKind.metrics,
            EventKind.metrics_skipped,
        ):
            return
        self._events += 1
        self._touched[(event.watch_id, event.key)] = self._events
        old = self.row_for(event.watch_id, event.key)
        target = f"{event.project}/{event.model}" if event.project else ""
        row = old or QueueRow(
            event.watch_id,
            event.key,
            target or self._targets.get(event.watch_id, ""),
            QueueState.queued,
        )
        if event.kind is EventKind.queued:
            row = replace(row, state=QueueState.queued, message="", sent=0, total=0)
        elif event.kind is EventKind.progress:
            row = replace(row, state=QueueState.uploading, sent=event.sent, total=event.total)
            row = replace(row, message="")
        elif event.kind is EventKind.committed:
            row = replace(row, state=QueueState.done, version=event.version, message="")
            row = replace(row, sent=row.total)
        elif event.kind is EventKind.failed:
            row = replace(row, state=QueueState.failed, message=event.message)
        elif event.kind is EventKind.retry:
            row = replace(row, state=QueueState.retrying, message=event.message)
        elif event.kind in (EventKind.offline, EventKind.watch_error):
            row = replace(row, state=QueueState.offline, message=event.message)
        elif event.kind is EventKind.paused:
            row = replace(row, state=QueueState.paused, message="")
        self._put(row)
        if event.kind is EventKind.committed:
            self._trim_done()

    # --- reading -----------------------------------------------------------------------------

    def row_for(self, watch_id: int, key: str) -> QueueRow | None:
        i = self._index.get((watch_id, key))
        return self._rows[i] if i is not None else None

    def row_at(self, row: int) -> QueueRow:
        return self._rows[row]

    def rows(self) -> list[QueueRow]:
        return list(self._rows)

    def rowCount(self, parent: ModelIndex = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: ModelIndex = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(QueueColumn)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if orientation is Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return self._HEADERS[section]
        return None

    def data(self, index: ModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        row = self._rows[index.row()]
        if role == ProgressRole:
            return row.progress
        if role == RowStateRole:
            return row.state
        if role == CheckpointIdRole:
            return row.checkpoint_id
        if role == WatchIdRole:
            return row.watch_id
        column = QueueColumn(index.column())
        if role == Qt.ItemDataRole.DisplayRole:
            if column is QueueColumn.checkpoint:
                return row.key
            if column is QueueColumn.target:
                return row.target
            if column is QueueColumn.state:
                if row.state is QueueState.done and row.version is not None:
                    return f"{row.state.label} (v{row.version})"
                return row.state.label
            if column is QueueColumn.progress:
                progress = row.progress
                return "" if progress is None else f"{progress:.0%}"
            return row.message
        if role == Qt.ItemDataRole.ToolTipRole and column is QueueColumn.message:
            return row.message or None
        if role == Qt.ItemDataRole.ForegroundRole and row.state is QueueState.failed:
            return _ERROR_COLOUR
        return None

    # --- internals ---------------------------------------------------------------------------

    def _put(self, row: QueueRow) -> None:
        key = (row.watch_id, row.key)
        i = self._index.get(key)
        if i is None:
            at = len(self._rows)
            self.beginInsertRows(QModelIndex(), at, at)
            self._rows.append(row)
            self._index[key] = at
            self.endInsertRows()
        elif self._rows[i] != row:
            self._rows[i] = row
            self.dataChanged.emit(self.index(i, 0), self.index(i, len(QueueColumn) - 1))

    def _replace_all(self, rows: list[QueueRow]) -> None:
        self.beginResetModel()
        self._rows = rows
        self._index = {(r.watch_id, r.key): i for i, r in enumerate(rows)}
        self.endResetModel()

    def _trim_done(self) -> None:
        done = [r for r in self._rows if r.state is QueueState.done]
        if len(done) > DONE_ROWS:
            drop = {id(r) for r in done[: len(done) - DONE_ROWS]}
            self._replace_all([r for r in self._rows if id(r) not in drop])


class ProgressDelegate(QStyledItemDelegate):
    """Draws the model's `ProgressRole` as the style's own progress bar."""

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: ModelIndex) -> None:
        progress = index.data(ProgressRole)
        if progress is None:
            super().paint(painter, option, index)
            return
        bar = QStyleOptionProgressBar()
        bar.rect = option.rect.adjusted(2, 3, -2, -3)
        bar.minimum = 0
        bar.maximum = 1000
        bar.progress = round(float(progress) * 1000)
        bar.text = str(index.data(Qt.ItemDataRole.DisplayRole) or "")
        bar.textVisible = True
        bar.state = option.state | QStyle.StateFlag.State_Horizontal
        widget: QWidget | None = option.widget
        style = widget.style() if widget is not None else QApplication.style()
        style.drawControl(QStyle.ControlElement.CE_ProgressBar, bar, painter, widget)


__all__ = [
    "CheckpointIdRole",
    "ProgressDelegate",
    "ProgressRole",
    "QueueColumn",
    "QueueModel",
    "QueueRow",
    "QueueState",
    "RowStateRole",
    "WatchColumn",
    "WatchIdRole",
    "WatchesModel",
]
