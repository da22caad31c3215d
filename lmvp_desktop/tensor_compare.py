"""The per-tensor side of comparing two versions (issue 17): the "Tensors" tab of the compare
dialog.

`TensorPane.load(client, a, b)` asks the server for `client.compare_tensors` in the background
(the UI thread never waits on the network): "Comparing tensors…" shows meanwhile, then a
summary line ("12 changed, 3 reshaped, 1 added, 0 removed, 180 unchanged") over a table of
every tensor of the safetensors files of either version, or the server's error in words.

`TensorTableModel` holds the rows: tensor, change, dtype and shape in `a` → `b`, and for a
changed tensor the relative change ‖a-b‖/‖a‖ as a percentage at 3 significant digits
("0.412 %"); a File column shows when there are several files. Rows start in the order
"changed" (largest change first), reshaped, added, removed, unchanged, and within one change
grouped by file; every column sorts (rows without a relative change go last in either
order). Each cell carries a sentence for screen readers and its tooltip ("encoder.weight:
changed by 0.412 %, F32 [768, 768]").
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLabel,
    QTableView,
    QVBoxLayout,
    QWidget,
)

import lmvp
from lmvp_desktop.errors import ErrorBox, explain
from lmvp_desktop.tasks import run_async

log = logging.getLogger(__name__)

_Index = QModelIndex | QPersistentModelIndex

COL_FILE, COL_TENSOR, COL_CHANGE, COL_TYPE, COL_RELATIVE = range(5)
# The order changes come in (and sort in, on the Change column).
CHANGES = ("changed", "reshaped", "added", "removed", "unchanged")
_RANK = {change: rank for rank, change in enumerate(CHANGES)}
# Rows that differ are shown on this background (as differences are on the other tabs).
_DIFFERENT = QColor(255, 200, 80, 110)


def dtype_shape(dtype: str | None, shape: Sequence[int] | None) -> str:
    """A dtype and shape as "F32 [768, 768]"; "" when the version lacks the tensor."""
    if dtype is None and shape is None:
        return ""
    dims = "" if shape is None else "[" + ", ".join(str(d) for d in shape) + "]"
    return f"{dtype or '?'} {dims}".strip()


def file_label(f: lmvp.FileTensors) -> str:
    """A file as both versions name it: "model.safetensors", or "a.safetensors → b.safetensors"
    where the server matched two names by role."""
    if f.a_path and f.b_path and f.a_path != f.b_path:
        return f"{f.a_path} → {f.b_path}"
    return f.b_path or f.a_path or ""


def summary(comparison: lmvp.TensorComparison) -> str:
    """The line "12 changed, 3 reshaped, 1 added, 0 removed, 180 unchanged", and the files that
    have nothing to compare per tensor."""
    counts = Counter(t.change for f in comparison.files for t in f.tensors)
    if comparison.files:
        text = ", ".join(f"{counts.get(change, 0)} {change}" for change in CHANGES)
        if len(comparison.files) > 1:
            text += f" in {len(comparison.files)} files"
    else:
        text = "Neither version has a safetensors file: there are no tensors to compare"
    if comparison.skipped:
        others = ", ".join(comparison.skipped)
        text += f". Not compared per tensor (not safetensors): {others}"
    return text


@dataclass(frozen=True)
class TensorRow:
    """One tensor of one file, with the place it came in (file, then position)."""

    file_index: int
    file: str
    position: int
    tensor: lmvp.TensorChange


class TensorTableModel(QAbstractTableModel):
    """The tensors of a `TensorComparison` as table rows; see the module docstring."""

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self.rows: list[TensorRow] = []
        self.file_count = 0
        self._a = self._b = 0
        self._sort_column, self._sort_order = COL_CHANGE, Qt.SortOrder.AscendingOrder

    def set_comparison(self, comparison: lmvp.TensorComparison) -> None:
        """Show `comparison`'s tensors (in the current sort order)."""
        self.beginResetModel()
        self._a, self._b = comparison.a, comparison.b
        self.file_count = len(comparison.files)
        rows = [
            TensorRow(index, file_label(f), position, tensor)
            for index, f in enumerate(comparison.files)
            for position, tensor in enumerate(f.tensors)
        ]
        self.rows = self._sorted(rows, self._sort_column, self._sort_order)
        self.endResetModel()

    def sentence(self, row: TensorRow) -> str:
        """What a screen reader says for the row (and its tooltip)."""
        t = row.tensor
        a_type = dtype_shape(t.a_dtype, t.a_shape)
        b_type = dtype_shape(t.b_dtype, t.b_shape)
        if t.change == "changed" and t.relative_change is not None:
            text = f"{t.name}: changed by {t.percent}, {b_type}"
            if math.isinf(t.relative_change):
                text += f" (all zeros in v{self._a})"
        elif t.change == "reshaped":
            text = f"{t.name}: reshaped from {a_type} in v{self._a} to {b_type} in v{self._b}"
        elif t.change == "added":
            text = f"{t.name}: added in v{self._b}, {b_type}"
        elif t.change == "removed":
            text = f"{t.name}: removed in v{self._b}, was {a_type}"
        else:
            text = f"{t.name}: {t.change}, {b_type or a_type}"
        if self.file_count > 1:
            text += f", in {row.file}"
        return text

    # --- QAbstractTableModel -----------------------------------------------------------------

    def rowCount(self, parent: _Index = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent: _Index = QModelIndex()) -> int:
        return 0 if parent.isValid() else 5

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if orientation != Qt.Orientation.Horizontal or role != Qt.ItemDataRole.DisplayRole:
            return None
        return (
            "File",
            "Tensor",
            "Change",
            f"dtype, shape (v{self._a} → v{self._b})",
            "Relative change",
        )[section]

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or index.row() >= len(self.rows):
            return None
        row = self.rows[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return self.cell_text(row, index.column())
        if role in (Qt.ItemDataRole.ToolTipRole, Qt.ItemDataRole.AccessibleDescriptionRole):
            return self.sentence(row)
        if role == Qt.ItemDataRole.BackgroundRole and row.tensor.change != "unchanged":
            return QBrush(_DIFFERENT)
        if role == Qt.ItemDataRole.TextAlignmentRole and index.column() == COL_RELATIVE:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        """Order the rows by `column` (ties keep the order the server gave)."""
        self._sort_column, self._sort_order = column, order
        self.layoutAboutToBeChanged.emit()
        before = self.persistentIndexList()
        kept = [(index, self.rows[index.row()]) for index in before if index.isValid()]
        self.rows = self._sorted(self.rows, column, order)
        where = {id(row): n for n, row in enumerate(self.rows)}
        self.changePersistentIndexList(
            [index for index, _ in kept],
            [self.index(where[id(row)], index.column()) for index, row in kept],
        )
        self.layoutChanged.emit()

    # --- helpers -------------------------------------------------------------------------------

    def cell_text(self, row: TensorRow, column: int) -> str:
        """The text `row` shows in `column`."""
        t = row.tensor
        if column == COL_FILE:
            return row.file
        if column == COL_TENSOR:
            return t.name
        if column == COL_CHANGE:
            return t.change
        if column == COL_TYPE:
            a_type = dtype_shape(t.a_dtype, t.a_shape)
            b_type = dtype_shape(t.b_dtype, t.b_shape)
            if t.change in ("changed", "unchanged") and a_type == b_type:
                return a_type
            return f"{a_type} → {b_type}".strip()
        if column == COL_RELATIVE:
            return t.percent if t.change == "changed" else ""
        return ""

    def _sorted(self, rows: list[TensorRow], column: int, order: Qt.SortOrder) -> list[TensorRow]:
        descending = order == Qt.SortOrder.DescendingOrder
        if column == COL_RELATIVE:
            # Rows without a relative change go last, in either order, in the default order.
            measured = [r for r in rows if r.tensor.relative_change is not None]
            rest = self._sorted([r for r in rows if r.tensor.relative_change is None], -1, order)
            measured.sort(
                key=lambda r: (_finite(r.tensor.relative_change), r.file_index, r.position),
                reverse=descending,
            )
            return measured + rest

        def key(r: TensorRow) -> tuple[Any, ...]:
            rank = _RANK.get(r.tensor.change, len(CHANGES))
            if column == COL_FILE:
                return (r.file_index, rank, r.position)
            if column == COL_TENSOR:
                return (r.tensor.name, r.file_index)
            if column == COL_TYPE:
                return (self.cell_text(r, COL_TYPE), rank, r.file_index, r.position)
            return (rank, r.file_index, r.position)  # Change, and the default

        return sorted(rows, key=key, reverse=descending and column >= 0)


def _finite(value: float | None) -> float:
    if value is None or math.isnan(value):
        return -1.0
    return value


class TensorPane(QWidget):
    """The "Tensors" tab: a status line (loading, the summary) over the tensor table, or the
    server's error. Signals: `loaded` once the table is shown, `failed(sentence)`."""

    loaded = Signal()
    failed = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = TensorTableModel(self)
        self.comparison: lmvp.TensorComparison | None = None
        # Seconds from `load` to the table shown (None until then).
        self.took: float | None = None
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error_box = ErrorBox()
        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.setAccessibleName("Tensors")
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setWordWrap(False)
        self.table.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.table.verticalHeader().setVisible(False)
        # Fixed row heights: laying out thousands of tensors stays cheap.
        self.table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        self.table.verticalHeader().setDefaultSectionSize(self.table.fontMetrics().height() + 6)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)
        header.setSortIndicator(COL_CHANGE, Qt.SortOrder.AscendingOrder)
        self.table.setSortingEnabled(True)
        self.table.hide()
        layout = QVBoxLayout(self)
        layout.addWidget(self.status)
        layout.addWidget(self.error_box)
        layout.addWidget(self.table)

    def load(self, client: lmvp.Client, a: lmvp.Version, b: lmvp.Version) -> None:
        """Compare `a` and `b` per tensor on the server, in the background."""
        self.comparison, self.took = None, None
        self.error_box.show_error(None)
        self.table.hide()
        self.status.setText("Comparing tensors…")
        self.status.setAccessibleName("Comparing tensors…")
        started = time.monotonic()
        server = client.server

        def done(comparison: lmvp.TensorComparison) -> None:
            self.show_comparison(comparison)
            self.took = time.monotonic() - started
            log.info("tensor compare of v%s and v%s shown in %.2f s", a.number, b.number, self.took)
            self.loaded.emit()

        def fail(exc: BaseException) -> None:
            error = explain(exc, server)
            log.warning("tensor compare of v%s and v%s failed: %s", a.number, b.number, exc)
            self.status.setText("")
            self.error_box.show_error(error)
            self.failed.emit(error.sentence)

        run_async(
            client.compare_tensors,
            a.project,
            a.model,
            a.number,
            b.number,
            on_done=done,
            on_error=fail,
            owner=self,
        )

    def show_comparison(self, comparison: lmvp.TensorComparison) -> None:
        """Show `comparison`: its summary and, if it has tensors, the table."""
        self.comparison = comparison
        self.model.set_comparison(comparison)
        text = summary(comparison)
        self.status.setText(text)
        self.status.setAccessibleName(text)
        self.table.setAccessibleDescription(text)
        self.table.setColumnHidden(COL_FILE, self.model.file_count <= 1)
        self.table.setVisible(self.model.rowCount() > 0)
        self._size_columns()

    def changed_count(self) -> int:
        """How many tensors differ (changed, reshaped, added or removed)."""
        return sum(1 for r in self.model.rows if r.tensor.change != "unchanged")

    def _size_columns(self) -> None:
        """Widths that fit the longest texts (measured on the text, not on every cell: a
        checkpoint has thousands of tensors)."""
        metrics = self.table.fontMetrics()
        pad = 24
        for column, limit in ((COL_FILE, 260), (COL_TENSOR, 360), (COL_TYPE, 280)):
            texts = {self.model.cell_text(r, column) for r in self.model.rows}
            widest = max(texts, key=len, default="")
            title = str(self.model.headerData(column, Qt.Orientation.Horizontal))
            width = max(metrics.horizontalAdvance(widest), metrics.horizontalAdvance(title))
            self.table.horizontalHeader().resizeSection(column, min(limit, width + pad))
        self.table.horizontalHeader().resizeSection(
            COL_CHANGE, metrics.horizontalAdvance("unchanged") + pad + 14
        )


__all__ = [
    "CHANGES",
    "TensorPane",
    "TensorRow",
    "TensorTableModel",
    "dtype_shape",
    "file_label",
    "summary",
]
