"""`HistoryPane`: browsing a model's history — the project/model tree, the version table with a
filter, and the selected version's details with its actions (download, copy the download line,
set an alias, compare two versions).

The pane only wires widgets to the item models of `history_model` and to `lmvp.Client` calls
run off the UI thread (`run_async`); the main window composes it and feeds it the server's
events (`on_server_event`).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QItemSelection, QModelIndex, QObject, Qt, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTableView,
    QTableWidget,
    QTableWidgetItem,
    QTreeView,
    QVBoxLayout,
    QWidget,
)

import lmvp
from lmvp.history import human_size
from lmvp_desktop.compare import CompareDialog
from lmvp_desktop.history_model import (
    COL_MESSAGE,
    COL_NUMBER,
    MODEL_ROLE,
    PROJECT_ROLE,
    ProjectTreeModel,
    VersionFilterProxy,
    VersionTableModel,
    version_step,
)
from lmvp_desktop.tasks import run_async

log = logging.getLogger(__name__)

# Roles that may move aliases.
ALIAS_ROLES = frozenset({"maintainer", "owner"})
# The progress bar counts in thousandths: QProgressBar's int would overflow at 2 GiB of bytes.
_PROGRESS_STEPS = 1000


class HistoryPane(QWidget):
    """Projects and models (left), the selected model's versions (middle) and the selected
    version's details and actions (right).

    Signals: `model_selected(project, model)`, `version_selected(lmvp.Version | None)`,
    `download_finished(Path)`, `download_failed(message)`, `alias_set(alias, number)`.
    """

    model_selected = Signal(str, str)
    version_selected = Signal(object)  # lmvp.Version or None
    download_finished = Signal(object)  # pathlib.Path
    download_failed = Signal(str)
    alias_set = Signal(str, int)

    def __init__(self, client: lmvp.Client, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._client = client
        self._role: str | None = None
        self._current: lmvp.Version | None = None
        self._downloading = False
        self._download_dir_provider: Callable[[], str | Path | None] = self._ask_download_dir
        self.compare_dialog: CompareDialog | None = None

        self.tree_model = ProjectTreeModel(client, self)
        self.versions = VersionTableModel(client, self)
        self.proxy = VersionFilterProxy(self)
        self.proxy.setSourceModel(self.versions)

        self.tree = QTreeView()
        self.tree.setModel(self.tree_model)
        self.tree.setHeaderHidden(True)
        self.tree.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.tree.selectionModel().currentChanged.connect(self._on_tree_current)
        self.tree_model.loaded.connect(self._on_tree_loaded)
        self.tree_model.failed.connect(self._show_error)

        self.filter_edit = QLineEdit()
        self.filter_edit.setPlaceholderText("Filter by message, author or alias")
        self.filter_edit.setClearButtonEnabled(True)
        self.filter_edit.textChanged.connect(self.proxy.set_text)
        self.table = self._make_table()
        self.table_status = QLabel()
        self.versions.loading_changed.connect(self._update_table_status)
        self.versions.rows_loaded.connect(lambda _rows: self._update_table_status())
        self.versions.failed.connect(self._show_error)
        self.versions.dataChanged.connect(self._on_versions_changed)

        middle = QWidget()
        middle_layout = QVBoxLayout(middle)
        middle_layout.setContentsMargins(0, 0, 0, 0)
        middle_layout.addWidget(self.filter_edit)
        middle_layout.addWidget(self.table)
        middle_layout.addWidget(self.table_status)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self.tree)
        splitter.addWidget(middle)
        splitter.addWidget(self._make_details())
        splitter.setStretchFactor(0, 1)
        splitter.setStretchFactor(1, 4)
        splitter.setStretchFactor(2, 2)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(splitter)

        self._show_version(None)
        self.tree_model.refresh()

    # --- public API ------------------------------------------------------------------------

    @property
    def project(self) -> str | None:
        """The project of the model shown."""
        return self.versions.project

    @property
    def model(self) -> str | None:
        """The model shown."""
        return self.versions.model

    @property
    def current_version(self) -> lmvp.Version | None:
        """The version whose details are shown."""
        return self._current

    def refresh(self) -> None:
        """Read the projects and models again, and what changed in the model shown."""
        self.tree_model.refresh()
        self.versions.refresh()

    def select_model(self, project: str, model: str) -> None:
        """Show `project/model`: its versions load in the background (first page first)."""
        index = self.tree_model.index_of(project, model)
        if index.isValid() and self.tree.currentIndex() != index:
            self.tree.setCurrentIndex(index)  # comes back through _on_tree_current
            return
        self._show_model(project, model)

    def select_version(self, number: int) -> None:
        """Select version `number` of the model shown and scroll to it, fetching pages until it
        is loaded. Clears the filter if it hides the version."""
        self.versions.load_until(number, lambda row: self._select_row(number, row))

    def selected_versions(self) -> list[lmvp.Version]:
        """The versions selected in the table, in table order."""
        rows = sorted(index.row() for index in self.table.selectionModel().selectedRows())
        return [self.proxy.version_at(row) for row in rows]

    def on_server_event(self, event: lmvp.Event) -> None:
        """React to an event of the server's stream: a new, deleted or re-aliased version of the
        model shown updates the table; new or removed models and projects update the tree."""
        if event.kind.startswith(("project.", "model.", "member.")):
            self.tree_model.refresh()
        if event.project != self.project or event.model != self.model:
            return
        if event.kind == "version.deleted" and event.version is not None:
            self.versions.remove_version(event.version)
        elif event.kind.startswith(("version.", "alias.")):
            self.versions.refresh()
        elif event.kind == "model.deleted":
            self.versions.set_model(None, None)

    def set_download_dir_provider(self, provider: Callable[[], str | Path | None]) -> None:
        """Use `provider()` instead of a folder dialog to choose where downloads go (None
        cancels)."""
        self._download_dir_provider = provider

    def download_selected(self) -> None:
        """Download the version shown into a folder from the download-dir provider, in the
        background, with the progress bar following it."""
        version = self._current
        if version is None:
            return
        folder = self._download_dir_provider()
        if not folder:
            return
        self.progress.setRange(0, _PROGRESS_STEPS)
        self.progress.setValue(0)
        self.progress.setFormat("%p%")
        self.progress.setVisible(True)
        self._downloading = True
        self._update_actions()
        self._set_message(f"Downloading {version.ref} to {folder} …")
        tracker = DownloadProgress(self)
        tracker.fraction.connect(lambda f: self.progress.setValue(round(f * _PROGRESS_STEPS)))
        run_async(
            self._client.download,
            version.ref,
            local_dir=Path(folder),
            progress=tracker,
            on_done=lambda path: self._download_done(version, Path(path)),
            on_error=self._download_error,
            owner=self,
        )

    def copy_download_line(self) -> str | None:
        """Put `lmvp.download("project/model:N")` for the version shown on the clipboard; returns
        the line."""
        if self._current is None:
            return None
        line = f'lmvp.download("{self._current.ref}")'
        QGuiApplication.clipboard().setText(line)
        self._set_message(f"Copied: {line}")
        return line

    def set_alias(self, alias: str) -> None:
        """Point `alias` at the version shown (in the background). The server's refusal (a
        viewer's role, a bad name) is shown in the pane."""
        version = self._current
        alias = alias.strip()
        if version is None or not alias:
            return
        model_ref = f"{version.project}/{version.model}"
        self._set_message(f"Setting {alias} → v{version.number} …")
        run_async(
            self._client.set_alias,
            model_ref,
            alias,
            version.number,
            on_done=lambda result: self._alias_done(result),
            on_error=self._show_error,
            owner=self,
        )

    def compare_selected(self) -> CompareDialog | None:
        """Open a comparison of the two selected versions (older first); None unless exactly two
        are selected."""
        selected = self.selected_versions()
        if len(selected) != 2:
            return None
        a, b = sorted(selected, key=lambda v: v.number)
        if self.compare_dialog is not None:
            self.compare_dialog.close()
        self.compare_dialog = CompareDialog(a, b, self)
        self.compare_dialog.show()
        return self.compare_dialog

    # --- building ----------------------------------------------------------------------------

    def _make_table(self) -> QTableView:
        table = QTableView()
        table.setModel(self.proxy)
        table.setSortingEnabled(True)
        table.sortByColumn(COL_NUMBER, Qt.SortOrder.DescendingOrder)
        table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        table.setAlternatingRowColors(True)
        table.setWordWrap(False)
        table.verticalHeader().setVisible(False)
        # Fixed row heights and no resize-to-contents: layout cost stays flat at 10,000 rows.
        table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        table.verticalHeader().setDefaultSectionSize(table.fontMetrics().height() + 6)
        header = table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setDefaultSectionSize(90)
        header.resizeSection(COL_MESSAGE, 260)
        table.selectionModel().selectionChanged.connect(self._on_selection_changed)
        return table

    def _make_details(self) -> QWidget:
        self.title_label = QLabel()
        self.title_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.fields: dict[str, QLabel] = {}
        form = QFormLayout()
        for name in (
            "Created",
            "Author",
            "Message",
            "Size",
            "Parent",
            "Aliases",
            "Source host",
            "Source folder",
            "Run",
            "Step",
        ):
            label = QLabel()
            label.setWordWrap(True)
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            self.fields[name] = label
            form.addRow(f"{name}:", label)

        self.files_table = QTableWidget(0, 3)
        self.files_table.setHorizontalHeaderLabels(["File", "Size", "sha256"])
        self.files_table.verticalHeader().setVisible(False)
        self.files_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.files_table.horizontalHeader().setStretchLastSection(True)
        self.metadata_view = QPlainTextEdit()
        self.metadata_view.setReadOnly(True)

        self.download_button = QPushButton("Download…")
        self.download_button.clicked.connect(self.download_selected)
        self.copy_button = QPushButton("Copy download line")
        self.copy_button.clicked.connect(self.copy_download_line)
        self.alias_button = QPushButton("Set alias…")
        self.alias_button.clicked.connect(self._ask_alias)
        self.compare_button = QPushButton("Compare")
        self.compare_button.clicked.connect(self.compare_selected)
        buttons = QHBoxLayout()
        for button in (
            self.download_button,
            self.copy_button,
            self.alias_button,
            self.compare_button,
        ):
            buttons.addWidget(button)

        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.message_label = QLabel()
        self.message_label.setWordWrap(True)
        self.message_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        details = QWidget()
        layout = QVBoxLayout(details)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.title_label)
        layout.addLayout(form)
        layout.addWidget(QLabel("Files:"))
        layout.addWidget(self.files_table, 2)
        layout.addWidget(QLabel("Metadata and metrics:"))
        layout.addWidget(self.metadata_view, 2)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.message_label)
        return details

    # --- reacting ------------------------------------------------------------------------------

    def _on_tree_loaded(self) -> None:
        if self.project and self.model:  # keep the model shown selected in the rebuilt tree
            index = self.tree_model.index_of(self.project, self.model)
            if index.isValid():
                self.tree.selectionModel().blockSignals(True)
                self.tree.setCurrentIndex(index)
                self.tree.selectionModel().blockSignals(False)
        self.tree.expandAll()

    def _on_tree_current(self, current: QModelIndex, _previous: QModelIndex) -> None:
        project, model = current.data(PROJECT_ROLE), current.data(MODEL_ROLE)
        if isinstance(project, str) and isinstance(model, str):
            self._show_model(project, model)

    def _show_model(self, project: str, model: str) -> None:
        if (project, model) == (self.project, self.model):
            return
        self._role = self.tree_model.role_of(project)
        self.versions.set_model(project, model)
        self._show_version(None)
        self._set_message("")
        if self._role is None:  # the tree is not loaded yet: ask for the role itself
            run_async(
                self._client.project,
                project,
                on_done=lambda p: self._set_role(project, p.role),
                on_error=lambda exc: log.info("no role for %s: %s", project, exc),
                owner=self,
            )
        self.model_selected.emit(project, model)

    def _set_role(self, project: str, role: str) -> None:
        if project == self.project:
            self._role = role
            self._update_actions()

    def _select_row(self, number: int, source_row: int | None) -> None:
        if source_row is None:
            self._set_message(f"{self.project}/{self.model} has no version {number}")
            return
        index = self.proxy.mapFromSource(self.versions.index(source_row, 0))
        if not index.isValid():  # hidden by the filter
            self.filter_edit.clear()
            index = self.proxy.mapFromSource(self.versions.index(source_row, 0))
        self.table.selectRow(index.row())
        self.table.scrollTo(index, QAbstractItemView.ScrollHint.PositionAtCenter)

    def _on_selection_changed(self, _selected: QItemSelection, _deselected: QItemSelection) -> None:
        rows = self.table.selectionModel().selectedRows()
        current = self.table.currentIndex()
        version: lmvp.Version | None = None
        if rows:
            # The details follow the row last clicked when it is selected, else the first one.
            row = (
                current.row()
                if current.isValid() and any(r.row() == current.row() for r in rows)
                else rows[0].row()
            )
            version = self.proxy.version_at(row)
        if version != self._current:
            self._show_version(version)
            self.version_selected.emit(version)
        self._update_actions()

    def _on_versions_changed(self, top_left: QModelIndex, bottom_right: QModelIndex) -> None:
        # An alias moved: the versions are new objects now; show the current one's anew.
        if self._current is None:
            return
        row = self.versions.row_of(self._current.number)
        if row is not None and top_left.row() <= row <= bottom_right.row():
            self._show_version(self.versions.version_at(row))

    def _show_version(self, v: lmvp.Version | None) -> None:
        self._current = v
        if v is None:
            self.title_label.setText("<i>No version selected</i>")
            for label in self.fields.values():
                label.clear()
            self.files_table.setRowCount(0)
            self.metadata_view.clear()
            self._update_actions()
            return
        self.title_label.setText(f"<b>{v.project}/{v.model}</b> version <b>{v.number}</b>")
        step = version_step(v)
        values = {
            "Created": v.created_at.astimezone().strftime("%Y-%m-%d %H:%M:%S"),
            "Author": v.author or "—",
            "Message": v.message or "—",
            "Size": f"{human_size(v.size)} in {len(v.files)} file(s)",
            "Parent": f"v{v.parent}" if v.parent is not None else "— (first of its line)",
            "Aliases": ", ".join(v.aliases) or "—",
            "Source host": v.source_host or "—",
            "Source folder": v.source_path or "—",
            "Run": str(v.run) if v.run is not None else "—",
            "Step": str(step) if step is not None else "—",
        }
        for name, text in values.items():
            self.fields[name].setText(text)
        self.files_table.setRowCount(len(v.files))
        for row, entry in enumerate(v.files):
            size = QTableWidgetItem(human_size(entry.size))
            size.setToolTip(f"{entry.size:,} bytes")
            size.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            digest = QTableWidgetItem(entry.sha256[:16] + "…")
            digest.setToolTip(entry.sha256)
            self.files_table.setItem(row, 0, QTableWidgetItem(entry.path))
            self.files_table.setItem(row, 1, size)
            self.files_table.setItem(row, 2, digest)
        self.files_table.resizeColumnToContents(0)
        self.metadata_view.setPlainText(
            json.dumps(
                {"metadata": v.metadata, "metrics": v.metrics},
                indent=2,
                sort_keys=True,
                default=str,
            )
        )
        self._update_actions()

    def _update_actions(self) -> None:
        one = self._current is not None
        self.download_button.setEnabled(one and not self._downloading)
        self.copy_button.setEnabled(one)
        self.alias_button.setEnabled(one and self._role in ALIAS_ROLES)
        self.alias_button.setToolTip(
            "" if self._role in ALIAS_ROLES else "Maintainers and owners set aliases"
        )
        self.compare_button.setEnabled(len(self.table.selectionModel().selectedRows()) == 2)

    def _update_table_status(self) -> None:
        rows = self.versions.rowCount()
        if self.versions.model is None:
            text = ""
        elif self.versions.loading:
            text = f"{rows} versions loaded, loading more …"
        elif self.versions.all_loaded():
            text = f"{rows} versions"
        else:
            text = f"{rows} newest versions loaded; scroll for more"
        self.table_status.setText(text)

    def _ask_alias(self) -> None:
        if self._current is None:
            return
        dialog = QInputDialog(self)
        dialog.setWindowTitle("Set alias")
        dialog.setLabelText(f"Alias to point at version {self._current.number}:")
        dialog.setTextValue(self._current.aliases[0] if self._current.aliases else "")
        dialog.textValueSelected.connect(self.set_alias)
        dialog.finished.connect(dialog.deleteLater)
        dialog.open()  # not modal for the app: the UI keeps running

    def _alias_done(self, alias: lmvp.Alias) -> None:
        self._set_message(f"{alias.name} → v{alias.version}")
        self.versions.refresh()
        self.alias_set.emit(alias.name, alias.version)

    def _ask_download_dir(self) -> str | None:
        folder = QFileDialog.getExistingDirectory(self, "Download to folder")
        return folder or None

    def _download_done(self, version: lmvp.Version, path: Path) -> None:
        self.progress.setValue(_PROGRESS_STEPS)
        self.progress.setFormat("%p% — done")
        self._set_message(f"Downloaded {version.ref} to {path}")
        self._downloading = False
        self._update_actions()
        self.download_finished.emit(path)

    def _download_error(self, exc: BaseException) -> None:
        self.progress.setVisible(False)
        self._downloading = False
        self._update_actions()
        self._show_error(exc)
        self.download_failed.emit(str(exc))

    def _show_error(self, error: BaseException | str) -> None:
        message = error.message if isinstance(error, lmvp.LMVPError) else str(error)
        self.message_label.setStyleSheet("color: #c62828;")
        self.message_label.setText(message)

    def _set_message(self, text: str) -> None:
        self.message_label.setStyleSheet("")
        self.message_label.setText(text)


class DownloadProgress(QObject):
    """The `progress` callable of `Client.download`: called with byte counts on the download's
    thread, it emits `fraction(float)` (0..1), which Qt delivers on the UI thread."""

    fraction = Signal(float)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._lock = threading.Lock()
        self._total = 0
        self._done = 0
        self._reported = -1.0

    def set_total(self, total: int) -> None:
        """The bytes the download will fetch (what the cache lacks)."""
        with self._lock:
            self._total = total

    def __call__(self, n: int) -> None:
        with self._lock:
            self._done += n
            fraction = min(1.0, self._done / self._total) if self._total else 1.0
            # At most one signal per thousandth: a big download makes thousands of calls.
            if fraction - self._reported < 1 / _PROGRESS_STEPS and fraction < 1.0:
                return
            self._reported = fraction
        self.fraction.emit(fraction)


__all__ = ["DownloadProgress", "HistoryPane"]
