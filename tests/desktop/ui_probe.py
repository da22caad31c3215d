"""Whether the UI thread kept running: a 5 ms timer on it, and the longest gap between two of
its ticks (what a person feels as a frozen window). Used by the tests that must show the UI
thread never waits on the network or the disk.

A gap has two parts: time the thread was held (working, waiting on a lock, the GIL, a socket or
the disk: what our code can cause) and time it was ready to run but the kernel gave both cores
to other processes (a busy CI machine running the other tests). The kernel counts the second
per thread (`/proc/thread-self/schedstat`, second field: nanoseconds spent waiting on a run
queue), so `held` is each gap less that wait, and the tests bound `held`; `gaps` keeps the
wall-clock gaps for the report."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

from PySide6.QtCore import QElapsedTimer, QTimer

SCHEDSTAT = Path("/proc/thread-self/schedstat")


def _run_queue_wait_ms() -> float:
    """Milliseconds this thread has spent ready to run while others had the CPU (0 where the
    kernel does not say, so that `held` is then the whole gap)."""
    try:
        return int(SCHEDSTAT.read_text().split()[1]) / 1e6
    except (OSError, IndexError, ValueError):
        return 0.0


class UiGapProbe:
    """Ticks every `interval_ms` on the UI thread while started; `gaps` are the milliseconds
    between ticks and `held` the same gaps less the time the kernel kept the thread waiting for
    a CPU. Use as a context manager around what must not block the UI thread (the test must let
    the event loop run meanwhile, e.g. with `qtbot.waitUntil`)."""

    def __init__(self, interval_ms: int = 5) -> None:
        self.gaps: list[int] = []
        self.held: list[int] = []
        self._clock = QElapsedTimer()
        self._last = 0
        self._last_wait = 0.0
        self._timer = QTimer()
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)

    @property
    def longest(self) -> int:
        """The longest wall-clock gap, in milliseconds."""
        return max(self.gaps, default=0)

    @property
    def longest_held(self) -> int:
        """The longest gap less the run-queue wait in it: how long the UI thread itself was
        kept from its event loop."""
        return max(self.held, default=0)

    @property
    def median(self) -> int:
        return sorted(self.gaps)[len(self.gaps) // 2] if self.gaps else 0

    def start(self) -> None:
        self._clock.start()
        self._last = self._clock.elapsed()
        self._last_wait = _run_queue_wait_ms()
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
        wait = _run_queue_wait_ms()
        gap = now - self._last
        self.gaps.append(gap)
        self.held.append(max(0, round(gap - (wait - self._last_wait))))
        self._last = now
        self._last_wait = wait
