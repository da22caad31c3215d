"""The compare dialog's "Tensors" tab (issue 17): two versions of a model published through the
public client against a real server, their safetensors files compared per tensor by the
server, shown offscreen in the dialog (loaded off the UI thread); and the table's order,
sorting, formatting and the sentences a screen reader reads, on a comparison made by hand."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import Qt
from pytestqt.qtbot import QtBot
from safetensors.numpy import save_file

import lmvp
from lmvp_desktop.compare import CompareDialog
from lmvp_desktop.tensor_compare import (
    COL_CHANGE,
    COL_FILE,
    COL_RELATIVE,
    COL_TENSOR,
    COL_TYPE,
    TensorPane,
)
from tests.desktop.ui_probe import UiGapProbe
from tests.support import Deployment

TensorChange = lmvp.TensorChange
FileTensors = lmvp.FileTensors
TensorComparison = lmvp.TensorComparison


def _rows(pane: TensorPane, *columns: int) -> list[tuple[str, ...]]:
    model = pane.model
    return [
        tuple(str(model.index(row, column).data()) for column in columns)
        for row in range(model.rowCount())
    ]


# --- the real path: a server, the public client, the dialog --------------------------------------


@pytest.fixture(scope="module")
def two_versions(
    sqlite_deployment: Deployment, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, str, lmvp.Version, lmvp.Version]:
    """Versions 1 and 2 of a model: one safetensors file whose tensors were changed (by 1 %),
    reshaped, removed, added and left alone, and a file that is not safetensors."""
    d = sqlite_deployment
    owner = d.user("tens-owner")
    project = d.project(owner, prefix="tens")
    folder = tmp_path_factory.mktemp("tensors")
    rng = np.random.default_rng(7)
    base = {
        "embed.weight": rng.standard_normal((64, 32)).astype(np.float32),
        "layer.0.weight": rng.standard_normal((32, 32)).astype(np.float32),
        "layer.0.bias": np.zeros(32, dtype=np.float32),
        "head.weight": rng.standard_normal((10, 32)).astype(np.float32),
        "old.scale": np.ones(4, dtype=np.float32),
    }
    tuned = dict(base)
    tuned["layer.0.weight"] = base["layer.0.weight"] * np.float32(1.01)  # ‖a-b‖/‖a‖ = 1 %
    tuned["head.weight"] = rng.standard_normal((12, 32)).astype(np.float32)  # reshaped
    del tuned["old.scale"]
    tuned["new.gate"] = np.ones(8, dtype=np.float16)
    versions = []
    with lmvp.Client(d.url, owner.token, cache_dir=folder / "cache") as client:
        for i, tensors in enumerate((base, tuned)):
            model_dir = folder / f"v{i}"
            model_dir.mkdir()
            save_file(tensors, str(model_dir / "model.safetensors"))
            (model_dir / "optimizer.pt").write_bytes(bytes([i]) * 100)
            versions.append(client.update(f"{project}/m", model_dir, message=f"v{i}"))
    return d.url, owner.token, versions[0], versions[1]


@pytest.fixture
def client(
    two_versions: tuple[str, str, lmvp.Version, lmvp.Version], tmp_path: Path
) -> Iterator[lmvp.Client]:
    url, token, _a, _b = two_versions
    with lmvp.Client(url, token, cache_dir=tmp_path / "cache") as c:
        yield c


def test_dialog_shows_the_servers_per_tensor_comparison_without_blocking_the_ui(
    qtbot: QtBot, client: lmvp.Client, two_versions: tuple[str, str, lmvp.Version, lmvp.Version]
) -> None:
    _url, _token, a, b = two_versions
    with UiGapProbe() as probe:
        opened = time.monotonic()
        dialog = CompareDialog(a, b, client=client)
        qtbot.addWidget(dialog)
        dialog.show()
        pane = dialog.tensors
        assert pane is not None
        dialog.tabs.setCurrentWidget(pane)  # as a person clicks the tab
        # The dialog is up before the server answered: the comparison runs in the background.
        assert pane.status.text() == "Comparing tensors…" and not pane.table.isVisible()
        with qtbot.waitSignal(pane.loaded, timeout=5000):
            pass
        took = time.monotonic() - opened
    assert took < 5, f"the tensors appeared {took:.2f} s after the dialog opened"
    assert probe.longest_held < 100, f"the UI thread was blocked for {probe.longest_held} ms"

    assert pane.status.text() == (
        "1 changed, 1 reshaped, 1 added, 1 removed, 2 unchanged. "
        "Not compared per tensor (not safetensors): optimizer.pt"
    )
    assert pane.table.isVisible() and pane.table.isColumnHidden(COL_FILE)  # one file
    assert _rows(pane, COL_TENSOR, COL_CHANGE, COL_TYPE, COL_RELATIVE) == [
        ("layer.0.weight", "changed", "F32 [32, 32]", "1.00 %"),
        ("head.weight", "reshaped", "F32 [10, 32] → F32 [12, 32]", ""),
        ("new.gate", "added", "→ F16 [8]", ""),
        ("old.scale", "removed", "F32 [4] →", ""),
        ("embed.weight", "unchanged", "F32 [64, 32]", ""),
        ("layer.0.bias", "unchanged", "F32 [32]", ""),
    ]
    first = pane.model.index(0, COL_TENSOR)
    assert first.data(Qt.ItemDataRole.AccessibleDescriptionRole) == (
        "layer.0.weight: changed by 1.00 %, F32 [32, 32]"
    )
    assert pane.table.accessibleName() == "Tensors"
    assert pane.table.accessibleDescription() == pane.status.text()
    tab = dialog.tabs.indexOf(pane)
    assert dialog.tabs.tabText(tab) == "Tensors (4 differ)"


def test_an_error_from_the_server_is_said_in_words(
    qtbot: QtBot,
    sqlite_deployment: Deployment,
    two_versions: tuple[str, str, lmvp.Version, lmvp.Version],
    tmp_path: Path,
) -> None:
    _url, _token, a, b = two_versions
    outsider = sqlite_deployment.user("tens-outsider")  # not a member of the project
    with lmvp.Client(sqlite_deployment.url, outsider.token, cache_dir=tmp_path / "c") as client:
        dialog = CompareDialog(a, b, client=client)
        qtbot.addWidget(dialog)
        dialog.show()
        pane = dialog.tensors
        assert pane is not None
        dialog.tabs.setCurrentWidget(pane)
        with qtbot.waitSignal(pane.failed, timeout=5000) as failed:
            pass
    sentence = failed.args[0]
    assert sentence and "Traceback" not in sentence and sentence.endswith(".")
    assert pane.error_box.isVisible() and pane.error_box.text() == sentence
    assert not pane.table.isVisible() and pane.status.text() == ""


def test_without_a_client_the_dialog_has_no_tensors_tab(
    qtbot: QtBot, two_versions: tuple[str, str, lmvp.Version, lmvp.Version]
) -> None:
    _url, _token, a, b = two_versions
    dialog = CompareDialog(a, b)
    qtbot.addWidget(dialog)
    assert dialog.tensors is None and dialog.tabs.count() == 2


# --- the table on a comparison made by hand ------------------------------------------------------


def _change(
    name: str,
    change: str,
    relative: float | None = None,
    a: tuple[str, tuple[int, ...]] | None = ("F32", (4,)),
    b: tuple[str, tuple[int, ...]] | None = ("F32", (4,)),
) -> lmvp.TensorChange:
    return TensorChange(
        name=name,
        change=change,
        a_dtype=a[0] if a else None,
        b_dtype=b[0] if b else None,
        a_shape=a[1] if a else None,
        b_shape=b[1] if b else None,
        relative_change=relative,
    )


def test_percent_has_three_significant_digits() -> None:
    from lmvp.types import percent_change as percent

    assert percent(0.00412) == "0.412 %"
    assert percent(0.01) == "1.00 %"
    assert percent(0.5) == "50.0 %"
    assert percent(1.0) == "100 %"
    assert percent(12.345) == "1230 %"
    assert percent(1.234e-7) == "1.23e-05 %"
    assert percent(float("inf")) == "∞ %"
    assert percent(None) == ""


def test_several_files_show_the_file_and_every_column_sorts(qtbot: QtBot) -> None:
    shards = [
        FileTensors(
            "model-00001.safetensors",
            "model-00001.safetensors",
            [
                _change("a.w", "changed", 0.002),
                _change("a.b", "unchanged"),
            ],
        ),
        FileTensors(
            "model-00002.safetensors",
            "model-00002.safetensors",
            [
                _change("b.w", "changed", 0.3),
                _change("b.x", "added", a=None),
                _change("b.b", "unchanged"),
            ],
        ),
        FileTensors("extra.safetensors", None, [_change("z", "removed", b=None)]),
    ]
    pane = TensorPane()
    qtbot.addWidget(pane)
    pane.show_comparison(TensorComparison(a=3, b=5, files=shards, skipped=[]))
    pane.show()

    assert pane.status.text() == "2 changed, 0 reshaped, 1 added, 1 removed, 2 unchanged in 3 files"
    assert not pane.table.isColumnHidden(COL_FILE)
    # Changed rows first (each file's as the server ordered them), grouped by file within.
    assert _rows(pane, COL_FILE, COL_TENSOR) == [
        ("model-00001.safetensors", "a.w"),
        ("model-00002.safetensors", "b.w"),
        ("model-00002.safetensors", "b.x"),
        ("extra.safetensors", "z"),
        ("model-00001.safetensors", "a.b"),
        ("model-00002.safetensors", "b.b"),
    ]
    assert pane.model.headerData(COL_TYPE, Qt.Orientation.Horizontal) == "dtype, shape (v3 → v5)"
    assert pane.model.index(3, COL_TENSOR).data(Qt.ItemDataRole.AccessibleDescriptionRole) == (
        "z: removed in v5, was F32 [4], in extra.safetensors"
    )

    pane.table.sortByColumn(COL_RELATIVE, Qt.SortOrder.DescendingOrder)
    assert [r[0] for r in _rows(pane, COL_TENSOR)][:2] == ["b.w", "a.w"]
    pane.table.sortByColumn(COL_RELATIVE, Qt.SortOrder.AscendingOrder)
    assert [r[0] for r in _rows(pane, COL_TENSOR)][:2] == ["a.w", "b.w"]  # the rest go last
    pane.table.sortByColumn(COL_TENSOR, Qt.SortOrder.AscendingOrder)
    assert [r[0] for r in _rows(pane, COL_TENSOR)] == ["a.b", "a.w", "b.b", "b.w", "b.x", "z"]
    pane.table.sortByColumn(COL_FILE, Qt.SortOrder.AscendingOrder)
    assert [r[0] for r in _rows(pane, COL_TENSOR)] == ["a.w", "a.b", "b.w", "b.x", "b.b", "z"]


def test_thousands_of_tensors_show_at_once(qtbot: QtBot) -> None:
    tensors = [_change(f"layers.{i}.weight", "changed", 1 / (i + 1)) for i in range(2000)]
    tensors += [_change(f"layers.{i}.bias", "unchanged") for i in range(8000)]
    pane = TensorPane()
    qtbot.addWidget(pane)
    pane.resize(900, 600)
    pane.show()
    started = time.monotonic()
    pane.show_comparison(
        TensorComparison(
            a=1, b=2, files=[FileTensors("m.safetensors", "m.safetensors", tensors)], skipped=[]
        )
    )
    pane.table.sortByColumn(COL_TENSOR, Qt.SortOrder.AscendingOrder)
    qtbot.wait(1)
    took = time.monotonic() - started
    assert pane.model.rowCount() == 10_000
    assert took < 1.0, f"10,000 tensors took {took:.2f} s to show and sort"


def test_versions_without_safetensors_say_so_and_show_no_table(qtbot: QtBot) -> None:
    pane = TensorPane()
    qtbot.addWidget(pane)
    pane.show()
    pane.show_comparison(TensorComparison(a=1, b=2, files=[], skipped=["model.bin"]))
    assert pane.status.text() == (
        "Neither version has a safetensors file: there are no tensors to compare. "
        "Not compared per tensor (not safetensors): model.bin"
    )
    assert not pane.table.isVisible() and pane.changed_count() == 0
