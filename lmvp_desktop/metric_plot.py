"""The metric plot of the desktop app: one model's runs drawn with pyqtgraph.

`MetricPlot` lists the model's runs and their metric keys (checkable lists), draws one curve
per chosen (run, metric) with a debiased-EMA smoothing slider, log y and x by step or wall
time, and marks each version taken during a shown run on its curve; clicking a marker emits
`version_clicked(number)`. While a shown run is running it polls the server for points past the
last step it has, so the plot follows training live; `on_server_event` adds new versions.

Every server call runs through `run_async`: the UI thread never waits on the network. Results
of an earlier `show_model` that arrive late are dropped (each load has a generation number).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QColor, QHideEvent, QShowEvent, QStandardItem, QStandardItemModel
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QListView,
    QSlider,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

import lmvp
from lmvp.types import RunInfo, RunVersion, Series
from lmvp_desktop.smoothing import FloatArray, SeriesData, debiased_ema, value_at
from lmvp_desktop.tasks import run_async

log = logging.getLogger(__name__)

# Points per series asked of the server (it keeps each bucket's first, last, min and max).
MAX_POINTS = 2000
# How often a running run is asked for new points while the plot is visible.
LIVE_INTERVAL_MS = 2000
# Zoomed in this far (fewer fetched points than this in view), a downsampled curve is fetched
# again for the visible step range only.
_REFINE_BELOW = MAX_POINTS // 4
_REFINE_DELAY_MS = 300
_GRID_ALPHA = 0.25
# Tableau 10: neighbours stay tell-apart-able, also on the dark background.
_PALETTE = (
    *("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f"),
    *("#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"),
)
_RUN_ID_ROLE = Qt.ItemDataRole.UserRole + 1
_TEXT_ROLE = Qt.ItemDataRole.DisplayRole


class XAxis(enum.Enum):
    """What the x axis shows."""

    STEP = "Step"
    RELATIVE = "Relative time (s)"
    WALL = "Wall time"


@dataclass
class _Curve:
    """One (run, metric) drawn: the points fetched so far and the items that draw them."""

    run: int
    key: str
    data: SeriesData
    raw: Any  # pg.PlotDataItem, drawn faint under the smoothed one
    smooth: Any  # pg.PlotDataItem
    markers: Any  # pg.ScatterPlotItem
    color: QColor
    refining: bool = False


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
        self._client = client
        self._project: str | None = None
        self._model: str | None = None
        self._generation = 0
        self._runs: dict[int, RunInfo] = {}  # newest first
        self._curves: dict[tuple[int, str], _Curve] = {}
        self._colors: dict[tuple[int, str], QColor] = {}
        self._fetching: set[tuple[int, str]] = set()
        self._polling: set[int] = set()
        self._pending = 0
        self._weight = 0.0
        self._log_y = False
        self._x_axis = XAxis.STEP
        self._highlighted: int | None = None
        self._runs_chosen = False  # the user picked runs: new runs are not added to the view
        self._filling = False  # the lists are being filled by code, not clicked

        self._metric_model = QStandardItemModel(self)
        self._run_model = QStandardItemModel(self)
        self._metric_model.itemChanged.connect(self._on_metric_checked)
        self._run_model.itemChanged.connect(self._on_run_checked)

        self._plot = pg.PlotWidget()
        item = self._plot.getPlotItem()
        item.showGrid(x=True, y=True, alpha=_GRID_ALPHA)
        item.setDownsampling(auto=True, mode="peak")
        item.setClipToView(True)
        item.setLabel("bottom", XAxis.STEP.value)
        self._legend = item.addLegend(offset=(-10, 10))
        item.getViewBox().sigXRangeChanged.connect(self._schedule_refine)

        self._build_controls()

        self._live_timer = QTimer(self)
        self._live_timer.setInterval(live_interval_ms)
        self._live_timer.timeout.connect(self._poll_live)
        self._refine_timer = QTimer(self)
        self._refine_timer.setSingleShot(True)
        self._refine_timer.setInterval(_REFINE_DELAY_MS)
        self._refine_timer.timeout.connect(self._refine_visible)

    # --- public API ------------------------------------------------------------------------------

    @property
    def plot_item(self) -> Any:
        """The `pg.PlotItem` the curves are drawn in."""
        return self._plot.getPlotItem()

    @property
    def is_loading(self) -> bool:
        """Whether runs or curves are still on their way from the server."""
        return self._pending > 0

    def show_model(self, project: str, model: str) -> None:
        """Show the runs of `project/model`: loads them in the background, then draws the
        newest run's first loss-like metric (until the user chooses others)."""
        self._reset()
        self._project, self._model = project, model
        self._status.setText(f"Loading runs of {project}/{model} …")
        self._start(self._client.runs, f"{project}/{model}", on_done=self._on_runs)

    def shown_metrics(self) -> list[str]:
        """The checked metric keys, in list order."""
        return self._checked(self._metric_model)

    def shown_runs(self) -> list[int]:
        """The checked run ids, newest first."""
        return [int(k) for k in self._checked(self._run_model, role=_RUN_ID_ROLE)]

    def set_metrics(self, keys: Iterable[str]) -> None:
        """Show these metric keys (the others are unchecked) and fetch what is missing."""
        self._set_checked(self._metric_model, set(keys))
        self._sync_curves()

    def set_runs(self, run_ids: Iterable[int]) -> None:
        """Overlay these runs (the others are unchecked) and fetch what is missing."""
        self._runs_chosen = True
        self._set_checked(self._run_model, set(run_ids), role=_RUN_ID_ROLE)
        self._sync_curves()

    def set_smoothing(self, weight: float) -> None:
        """Smooth every curve with a debiased EMA of `weight` (0 .. 0.99; 0 draws raw)."""
        weight = min(max(float(weight), 0.0), 0.99)
        self._weight = weight
        self._slider.blockSignals(True)
        self._slider.setValue(round(weight * 100))
        self._slider.blockSignals(False)
        self._smoothing_label.setText(f"{weight:.2f}")
        for curve in self._curves.values():
            self._redraw(curve)

    def set_log_y(self, on: bool) -> None:
        """Logarithmic y axis on or off."""
        self._log_y = bool(on)
        self._log_box.setChecked(self._log_y)
        self.plot_item.setLogMode(x=False, y=self._log_y)
        for curve in self._curves.values():
            self._redraw_markers(curve)

    def set_x_axis(self, axis: XAxis) -> None:
        """Draw against the step, seconds since each run started, or the date and time."""
        self._x_axis = axis
        self._x_combo.setCurrentIndex(list(XAxis).index(axis))
        bottom = pg.DateAxisItem() if axis is XAxis.WALL else pg.AxisItem("bottom")
        self.plot_item.setAxisItems({"bottom": bottom})
        self.plot_item.showGrid(x=True, y=True, alpha=_GRID_ALPHA)
        self.plot_item.setLabel("bottom", axis.value)
        for curve in self._curves.values():
            self._redraw(curve)
        self.plot_item.enableAutoRange()

    def highlight_version(self, number: int | None) -> None:
        """Mark version `number`'s marker as the selected one (None: no selection)."""
        self._highlighted = number
        for curve in self._curves.values():
            self._redraw_markers(curve)

    def curve(self, run_id: int, key: str) -> Any:
        """The `pg.PlotDataItem` of a shown (run, metric), smoothed as set. Raises KeyError."""
        return self._curves[(run_id, key)].smooth

    def raw_curve(self, run_id: int, key: str) -> Any:
        """The faint, unsmoothed `pg.PlotDataItem` under `curve`. Raises KeyError."""
        return self._curves[(run_id, key)].raw

    def markers(self, run_id: int, key: str) -> Any:
        """The `pg.ScatterPlotItem` of the versions on a shown curve. Raises KeyError."""
        return self._curves[(run_id, key)].markers

    def on_server_event(self, event: lmvp.Event) -> None:
        """Follow the server's event stream: new and deleted versions of the shown model move
        markers; new and finished runs update the run list."""
        if event.project != self._project or event.model != self._model:
            return
        if event.kind == "version.created" and event.version is not None:
            ref = f"{self._project}/{self._model}:{event.version}"
            self._start(self._client.version, ref, on_done=self._on_version, pending=False)
        elif event.kind == "version.deleted" and event.version is not None:
            for run_id, info in list(self._runs.items()):
                kept = tuple(v for v in info.versions if v.number != event.version)
                if kept != info.versions:
                    self._update_run(dataclasses.replace(info, versions=kept))
                    self._redraw_run_markers(run_id)
        elif event.kind in ("run.created", "run.finished") and "run" in event.payload:
            run_id = int(event.payload["run"])
            if run_id in self.shown_runs():
                if run_id not in self._polling:  # its last points and its new status
                    self._poll_run(run_id)
            else:
                self._start(self._client.run, run_id, on_done=self._on_run_info, pending=False)

    # --- Qt events -------------------------------------------------------------------------------

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self._update_live_timer()

    def hideEvent(self, event: QHideEvent) -> None:
        super().hideEvent(event)
        self._update_live_timer()

    # --- building --------------------------------------------------------------------------------

    def _build_controls(self) -> None:
        metric_view = QListView()
        metric_view.setModel(self._metric_model)
        run_view = QListView()
        run_view.setModel(self._run_model)
        for view in (metric_view, run_view):
            view.setEditTriggers(QListView.EditTrigger.NoEditTriggers)
            view.setUniformItemSizes(True)
        side = QWidget()
        side_layout = QVBoxLayout(side)
        side_layout.setContentsMargins(0, 0, 0, 0)
        side_layout.addWidget(QLabel("Metrics"))
        side_layout.addWidget(metric_view, 1)
        side_layout.addWidget(QLabel("Runs"))
        side_layout.addWidget(run_view, 1)

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
        right_layout.addWidget(self._plot, 1)
        right_layout.addWidget(self._status)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(side)
        splitter.addWidget(right)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([180, 620])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(splitter)

    def _reset(self) -> None:
        self._generation += 1
        self._pending = 0
        for curve in list(self._curves.values()):
            self._remove_curve(curve)
        self._runs.clear()
        self._colors.clear()
        self._fetching.clear()
        self._polling.clear()
        self._runs_chosen = False
        self._highlighted = None
        self._filling = True
        self._metric_model.clear()
        self._run_model.clear()
        self._filling = False
        self._update_live_timer()

    # --- loading ---------------------------------------------------------------------------------

    def _start(
        self,
        fn: Any,
        *args: Any,
        on_done: Any,
        on_error: Any = None,
        pending: bool = True,
        **kw: Any,
    ) -> None:
        """`fn(*args, **kw)` in the background; `on_done(result)` unless `show_model` was
        called again meanwhile. `pending` calls count for `is_loading` and `loaded`."""
        generation = self._generation
        if pending:
            self._pending += 1

        def done(result: Any) -> None:
            if generation != self._generation:
                return
            try:
                on_done(result)
            finally:
                if pending:
                    self._finish_pending()

        def failed(exc: BaseException) -> None:
            if generation != self._generation:
                return
            if on_error is not None:
                on_error(exc)
            log.warning("metric plot: %s", exc)
            self._status.setText(str(exc))
            self.failed.emit(str(exc))
            if pending:
                self._finish_pending()

        run_async(fn, *args, on_done=done, on_error=failed, owner=self, **kw)

    def _finish_pending(self) -> None:
        self._pending -= 1
        if self._pending == 0:
            self.loaded.emit()

    def _on_runs(self, runs: list[RunInfo]) -> None:
        self._runs = {r.id: r for r in runs}
        self._filling = True
        for i, info in enumerate(runs):
            item = QStandardItem(_run_label(info))
            item.setCheckable(True)
            item.setData(info.id, _RUN_ID_ROLE)
            item.setCheckState(Qt.CheckState.Checked if i == 0 else Qt.CheckState.Unchecked)
            self._run_model.appendRow(item)
        self._filling = False
        keys = self._refresh_keys()
        default = _default_metric(keys)
        self._set_checked(self._metric_model, {default} if default else set())
        self._status.setText("" if runs else f"{self._project}/{self._model} has no runs yet")
        self._sync_curves()

    def _refresh_keys(self) -> list[str]:
        """Add the keys of every known run to the metric list; returns all keys."""
        present = set(self._checked(self._metric_model, every=True))
        keys = sorted({k.key for info in self._runs.values() for k in info.keys})
        self._filling = True
        for key in keys:
            if key not in present:
                item = QStandardItem(key)
                item.setCheckable(True)
                self._metric_model.appendRow(item)
        self._metric_model.sort(0)
        self._filling = False
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
        for pair in [p for p in self._curves if p not in wanted]:
            self._remove_curve(self._curves.pop(pair))
        missing: dict[int, list[str]] = {}
        for run_id, key in sorted(wanted - set(self._curves) - self._fetching):
            missing.setdefault(run_id, []).append(key)
        for run_id, run_keys in missing.items():
            self._fetching.update((run_id, k) for k in run_keys)
            self._start(
                self._client.metrics,
                run_id,
                keys=run_keys,
                max_points=MAX_POINTS,
                on_done=partial(self._on_series, run_id, run_keys),
            )
        self._update_live_timer()

    def _on_series(self, run_id: int, asked: list[str], series: dict[str, Series]) -> None:
        self._fetching.difference_update((run_id, k) for k in asked)
        wanted_keys, wanted_runs = set(self.shown_metrics()), set(self.shown_runs())
        for key in asked:
            if key not in series or key not in wanted_keys or run_id not in wanted_runs:
                continue
            if (run_id, key) not in self._curves:
                self._curves[(run_id, key)] = self._add_curve(run_id, series[key])
        self.plot_item.enableAutoRange()

    def _add_curve(self, run_id: int, series: Series) -> _Curve:
        pair = (run_id, series.key)
        color = self._colors.setdefault(pair, QColor(_PALETTE[len(self._colors) % len(_PALETTE)]))
        faint = QColor(color)
        faint.setAlpha(60)
        name = f"{self._runs[run_id].name} · {series.key}"
        raw = pg.PlotDataItem(pen=pg.mkPen(faint, width=1), connect="finite")
        smooth = pg.PlotDataItem(pen=pg.mkPen(color, width=2), connect="finite", name=name)
        markers = pg.ScatterPlotItem(
            hoverable=True,
            tip=lambda x, y, data: f"v{data}",
            hoverSize=14,
            hoverPen=pg.mkPen("w", width=2),
        )
        markers.setZValue(10)
        markers.sigClicked.connect(self._on_marker_clicked)
        item = self.plot_item
        item.addItem(raw)
        item.addItem(smooth)
        item.addItem(markers)
        self._legend.removeItem(raw)  # one legend row per curve: the smoothed one
        curve = _Curve(
            run=run_id,
            key=series.key,
            data=SeriesData.from_series(series),
            raw=raw,
            smooth=smooth,
            markers=markers,
            color=color,
        )
        self._redraw(curve)
        return curve

    def _remove_curve(self, curve: _Curve) -> None:
        for graphics in (curve.raw, curve.smooth, curve.markers):
            self.plot_item.removeItem(graphics)
        self._legend.removeItem(curve.smooth)

    # --- drawing ---------------------------------------------------------------------------------

    def _x_of(self, curve: _Curve, steps: FloatArray) -> FloatArray:
        if self._x_axis is XAxis.STEP:
            return steps
        wall = curve.data.wall_time_at(steps)
        if self._x_axis is XAxis.RELATIVE:
            return wall - self._runs[curve.run].started_at.timestamp()
        return wall

    def _smoothed(self, curve: _Curve) -> FloatArray:
        return debiased_ema(curve.data.values, self._weight)

    def _redraw(self, curve: _Curve) -> None:
        x = self._x_of(curve, curve.data.steps)
        curve.smooth.setData(x, self._smoothed(curve), connect="finite")
        if self._weight > 0:
            curve.raw.setData(x, curve.data.values, connect="finite")
            curve.raw.show()
        else:
            curve.raw.hide()
        self._redraw_markers(curve)

    def _redraw_markers(self, curve: _Curve) -> None:
        """One marker per version of the curve's run, on the curve (as drawn) at its step."""
        info = self._runs.get(curve.run)
        versions = [v for v in info.versions if v.step is not None] if info else []
        smoothed = self._smoothed(curve)
        spots = []
        for v in sorted(versions, key=lambda v: v.number):
            assert v.step is not None
            y = value_at(curve.data.steps, smoothed, v.step)
            if self._log_y:  # a ScatterPlotItem has no log mode of its own
                y = math.log10(y) if y > 0 else math.nan
            if not math.isfinite(y):
                continue
            x = float(self._x_of(curve, np.array([float(v.step)]))[0])
            selected = v.number == self._highlighted
            spots.append(
                {
                    "pos": (x, y),
                    "data": v.number,
                    "size": 15 if selected else 9,
                    "symbol": "star" if selected else "o",
                    "brush": pg.mkBrush(255, 215, 0) if selected else pg.mkBrush(curve.color),
                    "pen": pg.mkPen("w", width=1.5),
                }
            )
        curve.markers.setData(spots)

    def _redraw_run_markers(self, run_id: int) -> None:
        for curve in self._curves.values():
            if curve.run == run_id:
                self._redraw_markers(curve)

    def _on_marker_clicked(self, _scatter: Any, points: Sequence[Any], *_: Any) -> None:
        if len(points):
            self.version_clicked.emit(int(points[0].data()))

    # --- zoom: more detail for the visible range -------------------------------------------------

    def _schedule_refine(self, *_: Any) -> None:
        if self._x_axis is XAxis.STEP and any(c.data.downsampled for c in self._curves.values()):
            self._refine_timer.start()

    def _refine_visible(self) -> None:
        """Fetch downsampled curves again for the visible steps when few points are in view."""
        low, high = self.plot_item.getViewBox().viewRange()[0]
        if self._x_axis is not XAxis.STEP or not math.isfinite(low) or not math.isfinite(high):
            return
        for curve in self._curves.values():
            if curve.refining or not curve.data.needs_detail(low, high, _REFINE_BELOW):
                continue
            curve.refining = True
            step_min, step_max = max(0, math.floor(low)), math.ceil(high)
            self._start(
                self._client.metrics,
                curve.run,
                keys=[curve.key],
                max_points=MAX_POINTS,
                step_min=step_min,
                step_max=step_max,
                pending=False,
                on_done=partial(self._on_refined, curve, step_min, step_max),
                on_error=lambda _exc, curve=curve: setattr(curve, "refining", False),
            )

    def _on_refined(self, curve: _Curve, low: int, high: int, series: dict[str, Series]) -> None:
        curve.refining = False
        detail = series.get(curve.key)
        if detail is not None and self._curves.get((curve.run, curve.key)) is curve:
            curve.data.replace_range(low, high, detail)
            self._redraw(curve)

    # --- live ------------------------------------------------------------------------------------

    def _update_live_timer(self) -> None:
        live = self.isVisible() and any(
            self._runs[r].status == "running" for r in self.shown_runs() if r in self._runs
        )
        if live and not self._live_timer.isActive():
            self._live_timer.start()
        elif not live:
            self._live_timer.stop()

    def _poll_live(self) -> None:
        """Ask each shown running run for its points past the last step drawn."""
        for run_id in self.shown_runs():
            info = self._runs.get(run_id)
            if info is None or info.status != "running" or run_id in self._polling:
                continue
            self._poll_run(run_id)

    def _poll_run(self, run_id: int) -> None:
        curves = [c for c in self._curves.values() if c.run == run_id]
        after = {c.key: -1 if c.data.last_step is None else c.data.last_step for c in curves}
        self._polling.add(run_id)
        self._start(
            _fetch_new_points,
            self._client,
            run_id,
            after,
            pending=False,
            on_done=partial(self._on_new_points, run_id),
            on_error=lambda _exc: self._polling.discard(run_id),
        )

    def _on_new_points(self, run_id: int, result: tuple[RunInfo, dict[str, Series]]) -> None:
        self._polling.discard(run_id)
        info, series = result
        for key, new in series.items():
            curve = self._curves.get((run_id, key))
            if curve is not None and curve.data.append_after(new):
                self._redraw(curve)
        self._on_run_info(info)

    def _on_run_info(self, info: RunInfo) -> None:
        """A run's latest state (new run, new keys or versions, finished)."""
        if (info.project, info.model) != (self._project, self._model):
            return
        known = info.id in self._runs
        before = self._runs.get(info.id)
        self._update_run(info)
        if not known:
            self._filling = True
            item = QStandardItem(_run_label(info))
            item.setCheckable(True)
            item.setData(info.id, _RUN_ID_ROLE)
            follow = not self._runs_chosen
            item.setCheckState(Qt.CheckState.Checked if follow else Qt.CheckState.Unchecked)
            self._run_model.insertRow(0, item)
            self._filling = False
        keys = self._refresh_keys()
        if not self.shown_metrics():
            default = _default_metric(keys)
            if default:
                self._set_checked(self._metric_model, {default})
        if before is not None and before.versions != info.versions:
            self._redraw_run_markers(info.id)
        self._sync_curves()

    def _on_version(self, version: lmvp.Version) -> None:
        info = self._runs.get(version.run) if version.run is not None else None
        if info is None:  # a run this plot has not listed yet: its info brings the version
            if version.run is not None:
                self._start(self._client.run, version.run, on_done=self._on_run_info, pending=False)
            return
        if any(v.number == version.number for v in info.versions):
            return
        versions = (*info.versions, RunVersion(version.number, version.step))
        self._update_run(dataclasses.replace(info, versions=versions))
        self._redraw_run_markers(info.id)

    def _update_run(self, info: RunInfo) -> None:
        self._runs[info.id] = info
        self._runs = dict(sorted(self._runs.items(), key=lambda kv: -kv[0]))
        for row in range(self._run_model.rowCount()):
            item = self._run_model.item(row)
            if item.data(_RUN_ID_ROLE) == info.id:
                self._filling = True
                item.setText(_run_label(info))
                self._filling = False

    # --- the checkable lists ---------------------------------------------------------------------

    def _on_metric_checked(self, _item: QStandardItem) -> None:
        if not self._filling:
            self._sync_curves()

    def _on_run_checked(self, _item: QStandardItem) -> None:
        if not self._filling:
            self._runs_chosen = True
            self._sync_curves()

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


def _fetch_new_points(
    client: lmvp.Client, run_id: int, after: dict[str, int]
) -> tuple[RunInfo, dict[str, Series]]:
    """The run's latest state and, for each key in `after`, its points past that step (runs on
    the thread pool)."""
    info = client.run(run_id)
    if not after:
        return info, {}
    series = client.metrics(
        run_id, keys=sorted(after), max_points=MAX_POINTS, step_min=min(after.values()) + 1
    )
    return info, series


def _default_metric(keys: Sequence[str]) -> str | None:
    """The metric shown first: `loss`, else the first key that names a loss, else the first."""
    if "loss" in keys:
        return "loss"
    lossy = [k for k in keys if "loss" in k.lower()]
    return lossy[0] if lossy else (keys[0] if keys else None)


def _run_label(info: RunInfo) -> str:
    return f"{info.name} ({info.status})"


__all__ = ["LIVE_INTERVAL_MS", "MAX_POINTS", "MetricPlot", "XAxis"]
