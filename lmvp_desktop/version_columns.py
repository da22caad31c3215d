"""The columns of the version table: their titles, and what each shows of a version (its text,
tooltip and alignment) and sorts it by.

The table has the `FIXED_COLUMNS` (`COL_NUMBER` ... `COL_STEP`), then one column for each of
at most `KEY_METRICS` metric keys; the functions taking `metric_keys` are given the keys that
have a column, in column order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from PySide6.QtCore import Qt

import lmvp
from lmvp.history import format_metric, human_size

# How many metric keys get a column of their own (the first ones seen, newest versions first).
KEY_METRICS = 3

FIXED_COLUMNS = ("Version", "Created", "Author", "Message", "Size", "Aliases", "Step")
COL_NUMBER, COL_CREATED, COL_AUTHOR, COL_MESSAGE, COL_SIZE, COL_ALIASES, COL_STEP = range(7)


def version_step(version: lmvp.Version) -> int | None:
    """The training step of a version: the run's step, else the `step` in its metadata."""
    if version.step is not None:
        return version.step
    step = version.metadata.get("step")
    return step if isinstance(step, int) else None


def column_title(section: int, metric_keys: Sequence[str]) -> str | None:
    """The header of column `section`, None past the last column."""
    if section < len(FIXED_COLUMNS):
        return FIXED_COLUMNS[section]
    if section - len(FIXED_COLUMNS) < len(metric_keys):
        return metric_keys[section - len(FIXED_COLUMNS)]
    return None


def cell_text(v: lmvp.Version, column: int, metric_keys: Sequence[str]) -> str | None:
    """What the cell of `v` in `column` shows ("" where the version has no such value)."""
    if column == COL_NUMBER:
        return str(v.number)
    if column == COL_CREATED:
        return when(v.created_at)
    if column == COL_AUTHOR:
        return v.author or ""
    if column == COL_MESSAGE:
        return v.message.splitlines()[0] if v.message else ""
    if column == COL_SIZE:
        return human_size(v.size)
    if column == COL_ALIASES:
        return ", ".join(v.aliases)
    if column == COL_STEP:
        step = version_step(v)
        return "" if step is None else str(step)
    key = _metric_key(column, metric_keys)
    if key is None or key not in v.metrics:
        return ""
    return format_metric(v.metrics[key])


def when(moment: datetime, now: datetime | None = None) -> str:
    """A time as a person reads it at a glance, to the minute in local time: "just now",
    "3 min ago" within the hour, "today 14:05", "yesterday 09:12", "Dec 04 14:05" this year,
    else "2025-12-04 14:05"."""
    local = moment.astimezone()
    now = (now or datetime.now(local.tzinfo)).astimezone(local.tzinfo)
    age = now - local
    if timedelta(0) <= age < timedelta(minutes=1) or timedelta(seconds=-30) < age < timedelta(0):
        return "just now"
    if timedelta(0) <= age < timedelta(hours=1):
        return f"{int(age.total_seconds() // 60)} min ago"
    clock = local.strftime("%H:%M")
    if local.date() == now.date():
        return f"today {clock}"
    if local.date() == now.date() - timedelta(days=1):
        return f"yesterday {clock}"
    if local.year == now.year:
        return local.strftime("%b %d %H:%M")
    return local.strftime("%Y-%m-%d %H:%M")


def cell_tooltip(v: lmvp.Version, column: int) -> str | None:
    """The tooltip of the cell of `v` in `column`: the whole message, the exact time or size."""
    if column == COL_MESSAGE:
        return v.message or None
    if column == COL_CREATED:
        return v.created_at.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    if column == COL_SIZE:
        return f"{v.size:,} bytes in {len(v.files)} file(s)"
    return None


def cell_alignment(column: int) -> int | None:
    """The text alignment of `column`'s cells: numbers to the right, None for the default."""
    if column in (COL_NUMBER, COL_SIZE, COL_STEP) or column >= len(FIXED_COLUMNS):
        return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
    return None


def sort_value(v: lmvp.Version, column: int, metric_keys: Sequence[str]) -> Any:
    """A value of `v` in `column` that compares with every other row's (number, bytes, seconds
    or text); a version without the column's metric sorts below every number."""
    if column == COL_NUMBER:
        return v.number
    if column == COL_CREATED:
        return v.created_at.timestamp()
    if column == COL_SIZE:
        return v.size
    if column == COL_STEP:
        step = version_step(v)
        return -1 if step is None else step
    if column < len(FIXED_COLUMNS):
        return cell_text(v, column, metric_keys)
    key = _metric_key(column, metric_keys)
    value = v.metrics.get(key) if key is not None else None
    # Versions without the metric sort below every number.
    return float(value) if isinstance(value, int | float) else float("-inf")


def sort_key(v: lmvp.Version, column: int, metric_keys: Sequence[str]) -> Any:
    """A comparable value of the row in `column`, None when the version has none (no step, no
    such metric, NaN): the table puts those rows last in either order. Text compares
    case-insensitively."""
    if column in (COL_AUTHOR, COL_MESSAGE, COL_ALIASES):
        return (cell_text(v, column, metric_keys) or "").casefold()
    if column == COL_STEP:
        return version_step(v)
    if column >= len(FIXED_COLUMNS):
        key = _metric_key(column, metric_keys)
        value = v.metrics.get(key) if key is not None else None
        if not isinstance(value, int | float) or math.isnan(value):
            return None
        return float(value)
    return sort_value(v, column, metric_keys)


def _metric_key(column: int, metric_keys: Sequence[str]) -> str | None:
    position = column - len(FIXED_COLUMNS)
    return metric_keys[position] if 0 <= position < len(metric_keys) else None


__all__ = [
    "COL_ALIASES",
    "COL_AUTHOR",
    "COL_CREATED",
    "COL_MESSAGE",
    "COL_NUMBER",
    "COL_SIZE",
    "COL_STEP",
    "FIXED_COLUMNS",
    "KEY_METRICS",
    "cell_alignment",
    "cell_text",
    "cell_tooltip",
    "column_title",
    "sort_key",
    "sort_value",
    "version_step",
    "when",
]
