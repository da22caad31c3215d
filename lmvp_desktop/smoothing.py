"""The arithmetic behind the metric plot, apart from any widget: the debiased exponential moving
average TensorBoard draws as its smoothed curve, and a curve's value at a given step (where a
checkpoint marker sits on it).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

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


__all__ = ["FloatArray", "debiased_ema", "value_at"]
