"""Comparing two versions of a model: what differs in their metadata, metrics and files.

`compare_versions(a, b)` works out the differences (plain data, no Qt); `CompareDialog` shows
them side by side, differences highlighted, with a difference column for numbers (b - a and
its percentage) and numbers at 6 significant digits (all of them in the tooltip), and lists the
files that were added, removed or changed (by sha256) from `a` to `b`. Files are matched by
role: `model_step_400.pt` in `a` and `model_step_800.pt` in `b` (the same name but for its
numbers, in the same folder) are one file "changed", not one removed and one added. Given a
client, it also has a "Tensors" tab (`lmvp_desktop.tensor_compare.TensorPane`): the server's
per-tensor comparison of the two versions' safetensors files, loaded in the background.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

import lmvp
from lmvp.history import human_size
from lmvp_desktop.tensor_compare import TensorPane

# Two versions always differ in these: not worth a highlight.
_ALWAYS_DIFFERENT = frozenset({"version", "created"})
# Differences are shown on this background, in light and dark themes alike.
DIFFERENT = QColor(255, 200, 80, 110)


class FileChange(Enum):
    """How a file of the newer version relates to the older one."""

    ADDED = "added"
    REMOVED = "removed"
    CHANGED = "changed"
    SAME = "same"


@dataclass(frozen=True)
class FieldDifference:
    """One field (`metadata.lr`, `metrics.loss`, `author` ...) in both versions."""

    name: str
    a: str
    b: str
    # b - a and its percentage of a, for two numbers ("+0.0123 (+4.1%)"); else "".
    difference: str = ""
    # The values at full precision (tooltips), where they were shortened.
    full_a: str = ""
    full_b: str = ""

    @property
    def differs(self) -> bool:
        return self.a != self.b or self.full_a != self.full_b


@dataclass(frozen=True)
class FileDifference:
    """One file path in either version; `a`/`b` are None where the version lacks it."""

    path: str
    change: FileChange
    a: lmvp.FileEntry | None
    b: lmvp.FileEntry | None


@dataclass(frozen=True)
class Comparison:
    """Two versions field by field (`fields`) and file by file (`files`)."""

    a: lmvp.Version
    b: lmvp.Version
    fields: list[FieldDifference]
    files: list[FileDifference]

    @property
    def changed_files(self) -> list[FileDifference]:
        """The files that were added, removed or changed."""
        return [f for f in self.files if f.change is not FileChange.SAME]

    @property
    def differing_fields(self) -> list[FieldDifference]:
        """The fields whose values differ, leaving out those that always do (number, time)."""
        return [f for f in self.fields if f.differs and f.name not in _ALWAYS_DIFFERENT]


def compare_versions(a: lmvp.Version, b: lmvp.Version) -> Comparison:
    """`a` and `b` side by side: the general fields, every (flattened) metadata key and metric of
    either, and every file of either, marked added/removed/changed/same going from `a` to `b`."""
    general = [
        FieldDifference("version", str(a.number), str(b.number)),
        FieldDifference("created", _time(a), _time(b)),
        FieldDifference("author", a.author or "", b.author or ""),
        FieldDifference("message", a.message, b.message),
        FieldDifference("size", human_size(a.size), human_size(b.size)),
        FieldDifference("parent", _maybe(a.parent), _maybe(b.parent)),
        FieldDifference("aliases", ", ".join(a.aliases), ", ".join(b.aliases)),
        FieldDifference("run", _maybe(a.run), _maybe(b.run)),
        FieldDifference("step", _maybe(a.step), _maybe(b.step)),
        FieldDifference("source", _source(a), _source(b)),
    ]
    fields = general + _side_by_side("metadata", a.metadata, b.metadata)
    fields += _side_by_side("metrics", a.metrics, b.metrics)

    a_files = {f.path: f for f in a.files}
    b_files = {f.path: f for f in b.files}
    files = []
    for path in sorted(a_files.keys() | b_files.keys()):
        old, new = a_files.get(path), b_files.get(path)
        if old is None:
            change = FileChange.ADDED
        elif new is None:
            change = FileChange.REMOVED
        elif old.sha256 != new.sha256:
            change = FileChange.CHANGED
        else:
            change = FileChange.SAME
        files.append(FileDifference(path, change, old, new))
    return Comparison(a, b, fields, _match_by_role(files))


def _role(path: str) -> str:
    """A file's name with its numbers left out: its role across checkpoints."""
    return re.sub(r"\d+", "#", path)


def _match_by_role(files: list[FileDifference]) -> list[FileDifference]:
    """Pair a removed and an added file of the same role (and only one of each) as changed."""
    removed: dict[str, list[FileDifference]] = {}
    added: dict[str, list[FileDifference]] = {}
    for f in files:
        if f.change is FileChange.REMOVED:
            removed.setdefault(_role(f.path), []).append(f)
        elif f.change is FileChange.ADDED:
            added.setdefault(_role(f.path), []).append(f)
    paired: dict[str, FileDifference] = {}
    for role, gone in removed.items():
        new = added.get(role, [])
        if len(gone) == 1 and len(new) == 1:
            old_file, new_file = gone[0], new[0]
            same = old_file.a is not None and new_file.b is not None
            same = same and old_file.a.sha256 == new_file.b.sha256  # type: ignore[union-attr]
            merged = FileDifference(
                f"{old_file.path} → {new_file.path}",
                FileChange.SAME if same else FileChange.CHANGED,
                old_file.a,
                new_file.b,
            )
            paired[old_file.path] = merged
            paired[new_file.path] = merged
    out: list[FileDifference] = []
    for f in files:
        merged_file = paired.get(f.path)
        if merged_file is None:
            out.append(f)
        elif merged_file not in out:
            out.append(merged_file)
    return out


class CompareDialog(QDialog):
    """Two versions side by side: fields and metrics (differences highlighted) on one tab, the
    files that differ on another and, with a `client`, their tensors on a third (loaded from
    the server in the background as the dialog opens). Not modal: open it with `show()`."""

    def __init__(
        self,
        a: lmvp.Version,
        b: lmvp.Version,
        parent: QWidget | None = None,
        *,
        client: lmvp.Client | None = None,
    ) -> None:
        super().__init__(parent)
        self.comparison = compare_versions(a, b)
        self.setWindowTitle(f"{a.project}/{a.model}: version {a.number} and {b.number}")
        self.resize(820, 560)

        self.fields_table = self._fields_table()
        self.files_table = self._files_table()
        changed = len(self.comparison.changed_files)
        fields = len(self.comparison.differing_fields)
        summary = QLabel(
            f"{fields} field(s) and {changed} file(s) differ"
            if changed or fields
            else "Same files, metadata and metrics"
        )
        tabs = QTabWidget()
        tabs.addTab(self.fields_table, "Metadata and metrics")
        tabs.addTab(self.files_table, f"Files ({changed} differ)")
        self.tensors: TensorPane | None = None
        if client is not None:
            self.tensors = TensorPane()
            tabs.addTab(self.tensors, "Tensors")
            self.tensors.loaded.connect(self._on_tensors_loaded)
            self.tensors.load(client, a, b)
        self.tabs = tabs
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.close)

        layout = QVBoxLayout(self)
        layout.addWidget(summary)
        layout.addWidget(tabs)
        layout.addWidget(buttons)

    def _on_tensors_loaded(self) -> None:
        if self.tensors is not None:
            index = self.tabs.indexOf(self.tensors)
            self.tabs.setTabText(index, f"Tensors ({self.tensors.changed_count()} differ)")

    def _fields_table(self) -> QTableWidget:
        c = self.comparison
        table = QTableWidget(len(c.fields), 4)
        table.setHorizontalHeaderLabels(
            ["", f"v{c.a.number}", f"v{c.b.number}", f"Difference (v{c.b.number} - v{c.a.number})"]
        )
        table.verticalHeader().setVisible(False)
        table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        for row, field in enumerate(c.fields):
            cells = (field.name, field.a, field.b, field.difference)
            tips = (field.name, field.full_a or field.a, field.full_b or field.b, field.difference)
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(tips[column])
                # Number, creation time and the like always differ: highlight the rest.
                if field.differs and field.name not in _ALWAYS_DIFFERENT:
                    item.setBackground(QBrush(DIFFERENT))
                table.setItem(row, column, item)
        table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        table.horizontalHeader().setStretchLastSection(True)
        for column in range(3):
            table.resizeColumnToContents(column)
        return table

    def _files_table(self) -> QTableWidget:
        c = self.comparison
        changed = c.changed_files
        table = QTableWidget(len(changed), 4)
        table.setHorizontalHeaderLabels(
            ["File", "Change", f"v{c.a.number} size", f"v{c.b.number} size"]
        )
        table.verticalHeader().setVisible(False)
        table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        for row, diff in enumerate(changed):
            cells = (
                diff.path,
                diff.change.value,
                human_size(diff.a.size) if diff.a else "",
                human_size(diff.b.size) if diff.b else "",
            )
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if column == 0:
                    item.setToolTip(
                        "\n".join(
                            f"v{n}: {entry.sha256}"
                            for n, entry in ((c.a.number, diff.a), (c.b.number, diff.b))
                            if entry is not None
                        )
                    )
                table.setItem(row, column, item)
        table.horizontalHeader().setStretchLastSection(True)
        table.resizeColumnToContents(0)
        return table


def _time(v: lmvp.Version) -> str:
    return v.created_at.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _maybe(value: object) -> str:
    return "" if value is None else str(value)


def _source(v: lmvp.Version) -> str:
    return f"{v.source_host}:{v.source_path}" if v.source_host or v.source_path else ""


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping) and value:
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}", inner, out)
    else:
        out[prefix] = value


def _format(value: Any) -> str:
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


def _number(value: float, digits: int = 6) -> str:
    """A float at `digits` significant digits, still reading as a float ("1.0", "0.823363")."""
    if math.isnan(value) or math.isinf(value):
        return str(value)
    text = f"{value:.{digits}g}"
    return text if any(c in text for c in ".en") else f"{text}.0"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _difference(a: Any, b: Any) -> str:
    """b - a with a sign, and its percentage of a when a is not 0; "" unless both numbers."""
    if not (_is_number(a) and _is_number(b)) or a == b:
        return ""
    delta = b - a
    text = (
        f"{'+' if delta > 0 else ''}{_number(float(delta)) if isinstance(delta, float) else delta}"
    )
    if a != 0:
        text += f" ({delta / abs(a) * 100:+.1f}%)"
    return text


def _full(value: Any) -> str:
    """A float's full precision (for a tooltip), where `_format` shortened it."""
    return repr(value) if isinstance(value, float) and _format(value) != repr(value) else ""


def _side_by_side(
    section: str, a: Mapping[str, Any], b: Mapping[str, Any]
) -> list[FieldDifference]:
    flat_a: dict[str, Any] = {}
    flat_b: dict[str, Any] = {}
    for key, value in a.items():
        _flatten(f"{section}.{key}", value, flat_a)
    for key, value in b.items():
        _flatten(f"{section}.{key}", value, flat_b)
    return [
        FieldDifference(
            key,
            _format(flat_a[key]) if key in flat_a else "",
            _format(flat_b[key]) if key in flat_b else "",
            _difference(flat_a.get(key), flat_b.get(key)),
            _full(flat_a.get(key)),
            _full(flat_b.get(key)),
        )
        for key in sorted(flat_a.keys() | flat_b.keys())
    ]


__all__ = [
    "CompareDialog",
    "Comparison",
    "FieldDifference",
    "FileChange",
    "FileDifference",
    "compare_versions",
]
