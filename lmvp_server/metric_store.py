"""Metric series in the database: idempotent batch ingestion, downsampled reads, and a run's
values at a step (version snapshots).

Ingestion keeps each metric's tile pyramid (`metric_tiles`) up to date, so reads never scan
more than about `max_points` summaries. Points are only ever added: one that exists already is
left alone, so re-sent batches change nothing. Ingestion holds the run's row lock, so the set
of points it found new is exactly the set it inserts and merges into the tiles.

Values: NULL in the database is NaN (see `models.MetricPoint`); in JSON, NaN and the
infinities travel as the strings "NaN", "Infinity" and "-Infinity" (`json_values`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain, repeat
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, union_all, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert

from lmvp_server import metric_tiles as tiles
from lmvp_server.db import utcnow
from lmvp_server.models import MetricKey, MetricPoint, MetricTile, Run

# The most points one query may return per key; also what "all points" means.
MAX_POINTS = 100_000

_INF = math.inf


_SUMMARY_COLUMNS = [getattr(MetricTile, name) for name in tiles.Summary._fields]


@dataclass
class SeriesIn:
    """The points of one key in a batch, strictly increasing by step; NaN already None."""

    steps: list[int]
    values: list[float | None]
    walls: list[float]


class TooManyKeys(Exception):
    """A batch would give the run more distinct keys than it may hold."""

    def __init__(self, held: int, adding: int, limit: int) -> None:
        super().__init__(f"{held} keys held, {adding} new, at most {limit}")
        self.held, self.adding, self.limit = held, adding, limit


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


def json_values(values: Iterable[float | None]) -> list[float | str]:
    """Values as JSON can carry them: NaN (None) and the infinities become strings."""
    return [v if v is not None and -_INF < v < _INF else _special(v) for v in values]


def json_value(value: float | None) -> float | str:
    return json_values((value,))[0]


# --- ingestion ----------------------------------------------------------------------------------


def ingest(
    conn: Connection, run_id: int, batch: dict[str, SeriesIn], received: int, max_keys: int
) -> Ingested:
    """Store the points of `batch` (key -> series) that the run does not hold yet, and fold
    them into the key summaries and tiles. The caller commits. Raises `TooManyKeys`, storing
    nothing, when the run would hold more than `max_keys` distinct keys.

    Takes the run's row lock first (the database lock on SQLite), so batches for one run are
    stored one after the other and each sees exactly which points are new (and how many keys
    the run holds).
    """
    if len(batch) > max_keys:  # refused before any query
        raise TooManyKeys(0, len(batch), max_keys)
    conn.execute(update(Run).where(Run.id == run_id).values(updated_at=utcnow()))
    keys = _ensure_keys(conn, run_id, list(batch), max_keys)
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
        insert_tiles = _insert(conn, MetricTile)
        excluded = insert_tiles.excluded
        upsert = insert_tiles.on_conflict_do_update(
            index_elements=["key_id", "level", "tile"],
            set_={c.key: excluded[c.key] for c in _SUMMARY_COLUMNS},
        )
        _executemany(conn, upsert, _TILE_COLUMNS, tile_rows)
        conn.execute(
            _KEY_UPDATE, [dict(zip(_KEY_UPDATE_COLUMNS, row, strict=True)) for row in key_updates]
        )
    return Ingested(received=received, inserted=len(point_rows))


_POINT_COLUMNS = ("key_id", "step", "value", "wall_time")
_TILE_COLUMNS = ("key_id", "level", "tile", *tiles.Summary._fields)
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


def _ensure_keys(conn: Connection, run_id: int, names: list[str], max_keys: int) -> dict[str, _Key]:
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
        held = conn.scalar(
            select(func.count()).select_from(MetricKey).where(MetricKey.run_id == run_id)
        )
        if (held or 0) + len(missing) > max_keys:
            raise TooManyKeys(held or 0, len(missing), max_keys)
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
        tiles.levels_for(last_step),
    )


def _tile_rows(conn: Connection, key: _Key, new: SeriesIn) -> list[tuple[Any, ...]]:
    """Every tile row the new points change, merged with what the tile already held; plus the
    whole of any level the key needs from now on and did not have (built from the level
    below, which then holds at most four tiles)."""
    old_levels = key.tile_levels
    last = max(new.steps[-1], key.last_step if key.last_step is not None else -1)
    levels = tiles.levels_for(last)
    # Levels the key did not have, summarising the points stored before this batch.
    built: dict[int, dict[int, tiles.Summary]] = {}
    for level in range(old_levels, levels) if old_levels else ():
        below = built.get(level - 1)
        if below is None:
            below = _read_tiles(conn, key.id, level - 1, None, None)
        built[level] = dict(tiles.coarser(sorted(below.items())))

    rows: list[tuple[Any, ...]] = []
    fresh = tiles.summarize(new.steps, new.values, new.walls, tiles.tile_shift(0))
    for level in range(levels):
        if level:
            fresh = tiles.coarser(fresh)
        if level in built:
            held = built[level]
        elif level < old_levels:
            held = _read_tiles(conn, key.id, level, fresh[0][0], fresh[-1][0])
        else:
            held = {}
        merged = dict(held) if level in built else {}
        for tile, summary in fresh:
            earlier = held.get(tile)
            merged[tile] = summary if earlier is None else tiles.merge(earlier, summary)
        rows.extend((key.id, level, tile, *s) for tile, s in merged.items())
    return rows


def _read_tiles(
    conn: Connection, key_id: int, level: int, first: int | None, last: int | None
) -> dict[int, tiles.Summary]:
    query = select(MetricTile.tile, *_SUMMARY_COLUMNS).where(
        MetricTile.key_id == key_id, MetricTile.level == level
    )
    if first is not None and last is not None:
        query = query.where(MetricTile.tile.between(first, last))
    return {row[0]: tiles.Summary._make(row[1:]) for row in conn.execute(query)}


# --- reading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyInfo:
    id: int
    key: str
    point_count: int
    first_step: int | None
    last_step: int | None
    tile_levels: int


def run_keys(
    conn: Connection, run_id: int, names: Sequence[str] | None = None, limit: int | None = None
) -> list[KeyInfo]:
    """The run's metric keys (all, or those named that exist), sorted by name; the first
    `limit` of them when given (a run from before the key limit may hold more)."""
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
    query = query.order_by(MetricKey.key)
    if limit is not None:
        query = query.limit(limit)
    return [KeyInfo(*row) for row in conn.execute(query)]


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
    steps, values, walls, total = tiles.m4(pieces, lo, hi - lo + 1, buckets)
    return SeriesOut(key.key, steps, values, walls, total, True)


def _pieces(conn: Connection, key: KeyInfo, lo: int, hi: int, buckets: int) -> list[tiles.Summary]:
    """Summaries covering [lo, hi] exactly, in step order: tiles of the coarsest level no wider
    than a bucket, finer tiles and raw points at the ends."""
    width = (hi - lo + 1) / buckets
    top = -1
    for level in range(key.tile_levels):
        if (1 << tiles.tile_shift(level)) <= width:
            top = level
    tile_ranges, raw_ranges = tiles.cover(lo, hi, top)
    pieces: list[tiles.Summary] = []
    # One SELECT per range, glued with UNION ALL: each is a range of the primary key, where
    # a single SELECT with OR made SQLite scan every tile of the key.
    if tile_ranges:
        tile_query = union_all(
            *(
                select(*_SUMMARY_COLUMNS).where(
                    MetricTile.key_id == key.id,
                    MetricTile.level == level,
                    MetricTile.tile.between(first, last),
                )
                for level, first, last in tile_ranges
            )
        )
        pieces.extend(tiles.Summary._make(row) for row in conn.execute(tile_query))
    if raw_ranges:
        point_query = union_all(
            *(
                select(MetricPoint.step, MetricPoint.value, MetricPoint.wall_time).where(
                    MetricPoint.key_id == key.id, MetricPoint.step.between(a, b)
                )
                for a, b in raw_ranges
            )
        )
        pieces.extend(tiles.point_summary(s, v, w) for s, v, w in conn.execute(point_query))
    pieces.sort(key=lambda p: p.first_step)
    return pieces


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
