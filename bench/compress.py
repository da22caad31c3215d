"""Lossless compression of checkpoint chunks: LMVP's codec against plain zstd and ZipNN.

Issue 17 asks that successive checkpoints in which every tensor changed cross the wire at
<= 0.75x of the file in BF16 (<= 0.9x in FP32) and random bytes at <= 1.01x: with no chunk shared,
only compression gets there. This measures, on 8 MiB chunks (the chunker's piece size) of:

- trained-looking weights, normal(0, 0.02), in BF16, F16 and F32;
- fine-tune deltas (a task vector: the F32 difference of two successive checkpoints, the step
  normal(0, 1e-4), and the same in BF16);
- random bytes (an already compressed or encrypted file);

each method's ratio (bytes out / bytes in) and compress and decompress MB/s, per second of wall
time and of CPU time (best of --repeat runs; every round trip is checked bit for bit):

- ``zstd-N``: zstd level N over the chunk as it is;
- ``lmvp-N``: `lmvp.chunk_codec.encode(chunk, dtype, level=N)` (byte-grouped floats + zstd);
- ``lmvp-auto``: the same without the dtype (the codec probes the grouping on a sample);
- ``zipnn`` (threads=1, and its default of one thread per core): ZipNN's byte API, given the
  dtype. ZipNN imports torch when it is imported, and torch's wheel brings about 3 GB of CUDA
  libraries, so ZipNN is measured in a separate virtualenv (--zipnn-python, made with
  ``python -m venv V && V/bin/pip install numpy zstandard && V/bin/pip install --no-deps zipnn``)
  where a stand-in `torch` module takes torch's place: ZipNN's byte path never calls torch
  (its C extension does the work), which the bit-exact round trips confirm.

Usage: python bench/compress.py [--mib 64] [--repeat 3] [--zipnn-python PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

MiB = 1 << 20
CHUNK = 8 * MiB

# name -> (dtype as safetensors names it, dtype as ZipNN names it)
DATASETS = {
    "BF16 weights": ("BF16", "bfloat16"),
    "F16 weights": ("F16", "float16"),
    "F32 weights": ("F32", "float32"),
    "BF16 fine-tune delta": ("BF16", "bfloat16"),
    "F32 fine-tune delta": ("F32", "float32"),
    "random bytes": (None, "float32"),
}

TARGETS = {"BF16 weights": 0.75, "F32 weights": 0.9, "random bytes": 1.01}


def make_dataset(name: str, size: int) -> bytes:
    """`size` bytes of the named kind, the same on every run."""
    rng = np.random.default_rng(17)
    if name == "random bytes":
        return rng.bytes(size)
    width = 4 if name.startswith("F32") else 2
    count = size // width
    weights = rng.normal(0.0, 0.02, count).astype(np.float32)
    if "delta" in name:
        tuned = weights + rng.normal(0.0, 1e-4, count).astype(np.float32)
        weights = tuned - weights
    if name.startswith("BF16"):  # bf16 is the top half of a float32 (truncated)
        return (weights.view(np.uint32) >> 16).astype("<u2").tobytes()
    if name.startswith("F16"):
        return weights.astype("<f2").tobytes()
    return weights.astype("<f4").tobytes()


def chunks(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), CHUNK):
        yield data[start : start + CHUNK]


def measure(
    data: bytes,
    compress: Callable[[bytes], bytes],
    decompress: Callable[[bytes], bytes],
    repeat: int,
    *,
    copy_input: bool = False,
) -> dict[str, float]:
    """Best-of-`repeat` compress and decompress speeds over all chunks, checked bit for bit.

    Speeds are MB of input per second of wall time and per second of this process's CPU time:
    on a machine shared with other work the CPU figure is the steadier one. `copy_input` hands
    the compressor a fresh copy of each chunk (made outside the timing), for ZipNN, which
    (0.5.4) rewrites its input in place, even an immutable bytes object.
    """
    best = {"compress": float("inf"), "compress_cpu": float("inf")}
    best |= {"decompress": float("inf"), "decompress_cpu": float("inf")}
    out = 0
    for _ in range(repeat):
        frames = []
        wall = cpu = 0.0
        for chunk in chunks(data):
            given = bytearray(chunk) if copy_input else chunk
            start, start_cpu = time.perf_counter(), time.process_time()
            frames.append(bytes(compress(given)))
            wall += time.perf_counter() - start
            cpu += time.process_time() - start_cpu
        best["compress"] = min(best["compress"], wall)
        best["compress_cpu"] = min(best["compress_cpu"], cpu)
        out = sum(len(f) for f in frames)
        wall = cpu = 0.0
        for chunk, frame in zip(chunks(data), frames, strict=True):
            start, start_cpu = time.perf_counter(), time.process_time()
            back = decompress(frame)
            wall += time.perf_counter() - start
            cpu += time.process_time() - start_cpu
            if bytes(back) != chunk:
                raise SystemExit("a round trip lost bytes: the codec is broken")
        best["decompress"] = min(best["decompress"], wall)
        best["decompress_cpu"] = min(best["decompress_cpu"], cpu)
    speeds = {key: len(data) / max(seconds, 1e-9) / 1e6 for key, seconds in best.items()}
    return {"ratio": out / len(data), **speeds}


def measure_lmvp(name: str, data: bytes, repeat: int) -> dict[str, dict[str, float]]:
    import zstandard

    from lmvp import chunk_codec

    dtype = DATASETS[name][0]
    results = {}
    for level in (1, 3):
        compressor = zstandard.ZstdCompressor(level=level)
        decompressor = zstandard.ZstdDecompressor()
        results[f"zstd-{level}"] = measure(
            data, compressor.compress, decompressor.decompress, repeat
        )
    for level in (1, 3, 6):
        results[f"lmvp-{level}"] = measure(
            data,
            lambda chunk, level=level: chunk_codec.encode(chunk, dtype, level=level),  # type: ignore[misc]
            chunk_codec.decode,
            repeat,
        )
    results["lmvp-auto"] = measure(
        data, lambda chunk: chunk_codec.encode(chunk, None), chunk_codec.decode, repeat
    )
    return results


def import_zipnn() -> Any:
    """Import ZipNN, with a stand-in for torch when torch is not installed (see above)."""
    try:
        import torch  # noqa: F401
    except ImportError:

        class Anything:
            def __getattr__(self, name: str) -> Anything:
                return Anything()

            def __call__(self, *args: Any, **kwargs: Any) -> Any:
                # `@torch.jit.script` must hand the function back.
                return args[0] if len(args) == 1 and callable(args[0]) else Anything()

        torch_module = types.ModuleType("torch")
        torch_module.__getattr__ = lambda name: Anything()  # type: ignore[method-assign]
        safetensors_torch = types.ModuleType("safetensors.torch")
        safetensors_torch.safe_open = None  # type: ignore[attr-defined]
        sys.modules.setdefault("torch", torch_module)
        sys.modules.setdefault("safetensors", types.ModuleType("safetensors"))
        sys.modules.setdefault("safetensors.torch", safetensors_torch)
    import zipnn  # type: ignore[import-not-found]

    return zipnn


def measure_zipnn(name: str, data: bytes, repeat: int) -> dict[str, dict[str, float]]:
    zipnn = import_zipnn()
    dtype = DATASETS[name][1]
    results = {}
    for threads, label in ((1, "zipnn-1thread"), (None, f"zipnn-{os.cpu_count()}threads")):
        codec = zipnn.ZipNN(input_format="byte", bytearray_dtype=dtype, threads=threads)
        results[label] = measure(data, codec.compress, codec.decompress, repeat, copy_input=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=64, help="MiB of each kind of data")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--zipnn-python", help="a Python with zipnn installed (default: this one, if it has it)"
    )
    parser.add_argument("--zipnn-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = args.mib * MiB

    if args.zipnn_only:  # the child in ZipNN's virtualenv: print its figures as JSON
        out = {
            name: measure_zipnn(name, make_dataset(name, size), args.repeat) for name in DATASETS
        }
        json.dump(out, sys.stdout)
        return

    zipnn_results: dict[str, dict[str, dict[str, float]]] = {}
    zipnn_note = ""
    if args.zipnn_python:
        child = subprocess.run(
            [
                args.zipnn_python,
                __file__,
                "--zipnn-only",
                f"--mib={args.mib}",
                f"--repeat={args.repeat}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if child.returncode == 0:
            zipnn_results = json.loads(child.stdout)
        else:
            zipnn_note = f"zipnn failed: {child.stderr.strip().splitlines()[-1:]}"
    else:
        try:
            import_zipnn()
        except ImportError:
            zipnn_note = "zipnn not measured: not installed here (see --zipnn-python)"
        else:
            zipnn_results = {
                name: measure_zipnn(name, make_dataset(name, size), args.repeat)
                for name in DATASETS
            }

    print(
        f"{args.mib} MiB of each kind, in {CHUNK // MiB} MiB chunks; MB of input per second of "
        f"wall and of CPU time, best of {args.repeat}; load average {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} cores"
    )
    print(
        f"{'data':22} {'method':15} {'ratio':>6} {'compress':>9} {'(cpu)':>7} "
        f"{'decompress':>11} {'(cpu)':>7}  target"
    )
    verdicts = []
    for name in DATASETS:
        data = make_dataset(name, size)
        results = measure_lmvp(name, data, args.repeat)
        results.update(zipnn_results.get(name, {}))
        for method, figures in results.items():
            target = TARGETS.get(name)
            mark = ""
            if target is not None and method.startswith("lmvp-1"):
                ok = figures["ratio"] <= target
                mark = f"<= {target}: {'yes' if ok else 'NO'}"
                verdicts.append(f"{name}: lmvp-1 {figures['ratio']:.3f} {mark}")
            print(
                f"{name:22} {method:15} {figures['ratio']:6.3f} {figures['compress']:9.0f} "
                f"{figures['compress_cpu']:7.0f} {figures['decompress']:11.0f} "
                f"{figures['decompress_cpu']:7.0f}  {mark}"
            )
        print()
    if zipnn_note:
        print(zipnn_note)
    for verdict in verdicts:
        print(verdict)


if __name__ == "__main__":
    main()
