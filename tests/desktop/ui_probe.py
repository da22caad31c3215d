"""Whether the UI thread kept running: a 5 ms timer on it, and the longest gap between two of
its ticks (what a person feels as a frozen window). Used by the tests that must show the UI
thread never waits on the network or the disk."""

from __future__ import annotations

from types import TracebackType

from PySide6.QtCore import QElapsedTimer, QTimer


class UiGapProbe:
    """Ticks every `interval_ms` on the UI thread while started; `gaps` are the milliseconds
    between ticks. Use as a context manager around what must not block the UI thread (the test
    must let the event loop run meanwhile, e.g. with `qtbot.waitUntil`)."""

    def __init__(self, interval_ms: int = 5) -> None:
        self.gaps: list[int] = []
        self._clock = QElapsedTimer()
        self._last = 0
        self._timer = QTimer()
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)

    @property
    def longest(self) -> int:
        return max(self.gaps, default=0)

    @property
    def median(self) -> int:
        return sorted(self.gaps)[len(self.gaps) // 2] if self.gaps else 0

    def start(self) -> None:
        self._clock.start()
        self._last = self._clock.elapsed()
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()

    def __enter__(self) -> UiGapProbe:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _tick(self) -> None:
        now = self._clock.elapsed()
        self.gaps.append(now - self._last)
        self._last = now
