"""The metric plot against a real server: curves hold what was logged (NaN and infinities
included), TensorBoard's debiased EMA, log y and wall-time x, checkpoint markers on the curve that
emit their version when clicked, new versions from the event stream, a running run followed
live, more detail fetched when zoomed in, and a non-blank offscreen rendering."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyqtgraph as pg
import pytest
from PySide6.QtCore import QPoint, QPointF, Qt
from pytestqt.qtbot import QtBot

import lmvp
from lmvp.types import MetricPoint, Series
from lmvp_desktop.metric_plot import MetricPlot
from lmvp_desktop.plot_canvas import XAxis
from lmvp_desktop.smoothing import SeriesData, debiased_ema, value_at
from tests.support import Deployment, unique

STEPS = 300


def loss_at(step: int) -> float:
    if step == 40:
        return math.nan
    if step == 41:
        return math.inf
    return 2.0 / (1 + step / 20) + 0.1 * math.sin(step)


@pytest.fixture(scope="module")
def client(sqlite_deployment: Deployment) -> Iterator[lmvp.Client]:
    user = sqlite_deployment.user("plots")
    with lmvp.Client(sqlite_deployment.url, user.token) as c:
        yield c


@pytest.fixture
def model(client: lmvp.Client) -> str:
    return f"{client.create_project(unique('plots')).name}/net"


@pytest.fixture
def plot(qtbot: QtBot, client: lmvp.Client) -> MetricPlot:
    widget = MetricPlot(client, live_interval_ms=100)
    qtbot.addWidget(widget)
    widget.resize(900, 500)
    widget.show()
    return widget


def log_points(client: lmvp.Client, run: int, steps: range) -> None:
    points = []
    for s in steps:
        points.append(MetricPoint("loss", s, loss_at(s)))
        points.append(MetricPoint("acc", s, s / STEPS))
    client.log_metrics(run, points)


def publish(client: lmvp.Client, model: str, tmp_path: Path, run: int, step: int) -> int:
    path = tmp_path / f"ckpt-{step}.bin"
    path.write_bytes(f"weights at {step}".encode())
    return client.update(model, path, run=run, step=step).number


def show(qtbot: QtBot, plot: MetricPlot, model: str) -> None:
    project, name = model.split("/")
    with qtbot.waitSignal(plot.loaded, timeout=10_000):
        plot.show_model(project, name)


def reference_ema(values: list[float], weight: float) -> list[float]:
    """TensorBoard's smoothing, written out the way its source does it."""
    last, n, out = 0.0, 0, []
    constant = all(v == values[0] for v in values)
    for v in values:
        if constant or not math.isfinite(v):
            out.append(v)
            continue
        last = last * weight + (1 - weight) * v
        n += 1
        out.append(last / (1 - weight**n))
    return out


def assert_same(actual: object, expected: object) -> None:
    np.testing.assert_allclose(
        np.asarray(actual, dtype=float), np.asarray(expected, dtype=float), rtol=1e-9
    )


# --- curves ---------------------------------------------------------------------------------------


def test_draws_the_newest_runs_loss_as_logged_and_overlays_chosen_runs(
    qtbot: QtBot, plot: MetricPlot, client: lmvp.Client, model: str
) -> None:
    older = client.create_run(model, name="older").id
    log_points(client, older, range(100))
    newer = client.create_run(model, name="newer").id
    log_points(client, newer, range(STEPS))
    show(qtbot, plot, model)

    assert plot.shown_runs() == [newer] and plot.shown_metrics() == ["loss"]
    curve = plot.curve(newer, "loss")
    assert_same(curve.xData, range(STEPS))
    assert_same(curve.yData, [loss_at(s) for s in range(STEPS)])  # NaN and inf kept
    assert curve.opts["connect"] == "finite"
    assert curve.opts["autoDownsample"] and curve.opts["downsampleMethod"] == "peak"
    assert curve.opts["clipToView"]

    with qtbot.waitSignal(plot.loaded, timeout=10_000):
        plot.set_runs([older, newer])
    with qtbot.waitSignal(plot.loaded, timeout=10_000):
        plot.set_metrics(["loss", "acc"])
    assert_same(plot.curve(older, "acc").yData, [s / STEPS for s in range(100)])
    colors = {
        plot.curve(r, k).opts["pen"].color().name() for r in (older, newer) for k in ("loss", "acc")
    }
    assert len(colors) == 4
    assert len(plot.plot_item.legend.items) == 4

    plot.set_metrics(["acc"])
    with pytest.raises(KeyError):
        plot.curve(newer, "loss")


def test_showing_the_model_already_shown_draws_its_curves_again(
    qtbot: QtBot, plot: MetricPlot, client: lmvp.Client, model: str
) -> None:
    run = client.create_run(model, name="again").id
    log_points(client, run, range(STEPS))
    show(qtbot, plot, model)
    # A notification's "open" shows the model that is on screen already.
    show(qtbot, plot, model)
    curve = plot.curve(run, "loss")
    assert curve in plot.plot_item.listDataItems()
    assert_same(curve.xData, range(STEPS))
    assert len(plot.plot_item.legend.items) == 1


def test_renders_offscreen_into_a_non_blank_image(
    qtbot: QtBot, plot: MetricPlot, client: lmvp.Client, model: str
) -> None:
    run = client.create_run(model).id
    log_points(client, run, range(STEPS))
    show(qtbot, plot, model)
    plot.set_log_y(True)  # zeros, NaN and inf must not break drawing on a log axis either
    image = plot.grab().toImage()
    area = plot._canvas.widget.geometry()
    center = plot._canvas.widget.mapTo(plot, area.center() - area.topLeft())
    background = image.pixelColor(center.x(), 5)
    inside = {
        image.pixelColor(x, y).name()
        for x in range(center.x() - 200, center.x() + 200, 3)
        for y in range(center.y() - 150, center.y() + 150, 3)
    }
    assert len(inside) > 3, "the plot area is blank"
    assert any(name != background.name() for name in inside)


# --- smoothing, log y, x axis ----------------------------------------------------------------


def test_debiased_ema_matches_tensorboard() -> None:
    values = [1.0, 3.0, math.nan, 2.0, math.inf, 5.0, -1.0, 4.0] * 300
    for weight in (0.0, 0.01, 0.5, 0.6, 0.9, 0.99):
        assert_same(debiased_ema(values, weight), reference_ema(values, weight))
    assert list(debiased_ema([2.0] * 5, 0.9)) == [2.0] * 5
    assert debiased_ema([], 0.5).size == 0
    with pytest.raises(ValueError):
        debiased_ema([1.0], 1.0)
    assert value_at([0, 10, 20], [0.0, math.nan, 2.0], 10) == 1.0
    assert math.isnan(value_at([0], [math.nan], 0))


def test_smoothing_log_y_and_time_axes_switch(
    qtbot: QtBot, plot: MetricPlot, client: lmvp.Client, model: str
) -> None:
    info = client.create_run(model)
    log_points(client, info.id, range(STEPS))
    show(qtbot, plot, model)
    logged = [loss_at(s) for s in range(STEPS)]
    assert not plot.raw_curve(info.id, "loss").isVisible()

    plot._slider.setValue(60)  # as the user drags it
    assert_same(plot.curve(info.id, "loss").yData, reference_ema(logged, 0.6))
    raw = plot.raw_curve(info.id, "loss")
    assert raw.isVisible() and raw.opts["pen"].color().alpha() < 100
    assert_same(raw.yData, logged)

    plot._log_box.setChecked(True)
    assert plot.curve(info.id, "loss").opts["logMode"] == [False, True]
    assert plot.plot_item.getAxis("left").logMode

    wall = client.metrics(info.id, keys=["loss"])["loss"].wall_times
    plot.set_x_axis(XAxis.WALL)
    assert isinstance(plot.plot_item.getAxis("bottom"), pg.DateAxisItem)
    assert_same(plot.curve(info.id, "loss").xData, wall)
    plot._x_combo.setCurrentIndex(list(XAxis).index(XAxis.RELATIVE))
    assert not isinstance(plot.plot_item.getAxis("bottom"), pg.DateAxisItem)
    assert_same(plot.curve(info.id, "loss").xData, np.asarray(wall) - info.started_at.timestamp())
    plot.set_x_axis(XAxis.STEP)
    assert_same(plot.curve(info.id, "loss").xData, range(STEPS))


# --- checkpoint markers ------------------------------------------------------------------------


def marker_spots(plot: MetricPlot, run: int) -> dict[int, tuple[float, float]]:
    return {p.data(): (p.pos().x(), p.pos().y()) for p in plot.markers(run, "loss").points()}


def test_markers_sit_on_the_curve_and_clicking_one_emits_its_version(
    qtbot: QtBot, plot: MetricPlot, client: lmvp.Client, model: str, tmp_path: Path
) -> None:
    run = client.create_run(model).id
    log_points(client, run, range(STEPS))
    v1 = publish(client, model, tmp_path, run, 100)
    v2 = publish(client, model, tmp_path, run, 250)
    show(qtbot, plot, model)

    assert marker_spots(plot, run) == {v1: (100, loss_at(100)), v2: (250, loss_at(250))}
    assert plot.markers(run, "loss").opts["tip"](x=100, y=1, data=v2) == f"v{v2}"
    plot.set_smoothing(0.9)  # markers stay on the curve as drawn
    smoothed = reference_ema([loss_at(s) for s in range(STEPS)], 0.9)
    assert marker_spots(plot, run)[v2] == pytest.approx((250, smoothed[250]))
    plot.set_smoothing(0)

    # A real mouse click on the marker's place on screen.
    view = plot._canvas.widget
    view_box = plot.plot_item.getViewBox()
    qtbot.waitUntil(lambda: view_box.viewRange()[0][1] >= STEPS - 1)  # auto range applied
    scene_pos = view_box.mapViewToScene(QPointF(250, loss_at(250)))
    where = view.mapFromScene(scene_pos)
    with qtbot.waitSignal(plot.version_clicked, timeout=2000) as clicked:
        qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(where))
    assert clicked.args == [v2]

    plot.highlight_version(v1)
    sizes = {p.data(): p.size() for p in plot.markers(run, "loss").points()}
    assert sizes[v1] > sizes[v2]


def test_a_version_created_event_adds_its_marker(
    qtbot: QtBot, plot: MetricPlot, client: lmvp.Client, model: str, tmp_path: Path
) -> None:
    run = client.create_run(model).id
    log_points(client, run, range(STEPS))
    client.finish_run(run)
    show(qtbot, plot, model)
    assert marker_spots(plot, run) == {}

    number = publish(client, model, tmp_path, run, 200)
    project, name = model.split("/")
    (event,) = [e for e in client.history(project, model=name) if e.kind == "version.created"]
    plot.on_server_event(event)
    qtbot.waitUntil(lambda: number in marker_spots(plot, run), timeout=5000)
    assert marker_spots(plot, run)[number] == (200, loss_at(200))


def test_series_data_appends_new_steps_and_takes_detail_for_a_range() -> None:
    def series(steps: list[int], count: int | None = None) -> Series:
        n = count or len(steps)
        return Series(
            "loss", steps, [float(s) for s in steps], [1e9 + s for s in steps], n, n > len(steps)
        )

    data = SeriesData.from_series(series([0, 50, 99], count=100))
    assert data.downsampled and data.last_step == 99
    assert not data.append_after(series([10, 99]))  # nothing past the last step
    assert data.append_after(series([99, 100, 101]))
    assert list(data.steps) == [0, 50, 99, 100, 101] and data.count == 102
    assert_same(data.wall_time_at(np.array([25.0])), [1e9 + 25])

    assert data.needs_detail(40, 60, enough=10)
    assert not data.needs_detail(200, 300, enough=10)  # past the end
    data.replace_range(40, 60, series(list(range(40, 61))))
    assert list(data.steps) == [0, *range(40, 61), 99, 100, 101]
    assert not data.needs_detail(45, 55, enough=100)  # held in full already
    assert data.needs_detail(0, 30, enough=10)


# --- live and zoom ------------------------------------------------------------------------------


def test_follows_a_running_run_until_it_finishes(
    qtbot: QtBot, plot: MetricPlot, client: lmvp.Client, model: str, tmp_path: Path
) -> None:
    run = client.create_run(model).id
    log_points(client, run, range(50))
    show(qtbot, plot, model)
    assert len(plot.curve(run, "loss").xData) == 50

    log_points(client, run, range(50, 120))
    number = publish(client, model, tmp_path, run, 110)
    qtbot.waitUntil(lambda: len(plot.curve(run, "loss").xData) == 120, timeout=5000)
    assert_same(plot.curve(run, "loss").yData, [loss_at(s) for s in range(120)])
    qtbot.waitUntil(lambda: number in marker_spots(plot, run), timeout=5000)

    client.finish_run(run)
    qtbot.waitUntil(lambda: not plot._loader.is_live, timeout=5000)
    plot.hide()
    plot.set_runs([run])
    assert not plot._loader.is_live


def test_zooming_in_on_a_downsampled_curve_fetches_the_visible_steps_in_full(
    qtbot: QtBot, plot: MetricPlot, client: lmvp.Client, model: str
) -> None:
    run = client.create_run(model).id
    client.log_metrics(run, [MetricPoint("loss", s, float(s % 97)) for s in range(20_000)])
    show(qtbot, plot, model)
    assert len(plot.curve(run, "loss").xData) <= 2000

    plot.plot_item.setXRange(5000, 5100, padding=0)

    def full_detail() -> bool:
        x = np.asarray(plot.curve(run, "loss").xData)
        return int(np.count_nonzero((x >= 5000) & (x <= 5100))) == 101

    qtbot.waitUntil(full_detail, timeout=5000)
    x, y = plot.curve(run, "loss").xData, plot.curve(run, "loss").yData
    assert bool(np.all(np.diff(x) > 0))
    inside = (x >= 5000) & (x <= 5100)
    assert_same(y[inside], [s % 97 for s in range(5000, 5101)])


def test_a_runs_parameters_show_under_the_runs_and_in_its_tooltip(qtbot: QtBot) -> None:
    from datetime import UTC, datetime

    from lmvp.types import RunInfo
    from lmvp_desktop.curve_chooser import CurveChooser, format_params

    now = datetime.now(UTC)

    def run(run_id: int, name: str, params: dict[str, object]) -> RunInfo:
        return RunInfo(
            run_id, "p", "m", name, "gpu-1", params, "running", "me", now, None, now, 0, 0, (), ()
        )

    chooser = CurveChooser()
    qtbot.addWidget(chooser)
    chooser.show()
    chooser.list_runs(
        [
            run(2, "sweep-b", {"lr": 0.0003, "optimizer": {"beta1": 0.9}, "batch_size": 64}),
            run(1, "sweep-a", {"lr": 0.001}),
        ]
    )
    assert chooser.params_label.text() == "sweep-b: batch_size=64, lr=0.0003, optimizer.beta1=0.9"
    chooser.set_runs([1, 2])
    assert chooser.params_label.text().splitlines() == [
        "sweep-b: batch_size=64, lr=0.0003, optimizer.beta1=0.9",
        "sweep-a: lr=0.001",
    ]
    assert "parameters: lr=0.001" in chooser._run_model.item(1).toolTip()
    assert format_params({"x": 0.1234567891}) == "x=0.123457"
