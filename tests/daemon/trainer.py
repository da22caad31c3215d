"""A simulated training job, run as a separate process by the daemon's metric tests.

    python -m tests.daemon.trainer FORMAT FOLDER

It writes metrics the way each framework really does, a little at a time with pauses, and
saves checkpoints along the way; at the end it prints, as JSON, every point it logged
(`{"points": {key: {step: value}}, "checkpoints": {name: step}}`), which is what the run on
the server must hold once the daemon has caught up. Values are exact binary fractions so they
survive JSON and CSV round trips unchanged.

- `jsonl`: LMVP's own `metrics.jsonl`, one object per line, flushed per line, with one
  malformed line and a NaN loss; checkpoints `model_step_<n>.safetensors` saved atomically
  (written under a temporary name, then renamed).
- `hf`: the Hugging Face Trainer: `checkpoint-<n>/` folders (weights, config, optimizer state,
  and `trainer_state.json` whose `log_history` mixes train and eval entries), and the
  top-level `trainer_state.json` with the final summary entry.
- `lightning`: PyTorch Lightning's CSVLogger: `lightning_logs/version_0/metrics.csv`,
  rewritten whole at every flush, with blank cells for metrics not logged on a row and a header
  that grows when validation metrics first appear; checkpoints
  `checkpoints/epoch=<e>-step=<n>.ckpt`.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

PAUSE = 0.01
Points = dict[str, dict[int, float]]


def main() -> None:
    fmt, folder = sys.argv[1], Path(sys.argv[2])
    points: Points = {}
    checkpoints: dict[str, int] = {}
    {"jsonl": jsonl, "hf": hf, "lightning": lightning}[fmt](folder, points, checkpoints)
    print(
        json.dumps(
            {
                "points": {k: {str(s): v for s, v in p.items()} for k, p in points.items()},
                "checkpoints": checkpoints,
            }
        )
    )


def log(points: Points, step: int, values: dict[str, float]) -> None:
    for key, value in values.items():
        points.setdefault(key, {})[step] = value


def write_slowly(path: Path, data: bytes, pieces: int = 4) -> None:
    with path.open("wb") as f:
        for i in range(pieces):
            f.write(data[i * len(data) // pieces : (i + 1) * len(data) // pieces])
            f.flush()
            time.sleep(PAUSE)


def jsonl(folder: Path, points: Points, checkpoints: dict[str, int]) -> None:
    metrics = folder / "metrics.jsonl"
    with metrics.open("a") as f:
        for step in range(1, 61):
            values = {"loss": 8 / (step + 8), "acc": step / 64}
            if step == 30:
                values["loss"] = math.nan
            f.write(json.dumps({"step": step, **values, "time": 1_700_000_000 + step}) + "\n")
            if step == 31:
                f.write('{"step": 31, "loss": \n')  # a torn write: skipped and counted
            f.flush()
            log(points, step, values)
            if step % 20 == 0:
                name = f"model_step_{step}.safetensors"
                tmp = folder / f".{name}.tmp"
                write_slowly(tmp, os.urandom(50_000))
                tmp.rename(folder / name)
                checkpoints[name] = step
            time.sleep(PAUSE)


def hf(folder: Path, points: Points, checkpoints: dict[str, int]) -> None:
    history: list[dict[str, Any]] = []
    steps_per_epoch = 50
    for step in range(1, 151):
        epoch = step / steps_per_epoch
        if step % 10 == 0:
            entry = {
                "loss": 4 - step / 64,
                "grad_norm": 2 + step / 128,
                "learning_rate": 5e-05 * (1 - step / 256),
                "epoch": epoch,
                "step": step,
            }
            history.append(entry)
            log(points, step, {k: v for k, v in entry.items() if k != "step"})
        if step % 50 == 0:
            entry = {
                "eval_loss": 3 - step / 128,
                "eval_runtime": 1.5,
                "eval_samples_per_second": 128.0,
                "eval_steps_per_second": 16.0,
                "epoch": epoch,
                "step": step,
            }
            history.append(entry)
            log(points, step, {k: v for k, v in entry.items() if k != "step"})
            save_hf_checkpoint(folder / f"checkpoint-{step}", history, step, epoch)
            checkpoints[f"checkpoint-{step}"] = step
        time.sleep(PAUSE / 4)
    final = {
        "train_runtime": 12.5,
        "train_samples_per_second": 96.0,
        "train_steps_per_second": 12.0,
        "total_flos": 1048576.0,
        "train_loss": 2.5,
        "epoch": 3.0,
        "step": 150,
    }
    history.append(final)
    log(points, 150, {k: v for k, v in final.items() if k != "step"})
    (folder / "trainer_state.json").write_text(json.dumps(trainer_state(history, 150, 3.0)))


def trainer_state(history: list[dict[str, Any]], step: int, epoch: float) -> dict[str, Any]:
    return {
        "best_metric": None,
        "best_model_checkpoint": None,
        "epoch": epoch,
        "eval_steps": 50,
        "global_step": step,
        "is_hyper_param_search": False,
        "is_local_process_zero": True,
        "is_world_process_zero": True,
        "log_history": list(history),
        "logging_steps": 10,
        "max_steps": 150,
        "num_train_epochs": 3,
        "save_steps": 50,
        "total_flos": 1048576.0,
        "train_batch_size": 8,
    }


def save_hf_checkpoint(path: Path, history: list[dict[str, Any]], step: int, epoch: float) -> None:
    path.mkdir()
    write_slowly(path / "model.safetensors", os.urandom(60_000))
    (path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 64}))
    write_slowly(path / "optimizer.pt", os.urandom(20_000))
    (path / "scheduler.pt").write_bytes(os.urandom(1000))
    (path / "rng_state.pth").write_bytes(os.urandom(1000))
    (path / "trainer_state.json").write_text(json.dumps(trainer_state(history, step, epoch)))
    (path / "training_args.bin").write_bytes(os.urandom(500))


def lightning(folder: Path, points: Points, checkpoints: dict[str, int]) -> None:
    logs = folder / "lightning_logs" / "version_0"
    (logs / "checkpoints").mkdir(parents=True)
    (logs / "hparams.yaml").write_text("lr: 0.001\n")
    rows: list[dict[str, Any]] = []
    columns = ["epoch", "step", "train_loss"]
    steps_per_epoch = 50
    for step in range(1, 151):
        epoch = (step - 1) // steps_per_epoch
        if step % 10 == 0:
            loss = 3 - step / 64
            rows.append({"epoch": epoch, "step": step, "train_loss": loss})
            log(points, step, {"epoch": epoch, "train_loss": loss})
        if step % 50 == 0:
            values = {"val_loss": 2 - step / 128, "val_acc": step / 256}
            rows.append({"epoch": epoch, "step": step, **values})
            log(points, step, {"epoch": epoch, **values})
            for key in values:
                if key not in columns:
                    columns.append(key)
            flush_csv(logs / "metrics.csv", columns, rows)
            name = f"epoch={epoch}-step={step}.ckpt"
            write_slowly(logs / "checkpoints" / name, os.urandom(40_000))
            checkpoints[f"lightning_logs/version_0/checkpoints/{name}"] = step
        elif step % 20 == 0:
            flush_csv(logs / "metrics.csv", columns, rows)
        time.sleep(PAUSE / 4)
    flush_csv(logs / "metrics.csv", columns, rows)


def flush_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    """As Lightning's CSVLogger saves: the whole file again, every row, blank where a metric
    was not logged on that row."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
