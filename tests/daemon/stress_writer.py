"""A training job for the metric readers' stress test, run as a separate process:

    python -m tests.daemon.stress_writer FORMAT FOLDER SEED

It writes one metric file (or, for the Trainer, its copies) under `FOLDER/job` as the framework
does, but with the pacing and the pieces drawn from `random.Random(SEED)`: every write is one
`os.write` of a piece of random length, so rows are cut anywhere, often in two or three; between
pieces it sometimes pauses for a moment, mostly not at all. It deliberately writes some
malformed records. At the end it writes `FOLDER/written.json`: `{"records": [...],
"malformed": n}`, the well-formed records it logged (each a dict with its `step`, as the file
has it) and how many malformed records the file holds, which is what a reader that followed
the file must have found.

- `jsonl`: LMVP's `metrics.jsonl`, appended line by line; malformed lines among them, blank
  lines, NaN values; and in some rounds a restart that writes the whole file again from its
  start (the same lines) before going on.
- `lightning_csv`: Lightning's CSVLogger `metrics.csv`: rows buffered and saved every few rows;
  when a save brings a new metric, the file is truncated and written again with the longer
  (sorted) header, the rows before re-rendered under it, then the new rows appended. Malformed
  rows: a step that is not a number, and a row with more cells than any header (kept as is
  when the file is rewritten).
- `trainer_state`: the Trainer's `trainer_state.json`, written whole and in place into
  `checkpoint-N/` at each save (two kept, older ones removed) and into the output folder at the
  end; malformed log entries (not an object, no step) among the entries.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

Record = dict[str, Any]


class Job:
    """What every format shares: the random source, chopped writes, what was logged."""

    def __init__(self, folder: Path, seed: int, pieces: tuple[int, ...]) -> None:
        self.folder = folder
        self.rng = random.Random(seed)
        self.pieces = pieces
        self.records: list[Record] = []
        self.malformed = 0
        self.step = 0

    def next_step(self) -> int:
        self.step += self.rng.randint(1, 3)
        return self.step

    def value(self) -> float:
        """An exact binary fraction (survives CSV and JSON unchanged); now and then NaN."""
        if self.rng.random() < 0.02:
            return math.nan
        return self.rng.randint(1, 4096) / 1024

    def pause(self) -> None:
        draw = self.rng.random()
        if draw < 0.04:
            time.sleep(0.0005)
        elif draw < 0.15:
            time.sleep(0)  # let the reader's process run

    def write(self, path: Path, data: str, *, mode: str = "a") -> None:
        """`data` in random pieces, one `os.write` each, pausing now and then between them."""
        raw = data.encode()
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "a" else os.O_TRUNC)
        fd = os.open(path, flags, 0o644)
        try:
            at = 0
            while at < len(raw):
                size = self.rng.choice(self.pieces)
                at += os.write(fd, raw[at : at + size])
                self.pause()
        finally:
            os.close(fd)

    def done(self) -> None:
        (self.folder / "written.json").write_text(
            json.dumps({"records": self.records, "malformed": self.malformed})
        )


def write_jsonl(job: Job) -> None:
    path = job.folder / "job" / "metrics.jsonl"
    bad_lines = ('{"step": 7, "loss": ', "not json", "[1, 2]", '{"step": -4, "loss": 1.0}')
    lines: list[str] = []
    restart_at = job.rng.randint(20, 100) if job.rng.random() < 0.5 else None
    for n in range(job.rng.randint(60, 120)):
        if n == restart_at:  # the job restarts: its log is written again, whole, then goes on
            job.write(path, "".join(lines), mode="w")
        draw = job.rng.random()
        if draw < 0.06:
            line = job.rng.choice(bad_lines) + "\n"
            job.malformed += 1
        elif draw < 0.08:
            line = "\n"
        else:
            record: Record = {"step": job.next_step(), "loss": job.value()}
            if job.rng.random() < 0.3:
                record["acc"] = job.value()
            if job.rng.random() < 0.3:
                record["time"] = 1_718_000_000 + record["step"]
            job.records.append(record)
            line = json.dumps(record) + "\n"
        lines.append(line)
        job.write(path, line)


def write_lightning_csv(job: Job) -> None:
    path = job.folder / "job" / "lightning_logs" / "version_0" / "metrics.csv"
    path.parent.mkdir(parents=True)
    keys: list[str] = []
    rows: list[Record | str] = []  # a str: a malformed row, kept as it is
    pending: list[Record | str] = []
    new_metric_at = sorted(job.rng.sample(range(5, 80), 3))
    extra = ["val_loss", "lr-Adam", "grad_norm"]
    for n in range(job.rng.randint(50, 100)):
        draw = job.rng.random()
        if draw < 0.04:
            pending.append(",".join(["1"] * 12) + "\r\n")  # more cells than any header
            job.malformed += 1
        elif draw < 0.08:
            pending.append({"step": "oops", "train_loss": job.value()})
            job.malformed += 1
        else:
            record: Record = {"step": job.next_step(), "train_loss": job.value(), "epoch": n // 20}
            for i, at in enumerate(new_metric_at):
                if n >= at and job.rng.random() < 0.5:
                    record[extra[i]] = job.value()
            job.records.append(record)
            pending.append(record)
        if job.rng.random() < 0.3:
            save_csv(job, path, keys, rows, pending)
    save_csv(job, path, keys, rows, pending)


def save_csv(
    job: Job, path: Path, keys: list[str], rows: list[Record | str], pending: list[Record | str]
) -> None:
    """Lightning's `_ExperimentWriter.save`."""
    if not pending:
        return
    new_keys = {k for r in pending if isinstance(r, dict) for k in r} - set(keys)
    keys.extend(new_keys)
    keys.sort()
    if not rows:
        job.write(path, render(keys, pending, header=True), mode="w")
    else:
        if new_keys:  # the header changes: the whole file again, in place
            job.write(path, render(keys, rows, header=True), mode="w")
        job.write(path, render(keys, pending))
    rows.extend(pending)
    pending.clear()


def render(keys: list[str], rows: list[Record | str], *, header: bool = False) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys)
    if header:
        writer.writeheader()
    for row in rows:
        if isinstance(row, str):
            out.write(row)
        else:
            writer.writerow(row)
    return out.getvalue()


def write_trainer_state(job: Job) -> None:
    out = job.folder / "job" / "out"
    out.mkdir(parents=True)
    history: list[Any] = []
    saves = 0
    for n in range(job.rng.randint(30, 70)):
        draw = job.rng.random()
        if draw < 0.04:
            history.append("not an entry")
            job.malformed += 1
        elif draw < 0.08:
            history.append({"loss": job.value(), "epoch": 1.0})  # no step
            job.malformed += 1
        else:
            step = job.next_step()
            entry: Record = {"step": step, "epoch": n / 32, "loss": job.value()}
            if job.rng.random() < 0.5:
                entry.update(grad_norm=job.value(), learning_rate=job.value() / 1024)
            history.append(entry)
            job.records.append(entry)
            if job.rng.random() < 0.2:
                evaluation = {"step": step, "epoch": n / 32, "eval_loss": job.value()}
                history.append(evaluation)
                job.records.append(evaluation)
        if job.rng.random() < 0.25:
            saves += 1
            folder = out / f"checkpoint-{job.step}"
            folder.mkdir(exist_ok=True)
            job.write(folder / "trainer_state.json", trainer_state(job, history), mode="w")
            checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name[11:]))
            for old in checkpoints[:-2]:
                shutil.rmtree(old)
    history.append({"step": job.step, "train_loss": 0.5, "train_runtime": 12.0})
    job.records.append(history[-1])
    job.write(out / "trainer_state.json", trainer_state(job, history), mode="w")


def trainer_state(job: Job, history: list[Any]) -> str:
    state = {"epoch": 1.0, "global_step": job.step, "log_history": history, "max_steps": 300}
    return json.dumps(state, indent=2, sort_keys=True) + "\n"


WRITERS = {
    "jsonl": write_jsonl,
    "lightning_csv": write_lightning_csv,
    "trainer_state": write_trainer_state,
}
# The lengths of the pieces written: rows cut anywhere; whole Trainer documents in fewer pieces.
PIECES = {
    "jsonl": (1, 3, 8, 20, 40, 90, 200, 700, 4000),
    "lightning_csv": (1, 3, 8, 20, 40, 90, 200, 700, 4000),
    "trainer_state": (8, 100, 700, 2000, 5000),
}


def main() -> None:
    fmt, folder, seed = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    (folder / "job").mkdir(parents=True, exist_ok=True)
    job = Job(folder, seed, PIECES[fmt])
    WRITERS[fmt](job)
    job.done()


if __name__ == "__main__":
    main()
