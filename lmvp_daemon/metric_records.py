"""Turning the records of a metric file (a JSON line, a CSV row, a Trainer log entry) into
metric points: which fields are the step, the wall time and the metrics, and what is malformed.

`lmvp_daemon.metric_files` owns the files (what is new since the last read, rewrites, state);
this module owns their contents. The rules are in that module's docstring.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any, NamedTuple

STEP_KEY = "step"
WALL_TIME_KEYS: tuple[str, ...] = ("wall_time", "timestamp", "time")
"""Fields holding the points' wall time rather than a metric, in order of preference."""

_JSON = json.JSONDecoder()  # Python's json.loads defaults: NaN and Infinity literals accepted


class Point(NamedTuple):
    """One metric value at one training step."""

    key: str
    step: int
    value: float
    wall_time: float | None = None
    """Seconds since the epoch when the file gives one."""


class Emitter:
    """Collects the points of one read, applying the step rules of `lmvp_daemon.metric_files`.

    It also numbers the records (`record`), so that a malformed one (`malformed`) is counted in
    `skipped` only when no earlier read of the file counted it: a rewritten file (Lightning's
    header growth, a restarted job) is read again from its start, malformed records included.
    """

    __slots__ = ("counted", "last_step", "marks", "points", "records", "skipped")

    def __init__(
        self,
        high_water: Mapping[str, int],
        last_step: int | None,
        *,
        records: int = 0,
        counted: int = 0,
    ) -> None:
        """`high_water`: the highest step already returned, by key; `last_step`: the step of
        the previous record (for a record that gives none); `records`: how many records of the
        file come before what this read parses; `counted`: how many of the file's first records
        earlier reads examined (their faults are counted already)."""
        self.points: list[Point] = []
        self.marks = dict(high_water)
        self.last_step = last_step
        self.records = records
        self.counted = counted
        self.skipped = 0

    def record(self) -> None:
        """A record (a line, a row, a log entry) begins."""
        self.records += 1

    def malformed(self) -> None:
        """The current record is malformed: count it, unless an earlier read did."""
        if self.records > self.counted:
            self.skipped += 1

    def step_of(self, raw: object) -> int | None:
        """The line's step, or the next one if it gives none; None if it is not a step."""
        if raw is None:
            step = 0 if self.last_step is None else self.last_step + 1
        else:
            found = as_step(raw)
            if found is None:
                return None
            step = found
        self.last_step = step
        return step

    def emit(self, key: str, step: int, value: float, wall_time: float | None) -> None:
        if step > self.marks.get(key, -1):
            self.marks[key] = step
            self.points.append(Point(key, step, value, wall_time))


def parse_jsonl(data: bytes, emitter: Emitter) -> None:
    try:
        lines: Iterable[str | None] = data.decode("utf-8").split("\n")
    except UnicodeDecodeError:  # find the lines at fault, and only those
        lines = [_utf8_or_none(line) for line in data.split(b"\n")]
    decode = _JSON.decode
    for line in lines:
        if line is not None and (not line or line.isspace()):
            continue
        emitter.record()
        if line is None:
            emitter.malformed()
            continue
        try:
            record = decode(line)
        except (ValueError, RecursionError):  # RecursionError: nested too deep to parse
            emitter.malformed()
            continue
        if not isinstance(record, dict):
            emitter.malformed()
            continue
        step = emitter.step_of(record.get(STEP_KEY))
        if step is None or not emit_record(record, step, emitter):
            emitter.malformed()


def emit_record(record: dict[str, Any], step: int, emitter: Emitter) -> bool:
    """Emit a JSON record's numbers; False if one of them could not be a float."""
    # The loop of every large first read: emit() is inlined, and floats checked first.
    wall_time = _wall_time(record)
    marks = emitter.marks
    points = emitter.points
    ok = True
    for key, value in record.items():
        if type(value) is float:
            number = value
        elif isinstance(value, int | float) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an integer beyond any float
                ok = False
                continue
        else:
            continue  # not a metric: a phase name, a list, null
        if not key or key == STEP_KEY or key in WALL_TIME_KEYS:
            continue
        if step > marks.get(key, -1):
            marks[key] = step
            points.append(Point(key, step, number, wall_time))
    return ok


def _utf8_or_none(line: bytes) -> str | None:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return None


def parse_header(line: bytes) -> tuple[str, ...]:
    """The column names of a CSV's first line.

    Never raises: a header caught while the job rewrites the file can hold a stray `\r` or an
    open quote (the reader's check after the read finds the rewrite and reads again); a header
    csv cannot parse at all gives no names, so every row under it counts as malformed."""
    text = line.decode("utf-8", errors="replace").lstrip("\ufeff")
    row = next(_csv_rows(text), None) or []
    return tuple(name.strip() for name in row)


def _csv_rows(text: str) -> Iterator[list[str] | None]:
    """The rows of CSV text, any line ending; None for a row csv refuses (a field over csv's
    size limit), and the rows after it still read."""
    reader = csv.reader(io.StringIO(text, newline=""))
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error:
            yield None


def parse_csv(data: bytes, header: tuple[str, ...], emitter: Emitter) -> None:
    step_col = header.index(STEP_KEY) if STEP_KEY in header else None
    wall_col = next((header.index(k) for k in WALL_TIME_KEYS if k in header), None)
    metric_cols = [
        (i, name)
        for i, name in enumerate(header)
        if name and name != STEP_KEY and name not in WALL_TIME_KEYS
    ]
    text = data.decode("utf-8", errors="replace")
    for row in _csv_rows(text):
        if row is not None and not any(cell.strip() for cell in row):
            continue
        emitter.record()
        if row is None or len(row) != len(header):
            emitter.malformed()
            continue
        raw_step: float | None = None
        if step_col is not None and row[step_col].strip():
            raw_step = _number(row[step_col])
            if raw_step is None:
                emitter.malformed()
                continue
        step = emitter.step_of(raw_step)
        if step is None:
            emitter.malformed()
            continue
        wall_time = _wall_time_value(row[wall_col].strip()) if wall_col is not None else None
        ok = True
        for i, name in metric_cols:
            cell = row[i].strip()
            if not cell:
                continue  # Lightning leaves the metrics not logged at this row blank
            value = _number(cell)
            if value is None:
                ok = False
                continue
            emitter.emit(name, step, value, wall_time)
        if not ok:
            emitter.malformed()


def as_step(raw: object) -> int | None:
    """A step given as a non-negative integer (or a float with an integral value)."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw if raw >= 0 else None
    if isinstance(raw, float) and raw.is_integer() and raw >= 0:
        return int(raw)
    return None


def _number(cell: str) -> float | None:
    """A CSV cell as a number (`nan`, `inf` included), or None if it is not one."""
    try:
        return float(cell)
    except ValueError:
        return None


def _wall_time(record: Mapping[str, Any]) -> float | None:
    for key in WALL_TIME_KEYS:
        if key in record:
            return _wall_time_value(record[key])
    return None


def _wall_time_value(value: object) -> float | None:
    """Seconds since the epoch from a number or an ISO 8601 string, or None."""
    if isinstance(value, str):
        number = _number(value)
        if number is None:
            try:
                return datetime.fromisoformat(value).timestamp()
            except (ValueError, OverflowError, OSError):
                return None
        value = number
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) else None


__all__ = [
    "STEP_KEY",
    "WALL_TIME_KEYS",
    "Emitter",
    "Point",
    "as_step",
    "emit_record",
    "parse_csv",
    "parse_header",
    "parse_jsonl",
]
