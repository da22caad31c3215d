"""The desktop's per-tensor compare (issue 17) on two 1 GiB checkpoints: from `CompareDialog`
being opened to its "Tensors" tab showing the table, offscreen, and how long the UI thread was
held meanwhile (the comparison runs off it). The issue asks for under 5 s on this machine.

The model and its fine-tune (10% of the tensors changed) are bench/tensor_compare.py's, sent
whole and as chunks; everything lives in a temporary folder, by default under /dev/shm.

    .venv/bin/python bench/tensor_compare_desktop.py [--dir /dev/shm] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _server import median
from PySide6.QtCore import QEventLoop, QTimer
from PySide6.QtWidgets import QApplication
from tensor_compare import CHANGED, SIZES, published

import lmvp
from lmvp_desktop.compare import CompareDialog
from tests.desktop.ui_probe import UiGapProbe

TARGET_SECONDS = 5.0


def open_and_wait(client: lmvp.Client, a: lmvp.Version, b: lmvp.Version) -> tuple[float, int]:
    """Seconds from opening the dialog to its tensors shown, and the UI thread's longest hold
    (ms)."""
    loop = QEventLoop()
    failure: list[str] = []
    with UiGapProbe() as probe:
        started = time.monotonic()
        dialog = CompareDialog(a, b, client=client)
        dialog.show()
        pane = dialog.tensors
        assert pane is not None
        dialog.tabs.setCurrentWidget(pane)
        pane.loaded.connect(loop.quit)
        pane.failed.connect(lambda sentence: (failure.append(sentence), loop.quit()))
        QTimer.singleShot(120_000, loop.quit)
        loop.exec()
        took = time.monotonic() - started
    if failure or pane.comparison is None:
        raise SystemExit(f"the compare failed: {failure or 'no answer in 120 s'}")
    changes = [r.tensor.change for r in pane.model.rows]
    assert changes.count("changed") == len(CHANGED), changes
    dialog.close()
    dialog.deleteLater()
    return took, probe.longest_held


def run(base: Path, rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {"file_bytes": sum(SIZES), "tensors": len(SIZES)}
    for mode, _server, client, a, b in published(base):
        model = f"bench/{mode}"
        va, vb = client.version(f"{model}:{a}"), client.version(f"{model}:{b}")
        results = [open_and_wait(client, va, vb) for _ in range(rounds)]
        times = [t for t, _ in results]
        out[mode] = {
            "seconds": [round(t, 3) for t in times],
            "median": median(times),
            "ui_longest_held_ms": max(held for _, held in results),
        }
    out["target_seconds"] = TARGET_SECONDS
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/dev/shm"))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    app = QApplication([])  # noqa: F841 (the dialogs need it alive)
    base = Path(tempfile.mkdtemp(prefix="lmvp-tensor-compare-desktop-", dir=args.dir))
    try:
        result = run(base, args.rounds)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
