"""The drawing of the metric plot: `PlotCanvas`, a pyqtgraph plot of (run, metric) curves.

Each `Curve` is drawn smoothed with a debiased EMA (the raw one faint under it once smoothing is
on), against the step, the seconds since its run started or the wall time (`XAxis`), with a log
y axis on demand, and with a marker on the curve as drawn for each version taken during the run;
clicking a marker emits `version_clicked(number)`.

The x axis does not follow every new point (it rescaled about every second during training,
so markers moved under the cursor): while the view is at the end of the data it grows in
steps (to the next round bound about a fifth past the last point, so it changes rarely), and
once the user pans or zooms away from the end it stays where they left it until they come
back to the end or ask for the whole view again (`follow`).

The canvas draws; which curves exist and the points in them are `MetricPlot`'s to decide.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QColor

from lmvp.types import RunInfo, Series
from lmvp_desktop.smoothing import FloatArray, SeriesData, debiased_ema, value_at

_GRID_ALPHA = 0.25
_Y_AXIS_WIDTH = 64  # pixels: room for "0.000123" or "1e-05" in the default font
# Tableau 10: neighbours stay tell-apart-able, also on the dark background.
_PALETTE = (
    *("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f"),
    *("#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"),
)


class XAxis(enum.Enum):
    """What the x axis shows."""

    STEP = "Step"
    RELATIVE = "Relative time (s)"
    WALL = "Wall time"


@dataclass
class Curve:
    """One (run, metric) drawn: the points fetched so far and the items that draw them."""

    run: int
    key: str
    data: SeriesData
    raw: Any  # pg.PlotDataItem, drawn faint under the smoothed one
    smooth: Any  # pg.PlotDataItem
    markers: Any  # pg.ScatterPlotItem
    color: QColor
    refining: bool = False


class PlotCanvas(QObject):
    """The curves of a `MetricPlot` in a `pg.PlotWidget` (`widget`). See the module docstring.

    `curves` holds the curves drawn, by (run id, metric key); `runs()` gives the runs they belong
    to (their names, start times and versions).
    """

    version_clicked = Signal(int)  # the version number of a clicked marker

    def __init__(
        self, runs: Callable[[], Mapping[int, RunInfo]], parent: QObject | None = None
    ) -> None:
        super().__init__(parent)
        self._runs = runs
        self.curves: dict[tuple[int, str], Curve] = {}
        self._colors: dict[tuple[int, str], QColor] = {}
        self._weight = 0.0
        self._log_y = False
        self._x_axis = XAxis.STEP
        self._highlighted: int | None = None

        self.widget = pg.PlotWidget()
        item = self.widget.getPlotItem()
        item.showGrid(x=True, y=True, alpha=_GRID_ALPHA)
        item.setDownsampling(auto=True, mode="peak")
        item.setClipToView(True)
        item.setLabel("bottom", XAxis.STEP.value)
        self._legend = item.addLegend(offset=(-10, 10))
        # Whether the x range follows the data's end (in steps); see the module docstring.
        self.following = True
        view = item.getViewBox()
        view.sigRangeChangedManually.connect(self._range_changed_by_user)
        view.sigStateChanged.connect(self._state_changed)
        item.enableAutoRange(x=False, y=True)
        # A fixed width for the y axis: its labels growing (0.5 → 0.0625) would shift the
        # plot sideways and every marker with it.
        item.getAxis("left").setWidth(_Y_AXIS_WIDTH)

    @property
    def plot_item(self) -> Any:
        """The `pg.PlotItem` the curves are drawn in."""
        return self.widget.getPlotItem()

    @property
    def x_axis(self) -> XAxis:
        """What the x axis shows."""
        return self._x_axis

    def set_smoothing(self, weight: float) -> None:
        """Redraw every curve smoothed with a debiased EMA of `weight` (0 draws raw)."""
        self._weight = weight
        for curve in self.curves.values():
            self.redraw(curve)

    def set_log_y(self, on: bool) -> None:
        """Logarithmic y axis on or off."""
        self._log_y = on
        self.plot_item.setLogMode(x=False, y=self._log_y)
        for curve in self.curves.values():
            self.redraw_markers(curve)

    def set_x_axis(self, axis: XAxis) -> None:
        """Draw against the step, seconds since each run started, or the date and time."""
        self._x_axis = axis
        bottom = pg.DateAxisItem() if axis is XAxis.WALL else pg.AxisItem("bottom")
        self.plot_item.setAxisItems({"bottom": bottom})
        self.plot_item.showGrid(x=True, y=True, alpha=_GRID_ALPHA)
        self.plot_item.setLabel("bottom", axis.value)
        for curve in self.curves.values():
            self.redraw(curve)
        self.follow()

    def follow(self) -> None:
        """Show all the data again and follow its end (in steps) from now on."""
        self.following = True
        self.plot_item.enableAutoRange(x=False, y=True)
        self.fit_x(force=True)

    def data_x_range(self) -> tuple[float, float] | None:
        """The smallest and largest x of the curves drawn (None without points)."""
        lows, highs = [], []
        for curve in self.curves.values():
            x = self._x_of(curve, curve.data.steps)
            finite = x[np.isfinite(x)] if len(x) else x
            if len(finite):
                lows.append(float(finite.min()))
                highs.append(float(finite.max()))
        return (min(lows), max(highs)) if lows else None

    def fit_x(self, *, force: bool = False) -> None:
        """While following, grow the x range to a round bound past the data's end when the
        data reached the range's end (or at once with `force`); otherwise leave it."""
        if not self.following:
            return
        data = self.data_x_range()
        if data is None:
            return
        low, high = data
        view = self.plot_item.getViewBox()
        shown_low, shown_high = view.viewRange()[0]
        if not force and shown_low <= low and high <= shown_high and self._fitted:
            return
        span = max(high - low, 1e-9)
        self._fitted = True
        self._setting_range = True
        try:
            view.setXRange(low, low + _round_up(span * 1.2), padding=0)
        finally:
            self._setting_range = False

    _fitted = False
    _setting_range = False

    def _range_changed_by_user(self, *_: Any) -> None:
        """The user panned or zoomed: follow only if the view still shows the data's end."""
        data = self.data_x_range()
        shown_high = self.plot_item.getViewBox().viewRange()[0][1]
        self.following = data is None or shown_high >= data[1]

    def _state_changed(self, *_: Any) -> None:
        # pyqtgraph's "A" (auto range) button turns x auto range on: that is "show it all".
        view = self.plot_item.getViewBox()
        if not self._setting_range and view.autoRangeEnabled()[0]:
            view.enableAutoRange(x=False)
            self.follow()

    def highlight_version(self, number: int | None) -> None:
        """Mark version `number`'s marker as the selected one (None: no selection)."""
        self._highlighted = number
        for curve in self.curves.values():
            self.redraw_markers(curve)

    def reset(self) -> None:
        """Forget the colours given so far and the highlighted version, for another model."""
        self._colors.clear()
        self._highlighted = None
        self.following = True
        self._fitted = False

    def add_curve(self, run_id: int, series: Series) -> Curve:
        """Draw `series` of run `run_id` (a known run) and return its curve, for the caller to
        put in `curves`. A (run, metric) drawn before gets the colour it had."""
        pair = (run_id, series.key)
        color = self._colors.setdefault(pair, QColor(_PALETTE[len(self._colors) % len(_PALETTE)]))
        faint = QColor(color)
        faint.setAlpha(60)
        name = f"{self._runs()[run_id].name} · {series.key}"
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
        curve = Curve(
            run=run_id,
            key=series.key,
            data=SeriesData.from_series(series),
            raw=raw,
            smooth=smooth,
            markers=markers,
            color=color,
        )
        self.redraw(curve)
        return curve

    def remove_curve(self, curve: Curve) -> None:
        """Take the curve's items off the plot (the caller takes it out of `curves`)."""
        for graphics in (curve.raw, curve.smooth, curve.markers):
            self.plot_item.removeItem(graphics)
        self._legend.removeItem(curve.smooth)

    def redraw(self, curve: Curve) -> None:
        """Draw the curve's points again, as smoothed, on the x axis chosen, with its markers."""
        x = self._x_of(curve, curve.data.steps)
        curve.smooth.setData(x, self._smoothed(curve), connect="finite")
        if self._weight > 0:
            curve.raw.setData(x, curve.data.values, connect="finite")
            curve.raw.show()
        else:
            curve.raw.hide()
        self.redraw_markers(curve)
        self.fit_x()

    def redraw_markers(self, curve: Curve) -> None:
        """One marker per version of the curve's run, on the curve (as drawn) at its step."""
        info = self._runs().get(curve.run)
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

    def redraw_run_markers(self, run_id: int) -> None:
        """Redraw the markers of every curve of run `run_id` (its versions changed)."""
        for curve in self.curves.values():
            if curve.run == run_id:
                self.redraw_markers(curve)

    # --- helpers ---------------------------------------------------------------------------------

    def _x_of(self, curve: Curve, steps: FloatArray) -> FloatArray:
        if self._x_axis is XAxis.STEP:
            return steps
        wall = curve.data.wall_time_at(steps)
        if self._x_axis is XAxis.RELATIVE:
            return wall - self._runs()[curve.run].started_at.timestamp()
        return wall

    def _smoothed(self, curve: Curve) -> FloatArray:
        return debiased_ema(curve.data.values, self._weight)

    def _on_marker_clicked(self, _scatter: Any, points: Sequence[Any], *_: Any) -> None:
        if len(points):
            self.version_clicked.emit(int(points[0].data()))


def _round_up(value: float) -> float:
    """The smallest of 1, 1.5, 2, 2.5, 3, 4, 5, 6, 8 times a power of ten that is >= `value`."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for factor in (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0):
        if factor * power >= value * (1 - 1e-12):
            return factor * power
    return 10.0 * power


__all__ = ["Curve", "PlotCanvas", "XAxis"]
