"""One model's versions as a Qt table: `VersionTableModel` holds them newest first, fetched a page
at a time with the server's keyset pagination (`before`) as the view scrolls
(`canFetchMore`/`fetchMore`), so that a model with 10,000 versions opens as fast as one with
ten. New versions are put on top (`refresh`/`prepend_new`) without reloading what is already
there. `version_columns` says what each column shows and sorts by; the "Kept by" column shows
the retention marks the model's pane gives it (`set_retention_marks`, from the server's
preview).

Every call to the server runs off the UI thread (`run_async`); results that arrive after the
table moved on to another model are dropped.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    Qt,
    QTimer,
    Signal,
)

import lmvp
from lmvp_desktop.tasks import run_async
from lmvp_desktop.version_columns import (
    COL_ALIASES,
    COL_CREATED,
    COL_KEPT,
    COL_NUMBER,
    FIXED_COLUMNS,
    KEY_METRICS,
    cell_alignment,
    cell_text,
    cell_tooltip,
    column_title,
    kept_text,
    kept_tooltip,
    sort_key,
    sort_value,
)
from lmvp_desktop.version_pages import (
    PAGE_SIZE,
    ModelChanges,
    VersionPage,
    fetch_model_changes,
    fetch_version_page,
)

log = logging.getLogger(__name__)

# Pages fetched to reach one old version (`load_until`) are larger: fewer round trips.
SEEK_PAGE_SIZE = 1000

# Item data roles beyond Qt's own.
SORT_ROLE = Qt.ItemDataRole.UserRole + 1  # a raw, comparable value (number, bytes, seconds)
VERSION_ROLE = Qt.ItemDataRole.UserRole + 2  # the lmvp.Version of the row

_Index = QModelIndex | QPersistentModelIndex


class VersionTableModel(QAbstractTableModel):
    """One model's versions, newest first, one row each, loaded a page at a time.

    Columns: `FIXED_COLUMNS`, then one column for each of the first `KEY_METRICS` metric keys
    of the loaded versions. `VERSION_ROLE` gives a row's `lmvp.Version`, `SORT_ROLE` a value to
    sort by. Signals: `loading_changed(bool)`, `rows_loaded(int)` after each page (the row
    count), `failed(message)` when the server could not be read.
    """

    loading_changed = Signal(bool)
    rows_loaded = Signal(int)
    failed = Signal(str)

    def __init__(
        self, client: lmvp.Client, parent: QObject | None = None, *, page_size: int = PAGE_SIZE
    ) -> None:
        super().__init__(parent)
        self._client = client
        self._page_size = page_size
        self._project: str | None = None
        self._model: str | None = None
        # In display order (`sort`); newest first until sorted otherwise.
        self._versions: list[lmvp.Version] = []
        self._rows: dict[int, int] = {}  # version number → row
        self._newest = 0  # the highest and lowest numbers loaded
        self._oldest: int | None = None
        self._sort_column = COL_NUMBER
        self._sort_order = Qt.SortOrder.DescendingOrder
        self._metric_keys: list[str] = []
        self._cursor: int | None = None  # `before` of the next page
        self._exhausted = True
        self._loading = False
        self._refreshing = False
        self._refresh_again = False
        # Bumped whenever the table switches models: older answers are dropped.
        self._generation = 0
        self._seeks: list[tuple[int, Callable[[int | None], None]]] = []
        # The retention preview's marks: the rules keeping each version (None: no policy), and
        # the versions its next application removes.
        self._kept: dict[int, tuple[str, ...]] | None = None
        self._removed_next: frozenset[int] = frozenset()
        # "3 min ago" ages: the Created column is read again every half minute.
        self._clock = QTimer(self)
        self._clock.setInterval(30_000)
        self._clock.timeout.connect(self._times_changed)
        self._clock.start()

    # --- what it shows ---------------------------------------------------------------------

    @property
    def project(self) -> str | None:
        return self._project

    @property
    def model(self) -> str | None:
        return self._model

    @property
    def loading(self) -> bool:
        """True while a page is being fetched."""
        return self._loading

    @property
    def metric_keys(self) -> list[str]:
        """The metric keys that have a column, in column order."""
        return list(self._metric_keys)

    def set_model(self, project: str | None, model: str | None) -> None:
        """Show the versions of `project/model` (nothing, if None); fetches the first page."""
        self.beginResetModel()
        self._generation += 1
        self._project, self._model = project, model
        self._versions = []
        self._rows = {}
        self._newest, self._oldest = 0, None
        self._metric_keys = []
        self._kept, self._removed_next = None, frozenset()
        self._cursor = None
        self._exhausted = model is None
        self._refresh_again = False
        self._refreshing = False
        self._set_loading(False)
        pending, self._seeks = self._seeks, []
        self.endResetModel()
        for _, callback in pending:
            callback(None)
        if model is not None:
            self.fetchMore(QModelIndex())

    def version_at(self, row: int) -> lmvp.Version:
        """The version shown in `row` (of this model, not of a proxy). Raises IndexError."""
        if row < 0:
            raise IndexError(row)
        return self._versions[row]

    def row_of(self, number: int) -> int | None:
        """The row of version `number`, None if it is not loaded (yet)."""
        return self._rows.get(number)

    def all_loaded(self) -> bool:
        """True when every version of the model is in the table."""
        return self._exhausted

    # --- growing ---------------------------------------------------------------------------

    def canFetchMore(self, parent: _Index = QModelIndex()) -> bool:
        return not parent.isValid() and not self._exhausted

    def fetchMore(self, parent: _Index = QModelIndex()) -> None:
        if parent.isValid() or self._exhausted or self._loading or self._model is None:
            return
        self._fetch_page(self._page_size)

    def load_until(self, number: int, callback: Callable[[int | None], None]) -> None:
        """Fetch pages until version `number` is loaded, then call `callback(row)`; with None
        when the model has no such version (or the table switched models meanwhile)."""
        row = self.row_of(number)
        if row is not None or self._model is None:
            callback(row)
            return
        if number > self._top() and not self._loading:
            # Newer than anything shown: committed since the table was read, or no such version.
            self._seeks.append((number, callback))
            self.refresh()
            return
        if self._exhausted:
            callback(None)
            return
        self._seeks.append((number, callback))
        if not self._loading:
            self._fetch_page(SEEK_PAGE_SIZE)

    def refresh(self) -> None:
        """Fetch what changed since the table was loaded (new versions, moved aliases) in the
        background, and show it without reloading the rows already there."""
        if self._model is None or self._project is None:
            return
        if self._refreshing or self._loading:  # one at a time; a burst of events makes one more
            self._refresh_again = True
            return
        if not self._versions:  # nothing shown yet: the first page is all there is to read
            self._cursor, self._exhausted = None, False
            self.fetchMore(QModelIndex())
            return
        self._refreshing = True
        generation = self._generation
        run_async(
            fetch_model_changes,
            self._client,
            self._project,
            self._model,
            newer_than=self._top(),
            on_done=lambda changes: self._apply_changes(generation, changes),
            on_error=lambda exc: self._refresh_failed(generation, exc),
            owner=self,
        )

    def prepend_new(self, versions: Iterable[lmvp.Version]) -> int:
        """Put versions newer than the newest row on top (others are ignored); returns how many
        rows were added."""
        top = self._top()
        fresh = sorted(
            (v for v in versions if v.number > top and v.model == self._model),
            key=lambda v: -v.number,
        )
        if not fresh:
            return 0
        self._add_metric_keys(fresh)
        self._newest = fresh[0].number
        if self._oldest is None:
            self._oldest = fresh[-1].number
        self._insert(fresh, at_top=True)
        return len(fresh)

    def remove_version(self, number: int) -> None:
        """Take a deleted version out of the table."""
        row = self.row_of(number)
        if row is None:
            return
        self.beginRemoveRows(QModelIndex(), row, row)
        del self._versions[row]
        self._index_rows()
        self.endRemoveRows()

    def set_aliases(self, aliases: dict[int, tuple[str, ...]]) -> None:
        """Where each alias points now (version number → its aliases), for every loaded row."""
        changed = []
        for row, v in enumerate(self._versions):
            now = aliases.get(v.number, ())
            if now != v.aliases:
                self._versions[row] = dataclasses.replace(v, aliases=now)
                changed.append(row)
        for row in changed:
            index = self.index(row, COL_ALIASES)
            self.dataChanged.emit(index, index)

    def set_retention_marks(
        self,
        project: str,
        model: str,
        kept: dict[int, tuple[str, ...]] | None,
        removed_next: Iterable[int] = (),
    ) -> None:
        """Show in the "Kept by" column which rules keep each version of `project/model` (None:
        the model has no policy) and which versions the policy's next application removes, as
        the server's preview says; ignored if the table shows another model by now."""
        if (project, model) != (self._project, self._model):
            return
        self._kept, self._removed_next = kept, frozenset(removed_next)
        if self._versions:
            top, bottom = self.index(0, COL_KEPT), self.index(len(self._versions) - 1, COL_KEPT)
            self.dataChanged.emit(top, bottom)
        if self._sort_column == COL_KEPT:
            self.sort(self._sort_column, self._sort_order)

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        """Order the rows by `column`; rows fetched later take their place in that order."""
        self._sort_column, self._sort_order = column, order
        self.layoutAboutToBeChanged.emit()
        before = list(self._versions)
        self._versions = self._sorted(self._versions)
        self._index_rows()
        self._move_persistent_indexes(before)
        self.layoutChanged.emit()

    # --- QAbstractTableModel -----------------------------------------------------------------

    def rowCount(self, parent: _Index = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._versions)

    def columnCount(self, parent: _Index = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(FIXED_COLUMNS) + len(self._metric_keys)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if orientation != Qt.Orientation.Horizontal or role != Qt.ItemDataRole.DisplayRole:
            return None
        return column_title(section, self._metric_keys)

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or index.row() >= len(self._versions):
            return None
        v = self._versions[index.row()]
        column = index.column()
        if column == COL_KEPT and role in (
            Qt.ItemDataRole.DisplayRole,
            SORT_ROLE,
            Qt.ItemDataRole.ToolTipRole,
            Qt.ItemDataRole.AccessibleDescriptionRole,
        ):
            return self._kept_data(v.number, role)
        if role == Qt.ItemDataRole.DisplayRole:
            return cell_text(v, column, self._metric_keys)
        if role == SORT_ROLE:
            return sort_value(v, column, self._metric_keys)
        if role == VERSION_ROLE:
            return v
        if role == Qt.ItemDataRole.ToolTipRole:
            return cell_tooltip(v, column)
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return cell_alignment(column)
        return None

    # --- helpers ---------------------------------------------------------------------------

    def _sort_key(self, v: lmvp.Version, column: int) -> Any:
        if column == COL_KEPT:  # unmarked rows go last, as rows without a metric do
            return self._kept_data(v.number, SORT_ROLE) or None
        return sort_key(v, column, self._metric_keys)

    def _kept_data(self, number: int, role: int) -> str | None:
        rules = None if self._kept is None else self._kept.get(number, ())
        removed = number in self._removed_next
        if role in (Qt.ItemDataRole.DisplayRole, SORT_ROLE):
            return kept_text(rules, removed)
        return kept_tooltip(rules, removed)

    def _times_changed(self) -> None:
        if self._versions:
            top, bottom = (
                self.index(0, COL_CREATED),
                self.index(len(self._versions) - 1, COL_CREATED),
            )
            self.dataChanged.emit(top, bottom, [Qt.ItemDataRole.DisplayRole])

    def _top(self) -> int:
        return self._newest

    def _is_default_order(self) -> bool:
        return self._sort_column == COL_NUMBER and self._sort_order == Qt.SortOrder.DescendingOrder

    def _insert(self, rows: list[lmvp.Version], *, at_top: bool) -> None:
        """Add rows (newest first) in the current order: at the top or the end when the table is
        in its natural order, else at the end and then moved where the sort puts them."""
        default = self._is_default_order()
        first = 0 if at_top and default else len(self._versions)
        self.beginInsertRows(QModelIndex(), first, first + len(rows) - 1)
        self._versions[first:first] = rows
        self._index_rows()
        self.endInsertRows()
        if not default:
            self.sort(self._sort_column, self._sort_order)

    def _index_rows(self) -> None:
        self._rows = {v.number: row for row, v in enumerate(self._versions)}

    def _move_persistent_indexes(self, before: list[lmvp.Version]) -> None:
        old = self.persistentIndexList()
        new = [
            self.index(self._rows[before[i.row()].number], i.column())
            if 0 <= i.row() < len(before) and before[i.row()].number in self._rows
            else QModelIndex()
            for i in old
        ]
        self.changePersistentIndexList(old, new)

    def _sorted(self, versions: list[lmvp.Version]) -> list[lmvp.Version]:
        column = self._sort_column
        # Ties keep newest first; rows without a value (no such metric, no step) go last.
        keyed = [(self._sort_key(v, column), v) for v in sorted(versions, key=lambda v: -v.number)]
        present = sorted(
            (pair for pair in keyed if pair[0] is not None),
            key=lambda pair: pair[0],
            reverse=self._sort_order == Qt.SortOrder.DescendingOrder,
        )
        return [v for _, v in present] + [v for key, v in keyed if key is None]

    def _set_loading(self, loading: bool) -> None:
        if loading != self._loading:
            self._loading = loading
            self.loading_changed.emit(loading)

    def _fetch_page(self, limit: int) -> None:
        assert self._project is not None and self._model is not None
        self._set_loading(True)
        generation = self._generation
        run_async(
            fetch_version_page,
            self._client,
            self._project,
            self._model,
            before=self._cursor,
            limit=limit,
            on_done=lambda page: self._append_page(generation, page),
            on_error=lambda exc: self._page_failed(generation, exc),
            owner=self,
        )

    def _append_page(self, generation: int, page: VersionPage) -> None:
        if generation != self._generation:
            return
        self._set_loading(False)
        # A version committed while the pages were read sits above the cursor: never twice.
        bottom = self._oldest
        rows = [v for v in page.versions if bottom is None or v.number < bottom]
        if rows:
            self._add_metric_keys(rows)
            self._oldest = rows[-1].number
            self._newest = max(self._newest, rows[0].number)
            self._insert(rows, at_top=False)
        self._cursor = page.next
        self._exhausted = page.next is None
        self.rows_loaded.emit(len(self._versions))
        self._serve_seeks()
        if self._refresh_again and not self._loading and not self._refreshing:
            self._refresh_again = False
            self.refresh()

    def _serve_seeks(self) -> None:
        still: list[tuple[int, Callable[[int | None], None]]] = []
        older = False
        for number, callback in self._seeks:
            row = self.row_of(number)
            if row is not None:
                callback(row)
            elif number > self._top():  # only a refresh can bring it
                if self._refreshing or self._refresh_again:
                    still.append((number, callback))
                else:
                    callback(None)
            elif self._exhausted:
                callback(None)
            else:
                still.append((number, callback))
                older = True
        self._seeks = still
        if older and not self._loading:
            self._fetch_page(SEEK_PAGE_SIZE)

    def _page_failed(self, generation: int, exc: BaseException) -> None:
        if generation != self._generation:
            return
        self._set_loading(False)
        log.warning("could not read versions of %s/%s: %s", self._project, self._model, exc)
        pending, self._seeks = self._seeks, []
        for _, callback in pending:
            callback(None)
        self.failed.emit(str(exc))

    def _apply_changes(self, generation: int, changes: ModelChanges) -> None:
        if generation != self._generation:
            return
        self._refreshing = False
        self.prepend_new(changes.new_versions)
        self.set_aliases(changes.aliases)
        if self._refresh_again:
            self._refresh_again = False
            self.refresh()
        self._serve_seeks()

    def _refresh_failed(self, generation: int, exc: BaseException) -> None:
        if generation != self._generation:
            return
        self._refreshing = False
        self._refresh_again = False
        self._serve_seeks()
        self.failed.emit(str(exc))

    def _add_metric_keys(self, versions: Sequence[lmvp.Version]) -> None:
        room = KEY_METRICS - len(self._metric_keys)
        if room <= 0:
            return
        new: list[str] = []
        for v in versions:
            for key in v.metrics:
                if key not in self._metric_keys and key not in new:
                    new.append(key)
                    if len(new) == room:
                        break
            if len(new) == room:
                break
        if not new:
            return
        first = len(FIXED_COLUMNS) + len(self._metric_keys)
        self.beginInsertColumns(QModelIndex(), first, first + len(new) - 1)
        self._metric_keys.extend(new)
        self.endInsertColumns()


__all__ = ["SORT_ROLE", "VERSION_ROLE", "VersionTableModel"]
