"""The tile pyramid behind fast downsampling: summaries of aligned ranges of steps, and M4 over
them. Pure functions on Python values; `metric_store` reads and writes them.

Scanning a million points, even in SQL over a covering index, takes SQLite about 170 ms on a
shared two-core machine, far from the 50 ms a plot may take. So ingestion keeps, per metric,
aligned tiles at several levels (16, 64, 256, ... steps wide), each holding its number of
points and its first, last, minimum and maximum point: exactly what M4 downsampling keeps from
a bucket. A query for N points picks the coarsest level whose tiles are no wider than a bucket,
covers the asked range with about N/4 to N of those tiles (and a few finer tiles and raw points
at the ragged ends: `cover`), and merges them into N/4 buckets (`m4`). Merging keeps every
tile's minimum and maximum in play, so the range's global minimum and maximum always survive,
the first and last points too, and at most N points come back.

Points are only ever added, so a tile is updated by merging into it the summary of its new
points (`merge`); `summarize` and `coarser` build those summaries. A value None is NaN.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import NamedTuple

# Level 0 tiles span 2**4 = 16 steps; each level's tiles span 4 tiles of the level below.
TILE_BASE_SHIFT = 4
LEVEL_SHIFT = 2
# 2**(4 + 2 * 29) = 2**62: one top-level tile covers any step a BIGINT can hold.
MAX_LEVELS = 30


class Summary(NamedTuple):
    """What a tile (or one point) contributes to M4: its count and four representative points.
    `min_*` and `max_*` are None when every value is NaN."""

    point_count: int
    first_step: int
    first_value: float | None
    first_wall: float
    last_step: int
    last_value: float | None
    last_wall: float
    min_step: int | None
    min_value: float | None
    min_wall: float | None
    max_step: int | None
    max_value: float | None
    max_wall: float | None


def tile_shift(level: int) -> int:
    """log2 of the width in steps of tiles at `level`."""
    return TILE_BASE_SHIFT + LEVEL_SHIFT * level


def levels_for(last_step: int) -> int:
    """How many tile levels a key whose largest step is `last_step` keeps: a level is of use
    only while its tiles are narrower than the key's range of steps."""
    levels = 1
    while levels < MAX_LEVELS and (1 << tile_shift(levels)) <= last_step + 1:
        levels += 1
    return levels


def summarize(
    steps: list[int], values: list[float | None], walls: list[float], shift: int
) -> list[tuple[int, Summary]]:
    """Tiles (index, summary) of points sorted by step, for tiles `2**shift` steps wide."""
    out: list[tuple[int, Summary]] = []
    i, n = 0, len(steps)
    while i < n:
        tile = steps[i] >> shift
        j = bisect_left(steps, (tile + 1) << shift, i)
        vals = values[i:j]
        if None in vals:
            finite = [(v, k) for k, v in enumerate(vals) if v is not None]
            lo = min(finite)[1] if finite else None
            hi = max(finite, key=lambda vk: (vk[0], -vk[1]))[1] if finite else None
        else:
            lo = vals.index(min(vals))  # type: ignore[type-var]
            hi = vals.index(max(vals))  # type: ignore[type-var]
        out.append(
            (
                tile,
                Summary(
                    j - i,
                    steps[i],
                    values[i],
                    walls[i],
                    steps[j - 1],
                    values[j - 1],
                    walls[j - 1],
                    steps[i + lo] if lo is not None else None,
                    vals[lo] if lo is not None else None,
                    walls[i + lo] if lo is not None else None,
                    steps[i + hi] if hi is not None else None,
                    vals[hi] if hi is not None else None,
                    walls[i + hi] if hi is not None else None,
                ),
            )
        )
        i = j
    return out


def coarser(tiles: Sequence[tuple[int, Summary]]) -> list[tuple[int, Summary]]:
    """The tiles of the next level up, from sorted tiles of this level."""
    out: list[tuple[int, Summary]] = []
    for tile, summary in tiles:
        parent = tile >> LEVEL_SHIFT
        if out and out[-1][0] == parent:
            out[-1] = (parent, merge(out[-1][1], summary))
        else:
            out.append((parent, summary))
    return out


def merge(a: Summary, b: Summary) -> Summary:
    """The summary of two disjoint sets of points. Ties in value go to the earlier step."""
    first = a if a.first_step <= b.first_step else b
    last = a if a.last_step >= b.last_step else b
    low = _lower(a, b)
    high = _higher(a, b)
    return Summary(
        a.point_count + b.point_count,
        first.first_step,
        first.first_value,
        first.first_wall,
        last.last_step,
        last.last_value,
        last.last_wall,
        low.min_step,
        low.min_value,
        low.min_wall,
        high.max_step,
        high.max_value,
        high.max_wall,
    )


def _lower(a: Summary, b: Summary) -> Summary:
    """Whichever holds the smaller minimum (the earlier step on a tie; NaN-only loses)."""
    if a.min_value is None or a.min_step is None:
        return b
    if b.min_value is None or b.min_step is None:
        return a
    return a if (a.min_value, a.min_step) <= (b.min_value, b.min_step) else b


def _higher(a: Summary, b: Summary) -> Summary:
    """Whichever holds the larger maximum (the earlier step on a tie; NaN-only loses)."""
    if a.max_value is None or a.max_step is None:
        return b
    if b.max_value is None or b.max_step is None:
        return a
    if a.max_value != b.max_value:
        return a if a.max_value > b.max_value else b
    return a if a.max_step <= b.max_step else b


def cover(lo: int, hi: int, top: int) -> tuple[list[tuple[int, int, int]], list[tuple[int, int]]]:
    """Split [lo, hi] into aligned tiles of levels up to `top`, as (level, first tile, last
    tile) runs, and the raw step ranges left at the ends (under 16 steps each)."""
    tiles: list[tuple[int, int, int]] = []
    raw: list[tuple[int, int]] = []
    p = lo
    while p <= hi:
        level = top
        while level >= 0:
            shift = tile_shift(level)
            if p & ((1 << shift) - 1) == 0 and p + (1 << shift) - 1 <= hi:
                break
            level -= 1
        if level < 0:
            end = min(hi, p | ((1 << TILE_BASE_SHIFT) - 1))
            if raw and raw[-1][1] + 1 == p:
                raw[-1] = (raw[-1][0], end)
            else:
                raw.append((p, end))
            p = end + 1
            continue
        shift = tile_shift(level)
        count = (hi - p + 1) >> shift if level == top else 1
        first = p >> shift
        if tiles and tiles[-1][0] == level and tiles[-1][2] + 1 == first:
            tiles[-1] = (level, tiles[-1][1], first + count - 1)
        else:
            tiles.append((level, first, first + count - 1))
        p += count << shift
    return tiles, raw


def point_summary(step: int, value: float | None, wall: float) -> Summary:
    if value is None:
        return Summary(1, step, None, wall, step, None, wall, None, None, None, None, None, None)
    return Summary(1, step, value, wall, step, value, wall, step, value, wall, step, value, wall)


def m4(
    pieces: list[Summary], lo: int, span: int, buckets: int
) -> tuple[list[int], list[float | None], list[float], int]:
    """Merge step-ordered pieces covering `span` steps from `lo` into `buckets` buckets of
    steps and keep each bucket's first, last, minimum and maximum point. Returns their steps,
    values and wall times, and the number of points the pieces hold."""
    points: dict[int, tuple[float | None, float]] = {}
    total = 0
    current = -1
    acc: Summary | None = None
    for piece in pieces:
        total += piece.point_count
        bucket = (piece.first_step - lo) * buckets // span
        if bucket != current or acc is None:
            if acc is not None:
                _keep(points, acc)
            current, acc = bucket, piece
        else:
            acc = merge(acc, piece)
    if acc is not None:
        _keep(points, acc)
    steps = sorted(points)
    return steps, [points[s][0] for s in steps], [points[s][1] for s in steps], total


def _keep(points: dict[int, tuple[float | None, float]], s: Summary) -> None:
    points[s.first_step] = (s.first_value, s.first_wall)
    points[s.last_step] = (s.last_value, s.last_wall)
    if s.min_step is not None and s.min_wall is not None:
        points[s.min_step] = (s.min_value, s.min_wall)
    if s.max_step is not None and s.max_wall is not None:
        points[s.max_step] = (s.max_value, s.max_wall)
