"""The columns of the version table: their titles, and what each shows of a version (its text,
tooltip and alignment) and sorts it by.

The table has the `FIXED_COLUMNS` (`COL_NUMBER` ... `COL_KEPT`), then one column for each of
at most `KEY_METRICS` metric keys; the functions taking `metric_keys` are given the keys that
have a column, in column order.

`COL_KEPT` ("Kept by") is not a field of the version: it says which rules of the model's
retention policy keep the version, or that the policy's next application removes it, as the
server's preview says (`kept_text`, `kept_tooltip`, `rule_words`); empty without a policy.
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

FIXED_COLUMNS = ("Version", "Created", "Author", "Message", "Size", "Aliases", "Step", "Kept by")
COL_NUMBER, COL_CREATED, COL_AUTHOR, COL_MESSAGE, COL_SIZE, COL_ALIASES, COL_STEP, COL_KEPT = range(
    8
)

# What the "Kept by" cell of a version the next application of the policy removes says.
REMOVED_TEXT = "removed next"


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
    if column == COL_KEPT:  # not the version's: the table fills it from the retention preview
        return ""
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


def rule_words(rule: str, *, short: bool = False) -> str:
    """One rule of a preview's `KeptVersion.rules` in words: `best:3:val_loss:min` is "the
    best 3 by val_loss (min)", or with `short` (a table cell) "best 3 val_loss"; a rule this
    app does not know is shown as the server wrote it."""
    kind, _, rest = rule.partition(":")
    if kind == "alias":
        return f"alias {rest}" if short else f"the alias {rest}"
    if kind == "latest":
        return f"latest {rest}" if short else f"the latest {rest}"
    if kind == "best":
        count, _, tail = rest.partition(":")
        metric, _, mode = tail.rpartition(":")
        if not metric:  # no mode given: all of it is the metric
            metric, mode = tail, ""
        if short:
            return f"best {count} {metric}"
        return f"the best {count} by {metric}" + (f" ({mode})" if mode else "")
    if kind == "every-steps":
        return f"every {rest} steps" if short else f"one every {rest} steps"
    if kind == "every-hours":
        return f"every {rest} h" if short else f"one every {rest} hours"
    if kind == "within-hours":
        return f"within {rest} h" if short else f"younger than {rest} hours"
    return rule


def kept_text(rules: Sequence[str] | None, removed: bool) -> str:
    """The "Kept by" cell: the rules that keep the version, in short words, or `REMOVED_TEXT`
    when the next application removes it; "" when the model has no policy (`rules` None)."""
    if removed:
        return REMOVED_TEXT
    if not rules:
        return ""
    return ", ".join(rule_words(r, short=True) for r in rules)


def kept_tooltip(rules: Sequence[str] | None, removed: bool) -> str | None:
    """The "Kept by" cell's tooltip (and accessible description): the same in whole words."""
    if removed:
        return "The next application of the retention policy moves this version to the trash"
    if not rules:
        return None
    return "Kept by the retention policy: " + "; ".join(rule_words(r) for r in rules)


def _metric_key(column: int, metric_keys: Sequence[str]) -> str | None:
    position = column - len(FIXED_COLUMNS)
    return metric_keys[position] if 0 <= position < len(metric_keys) else None


__all__ = [
    "COL_ALIASES",
    "COL_AUTHOR",
    "COL_CREATED",
    "COL_KEPT",
    "COL_MESSAGE",
    "COL_NUMBER",
    "COL_SIZE",
    "COL_STEP",
    "FIXED_COLUMNS",
    "KEY_METRICS",
    "REMOVED_TEXT",
    "cell_alignment",
    "cell_text",
    "cell_tooltip",
    "column_title",
    "kept_text",
    "kept_tooltip",
    "rule_words",
    "sort_key",
    "sort_value",
    "version_step",
    "when",
]
