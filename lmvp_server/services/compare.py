"""Two versions of a model side by side: their metrics with the difference, their metadata,
and their files matched by role, so that `checkpoint-400/model.safetensors` against
`checkpoint-800/model.safetensors` is one file "changed", not one removed and one added."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from lmvp_server.models import Version

_DIGITS = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class ValueRow:
    """One metric or metadata key in both versions; `difference` is b - a for two numbers."""

    key: str
    a: Any
    b: Any
    difference: float | None

    @property
    def differs(self) -> bool:
        return bool(self.a != self.b)


@dataclass(frozen=True)
class FileRow:
    """A file of either version: `change` is same, changed, added or removed."""

    change: str
    a_path: str | None
    b_path: str | None
    a_size: int | None
    b_size: int | None


@dataclass(frozen=True)
class Comparison:
    metrics: list[ValueRow]
    metadata: list[ValueRow]
    files: list[FileRow]


def compare(a: Version, b: Version) -> Comparison:
    """How `b` differs from `a`."""
    return Comparison(
        metrics=_values(a.metrics or {}, b.metrics or {}),
        metadata=_values(a.meta or {}, b.meta or {}),
        files=match_files(
            {f.path: (f.sha256, f.size) for f in a.files},
            {f.path: (f.sha256, f.size) for f in b.files},
        ),
    )


def role_of(path: str) -> str:
    """A file's role: its path with every number blanked (`checkpoint-#/model.safetensors`)."""
    return _DIGITS.sub("#", path)


def match_files(a: dict[str, tuple[str, int]], b: dict[str, tuple[str, int]]) -> list[FileRow]:
    """Files matched by path, then the rest by role when a role names one file on each side."""
    rows: list[FileRow] = []
    for path in sorted(a.keys() & b.keys()):
        change = "same" if a[path][0] == b[path][0] else "changed"
        rows.append(FileRow(change, path, path, a[path][1], b[path][1]))
    only_a = {p: v for p, v in a.items() if p not in b}
    only_b = {p: v for p, v in b.items() if p not in a}
    roles_a: dict[str, list[str]] = {}
    roles_b: dict[str, list[str]] = {}
    for p in only_a:
        roles_a.setdefault(role_of(p), []).append(p)
    for p in only_b:
        roles_b.setdefault(role_of(p), []).append(p)
    for role, paths in roles_a.items():
        others = roles_b.get(role, [])
        if len(paths) == 1 and len(others) == 1:
            pa, pb = paths[0], others[0]
            change = "same" if only_a[pa][0] == only_b[pb][0] else "changed"
            rows.append(FileRow(change, pa, pb, only_a[pa][1], only_b[pb][1]))
            del only_a[pa], only_b[pb]
    rows += [FileRow("removed", p, None, s, None) for p, (_, s) in sorted(only_a.items())]
    rows += [FileRow("added", None, p, None, s) for p, (_, s) in sorted(only_b.items())]
    order = {"changed": 0, "added": 1, "removed": 2, "same": 3}
    return sorted(rows, key=lambda r: (order[r.change], r.b_path or r.a_path or ""))


def _values(a: dict[str, Any], b: dict[str, Any]) -> list[ValueRow]:
    rows = []
    for key in sorted(a.keys() | b.keys()):
        va, vb = a.get(key), b.get(key)
        difference = None
        plain = not isinstance(va, bool) and not isinstance(vb, bool)
        if plain and isinstance(va, int | float) and isinstance(vb, int | float):
            difference = float(vb) - float(va)
        rows.append(ValueRow(key, va, vb, difference))
    return rows
