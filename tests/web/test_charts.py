"""The run page's charts in Chromium (issue 18): readable y ticks for small values (an lr of
0.001 and below read "0.001, 0.001, 0" before), titles that say how many points are drawn
(not "downsampled" when every point is), smoothing, a log y axis, and other runs of the model
drawn over the same chart."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.web.conftest import Console
from tests.web.test_browser import _COUNT_PIXELS

STEPS = 300


@pytest.fixture(scope="module")
def lr_run(console: Console) -> int:
    """A second run of the model, logging a decaying learning rate and a loss."""
    r = console.owner.post(
        f"/projects/{console.project}/runs",
        json={"model": console.model, "name": "lr-decay", "params": {"lr": 0.001}},
    )
    assert r.status_code == 201, r.text
    run = int(r.json()["id"])
    steps = list(range(STEPS))
    r = console.owner.post(
        f"/runs/{run}/metrics",
        json={
            "series": [
                {"key": "lr", "steps": steps, "values": [0.001 * 0.998**s for s in steps]},
                {"key": "loss", "steps": steps, "values": [3 / (1 + s / 50) for s in steps]},
            ]
        },
    )
    assert r.status_code == 200, r.text
    return run


def _chart(page: Any, key: str) -> Any:
    return page.locator(f"figure.chart[data-key='{key}']")


def test_small_values_get_distinct_readable_ticks_and_an_honest_title(
    console: Console, new_page: Any, lr_run: int
) -> None:
    page = new_page(console.viewer, viewport={"width": 1900, "height": 1000})
    page.goto(f"/projects/{console.project}/runs/{lr_run}")
    page.wait_for_selector("#charts[data-state=drawn]")
    lr = _chart(page, "lr")
    ticks = lr.get_attribute("data-y-ticks").split("|")
    assert len(ticks) >= 3, ticks
    assert len(set(ticks)) == len(ticks), ticks  # neighbours differ ("0.001, 0.001, 0" did not)
    values = [float(t) for t in ticks]
    assert values == sorted(values) and values[-1] <= 0.0011, ticks  # in the data's range
    # Every one of the points is drawn: the title says so, and nothing about downsampling.
    caption = lr.locator("figcaption").inner_text()
    assert caption == f"lr ({STEPS} points)", caption
    # A longer run (the seeded one, 1000 points a key) drawn from fewer: the title says how
    # many of them the chart holds.
    page.goto(f"/projects/{console.project}/runs/{console.run}")
    page.wait_for_selector("#charts[data-state=drawn]")
    loss = _chart(page, "loss")
    drawn = int(loss.get_attribute("data-drawn"))
    caption = loss.locator("figcaption").inner_text()
    expected = "loss (1000 points)" if drawn == 1000 else f"loss (1000 points, {drawn} drawn)"
    assert caption == expected


def test_smoothing_log_scale_and_an_overlaid_run(
    console: Console, new_page: Any, lr_run: int
) -> None:
    page = new_page(console.viewer)
    page.goto(f"/projects/{console.project}/runs/{lr_run}")
    page.wait_for_selector("#charts[data-state=drawn]")
    loss = _chart(page, "loss")
    before = loss.locator("canvas").evaluate(_COUNT_PIXELS)

    page.locator("#smoothing").fill("0.9")
    assert "smoothed" in loss.locator("figcaption").inner_text()
    assert page.locator("#smoothing-value").inner_text() == "0.90"

    page.check("#log-y")
    ticks = _chart(page, "lr").get_attribute("data-y-ticks").split("|")
    assert any("e-" in t for t in ticks), ticks  # powers of ten on a log axis

    overlay = page.locator("input.overlay[data-name='lr-sweep']")
    overlay.check()
    page.wait_for_selector("#charts[data-overlays='1']")
    after = loss.locator("canvas").evaluate(_COUNT_PIXELS_OVERLAY)
    assert after > 200, after  # the other run's loss, in its own colour
    assert "lr-sweep" in loss.inner_text()  # in the legend
    overlay.uncheck()
    page.wait_for_selector("#charts[data-overlays='0']")
    assert before["marker"] == 0  # this run has no checkpoints: nothing else is orange


_COUNT_PIXELS_OVERLAY = """canvas => {
  const ctx = canvas.getContext("2d");
  const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  let n = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (Math.abs(data[i] - 47) < 40 && Math.abs(data[i + 1] - 158) < 40 &&
        Math.abs(data[i + 2] - 68) < 40 && data[i + 3] > 200) n++;
  }
  return n;
}"""


def test_checkpoint_labels_sit_on_their_own_background_so_no_gridline_crosses_them(
    console: Console, new_page: Any
) -> None:
    page = new_page(console.viewer)
    page.goto(f"/projects/{console.project}/runs/{console.run}")
    page.wait_for_selector("#charts[data-state=drawn]")
    chart = _chart(page, "loss")
    labels = json.loads(chart.get_attribute("data-labels"))
    assert len(labels) == 3
    # Every pixel of a label's box is painted (the card's colour or the label's text): a bare
    # label on the transparent plot let gridlines and the curve show through its letters.
    bare = chart.locator("canvas").evaluate(_BARE_PIXELS, labels)
    assert bare == 0


_BARE_PIXELS = """(canvas, rects) => {
  const ctx = canvas.getContext("2d");
  let bare = 0;
  for (const [x, y, w, h] of rects) {
    const data = ctx.getImageData(x + 1, y + 1, w - 2, h - 2).data;
    for (let i = 3; i < data.length; i += 4) if (data[i] < 250) bare++;
  }
  return bare;
}"""
