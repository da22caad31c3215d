"""safetensors files for the per-tensor compare tests, written by hand (8-byte header length,
JSON header, bytes) so that any dtype (BF16 too, which numpy lacks) and any lie in a header
can be written; and the relative change ||a - b|| / ||a|| the tests expect, from numpy."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# numpy's reading of each dtype's bytes (BF16: the bits, widened by `values`).
NUMPY = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "BF16": "<u2", "I64": "<i8", "U8": "u1"}


@dataclass(frozen=True)
class T:
    """A tensor to write: its dtype, shape and raw bytes."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes


def tensor(dtype: str, values: np.ndarray[Any, Any]) -> T:
    """`values` (float64 for floats) stored as `dtype`; BF16 by truncating float32 bits."""
    if dtype == "BF16":
        bits = values.astype(np.float32).view(np.uint32) >> 16
        return T(dtype, tuple(values.shape), bits.astype("<u2").tobytes())
    return T(dtype, tuple(values.shape), values.astype(NUMPY[dtype]).tobytes())


def values(t: T) -> np.ndarray[Any, Any]:
    """A tensor's values as float64, as a reader of the file sees them."""
    raw = np.frombuffer(t.data, dtype=NUMPY[t.dtype]).reshape(t.shape)
    if t.dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return raw.astype(np.float64)


def relative_change(a: T, b: T) -> float:
    va, vb = values(a), values(b)
    norm = float(np.linalg.norm(va))
    diff = float(np.linalg.norm(va - vb))
    return diff / norm if norm else (math.inf if diff else 0.0)


def safetensors_bytes(tensors: dict[str, T], *, metadata: dict[str, str] | None = None) -> bytes:
    header: dict[str, Any] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, t in tensors.items():
        header[name] = {
            "dtype": t.dtype,
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(t.data)],
        }
        offset += len(t.data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(t.data for t in tensors.values())


def write_safetensors(path: Path, tensors: dict[str, T]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(safetensors_bytes(tensors))
    return path


def with_header(header: Any, data: bytes) -> bytes:
    """A file with this (possibly lying) header before `data`."""
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def fine_tune(seed: int = 1) -> tuple[dict[str, T], dict[str, T]]:
    """Two checkpoints of a small model: in the second, three tensors changed (F32, BF16,
    F16), one all-zero tensor became non-zero, an I64 one changed, `head.weight` was reshaped,
    `old.bias` removed and `new.bias` added; the rest are the same bytes."""
    rng = np.random.default_rng(seed)

    def normal(*shape: int) -> np.ndarray[Any, Any]:
        return rng.normal(0, 0.02, size=shape)

    a = {
        "embed.weight": tensor("F32", normal(256, 64)),
        "layers.0.weight": tensor("F32", normal(64, 64)),
        "layers.1.weight": tensor("BF16", normal(64, 64)),
        "layers.2.weight": tensor("F16", normal(64, 64)),
        "layers.3.weight": tensor("F32", normal(64, 64)),
        "scale": tensor("F32", np.zeros(16)),
        "steps": tensor("I64", np.arange(8)),
        "head.weight": tensor("F32", normal(10, 64)),
        "old.bias": tensor("F32", normal(10)),
    }
    b = dict(a)
    b["layers.0.weight"] = tensor("F32", values(a["layers.0.weight"]) + normal(64, 64) * 0.1)
    b["layers.1.weight"] = tensor("BF16", values(a["layers.1.weight"]) * 1.5)
    b["layers.2.weight"] = tensor("F16", values(a["layers.2.weight"]) + normal(64, 64))
    b["scale"] = tensor("F32", np.ones(16))
    b["steps"] = tensor("I64", np.arange(8) + 100)
    b["head.weight"] = tensor("F32", normal(12, 64))
    del b["old.bias"]
    b["new.bias"] = tensor("F32", normal(12))
    return a, b


# What `fine_tune` changed, as the comparison names it (tensor -> change).
FINE_TUNE_CHANGES = {
    "layers.0.weight": "changed",
    "layers.1.weight": "changed",
    "layers.2.weight": "changed",
    "scale": "changed",
    "steps": "changed",
    "head.weight": "reshaped",
    "new.bias": "added",
    "old.bias": "removed",
    "embed.weight": "unchanged",
    "layers.3.weight": "unchanged",
}
