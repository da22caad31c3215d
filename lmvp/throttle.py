"""Pacing of upload bytes: an optional bandwidth limit, and a pause that stops transfers.

One `Throttle` is shared by every upload of a client (`HTTP.throttle`), so a limit holds for
all of them together however many run at once. Both can change while uploads run: the sync
daemon's settings and pause button act on transfers already in flight.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from lmvp.errors import LMVPError


class TransferPaused(LMVPError):
    """Syncing was paused while a file was being sent; the bytes the server holds are kept and
    the upload resumes from there."""


class Throttle:
    """A token bucket of `limit` bytes per second (None: no limit), and a pause switch."""

    # How much may go out in one burst: a tenth of a second's worth of the limit.
    _BURST_SECONDS = 0.1
    _MIN_SLICE = 64 * 1024

    def __init__(
        self, limit: float | None = None, *, paused_when: Callable[[], bool] | None = None
    ) -> None:
        """`paused_when`, if given, is asked before every slice whether transfers are paused
        (for a pause switched elsewhere, such as another process); it must be cheap."""
        self._lock = threading.Lock()
        self._limit = limit
        self._paused = False
        self._paused_when = paused_when
        self._next_free = time.monotonic()

    @property
    def limit(self) -> float | None:
        return self._limit

    @limit.setter
    def limit(self, value: float | None) -> None:
        if value is not None and value <= 0:
            raise ValueError("a bandwidth limit must be a positive number of bytes per second")
        with self._lock:
            self._limit = value
            self._next_free = time.monotonic()

    @property
    def paused(self) -> bool:
        return self._paused or (self._paused_when is not None and self._paused_when())

    @paused.setter
    def paused(self, value: bool) -> None:
        self._paused = value

    def slice_size(self, largest: int) -> int:
        """How many bytes to send at once: smaller under a limit, so that pacing is smooth."""
        limit = self._limit
        if limit is None:
            return largest
        return max(self._MIN_SLICE, min(largest, int(limit * self._BURST_SECONDS)))

    def check(self) -> None:
        """Raise `TransferPaused` if transfers are paused."""
        if self.paused:
            raise TransferPaused("syncing is paused; the upload goes on from here on resume")

    def spend(self, n: int) -> None:
        """Account for `n` bytes just sent: sleep as long as the limit asks, then `check`."""
        with self._lock:
            limit = self._limit
            if limit is None:
                wait = 0.0
            else:
                now = time.monotonic()
                self._next_free = max(self._next_free, now - self._BURST_SECONDS) + n / limit
                wait = self._next_free - now
        if wait > 0:
            time.sleep(wait)
        self.check()


__all__ = ["Throttle", "TransferPaused"]
