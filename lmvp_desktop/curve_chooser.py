"""Choosing what the metric plot draws: `CurveChooser`, the checkable lists of a model's metric
keys and its runs (newest first) beside the plot. One curve is drawn per checked (run, metric).

Each run's parameters (its hyperparameters, as logged) show in its tooltip and, for the runs
drawn, in the line under the list ("demo-run: lr=0.001, batch_size=32").

Once the user checks or unchecks a run (or `set_runs` is called), that choice stands: runs that
start later are listed but not checked. Before that, a new run is checked as it appears, so the
plot follows the newest training. Only what the user clicks emits `changed`; what code fills in
or checks does not.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QStandardItem, QStandardItemModel
from PySide6.QtWidgets import QLabel, QListView, QVBoxLayout, QWidget

from lmvp.types import RunInfo

_RUN_ID_ROLE = Qt.ItemDataRole.UserRole + 1
_TEXT_ROLE = Qt.ItemDataRole.DisplayRole


class CurveChooser(QWidget):
    """The metric and run lists of the metric plot. See the module docstring."""

    changed = Signal()  # the user checked or unchecked a metric or a run

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._runs_chosen = False  # the user picked runs: new runs are not added to the view
        self._filling = False  # the lists are being filled by code, not clicked

        self._metric_model = QStandardItemModel(self)
        self._run_model = QStandardItemModel(self)
        self._metric_model.itemChanged.connect(self._on_metric_checked)
        self._run_model.itemChanged.connect(self._on_run_checked)

        metric_view = QListView()
        metric_view.setModel(self._metric_model)
        metric_view.setAccessibleName("Metrics")
        run_view = QListView()
        run_view.setModel(self._run_model)
        run_view.setAccessibleName("Runs")
        for view in (metric_view, run_view):
            view.setEditTriggers(QListView.EditTrigger.NoEditTriggers)
            view.setUniformItemSizes(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel("Metrics"))
        layout.addWidget(metric_view, 1)
        layout.addWidget(QLabel("Runs"))
        layout.addWidget(run_view, 1)
        # Read out as it shows (each run's parameters), with no fixed name that would hide them.
        self.params_label = QLabel()
        self.params_label.setWordWrap(True)
        self.params_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.params_label)
        self._params: dict[int, str] = {}

    def shown_metrics(self) -> list[str]:
        """The checked metric keys, in list order."""
        return self._checked(self._metric_model)

    def shown_runs(self) -> list[int]:
        """The checked run ids, newest first."""
        return [int(k) for k in self._checked(self._run_model, role=_RUN_ID_ROLE)]

    def set_metrics(self, keys: Iterable[str]) -> None:
        """Check these metric keys and uncheck the others."""
        self._set_checked(self._metric_model, set(keys))

    def set_runs(self, run_ids: Iterable[int]) -> None:
        """Check these runs and uncheck the others; runs listed later stay unchecked."""
        self._runs_chosen = True
        self._set_checked(self._run_model, set(run_ids), role=_RUN_ID_ROLE)
        self._show_params()

    def clear(self) -> None:
        """Empty both lists and forget the user's choice of runs, for another model."""
        self._runs_chosen = False
        self._filling = True
        self._metric_model.clear()
        self._run_model.clear()
        self._filling = False
        self._params.clear()
        self._show_params()

    def list_runs(self, runs: Sequence[RunInfo]) -> None:
        """List a model's runs (newest first) below those listed; the first one is checked."""
        self._filling = True
        for i, info in enumerate(runs):
            item = QStandardItem(_run_label(info))
            item.setCheckable(True)
            item.setData(info.id, _RUN_ID_ROLE)
            self._describe(item, info)
            item.setCheckState(Qt.CheckState.Checked if i == 0 else Qt.CheckState.Unchecked)
            self._run_model.appendRow(item)
        self._filling = False
        self._show_params()

    def add_run(self, info: RunInfo) -> None:
        """List a new run on top, checked unless the user chose the runs to show."""
        self._filling = True
        item = QStandardItem(_run_label(info))
        item.setCheckable(True)
        item.setData(info.id, _RUN_ID_ROLE)
        follow = not self._runs_chosen
        self._describe(item, info)
        item.setCheckState(Qt.CheckState.Checked if follow else Qt.CheckState.Unchecked)
        self._run_model.insertRow(0, item)
        self._filling = False
        self._show_params()

    def relabel_run(self, info: RunInfo) -> None:
        """Show a listed run's name and status as they are now."""
        for row in range(self._run_model.rowCount()):
            item = self._run_model.item(row)
            if item.data(_RUN_ID_ROLE) == info.id:
                self._filling = True
                item.setText(_run_label(info))
                self._describe(item, info)
                self._filling = False
        self._show_params()

    def _describe(self, item: QStandardItem, info: RunInfo) -> None:
        params = format_params(info.params)
        self._params[info.id] = f"{info.name}: {params}" if params else ""
        started = info.started_at.astimezone().strftime("%Y-%m-%d %H:%M")
        lines = [f"{info.name} ({info.status}), started {started} on {info.host or '?'}"]
        lines.append(f"parameters: {params}" if params else "no parameters logged")
        item.setToolTip("\n".join(lines))

    def _show_params(self) -> None:
        """The parameters of the runs drawn (at most three), under the list."""
        shown = [self._params.get(run, "") for run in self.shown_runs()]
        lines = [line for line in shown if line][:3]
        self.params_label.setText("\n".join(lines))
        self.params_label.setVisible(bool(lines))

    def add_metrics(self, keys: Iterable[str]) -> None:
        """List the keys not listed yet (unchecked), keeping the list sorted."""
        present = set(self._checked(self._metric_model, every=True))
        self._filling = True
        for key in keys:
            if key not in present:
                item = QStandardItem(key)
                item.setCheckable(True)
                self._metric_model.appendRow(item)
        self._metric_model.sort(0)
        self._filling = False

    # --- helpers ---------------------------------------------------------------------------------

    def _on_metric_checked(self, _item: QStandardItem) -> None:
        if not self._filling:
            self.changed.emit()

    def _on_run_checked(self, _item: QStandardItem) -> None:
        self._show_params()
        if not self._filling:
            self._runs_chosen = True
            self.changed.emit()

    @staticmethod
    def _checked(
        model: QStandardItemModel, *, role: int = _TEXT_ROLE, every: bool = False
    ) -> list[Any]:
        out = []
        for row in range(model.rowCount()):
            item = model.item(row)
            if every or item.checkState() == Qt.CheckState.Checked:
                out.append(item.data(role))
        return out

    def _set_checked(
        self,
        model: QStandardItemModel,
        values: set[Any],
        *,
        role: int = Qt.ItemDataRole.DisplayRole,
    ) -> None:
        self._filling = True
        for row in range(model.rowCount()):
            item = model.item(row)
            checked = item.data(role) in values
            item.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)
        self._filling = False


def format_params(params: dict[str, Any], limit: int = 200) -> str:
    """`lr=0.001, batch_size=32`: a run's parameters in key order, numbers at 6 significant
    digits, nested ones flattened (`optimizer.beta1=0.9`), cut at `limit` characters."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            flat[prefix] = value

    walk("", params)
    parts = []
    for key in sorted(flat):
        value = flat[key]
        shown = f"{value:.6g}" if isinstance(value, float) else str(value)
        parts.append(f"{key}={shown}")
    text = ", ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _run_label(info: RunInfo) -> str:
    return f"{info.name} ({info.status})"


__all__ = ["CurveChooser", "format_params"]
