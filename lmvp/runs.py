"""Logging metrics from a training loop: `Run`, the current run, and the wire format of batches.

`run.log({...}, step)` only appends to an in-memory buffer under a lock, so the training loop
never waits on the network. A background thread takes what was logged every second (or as
soon as a batch is full), encodes it, and hands it to a second thread that posts it, so that
encoding the next batch overlaps the server storing the previous one. Server errors and lost
connections are retried for as long as the process lives, without dropping anything; points
the server refuses (a 4xx) are dropped, logged, and raised by the next `flush()` or `finish()`.
At interpreter exit every unfinished run is flushed and finished (`failed` if the program
died of an exception), giving up only when the server stops making progress for a while.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import operator
import queue
import sys
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

from lmvp import _endpoints
from lmvp._http import HTTP, RetryPolicy
from lmvp.errors import LMVPError, ServerUnavailable
from lmvp.types import RunInfo

log = logging.getLogger(__name__)

# Points per request: large enough to amortise a request, small enough to stay well under the
# server's limit (200,000) and to keep one request under a second.
BATCH_POINTS = 50_000
FLUSH_INTERVAL = 1.0
# At exit, give up sending once the server has taken nothing for this long.
EXIT_STALL_SECONDS = 30.0
_MAX_KEY_LENGTH = 255
# Between two tries of a batch the server did not take (each already retried by the session):
# no end to the tries, only to the wait.
_OUTAGE = RetryPolicy(base=0.5, cap=30.0, floor=0.5)
_WARN_BUFFERED = 10_000_000

# steps, values, wall times of one key
Columns = tuple[list[int], list[float], list[float]]

_current: Run | None = None
_current_lock = threading.Lock()
_live: weakref.WeakSet[Run] = weakref.WeakSet()


class Connected(Protocol):
    """What a `Run` needs of the client it is given (a `lmvp.Client`): its session."""

    @property
    def http(self) -> HTTP: ...


def current_run() -> Run | None:
    """The run `lmvp.init_run` started last in this process, until it finishes."""
    return _current


class Run:
    """A run being logged from this process. Make one with `lmvp.init_run` (or
    `Client.init_run`); use it as a context manager to finish it (as `failed` if the block
    raises).

    `log` never blocks for long: points are sent in the background, in batches.
    """

    def __init__(
        self,
        client: Connected,
        info: RunInfo,
        *,
        batch_points: int = BATCH_POINTS,
        flush_interval: float = FLUSH_INTERVAL,
    ) -> None:
        self.client = client
        self._http = client.http
        self.info = info
        self._batch_points = batch_points
        self._flush_interval = flush_interval
        self._lock = threading.Lock()
        self._buffer: dict[str, Columns] = {}
        self._keys: set[str] = set()  # names already checked
        self._buffered = 0
        self._logged = 0  # points logged since the start
        self._done = 0  # points sent (or refused) since the start
        self._progress = threading.Condition(threading.Lock())
        self._next_step = 0
        self._last_step: int | None = None
        self._error: LMVPError | None = None
        self._finished = False
        self._stopping = threading.Event()
        self._abandon = threading.Event()
        self._wake = threading.Event()
        self._warned = False
        # Encoded bodies waiting to be posted: one being encoded while one is posted.
        self._outbox: queue.Queue[tuple[bytes, int] | None] = queue.Queue(maxsize=1)
        self._encoder = threading.Thread(
            target=self._encode_loop, name=f"lmvp-run-{info.id}-encode", daemon=True
        )
        self._poster = threading.Thread(
            target=self._post_loop, name=f"lmvp-run-{info.id}-post", daemon=True
        )
        self._encoder.start()
        self._poster.start()
        _live.add(self)

    # --- the public surface -------------------------------------------------------------------

    @property
    def id(self) -> int:
        return self.info.id

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def project(self) -> str:
        return self.info.project

    @property
    def model(self) -> str:
        return self.info.model

    @property
    def last_step(self) -> int | None:
        """The largest step logged so far (None before the first `log`)."""
        return self._last_step

    @property
    def finished(self) -> bool:
        return self._finished

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Record `metrics` (name -> number) at `step`.

        Without `step`, each call is the step after the previous one (0 first). Values are
        anything `float()` takes (Python and NumPy numbers, one-element tensors); NaN and
        infinities are kept. Raises `TypeError` or `ValueError` at once for a name or value
        that cannot be stored, and `LMVPError` after `finish`.
        """
        now = time.time()
        items: Any = metrics.items()
        known = self._keys
        for key, value in items:
            if type(value) is not float or key not in known:
                # Checked (and converted) before anything is buffered: all or nothing.
                items = [(_check_key(k), _to_float(k, v)) for k, v in items]
                known.update(k for k, _ in items)
                break
        if type(step) is not int and step is not None:
            step = _check_step(step)
        with self._lock:
            if self._finished:
                raise LMVPError(f"run {self.id} is finished: start a new one with lmvp.init_run")
            if step is None:
                step = self._next_step
            elif step < 0:
                raise ValueError(f"step must be an integer from 0, not {step}")
            self._next_step = step + 1
            if self._last_step is None or step > self._last_step:
                self._last_step = step
            buffer = self._buffer
            count = 0
            for key, value in items:
                columns = buffer.get(key)
                if columns is None:
                    columns = buffer[key] = ([], [], [])
                columns[0].append(step)
                columns[1].append(value)
                columns[2].append(now)
                count += 1
            self._buffered += count
            self._logged += count
            buffered = self._buffered
        if buffered >= self._batch_points:
            self._wake.set()
        if buffered >= _WARN_BUFFERED and not self._warned:
            self._warned = True
            log.warning(
                "%d metric points of run %s wait to be sent: is the server %s reachable?",
                buffered,
                self.id,
                self._http.server,
            )

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every point logged so far is sent.

        Raises `TimeoutError` if that takes longer than `timeout` seconds (the points stay
        queued), and the `LMVPError` of points the server refused, if any were.
        """
        target = self._logged
        self._wake.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._progress:
            while self._done < target:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(
                        f"{target - self._done} metric points of run {self.id} not sent yet "
                        f"after {timeout}s"
                    )
                self._progress.wait(left)
        self._raise_refused()

    def finish(self, status: str = "finished", *, timeout: float | None = None) -> RunInfo:
        """Send what is buffered, then mark the run `finished` (or `failed`) on the server.

        Returns the run as the server then records it. Raises what `flush` raises; the run
        is finished on the server even when some points were refused.
        """
        global _current
        if status not in ("finished", "failed"):
            raise ValueError(f"status must be 'finished' or 'failed', not {status!r}")
        try:
            self.flush(timeout)
        finally:
            with self._lock:
                self._finished = True
            self._stop(timeout=5.0)
            with _current_lock:
                if _current is self:
                    _current = None
            self.info = _endpoints.finish_run(self._http, self.id, status)
        return self.info

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self._finished:
            self.finish("failed" if exc_type is not None else "finished")

    def __repr__(self) -> str:
        return f"Run(id={self.id}, name={self.name!r}, model={self.info.model_ref!r})"

    # --- sending ------------------------------------------------------------------------------

    def _take(self) -> dict[str, Columns]:
        with self._lock:
            taken, self._buffer, self._buffered = self._buffer, {}, 0
        return taken

    def _encode_loop(self) -> None:
        while True:
            self._wake.wait(self._flush_interval)
            self._wake.clear()
            stopping = self._stopping.is_set()
            for chunk, count in split_batches(self._take(), self._batch_points):
                self._outbox.put((encode_batch(chunk), count))
            if stopping:
                self._outbox.put(None)
                return

    def _post_loop(self) -> None:
        while (item := self._outbox.get()) is not None:
            body, count = item
            self._post_with_retries(body, count)
            with self._progress:
                self._done += count
                self._progress.notify_all()

    def _post_with_retries(self, body: bytes, count: int) -> None:
        failures = 0
        while True:
            try:
                _endpoints.post_metrics(self._http, self.id, body)
                if failures:
                    log.info("run %s: the server takes metric points again", self.id)
                return
            except ServerUnavailable as exc:
                failures += 1
                if failures == 1:
                    log.warning("run %s: cannot send metric points, retrying: %s", self.id, exc)
                wait = _OUTAGE.delay(failures)
                if self._abandon.wait(wait):
                    log.error("run %s: gave up sending %d metric points at exit", self.id, count)
                    return
            except LMVPError as exc:
                log.error("run %s: the server refused %d metric points: %s", self.id, count, exc)
                self._error = exc
                return

    def _stop(self, timeout: float) -> None:
        self._stopping.set()
        self._wake.set()
        self._encoder.join(timeout)
        self._poster.join(timeout)

    def _raise_refused(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _flush_at_exit(self) -> None:
        """Send what is left, waiting as long as the server keeps taking points."""
        self._wake.set()
        while True:
            before = self._done
            try:
                self.flush(EXIT_STALL_SECONDS)
                return
            except TimeoutError:
                if self._done == before:
                    self._abandon.set()
                    log.error(
                        "run %s: the server took no metric points for %.0fs; %d were not sent",
                        self.id,
                        EXIT_STALL_SECONDS,
                        self._logged - self._done,
                    )
                    return


def set_current(run: Run) -> None:
    global _current
    with _current_lock:
        _current = run


def split_batches(
    buffer: dict[str, Columns], limit: int
) -> Iterator[tuple[dict[str, Columns], int]]:
    """Split per-key columns into batches of at most `limit` points (with their counts)."""
    batch: dict[str, Columns] = {}
    size = 0
    for key, (steps, values, walls) in buffer.items():
        start = 0
        while start < len(steps):
            take = min(limit - size, len(steps) - start)
            end = start + take
            batch[key] = (steps[start:end], values[start:end], walls[start:end])
            size += take
            start = end
            if size >= limit:
                yield batch, size
                batch, size = {}, 0
    if batch:
        yield batch, size


def encode_batch(batch: Mapping[str, Columns]) -> bytes:
    """The JSON body of `POST /runs/{id}/metrics` for per-key columns: the compact `series`
    form, NaN and infinities as "NaN", "Infinity", "-Infinity".

    Written by hand because float formatting is most of the cost of sending: values go out
    with 17 significant digits (`%.17g` reads back as the very same double, in half the time
    of `repr`), wall times to the millisecond (`%.3f`, three times faster again).
    """
    parts = []
    for key, (steps, values, walls) in batch.items():
        if all(map(math.isfinite, values)):
            encoded = ",".join(map("%.17g".__mod__, values))
        else:
            encoded = ",".join(
                f"{v:.17g}" if math.isfinite(v) else f'"{_non_finite(v)}"' for v in values
            )
        times = ",".join(map("%.3f".__mod__, walls))
        parts.append(
            f'{{"key":{json.dumps(key)},"steps":[{",".join(map(str, steps))}],'
            f'"values":[{encoded}],"wall_times":[{times}]}}'
        )
    return f'{{"series":[{",".join(parts)}]}}'.encode()


def group_points(points: Sequence[Any]) -> dict[str, Columns]:
    """`MetricPoint`s grouped by key into columns (a missing wall time is now)."""
    now = time.time()
    grouped: dict[str, Columns] = {}
    for p in points:
        columns = grouped.get(p.key)
        if columns is None:
            columns = grouped[_check_key(p.key)] = ([], [], [])
        columns[0].append(int(p.step))
        columns[1].append(_to_float(p.key, p.value))
        columns[2].append(now if p.wall_time is None else float(p.wall_time))
    return grouped


def _check_key(key: Any) -> str:
    if not isinstance(key, str) or not 0 < len(key) <= _MAX_KEY_LENGTH:
        raise ValueError(f"metric names are strings of 1 to {_MAX_KEY_LENGTH} characters: {key!r}")
    return key


def _check_step(step: Any) -> int:
    """An integral step (NumPy and torch integers too) from 0."""
    try:
        if isinstance(step, bool):
            raise TypeError
        value = operator.index(step)
    except TypeError:
        raise ValueError(f"step must be an integer from 0, not {step!r}") from None
    if value < 0:
        raise ValueError(f"step must be an integer from 0, not {step!r}")
    return value


def _to_float(key: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"metric {key!r}: {value!r} is not a number") from None


def _non_finite(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


@atexit.register
def _finish_live_runs() -> None:
    """Flush and finish every run still open when the interpreter exits; `failed` if the
    program is dying of an uncaught exception."""
    died = hasattr(sys, "last_value") or hasattr(sys, "last_exc")
    for run in list(_live):
        if run.finished:
            continue
        run._flush_at_exit()
        try:
            run.finish("failed" if died else "finished", timeout=1.0)
        except (LMVPError, TimeoutError) as exc:
            log.error("run %s: could not finish it at exit: %s", run.id, exc)
