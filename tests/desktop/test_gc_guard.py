"""The app collects garbage cycles on the UI thread only (`lmvp_desktop.gc_guard`): a Qt object
collected on a worker thread can deadlock the app against its UI thread."""

from __future__ import annotations

import threading
import weakref

from PySide6.QtCore import QObject
from pytestqt.qtbot import QtBot

from lmvp_desktop.gc_guard import GcGuard


class _Cycle:
    def __init__(self) -> None:
        self.me = self
        self.qobject = QObject()


def test_a_cycle_dropped_while_a_worker_allocates_is_collected_on_the_ui_thread(
    qtbot: QtBot,
) -> None:
    guard = GcGuard(interval_ms=50)
    try:
        collected_in: list[str] = []
        cycle = _Cycle()
        weakref.finalize(cycle, lambda: collected_in.append(threading.current_thread().name))
        del cycle

        # Far past CPython's thresholds: with automatic collection on, this worker would
        # collect the cycle (and destroy its QObject) itself.
        kept: list[list[int]] = []  # alive, as a parsed page is, so the counts stay high
        worker = threading.Thread(
            target=lambda: kept.extend([] for _ in range(200_000)), name="worker"
        )
        worker.start()
        worker.join()
        assert collected_in == []

        qtbot.waitUntil(lambda: bool(collected_in), timeout=5000)
        assert collected_in == [threading.main_thread().name]
    finally:
        guard.stop()
