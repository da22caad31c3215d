"""The arithmetic behind the metric plot, apart from any widget: the debiased exponential moving
average TensorBoard draws as its smoothed curve, a curve's value at a given step (where a
checkpoint marker sits on it), and `SeriesData`, the points of one series fetched so far (new
points appended while a run is live, a zoomed-in range replaced by its full detail).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from lmvp.types import Series

FloatArray = npt.NDArray[np.float64]

# w**-k must stay far from float64's limit (1e308) within one block of the vectorised EMA.
_MAX_SCALE_DIGITS = 200
_MAX_BLOCK = 1024


def debiased_ema(values: npt.ArrayLike, weight: float) -> FloatArray:
    """Smooth `values` exactly as TensorBoard's smoothing slider does and return a new array.

    For each finite value x (in order): `last = last * weight + (1 - weight) * x`, and the
    smoothed value is `last / (1 - weight ** n)`, n counting the finite values so far (the
    debias, which keeps the start of the curve from being pulled towards 0). NaN and infinite
    values are returned as they are and neither move the average nor count for the debias. A
    constant series, and any series with `weight` 0, come back unchanged.

    Raises `ValueError` for a weight outside [0, 1).
    """
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), not {weight}")
    x = np.asarray(values, dtype=np.float64)
    out = x.copy()
    finite = np.isfinite(x)
    y = x[finite]
    if weight == 0.0 or y.size == 0 or bool(np.all(x == x[0])):
        return out
    # last_j = w**j * (carry + (1 - w) * sum_k<=j w**-k * x_k) within a block, which numpy
    # computes with one cumsum; blocks are short enough that w**-k cannot overflow.
    block = max(1, min(_MAX_BLOCK, int(_MAX_SCALE_DIGITS / -math.log10(weight))))
    smoothed = np.empty_like(y)
    carry = 0.0
    for start in range(0, y.size, block):
        chunk = y[start : start + block]
        k = np.arange(1, chunk.size + 1, dtype=np.float64)
        last = (carry + (1.0 - weight) * np.cumsum(chunk * weight**-k)) * weight**k
        smoothed[start : start + chunk.size] = last
        carry = float(last[-1])
    smoothed /= 1.0 - weight ** np.arange(1, y.size + 1, dtype=np.float64)
    out[finite] = smoothed
    return out


def value_at(steps: npt.ArrayLike, values: npt.ArrayLike, step: float) -> float:
    """The curve's value at `step`: the value logged there, else interpolated between the
    finite neighbours (a downsampled series may not hold that step), clamped to the ends.
    NaN when the curve has no finite value at all."""
    s = np.asarray(steps, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(v)
    if not finite.any():
        return math.nan
    return float(np.interp(step, s[finite], v[finite]))


@dataclass
class SeriesData:
    """The points of one metric series that the plot holds, as float arrays sorted by step.

    `count` is how many points the server holds in the fetched ranges: more than `len(steps)`
    while the series is downsampled. `complete` lists step ranges held in full detail.
    """

    steps: FloatArray
    values: FloatArray
    wall_times: FloatArray
    count: int
    complete: list[tuple[float, float]] = field(default_factory=list)

    @classmethod
    def from_series(cls, series: Series) -> SeriesData:
        data = cls(_floats(series.steps), _floats(series.values), _floats(series.wall_times), 0)
        data.count = series.count
        if not series.downsampled and series.steps:
            data.complete.append((series.steps[0], series.steps[-1]))
        return data

    @property
    def last_step(self) -> int | None:
        return int(self.steps[-1]) if self.steps.size else None

    @property
    def downsampled(self) -> bool:
        return self.count > self.steps.size

    def wall_time_at(self, steps: FloatArray) -> FloatArray:
        """The wall time at each of `steps` (interpolated between the points held)."""
        if not self.steps.size:
            return np.full_like(steps, math.nan)
        out: FloatArray = np.interp(steps, self.steps, self.wall_times)
        return out

    def append_after(self, series: Series) -> bool:
        """Append the points of `series` past the last step held (a point logged late for an
        earlier step waits for the next full load); returns whether any were new."""
        steps = _floats(series.steps)
        fresh = steps > (self.steps[-1] if self.steps.size else -math.inf)
        if not fresh.any():
            return False
        self.steps = np.concatenate([self.steps, steps[fresh]])
        self.values = np.concatenate([self.values, _floats(series.values)[fresh]])
        self.wall_times = np.concatenate([self.wall_times, _floats(series.wall_times)[fresh]])
        self.count += int(fresh.sum())
        return True

    def needs_detail(self, low: float, high: float, enough: int) -> bool:
        """Whether the visible steps `low`..`high` deserve a fetch of their own: the series is
        downsampled there, fewer than `enough` points are in view, and the range overlaps
        the series and is not already held in full."""
        if not self.downsampled or not self.steps.size:
            return False
        if high < self.steps[0] or low > self.steps[-1]:
            return False
        if any(
            a <= max(low, self.steps[0]) and min(high, self.steps[-1]) <= b
            for a, b in self.complete
        ):
            return False
        in_view = int(np.count_nonzero((self.steps >= low) & (self.steps <= high)))
        return in_view < enough

    def replace_range(self, low: int, high: int, detail: Series) -> None:
        """Put the points of `detail` (fetched for steps `low`..`high`) in place of those held
        in that range."""
        outside = (self.steps < low) | (self.steps > high)
        steps = np.concatenate([self.steps[outside], _floats(detail.steps)])
        order = np.argsort(steps, kind="stable")
        self.steps = steps[order]
        self.values = np.concatenate([self.values[outside], _floats(detail.values)])[order]
        walls = np.concatenate([self.wall_times[outside], _floats(detail.wall_times)])
        self.wall_times = walls[order]
        self.count = max(self.count, self.steps.size)
        if not detail.downsampled:
            self.complete.append((low, high))


def _floats(values: list[int] | list[float]) -> FloatArray:
    return np.asarray(values, dtype=np.float64)


__all__ = ["FloatArray", "SeriesData", "debiased_ema", "value_at"]
