"""Reading metric files incrementally: real files in the shapes the frameworks write, appended
to in steps, rewritten, truncated and written by a separate process while the reader polls.

The writers below follow what the frameworks do: `LightningCsvWriter` is Lightning 2.x's
CSVLogger ExperimentWriter (buffered rows; a new key sorts into the header and the file is
rewritten in place), `TrainerStateWriter` is transformers' Trainer (`TrainerState.save_to_json`
into `checkpoint-N/` with `save_total_limit`, and `save_state` at the end), `append_jsonl` is
LMVP's own format as `json.dumps` writes it (`NaN` and `Infinity` literals included).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

from lmvp_daemon.errors import DaemonError
from lmvp_daemon.metric_files import (
    MetricFileUnreadable,
    MetricFormat,
    MetricStateInvalid,
    NotAMetricFile,
    Point,
    ReadResult,
    TailState,
    detect,
    latest_values,
    read_new,
)
from lmvp_daemon.metric_folder import MetricFileReader, find_metric_files

REPO = Path(__file__).resolve().parents[2]
NAN = float("nan")
INF = float("inf")

# --- writers in the frameworks' own shapes ------------------------------------------------


def append_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    with path.open("a") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


class LightningCsvWriter:
    """Lightning 2.x `ExperimentWriter`: `log_metrics` buffers a row, `save` writes the buffer.

    With `rewrite_every_save` it behaves like Lightning 1.x instead, which wrote the whole
    file again at each save."""

    def __init__(self, path: Path, *, rewrite_every_save: bool = False) -> None:
        self.path = path
        self.metrics: list[dict[str, Any]] = []
        self.metrics_keys: list[str] = []
        self.rewrite_every_save = rewrite_every_save
        self.all_rows: list[dict[str, Any]] = []

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        self.metrics.append({**metrics, "step": step})

    def save(self) -> None:
        for write in self.save_steps():
            write()

    def save_steps(self) -> list[Callable[[], None]]:
        """`save` as the separate writes it makes to the file, to be made in this order: for a
        test that lets a reader run between them. With a new key, Lightning reads the rows back,
        truncates the file, writes the new header and the rows, and then appends the new rows."""
        if not self.metrics:
            return []
        metrics, self.metrics = self.metrics, []
        new_keys = set().union(*metrics) - set(self.metrics_keys)
        self.metrics_keys.extend(new_keys)
        self.metrics_keys.sort()
        keys = list(self.metrics_keys)
        self.all_rows.extend(metrics)
        if self.rewrite_every_save:
            rows = list(self.all_rows)
            return [lambda: self._write("w", keys, rows, header=True)]
        if not self.path.is_file():
            return [lambda: self._write("w", keys, metrics, header=True)]
        if not new_keys:
            return [lambda: self._write("a", keys, metrics)]
        old_rows: list[dict[str, Any]] = []

        def truncate() -> None:
            with self.path.open(newline="") as f:
                old_rows.extend(csv.DictReader(f))
            self.path.open("w").close()

        return [
            truncate,
            lambda: self._write("a", keys, old_rows, header=True),
            lambda: self._write("a", keys, metrics),
        ]

    def _write(
        self, mode: str, keys: list[str], rows: list[dict[str, Any]], *, header: bool = False
    ) -> None:
        with self.path.open(mode, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            if header:
                writer.writeheader()
            writer.writerows(rows)


class TrainerStateWriter:
    """transformers' Trainer: `log_history` grows; each save writes the whole state, in place."""

    def __init__(self, output_dir: Path, *, save_total_limit: int | None = None) -> None:
        self.output_dir = output_dir
        self.log_history: list[Any] = []
        self.save_total_limit = save_total_limit
        self.global_step = 0
        self.epoch = 0.0

    def log(self, entry: dict[str, Any]) -> None:
        self.global_step = entry.get("step", self.global_step)
        self.epoch = entry.get("epoch", self.epoch)
        self.log_history.append(entry)

    def state_json(self) -> str:
        state = {
            "best_metric": None,
            "best_model_checkpoint": None,
            "epoch": self.epoch,
            "eval_steps": 100,
            "global_step": self.global_step,
            "is_hyper_param_search": False,
            "is_local_process_zero": True,
            "is_world_process_zero": True,
            "log_history": self.log_history,
            "logging_steps": 10,
            "max_steps": 300,
            "num_input_tokens_seen": 0,
            "num_train_epochs": 3,
            "save_steps": 100,
            "stateful_callbacks": {
                "TrainerControl": {
                    "args": {
                        "should_epoch_stop": False,
                        "should_evaluate": False,
                        "should_log": False,
                        "should_save": True,
                        "should_training_stop": False,
                    },
                    "attributes": {},
                }
            },
            "total_flos": 1.2345e15,
            "train_batch_size": 8,
            "trial_name": None,
            "trial_params": None,
        }
        return json.dumps(state, indent=2, sort_keys=True) + "\n"

    def save_checkpoint(self, *, pause: float = 0.0) -> Path:
        folder = self.output_dir / f"checkpoint-{self.global_step}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.safetensors").write_bytes(b"weights")
        path = folder / "trainer_state.json"
        self._write(path, pause)
        if self.save_total_limit is not None:
            checkpoints = sorted(
                self.output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])
            )
            for old in checkpoints[: -self.save_total_limit]:
                shutil.rmtree(old)
        return path

    def save_state(self, *, pause: float = 0.0) -> Path:
        path = self.output_dir / "trainer_state.json"
        self._write(path, pause)
        return path

    def _write(self, path: Path, pause: float) -> None:
        text = self.state_json()
        with path.open("w", encoding="utf-8") as f:  # in place, as TrainerState.save_to_json does
            if pause:
                f.write(text[: len(text) // 2])
                f.flush()
                time.sleep(pause)
                f.write(text[len(text) // 2 :])
            else:
                f.write(text)


def train_entry(step: int, loss: float, *, grad_norm: float = 5.3) -> dict[str, Any]:
    return {
        "epoch": round(step / 100, 2),
        "grad_norm": grad_norm,
        "learning_rate": 5e-05 * (1 - step / 300),
        "loss": loss,
        "step": step,
    }


def eval_entry(step: int, eval_loss: float) -> dict[str, Any]:
    return {
        "epoch": step / 100,
        "eval_loss": eval_loss,
        "eval_runtime": 3.2,
        "eval_samples_per_second": 100.1,
        "eval_steps_per_second": 12.5,
        "step": step,
    }


def summary_entry(step: int) -> dict[str, Any]:
    return {
        "epoch": step / 100,
        "step": step,
        "total_flos": 1.2345e15,
        "train_loss": 1.5,
        "train_runtime": 120.0,
        "train_samples_per_second": 200.0,
        "train_steps_per_second": 2.5,
    }


# --- comparing points -----------------------------------------------------------------------


def norm(points: Iterable[Point]) -> list[tuple[str, int, str, float | None]]:
    """Points as comparable tuples (NaN equals NaN here), sorted."""
    return sorted((p.key, p.step, repr(float(p.value)), p.wall_time) for p in points)


def expected_points(
    records: Iterable[dict[str, Any]], *, ignore: Sequence[str] = ("step",)
) -> list[Point]:
    """The points of records that each carry a step: every number, first value per (key, step)."""
    seen: dict[tuple[str, int], Point] = {}
    for record in records:
        for key, value in record.items():
            if key in ignore or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            seen.setdefault((key, record["step"]), Point(key, record["step"], float(value)))
    return list(seen.values())


def read_all(reader: MetricFileReader, path: Path, *, max_bytes: int = 1 << 24) -> list[Point]:
    points: list[Point] = []
    while True:
        result = reader.read(path, max_bytes=max_bytes)
        points += result.points
        if not result.more:
            return points


def restarted(reader: MetricFileReader) -> MetricFileReader:
    """A new reader from the old one's state, through strict JSON text as the outbox keeps it."""
    text = json.dumps(reader.to_state(), allow_nan=False)
    return MetricFileReader(reader.root, state=json.loads(text))


# --- recognising metric files ----------------------------------------------------------------


def test_detect_recognises_the_three_formats_by_file_name_at_any_depth() -> None:
    assert detect("metrics.jsonl") is MetricFormat.JSONL
    assert detect("/runs/a/checkpoint-500/trainer_state.json") is MetricFormat.TRAINER_STATE
    assert detect(Path("lightning_logs/version_3/metrics.csv")) is MetricFormat.LIGHTNING_CSV
    assert detect("custom/dir/metrics.csv") is MetricFormat.LIGHTNING_CSV
    for other in ["metrics.json", "trainer_state.json.tmp", "model.safetensors", "hparams.yaml"]:
        assert detect(other) is None


def test_find_metric_files_lists_them_below_the_folder_but_not_in_hidden_folders(
    tmp_path: Path,
) -> None:
    wanted = [
        "metrics.jsonl",
        "out/trainer_state.json",
        "out/checkpoint-100/trainer_state.json",
        "lightning_logs/version_0/metrics.csv",
    ]
    for rel in [*wanted, ".git/metrics.jsonl", "out/checkpoint-100/model.safetensors"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "metrics.jsonl").symlink_to(tmp_path / "metrics.jsonl")
    assert find_metric_files(tmp_path) == sorted(tmp_path / rel for rel in wanted)
    with pytest.raises(FileNotFoundError):
        find_metric_files(tmp_path / "gone")


def test_a_path_with_another_name_or_outside_the_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(NotAMetricFile) as caught:
        read_new(tmp_path / "notes.txt")
    assert isinstance(caught.value, DaemonError)
    assert "metrics.jsonl" in caught.value.message
    reader = MetricFileReader(tmp_path / "run")
    with pytest.raises(NotAMetricFile):
        reader.read("notes.txt")
    with pytest.raises(ValueError, match="not inside the watched folder"):
        reader.read(tmp_path / "elsewhere" / "metrics.jsonl")


# --- metrics.jsonl ---------------------------------------------------------------------------


def test_jsonl_reads_only_the_lines_appended_since_the_last_read(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    reader = MetricFileReader(tmp_path)
    append_jsonl(path, [{"step": 10, "loss": 0.9, "acc": 0.5}, {"step": 20, "loss": 0.7}])
    first = reader.read(path)
    assert first.points == [
        Point("loss", 10, 0.9),
        Point("acc", 10, 0.5),
        Point("loss", 20, 0.7),
    ]
    assert reader.read(path).points == []
    append_jsonl(path, [{"step": 30, "loss": 0.5, "acc": 0.75}])
    assert reader.read("metrics.jsonl").points == [Point("loss", 30, 0.5), Point("acc", 30, 0.75)]
    append_jsonl(path, [{"step": 40, "loss": 0.25}, {"step": 50, "loss": 0.125}])
    assert reader.read(path).points == [Point("loss", 40, 0.25), Point("loss", 50, 0.125)]
    assert reader.skipped == 0


def test_jsonl_last_line_is_not_consumed_until_its_newline_arrives(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, [{"step": 1, "loss": 0.5}])
    with path.open("a") as f:
        f.write('{"step": 2, "lo')
    reader = MetricFileReader(tmp_path)
    assert reader.read(path).points == [Point("loss", 1, 0.5)]
    with path.open("a") as f:
        f.write('ss": 0.4')
    assert reader.read(path).points == []
    with path.open("a") as f:
        f.write("}\n")
    assert reader.read(path).points == [Point("loss", 2, 0.4)]
    assert reader.skipped == 0


def test_jsonl_line_without_step_takes_the_step_after_the_previous_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, [{"loss": 1.0}, {"loss": 0.9}, {"step": 10, "loss": 0.8}, {"loss": 0.7}])
    reader = MetricFileReader(tmp_path)
    assert [(p.step, p.value) for p in reader.read(path).points] == [
        (0, 1.0),
        (1, 0.9),
        (10, 0.8),
        (11, 0.7),
    ]
    # Across reads, and across a restart, the count goes on.
    reader = restarted(reader)
    append_jsonl(path, [{"loss": 0.6}])
    assert reader.read(path).points == [Point("loss", 12, 0.6)]


def test_jsonl_wall_time_fields_are_the_points_time_not_metrics(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    append_jsonl(
        path,
        [
            {"step": 1, "loss": 0.5, "time": 1718000000.5},
            {"step": 2, "loss": 0.4, "timestamp": "2024-06-10T06:13:20+00:00"},
            {"step": 3, "loss": 0.3, "wall_time": 1718000002},
            {"step": 4, "loss": 0.2, "time": "not a time"},
        ],
    )
    points = MetricFileReader(tmp_path).read(path).points
    assert [(p.key, p.step, p.wall_time) for p in points] == [
        ("loss", 1, 1718000000.5),
        ("loss", 2, 1718000000.0),
        ("loss", 3, 1718000002.0),
        ("loss", 4, None),
    ]


def test_jsonl_malformed_lines_are_skipped_and_counted_never_fatal(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    lines = [
        b'{"step": 1, "loss": 0.5}',
        b'{"step": 2, "loss": ',  # cut short and then continued by another line: bad JSON
        b"[1, 2, 3]",  # JSON, but not an object
        b'"loss"',
        b'{"step": "ten", "loss": 0.4}',
        b'{"step": -3, "loss": 0.4}',
        b'{"step": 2.5, "loss": 0.4}',
        b'{"step": true, "loss": 0.4}',
        b'{"step": 3, "loss": \xff\xfe}',  # not UTF-8
        b'{"step": 4, "loss": 0.3, "big": 1' + b"0" * 400 + b"}",  # `big` beyond a float
        b"[" * 100_000,  # nested past the parser's recursion limit
        b"",
        b"   ",
        b'{"step": 5, "loss": 0.2, "phase": "train", "tags": ["a"], "note": null, "ok": true}',
        b'{"step": 6.0, "loss": 0.1}',
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    reader = MetricFileReader(tmp_path)
    result = reader.read(path)
    assert result.points == [
        Point("loss", 1, 0.5),
        Point("loss", 4, 0.3),  # the line's good value is kept, the line is counted
        Point("loss", 5, 0.2),  # non-numeric fields are not metrics, and not errors
        Point("loss", 6, 0.1),
    ]
    assert result.skipped == 10
    assert reader.skipped == 10
    append_jsonl(path, [{"step": 7, "loss": 0.05}])
    assert reader.read(path).skipped == 0
    assert reader.skipped == 10


def test_nan_and_infinity_are_kept_as_float_values(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, [{"step": 1, "loss": NAN, "grad_norm": INF, "lr": -INF}])
    assert "NaN" in path.read_text() and "Infinity" in path.read_text()
    csv_path = tmp_path / "lightning_logs" / "version_0" / "metrics.csv"
    csv_path.parent.mkdir(parents=True)
    csv_path.write_text("epoch,step,train_loss,val_loss\r\n0,1,nan,inf\r\n0,2,-inf,NaN\r\n")
    reader = MetricFileReader(tmp_path)
    points = reader.read(path).points + reader.read(csv_path).points
    assert norm(points) == norm(
        [
            Point("loss", 1, NAN),
            Point("grad_norm", 1, INF),
            Point("lr", 1, -INF),
            Point("epoch", 1, 0.0),
            Point("train_loss", 1, NAN),
            Point("val_loss", 1, INF),
            Point("epoch", 2, 0.0),
            Point("train_loss", 2, -INF),
            Point("val_loss", 2, NAN),
        ]
    )
    assert all(isinstance(p.value, float) for p in points)
    assert reader.skipped == 0


def test_jsonl_truncated_and_rewritten_by_a_restarted_job_sends_only_steps_not_sent(
    tmp_path: Path,
) -> None:
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, [{"step": s, "loss": 1 / (s + 1)} for s in range(0, 50, 10)])
    reader = MetricFileReader(tmp_path)
    assert [p.step for p in reader.read(path).points] == [0, 10, 20, 30, 40]
    # The job starts again with open("metrics.jsonl", "w"): shorter than what was read.
    path.write_text("")
    append_jsonl(path, [{"step": s, "loss": 2.0} for s in range(0, 30, 10)])
    result = reader.read(path)
    assert result.rewritten
    assert result.points == []
    append_jsonl(path, [{"step": s, "loss": 2.0} for s in range(30, 70, 10)])
    result = reader.read(path)
    assert not result.rewritten
    assert [p.step for p in result.points] == [50, 60]


def test_jsonl_replaced_by_a_new_file_is_read_again_without_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    records = [{"step": s, "loss": 1 / (s + 1), "acc": s / 100} for s in range(0, 50, 10)]
    append_jsonl(path, records)
    reader = MetricFileReader(tmp_path)
    assert len(reader.read(path).points) == 10
    # Written anew beside and renamed over it (a new inode), with two more lines.
    staged = tmp_path / "metrics.jsonl.tmp"
    append_jsonl(staged, [*records, {"step": 50, "loss": 0.02}, {"step": 60, "acc": 0.6}])
    os.replace(staged, path)
    result = reader.read(path)
    assert result.rewritten
    assert result.points == [Point("loss", 50, 0.02), Point("acc", 60, 0.6)]


def test_jsonl_rewritten_in_place_to_the_same_size_is_noticed(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, [{"step": s, "loss": 0.5} for s in range(5)])
    reader = MetricFileReader(tmp_path)
    reader.read(path)
    text = path.read_text()
    with path.open("r+") as f:  # same length, same inode, different last line
        f.write(text[: -len('{"step": 4, "loss": 0.5}\n')] + '{"step": 9, "loss": 0.7}\n')
    result = reader.read(path)
    assert result.rewritten
    assert result.points == [Point("loss", 9, 0.7)]


def test_a_step_at_or_below_what_was_sent_for_its_key_is_not_sent_again(tmp_path: Path) -> None:
    """A job resumed from an earlier checkpoint appends steps the server already has."""
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, [{"step": s, "loss": 1.0} for s in (10, 20, 30)])
    reader = MetricFileReader(tmp_path)
    reader.read(path)
    append_jsonl(path, [{"step": 20, "loss": 0.9, "eval_loss": 1.1}, {"step": 40, "loss": 0.8}])
    assert reader.read(path).points == [Point("eval_loss", 20, 1.1), Point("loss", 40, 0.8)]


def test_incremental_read_never_parses_what_it_consumed_before(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, [{"step": s, "loss": 0.5, "acc": 0.25} for s in range(2000)])
    reader = MetricFileReader(tmp_path)
    assert len(reader.read(path).points) == 4000
    # Damage a line in the middle, away from the bytes hashed at the start and at the offset:
    # a reader that parsed the file again would count it as malformed.
    data = bytearray(path.read_bytes())
    middle = data.index(b'{"step": 1000,')
    data[middle : middle + 14] = b"#" * 14
    with path.open("r+b") as f:
        f.write(data)
    append_jsonl(path, [{"step": 2000, "loss": 0.1}])
    result = reader.read(path)
    assert result.points == [Point("loss", 2000, 0.1)]
    assert result.skipped == 0
    assert not result.rewritten


def test_reading_what_was_appended_to_a_large_file_costs_only_the_new_bytes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "metrics.jsonl"
    line = '{"step": %d, "loss": 0.123456789, "acc": 0.987654321, "time": 1718000000.25}\n'
    with path.open("w") as f:
        for start in range(0, 200_000, 10_000):
            f.write("".join(line % s for s in range(start, start + 10_000)))
    size = path.stat().st_size
    assert size > 15_000_000
    reader = MetricFileReader(tmp_path)
    started = time.perf_counter()
    assert len(read_all(reader, path)) == 400_000
    full = time.perf_counter() - started
    timings = []
    for step in range(200_000, 200_005):  # the best of five, so that a busy machine cannot fail it
        append_jsonl(path, [{"step": step, "loss": 0.1}])
        started = time.perf_counter()
        result = reader.read(path)
        timings.append(time.perf_counter() - started)
        assert result.points == [Point("loss", step, 0.1)]
        assert result.state.offset == path.stat().st_size
    incremental = min(timings)
    print(f"full read of {size / 1e6:.0f} MB: {full:.2f} s; one appended line: {incremental:.5f} s")
    assert incremental < full / 50


def test_a_large_file_is_read_in_bounded_steps_and_a_longer_line_still_whole(
    tmp_path: Path,
) -> None:
    path = tmp_path / "metrics.jsonl"
    records = [{"step": s, "loss": s / 1000} for s in range(300)]
    records.insert(150, {"step": 150, "note": "x" * 5000, "acc": 0.5})  # longer than a step
    records.pop(151)
    append_jsonl(path, records)
    reader = MetricFileReader(tmp_path)
    results: list[ReadResult] = []
    while not results or results[-1].more:
        results.append(reader.read(path, max_bytes=1024))
        assert len(results) < 100
    assert len(results) > 5
    assert all(r.more for r in results[:-1])
    points = [p for r in results for p in r.points]
    assert norm(points) == norm(expected_points(records))


def test_a_vanished_file_gives_nothing_and_its_old_lines_are_not_sent_again(
    tmp_path: Path,
) -> None:
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, [{"step": 1, "loss": 0.5}])
    reader = MetricFileReader(tmp_path)
    reader.read(path)
    path.unlink()
    result = reader.read(path)
    assert result.missing
    assert result.points == []
    append_jsonl(path, [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4}])
    assert reader.read(path).points == [Point("loss", 2, 0.4)]
    reader.forget(path)
    assert len(reader.read(path).points) == 2


def test_a_metric_file_that_cannot_be_read_raises_an_error_the_user_can_act_on(
    tmp_path: Path,
) -> None:
    (tmp_path / "metrics.jsonl").mkdir()
    with pytest.raises(MetricFileUnreadable) as caught:
        MetricFileReader(tmp_path).read("metrics.jsonl")
    assert caught.value.title == "Metric file unreadable"
    assert "read access" in caught.value.message


# --- trainer_state.json ----------------------------------------------------------------------


def test_trainer_state_mixed_train_and_eval_entries_become_points(tmp_path: Path) -> None:
    trainer = TrainerStateWriter(tmp_path / "out")
    for step in range(10, 101, 10):
        trainer.log(train_entry(step, 2.0 - step / 100))
    trainer.log(eval_entry(100, 1.9))
    path = trainer.save_checkpoint()
    reader = MetricFileReader(tmp_path)
    points = reader.read(path).points
    by_key: dict[str, list[tuple[int, float]]] = {}
    for p in points:
        by_key.setdefault(p.key, []).append((p.step, p.value))
    assert sorted(by_key) == [
        "epoch",
        "eval_loss",
        "eval_runtime",
        "eval_samples_per_second",
        "eval_steps_per_second",
        "grad_norm",
        "learning_rate",
        "loss",
    ]
    assert by_key["loss"][0] == (10, 1.9)
    assert by_key["eval_loss"] == [(100, 1.9)]
    assert by_key["epoch"][-1] == (100, 1.0)  # once at step 100, though two entries give it
    assert norm(points) == norm(expected_points(trainer.log_history))
    assert all(p.wall_time is None for p in points)
    assert reader.skipped == 0


def test_trainer_state_copies_in_checkpoints_are_not_counted_twice(tmp_path: Path) -> None:
    trainer = TrainerStateWriter(tmp_path / "out")
    reader = MetricFileReader(tmp_path)
    sent: list[Point] = []
    for step in range(10, 301, 10):
        trainer.log(train_entry(step, 3.0 / step))
        if step % 100 == 0:
            trainer.log(eval_entry(step, 2.0 / step))
            path = trainer.save_checkpoint()
            result = reader.read(path)
            assert result.points, step
            assert {p.step for p in result.points} <= set(range(step - 90, step + 1))
            sent += result.points
            assert reader.read(path).points == []  # unchanged: nothing new, not even parsed
    trainer.log(summary_entry(300))
    final = reader.read(trainer.save_state()).points
    assert sorted(p.key for p in final) == [
        "total_flos",
        "train_loss",
        "train_runtime",
        "train_samples_per_second",
        "train_steps_per_second",
    ]
    sent += final
    assert norm(sent) == norm(expected_points(trainer.log_history))
    # Every copy read again, in any order, by this reader or a restarted one: nothing new.
    for candidate in [reader, restarted(reader)]:
        for path in reversed(find_metric_files(tmp_path)):
            candidate.forget(path)
            assert candidate.read(path).points == []


def test_trainer_state_of_two_output_folders_are_two_histories(tmp_path: Path) -> None:
    reader = MetricFileReader(tmp_path)
    for name in ["lr-1e-4", "lr-3e-4"]:
        trainer = TrainerStateWriter(tmp_path / name)
        trainer.log(train_entry(10, 2.0))
        assert len(reader.read(trainer.save_checkpoint()).points) == 4


def test_trainer_state_caught_half_written_is_read_again_once_complete(tmp_path: Path) -> None:
    trainer = TrainerStateWriter(tmp_path / "out")
    trainer.log(train_entry(10, 2.0))
    path = trainer.save_checkpoint()
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    reader = MetricFileReader(tmp_path)
    result = reader.read(path)
    assert result.incomplete
    assert result.points == []
    assert result.skipped == 0
    path.write_text(text)
    result = reader.read(path)
    assert not result.incomplete
    assert len(result.points) == 4


def test_trainer_state_resumed_from_an_earlier_checkpoint_sends_only_later_steps(
    tmp_path: Path,
) -> None:
    trainer = TrainerStateWriter(tmp_path / "out")
    reader = MetricFileReader(tmp_path)
    for step in range(10, 251, 10):
        trainer.log(train_entry(step, 1.0))
    reader.read(trainer.save_checkpoint())
    # Crashed at 250, resumed from checkpoint-200: its history, then new entries from 210.
    trainer.log_history = [e for e in trainer.log_history if e["step"] <= 200]
    for step in range(210, 301, 10):
        trainer.log(train_entry(step, 0.5))
    points = reader.read(trainer.save_checkpoint()).points
    assert sorted({p.step for p in points}) == list(range(260, 301, 10))


def test_trainer_state_malformed_entries_are_counted_once_for_all_copies(tmp_path: Path) -> None:
    trainer = TrainerStateWriter(tmp_path / "out")
    reader = MetricFileReader(tmp_path)
    trainer.log(train_entry(10, 2.0))
    trainer.log_history += ["not an entry", {"loss": 1.0}, {"loss": 1.0, "step": "x"}]
    trainer.log(train_entry(20, 1.5))
    first = reader.read(trainer.save_checkpoint())
    assert first.skipped == 3
    assert [p.step for p in first.points if p.key == "loss"] == [10, 20]
    trainer.log(train_entry(30, 1.0))
    second = reader.read(trainer.save_checkpoint())
    assert second.skipped == 0
    assert [p.step for p in second.points if p.key == "loss"] == [30]
    assert reader.skipped == 3
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "trainer_state.json").write_text('{"not": "a trainer state"}\n')
    assert reader.read("other/trainer_state.json").skipped == 1
    assert reader.read("other/trainer_state.json").skipped == 0  # unchanged: not again


# --- Lightning metrics.csv -------------------------------------------------------------------


def lightning_epochs(writer: LightningCsvWriter, epochs: range, *, batches: int = 100) -> None:
    """`log_every_n_steps=25`, validation at each epoch's end, a flush at each epoch's end."""
    for epoch in epochs:
        for batch in range(24, batches, 25):
            step = epoch * batches + batch
            writer.log_metrics({"train_loss": 2.0 / (step + 1), "epoch": epoch}, step)
        last = epoch * batches + batches - 1
        writer.log_metrics(
            {"val_loss": 1.0 / (epoch + 1), "val_acc": 0.5 + epoch / 10, "epoch": epoch}, last
        )
        writer.save()


def test_lightning_csv_sparse_rows_give_only_the_cells_logged(tmp_path: Path) -> None:
    path = tmp_path / "lightning_logs" / "version_0" / "metrics.csv"
    path.parent.mkdir(parents=True)
    writer = LightningCsvWriter(path)
    lightning_epochs(writer, range(2))
    text = path.read_bytes().decode()  # as written: csv ends rows with \r\n
    assert text.startswith("epoch,step,train_loss,val_acc,val_loss\r\n")
    assert "\r\n0,24,0.08,,\r\n" in text  # blank cells for what was not logged in the row
    reader = MetricFileReader(tmp_path)
    points = reader.read(path).points
    assert norm(points) == norm(expected_points(writer.all_rows))
    assert Point("val_acc", 99, 0.5) in points
    assert Point("epoch", 99, 0.0) in points  # in two rows at step 99, sent once
    assert reader.skipped == 0


def test_lightning_csv_header_rewritten_for_a_new_column_sends_only_new_points(
    tmp_path: Path,
) -> None:
    path = tmp_path / "lightning_logs" / "version_0" / "metrics.csv"
    path.parent.mkdir(parents=True)
    writer = LightningCsvWriter(path)
    reader = MetricFileReader(tmp_path)
    for step in range(49, 200, 50):  # train only, until validation first runs
        writer.log_metrics({"train_loss": 1.0 / step, "epoch": 0}, step)
    writer.save()
    first = reader.read(path)
    assert path.read_text().splitlines()[0] == "epoch,step,train_loss"
    lightning_epochs(writer, range(2, 4))  # validation logs val_acc and val_loss: new columns
    assert path.read_text().splitlines()[0] == "epoch,step,train_loss,val_acc,val_loss"
    second = reader.read(path)
    assert second.rewritten
    assert {p.key for p in second.points} == {"epoch", "train_loss", "val_acc", "val_loss"}
    assert min(p.step for p in second.points) == 224
    writer.log_metrics({"train_loss": 0.01, "epoch": 4, "lr-Adam": 1e-4}, 424)
    writer.save()  # one more column, `lr-Adam`, sorts to the middle of the header
    third = reader.read(path)
    assert third.rewritten
    assert third.points == [
        Point("epoch", 424, 4.0),
        Point("lr-Adam", 424, 1e-4),
        Point("train_loss", 424, 0.01),
    ]
    sent = first.points + second.points + third.points
    assert norm(sent) == norm(expected_points(writer.all_rows))
    writer.log_metrics({"train_loss": 0.005, "epoch": 4, "lr-Adam": 1e-4}, 449)
    writer.save()
    fourth = reader.read(path)
    assert not fourth.rewritten
    assert [p.step for p in fourth.points] == [449, 449, 449]


def test_lightning_1x_rewriting_the_whole_file_at_each_save_reads_as_appended(
    tmp_path: Path,
) -> None:
    path = tmp_path / "metrics.csv"
    writer = LightningCsvWriter(path, rewrite_every_save=True)
    reader = MetricFileReader(tmp_path)
    sent: list[Point] = []
    for epoch in range(4):
        lightning_epochs(writer, range(epoch, epoch + 1))
        result = reader.read(path)
        assert not result.rewritten  # the same bytes again, and more after them
        sent += result.points
    assert norm(sent) == norm(expected_points(writer.all_rows))


def test_lightning_csv_malformed_rows_and_cells_are_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text(
        "epoch,step,train_loss,val_loss\r\n"
        "0,9,0.5,\r\n"
        "0,19,0.4\r\n"  # a cell short
        "0,29,0.3,,extra\r\n"  # a cell too many
        "0,x,0.2,\r\n"  # step not a number
        "0,-5,0.2,\r\n"  # step negative
        "0,49,abc,0.25\r\n"  # train_loss not a number: val_loss still kept
        "\r\n"
        f"0,{'9' * 200_000},0.1,\r\n"  # a cell over csv's field size limit
        "0,,0.1,\r\n"  # no step: the one after 49
    )
    reader = MetricFileReader(tmp_path)
    result = reader.read(path)
    assert result.points == [
        Point("epoch", 9, 0.0),
        Point("train_loss", 9, 0.5),
        Point("epoch", 49, 0.0),
        Point("val_loss", 49, 0.25),
        Point("epoch", 50, 0.0),
        Point("train_loss", 50, 0.1),
    ]
    assert result.skipped == 6


def test_lightning_csv_with_only_part_of_its_header_waits_for_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,st")
    reader = MetricFileReader(tmp_path)
    assert reader.read(path).points == []
    with path.open("a") as f:
        f.write("ep,loss\r\n0,3,0.7\r\n0,4,0.6")
    assert reader.read(path).points == [Point("epoch", 3, 0.0), Point("loss", 3, 0.7)]
    with path.open("a") as f:
        f.write("\r\n")
    assert reader.read(path).points == [Point("epoch", 4, 0.0), Point("loss", 4, 0.6)]


# --- state that survives a restart -----------------------------------------------------------


def test_state_round_trips_through_json_and_a_new_reader_continues(tmp_path: Path) -> None:
    jsonl = tmp_path / "metrics.jsonl"
    csv_path = tmp_path / "lightning_logs" / "version_0" / "metrics.csv"
    csv_path.parent.mkdir(parents=True)
    lightning = LightningCsvWriter(csv_path)
    trainer = TrainerStateWriter(tmp_path / "hf")
    reader = MetricFileReader(tmp_path)

    append_jsonl(jsonl, [{"loss": 0.9}, {"step": 5, "loss": 0.8}])
    with jsonl.open("a") as f:
        f.write('{"loss": 0.7')  # a partial line across the restart
    lightning_epochs(lightning, range(1))
    trainer.log(train_entry(10, 2.0))
    trainer.log(train_entry(20, 1.8))
    trainer.save_checkpoint()
    before = [p for path in find_metric_files(tmp_path) for p in reader.read(path).points]
    assert len(before) == 2 + 8 + 2 + 8  # jsonl, csv train rows, csv val row, two HF entries

    state = reader.to_state()
    assert json.loads(json.dumps(state, allow_nan=False)) == state
    reader = restarted(reader)

    with jsonl.open("a") as f:
        f.write("}\n")
    lightning_epochs(lightning, range(1, 2))
    trainer.log(train_entry(30, 1.6))
    trainer.save_checkpoint()
    after = [p for path in find_metric_files(tmp_path) for p in reader.read(path).points]
    assert sorted((p.key, p.step) for p in after) == sorted(
        [("loss", 6)]
        + [(k, s) for s in (124, 149, 174, 199) for k in ("epoch", "train_loss")]
        + [("val_acc", 199), ("val_loss", 199)]
        + [(k, 30) for k in ("epoch", "grad_norm", "learning_rate", "loss")]
    )


def test_read_new_is_the_same_reading_with_the_state_in_the_callers_hands(
    tmp_path: Path,
) -> None:
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, [{"step": 1, "loss": 0.5}])
    first = read_new(path)
    assert first.points == [Point("loss", 1, 0.5)]
    state = TailState.from_dict(json.loads(json.dumps(first.state.to_dict())))
    assert state == first.state
    append_jsonl(path, [{"step": 2, "loss": 0.4}])
    assert read_new(path, state).points == [Point("loss", 2, 0.4)]
    assert read_new(tmp_path / "metrics.csv").missing


@pytest.mark.parametrize(
    "state",
    [
        {},
        {"version": 99, "skipped": 0, "files": {}, "trainer_runs": {}},
        {"version": 1, "skipped": "0", "files": {}, "trainer_runs": {}},
        {
            "version": 1,
            "skipped": 0,
            "files": {"metrics.jsonl": {"format": "xml"}},
            "trainer_runs": {},
        },
        {"version": 1, "skipped": 0, "files": [], "trainer_runs": {"": {"high_water": []}}},
    ],
)
def test_saved_state_that_is_not_the_readers_is_refused_clearly(state: dict[str, Any]) -> None:
    with pytest.raises(MetricStateInvalid) as caught:
        MetricFileReader("/runs/a", state=state)
    assert "read them again from the start" in caught.value.message


# --- the snapshot a checkpoint's version gets ------------------------------------------------


def test_latest_values_gives_each_keys_last_value_at_or_before_the_step() -> None:
    points = [
        Point("loss", 10, 1.0),
        Point("loss", 20, 0.8),
        Point("eval_loss", 20, 0.9),
        Point("loss", 30, 0.6),
        Point("lr", 40, 1e-4),
        Point("grad_norm", 15, NAN),
        Point("loss", 20, 0.7),  # a second value at a step: the first one stands
    ]
    snapshot = latest_values(points, at_step=25)
    assert snapshot.keys() == {"loss", "eval_loss", "grad_norm"}
    assert snapshot["loss"] == 0.8
    assert snapshot["eval_loss"] == 0.9
    assert math.isnan(snapshot["grad_norm"])
    assert latest_values(points, at_step=5) == {}


# --- a training job writing in another process while the reader polls ------------------------


def jsonl_records() -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for i in range(120):
        record: dict[str, Any] = {"step": i * 5, "loss": 2.0 / (i + 1), "time": 1718000000 + i}
        if i % 10 == 9:
            record["eval_acc"] = i / 120
        if i == 60:
            record["loss"] = NAN
        records.append(record)
    return records


def run_training_job(fmt: str, folder: str) -> None:
    """The child process: writes its metric file(s) in small pieces with pauses."""
    root = Path(folder)
    if fmt == "jsonl":
        with (root / "metrics.jsonl").open("w") as f:
            for i, record in enumerate(jsonl_records()):
                line = json.dumps(record) + "\n"
                cut = len(line) // 2 if i % 3 else len(line)
                f.write(line[:cut])
                f.flush()
                time.sleep(0.002)
                f.write(line[cut:])
                if i == 40:
                    f.write("{this is not json}\n")
                f.flush()
    elif fmt == "trainer_state":
        trainer = TrainerStateWriter(root / "out", save_total_limit=2)
        for step in range(10, 301, 10):
            trainer.log(train_entry(step, 3.0 / step))
            if step % 100 == 0:
                trainer.log(eval_entry(step, 2.0 / step))
            if step % 50 == 0:
                trainer.save_checkpoint(pause=0.01)
            time.sleep(0.01)
        trainer.log(summary_entry(300))
        trainer.save_state(pause=0.01)
        (root / "history.json").write_text(json.dumps(trainer.log_history))
    else:
        path = root / "lightning_logs" / "version_0" / "metrics.csv"
        path.parent.mkdir(parents=True)
        writer = LightningCsvWriter(path)
        for epoch in range(6):
            for batch in range(4, 50, 5):
                step = epoch * 50 + batch
                writer.log_metrics({"train_loss": 2.0 / (step + 1), "epoch": epoch}, step)
                if batch % 20 == 9:
                    writer.save()
                time.sleep(0.003)
            if epoch >= 1:  # validation from the second epoch on: the header is rewritten
                writer.log_metrics(
                    {"val_loss": 1.0 / (epoch + 1), "val_acc": 0.5, "epoch": epoch},
                    epoch * 50 + 49,
                )
            writer.save()
        (root / "rows.json").write_text(json.dumps(writer.all_rows))


@pytest.mark.parametrize("fmt", ["jsonl", "trainer_state", "lightning_csv"])
def test_follows_metric_files_written_by_a_separate_training_process(
    tmp_path: Path, fmt: str
) -> None:
    job = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from tests.daemon.test_metric_files import run_training_job; "
            "run_training_job(sys.argv[1], sys.argv[2])",
            fmt,
            str(tmp_path),
        ],
        cwd=REPO,
    )
    reader = MetricFileReader(tmp_path)
    collected: list[Point] = []
    polls = 0
    try:
        while True:
            finished = job.poll() is not None
            for path in find_metric_files(tmp_path):
                while True:
                    result = reader.read(path, max_bytes=2048)
                    collected += result.points
                    if not result.more:
                        break
            polls += 1
            if polls % 5 == 0:  # the daemon restarts now and then, from its saved state
                reader = restarted(reader)
            if finished:
                break
            time.sleep(0.003)
    finally:
        job.wait(timeout=60)
    assert job.returncode == 0
    assert polls > 10

    if fmt == "jsonl":
        expected = [
            Point(k, r["step"], float(v), float(r["time"]))
            for r in jsonl_records()
            for k, v in r.items()
            if k not in ("step", "time")
        ]
        assert reader.skipped == 1
    elif fmt == "trainer_state":
        expected = expected_points(json.loads((tmp_path / "history.json").read_text()))
        assert reader.skipped == 0
    else:
        expected = expected_points(json.loads((tmp_path / "rows.json").read_text()))
        assert reader.skipped == 0
    assert len(collected) == len({(p.key, p.step) for p in collected})
    assert norm(collected) == norm(expected)


# --- a job's write landing anywhere inside a read (issue 20) ---------------------------------


class Interleaving:
    """Puts a training job's writes at chosen points inside the reader's reads.

    `read_new` looks at a file only through `os.fstat` and `os.pread`. While `reading`, these
    count the reader's calls, and before call number k make the writes scheduled at k. A test
    can so put any write between any two of the reader's looks at the file, deterministically,
    in one process, with no timing."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.armed = False
        self.schedule: dict[int, list[Callable[[], None]]] = {}
        real_pread, real_fstat = os.pread, os.fstat

        def pread(fd: int, length: int, offset: int, /) -> bytes:
            self._tick()
            return real_pread(fd, length, offset)

        def fstat(fd: int, /) -> os.stat_result:
            self._tick()
            return real_fstat(fd)

        monkeypatch.setattr(os, "pread", pread)
        monkeypatch.setattr(os, "fstat", fstat)

    def plan(self, writes: Sequence[Callable[[], None]], at: Sequence[int]) -> None:
        """Make `writes[i]` just before the reader's call number `at[i]` (in order)."""
        self.calls = 0
        self.schedule = {}
        for write, k in zip(writes, at, strict=True):
            self.schedule.setdefault(k, []).append(write)

    def reading(self, read: Callable[[], list[Point]]) -> list[Point]:
        self.armed = True
        try:
            return read()
        finally:
            self.armed = False

    def finish(self) -> None:
        """Make the writes the reader's calls did not reach."""
        for k in sorted(self.schedule):
            for write in self.schedule.pop(k):
                write()

    def _tick(self) -> None:
        if not self.armed:
            return
        self.armed = False  # the writes' own calls are not the reader's
        try:
            for write in self.schedule.pop(self.calls, []):
                write()
        finally:
            self.armed = True
        self.calls += 1


# One scenario: (its folder, the Interleaving, where its writes land) -> the points read, the
# reader, the points the job wrote and the malformed records it wrote.
Scenario = Callable[
    [Path, Interleaving, Sequence[int]], tuple[list[Point], MetricFileReader, list[Point], int]
]


def every_placement(
    tmp_path: Path, interleaving: Interleaving, scenario: Scenario, writes: int
) -> int:
    """Run `scenario` with its writes at every placement among the reader's calls (in order);
    each must end with exactly the points written and the malformed records counted once.
    Returns how many placements were run."""
    undisturbed = 10**9
    _, _, _, _ = scenario(tmp_path / "count", interleaving, [undisturbed] * writes)
    calls = interleaving.calls
    placements = list(itertools.combinations_with_replacement(range(calls + 1), writes))
    for n, at in enumerate(placements):
        collected, reader, expected, malformed = scenario(tmp_path / str(n), interleaving, at)
        assert len(collected) == len({(p.key, p.step) for p in collected}), at
        assert norm(collected) == norm(expected), f"writes at reader calls {at}"
        assert reader.skipped == malformed, f"writes at reader calls {at}"
    print(f"{len(placements)} placements among {calls} reader calls")
    return len(placements)


def lightning_header_growth(
    root: Path, interleaving: Interleaving, at: Sequence[int], *, max_bytes: int = 1 << 20
) -> tuple[list[Point], MetricFileReader, list[Point], int]:
    """The issue's job: epoch 0 logs train rows; epoch 1 more of them, then its validation
    brings two new columns, so Lightning rewrites the file (read back, truncate, header and
    rows again, then the new rows appended) while the reader is reading the rows before."""
    path = root / "lightning_logs" / "version_0" / "metrics.csv"
    path.parent.mkdir(parents=True)
    writer = LightningCsvWriter(path)
    reader = MetricFileReader(root)
    for step in range(4, 50, 5):
        writer.log_metrics({"train_loss": 2.0 / (step + 1), "epoch": 0}, step)
    writer.save()
    collected = read_all(reader, path, max_bytes=max_bytes)
    for step in range(54, 75, 5):
        writer.log_metrics({"train_loss": 2.0 / (step + 1), "epoch": 1}, step)
    writer.save()  # appended: the reader reads these rows when the rewrite lands
    for step in range(79, 100, 5):
        writer.log_metrics({"train_loss": 2.0 / (step + 1), "epoch": 1}, step)
    writer.log_metrics({"val_loss": 0.5, "val_acc": 0.6, "epoch": 1}, 99)
    interleaving.plan(writer.save_steps(), at)
    collected += interleaving.reading(lambda: read_all(reader, path, max_bytes=max_bytes))
    reader = restarted(reader)  # the daemon restarts from its saved state meanwhile
    collected += interleaving.reading(lambda: read_all(reader, path, max_bytes=max_bytes))
    interleaving.finish()
    collected += read_all(reader, path, max_bytes=max_bytes)
    return collected, reader, expected_points(writer.all_rows), 0


def test_lightning_header_rewrite_landing_anywhere_in_a_read_loses_no_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 20: 47 rows of metrics.csv were counted malformed and dropped.

    The interleaving: the reader had read the rows appended after its last read, and was
    hashing the file's head and the bytes before its new offset (to recognise the file next
    time) when Lightning rewrote the file for a new column. The hashes then described the new
    file, while the state kept the old header and the old file's offset; the next read took
    the new file for a continuation of the old one, and parsed every later row with the old,
    shorter header: each had too many cells. Rewrites landing before the rows were read went
    wrong the same way (new rows at the old offset, under the old header).

    Here Lightning's three writes (truncate, header and old rows, new rows) land at every
    placement among the reader's reads, with a restart from saved state in between."""
    interleaving = Interleaving(monkeypatch)
    runs = every_placement(tmp_path, interleaving, lightning_header_growth, writes=3)
    assert runs > 100


def test_lightning_header_rewrite_inside_reads_of_a_few_bytes_loses_no_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same with reads of 40 bytes, most of which end inside a row; the whole save lands
    at once, at every one of their calls."""
    interleaving = Interleaving(monkeypatch)

    def scenario(
        root: Path, interleaving: Interleaving, at: Sequence[int]
    ) -> tuple[list[Point], MetricFileReader, list[Point], int]:
        steps = [at[0]] * 3
        return lightning_header_growth(root, interleaving, steps, max_bytes=40)

    assert every_placement(tmp_path, interleaving, scenario, writes=1) > 40


def test_trainer_state_rewritten_in_place_anywhere_in_a_read_loses_no_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Trainer writes trainer_state.json in place (truncate, then the text in pieces);
    wherever that lands in a read, each entry is read once, the malformed one counted once."""

    def scenario(
        root: Path, interleaving: Interleaving, at: Sequence[int]
    ) -> tuple[list[Point], MetricFileReader, list[Point], int]:
        trainer = TrainerStateWriter(root / "out")
        trainer.output_dir.mkdir(parents=True)
        reader = MetricFileReader(root)
        path = root / "out" / "trainer_state.json"
        for step in range(10, 60, 10):
            trainer.log(train_entry(step, 3.0 / step))
        trainer.log_history.append("not a log entry")
        trainer.save_state()
        collected = read_all(reader, path)
        for step in range(60, 110, 10):
            trainer.log(train_entry(step, 3.0 / step))
        trainer.log(eval_entry(100, 0.7))
        text = trainer.state_json()
        cut = len(text) * 2 // 3

        def write(part: str) -> Callable[[], None]:
            def append() -> None:
                with path.open("a") as f:
                    f.write(part)

            return append

        writes = [lambda: path.open("w").close(), write(text[:cut]), write(text[cut:])]
        interleaving.plan(writes, at)
        collected += interleaving.reading(lambda: read_all(reader, path))
        reader = restarted(reader)
        collected += interleaving.reading(lambda: read_all(reader, path))
        interleaving.finish()
        collected += read_all(reader, path)
        entries = [e for e in trainer.log_history if isinstance(e, dict)]
        return collected, reader, expected_points(entries), 1

    interleaving = Interleaving(monkeypatch)
    assert every_placement(tmp_path, interleaving, scenario, writes=3) > 20


def test_jsonl_rewritten_by_a_restarted_job_anywhere_in_a_read_loses_no_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restarted job writes metrics.jsonl again from its start (the same lines, a malformed
    one among them, a line cut in two by the writes) and goes on: wherever that lands in a read,
    each point is read once and the malformed line counted once."""

    def scenario(
        root: Path, interleaving: Interleaving, at: Sequence[int]
    ) -> tuple[list[Point], MetricFileReader, list[Point], int]:
        root.mkdir()
        path = root / "metrics.jsonl"
        records = [{"step": s, "loss": 1.0 / (s + 1)} for s in range(0, 60, 3)]
        lines = [json.dumps(r) + "\n" for r in records]
        lines.insert(5, "{not json}\n")
        reader = MetricFileReader(root)
        path.write_text("".join(lines[:12]))
        collected = read_all(reader, path, max_bytes=300)
        with path.open("a") as f:
            f.write("".join(lines[12:16]))
        text = "".join(lines)
        cut = len("".join(lines[:8])) + 7

        def write(part: str) -> Callable[[], None]:
            def append() -> None:
                with path.open("a") as f:
                    f.write(part)

            return append

        writes = [lambda: path.open("w").close(), write(text[:cut]), write(text[cut:])]
        interleaving.plan(writes, at)
        collected += interleaving.reading(lambda: read_all(reader, path, max_bytes=300))
        reader = restarted(reader)
        collected += interleaving.reading(lambda: read_all(reader, path, max_bytes=300))
        interleaving.finish()
        collected += read_all(reader, path, max_bytes=300)
        return collected, reader, expected_points(records), 1

    interleaving = Interleaving(monkeypatch)
    assert every_placement(tmp_path, interleaving, scenario, writes=3) > 100


def test_a_header_read_torn_by_a_rewrite_in_the_same_read_is_read_again_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CI: one `pread` raced Lightning's in-place rewrite for a new column and returned one
    version's first bytes followed by another's (`epoch,step,train_loss,val_loss\ral_loss`);
    the header parser raised on the stray `\r` and the reader died.

    Here the reader's first read of the file returns, for every cut in the first two lines,
    the old file up to the cut and the new one after it, or the other way round; it must end
    with exactly the new file's points and nothing counted malformed."""
    old_rows = [{"epoch": 0, "step": s, "train_loss": 1 / (s + 1)} for s in range(0, 40, 4)]
    new_rows = [*old_rows, {"epoch": 0, "step": 39, "val_loss": 0.5, "val_acc": 0.75}]

    def render(rows: list[dict[str, Any]]) -> bytes:
        keys = sorted({key for row in rows for key in row})
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=keys)  # Lightning's dialect: \r\n line ends
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue().encode()

    old, new = render(old_rows), render(new_rows)
    real_pread = os.pread
    second_line_end = new.index(b"\n", new.index(b"\n") + 1) + 1
    for n, (cut, first, then) in enumerate(
        itertools.product(range(1, second_line_end), (old, new), (old, new))
    ):
        if first is then:
            continue
        folder = tmp_path / str(n)
        path = folder / "lightning_logs" / "version_0" / "metrics.csv"
        path.parent.mkdir(parents=True)
        path.write_bytes(new)
        torn = [first[:cut] + then[cut:]]

        def pread(fd: int, length: int, offset: int, /) -> bytes:
            if torn and offset == 0 and length > len(torn[0]):
                return torn.pop()
            return real_pread(fd, length, offset)

        monkeypatch.setattr(os, "pread", pread)
        reader = MetricFileReader(folder)
        collected = read_all(reader, path)
        monkeypatch.setattr(os, "pread", real_pread)
        assert not torn, f"cut {cut}: the torn read did not happen"
        assert norm(collected) == norm(expected_points(new_rows)), f"cut {cut}"
        assert reader.skipped == 0, f"cut {cut}"
