"""The sync panel: watched folders, the queue with per-checkpoint progress, errors with a retry,
and pause/resume of all syncing, for the daemon embedded in the app.

The panel reads the daemon's events through a `DaemonBridge` (UI thread), the outbox and the
daemon's `metric_skips` (malformed metric records skipped, shown per watch and file) for what
happened before it opened, and the server (projects, models) through `run_async`. Nothing here
waits on the outbox (SQLite, whose write lock another process may hold for seconds): reads of
the queue and changes to watches run one after another on a thread of the panel's own and
come back as frozen views (`WatchInfo`, `CheckpointInfo`); pause, resume and retry are the
daemon's commands, applied by its loop, whose state events the panel shows.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QModelIndex, QPoint, Qt, QThreadPool, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMenu,
    QPushButton,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

import lmvp
from lmvp.errors import ServerUnavailable
from lmvp_daemon.errors import DaemonError
from lmvp_daemon.service import SyncDaemon
from lmvp_daemon.sync import DaemonState, EventKind, SyncEvent
from lmvp_daemon.views import OutboxView, WatchInfo
from lmvp_desktop.daemon_bridge import DaemonBridge
from lmvp_desktop.errors import explain
from lmvp_desktop.sync_model import (
    ProgressDelegate,
    QueueColumn,
    QueueModel,
    QueueRow,
    QueueState,
    WatchColumn,
    WatchesModel,
)
from lmvp_desktop.tasks import run_async, when_done
from lmvp_desktop.tray import describe_state

log = logging.getLogger(__name__)

# Asks the user for a folder; returns None when they cancel. Tests give one without a dialog.
FolderPicker = Callable[[QWidget], str | None]


def pick_folder_with_dialog(parent: QWidget) -> str | None:
    """The platform's folder dialog."""
    folder = QFileDialog.getExistingDirectory(parent, "Watch a folder for checkpoints")
    return folder or None


class WatchTargetDialog(QDialog):
    """Chooses the project and model a folder's checkpoints become versions of.

    Projects and their models load off the UI thread; both boxes are editable: the daemon
    creates a model that does not exist yet, and OK creates a new project first (a server
    with no project used to leave the box on "Loading projects…" and OK disabled).
    """

    projects_loaded = Signal()
    models_loaded = Signal()

    def __init__(self, client: lmvp.Client, folder: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Watch a folder")
        self.setMinimumWidth(480)
        self.client = client
        self.folder = folder
        self._known: set[str] | None = None  # the projects listed, once loaded
        self.project_combo = QComboBox()
        self.project_combo.setEditable(True)
        self.project_combo.setAccessibleName("Project")
        _line_edit(self.project_combo).setPlaceholderText("Loading projects…")
        self.model_combo = QComboBox()
        self.model_combo.setEditable(True)
        self.model_combo.setAccessibleName("Model")
        _line_edit(self.model_combo).setPlaceholderText("model name")
        self.error_label = QLabel()
        self.error_label.setWordWrap(True)
        self.error_label.hide()
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        form = QFormLayout(self)
        form.addRow("Folder", QLabel(folder))
        form.addRow("Project", self.project_combo)
        form.addRow("Model", self.model_combo)
        form.addRow(self.error_label)
        form.addRow(self.buttons)
        self.project_combo.currentTextChanged.connect(self._project_chosen)
        self.project_combo.editTextChanged.connect(self._update_ok)
        self.model_combo.editTextChanged.connect(self._update_ok)
        self._update_ok()
        # Not `owner=self`: a task outliving its owner fails in the pool thread (tasks.py);
        # the callbacks check `_closed` instead, and keep the dialog alive until they ran.
        self._closed = False
        self.finished.connect(self._close)
        run_async(client.projects, on_done=self._show_projects, on_error=self._show_error)

    @property
    def project(self) -> str:
        return self.project_combo.currentText().strip()

    @property
    def model(self) -> str:
        return self.model_combo.currentText().strip()

    def _close(self, _result: int) -> None:
        self._closed = True

    def _show_projects(self, projects: list[lmvp.Project]) -> None:
        if self._closed:
            return
        # Viewers cannot send versions: list the projects they can write to first.
        writable = [p for p in projects if p.role != "viewer"]
        others = [p for p in projects if p.role == "viewer"]
        self._known = {p.name for p in projects}
        self.project_combo.clear()
        for p in [*writable, *others]:
            self.project_combo.addItem(p.name)
        if not projects:
            _line_edit(self.project_combo).setPlaceholderText("a name for a new project")
            self.project_combo.setEditText("")
            self.model_combo.setEditText(Path(self.folder).name or "")
            self.error_label.setText(
                "You are in no project yet: type a name, and OK creates the project."
            )
            self.error_label.setStyleSheet("")
            self.error_label.show()
        else:
            _line_edit(self.project_combo).setPlaceholderText("a project, or a new name")
        self.projects_loaded.emit()

    def accept(self) -> None:
        """OK: create the project first if it is a new name, then close accepted."""
        project = self.project
        if self._known is None or project in self._known:
            super().accept()
            return
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(False)

        def created(_project: object) -> None:
            if self._closed:
                return
            if self._known is not None:
                self._known.add(project)
            QDialog.accept(self)

        def failed(exc: BaseException) -> None:
            if self._closed:
                return
            self._update_ok()
            self._show_error(exc)

        run_async(self.client.create_project, project, on_done=created, on_error=failed)

    def _project_chosen(self, project: str) -> None:
        self._update_ok()
        if not project or (self._known is not None and project not in self._known):
            return  # a new project, typed: it has no models yet
        run_async(
            self.client.models,
            project,
            on_done=functools.partial(self._show_models, project),
            on_error=self._show_error,
        )

    def _show_models(self, project: str, models: list[lmvp.Model]) -> None:
        if self._closed or project != self.project:
            return  # closed, or the user chose another project meanwhile
        typed = self.model
        self.model_combo.clear()
        for m in models:
            self.model_combo.addItem(m.name)
        self.model_combo.setEditText(typed or (models[0].name if models else ""))
        self.models_loaded.emit()

    def _show_error(self, exc: BaseException) -> None:
        if self._closed:
            return
        self.error_label.setStyleSheet("color: #b00020;")
        self.error_label.setText(explain(exc, self.client.server).sentence)
        self.error_label.setToolTip(getattr(exc, "message", None) or str(exc))
        self.error_label.show()

    def _update_ok(self) -> None:
        ok = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        ok.setEnabled(bool(self.project and self.model))


def _line_edit(combo: QComboBox) -> QLineEdit:
    """The line edit of an editable combo box."""
    edit = combo.lineEdit()
    assert edit is not None
    return edit


class SyncPanel(QWidget):
    """Watched folders, the queue, errors and pause/resume for one embedded daemon.

    Signals: `watches_changed()` after a watch was added, removed, enabled or disabled;
    `message(str)` with a line for the status bar (a watch that could not be added, a
    retry sent); `refreshed()` once the outbox was read again.
    """

    watches_changed = Signal()
    message = Signal(str)
    refreshed = Signal()

    def __init__(
        self,
        daemon: SyncDaemon,
        bridge: DaemonBridge,
        client: lmvp.Client,
        parent: QWidget | None = None,
        *,
        folder_picker: FolderPicker = pick_folder_with_dialog,
    ) -> None:
        super().__init__(parent)
        self.daemon = daemon
        self.bridge = bridge
        self.client = client
        self.folder_picker = folder_picker
        self.target_dialog: WatchTargetDialog | None = None
        self._refreshing = False
        self._refresh_again = False
        # The outbox's reads and writes, one at a time and in the order asked, off the UI thread.
        self.outbox_pool = QThreadPool(self)
        self.outbox_pool.setMaxThreadCount(1)
        self._state = daemon.state

        self.watches_model = WatchesModel(self)
        self.queue_model = QueueModel(self)

        # Pause/resume and the state.
        self.pause_button = QPushButton()
        self.pause_button.clicked.connect(self.toggle_pause)
        self.state_label = QLabel()
        self.state_label.setWordWrap(True)
        top = QHBoxLayout()
        top.addWidget(self.state_label, 1)
        top.addWidget(self.pause_button)

        # Watched folders.
        self.watches_view = QTableView()
        self.watches_view.setModel(self.watches_model)
        self._table_defaults(self.watches_view)
        self.watches_view.horizontalHeader().setSectionResizeMode(
            WatchColumn.folder, QHeaderView.ResizeMode.Stretch
        )
        self.add_button = QPushButton("Add folder…")
        self.add_button.clicked.connect(self.add_watch)
        self.remove_button = QPushButton("Remove")
        self.remove_button.clicked.connect(self.remove_selected_watch)
        watch_buttons = QHBoxLayout()
        watch_buttons.addWidget(self.add_button)
        watch_buttons.addWidget(self.remove_button)
        watch_buttons.addStretch(1)
        watches_box = QGroupBox("Watched folders")
        watches_layout = QVBoxLayout(watches_box)
        watches_layout.addWidget(self.watches_view)
        watches_layout.addLayout(watch_buttons)

        # The queue.
        self.queue_view = QTableView()
        self.queue_view.setModel(self.queue_model)
        self._table_defaults(self.queue_view)
        self.queue_view.setItemDelegateForColumn(QueueColumn.progress, ProgressDelegate(self))
        header = self.queue_view.horizontalHeader()
        header.setSectionResizeMode(QueueColumn.checkpoint, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(QueueColumn.message, QHeaderView.ResizeMode.Stretch)
        header.resizeSection(QueueColumn.progress, 140)
        self.queue_view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.queue_view.customContextMenuRequested.connect(self._queue_menu)
        self.retry_action = QAction("Retry", self)
        self.retry_action.triggered.connect(self.retry_selected)
        self.retry_button = QPushButton("Retry")
        self.retry_button.clicked.connect(self.retry_selected)
        self.retry_all_button = QPushButton("Retry all failed")
        self.retry_all_button.clicked.connect(lambda: self.retry(None))
        queue_buttons = QHBoxLayout()
        queue_buttons.addStretch(1)
        queue_buttons.addWidget(self.retry_button)
        queue_buttons.addWidget(self.retry_all_button)
        queue_box = QGroupBox("Queue")
        queue_layout = QVBoxLayout(queue_box)
        queue_layout.addWidget(self.queue_view)
        queue_layout.addLayout(queue_buttons)

        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(watches_box)
        splitter.addWidget(queue_box)
        splitter.setStretchFactor(0, 1)
        splitter.setStretchFactor(1, 3)
        splitter.setSizes([150, 450])  # most room for the queue
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(splitter, 1)

        self.watches_model.enable_requested.connect(self.set_watch_enabled)
        self.watches_view.selectionModel().selectionChanged.connect(self._update_buttons)
        self.queue_view.selectionModel().selectionChanged.connect(self._update_buttons)
        self.queue_model.dataChanged.connect(self._update_buttons)
        self.queue_model.modelReset.connect(self._update_buttons)
        bridge.sync_event.connect(self._on_sync_event)
        bridge.state_changed.connect(self._on_state_changed)

        self._show_state(daemon.state, daemon.state_message)
        self._update_buttons()
        self.refresh()

    # --- watches -----------------------------------------------------------------------------

    def add_watch(self) -> None:
        """Ask for a folder, then for its project and model; the dialog's OK adds the watch."""
        folder = self.folder_picker(self)
        if not folder:
            return
        dialog = WatchTargetDialog(self.client, folder, self)
        dialog.accepted.connect(lambda: self.add_watch_for(folder, dialog.project, dialog.model))
        if self.target_dialog is not None:
            # Freed once nothing refers to it (a load still running keeps it until it ends).
            self.target_dialog.setParent(None)
        self.target_dialog = dialog
        dialog.open()

    def add_watch_for(self, folder: str | Path, project: str, model: str) -> None:
        """Watch `folder` for checkpoints of `project/model`, off the UI thread: then
        `watches_changed` and `message` say so, or `message` says why the daemon refused."""
        path = Path(folder).expanduser()
        daemon = self.daemon

        def add() -> WatchInfo:
            if not path.is_dir():
                raise DaemonError(f"{path} is not a folder: create it first, or check the path")
            return daemon.add_watch(path, project, model)

        self._change_watches(add, lambda w: f"watching {w.folder} for {w.target}")

    def remove_selected_watch(self) -> None:
        """Stop watching the selected folder (its files stay where they are)."""
        for index in self.watches_view.selectionModel().selectedRows():
            self.remove_watch(self.watches_model.watch_at(index.row()).id)

    def remove_watch(self, watch_id: int) -> None:
        """Stop watching a folder (off the UI thread; `watches_changed` follows)."""
        daemon = self.daemon
        self._change_watches(
            lambda: daemon.remove_watch(watch_id), lambda w: f"stopped watching {w.folder}"
        )

    def set_watch_enabled(self, watch_id: int, enabled: bool) -> None:
        """Enable or disable a watch (a disabled one's checkpoints wait, nothing is lost); off
        the UI thread, `watches_changed` follows."""
        daemon = self.daemon
        self._change_watches(
            lambda: daemon.set_watch_enabled(watch_id, enabled),
            lambda w: f"{'enabled' if w.enabled else 'disabled'} {w.folder}",
        )

    # --- queue -------------------------------------------------------------------------------

    def retry(self, checkpoint_id: int | None) -> None:
        """Send a failed checkpoint again (all failed ones for None). The daemon's loop does it;
        `message` then says how many, and the queue is read again."""
        when_done(
            self.daemon.retry_failed(checkpoint_id),
            on_done=self._retried,
            on_error=self._command_failed,
            owner=self,
        )

    def retry_selected(self) -> None:
        """Retry the failed checkpoints selected in the queue."""
        for row in self._selected_failed():
            if row.checkpoint_id is not None:
                self.retry(row.checkpoint_id)

    def toggle_pause(self) -> None:
        """Pause all syncing, or resume it (the daemon's state event then updates the panel)."""
        if self._state is DaemonState.paused:
            self.daemon.resume()
        else:
            self.daemon.pause()

    def refresh(self) -> None:
        """Reload watches and the queue from the outbox, off the UI thread."""
        if self._refreshing:
            self._refresh_again = True
            return
        self._refreshing = True
        daemon = self.daemon
        mark = self.queue_model.mark()
        run_async(
            lambda: (daemon.read_outbox(), daemon.metric_skips()),
            on_done=functools.partial(self._show_outbox, mark),
            on_error=self._refresh_failed,
            owner=self,
            pool=self.outbox_pool,
        )

    # --- internals ---------------------------------------------------------------------------

    def _show_outbox(
        self,
        mark: int,
        result: tuple[OutboxView, dict[int, dict[str, int]]],
    ) -> None:
        view, skips = result
        watches = view.watches
        self._refreshing = False
        selected = {i.row() for i in self.watches_view.selectionModel().selectedRows()}
        self.watches_model.set_watches(watches)
        self.watches_model.add_metric_skips(skips)
        for row in selected:
            if row < len(watches):
                self.watches_view.selectRow(row)
        self.queue_model.set_watches(watches)
        self.queue_model.load(view.pending, view.failures, mark=mark)
        self._update_buttons()
        self.refreshed.emit()
        if self._refresh_again:
            self._refresh_again = False
            self.refresh()

    def _retried(self, count: int) -> None:
        self.message.emit(
            f"retrying {count} checkpoint{'s' if count != 1 else ''}"
            if count
            else "nothing to retry"
        )
        self.refresh()

    def _command_failed(self, exc: BaseException) -> None:
        log.error("the sync daemon could not do what was asked: %s", exc)
        self.message.emit(getattr(exc, "message", None) or f"the sync daemon failed: {exc}")

    def _refresh_failed(self, exc: BaseException) -> None:
        self._refreshing = False
        log.error("could not read the daemon's outbox: %s", exc)
        self.message.emit(f"could not read the sync queue: {exc}")

    def _change_watches(
        self, change: Callable[[], WatchInfo], describe: Callable[[WatchInfo], str]
    ) -> None:
        """Run `change` (a transaction of the outbox, which tells the daemon) on the outbox's
        thread; then say what it did, or why it was refused."""

        def done(watch: WatchInfo) -> None:
            self.message.emit(describe(watch))
            self.watches_changed.emit()
            self.refresh()

        def refused(exc: BaseException) -> None:
            if not isinstance(exc, DaemonError):
                log.error("could not change the watched folders: %s", exc)
            self.message.emit(getattr(exc, "message", None) or f"could not change it: {exc}")

        run_async(change, on_done=done, on_error=refused, owner=self, pool=self.outbox_pool)

    def _on_sync_event(self, event: SyncEvent) -> None:
        if event.kind is EventKind.metrics_skipped:
            self.watches_model.add_metric_skips({event.watch_id: {event.key: event.skipped}})
            return
        self.queue_model.apply_event(event)
        # Failed rows need their outbox id for Retry; a new checkpoint, its id and state.
        if event.kind in (EventKind.failed, EventKind.queued, EventKind.committed):
            self.refresh()

    def _on_state_changed(self, state: DaemonState, message: str) -> None:
        self._show_state(state, message)

    def _show_state(self, state: DaemonState, message: str) -> None:
        self._state = state
        paused = state is DaemonState.paused
        self.pause_button.setText("Resume syncing" if paused else "Pause syncing")
        # A sentence for people; the daemon's technical message in the tooltip.
        self.state_label.setToolTip(message)
        if state is DaemonState.offline and message:
            sentence = explain(ServerUnavailable(message), self.client.server).sentence
            self.state_label.setText(f"{sentence} Checkpoints wait and are sent when it is back.")
        elif state is DaemonState.error and message:
            self.state_label.setText(f"Sync error: {explain(message).sentence}")
        else:
            self.state_label.setText(describe_state(state, message))

    def _selected_failed(self) -> list[QueueRow]:
        rows: list[QueueRow] = []
        for index in self.queue_view.selectionModel().selectedRows():
            row = self.queue_model.row_at(index.row())
            if row.state is QueueState.failed:
                rows.append(row)
        return rows

    def _update_buttons(self, *_args: object) -> None:
        self.remove_button.setEnabled(self.watches_view.selectionModel().hasSelection())
        failed_selected = bool(self._selected_failed())
        self.retry_button.setEnabled(failed_selected)
        self.retry_action.setEnabled(failed_selected)
        self.retry_all_button.setEnabled(
            any(r.state is QueueState.failed for r in self.queue_model.rows())
        )

    def _queue_menu(self, pos: QPoint) -> None:
        index: QModelIndex = self.queue_view.indexAt(pos)
        if not index.isValid():
            return
        menu = QMenu(self)
        menu.addAction(self.retry_action)
        menu.popup(self.queue_view.viewport().mapToGlobal(pos))

    @staticmethod
    def _table_defaults(view: QTableView) -> None:
        view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        view.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        view.verticalHeader().hide()
        view.setAlternatingRowColors(True)
        view.setWordWrap(False)


__all__ = [
    "FolderPicker",
    "SyncPanel",
    "WatchTargetDialog",
    "pick_folder_with_dialog",
]
