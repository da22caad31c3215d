"""The version table `lmvp.show_history` and `lmvp history` print."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from lmvp.types import Version

_MAX_MESSAGE = 48
_MAX_METRICS = 3


def human_size(size: int) -> str:
    """1536 → '1.5 KiB'."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def format_metric(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4g}"
    return str(value)


def format_table(versions: Sequence[Version], *, title: str = "") -> str:
    """A plain-text table, one version a row, newest first as given."""
    if not versions:
        return f"{title}: no versions yet" if title else "no versions yet"
    header = ("VERSION", "CREATED", "AUTHOR", "SIZE", "ALIASES", "STEP", "METRICS", "MESSAGE")
    rows = [header]
    for v in versions:
        step = v.metadata.get("step", "")
        metrics = " ".join(
            f"{k}={format_metric(val)}" for k, val in list(v.metrics.items())[:_MAX_METRICS]
        )
        message = v.message.splitlines()[0] if v.message else ""
        if len(message) > _MAX_MESSAGE:
            message = message[: _MAX_MESSAGE - 1] + "…"
        rows.append(
            (
                v.ref,
                v.created_at.astimezone().strftime("%Y-%m-%d %H:%M"),
                v.author or "",
                human_size(v.size),
                ",".join(v.aliases),
                str(step),
                metrics,
                message,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    return "\n".join(lines)
