"""A small simulated training job for the demo (`make run`): run as a separate process, it
writes what a real job writes into its output folder, which the desktop app's daemon watches.

    python -m lmvp_desktop.demo_job FOLDER [--steps 3000] [--every 0.5]

Every `--every` seconds it trains 10 "steps": it appends their loss, accuracy and learning rate
to `metrics.jsonl`; every 100 steps it saves a checkpoint `model_step_<n>.safetensors` (a real
safetensors file of a few MB, written under a temporary name and renamed, as
`safetensors.torch.save_file` users do). Nothing in it knows about LMVP: that is the point.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import struct
import time
from pathlib import Path

STEPS = 3000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--every", type=float, default=0.5)
    parser.add_argument("--checkpoint-every", type=int, default=100)
    args = parser.parse_args(argv)
    args.folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)  # noqa: S311 - made-up training noise, not a secret
    metrics = args.folder / "metrics.jsonl"
    start = last_step(args.folder)  # a restarted demo goes on where it stopped
    with metrics.open("a") as out:
        for step in range(start + 1, args.steps + 1):
            progress = step / args.steps
            loss = 2.3 * math.exp(-4 * progress) + 0.05 + rng.gauss(0, 0.04)
            accuracy = min(0.99, 0.1 + 0.88 * (1 - math.exp(-5 * progress)) + rng.gauss(0, 0.01))
            lr = 3e-4 * 0.5 * (1 + math.cos(math.pi * progress))
            record = {"step": step, "loss": loss, "accuracy": accuracy, "lr": lr}
            out.write(json.dumps({**record, "time": time.time()}) + "\n")
            out.flush()
            if step % args.checkpoint_every == 0:
                save_checkpoint(args.folder / f"model_step_{step}.safetensors", rng)
            if step % 10 == 0:
                time.sleep(args.every)
    return 0


def last_step(folder: Path) -> int:
    """The last step the job in `folder` trained (0: none yet); `STEPS` once it finished."""
    try:
        lines = (folder / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    for line in reversed(lines):  # the last whole record (a killed job may leave half a line)
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0


def save_checkpoint(path: Path, rng: random.Random, floats: int = 500_000) -> None:
    """A valid safetensors file with one float32 tensor, saved atomically."""
    header = json.dumps(
        {"weight": {"dtype": "F32", "shape": [floats], "data_offsets": [0, 4 * floats]}}
    ).encode()
    header += b" " * (-len(header) % 8)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.write(rng.randbytes(4 * floats))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


if __name__ == "__main__":
    raise SystemExit(main())
