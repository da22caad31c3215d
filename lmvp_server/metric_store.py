"""Metric series in the database: idempotent batch ingestion, the tile pyramid that keeps
downsampling fast, M4 downsampling, and a run's values at a step (version snapshots).

Why tiles: scanning a million points, even in SQL over a covering index, takes SQLite about
170 ms on a shared two-core machine, far from the 50 ms a plot may take. So ingestion keeps,
per key, aligned tiles at several levels (16, 64, 256, ... steps wide), each holding its
point count and its first, last, minimum and maximum point: exactly what M4 downsampling
keeps from a bucket. A query for N points picks the coarsest level whose tiles are no wider
than a bucket, covers the asked range with about N/4 to N of those tiles (and a few finer
tiles and raw points at the ragged ends), and merges tiles into buckets. Merging keeps every
tile's minimum and maximum in play, so the range's global minimum and maximum always survive,
the first and last points too, and at most N points come back per key.

Ingestion only ever adds points (a point that exists already is left alone: re-sent batches
change nothing), so a tile's summary is updated by merging in the summary of its new points;
ingestion holds the run's row lock, so the set of points it found new is the set it inserts.

Values: NULL in the database is NaN (see `models.MetricPoint`); in JSON, NaN and the
infinities travel as the strings "NaN", "Infinity" and "-Infinity" (`json_values`).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain, repeat
from typing import Any, NamedTuple

from sqlalchemy import Connection, bindparam, select, union_all, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert

from lmvp_server.db import utcnow
from lmvp_server.models import MetricKey, MetricPoint, MetricTile, Run

# Level 0 tiles span 2**4 = 16 steps; each level's tiles span 4 tiles of the level below.
TILE_BASE_SHIFT = 4
LEVEL_SHIFT = 2
# 2**(4 + 2 * 29) = 2**62: one top-level tile covers any step a BIGINT can hold.
MAX_LEVELS = 30
# The most points one query may return per key; also what "all points" means.
MAX_POINTS = 100_000

_INF = math.inf


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


_SUMMARY_COLUMNS = [getattr(MetricTile, name) for name in Summary._fields]


@dataclass
class SeriesIn:
    """The points of one key in a batch, strictly increasing by step; NaN already None."""

    steps: list[int]
    values: list[float | None]
    walls: list[float]


@dataclass(frozen=True)
class Ingested:
    received: int
    inserted: int


@dataclass(frozen=True)
class SeriesOut:
    """A series as read: exact, or downsampled by M4; `count` is the number of stored points
    in the asked range."""

    key: str
    steps: list[int]
    values: list[float | None]
    walls: list[float]
    count: int
    downsampled: bool


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


def json_values(values: Iterable[float | None]) -> list[float | str]:
    """Values as JSON can carry them: NaN (None) and the infinities become strings."""
    return [v if v is not None and -_INF < v < _INF else _special(v) for v in values]


def json_value(value: float | None) -> float | str:
    return json_values((value,))[0]


# --- ingestion ----------------------------------------------------------------------------------


def ingest(conn: Connection, run_id: int, batch: dict[str, SeriesIn], received: int) -> Ingested:
    """Store the points of `batch` (key -> series) that the run does not hold yet, and fold
    them into the key summaries and tiles. The caller commits.

    Takes the run's row lock first (the database lock on SQLite), so batches for one run are
    stored one after the other and each sees exactly which points are new.
    """
    conn.execute(update(Run).where(Run.id == run_id).values(updated_at=utcnow()))
    keys = _ensure_keys(conn, run_id, list(batch))
    point_rows: list[tuple[Any, ...]] = []
    tile_rows: list[tuple[Any, ...]] = []
    key_updates: list[tuple[Any, ...]] = []
    for name, series in batch.items():
        key = keys[name]
        new = _new_points(conn, key, series)
        if not new.steps:
            continue
        point_rows.extend(zip(repeat(key.id), new.steps, new.values, new.walls, strict=False))
        tile_rows.extend(_tile_rows(conn, key, new))
        key_updates.append(_key_update(key, new))
    if point_rows:
        _executemany(
            conn, _insert(conn, MetricPoint).on_conflict_do_nothing(), _POINT_COLUMNS, point_rows
        )
        tiles = _insert(conn, MetricTile)
        excluded = tiles.excluded
        upsert = tiles.on_conflict_do_update(
            index_elements=["key_id", "level", "tile"],
            set_={c.key: excluded[c.key] for c in _SUMMARY_COLUMNS},
        )
        _executemany(conn, upsert, _TILE_COLUMNS, tile_rows)
        conn.execute(
            _KEY_UPDATE, [dict(zip(_KEY_UPDATE_COLUMNS, row, strict=True)) for row in key_updates]
        )
    return Ingested(received=received, inserted=len(point_rows))


_POINT_COLUMNS = ("key_id", "step", "value", "wall_time")
_TILE_COLUMNS = ("key_id", "level", "tile", *Summary._fields)
_KEY_UPDATE_COLUMNS = ("b_id", "b_count", "b_first", "b_last", "b_value", "b_levels")
_KEY_UPDATE = (
    update(MetricKey)
    .where(MetricKey.id == bindparam("b_id"))
    .values(
        point_count=bindparam("b_count"),
        first_step=bindparam("b_first"),
        last_step=bindparam("b_last"),
        last_value=bindparam("b_value"),
        tile_levels=bindparam("b_levels"),
    )
)


def _executemany(
    conn: Connection, stmt: Any, columns: Sequence[str], rows: list[tuple[Any, ...]]
) -> None:
    """Run the one-row INSERT `stmt` for every row (values in `columns` order), as multi-row
    INSERTs sent straight to the driver.

    At a million points, SQLAlchemy's per-row parameter processing cost twice what SQLite
    spent inserting, and SQLite inserts rows 2.5 times faster as `VALUES (...), (...)` than
    one statement per row. These columns (integers and floats) need no bind processing.
    """
    if not rows:
        return
    dialect = conn.dialect
    if not dialect.positional:  # psycopg: the same statement with %s placeholders
        dialect = type(dialect)(paramstyle="format")  # type: ignore[call-arg]
    compiled = stmt.compile(dialect=dialect, column_keys=list(columns))
    index = {name: i for i, name in enumerate(columns)}
    order = [index[name] for name in compiled.positiontup or ()]
    if order != list(range(len(columns))):
        rows = [tuple(row[i] for i in order) for row in rows]
    head, group, tail = _split_values(str(compiled))
    # 999 parameters per statement: the limit of the oldest SQLite builds.
    per = max(1, 999 // len(columns))
    full = f"{head}{', '.join([group] * per)}{tail}"
    for start in range(0, len(rows), per):
        chunk = rows[start : start + per]
        sql = full if len(chunk) == per else f"{head}{', '.join([group] * len(chunk))}{tail}"
        conn.exec_driver_sql(sql, tuple(chain.from_iterable(chunk)))


def _split_values(sql: str) -> tuple[str, str, str]:
    """`INSERT ... VALUES (?, ?) ON CONFLICT ...` -> (`INSERT ... VALUES `, `(?, ?)`, the rest);
    the group may hold casts (`%s::BIGINT` on PostgreSQL)."""
    start = sql.index(" VALUES (") + len(" VALUES ")
    depth = 0
    for end in range(start, len(sql)):
        depth += {"(": 1, ")": -1}.get(sql[end], 0)
        if depth == 0:
            return sql[:start], sql[start : end + 1], sql[end + 1 :]
    raise ValueError(f"no VALUES group in {sql!r}")


def _insert(conn: Connection, entity: type[Any]) -> Any:
    """An INSERT that knows ON CONFLICT, for the dialect of `conn`."""
    table = entity.__table__
    if conn.dialect.name == "postgresql":
        stmt: Insert = postgresql.insert(table)
    elif conn.dialect.name == "sqlite":
        stmt = sqlite.insert(table)
    else:  # pragma: no cover - the server supports these two
        raise RuntimeError(f"unsupported database dialect {conn.dialect.name}")
    return stmt


@dataclass
class _Key:
    id: int
    point_count: int
    first_step: int | None
    last_step: int | None
    last_value: float | None
    tile_levels: int


def _ensure_keys(conn: Connection, run_id: int, names: list[str]) -> dict[str, _Key]:
    query = select(
        MetricKey.key,
        MetricKey.id,
        MetricKey.point_count,
        MetricKey.first_step,
        MetricKey.last_step,
        MetricKey.last_value,
        MetricKey.tile_levels,
    ).where(MetricKey.run_id == run_id, MetricKey.key.in_(names))
    found = {row[0]: _Key(*row[1:]) for row in conn.execute(query)}
    missing = [n for n in names if n not in found]
    if missing:
        conn.execute(
            _insert(conn, MetricKey).on_conflict_do_nothing(),
            [{"run_id": run_id, "key": n, "point_count": 0, "tile_levels": 0} for n in missing],
        )
        found = {row[0]: _Key(*row[1:]) for row in conn.execute(query)}
    return found


def _new_points(conn: Connection, key: _Key, series: SeriesIn) -> SeriesIn:
    """The points of `series` the key does not hold yet."""
    steps = series.steps
    if key.last_step is None or steps[0] > key.last_step or steps[-1] < (key.first_step or 0):
        return series
    held = set(
        conn.scalars(
            select(MetricPoint.step).where(
                MetricPoint.key_id == key.id,
                MetricPoint.step.between(steps[0], min(steps[-1], key.last_step)),
            )
        )
    )
    if not held:
        return series
    keep = [i for i, s in enumerate(steps) if s not in held]
    return SeriesIn(
        [steps[i] for i in keep], [series.values[i] for i in keep], [series.walls[i] for i in keep]
    )


def _key_update(key: _Key, new: SeriesIn) -> tuple[Any, ...]:
    last_step, last_value = key.last_step, key.last_value
    if last_step is None or new.steps[-1] > last_step:
        last_step, last_value = new.steps[-1], new.values[-1]
    first = new.steps[0] if key.first_step is None else min(key.first_step, new.steps[0])
    return (
        key.id,
        key.point_count + len(new.steps),
        first,
        last_step,
        last_value,
        levels_for(last_step),
    )


def _tile_rows(conn: Connection, key: _Key, new: SeriesIn) -> list[tuple[Any, ...]]:
    """Every tile row the new points change, merged with what the tile already held; plus the
    whole of any level the key needs from now on and did not have (built from the level
    below, which then holds at most four tiles)."""
    old_levels = key.tile_levels
    last = max(new.steps[-1], key.last_step if key.last_step is not None else -1)
    levels = levels_for(last)
    # Levels the key did not have, summarising the points stored before this batch.
    built: dict[int, dict[int, Summary]] = {}
    for level in range(old_levels, levels) if old_levels else ():
        below = built.get(level - 1)
        if below is None:
            below = _read_tiles(conn, key.id, level - 1, None, None)
        built[level] = dict(_coarser(sorted(below.items())))

    rows: list[tuple[Any, ...]] = []
    fresh = _summarize(new, tile_shift(0))
    for level in range(levels):
        if level:
            fresh = _coarser(fresh)
        if level in built:
            held = built[level]
        elif level < old_levels:
            held = _read_tiles(conn, key.id, level, fresh[0][0], fresh[-1][0])
        else:
            held = {}
        merged = dict(held) if level in built else {}
        for tile, summary in fresh:
            earlier = held.get(tile)
            merged[tile] = summary if earlier is None else _merge(earlier, summary)
        rows.extend((key.id, level, tile, *s) for tile, s in merged.items())
    return rows


def _read_tiles(
    conn: Connection, key_id: int, level: int, first: int | None, last: int | None
) -> dict[int, Summary]:
    query = select(MetricTile.tile, *_SUMMARY_COLUMNS).where(
        MetricTile.key_id == key_id, MetricTile.level == level
    )
    if first is not None and last is not None:
        query = query.where(MetricTile.tile.between(first, last))
    return {row[0]: Summary._make(row[1:]) for row in conn.execute(query)}


def _summarize(series: SeriesIn, shift: int) -> list[tuple[int, Summary]]:
    """Tiles (index, summary) of sorted points, for tiles `2**shift` steps wide."""
    steps, values, walls = series.steps, series.values, series.walls
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


def _coarser(tiles: Sequence[tuple[int, Summary]]) -> list[tuple[int, Summary]]:
    """The tiles of the next level up, from sorted tiles of this level."""
    out: list[tuple[int, Summary]] = []
    for tile, summary in tiles:
        parent = tile >> LEVEL_SHIFT
        if out and out[-1][0] == parent:
            out[-1] = (parent, _merge(out[-1][1], summary))
        else:
            out.append((parent, summary))
    return out


def _merge(a: Summary, b: Summary) -> Summary:
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


# --- reading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyInfo:
    id: int
    key: str
    point_count: int
    first_step: int | None
    last_step: int | None
    tile_levels: int


def run_keys(conn: Connection, run_id: int, names: Sequence[str] | None = None) -> list[KeyInfo]:
    """The run's metric keys (all, or those named that exist), sorted by name."""
    query = select(
        MetricKey.id,
        MetricKey.key,
        MetricKey.point_count,
        MetricKey.first_step,
        MetricKey.last_step,
        MetricKey.tile_levels,
    ).where(MetricKey.run_id == run_id)
    if names is not None:
        query = query.where(MetricKey.key.in_(names))
    return [KeyInfo(*row) for row in conn.execute(query.order_by(MetricKey.key))]


def read_series(
    conn: Connection,
    key: KeyInfo,
    *,
    step_min: int | None = None,
    step_max: int | None = None,
    max_points: int = MAX_POINTS,
) -> SeriesOut:
    """The key's points with steps in [step_min, step_max]: all of them when there are at most
    `max_points`, else at most `max_points` chosen by M4 over max_points // 4 buckets of steps
    (each bucket's first, last, minimum and maximum point; NaN points show only as a bucket's
    first or last)."""
    empty = SeriesOut(key.key, [], [], [], 0, False)
    if key.first_step is None or key.last_step is None:
        return empty
    lo = key.first_step if step_min is None else max(step_min, key.first_step)
    hi = key.last_step if step_max is None else min(step_max, key.last_step)
    if lo > hi:
        return empty
    whole = lo == key.first_step and hi == key.last_step
    if not whole or key.point_count <= max_points:
        rows = conn.execute(
            select(MetricPoint.step, MetricPoint.value, MetricPoint.wall_time)
            .where(MetricPoint.key_id == key.id, MetricPoint.step.between(lo, hi))
            .order_by(MetricPoint.step)
            .limit(max_points + 1)
        ).all()
        if len(rows) <= max_points:
            return SeriesOut(
                key.key,
                [r[0] for r in rows],
                [r[1] for r in rows],
                [r[2] for r in rows],
                len(rows),
                False,
            )
    buckets = max(1, max_points // 4)
    pieces = _pieces(conn, key, lo, hi, buckets)
    return _m4(key.key, pieces, lo, hi - lo + 1, buckets)


def _pieces(conn: Connection, key: KeyInfo, lo: int, hi: int, buckets: int) -> list[Summary]:
    """Summaries covering [lo, hi] exactly, in step order: tiles of the coarsest level no wider
    than a bucket, finer tiles and raw points at the ends."""
    width = (hi - lo + 1) / buckets
    top = -1
    for level in range(key.tile_levels):
        if (1 << tile_shift(level)) <= width:
            top = level
    tile_ranges, raw_ranges = _cover(lo, hi, top)
    pieces: list[Summary] = []
    # One SELECT per range, glued with UNION ALL: each is a range of the primary key, where
    # a single SELECT with OR made SQLite scan every tile of the key.
    if tile_ranges:
        tiles = union_all(
            *(
                select(*_SUMMARY_COLUMNS).where(
                    MetricTile.key_id == key.id,
                    MetricTile.level == level,
                    MetricTile.tile.between(first, last),
                )
                for level, first, last in tile_ranges
            )
        )
        pieces.extend(Summary._make(row) for row in conn.execute(tiles))
    if raw_ranges:
        points = union_all(
            *(
                select(MetricPoint.step, MetricPoint.value, MetricPoint.wall_time).where(
                    MetricPoint.key_id == key.id, MetricPoint.step.between(a, b)
                )
                for a, b in raw_ranges
            )
        )
        pieces.extend(_point_summary(s, v, w) for s, v, w in conn.execute(points))
    pieces.sort(key=lambda p: p.first_step)
    return pieces


def _cover(lo: int, hi: int, top: int) -> tuple[list[tuple[int, int, int]], list[tuple[int, int]]]:
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


def _point_summary(step: int, value: float | None, wall: float) -> Summary:
    if value is None:
        return Summary(1, step, None, wall, step, None, wall, None, None, None, None, None, None)
    return Summary(1, step, value, wall, step, value, wall, step, value, wall, step, value, wall)


def _m4(key: str, pieces: list[Summary], lo: int, span: int, buckets: int) -> SeriesOut:
    """Merge step-ordered pieces into `buckets` buckets of steps and keep each bucket's first,
    last, minimum and maximum point."""
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
            acc = _merge(acc, piece)
    if acc is not None:
        _keep(points, acc)
    steps = sorted(points)
    return SeriesOut(
        key,
        steps,
        [points[s][0] for s in steps],
        [points[s][1] for s in steps],
        total,
        True,
    )


def _keep(points: dict[int, tuple[float | None, float]], s: Summary) -> None:
    points[s.first_step] = (s.first_value, s.first_wall)
    points[s.last_step] = (s.last_value, s.last_wall)
    if s.min_step is not None and s.min_wall is not None:
        points[s.min_step] = (s.min_value, s.min_wall)
    if s.max_step is not None and s.max_wall is not None:
        points[s.max_step] = (s.max_value, s.max_wall)


# --- snapshots ----------------------------------------------------------------------------------


def values_at(conn: Connection, run_id: int, step: int) -> dict[str, float | str]:
    """Each key's latest value at or before `step` (JSON-safe), for a version's metrics; keys
    with no point that early are left out."""
    out: dict[str, float | str] = {}
    rows = conn.execute(
        select(MetricKey.id, MetricKey.key, MetricKey.first_step, MetricKey.last_step)
        .add_columns(MetricKey.last_value)
        .where(MetricKey.run_id == run_id)
        .order_by(MetricKey.key)
    )
    for key_id, name, first, last, last_value in rows:
        if first is None or last is None or first > step:
            continue
        if last <= step:
            out[name] = json_value(last_value)
            continue
        value = conn.execute(
            select(MetricPoint.value)
            .where(MetricPoint.key_id == key_id, MetricPoint.step <= step)
            .order_by(MetricPoint.step.desc())
            .limit(1)
        ).scalar()
        out[name] = json_value(value)
    return out


def _special(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"
