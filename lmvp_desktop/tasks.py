"""Running blocking work (network, disk) off the UI thread and getting the result back on it.

    run_async(client.versions, "vision/resnet", on_done=self.show_versions, on_error=self.fail)

The function runs on Qt's global thread pool; `on_done(result)` or `on_error(exception)` is
then called on the UI thread (a queued signal), so widgets are only ever touched from there.
A task whose `owner` QObject is destroyed before it finishes delivers nothing.

    when_done(daemon.pause(), on_done=self.paused)

does the same for work already running elsewhere (the sync daemon's loop applies a command):
a `concurrent.futures.Future`'s result comes back on the UI thread, no thread waits for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

log = logging.getLogger(__name__)

# Tasks and relays whose result has not been delivered yet, so that Python keeps them alive.
_pending: set[Task] = set()
_waiting: set[_Relay] = set()


class _Relay(QObject):
    done = Signal(object)
    failed = Signal(object)


class Task(QRunnable):
    """One call of `fn(*args, **kwargs)` on the thread pool; see `run_async`."""

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]):
        super().__init__()
        self.setAutoDelete(False)
        self.fn, self.args, self.kwargs = fn, args, kwargs
        # Created on the UI thread: its signals are delivered there.
        self.relay = _Relay()
        self.cancelled = False

    def run(self) -> None:
        try:
            result = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:  # delivered to on_error, not lost in a pool thread
            self._deliver(self.relay.failed, exc)
            return
        self._deliver(self.relay.done, result)

    def _deliver(self, signal: Any, value: object) -> None:
        if self.cancelled:
            return
        try:
            signal.emit(value)
        except RuntimeError:
            # The owner (and with it the relay) was destroyed while the call ran: nobody is
            # left to tell, which is what `owner` asks for.
            _pending.discard(self)

    def cancel(self) -> None:
        """Deliver nothing when it finishes (the call itself runs to its end)."""
        self.cancelled = True


def run_async(
    fn: Callable[..., Any],
    *args: Any,
    on_done: Callable[[Any], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    owner: QObject | None = None,
    pool: QThreadPool | None = None,
    **kwargs: Any,
) -> Task:
    """Run `fn(*args, **kwargs)` on the thread pool (Qt's global one, or `pool`: one with a
    single thread runs its tasks one after another, in order); returns the task (to `cancel`
    it)."""
    task = Task(fn, args, kwargs)
    if owner is not None:
        task.relay.setParent(owner)  # destroyed with it: nothing delivered to a dead widget
    _pending.add(task)

    def finished(callback: Callable[[Any], None] | None, value: Any) -> None:
        _pending.discard(task)
        if callback is not None and not task.cancelled:
            callback(value)

    task.relay.done.connect(lambda result: finished(on_done, result))
    task.relay.failed.connect(lambda exc: finished(on_error or _log_error, exc))
    (pool or QThreadPool.globalInstance()).start(task)
    return task


def when_done(
    future: Future[Any],
    *,
    on_done: Callable[[Any], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    owner: QObject | None = None,
) -> None:
    """Call `on_done(result)` or `on_error(exception)` on the UI thread once `future` is done
    (at once if it is); nothing if `owner` was destroyed meanwhile. Call it on the UI thread."""
    relay = _Relay()
    if owner is not None:
        relay.setParent(owner)
    _waiting.add(relay)

    def finished(callback: Callable[[Any], None] | None, value: Any) -> None:
        _waiting.discard(relay)
        if callback is not None:
            callback(value)

    relay.done.connect(lambda result: finished(on_done, result))
    relay.failed.connect(lambda exc: finished(on_error or _log_error, exc))

    def deliver(done: Future[Any]) -> None:
        # On the thread that finished it: the signals queue the call to the relay's thread.
        error = done.exception()
        try:
            if error is not None:
                relay.failed.emit(error)
            else:
                relay.done.emit(done.result())
        except RuntimeError:  # the owner, and with it the relay, is gone
            _waiting.discard(relay)

    future.add_done_callback(deliver)


def _log_error(exc: BaseException) -> None:
    log.error("background task failed: %s", exc, exc_info=exc)


__all__ = ["Task", "run_async", "when_done"]
