"""A simulated training job for the alert and run-end tests, run as a separate process:

    python -m tests.daemon.alert_job SCENARIO FOLDER [--every SECONDS]

It writes `metrics.jsonl` (one flushed line per step) and safetensors-like checkpoints
`model_step_<n>.safetensors` (written under a temporary name, then renamed), as a real job does,
and prints one JSON line per moment a test times from: `{"event": NAME, "at": unix time}`.

- `nan`: a checkpoint every `--every` seconds (4 of them) with a finite loss, then a NaN loss
  (`nan`), one more step, and the job falls silent (exits; `silent_from` is the last
  checkpoint's time, from which silence is detectable at twice the interval).
- `diverge`: 30 steps of a loss near 1, then a jump to 10 and more steps up there (`jump`);
  `val_loss` stays near 1, `accuracy` jumps too (not a loss: no alert).
- `steady`: a few steps and two checkpoints (`done`), then `--linger` seconds alive and silent
  (a hung job) before it exits; it opens `metrics.jsonl` for each line and closes it again.
- `hold`: the same, keeping `metrics.jsonl` open, then `--hold` seconds later exits (`exit`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any


def say(event: str, **extra: Any) -> None:
    print(json.dumps({"event": event, "at": time.time(), **extra}), flush=True)


def checkpoint(folder: Path, step: int) -> float:
    """Save a small checkpoint atomically; returns its modification time."""
    path = folder / f"model_step_{step}.safetensors"
    tmp = folder / f".{path.name}.tmp"
    header = b'{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}'
    header += b" " * (-len(header) % 8)
    with tmp.open("wb") as f:
        f.write(len(header).to_bytes(8, "little") + header + step.to_bytes(16, "little"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path.stat().st_mtime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["nan", "diverge", "steady", "hold"])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--every", type=float, default=1.0)
    parser.add_argument("--start", type=int, default=1)
    parser.add_argument("--hold", type=float, default=0.0)
    parser.add_argument("--linger", type=float, default=0.0)
    args = parser.parse_args()
    folder: Path = args.folder
    folder.mkdir(parents=True, exist_ok=True)
    if args.scenario == "steady":
        for step in range(args.start, args.start + 10):
            with (folder / "metrics.jsonl").open("a") as one:
                one.write(json.dumps({"step": step, "loss": 1.0 / step}) + "\n")
            if step % 5 == 0:
                checkpoint(folder, step)
        say("done", step=args.start + 9)
        time.sleep(args.linger)
        return
    with (folder / "metrics.jsonl").open("a") as out:

        def log(step: int, **values: float) -> None:
            # json.dumps writes NaN as NaN, which LMVP's reader takes (as Python's json does).
            out.write(json.dumps({"step": step, **values}) + "\n")
            out.flush()

        if args.scenario == "nan":
            step = 0
            for n in range(4):
                for _ in range(5):
                    step += 1
                    log(step, loss=1.0 - step / 100, accuracy=step / 100)
                mtime = checkpoint(folder, step)
                say("checkpoint", step=step, mtime=mtime)
                if n < 3:
                    time.sleep(args.every)
            time.sleep(args.every / 2)
            step += 1
            log(step, loss=math.nan, accuracy=0.5)
            say("nan", step=step)
            step += 1
            log(step, loss=math.nan, accuracy=0.5)
            say("silent_from", at_mtime=mtime)
        elif args.scenario == "diverge":
            for step in range(1, 31):
                log(step, loss=1.0 + (step % 3) / 100, val_loss=1.0, accuracy=0.5)
                time.sleep(0.01)
            say("jump", step=31)
            for step in range(31, 41):
                log(step, loss=10.0 + step / 100, val_loss=1.0, accuracy=5.0)
                time.sleep(0.01)
        else:
            for step in range(args.start, args.start + 10):
                log(step, loss=1.0 / step)
                if step % 5 == 0:
                    checkpoint(folder, step)
            time.sleep(args.hold)
            say("exit", step=args.start + 9)


if __name__ == "__main__":
    main()
