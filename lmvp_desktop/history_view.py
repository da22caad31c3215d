"""`HistoryPane`: browsing a model's history — the project/model tree, the version table with a
filter, the model's retention policy and storage under it (`RetentionPane`, whose preview marks
the table's "Kept by" column), the selected version's details with its actions
(`VersionDetails`), and comparing two selected versions.

The pane only wires widgets to the item models (`ProjectTreeModel`, `VersionTableModel` and its
`VersionFilterProxy`) and to `lmvp.Client` calls run off the UI thread (`run_async`); the main
window composes it and feeds it the server's events (`on_server_event`, and `reconcile` each
time the event stream opens).

The table is laid out to be read at a glance on a 1366x768 screen: narrow columns sized to
their content, so that the step and the key metrics show without scrolling, the message
elided (its tooltip holds all of it); the widths a user sets are remembered
(`desktop-layout.ini` in the LMVP config directory). The label under the table counts its
rows as they change.
"""

from __future__ import annotations

import json
import logging

from PySide6.QtCore import QItemSelection, QModelIndex, QSettings, Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSplitter,
    QTableView,
    QTreeView,
    QVBoxLayout,
    QWidget,
)

import lmvp
from lmvp.credentials import config_dir
from lmvp_desktop.compare import CompareDialog
from lmvp_desktop.project_tree import MODEL_ROLE, PROJECT_ROLE, ProjectTreeModel
from lmvp_desktop.retention_pane import RetentionPane
from lmvp_desktop.tasks import run_async
from lmvp_desktop.version_columns import (
    COL_ALIASES,
    COL_AUTHOR,
    COL_CREATED,
    COL_KEPT,
    COL_MESSAGE,
    COL_NUMBER,
    COL_SIZE,
    COL_STEP,
    column_title,
)
from lmvp_desktop.version_details import VersionDetails
from lmvp_desktop.version_filter import VersionFilterProxy
from lmvp_desktop.version_table import VersionTableModel

log = logging.getLogger(__name__)

LAYOUT_FILE = "desktop-layout.ini"
_WIDTHS_KEY = "version_table/widths"
# The widest text each column is sized for (metric columns: a metric value).
_SAMPLE_TEXT = {
    COL_NUMBER: "99999",
    COL_CREATED: "today 00:00",
    COL_AUTHOR: "username",
    COL_MESSAGE: "model_step_1000.safetens",
    COL_SIZE: "99.9 MiB",
    COL_ALIASES: "latest",
    COL_STEP: "99999",
    COL_KEPT: "best 3 val_loss",
}
_METRIC_SAMPLE = "0.0002999"


def layout_settings() -> QSettings:
    """Where the app remembers how its panes are laid out (column widths)."""
    return QSettings(str(config_dir() / LAYOUT_FILE), QSettings.Format.IniFormat)


class HistoryPane(QWidget):
    """Projects and models (left), the selected model's versions (middle) and the selected
    version's details and actions (right, `details`).

    Signals: `model_selected(project, model)`, `version_selected(lmvp.Version | None)`.
    """

    model_selected = Signal(str, str)
    version_selected = Signal(object)  # lmvp.Version or None
    get_started_requested = Signal()

    def __init__(self, client: lmvp.Client, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._client = client
        self.compare_dialog: CompareDialog | None = None

        self.tree_model = ProjectTreeModel(client, self)
        self.versions = VersionTableModel(client, self)
        self.proxy = VersionFilterProxy(self)
        self.proxy.setSourceModel(self.versions)

        self.tree = QTreeView()
        self.tree.setModel(self.tree_model)
        self.tree.setHeaderHidden(True)
        self.tree.setAccessibleName("Projects and models")
        self.tree.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.tree.selectionModel().currentChanged.connect(self._on_tree_current)
        self.tree_model.loaded.connect(self._on_tree_loaded)

        self.filter_edit = QLineEdit()
        self.filter_edit.setPlaceholderText("Filter by message, author or alias")
        self.filter_edit.setClearButtonEnabled(True)
        self.filter_edit.setAccessibleName("Filter versions")
        self.filter_edit.textChanged.connect(self.proxy.set_text)
        self.table = self._make_table()
        self.table_status = QLabel()
        self.versions.loading_changed.connect(self._update_table_status)
        self.versions.rows_loaded.connect(lambda _rows: self._update_table_status())
        # New versions go on top and deleted ones leave: the count follows every row.
        self.versions.rowsInserted.connect(self._update_table_status)
        self.versions.rowsRemoved.connect(self._update_table_status)
        self.versions.modelReset.connect(self._update_table_status)
        self.versions.dataChanged.connect(self._on_versions_changed)
        self.retention = RetentionPane(client)
        self.retention.marks_changed.connect(self._show_retention_marks)
        self.retention.set_metric_keys_provider(lambda: self.versions.metric_keys)

        self.details = VersionDetails(client)
        self.details.alias_set.connect(self._on_alias_set)
        self.details.alias_removed.connect(lambda _alias: self.versions.refresh())
        self.details.version_deleted.connect(self.versions.remove_version)
        self.compare_button = QPushButton("Compare")
        self.compare_button.setAccessibleName("Compare the two selected versions")
        self.compare_button.clicked.connect(self.compare_selected)
        self.details.add_button(self.compare_button, enabled=self._two_selected)
        self.tree_model.failed.connect(self.details.show_error)
        self.versions.failed.connect(self.details.show_error)

        # A server with no project: say what to do, with the button that does it.
        self.empty_hint = QWidget()
        hint_layout = QVBoxLayout(self.empty_hint)
        self.empty_label = QLabel(
            "You are in no project on this server yet. Create one with a model and the folder "
            "your training job writes checkpoints into: each checkpoint becomes a version."
        )
        self.empty_label.setWordWrap(True)
        self.get_started_button = QPushButton("Get started…")
        self.get_started_button.clicked.connect(self.get_started_requested)
        hint_layout.addWidget(self.empty_label)
        hint_layout.addWidget(self.get_started_button, 0, Qt.AlignmentFlag.AlignLeft)
        self.empty_hint.hide()

        middle = QWidget()
        middle_layout = QVBoxLayout(middle)
        middle_layout.setContentsMargins(0, 0, 0, 0)
        middle_layout.addWidget(self.empty_hint)
        middle_layout.addWidget(self.filter_edit)
        middle_layout.addWidget(self.table)
        middle_layout.addWidget(self.table_status)
        middle_layout.addWidget(self.retention)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self.tree)
        splitter.addWidget(middle)
        splitter.addWidget(self.details)
        splitter.setStretchFactor(0, 1)
        splitter.setStretchFactor(1, 5)
        splitter.setStretchFactor(2, 2)
        # On a 1366-pixel screen the table gets ~2/3: enough for the step and key metrics.
        splitter.setSizes([140, 840, 300])
        self.splitter = splitter
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(splitter)

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

    def refresh(self) -> None:
        """Read the projects and models again, and what changed in the model shown."""
        self.tree_model.refresh()
        self.versions.refresh()
        self.retention.refresh()

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
        shown = event.project == self.project and event.model == self.model
        if (event.kind == "project.deleted" and event.project == self.project) or (
            event.kind == "model.deleted" and shown
        ):
            # Not the neighbour the tree would select when the row goes: nothing is shown.
            self.tree.selectionModel().clearCurrentIndex()
            self.versions.set_model(None, None)
            self.retention.show_model(None, None)
            self.details.show_version(None)
            return
        self.retention.on_server_event(event)
        if not shown:
            return
        if event.kind == "version.deleted" and event.version is not None:
            self.versions.remove_version(event.version)
        elif event.kind.startswith(("version.", "alias.")):
            self.versions.refresh()

    def reconcile(self) -> None:
        """Bring the tree and the table up to date with the server (the event stream has just
        opened: whatever changed before it did came as no event)."""
        self.tree_model.refresh()
        self.versions.refresh()
        self.retention.refresh()

    def compare_selected(self) -> CompareDialog | None:
        """Open a comparison of the two selected versions (older first); None unless exactly two
        are selected."""
        selected = self.selected_versions()
        if len(selected) != 2:
            return None
        a, b = sorted(selected, key=lambda v: v.number)
        if self.compare_dialog is not None:
            self.compare_dialog.close()
        self.compare_dialog = CompareDialog(a, b, self, client=self._client)
        self.compare_dialog.show()
        return self.compare_dialog

    # --- building ----------------------------------------------------------------------------

    def _make_table(self) -> QTableView:
        table = QTableView()
        table.setModel(self.proxy)
        table.setColumnHidden(COL_KEPT, True)  # until a model with a policy is shown
        table.setSortingEnabled(True)
        table.sortByColumn(COL_NUMBER, Qt.SortOrder.DescendingOrder)
        table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        table.setAlternatingRowColors(True)
        table.setWordWrap(False)
        table.setTextElideMode(Qt.TextElideMode.ElideRight)
        table.setAccessibleName("Versions")
        table.verticalHeader().setVisible(False)
        # Fixed row heights and no resize-to-contents: layout cost stays flat at 10,000 rows.
        table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        table.verticalHeader().setDefaultSectionSize(table.fontMetrics().height() + 6)
        header = table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setMinimumSectionSize(36)
        self._saved_widths = self._load_widths()
        self._sizing = False
        self._size_columns(table, 0, self.versions.columnCount() - 1)
        self.versions.columnsInserted.connect(
            lambda _parent, first, last: self._size_columns(table, first, last)
        )
        header.sectionResized.connect(self._remember_width)
        table.selectionModel().selectionChanged.connect(self._on_selection_changed)
        return table

    def _size_columns(self, table: QTableView, first: int, last: int) -> None:
        """Give columns `first`..`last` the width the user left them at, else one that fits
        their usual content (not Qt's 100 pixels each, which pushed the metrics off-screen)."""
        metrics = table.fontMetrics()
        pad = 2 * table.style().pixelMetric(table.style().PixelMetric.PM_HeaderMargin) + 8
        self._sizing = True
        try:
            for column in range(first, last + 1):
                title = column_title(column, self.versions.metric_keys) or ""
                saved = self._saved_widths.get(title)
                if saved:
                    table.horizontalHeader().resizeSection(column, saved)
                    continue
                sample = _SAMPLE_TEXT.get(column, _METRIC_SAMPLE)
                # A title wider than its values also leaves room for the sort arrow.
                width = max(
                    metrics.horizontalAdvance(sample) + pad,
                    metrics.horizontalAdvance(title) + pad + 14,
                )
                table.horizontalHeader().resizeSection(column, width)
        finally:
            self._sizing = False

    def _remember_width(self, column: int, _old: int, new: int) -> None:
        if self._sizing:
            return
        title = column_title(column, self.versions.metric_keys)
        if not title or new <= 0:
            return
        self._saved_widths[title] = new
        settings = layout_settings()
        settings.setValue(_WIDTHS_KEY, json.dumps(self._saved_widths, sort_keys=True))

    @staticmethod
    def _load_widths() -> dict[str, int]:
        raw = layout_settings().value(_WIDTHS_KEY, "")
        try:
            widths = json.loads(raw) if isinstance(raw, str) and raw else {}
        except ValueError:
            return {}
        if not isinstance(widths, dict):
            return {}
        return {str(k): int(v) for k, v in widths.items() if isinstance(v, int) and v > 0}

    # --- reacting ------------------------------------------------------------------------------

    def _on_tree_loaded(self) -> None:
        self.empty_hint.setVisible(self.tree_model.rowCount() == 0)
        if self.project and self.model:  # keep the model shown selected in the rebuilt tree
            index = self.tree_model.index_of(self.project, self.model)
            if index.isValid():
                self.tree.selectionModel().blockSignals(True)
                self.tree.setCurrentIndex(index)
                self.tree.selectionModel().blockSignals(False)
        # The user's role may have changed (member events refresh the tree).
        if self.project is not None and (role := self.tree_model.role_of(self.project)):
            self._set_role(self.project, role)
        self.tree.expandAll()

    def _on_tree_current(self, current: QModelIndex, _previous: QModelIndex) -> None:
        project, model = current.data(PROJECT_ROLE), current.data(MODEL_ROLE)
        if isinstance(project, str) and isinstance(model, str):
            self._show_model(project, model)

    def _show_model(self, project: str, model: str) -> None:
        if (project, model) == (self.project, self.model):
            return
        role = self.tree_model.role_of(project)
        self.details.set_role(role)
        self.retention.set_role(role)
        self.versions.set_model(project, model)
        # "Kept by" shows only with a policy in force: without, the metrics keep its room.
        self.table.setColumnHidden(COL_KEPT, True)
        self.retention.show_model(project, model)
        self.details.show_version(None)
        self.details.show_message("")
        if role is None:  # the tree is not loaded yet: ask for the role itself
            run_async(
                self._client.project,
                project,
                on_done=lambda p: self._set_role(project, p.role),
                on_error=lambda exc: log.info("no role for %s: %s", project, exc),
                owner=self,
            )
        self.model_selected.emit(project, model)

    def _show_retention_marks(
        self, project: str, model: str, kept: dict[int, tuple[str, ...]] | None, removed: list[int]
    ) -> None:
        if (project, model) != (self.project, self.model):
            return
        self.versions.set_retention_marks(project, model, kept, removed)
        self.table.setColumnHidden(COL_KEPT, kept is None)

    def _set_role(self, project: str, role: str) -> None:
        if project == self.project:
            self.details.set_role(role)
            self.retention.set_role(role)

    def _select_row(self, number: int, source_row: int | None) -> None:
        if source_row is None:
            self.details.show_message(f"{self.project}/{self.model} has no version {number}")
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
        if version != self.details.version:
            self.details.show_version(version)
            self.version_selected.emit(version)
        self.details.update_actions()

    def _on_versions_changed(self, top_left: QModelIndex, bottom_right: QModelIndex) -> None:
        # An alias moved: the versions are new objects now; show the current one's anew.
        current = self.details.version
        if current is None:
            return
        row = self.versions.row_of(current.number)
        if row is not None and top_left.row() <= row <= bottom_right.row():
            now = self.versions.version_at(row)
            if now != current:  # not just the clock ageing "3 min ago"
                self.details.show_version(now)

    def _on_alias_set(self, _alias: str, _number: int) -> None:
        self.versions.refresh()  # the table shows where the alias points now

    def _two_selected(self) -> bool:
        return len(self.table.selectionModel().selectedRows()) == 2

    def _update_table_status(self, *_: object) -> None:
        rows = self.versions.rowCount()
        versions = "1 version" if rows == 1 else f"{rows} versions"
        if self.versions.model is None:
            text = ""
        elif self.versions.loading:
            text = f"{versions} loaded, loading more …"
        elif self.versions.all_loaded():
            text = versions
        else:
            text = f"{rows} newest versions loaded; scroll for more"
        self.table_status.setText(text)


__all__ = ["HistoryPane"]
