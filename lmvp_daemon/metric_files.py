"""Reading a training job's metric files incrementally, one file at a time.

This module owns one question: which metric points has a training job written to
a metric file since the daemon last looked (`read_new`, from a `TailState`)? It
knows three formats, recognised by file name anywhere under a watched folder:

- `metrics.jsonl`, LMVP's own: one JSON object per line,
  `{"step": 10, "loss": 0.3, "acc": 0.9, "time": 1718000000.5}`.
- `trainer_state.json`, the Hugging Face Trainer's: its `log_history` list, which
  mixes training entries (`loss`, `grad_norm`, `learning_rate`), evaluation
  entries (`eval_loss`, `eval_runtime`, ...) and the closing summary
  (`train_runtime`, `train_loss`, `total_flos`, ...). The Trainer writes the whole
  file again at each save, into `checkpoint-N/` and at the end into the output
  folder; every copy repeats the history before it.
- `metrics.csv`, PyTorch Lightning's CSVLogger: a header (`epoch,step,train_loss,
  val_acc,val_loss`) and sparse rows whose blank cells were not logged there.
  Lightning appends rows, and rewrites the whole file when a new column appears.

It is pure logic over files: no watchdog, no outbox, no server. The daemon keeps
one `MetricFileReader` (`lmvp_daemon.metric_folder`: the files of one folder, and
what is remembered of them) per watched folder (one run), calls `read` when a metric
file changes, queues the points, and stores `to_state()` in its outbox so that a
restarted daemon continues where it stopped without sending anything again.

Rules the three formats share:

- The step is the `step` field or column. A JSONL line or CSV row without one
  takes the step after the previous line's (0 for the first line of a file).
- Every other number is a point of its own key, named as the file names it (the
  Trainer's `loss` stays `loss`). `epoch` is kept as a metric: it lets a curve be
  drawn by epoch and tells at which epoch a checkpoint was taken. Values that are
  not numbers (strings, lists, null, booleans) are not metrics and are ignored,
  except in CSV, where every column is a metric column and a cell that is neither
  blank nor a number is malformed.
- A `wall_time`, `timestamp` or `time` field (seconds since the epoch, or an ISO
  8601 string, naive meaning local time) is the points' wall time, not a metric.
- NaN and ±infinity are values like any other (`NaN`/`Infinity` as Python's json
  writes them, `nan`/`inf` in CSV).
- Each (key, step) is returned at most once: per key, only steps beyond the
  highest one already returned from that file (for the Trainer: from any copy in
  that output folder) are new. That is what lets a
  truncated or rewritten file, and the Trainer's repeated copies of one history,
  be read again from the start without sending anything twice. A point logged
  out of order (a step at or below its key's highest) is therefore dropped, as
  the server, idempotent per (run, key, step), would have kept the first anyway.
- Malformed records (a line that is not JSON or not an object, a bad step, a CSV
  row with the wrong number of cells, a log entry that is not an object) are
  skipped and counted in `ReadResult.skipped`, never raised. A record whose only
  fault is a bad value (a non-numeric CSV cell, an integer too large for a float)
  is counted too, and its other values are kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Any, BinaryIO

from lmvp_daemon.errors import DaemonError
from lmvp_daemon.metric_records import (
    STEP_KEY,
    Emitter,
    Point,
    as_step,
    emit_record,
    parse_csv,
    parse_header,
    parse_jsonl,
)

log = logging.getLogger(__name__)


class MetricFormat(StrEnum):
    """The metric file formats the daemon follows."""

    JSONL = "jsonl"
    TRAINER_STATE = "trainer_state"
    LIGHTNING_CSV = "lightning_csv"


FILE_NAMES: Mapping[str, MetricFormat] = {
    "metrics.jsonl": MetricFormat.JSONL,
    "trainer_state.json": MetricFormat.TRAINER_STATE,
    "metrics.csv": MetricFormat.LIGHTNING_CSV,
}
"""File name -> format. A metric file is recognised by its name alone, at any depth."""

DEFAULT_MAX_BYTES = 16 * 1024 * 1024
"""How much of an appended file one read parses at most (the rest is for the next call)."""

_HEAD_BYTES = 4096  # hashed at the start of a file to notice it was rewritten
_TAIL_BYTES = 256  # hashed just before the read offset, for the same reason


class MetricFileError(DaemonError):
    """A metric file, or what the daemon remembers of one, cannot be used."""

    title = "Metric file error"


class MetricFileUnreadable(MetricFileError):
    """A metric file exists but cannot be read (permissions, a directory, an I/O error)."""

    title = "Metric file unreadable"


class NotAMetricFile(MetricFileError):
    """The path's name is none of the metric file names this module knows."""

    title = "Not a metric file"


class MetricStateInvalid(MetricFileError):
    """Saved reader state that is not what `to_state`/`to_dict` wrote."""

    title = "Metric file state invalid"


@dataclass(frozen=True)
class TailState:
    """How far one metric file has been read, serialisable with `to_dict`.

    For JSONL and CSV `offset` is the end of the last complete line consumed;
    `inode`, a hash of the first bytes (`head_len`, `head_hash`, covering the
    CSV header) and a hash of the bytes just before `offset` tell whether the
    file still continues what was read, or was truncated, replaced or rewritten.
    For `trainer_state.json`, which is parsed whole, `head_hash` is the hash of
    the whole document (`head_len` bytes), so an unchanged file is not parsed
    again, and `entries` is how many log entries were examined, so that a
    malformed entry is counted once although every copy repeats it. Modification
    times are not used: they are too coarse to tell two writes apart.
    """

    format: MetricFormat
    inode: int = 0
    offset: int = 0
    head_len: int = 0
    head_hash: str = ""
    tail_hash: str = ""
    header: tuple[str, ...] | None = None
    """CSV columns, once the header line was read."""
    last_step: int | None = None
    """Step of the last line read, for a following line that has none."""
    entries: int = 0
    high_water: Mapping[str, int] = field(default_factory=dict)
    """Per key the highest step returned: a point at or below it is not new."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict that `from_dict` turns back into this state."""
        return {
            "format": self.format.value,
            "inode": self.inode,
            "offset": self.offset,
            "head_len": self.head_len,
            "head_hash": self.head_hash,
            "tail_hash": self.tail_hash,
            "header": None if self.header is None else list(self.header),
            "last_step": self.last_step,
            "entries": self.entries,
            "high_water": dict(self.high_water),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TailState:
        """Read back what `to_dict` wrote; raises `MetricStateInvalid` for anything else."""
        try:
            header = data["header"]
            last_step = data["last_step"]
            return cls(
                format=MetricFormat(data["format"]),
                inode=saved_int(data["inode"]),
                offset=saved_int(data["offset"]),
                head_len=saved_int(data["head_len"]),
                head_hash=saved_str(data["head_hash"]),
                tail_hash=saved_str(data["tail_hash"]),
                header=None if header is None else _columns(header),
                last_step=None if last_step is None else saved_int(last_step),
                entries=saved_int(data["entries"]),
                high_water=saved_marks(data["high_water"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise invalid_saved_state(exc) from exc


@dataclass(frozen=True)
class ReadResult:
    """What one read of a metric file found."""

    points: list[Point]
    """New points, in file order."""
    state: TailState
    """Where the next read of this file starts."""
    skipped: int = 0
    """Malformed records met in this read (see the module docstring)."""
    rewritten: bool = False
    """The file had been truncated, replaced or rewritten, and was read again from its start."""
    more: bool = False
    """The read stopped at `max_bytes`: read again for the rest."""
    incomplete: bool = False
    """`trainer_state.json` was not valid JSON, most likely caught mid-write: nothing was
    consumed, and the next read after the file changes tries again."""
    missing: bool = False
    """The file does not exist (any more); nothing was read."""


def detect(path: str | os.PathLike[str]) -> MetricFormat | None:
    """The format of a metric file, from its name alone, or None if it is not one."""
    return FILE_NAMES.get(PurePosixPath(os.fspath(path)).name)


def read_new(
    path: str | os.PathLike[str],
    state: TailState | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> ReadResult:
    """Read what is new in one metric file since `state` (from the start if None).

    Only the bytes after `state.offset` are read from JSONL and CSV files, at most
    about `max_bytes` of them (`ReadResult.more` then says to call again); a last
    line without its newline is left for later. Returns the new points and the
    state to pass next time. Raises `NotAMetricFile` when `state` is None and the
    name is not a metric file's, `MetricFileUnreadable` when the file cannot be
    read; a missing file gives an empty result with `missing` set.
    """
    if state is None:
        fmt = detect(path)
        if fmt is None:
            raise NotAMetricFile(
                f"{os.fspath(path)} is not a metric file: the daemon reads {', '.join(FILE_NAMES)}."
            )
        state = TailState(format=fmt)
    if max_bytes < 1:
        raise ValueError("max_bytes must be positive")
    try:
        with open(path, "rb") as f:
            if state.format is MetricFormat.TRAINER_STATE:
                return _read_trainer_state(f, state)
            return _read_appended(f, state, max_bytes, name=os.fspath(path))
    except FileNotFoundError:
        return ReadResult([], state, missing=True)
    except OSError as exc:
        raise MetricFileUnreadable(
            f"The metric file {os.fspath(path)} cannot be read ({exc.strerror or exc}). "
            "Give the daemon's user read access to it."
        ) from exc


def latest_values(points: Iterable[Point], *, at_step: int) -> dict[str, float]:
    """Each key's value at the highest step at or before `at_step`: a checkpoint's snapshot.

    Where one key has two points at the same step, the first one given wins, as it
    does on the server. Keys with no point at or before `at_step` are left out.
    """
    best: dict[str, tuple[int, float]] = {}
    for point in points:
        if point.step > at_step:
            continue
        seen = best.get(point.key)
        if seen is None or point.step > seen[0]:
            best[point.key] = (point.step, point.value)
    return {key: value for key, (_, value) in best.items()}


# --- reading -------------------------------------------------------------------------------


def _read_appended(f: BinaryIO, state: TailState, max_bytes: int, *, name: str) -> ReadResult:
    """JSONL or CSV: parse the complete lines after `state.offset`."""
    fd = f.fileno()
    st = os.fstat(fd)
    rewritten = state.offset > 0 and not _continues(fd, st, state)
    if rewritten:
        log.info("%s was truncated or rewritten; reading it again from its start", name)
        state = replace(state, offset=0, head_len=0, header=None, last_step=None)
    start = state.offset
    f.seek(start)
    data = f.read(max_bytes)
    end = data.rfind(b"\n")
    while end < 0:  # a line longer than max_bytes: read on to its end
        extra = f.read(max_bytes)
        if not extra:
            break
        newline = extra.rfind(b"\n")
        if newline >= 0:
            end = len(data) + newline
        data += extra
    scanned = start + len(data)
    complete = data[: end + 1]
    emitter = Emitter(state.high_water, state.last_step)
    header = state.header
    header_len = 0
    if state.format is MetricFormat.JSONL:
        parse_jsonl(complete, emitter)
    else:
        body = complete
        if header is None and complete:
            header_len = complete.index(b"\n") + 1
            header = parse_header(complete[:header_len])
            body = complete[header_len:]
        if header is not None and body:
            parse_csv(body, header, emitter)
    offset = start + len(complete)
    head_len = min(offset, max(_HEAD_BYTES, state.head_len, header_len))
    head_hash = state.head_hash
    if head_len != state.head_len or rewritten:
        head_hash = _digest(_bytes_at(fd, 0, head_len, start, complete))
    tail_start = max(0, offset - _TAIL_BYTES)
    new_state = replace(
        state,
        inode=st.st_ino,
        offset=offset,
        head_len=head_len,
        head_hash=head_hash,
        tail_hash=_digest(_bytes_at(fd, tail_start, offset, start, complete)),
        header=header,
        last_step=emitter.last_step,
        high_water=emitter.marks,
    )
    return ReadResult(
        emitter.points,
        new_state,
        skipped=emitter.skipped,
        rewritten=rewritten,
        more=scanned < st.st_size,
    )


def _read_trainer_state(f: BinaryIO, state: TailState) -> ReadResult:
    """`trainer_state.json`: parse the whole document, return log entries not returned yet."""
    st = os.fstat(f.fileno())
    raw = f.read()
    digest = _digest(raw)
    if len(raw) == state.head_len and digest == state.head_hash:
        return ReadResult([], state)  # the same document again (another copy, or a touch)
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):
        # The Trainer writes this file in place: a read can catch it half written.
        return ReadResult([], state, incomplete=True)
    emitter = Emitter(state.high_water, state.last_step)
    history = document.get("log_history") if isinstance(document, dict) else None
    if not isinstance(history, list):
        emitter.skipped += 1  # a JSON file by that name, but no trainer state
        history = []
    for index, entry in enumerate(history):
        # Entries before `state.entries` were counted when an earlier copy was read.
        malformed = 1 if index >= state.entries else 0
        if not isinstance(entry, dict):
            emitter.skipped += malformed
            continue
        step = as_step(entry.get(STEP_KEY))
        if step is None or not emit_record(entry, step, emitter):
            emitter.skipped += malformed
    new_state = replace(
        state,
        inode=st.st_ino,
        head_len=len(raw),
        head_hash=digest,
        entries=max(state.entries, len(history)),
        high_water=emitter.marks,
    )
    return ReadResult(emitter.points, new_state, skipped=emitter.skipped)


# --- small helpers -------------------------------------------------------------------------


def _continues(fd: int, st: os.stat_result, state: TailState) -> bool:
    """Whether the open file still holds, unchanged, the bytes read up to `state.offset`."""
    if st.st_ino != state.inode or st.st_size < state.offset:
        return False
    if _digest(os.pread(fd, state.head_len, 0)) != state.head_hash:
        return False
    tail_start = max(0, state.offset - _TAIL_BYTES)
    return _digest(os.pread(fd, state.offset - tail_start, tail_start)) == state.tail_hash


def _bytes_at(fd: int, start: int, end: int, data_start: int, data: bytes) -> bytes:
    """File bytes [start, end): from `data` (read at `data_start`) when it holds them."""
    if data_start <= start and end <= data_start + len(data):
        return data[start - data_start : end - data_start]
    return os.pread(fd, end - start, start)


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


# --- checking saved state (`TailState.from_dict`, and `lmvp_daemon.metric_folder`) ---------


def saved_int(value: object) -> int:
    """`value` if it is an integer (not a bool); raises TypeError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def saved_str(value: object) -> str:
    """`value` if it is a string; raises TypeError otherwise."""
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def saved_marks(value: object) -> dict[str, int]:
    """`value` as high-water marks (key -> step) if it is one; raises TypeError otherwise."""
    if not isinstance(value, dict):
        raise TypeError(f"expected an object of steps, got {value!r}")
    return {saved_str(k): saved_int(v) for k, v in value.items()}


def invalid_saved_state(exc: Exception) -> MetricStateInvalid:
    """The error for saved state that `exc` (KeyError, TypeError, ValueError) found wrong."""
    return MetricStateInvalid(
        f"The saved state of the metric files is not valid ({exc}). The daemon will read "
        "them again from the start; the server ignores points it already has."
    )


def _columns(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list of column names, got {value!r}")
    return tuple(saved_str(c) for c in value)
