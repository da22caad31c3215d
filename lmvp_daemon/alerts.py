"""Training alerts from what a job already writes: a loss gone NaN or infinite, a loss that
diverges, and checkpoints that stopped coming.

`AlertDetector` is fed the metric points the daemon sent (`MetricSync`'s `on_points`) and the
checkpoints it found settled (`queued` events), and reports each condition ONCE as a `SyncEvent`
of its own kind (`loss_nan`, `loss_diverged`, `checkpoints_silent`), which `lmvp-daemon`'s log and
status and the desktop's notifications show:

- a loss is a metric whose key ends in "loss" (`loss`, `train_loss`, `val_loss`, `eval/loss`);
  each such key alerts once when a value is NaN or infinite, and again only after a finite
  value came back;
- a loss diverges when a value exceeds its recent exponential moving average (`EMA_ALPHA`)
  times `divergence_factor`, after `warmup_points` finite values; once said, again only after
  the loss came back under its average;
- a watch whose last checkpoints (at least `MIN_CHECKPOINTS`) came at a regular pace has gone
  silent when nothing new came for `SILENCE_FACTOR` times the median interval between them,
  measured from the checkpoints' own modification times, so a daemon started late still
  knows the job's pace. Said once per silence; a checkpoint that comes later starts again.

It lives in the loop's thread (no locking); `seconds_to_next` says when to look again.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from lmvp_daemon.sync import EventKind, SyncEvent

DEFAULT_DIVERGENCE_FACTOR = 3.0
DEFAULT_WARMUP_POINTS = 20
# Weight of a new value in the moving average (about the last 20 points).
EMA_ALPHA = 0.1
MIN_CHECKPOINTS = 3
SILENCE_FACTOR = 2.0
# How many recent checkpoints the usual interval is the median of.
RECENT_CHECKPOINTS = 10


def is_loss_key(key: str) -> bool:
    """Whether a metric is a loss the alerts follow."""
    return key.lower().endswith("loss")


@dataclass
class _Loss:
    ema: float | None = None
    finite: int = 0
    nan_said: bool = False
    diverged_said: bool = False


@dataclass
class _Checkpoints:
    times: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_CHECKPOINTS + 1))
    last_key: str = ""
    silence_said: bool = False


class AlertDetector:
    """Watches losses and checkpoint pace per watch; `emit` hears each alert once."""

    def __init__(
        self,
        emit: Callable[[SyncEvent], None],
        *,
        divergence_factor: float = DEFAULT_DIVERGENCE_FACTOR,
        warmup_points: int = DEFAULT_WARMUP_POINTS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.emit = emit
        self.divergence_factor = divergence_factor
        self.warmup_points = warmup_points
        self._clock = clock
        # A silence that was already there when the daemon started is old news.
        self._started = clock()
        self._losses: dict[tuple[int, str], _Loss] = {}
        self._checkpoints: dict[int, _Checkpoints] = {}

    # --- losses --------------------------------------------------------------------------------

    def points(self, watch_id: int, points: Iterable[tuple[str, int, float]]) -> None:
        """Metric points (key, step, value) of a watch's run, in the order they were written."""
        for key, step, value in points:
            if is_loss_key(key):
                self._loss_point(watch_id, key, step, value)

    def _loss_point(self, watch_id: int, key: str, step: int, value: float) -> None:
        loss = self._losses.setdefault((watch_id, key), _Loss())
        if not math.isfinite(value):
            if not loss.nan_said:
                loss.nan_said = True
                what = "NaN" if math.isnan(value) else "infinite"
                self.emit(
                    SyncEvent(
                        EventKind.loss_nan,
                        watch_id,
                        key,
                        message=f"{key} is {what} at step {step}",
                        step=step,
                    )
                )
            return
        loss.nan_said = False
        ema = loss.ema
        if ema is not None and loss.finite >= self.warmup_points and ema > 0:
            if value > ema * self.divergence_factor:
                if not loss.diverged_said:
                    loss.diverged_said = True
                    self.emit(
                        SyncEvent(
                            EventKind.loss_diverged,
                            watch_id,
                            key,
                            message=(
                                f"{key} diverged at step {step}: {value:.4g} is over "
                                f"{self.divergence_factor:g} times its recent average {ema:.4g}"
                            ),
                            step=step,
                        )
                    )
            elif value <= ema:
                loss.diverged_said = False
        loss.ema = value if ema is None else ema + EMA_ALPHA * (value - ema)
        loss.finite += 1

    # --- checkpoints ---------------------------------------------------------------------------

    def checkpoint(self, watch_id: int, key: str, written_at: float) -> None:
        """A checkpoint of a watch settled; `written_at` is when it was written (its mtime)."""
        pace = self._checkpoints.setdefault(watch_id, _Checkpoints())
        if pace.times and written_at <= pace.times[-1]:
            return  # an older checkpoint found late (a rescan): not a sign of life
        pace.times.append(written_at)
        pace.last_key = key
        pace.silence_said = False

    def check(self) -> None:
        """Say each silence that has begun (call it when `seconds_to_next` says)."""
        now = self._clock()
        for watch_id, pace in self._checkpoints.items():
            due = self._silent_at(pace)
            if due is None or pace.silence_said or now < due:
                continue
            pace.silence_said = True
            if due < self._started:
                continue  # silent before the daemon started: the job ended long ago
            usual = statistics.median(_intervals(pace.times))
            self.emit(
                SyncEvent(
                    EventKind.checkpoints_silent,
                    watch_id,
                    pace.last_key,
                    message=(
                        f"no checkpoint for {_duration(now - pace.times[-1])} (the job saved one "
                        f"every {_duration(usual)}); the last was {pace.last_key}"
                    ),
                )
            )

    def seconds_to_next(self) -> float | None:
        """Seconds until the next silence begins (None: none is coming)."""
        dues = [
            due
            for pace in self._checkpoints.values()
            if not pace.silence_said and (due := self._silent_at(pace)) is not None
        ]
        return max(0.0, min(dues) - self._clock()) if dues else None

    def forget(self, watch_id: int) -> None:
        self._checkpoints.pop(watch_id, None)
        for key in [k for k in self._losses if k[0] == watch_id]:
            del self._losses[key]

    @staticmethod
    def _silent_at(pace: _Checkpoints) -> float | None:
        if len(pace.times) < MIN_CHECKPOINTS:
            return None
        usual = statistics.median(_intervals(pace.times))
        if usual <= 0:
            return None
        return pace.times[-1] + SILENCE_FACTOR * usual


def _intervals(times: Iterable[float]) -> list[float]:
    t = list(times)
    return [b - a for a, b in itertools.pairwise(t)]


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


__all__ = [
    "DEFAULT_DIVERGENCE_FACTOR",
    "DEFAULT_WARMUP_POINTS",
    "AlertDetector",
    "is_loss_key",
]
