"""Feeding a watched folder's metric files to its run on the server.

Each watch has one run (made on the server the first time a checkpoint or a metric point needs
it, and remembered in the outbox). `MetricSync.sync` reads what is new in the folder's metric
files (`lmvp_daemon.metric_files`: LMVP's `metrics.jsonl`, the Trainer's `trainer_state.json`,
Lightning's `metrics.csv`) and sends it. The readers' state is saved in the outbox only after
the server accepted the points, so a crash or an offline server sends them again later, never
loses them; sending again is harmless, since a run keeps one point per (metric, step).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from lmvp import Client
from lmvp.errors import LMVPError
from lmvp.types import MetricPoint
from lmvp_daemon.metric_files import (
    FILE_NAMES,
    MetricFileError,
    MetricFormat,
    MetricStateInvalid,
    detect,
)
from lmvp_daemon.metric_folder import MetricFileReader, find_metric_files
from lmvp_daemon.outbox import Outbox
from lmvp_daemon.outbox_db import Watch

log = logging.getLogger(__name__)


def is_metric_file(path: str | Path) -> bool:
    """Whether a path names a metric file the daemon reads."""
    return Path(path).name in FILE_NAMES


_RECORDS = {  # what a record of each format is called: one, several
    MetricFormat.JSONL: ("line", "lines"),
    MetricFormat.LIGHTNING_CSV: ("row", "rows"),
    MetricFormat.TRAINER_STATE: ("log entry", "log entries"),
}


def describe_skipped(file: str, count: int) -> str:
    """What the user reads about the malformed records of one metric file: bad data in the
    file, not data lost on the way."""
    one, several = _RECORDS.get(detect(file) or MetricFormat.JSONL, ("record", "records"))
    noun = one if count == 1 else several
    return (
        f"{file}: {count} malformed {noun} skipped (bad data in the file itself; "
        f"every well-formed {one} was sent)"
    )


# Called with (watch id, file relative to the watched folder, malformed records so far).
SkipListener = Callable[[int, str, int], None]
# Called with (watch id, the points the server accepted as (key, step, value), in file order).
PointsListener = Callable[[int, list[tuple[str, int, float]]], None]


class MetricSync:
    """Sends the new points of each watch's metric files to the watch's run."""

    def __init__(
        self,
        outbox: Outbox,
        client: Client,
        *,
        on_skipped: SkipListener | None = None,
        on_points: PointsListener | None = None,
    ) -> None:
        """`on_skipped` hears of each metric file whose malformed records grew in number;
        `on_points` of the points each run accepted (once each, unless resent after an error)."""
        self.outbox = outbox
        self.client = client
        self.host = socket.gethostname()
        self.on_skipped = on_skipped or (lambda _watch_id, _file, _count: None)
        self.on_points = on_points or (lambda _watch_id, _points: None)
        self._readers: dict[int, MetricFileReader] = {}
        # Metric files that changed and were not sent yet, by watch id.
        self._dirty: dict[int, set[Path]] = {}
        # Malformed records reported so far, by watch id and file.
        self._skipped: dict[int, dict[str, int]] = {}

    def mark(self, watch_id: int, paths: Iterable[Path]) -> None:
        """Note metric files of a watch that changed (from file system events)."""
        self._dirty.setdefault(watch_id, set()).update(paths)

    def mark_all(self, watch: Watch) -> None:
        """Note every metric file of a watch (at start and at each full rescan)."""
        try:
            found = find_metric_files(watch.folder)
        except OSError:
            return  # a missing folder is reported by the checkpoint scan
        self.mark(watch.id, found)

    def has_dirty(self) -> bool:
        return any(self._dirty.values())

    def run_id(self, watch: Watch) -> int:
        """The id of the watch's run on the server, made now if it has none yet."""
        run_id = self.outbox.watch_run(watch.id).run_id
        if run_id is None:
            run = self.client.create_run(
                f"{watch.project}/{watch.model}",
                name=Path(watch.folder).name,
                host=self.host,
                params={"folder": watch.folder},
            )
            run_id = run.id
            self.outbox.set_watch_run(watch.id, run_id)
            log.info("metrics of %s go to run %d", watch.folder, run_id)
        return run_id

    def sync(self, watch: Watch, *, everything: bool = False) -> int:
        """Send what is new in the watch's changed metric files (or in all of them); returns
        how many points were sent. On an error the files stay marked, and the points are read
        again next time from where the server last accepted them. Raises `LMVPError`."""
        if everything:
            self.mark_all(watch)
        paths = sorted(self._dirty.pop(watch.id, set()))
        if not paths:
            return 0
        reader = self._reader(watch)
        sent = 0
        try:
            for path in paths:
                sent += self._send_file(watch, reader, path)
        except LMVPError:
            # Forget the unsent reads: start again from what the server accepted.
            self._readers.pop(watch.id, None)
            self.mark(watch.id, paths)
            raise
        reported = self._skipped.setdefault(watch.id, {})
        for file, count in sorted(reader.skipped_files.items()):
            if count > reported.get(file, 0):
                reported[file] = count
                log.warning("%s: %s", watch.folder, describe_skipped(file, count))
                self.on_skipped(watch.id, file, count)
        return sent

    def saved_skips(self) -> dict[int, dict[str, int]]:
        """Malformed records skipped so far, by watch id and file, as the outbox last saved them
        (it saves them with every read); watches with none are left out. Safe from any
        thread."""
        skips: dict[int, dict[str, int]] = {}
        for watch in self.outbox.watches():
            files = skipped_files_of(self.outbox.watch_run(watch.id).metric_state)
            if files:
                skips[watch.id] = files
        return skips

    def forget(self, watch_id: int) -> None:
        self._readers.pop(watch_id, None)
        self._dirty.pop(watch_id, None)

    def _send_file(self, watch: Watch, reader: MetricFileReader, path: Path) -> int:
        sent = 0
        while True:
            try:
                result = reader.read(path)
            except (MetricFileError, ValueError) as exc:
                log.warning("cannot read metric file %s: %s", path, exc)
                return sent
            if result.points:
                points = [MetricPoint(p.key, p.step, p.value, p.wall_time) for p in result.points]
                self.client.log_metrics(self.run_id(watch), points)
                sent += len(points)
                self.on_points(watch.id, [(p.key, p.step, p.value) for p in points])
            self.outbox.save_metric_state(watch.id, reader.to_state(), len(result.points))
            if not result.more:
                return sent

    def _reader(self, watch: Watch) -> MetricFileReader:
        reader = self._readers.get(watch.id)
        if reader is None:
            saved = self.outbox.watch_run(watch.id).metric_state or None
            try:
                reader = MetricFileReader(watch.folder, state=saved)
            except MetricStateInvalid as exc:
                log.warning("starting the metric files of %s afresh: %s", watch.folder, exc)
                reader = MetricFileReader(watch.folder)
            self._readers[watch.id] = reader
        return reader


def skipped_files_of(metric_state: Mapping[str, object] | None) -> dict[str, int]:
    """The malformed records by file in a watch's saved metric state (see `MetricFileReader`)."""
    files = (metric_state or {}).get("skipped_files")
    if not isinstance(files, dict):
        return {}
    return {str(f): n for f, n in files.items() if isinstance(n, int) and n > 0}


__all__ = ["MetricSync", "PointsListener", "describe_skipped", "is_metric_file", "skipped_files_of"]
