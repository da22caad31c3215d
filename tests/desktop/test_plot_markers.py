"""Checkpoint markers stay put while a run's curve grows (issue 18: the x axis rescaled about
every second during training, so markers moved under the cursor and clicks missed them).
Offscreen, on the app's own `PlotCanvas`: 100 live updates (10 s of training at 10 a second)
are drawn in a row; a marker's x in pixels is measured on the widget after each."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

from PySide6.QtCore import QPointF
from pytestqt.qtbot import QtBot

from lmvp.types import RunInfo, RunVersion, Series
from lmvp_desktop.plot_canvas import PlotCanvas

NOW = datetime.now(UTC)


def _run() -> RunInfo:
    return RunInfo(
        1,
        "p",
        "m",
        "run",
        "host",
        {},
        "running",
        "me",
        NOW,
        None,
        NOW,
        0,
        0,
        (),
        (RunVersion(1, 100), RunVersion(2, 200)),
    )


def _series(first: int, last: int) -> Series:
    steps = list(range(first, last + 1))
    values = [1.0 / (1 + s / 100) for s in steps]
    return Series("loss", steps, values, [float(s) for s in steps], len(steps), False)


def _marker_px(canvas: PlotCanvas, number: int) -> float:
    curve = canvas.curves[(1, "loss")]
    point = next(p for p in curve.markers.points() if p.data() == number)
    view = canvas.plot_item.getViewBox()
    scene = view.mapViewToScene(QPointF(point.pos().x(), point.pos().y()))
    return float(canvas.widget.mapFromScene(scene).x())


def _canvas(qtbot: QtBot) -> PlotCanvas:
    run = _run()
    canvas = PlotCanvas(lambda: {1: run})
    qtbot.addWidget(canvas.widget)
    canvas.widget.resize(900, 400)
    canvas.widget.show()
    canvas.curves[(1, "loss")] = canvas.add_curve(1, _series(0, 300))
    qtbot.wait(20)
    return canvas


def _grow(
    canvas: PlotCanvas, qtbot: QtBot, updates: int = 100, per_update: int = 10
) -> list[float]:
    """Append `per_update` steps `updates` times (a live poll each), returning the x range's
    upper bound after each."""
    curve = canvas.curves[(1, "loss")]
    bounds = []
    for _ in range(updates):
        last = int(curve.data.steps[-1])
        assert curve.data.append_after(_series(last + 1, last + per_update))
        canvas.redraw(curve)
        qtbot.wait(1)
        bounds.append(canvas.plot_item.getViewBox().viewRange()[0][1])
    return bounds


def test_a_marker_stays_within_1_px_while_the_run_grows_when_the_view_does_not_follow(
    qtbot: QtBot,
) -> None:
    canvas = _canvas(qtbot)
    view = canvas.plot_item.getViewBox()
    # The user zooms in on the first markers (as a drag or the wheel does).
    view.setXRange(50, 250, padding=0)
    view.sigRangeChangedManually.emit(view.state["mouseEnabled"])
    assert not canvas.following
    before = _marker_px(canvas, 1), _marker_px(canvas, 2)

    _grow(canvas, qtbot)

    after = _marker_px(canvas, 1), _marker_px(canvas, 2)
    assert abs(after[0] - before[0]) <= 1 and abs(after[1] - before[1]) <= 1, (before, after)
    assert view.viewRange()[0] == [50, 250]


def test_while_following_the_end_the_axis_grows_in_a_few_steps_not_at_every_point(
    qtbot: QtBot,
) -> None:
    canvas = _canvas(qtbot)
    assert canvas.following
    bounds = _grow(canvas, qtbot)  # from step 300 to 1300
    data_end = canvas.data_x_range()
    assert data_end is not None and bounds[-1] >= data_end[1]  # the end is in view
    changes = sum(1 for a, b in itertools.pairwise(bounds) if a != b)
    assert changes <= 6, f"the x axis changed {changes} times in 100 updates"
    # Between two changes a marker does not move.
    px, stable = _marker_px(canvas, 1), 0
    for _ in range(5):
        before = canvas.plot_item.getViewBox().viewRange()[0][1]
        _grow(canvas, qtbot, updates=1, per_update=1)
        if canvas.plot_item.getViewBox().viewRange()[0][1] == before:
            assert abs(_marker_px(canvas, 1) - px) <= 1
            stable += 1
        px = _marker_px(canvas, 1)
    assert stable >= 4

    # Panning back to the end follows again; the whole view comes back with follow().
    view = canvas.plot_item.getViewBox()
    view.setXRange(0, 100, padding=0)
    view.sigRangeChangedManually.emit(view.state["mouseEnabled"])
    assert not canvas.following
    canvas.follow()
    assert canvas.following and view.viewRange()[0][0] == 0
