"""Python's cycle collector runs on the UI thread only.

CPython collects cycles in whichever thread happens to allocate when a threshold is crossed.
In the app that is often a worker (a `tasks.Task` parsing a page of versions, the daemon's loop,
the event stream's thread). If the cycle holds a Qt object, its C++ destructor then runs on that
worker: it takes Qt's lock on the object's connections and asks for the GIL to look up Python
overrides, while the UI thread holds the GIL and waits for that same lock inside a paint
event. Both wait forever. A hang of the whole app, seen in the suite as a version-table test
that never ended (the worker's stack: `gc_collect_main` → `QObject::~QObject` →
`Shiboken::GilState::acquire`; the UI thread's: `QTableView::paintEvent` → … →
`QObject::~QObject` → `QBasicMutex::lockInternal`).

So the app turns automatic collection off and collects on a UI-thread timer instead, by the
same generation thresholds CPython uses (the pattern pyqtgraph ships as `GarbageCollector`;
importing pyqtgraph for it would cost the start-up its 0.6 s). Reference counting, which frees
almost everything, is untouched.
"""

from __future__ import annotations

import gc

from PySide6.QtCore import QObject, QTimer

INTERVAL_MS = 1000


class GcGuard(QObject):
    """Collects garbage cycles on the thread that owns it (the UI thread), never elsewhere."""

    def __init__(self, parent: QObject | None = None, interval_ms: int = INTERVAL_MS) -> None:
        super().__init__(parent)
        self._threshold = gc.get_threshold()
        gc.disable()
        self._timer = QTimer(self)
        self._timer.timeout.connect(self.collect_due)
        self._timer.start(interval_ms)

    def collect_due(self) -> None:
        """Collect the generations whose allocation counts passed CPython's thresholds."""
        counts = gc.get_count()
        if counts[0] <= self._threshold[0]:
            return
        generation = 0
        if counts[1] > self._threshold[1]:
            generation = 2 if counts[2] > self._threshold[2] else 1
        gc.collect(generation)

    def stop(self) -> None:
        """Collect everything once more and give collection back to CPython."""
        self._timer.stop()
        gc.collect()
        gc.enable()


def install(app: QObject) -> GcGuard:
    """Move cycle collection to `app`'s thread for as long as `app` lives."""
    return GcGuard(app)


__all__ = ["GcGuard", "install"]
