"""Two versions of a model compared tensor by tensor (issue 17): for every safetensors file of
either version (recognised by its bytes, not its name; files matched by role as
`services.compare` matches them), which tensors were added, removed, reshaped (dtype or shape
differ), unchanged, or changed, and for a changed one its relative change ‖a-b‖/‖a‖.

Only what is needed is read. A file's header comes from a ranged read of its blob (8 bytes of
length, then the JSON), and is checked before anything in it is believed: a header too long,
not JSON, naming a dtype we do not know, or with byte ranges that leave the file, overlap or do
not fit the tensor's dtype and shape makes the file "not safetensors" (listed in `skipped`),
never an error. A tensor is unchanged without reading a byte when both files are the same blob,
or when both blobs are chunked and the tensor's chunks (which cover exactly its byte range, the
client cuts them so: lmvp/chunking.py) have the same hashes; otherwise its bytes are compared a
block at a time, and only a tensor whose bytes differ has its values read (numpy, in float64:
BF16 as its bits shifted into a float32; F16, F32, F64, C64 and the integer types as
themselves; FP8/FP6/FP4 tensors are compared by bytes only, with no relative change).

Plain functions over a session and the blob store; the route is in
lmvp_server/routers/versions.py and the console's compare page in lmvp_server/web/pages.py.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from lmvp_server.blob_download import DamagedChunk, read_chunked
from lmvp_server.errors import APIError
from lmvp_server.models import Blob, BlobChunk, Version
from lmvp_server.services.blobs import blob_not_found
from lmvp_server.services.chunks import ChunkSpan
from lmvp_server.services.compare import match_files
from lmvp_server.storage import BlobMissing, BlobStore

# safetensors refuses headers over 100 MB; so do we.
MAX_HEADER = 100_000_000
# More tensors than any real shard holds (a file of a 671B MoE model has a few thousand): a
# header naming more is not compared per tensor (each costs reads and a row of the answer).
MAX_TENSORS = 200_000
# Bytes of both tensors compared (and their values read) a block at a time.
BLOCK = 8 << 20
# Blobs read at once (each tensor pair reads its two blobs in turn).
_READERS = 2

# The safetensors dtypes: bits per element, and the numpy type their values are read as (None:
# no numpy type; compared by bytes only). BF16 is read as uint16 and widened by hand.
_DTYPES: dict[str, tuple[int, str | None]] = {
    "BOOL": (8, "u1"),
    "U8": (8, "u1"),
    "I8": (8, "i1"),
    "F8_E5M2": (8, None),
    "F8_E4M3": (8, None),
    "F8_E8M0": (8, None),
    "I16": (16, "<i2"),
    "U16": (16, "<u2"),
    "F16": (16, "<f2"),
    "BF16": (16, "<u2"),
    "I32": (32, "<i4"),
    "U32": (32, "<u4"),
    "F32": (32, "<f4"),
    "I64": (64, "<i8"),
    "U64": (64, "<u8"),
    "F64": (64, "<f8"),
    "C64": (64, "<c8"),
    "F4": (4, None),
    "F6_E2M3": (6, None),
    "F6_E3M2": (6, None),
}

# How tensors are ordered in a file's list.
_ORDER = {"changed": 0, "reshaped": 1, "added": 2, "removed": 3, "unchanged": 4}


@dataclass(frozen=True)
class TensorChange:
    """One tensor name in either file: `change` is added, removed, changed, unchanged or
    reshaped (dtype or shape differ); `relative_change` is ‖a-b‖/‖a‖ for a changed tensor whose
    values numpy reads (infinite when ‖a‖ is 0), None otherwise."""

    name: str
    change: str
    a_dtype: str | None
    b_dtype: str | None
    a_shape: tuple[int, ...] | None
    b_shape: tuple[int, ...] | None
    relative_change: float | None = None


@dataclass(frozen=True)
class FileTensors:
    """A safetensors file of version a and the file of version b it matches (either may be
    None: added or removed), and their tensors in the order of `ordered`."""

    a_path: str | None
    b_path: str | None
    tensors: list[TensorChange]


@dataclass(frozen=True)
class TensorComparison:
    a: int
    b: int
    files: list[FileTensors]
    # Paths of files not compared per tensor: not safetensors, or matched to one that is not.
    skipped: list[str]


@dataclass(frozen=True)
class _Tensor:
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute offsets in the file
    end: int


class NotSafetensors(Exception):
    """The blob's bytes are not a safetensors file we can believe."""


@dataclass
class _Source:
    """One blob to read from: stored whole, or as chunks (`spans`, in order)."""

    store: BlobStore
    project: str
    sha256: str
    size: int
    spans: list[ChunkSpan] | None

    def read(self, start: int, end: int) -> Iterator[bytes]:
        """Bytes `start` to `end`; raises APIError as a download would for lost bytes."""
        if start >= end:
            return
        try:
            if self.spans is None:
                yield from self.store.read_range(self.sha256, start, end, chunk_size=BLOCK)
            else:
                yield from read_chunked(self.store, self.sha256, self.spans, start, end)
        except BlobMissing:
            raise blob_not_found(self.sha256, self.project) from None
        except DamagedChunk as damaged:
            raise APIError(
                500,
                "chunk_damaged",
                f"{damaged}: the server cannot compare this file; its operator must restore the "
                "chunk (or send the file again to this project)",
                details={"chunk": damaged.chunk},
            ) from None

    def read_all(self, start: int, end: int) -> bytes:
        data = b"".join(self.read(start, end))
        if len(data) != end - start:
            raise NotSafetensors("the blob ends early")
        return data

    def chunks_of(self, start: int, end: int) -> list[str] | None:
        """The hashes of the chunks that cover exactly bytes `start` to `end`, or None when the
        blob is not chunked or no run of its chunks starts and ends there."""
        if self.spans is None:
            return None
        out: list[str] = []
        for span in self.spans:  # a few hundred per GiB
            if span.offset + span.size <= start:
                continue
            if span.offset >= end:
                break
            if not out and span.offset != start:
                return None
            out.append(span.sha256)
            if span.offset + span.size > end:
                return None
        return out if out else None


def compare_tensors(
    session: Session, store: BlobStore, project: str, a: Version, b: Version
) -> TensorComparison:
    """How the tensors of version `b` differ from those of `a` (both of `project`, files
    loaded). Raises APIError 404 for a blob the store has lost, 500 for a damaged chunk."""
    rows = match_files(
        {f.path: (f.sha256, f.size) for f in a.files},
        {f.path: (f.sha256, f.size) for f in b.files},
    )
    hashes = {f.sha256 for f in a.files} | {f.sha256 for f in b.files}
    sources = _sources(session, store, project, hashes)
    headers: dict[str, dict[str, _Tensor] | None] = {}

    def header(path: str | None, sizes: dict[str, tuple[str, int]]) -> dict[str, _Tensor] | None:
        sha = sizes[path][0] if path is not None else None
        if sha is None:
            return None
        if sha not in headers:
            try:
                headers[sha] = parse_header(sources[sha])
            except NotSafetensors:
                headers[sha] = None
        return headers[sha]

    files_a = {f.path: (f.sha256, f.size) for f in a.files}
    files_b = {f.path: (f.sha256, f.size) for f in b.files}
    files: list[FileTensors] = []
    skipped: list[str] = []
    with ThreadPoolExecutor(_READERS) as pool:
        for row in rows:
            ha = header(row.a_path, files_a)
            hb = header(row.b_path, files_b)
            present = [p for p in (row.a_path, row.b_path) if p is not None]
            if (row.a_path is not None and ha is None) or (row.b_path is not None and hb is None):
                skipped += [p for p in dict.fromkeys(present) if p not in skipped]
                continue
            src_a = sources[files_a[row.a_path][0]] if row.a_path is not None else None
            src_b = sources[files_b[row.b_path][0]] if row.b_path is not None else None
            tensors = _compare_file(ha or {}, hb or {}, src_a, src_b, pool)
            files.append(FileTensors(row.a_path, row.b_path, tensors))
    return TensorComparison(a.number, b.number, files, skipped)


def _sources(
    session: Session, store: BlobStore, project: str, hashes: set[str]
) -> dict[str, _Source]:
    blobs = session.execute(
        select(Blob.sha256, Blob.size, Blob.chunked).where(Blob.sha256.in_(sorted(hashes)))
    ).all()
    sources = {
        sha: _Source(store, project, sha, size, [] if chunked else None)
        for sha, size, chunked in blobs
    }
    chunked = sorted(sha for sha, s in sources.items() if s.spans is not None)
    if chunked:
        for sha, chunk, size, offset in session.execute(
            select(BlobChunk.blob_sha256, BlobChunk.chunk_sha256, BlobChunk.size, BlobChunk.offset)
            .where(BlobChunk.blob_sha256.in_(chunked))
            .order_by(BlobChunk.blob_sha256, BlobChunk.position)
        ):
            spans = sources[sha].spans
            assert spans is not None
            spans.append(ChunkSpan(chunk, size, offset))
    for sha in hashes - sources.keys():
        raise blob_not_found(sha, project)
    return sources


def parse_header(source: _Source) -> dict[str, _Tensor]:
    """The tensors a safetensors file's header names, by name, with absolute byte ranges.
    Raises NotSafetensors for anything else, or a header that cannot be believed."""
    if source.size < 10:
        raise NotSafetensors("too short")
    head = source.read_all(0, 9)
    (length,) = struct.unpack_from("<Q", head)
    if head[8:9] != b"{" or length > MAX_HEADER or 8 + length > source.size:
        raise NotSafetensors("no header")
    try:
        parsed = json.loads(source.read_all(8, 8 + length))
    except (ValueError, RecursionError):
        raise NotSafetensors("the header is not JSON") from None
    if not isinstance(parsed, dict):
        raise NotSafetensors("the header is not an object")
    if len(parsed) > MAX_TENSORS + 1:
        raise NotSafetensors("too many tensors")
    data_start = 8 + length
    data_len = source.size - data_start
    tensors: dict[str, _Tensor] = {}
    for name, entry in parsed.items():
        if name == "__metadata__":
            continue
        tensor = _tensor(entry, data_start, data_len)
        if tensor is None:
            raise NotSafetensors(f"tensor {name!r} is described wrongly")
        tensors[name] = tensor
    cursor = data_start
    for tensor in sorted(tensors.values(), key=lambda t: (t.start, t.end)):
        if tensor.start < cursor:
            raise NotSafetensors("tensors overlap")
        cursor = tensor.end
    return tensors


def _tensor(entry: Any, data_start: int, data_len: int) -> _Tensor | None:
    if not isinstance(entry, dict):
        return None
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        return None
    if not isinstance(shape, list) or not isinstance(offsets, list) or len(offsets) != 2:
        return None
    if not all(_is_count(d) for d in shape) or not all(_is_count(o) for o in offsets):
        return None
    begin, end = offsets
    if not begin <= end <= data_len:
        return None
    elements = math.prod(shape)
    if (elements * _DTYPES[dtype][0] + 7) // 8 != end - begin:
        return None
    return _Tensor(dtype, tuple(shape), data_start + begin, data_start + end)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _compare_file(
    ta: dict[str, _Tensor],
    tb: dict[str, _Tensor],
    src_a: _Source | None,
    src_b: _Source | None,
    pool: ThreadPoolExecutor,
) -> list[TensorChange]:
    out: list[TensorChange] = []
    for name in sorted(ta.keys() | tb.keys()):
        x, y = ta.get(name), tb.get(name)
        if x is None:
            assert y is not None
            out.append(TensorChange(name, "added", None, y.dtype, None, y.shape))
        elif y is None:
            out.append(TensorChange(name, "removed", x.dtype, None, x.shape, None))
        elif x.dtype != y.dtype or x.shape != y.shape:
            out.append(TensorChange(name, "reshaped", x.dtype, y.dtype, x.shape, y.shape))
        else:
            assert src_a is not None and src_b is not None
            change, relative = _tensor_change(src_a, src_b, x, y, pool)
            out.append(TensorChange(name, change, x.dtype, y.dtype, x.shape, y.shape, relative))
    return ordered(out)


def ordered(tensors: list[TensorChange]) -> list[TensorChange]:
    """Changed tensors first (largest relative change first; NaN and unknown ones at the top
    of them), then reshaped, added, removed and unchanged ones, each by name."""

    def key(t: TensorChange) -> tuple[int, float, str]:
        rc = t.relative_change
        size = -math.inf if rc is None or math.isnan(rc) else -rc
        return (_ORDER[t.change], size if t.change == "changed" else 0.0, t.name)

    return sorted(tensors, key=key)


def _tensor_change(
    src_a: _Source, src_b: _Source, x: _Tensor, y: _Tensor, pool: ThreadPoolExecutor
) -> tuple[str, float | None]:
    if x.start == x.end or (src_a.sha256 == src_b.sha256 and x.start == y.start):
        return "unchanged", None
    chunks_a = src_a.chunks_of(x.start, x.end)
    if chunks_a is not None and chunks_a == src_b.chunks_of(y.start, y.end):
        return "unchanged", None
    if _same_bytes(src_a, src_b, x, y, pool):
        return "unchanged", None
    return "changed", _relative_change(src_a, src_b, x, y, pool)


def _pairs(
    src_a: _Source, src_b: _Source, x: _Tensor, y: _Tensor, pool: ThreadPoolExecutor
) -> Iterator[tuple[bytes, bytes]]:
    """Both tensors' bytes in blocks of `BLOCK` bytes (the last shorter), read side by side."""
    blocks_a = _blocks(src_a.read(x.start, x.end))
    blocks_b = _blocks(src_b.read(y.start, y.end))
    while True:
        next_b = pool.submit(next, blocks_b, None)
        block_a = next(blocks_a, None)
        block_b = next_b.result()
        if block_a is None or block_b is None:
            return
        yield block_a, block_b


def _same_bytes(
    src_a: _Source, src_b: _Source, x: _Tensor, y: _Tensor, pool: ThreadPoolExecutor
) -> bool:
    return all(block_a == block_b for block_a, block_b in _pairs(src_a, src_b, x, y, pool))


def _relative_change(
    src_a: _Source, src_b: _Source, x: _Tensor, y: _Tensor, pool: ThreadPoolExecutor
) -> float | None:
    """‖a-b‖/‖a‖, the sums of squares taken in float64 (infinite when ‖a‖ is 0 and b
    differs), None for a dtype numpy does not read."""
    if _DTYPES[x.dtype][1] is None:
        return None
    norm_a = 0.0
    norm_diff = 0.0
    for block_a, block_b in _pairs(src_a, src_b, x, y, pool):
        va, vb = _values(block_a, x.dtype), _values(block_b, x.dtype)
        diff = va - vb
        if np.iscomplexobj(diff):
            norm_a += float(np.vdot(va, va).real)
            norm_diff += float(np.vdot(diff, diff).real)
        else:
            # einsum widens a piece at a time: as exact as float64 arrays, 3-4 times faster.
            norm_a += float(np.einsum("i,i->", va, va, dtype=np.float64))
            norm_diff += float(np.einsum("i,i->", diff, diff, dtype=np.float64))
    if norm_a == 0.0:
        return math.inf if norm_diff > 0.0 else (0.0 if norm_diff == 0.0 else math.nan)
    return math.sqrt(norm_diff) / math.sqrt(norm_a)


# Read as float32 (exactly: 24 bits of mantissa hold them), not widened to float64 first.
_AS_FLOAT32 = frozenset({"F16", "BOOL", "U8", "I8", "I16", "U16"})


def _values(block: bytes, dtype: str) -> np.ndarray[Any, Any]:
    """A block's values: float32 for BF16, F16, F32 and the small integers, float64 for F64
    and the large integers, complex128 for C64."""
    kind = _DTYPES[dtype][1]
    assert kind is not None
    raw = np.frombuffer(block, dtype=kind)
    if dtype == "BF16":
        widened: np.ndarray[Any, Any] = np.left_shift(raw, 16, dtype=np.uint32)
        return widened.view(np.float32)
    if dtype in ("F32", "F64"):
        return raw
    if dtype in _AS_FLOAT32:
        return raw.astype(np.float32)
    if dtype == "C64":
        return raw.astype(np.complex128)
    return raw.astype(np.float64)


def _blocks(pieces: Iterator[bytes]) -> Iterator[bytes]:
    """`pieces` regrouped into blocks of exactly `BLOCK` bytes (the last may be shorter)."""
    pending = bytearray()
    for piece in pieces:
        if not pending and len(piece) == BLOCK:
            yield piece
            continue
        pending += piece
        while len(pending) >= BLOCK:
            yield bytes(pending[:BLOCK])
            del pending[:BLOCK]
    if pending:
        yield bytes(pending)


def as_json(comparison: TensorComparison) -> dict[str, Any]:
    """The comparison as the API answers it: non-finite relative changes as "Infinity" or
    "NaN" (JSON has no such numbers)."""
    return {
        "a": comparison.a,
        "b": comparison.b,
        "files": [
            {
                "a_path": f.a_path,
                "b_path": f.b_path,
                "tensors": [
                    {
                        "name": t.name,
                        "change": t.change,
                        "a_dtype": t.a_dtype,
                        "b_dtype": t.b_dtype,
                        "a_shape": list(t.a_shape) if t.a_shape is not None else None,
                        "b_shape": list(t.b_shape) if t.b_shape is not None else None,
                        "relative_change": _json_number(t.relative_change),
                    }
                    for t in f.tensors
                ],
            }
            for f in comparison.files
        ],
        "skipped": comparison.skipped,
    }


def _json_number(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"
