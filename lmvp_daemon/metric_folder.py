"""Following the metric files of one watched folder, which all feed one run.

This module owns what the daemon remembers of a folder's metric files between two reads and
two runs of the daemon: which files there are (`find_metric_files`), how far each one was
read, how the Trainer's copies of one history (`out/trainer_state.json`,
`out/checkpoint-N/trainer_state.json`) share what was returned, and the JSON-able state the
outbox keeps of all of it. Reading one file is `lmvp_daemon.metric_files`' (`read_new`), whose
docstring has the formats and the rules.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

from lmvp_daemon.metric_files import (
    DEFAULT_MAX_BYTES,
    FILE_NAMES,
    MetricFormat,
    NotAMetricFile,
    ReadResult,
    TailState,
    detect,
    invalid_saved_state,
    read_new,
    saved_int,
    saved_marks,
    saved_str,
)

_STATE_VERSION = 1
_TRAINER_FILE = "trainer_state.json"
_CHECKPOINT_DIR = re.compile(r"(?:tmp-)?checkpoint-\d+")


class MetricFileReader:
    """Follows the metric files of one watched folder, which all feed one run.

    Files are named by their path relative to the folder. The Trainer's copies of
    one history (`out/trainer_state.json`, `out/checkpoint-N/trainer_state.json`)
    share what was returned, so a copy only yields entries no earlier copy had.
    Not thread-safe: one sync loop owns it. In the daemon::

        reader = MetricFileReader(root, state=saved)  # saved: a to_state() from the outbox
        for path in find_metric_files(root):  # at start; then for each changed metric file
            while True:
                result = reader.read(path)
                queue(result.points)  # with reader.to_state(), in one outbox transaction
                if not result.more:
                    break
    """

    def __init__(
        self, root: str | os.PathLike[str], *, state: Mapping[str, Any] | None = None
    ) -> None:
        """Start from nothing read, or from `state` as `to_state` wrote it.

        Raises `MetricStateInvalid` if `state` is not such a dict: the caller may
        then start afresh, which re-sends points the server will ignore.
        """
        self.root = Path(root)
        self._files: dict[str, TailState] = {}
        self._trainer_runs: dict[str, tuple[dict[str, int], int]] = {}
        self._skipped = 0
        self._skipped_files: dict[str, int] = {}
        if state is not None:
            self._load(state)

    @property
    def skipped(self) -> int:
        """Malformed records met by every read of this reader and its saved predecessors."""
        return self._skipped

    @property
    def skipped_files(self) -> dict[str, int]:
        """`skipped` by file (relative to the folder), for files with any: so that a user can
        tell which file holds bad records. A Trainer history's count is under its output
        folder's `trainer_state.json`, whichever copy showed them."""
        return dict(self._skipped_files)

    def read(
        self, path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> ReadResult:
        """Read what is new in the metric file at `path` (absolute, or relative to the folder).

        Same contract as `read_new`; the state is kept here. A file that vanished
        gives `missing`: a line file's state is kept, so that one re-created there
        is read as a rewrite (nothing sent twice); a `trainer_state.json` copy's is
        dropped (a rotated checkpoint), its history's marks staying. Raises
        `ValueError` for a path outside the folder, `NotAMetricFile`,
        `MetricFileUnreadable`.
        """
        key = self._key(path)
        fmt = detect(key)
        if fmt is None:
            raise NotAMetricFile(
                f"{key} is not a metric file: the daemon reads {', '.join(FILE_NAMES)}."
            )
        state = self._files.get(key) or TailState(format=fmt)
        run_key = _trainer_run_key(key) if fmt is MetricFormat.TRAINER_STATE else None
        if run_key is not None:
            marks, entries = self._trainer_runs.get(run_key, ({}, 0))
            state = replace(state, high_water=marks, entries=entries)
        result = read_new(self.root / key, state, max_bytes=max_bytes)
        if result.skipped:
            self._skipped += result.skipped
            named = key if run_key is None else (PurePosixPath(run_key) / _TRAINER_FILE).as_posix()
            self._skipped_files[named] = self._skipped_files.get(named, 0) + result.skipped
        if run_key is None:
            self._files[key] = result.state
        else:
            self._trainer_runs[run_key] = (dict(result.state.high_water), result.state.entries)
            if result.missing:
                # A rotated checkpoint's copy: its run's marks stay, its own state goes.
                self._files.pop(key, None)
            else:
                self._files[key] = replace(result.state, high_water={}, entries=0)
        return result

    def forget(self, path: str | os.PathLike[str]) -> None:
        """Drop what is remembered of one file; a file later created there is read as new."""
        self._files.pop(self._key(path), None)

    def to_state(self) -> dict[str, Any]:
        """Everything this reader remembers, as a JSON-able dict (no NaN, no floats)."""
        return {
            "version": _STATE_VERSION,
            "skipped": self._skipped,
            "skipped_files": dict(sorted(self._skipped_files.items())),
            "files": {key: state.to_dict() for key, state in sorted(self._files.items())},
            "trainer_runs": {
                key: {"high_water": dict(marks), "entries": entries}
                for key, (marks, entries) in sorted(self._trainer_runs.items())
            },
        }

    def _load(self, state: Mapping[str, Any]) -> None:
        try:
            if state["version"] != _STATE_VERSION:
                raise ValueError(f"version {state['version']!r}, expected {_STATE_VERSION}")
            self._skipped = saved_int(state["skipped"])
            # Not in state saved before it was kept (its count is then in `skipped` only).
            self._skipped_files = saved_marks(state.get("skipped_files", {}))
            for key, item in dict(state["files"]).items():
                self._files[saved_str(key)] = TailState.from_dict(item)
            for key, item in dict(state["trainer_runs"]).items():
                self._trainer_runs[saved_str(key)] = (
                    saved_marks(item["high_water"]),
                    saved_int(item["entries"]),
                )
        except (KeyError, TypeError, ValueError) as exc:
            raise invalid_saved_state(exc) from exc

    def _key(self, path: str | os.PathLike[str]) -> str:
        p = Path(path)
        if p.is_absolute():
            try:
                p = p.relative_to(self.root)
            except ValueError:
                raise ValueError(f"{p} is not inside the watched folder {self.root}") from None
        return p.as_posix()


def find_metric_files(root: str | os.PathLike[str]) -> list[Path]:
    """Every metric file under `root`, sorted; links and hidden folders are not entered.

    For the daemon's rescan at start: a file that changed while it was off is read
    from where its saved state stopped. Raises `OSError` (`FileNotFoundError`, ...) if
    `root` itself cannot be listed.
    """
    found: list[Path] = []
    stack = [os.fspath(root)]
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except (FileNotFoundError, NotADirectoryError):
            if current == os.fspath(root):
                raise
            continue  # a folder removed while walking (a rotated checkpoint)
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    if not entry.name.startswith("."):
                        stack.append(entry.path)
                elif entry.name in FILE_NAMES and entry.is_file(follow_symlinks=False):
                    found.append(Path(entry.path))
            except OSError:
                continue
    found.sort()
    return found


# --- helpers -------------------------------------------------------------------------------


def _trainer_run_key(key: str) -> str:
    """The Trainer's output folder of a `trainer_state.json`: the same for all its copies."""
    parent = PurePosixPath(key).parent
    if _CHECKPOINT_DIR.fullmatch(parent.name):
        parent = parent.parent
    return parent.as_posix()
