"""The server side of the metric plot: `PlotLoader` makes every call a `MetricPlot` needs (a
model's runs, a run, a version, metric series and their detail for a step range) and keeps the
timer that has the plot follow running runs live.

Every server call runs through `run_async`: the UI thread never waits on the network. Results
of a call made before the last `reset` (an earlier `show_model`) that arrive late are dropped
(each load has a generation number). The calls that load what is shown count for `is_loading`;
`loaded` is emitted when none is left, `failed(message)` when a call fails.

While the plot shows a running run it turns the timer on (`set_live`), which emits `poll_due`
every `live_interval_ms`; `poll_run` then asks for the run's latest state and its points past
the last step the plot has.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

import lmvp
from lmvp.types import RunInfo, Series
from lmvp_desktop.tasks import run_async

log = logging.getLogger(__name__)

# Points per series asked of the server (it keeps each bucket's first, last, min and max).
MAX_POINTS = 2000
# How often a running run is asked for new points while the plot is visible.
LIVE_INTERVAL_MS = 2000

NewPoints = tuple[RunInfo, dict[str, Series]]


class PlotLoader(QObject):
    """A metric plot's server calls and live timer. See the module docstring."""

    loaded = Signal()  # the last call counted for `is_loading` is done
    failed = Signal(str)  # a server call failed (message)
    poll_due = Signal()  # live: time to ask the running runs for new points

    def __init__(
        self,
        client: lmvp.Client,
        parent: QObject | None = None,
        *,
        live_interval_ms: int = LIVE_INTERVAL_MS,
    ) -> None:
        super().__init__(parent)
        self._client = client
        self._generation = 0
        self._pending = 0
        self._polling: set[int] = set()
        self._live_timer = QTimer(self)
        self._live_timer.setInterval(live_interval_ms)
        self._live_timer.timeout.connect(self.poll_due)

    @property
    def is_loading(self) -> bool:
        """Whether runs or curves are still on their way from the server."""
        return self._pending > 0

    @property
    def is_live(self) -> bool:
        """Whether the live timer runs."""
        return self._live_timer.isActive()

    def reset(self) -> None:
        """Drop the answers of every call made so far, when they come: another model is shown."""
        self._generation += 1
        self._pending = 0
        self._polling.clear()

    def load_runs(self, model_ref: str, on_done: Callable[[list[RunInfo]], None]) -> None:
        """The runs of `project/model`, newest first, to `on_done` (counts for loading)."""
        self._start(self._client.runs, model_ref, on_done=on_done)

    def load_run_list(self, model_ref: str, on_done: Callable[[list[RunInfo]], None]) -> None:
        """The runs of `project/model` again, to `on_done` (not counted for loading)."""
        self._start(self._client.runs, model_ref, on_done=on_done, pending=False)

    def load_series(
        self, run_id: int, keys: list[str], on_done: Callable[[dict[str, Series]], None]
    ) -> None:
        """The run's series of `keys`, downsampled to `MAX_POINTS`, to `on_done` (counts for
        loading)."""
        self._start(self._client.metrics, run_id, keys=keys, max_points=MAX_POINTS, on_done=on_done)

    def load_detail(
        self,
        run_id: int,
        key: str,
        step_min: int,
        step_max: int,
        *,
        on_done: Callable[[dict[str, Series]], None],
        on_error: Callable[[BaseException], None],
    ) -> None:
        """The run's series `key` between two steps, downsampled to `MAX_POINTS`, to `on_done`."""
        self._start(
            self._client.metrics,
            run_id,
            keys=[key],
            max_points=MAX_POINTS,
            step_min=step_min,
            step_max=step_max,
            pending=False,
            on_done=on_done,
            on_error=on_error,
        )

    def load_run(self, run_id: int, on_done: Callable[[RunInfo], None]) -> None:
        """The run's latest state to `on_done`."""
        self._start(self._client.run, run_id, on_done=on_done, pending=False)

    def load_version(self, ref: str, on_done: Callable[[lmvp.Version], None]) -> None:
        """Version `project/model:N` to `on_done`."""
        self._start(self._client.version, ref, on_done=on_done, pending=False)

    def set_live(self, live: bool) -> None:
        """Start or stop the timer that emits `poll_due`."""
        if live and not self._live_timer.isActive():
            self._live_timer.start()
        elif not live:
            self._live_timer.stop()

    def is_polling(self, run_id: int) -> bool:
        """Whether a `poll_run` of the run is on its way."""
        return run_id in self._polling

    def poll_run(
        self, run_id: int, after: dict[str, int], on_done: Callable[[NewPoints], None]
    ) -> None:
        """The run's latest state and, for each key in `after`, its points past that step, to
        `on_done`; `is_polling(run_id)` until they are in (or the call failed)."""
        self._polling.add(run_id)

        def done(result: NewPoints) -> None:
            self._polling.discard(run_id)
            on_done(result)

        self._start(
            _fetch_new_points,
            self._client,
            run_id,
            after,
            pending=False,
            on_done=done,
            on_error=lambda _exc: self._polling.discard(run_id),
        )

    # --- helpers ---------------------------------------------------------------------------------

    def _start(
        self,
        fn: Any,
        *args: Any,
        on_done: Any,
        on_error: Any = None,
        pending: bool = True,
        **kw: Any,
    ) -> None:
        """`fn(*args, **kw)` in the background; `on_done(result)` unless `reset` was called
        meanwhile. `pending` calls count for `is_loading` and `loaded`."""
        generation = self._generation
        if pending:
            self._pending += 1

        def done(result: Any) -> None:
            if generation != self._generation:
                return
            try:
                on_done(result)
            finally:
                if pending:
                    self._finish_pending()

        def failed(exc: BaseException) -> None:
            if generation != self._generation:
                return
            if on_error is not None:
                on_error(exc)
            log.warning("metric plot: %s", exc)
            self.failed.emit(str(exc))
            if pending:
                self._finish_pending()

        run_async(fn, *args, on_done=done, on_error=failed, owner=self, **kw)

    def _finish_pending(self) -> None:
        self._pending -= 1
        if self._pending == 0:
            self.loaded.emit()


def _fetch_new_points(client: lmvp.Client, run_id: int, after: dict[str, int]) -> NewPoints:
    """The run's latest state and, for each key in `after`, its points past that step (runs on
    the thread pool)."""
    info = client.run(run_id)
    if not after:
        return info, {}
    series = client.metrics(
        run_id, keys=sorted(after), max_points=MAX_POINTS, step_min=min(after.values()) + 1
    )
    return info, series


__all__ = ["LIVE_INTERVAL_MS", "MAX_POINTS", "NewPoints", "PlotLoader"]
