"""The metric plot of the desktop app: one model's runs drawn with pyqtgraph.

`MetricPlot` lists the model's runs and their metric keys (checkable lists) and draws one curve
per chosen (run, metric) on its `PlotCanvas`, with a smoothing slider, log y and x by step or
wall time; clicking a version's marker emits `version_clicked(number)`. Zoomed in on a
downsampled curve, it fetches the visible steps in more detail. While a shown run is running it
polls the server for points past the last step it has, so the plot follows training live;
`on_server_event` adds new versions and runs, and `reconcile` (when the event stream opens)
adds the runs that started before it did. The line under the plot counts the model's runs and
names them by status, e.g. "demo/tiny-net: 2 runs; running: b; finished: a" ("has no runs yet"
only while it has none); a run's `run.finished` event moves it from running to finished (or
failed). Its server calls go through a `PlotLoader`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QHideEvent, QShowEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QSlider,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

import lmvp
from lmvp.types import RunInfo, RunVersion, Series
from lmvp_desktop.curve_chooser import CurveChooser
from lmvp_desktop.plot_canvas import Curve, PlotCanvas, XAxis
from lmvp_desktop.plot_loader import LIVE_INTERVAL_MS, MAX_POINTS, NewPoints, PlotLoader

# Zoomed in this far (fewer fetched points than this in view), a downsampled curve is fetched
# again for the visible step range only.
_REFINE_BELOW = MAX_POINTS // 4
_REFINE_DELAY_MS = 300
# The line under the plot names this many runs of each status (newest first), then counts.
_NAMED_RUNS = 3


class MetricPlot(QWidget):
    """Metric curves of one model's runs, with checkpoint markers. See the module docstring."""

    version_clicked = Signal(int)  # the version number of a clicked marker
    loaded = Signal()  # the runs and every shown curve have arrived (nothing left loading)
    failed = Signal(str)  # a server call failed (message, also shown in the widget)

    def __init__(
        self,
        client: lmvp.Client,
        parent: QWidget | None = None,
        *,
        live_interval_ms: int = LIVE_INTERVAL_MS,
    ) -> None:
        super().__init__(parent)
        self._project: str | None = None
        self._model: str | None = None
        self._runs: dict[int, RunInfo] = {}  # newest first
        self._fetching: set[tuple[int, str]] = set()

        self._loader = PlotLoader(client, self, live_interval_ms=live_interval_ms)
        self._loader.loaded.connect(self.loaded)
        self._loader.failed.connect(self._on_failed)
        self._loader.poll_due.connect(self._poll_live)

        self._chooser = CurveChooser()
        self._chooser.changed.connect(self._sync_curves)

        self._canvas = PlotCanvas(lambda: self._runs, self)
        self._canvas.version_clicked.connect(self.version_clicked)
        self.plot_item.getViewBox().sigXRangeChanged.connect(self._schedule_refine)

        self._build_controls()

        self._refine_timer = QTimer(self)
        self._refine_timer.setSingleShot(True)
        self._refine_timer.setInterval(_REFINE_DELAY_MS)
        self._refine_timer.timeout.connect(self._refine_visible)

    # --- public API ------------------------------------------------------------------------------

    @property
    def plot_item(self) -> Any:
        """The `pg.PlotItem` the curves are drawn in."""
        return self._canvas.plot_item

    @property
    def is_loading(self) -> bool:
        """Whether runs or curves are still on their way from the server."""
        return self._loader.is_loading

    def show_model(self, project: str, model: str) -> None:
        """Show the runs of `project/model`: loads them in the background, then draws the
        newest run's first loss-like metric (until the user chooses others)."""
        self._reset()
        self._project, self._model = project, model
        self._status.setText(f"Loading runs of {project}/{model} …")
        self._loader.load_runs(f"{project}/{model}", self._on_runs)

    def shown_metrics(self) -> list[str]:
        """The checked metric keys, in list order."""
        return self._chooser.shown_metrics()

    def shown_runs(self) -> list[int]:
        """The checked run ids, newest first."""
        return self._chooser.shown_runs()

    def set_metrics(self, keys: Iterable[str]) -> None:
        """Show these metric keys (the others are unchecked) and fetch what is missing."""
        self._chooser.set_metrics(keys)
        self._sync_curves()

    def set_runs(self, run_ids: Iterable[int]) -> None:
        """Overlay these runs (the others are unchecked) and fetch what is missing."""
        self._chooser.set_runs(run_ids)
        self._sync_curves()

    def set_smoothing(self, weight: float) -> None:
        """Smooth every curve with a debiased EMA of `weight` (0 .. 0.99; 0 draws raw)."""
        weight = min(max(float(weight), 0.0), 0.99)
        self._slider.blockSignals(True)
        self._slider.setValue(round(weight * 100))
        self._slider.blockSignals(False)
        self._smoothing_label.setText(f"{weight:.2f}")
        self._canvas.set_smoothing(weight)

    def set_log_y(self, on: bool) -> None:
        """Logarithmic y axis on or off."""
        self._log_box.setChecked(bool(on))
        self._canvas.set_log_y(bool(on))

    def set_x_axis(self, axis: XAxis) -> None:
        """Draw against the step, seconds since each run started, or the date and time."""
        self._x_combo.setCurrentIndex(list(XAxis).index(axis))
        self._canvas.set_x_axis(axis)

    def highlight_version(self, number: int | None) -> None:
        """Mark version `number`'s marker as the selected one (None: no selection)."""
        self._canvas.highlight_version(number)

    def curve(self, run_id: int, key: str) -> Any:
        """The `pg.PlotDataItem` of a shown (run, metric), smoothed as set. Raises KeyError."""
        return self._canvas.curves[(run_id, key)].smooth

    def raw_curve(self, run_id: int, key: str) -> Any:
        """The faint, unsmoothed `pg.PlotDataItem` under `curve`. Raises KeyError."""
        return self._canvas.curves[(run_id, key)].raw

    def markers(self, run_id: int, key: str) -> Any:
        """The `pg.ScatterPlotItem` of the versions on a shown curve. Raises KeyError."""
        return self._canvas.curves[(run_id, key)].markers

    def on_server_event(self, event: lmvp.Event) -> None:
        """Follow the server's event stream: new and deleted versions of the shown model move
        markers; new and finished runs update the run list."""
        if event.project != self._project or event.model != self._model:
            if event.kind == "project.deleted" and event.project == self._project:
                self._gone()
            return
        if event.kind == "model.deleted":
            self._gone()
        elif event.kind == "version.created" and event.version is not None:
            ref = f"{self._project}/{self._model}:{event.version}"
            self._loader.load_version(ref, self._on_version)
        elif event.kind == "version.deleted" and event.version is not None:
            for run_id, info in list(self._runs.items()):
                kept = tuple(v for v in info.versions if v.number != event.version)
                if kept != info.versions:
                    self._update_run(dataclasses.replace(info, versions=kept))
                    self._canvas.redraw_run_markers(run_id)
        elif event.kind in ("run.created", "run.finished") and "run" in event.payload:
            run_id = int(event.payload["run"])
            if run_id in self.shown_runs():
                if not self._loader.is_polling(run_id):  # its last points and its new status
                    self._poll_run(run_id)
            else:
                self._loader.load_run(run_id, self._on_run_info)

    def reconcile(self) -> None:
        """List the runs that started while nobody was listening (the event stream has just
        opened); the runs listed, and what the user chose to draw, stay."""
        if self._project is None or self._model is None:
            return
        project, model = self._project, self._model
        self._loader.load_run_list(
            f"{project}/{model}", lambda runs: self._merge_runs(project, model, runs)
        )

    def status_text(self) -> str:
        """The line under the plot: the model's runs, and which are running, finished or
        failed."""
        return self._status.text()

    # --- Qt events -------------------------------------------------------------------------------

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self._update_live_timer()

    def hideEvent(self, event: QHideEvent) -> None:
        super().hideEvent(event)
        self._update_live_timer()

    # --- building --------------------------------------------------------------------------------

    def _build_controls(self) -> None:
        self._slider = QSlider(Qt.Orientation.Horizontal)
        self._slider.setRange(0, 99)
        self._slider.setToolTip("Debiased exponential moving average, as TensorBoard draws it")
        self._slider.valueChanged.connect(lambda value: self.set_smoothing(value / 100))
        self._smoothing_label = QLabel("0.00")
        self._log_box = QCheckBox("Log y")
        self._log_box.toggled.connect(self.set_log_y)
        self._x_combo = QComboBox()
        self._x_combo.addItems([axis.value for axis in XAxis])
        self._x_combo.currentIndexChanged.connect(lambda i: self.set_x_axis(list(XAxis)[i]))
        self._status = QLabel()
        self._status.setStyleSheet("color: gray")
        self._slider.setAccessibleName("Smoothing")
        self._x_combo.setAccessibleName("X axis")
        self._x_combo.setToolTip("What the x axis shows: the step, seconds since start or time")
        self._log_box.setAccessibleDescription("Logarithmic y axis")
        self._canvas.widget.setAccessibleName("Metric plot")

        bar = QHBoxLayout()
        bar.addWidget(QLabel("Smoothing"))
        bar.addWidget(self._slider, 1)
        bar.addWidget(self._smoothing_label)
        bar.addSpacing(12)
        bar.addWidget(self._log_box)
        bar.addSpacing(12)
        bar.addWidget(QLabel("X"))
        bar.addWidget(self._x_combo)
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.addLayout(bar)
        right_layout.addWidget(self._canvas.widget, 1)
        right_layout.addWidget(self._status)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self._chooser)
        splitter.addWidget(right)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([180, 620])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(splitter)

    def _reset(self) -> None:
        self._loader.reset()
        for curve in self._canvas.curves.values():
            self._canvas.remove_curve(curve)
        # Forgotten too, or showing the same model again would take them for drawn.
        self._canvas.curves.clear()
        self._runs.clear()
        self._canvas.reset()
        self._fetching.clear()
        self._chooser.clear()
        self._update_live_timer()

    # --- loading ---------------------------------------------------------------------------------

    def _on_failed(self, message: str) -> None:
        self._status.setText(message)
        self.failed.emit(message)

    def _on_runs(self, runs: list[RunInfo]) -> None:
        self._runs = {r.id: r for r in runs}
        self._chooser.list_runs(runs)
        keys = self._refresh_keys()
        default = _default_metric(keys)
        self._chooser.set_metrics({default} if default else set())
        self._show_status()
        self._sync_curves()

    def _merge_runs(self, project: str, model: str, runs: list[RunInfo]) -> None:
        if (project, model) != (self._project, self._model):
            return
        for info in reversed(runs):  # oldest first: each new one goes on top
            self._on_run_info(info)
        self._show_status()

    def _gone(self) -> None:
        """The model shown was deleted (or its project): nothing is left to draw."""
        gone = f"{self._project}/{self._model} was deleted"
        self._reset()
        self._project = self._model = None
        self._status.setText(gone)

    def _show_status(self) -> None:
        if self._project is None or self._model is None:
            return
        runs = list(self._runs.values())
        if not runs:
            self._status.setText(f"{self._project}/{self._model} has no runs yet")
            return
        count = "1 run" if len(runs) == 1 else f"{len(runs)} runs"
        text = f"{self._project}/{self._model}: {count}"
        statuses = dict.fromkeys(["running", "finished", "failed", *(r.status for r in runs)])
        for status in statuses:
            names = [r.name for r in runs if r.status == status]  # newest first
            if names:
                text += f"; {status}: {_name_list(names)}"
        self._status.setText(text)

    def _refresh_keys(self) -> list[str]:
        """Add the keys of every known run to the metric list; returns all keys."""
        keys = sorted({k.key for info in self._runs.values() for k in info.keys})
        self._chooser.add_metrics(keys)
        return keys

    def _sync_curves(self) -> None:
        """Remove curves no longer chosen; fetch the chosen ones not drawn yet."""
        keys, runs = self.shown_metrics(), self.shown_runs()
        wanted = {
            (run_id, key)
            for run_id in runs
            for key in keys
            if run_id in self._runs and key in {k.key for k in self._runs[run_id].keys}
        }
        curves = self._canvas.curves
        for pair in [p for p in curves if p not in wanted]:
            self._canvas.remove_curve(curves.pop(pair))
        missing: dict[int, list[str]] = {}
        for run_id, key in sorted(wanted - set(curves) - self._fetching):
            missing.setdefault(run_id, []).append(key)
        for run_id, run_keys in missing.items():
            self._fetching.update((run_id, k) for k in run_keys)
            self._loader.load_series(run_id, run_keys, partial(self._on_series, run_id, run_keys))
        self._update_live_timer()

    def _on_series(self, run_id: int, asked: list[str], series: dict[str, Series]) -> None:
        self._fetching.difference_update((run_id, k) for k in asked)
        wanted_keys, wanted_runs = set(self.shown_metrics()), set(self.shown_runs())
        for key in asked:
            if key not in series or key not in wanted_keys or run_id not in wanted_runs:
                continue
            if (run_id, key) not in self._canvas.curves:
                self._canvas.curves[(run_id, key)] = self._canvas.add_curve(run_id, series[key])
        self._canvas.fit_x(force=self._canvas.following)

    # --- zoom: more detail for the visible range -------------------------------------------------

    def _schedule_refine(self, *_: Any) -> None:
        if self._canvas.x_axis is XAxis.STEP and any(
            c.data.downsampled for c in self._canvas.curves.values()
        ):
            self._refine_timer.start()

    def _refine_visible(self) -> None:
        """Fetch downsampled curves again for the visible steps when few points are in view."""
        low, high = self.plot_item.getViewBox().viewRange()[0]
        by_step = self._canvas.x_axis is XAxis.STEP
        if not by_step or not math.isfinite(low) or not math.isfinite(high):
            return
        for curve in self._canvas.curves.values():
            if curve.refining or not curve.data.needs_detail(low, high, _REFINE_BELOW):
                continue
            curve.refining = True
            step_min, step_max = max(0, math.floor(low)), math.ceil(high)
            self._loader.load_detail(
                curve.run,
                curve.key,
                step_min,
                step_max,
                on_done=partial(self._on_refined, curve, step_min, step_max),
                on_error=partial(self._on_refine_failed, curve),
            )

    def _on_refined(self, curve: Curve, low: int, high: int, series: dict[str, Series]) -> None:
        curve.refining = False
        detail = series.get(curve.key)
        if detail is not None and self._canvas.curves.get((curve.run, curve.key)) is curve:
            curve.data.replace_range(low, high, detail)
            self._canvas.redraw(curve)

    def _on_refine_failed(self, curve: Curve, _exc: BaseException) -> None:
        curve.refining = False  # the next zoom asks again

    # --- live ------------------------------------------------------------------------------------

    def _update_live_timer(self) -> None:
        live = self.isVisible() and any(
            self._runs[r].status == "running" for r in self.shown_runs() if r in self._runs
        )
        self._loader.set_live(live)

    def _poll_live(self) -> None:
        """Ask each shown running run for its points past the last step drawn."""
        for run_id in self.shown_runs():
            info = self._runs.get(run_id)
            if info is None or info.status != "running" or self._loader.is_polling(run_id):
                continue
            self._poll_run(run_id)

    def _poll_run(self, run_id: int) -> None:
        curves = [c for c in self._canvas.curves.values() if c.run == run_id]
        after = {c.key: -1 if c.data.last_step is None else c.data.last_step for c in curves}
        self._loader.poll_run(run_id, after, partial(self._on_new_points, run_id))

    def _on_new_points(self, run_id: int, result: NewPoints) -> None:
        info, series = result
        for key, new in series.items():
            curve = self._canvas.curves.get((run_id, key))
            if curve is not None and curve.data.append_after(new):
                self._canvas.redraw(curve)
        self._on_run_info(info)

    def _on_run_info(self, info: RunInfo) -> None:
        """A run's latest state (new run, new keys or versions, finished)."""
        if (info.project, info.model) != (self._project, self._model):
            return
        known = info.id in self._runs
        before = self._runs.get(info.id)
        self._update_run(info)
        if not known:
            self._chooser.add_run(info)
        keys = self._refresh_keys()
        if not self.shown_metrics():
            default = _default_metric(keys)
            if default:
                self._chooser.set_metrics({default})
        if before is not None and before.versions != info.versions:
            self._canvas.redraw_run_markers(info.id)
        if before is None or before.status != info.status:
            self._show_status()
        self._sync_curves()

    def _on_version(self, version: lmvp.Version) -> None:
        info = self._runs.get(version.run) if version.run is not None else None
        if info is None:  # a run this plot has not listed yet: its info brings the version
            if version.run is not None:
                self._loader.load_run(version.run, self._on_run_info)
            return
        if any(v.number == version.number for v in info.versions):
            return
        versions = (*info.versions, RunVersion(version.number, version.step))
        self._update_run(dataclasses.replace(info, versions=versions))
        self._canvas.redraw_run_markers(info.id)

    def _update_run(self, info: RunInfo) -> None:
        self._runs[info.id] = info
        self._runs = dict(sorted(self._runs.items(), key=lambda kv: -kv[0]))
        self._chooser.relabel_run(info)


def _name_list(names: Sequence[str], most: int = _NAMED_RUNS) -> str:
    """`a, b, c`; past `most` names, the first `most` and how many more."""
    if len(names) <= most:
        return ", ".join(names)
    return f"{', '.join(names[:most])} and {len(names) - most} more"


def _default_metric(keys: Sequence[str]) -> str | None:
    """The metric shown first: `loss`, else the first key that names a loss, else the first."""
    if "loss" in keys:
        return "loss"
    lossy = [k for k in keys if "loss" in k.lower()]
    return lossy[0] if lossy else (keys[0] if keys else None)


__all__ = ["MetricPlot"]
