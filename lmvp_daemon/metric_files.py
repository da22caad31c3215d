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
  is counted too, and its other values are kept. Each malformed record is counted
  once, although a rewritten file (or another copy of a Trainer history) is read
  again from its start: records are numbered, and those an earlier read examined
  are not counted again.

Reading while the job writes. A file is read with no lock while a training job
appends to it, rewrites it in place (Lightning, when a new metric appears: the file
is truncated and written again with the longer header) or writes it whole (the
Trainer). A read therefore never trusts one look at the file: it checks that the
file still holds what was read before (hashes of its first bytes and of the bytes
before the offset), reads the new bytes, and then checks again, against the bytes
it parsed, that the file was not truncated or rewritten meanwhile. If it was, what
was read is dropped and the read starts over; a line without its newline is left
for later. So a record is either read whole, from one version of the file, or read
later: never skipped, nor parsed with another version's header, because of timing.
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
from typing import Any, NamedTuple

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
_EDGE_BYTES = 4096  # of a whole `trainer_state.json`, compared again after reading it
_ATTEMPTS = 4  # reads of a file that changes under each of them before trying again later


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
    `records` is how many records (non-blank lines or rows) lie before `offset`,
    and `entries` how many of the file's first records some read examined, so
    that a malformed record is counted once although a rewritten file is read
    again. For `trainer_state.json`, which is parsed whole, `head_hash` is the hash of
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
    records: int = 0

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
            "records": self.records,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TailState:
        """Read back what `to_dict` wrote; raises `MetricStateInvalid` for anything else.

        State saved before `records` existed reads as 0 records: its file's malformed
        records are counted once more if the file is rewritten."""
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
                records=saved_int(data.get("records", 0)),
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
    """Nothing was consumed, and the next read after the file changes tries again: a
    `trainer_state.json` that was not valid JSON (most likely caught mid-write), or a file
    rewritten under every attempt to read it."""
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
            # Every read below is an `os.pread` of this descriptor, none through `f`.
            if state.format is MetricFormat.TRAINER_STATE:
                return _read_trainer_state(f.fileno(), state, name=os.fspath(path))
            return _read_appended(f.fileno(), state, max_bytes, name=os.fspath(path))
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


def _read_appended(fd: int, state: TailState, max_bytes: int, *, name: str) -> ReadResult:
    """JSONL or CSV: parse the complete lines after `state.offset`, from one version of the file."""
    for _ in range(_ATTEMPTS):
        result = _read_appended_once(fd, state, max_bytes, name=name)
        if result is not None:
            return result
    log.info("%s was rewritten during every read; reading it again at its next change", name)
    return ReadResult([], state, incomplete=True)


def _read_appended_once(
    fd: int, state: TailState, max_bytes: int, *, name: str
) -> ReadResult | None:
    """One attempt of `_read_appended`; None if the file was rewritten while it was read."""
    st = os.fstat(fd)
    before = _still_holds(fd, st, state)
    rewritten = before is None
    if before is None:
        state = replace(state, offset=0, head_len=0, header=None, last_step=None, records=0)
        before = _Held(b"", b"")
    start = state.offset
    data = _read_lines(fd, start, max_bytes)
    complete = data[: data.rfind(b"\n") + 1]
    emitter = Emitter(
        state.high_water, state.last_step, records=state.records, counted=state.entries
    )
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
    # The bytes the new state's hashes cover: those checked before, and those just parsed.
    known = ((0, before.head), (start - len(before.tail), before.tail), (start, complete))
    head = _span(fd, 0, head_len, known)
    tail = _span(fd, max(0, offset - _TAIL_BYTES), offset, known)
    # The check after the read: the file still holds, unchanged, what was checked before and
    # what was parsed. If not, a rewrite or a truncation came in between, and the bytes parsed
    # may be another version's than the header and the offset they were read with.
    after = os.fstat(fd)
    if (
        after.st_ino != st.st_ino
        or after.st_size < offset
        or not head.startswith(before.head)
        or os.pread(fd, len(head), 0) != head
        or os.pread(fd, len(tail), offset - len(tail)) != tail
        or os.pread(fd, len(before.tail), start - len(before.tail)) != before.tail
    ):
        return None
    if rewritten:
        log.info("%s was truncated or rewritten; read it again from its start", name)
    unchanged_head = head_len == state.head_len and not rewritten
    new_state = replace(
        state,
        inode=st.st_ino,
        offset=offset,
        head_len=head_len,
        head_hash=state.head_hash if unchanged_head else _digest(head),
        tail_hash=_digest(tail),
        header=header,
        last_step=emitter.last_step,
        high_water=emitter.marks,
        records=emitter.records,
        entries=max(state.entries, emitter.records),
    )
    return ReadResult(
        emitter.points,
        new_state,
        skipped=emitter.skipped,
        rewritten=rewritten,
        more=start + len(data) < after.st_size,
    )


def _read_lines(fd: int, start: int, max_bytes: int) -> bytes:
    """About `max_bytes` from `start`; more if that ends no line, up to a newline or the end."""
    data = os.pread(fd, max_bytes, start)
    if len(data) < max_bytes or b"\n" in data:
        return data
    chunks = [data]
    while True:  # a line longer than max_bytes: read on to its end
        extra = os.pread(fd, max_bytes, start + sum(map(len, chunks)))
        chunks.append(extra)
        if len(extra) < max_bytes or b"\n" in extra:
            return b"".join(chunks)


def _read_trainer_state(fd: int, state: TailState, *, name: str) -> ReadResult:
    """`trainer_state.json`: parse the whole document, return log entries not returned yet."""
    for _ in range(_ATTEMPTS):
        st = os.fstat(fd)
        raw = _read_whole(fd)
        after = os.fstat(fd)
        # The Trainer writes this file in place: a read can begin in one version of it and end
        # in the next. Its size and its two ends, read again, tell.
        if (
            after.st_ino == st.st_ino
            and after.st_size == len(raw)
            and os.pread(fd, _EDGE_BYTES, 0) == raw[:_EDGE_BYTES]
            and os.pread(fd, _EDGE_BYTES, max(0, len(raw) - _EDGE_BYTES)) == raw[-_EDGE_BYTES:]
        ):
            break
    else:
        log.info("%s was rewritten during every read; reading it again at its next change", name)
        return ReadResult([], state, incomplete=True)
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


class _Held(NamedTuple):
    """Bytes of a file checked against a state's hashes: its first `head` bytes, and the
    `tail` bytes that end at the state's offset."""

    head: bytes
    tail: bytes


def _still_holds(fd: int, st: os.stat_result, state: TailState) -> _Held | None:
    """The bytes hashed in `state`, if the open file still holds them unchanged (so continues
    what was read up to `state.offset`); None if it was truncated, replaced or rewritten."""
    if state.offset == 0:
        return _Held(b"", b"")
    if st.st_ino != state.inode or st.st_size < state.offset:
        return None
    head = os.pread(fd, state.head_len, 0)
    if _digest(head) != state.head_hash:
        return None
    tail_start = max(0, state.offset - _TAIL_BYTES)
    tail = os.pread(fd, state.offset - tail_start, tail_start)
    if _digest(tail) != state.tail_hash:
        return None
    return _Held(head, tail)


def _span(fd: int, start: int, end: int, known: Iterable[tuple[int, bytes]]) -> bytes:
    """File bytes [start, end), from the `known` (offset, bytes) pieces when they hold them (as
    they do whenever `_read_appended_once` asks); read from the file otherwise."""
    out = bytearray()
    at = start
    while at < end:
        for piece_at, piece in known:
            if piece_at <= at < piece_at + len(piece):
                take = piece[at - piece_at : end - piece_at]
                out += take
                at += len(take)
                break
        else:
            return os.pread(fd, end - start, start)
    return bytes(out)


def _read_whole(fd: int) -> bytes:
    """Everything in the open file, by `os.pread` from its start."""
    chunks = []
    at = 0
    while chunk := os.pread(fd, max(os.fstat(fd).st_size - at + 1, 1 << 16), at):
        chunks.append(chunk)
        at += len(chunk)
    return b"".join(chunks)


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
