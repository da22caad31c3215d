"""The per-tensor compare of issue 17 on two 1 GiB checkpoints: how long
`lmvp.Client.compare_tensors` takes (the server's whole answer) when 10% of the tensors changed,
for files sent whole and for files sent as chunks. The issue asks for under 5 s on this machine.

The model is BF16: 96 tensors of 8 MiB and 16 of 16 MiB (cut into two chunks each), 1 GiB in
all; the second checkpoint changes 12 of them (every value scaled by about 1%). Everything (the
files, the server's data dir) lives in a temporary folder, by default under /dev/shm.

    .venv/bin/python bench/tensor_compare.py [--dir /dev/shm] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _server import bench_server, median

import lmvp

MiB = 1 << 20
SIZES = [8 * MiB] * 96 + [16 * MiB] * 16
CHANGED = set(range(0, len(SIZES), 10))  # 12 of 112: about 10%


def write_checkpoint(path: Path, changed: set[int]) -> None:
    """The model, with the tensors numbered in `changed` fine-tuned."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for i, size in enumerate(SIZES):
        header[f"layers.{i:03d}.weight"] = {
            "dtype": "BF16",
            "shape": [size // 2 // 1024, 1024],
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for i, size in enumerate(SIZES):
            rng = np.random.default_rng(i)
            # Finite BF16 values of both signs between about 0.008 and 1.
            bits = rng.integers(0x3C00, 0x3F80, size // 2, dtype=np.uint16)
            bits |= rng.integers(0, 2, size // 2, dtype=np.uint16) << 15
            if i in changed:
                values = (bits.astype(np.uint32) << 16).view(np.float32) * np.float32(1.01)
                bits = (values.view(np.uint32) >> 16).astype(np.uint16)
            f.write(bits.tobytes())


def run(base: Path, rounds: int) -> dict[str, Any]:
    files = base / "files"
    (files / "a").mkdir(parents=True)
    (files / "b").mkdir(parents=True)
    write_checkpoint(files / "a" / "model.safetensors", set())
    write_checkpoint(files / "b" / "model.safetensors", CHANGED)
    out: dict[str, Any] = {"file_bytes": sum(SIZES), "tensors": len(SIZES)}
    with bench_server(base / "server") as server:
        for mode, chunks in (("whole", "0"), ("chunked", "1")):
            os.environ["LMVP_CHUNKS"] = chunks
            with lmvp.Client(server.url, server.token, cache_dir=base / "cache") as client:
                model = f"bench/{mode}"
                if mode == "whole":
                    client.create_project("bench")
                client.create_model(model)
                va = client.update(model, files / "a" / "model.safetensors")
                vb = client.update(model, files / "b" / "model.safetensors")
                times = []
                result = None
                for _ in range(rounds):
                    started = time.perf_counter()
                    result = client.compare_tensors("bench", mode, va.number, vb.number)
                    times.append(time.perf_counter() - started)
                assert result is not None
                changes = [t.change for t in result.files[0].tensors]
                assert changes.count("changed") == len(CHANGED), changes
                assert changes.count("unchanged") == len(SIZES) - len(CHANGED), changes
                relative = [t.relative_change for t in result.files[0].tensors[: len(CHANGED)]]
                assert all(r is not None and 0.005 < r < 0.015 for r in relative), relative
                out[mode] = {"seconds": [round(t, 3) for t in times], "median": median(times)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/dev/shm"))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="lmvp-tensor-compare-", dir=args.dir))
    try:
        result = run(base, args.rounds)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
