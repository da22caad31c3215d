"""Splitting a file into content-addressed chunks whose boundaries follow its format.

`chunk_file(path)` reads a file once, front to back, and returns its whole-file sha256 (the
file's identity, as in every manifest) and an ordered list of chunks that cover it without gap
or overlap: concatenating the chunks' bytes gives the file back. Each chunk carries the sha256 of
its bytes, so a store that already holds a chunk (from an earlier checkpoint, another file, another
model in the project) need not receive it again. The same bytes always give the same chunks.

Where the boundaries fall decides how much two versions share, so they follow what changes
together. The format is recognised from the bytes, never from the file's name:

- **safetensors** (8-byte little-endian header length, then a JSON header naming every tensor's
  dtype, shape and byte range): the length and the JSON are one chunk (`header`), every tensor's
  bytes are a chunk of their own (`tensor`, named after the tensor), and bytes that no tensor
  claims (padding, trailing bytes) are `gap` chunks. A fine-tune that changes 10% of the tensors
  then changes about 10% of the chunks, wherever the changed tensors sit in the file, and the
  chunk hashes double as per-tensor hashes for comparing two versions (`ChunkedFile.tensors`
  is the tensor table for that).
- **zip archives**, which is what PyTorch's `torch.save` writes (and Lightning's `.ckpt`, HF's
  `optimizer.pt`): every record's data is a chunk named after the record; records named
  `<archive>/data/<key>` hold one tensor storage each, stored uncompressed and 64-byte aligned
  by PyTorch (`storage`), the others (`data.pkl`, `version`, ...) are `record` chunks; the local
  headers between the records (with their alignment padding) and the central directory at the end
  are small `meta` chunks. Storages, like tensors, change or stay whole between checkpoints.
- **anything else**: content-defined chunking (FastCDC, via `pyfastcdc`): a boundary falls where
  a rolling hash of the last bytes matches a pattern, so bytes inserted near the start move only
  the chunks around the insertion, not every later boundary as fixed-size blocks would.

A tensor, storage or other range longer than `PIECE_SIZE` is cut further into pieces of that
size, counted from the start of its range (so a tensor that grows at its end keeps its leading
pieces): one chunk never holds more than a piece, which bounds what a retry resends and lets
pieces travel and compress in parallel. A header that does not parse, ranges that overlap or
leave the file, or a damaged zip are not errors: such a file is chunked as content, like any
other file. Only the header (safetensors) and the central directory and local headers (zip) are
read ahead of the pass, by small positioned reads.

Speed: the pass reads 8 MiB blocks into a few reused buffers; one thread hashes the whole file,
another the chunks, while the calling thread reads and finds content-defined boundaries (hashlib
and the FastCDC cutter release the GIL). Every byte is hashed twice (whole file and chunk), so
chunking costs about twice the CPU time of hashing a tensor file (about 2.5 times with
content-defined boundaries), but on a machine with a core to spare the second hash runs beside
the first and the wall time stays near that of hashing alone (bench/chunking.py measures both).
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
import re
import struct
import zipfile
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from io import FileIO
from pathlib import Path
from typing import Any

from pyfastcdc import FastCDC

from lmvp.errors import IntegrityError

log = logging.getLogger(__name__)

MiB = 1 << 20

# The longest chunk a tensor, storage or record range is cut into. Measured (bench/chunking.py
# --sweep, 1 GiB model): hashing costs the same CPU per byte from 4 to 64 MiB pieces, and a
# change of whole tensors shares the same bytes at any piece size; a change inside one tensor
# (new tokens' rows of an embedding, a few experts of a fused MoE tensor) resends about a piece
# per changed region, so smaller is better there, while every halving doubles the chunks of the
# large matrices (a 13.5 GB BF16 Llama-7B: about 1,700 chunks at 8 MiB, 950 at 16 MiB).
PIECE_SIZE = 8 * MiB

# Content-defined chunking of files of no known format: FastCDC's target size; its chunks are
# at least a quarter and at most four times that (FastCDC's own proportions), and average about
# 1.25 times it (the cutter skips the first quarter of a chunk). See bench/chunking.py.
CDC_AVG_SIZE = 1 * MiB

# How much one read takes, and how many read buffers are in flight between the reader and the
# two hashing threads.
_READ_SIZE = 8 * MiB
_BUFFERS = 3

# safetensors refuses headers over 100 MB; so do we (a larger one is not a safetensors file).
_SAFETENSORS_MAX_HEADER = 100_000_000

# Bytes per element of the safetensors dtypes, to check that a tensor's range fits its shape.
_DTYPE_BITS = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "I64": 64,
    "U64": 64,
    "F64": 64,
    "C64": 64,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
}

# pyfastcdc's largest maximum chunk size.
_CDC_MAX_LIMIT = 16 * MiB

_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature ... name length, extra length
_STORAGE_RECORD = re.compile(r"[^/]+/data/[^/]+")

# What a damaged or hostile header or zip raises while it is parsed: the file is then chunked as
# content. OSError is not among them: a disk that fails to read is an error for the caller.
_UNPARSEABLE = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    NotImplementedError,
    ValueError,  # including json.JSONDecodeError and UnicodeDecodeError
    struct.error,
    EOFError,
    OverflowError,
    RecursionError,
    KeyError,
    IndexError,
    TypeError,
)


class ChunkKind(enum.StrEnum):
    """What a chunk's bytes are, in the file's format."""

    HEADER = "header"  # a safetensors file's header length and JSON header
    TENSOR = "tensor"  # a safetensors tensor's bytes (or a piece of them)
    STORAGE = "storage"  # a zip record `<archive>/data/<key>`: a PyTorch tensor storage
    RECORD = "record"  # another zip record's data (`data.pkl`, `version`, ...)
    META = "meta"  # zip local headers (with PyTorch's alignment padding), central directory
    GAP = "gap"  # bytes that no tensor or record claims
    CONTENT = "content"  # a content-defined chunk of a file of no known format


class FileFormat(enum.StrEnum):
    """The format a file was recognised as, from its bytes."""

    SAFETENSORS = "safetensors"
    ZIP = "zip"  # PyTorch checkpoints (`torch.save`, Lightning `.ckpt`) and other zip archives
    OPAQUE = "opaque"  # no known format: content-defined chunks


@dataclass(frozen=True, slots=True)
class Chunk:
    """`length` bytes of a file from `offset`, whose sha256 (hex) is `sha256`. `name` is the
    tensor or zip record they belong to ("" for content-defined chunks); the pieces of one large
    tensor share its name."""

    offset: int
    length: int
    sha256: str
    kind: ChunkKind
    name: str = ""

    @property
    def end(self) -> int:
        """The offset just past the chunk's last byte."""
        return self.offset + self.length


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """A tensor of a safetensors file: its dtype, shape and bytes [start, end) in the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class ChunkedFile:
    """A file's size and whole-file sha256, its chunks in file order (covering it contiguously),
    and, for a safetensors file, its tensors in file order."""

    size: int
    sha256: str
    format: FileFormat
    chunks: tuple[Chunk, ...]
    tensors: tuple[TensorInfo, ...] = field(default=())


def chunk_file(
    path: Path | str,
    *,
    piece_size: int = PIECE_SIZE,
    cdc_avg_size: int = CDC_AVG_SIZE,
    on_chunk: Callable[[Chunk], None] | None = None,
) -> ChunkedFile:
    """Read the file at `path` once and return its sha256 and its chunks (see the module's
    docstring for where the boundaries fall). `piece_size` is the longest tensor, storage or
    record chunk; `cdc_avg_size` the target size of content-defined chunks (256 B to 4 MiB; the
    same value always gives the same chunks). Raises `OSError` if the file cannot be read, and
    `IntegrityError` if it became shorter while it was read (it is being written: chunk it again
    once it is complete). `on_chunk(chunk)`, if given, is called with each chunk as soon as its
    hash is known (from a worker thread, in file order), so a sender can start on the first
    chunks while the rest are read. The result describes the file's first `size` bytes, its
    size when it was opened; a caller that must know the file did not change meanwhile compares
    its stat before and after, as uploads do (`lmvp.transfer.check_unchanged`)."""
    if piece_size < 1:
        raise ValueError(f"piece_size must be positive, not {piece_size}")
    content_cutter = _ContentCutter(cdc_avg_size)  # checks the size before the file is opened
    path = Path(path)
    with path.open("rb", buffering=0) as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        fmt, segments, tensors = _plan(f, size)
        if segments is not None:
            segments = list(_split_into_pieces(segments, piece_size))
            cutter: _Cutter = _PlannedCutter(segments)
        else:
            cutter = content_cutter
        f.seek(0)
        sha256, chunks = _scan(f, path, size, cutter, on_chunk)
    return ChunkedFile(size, sha256, fmt, tuple(chunks), tuple(tensors))


# ---------------------------------------------------------------------------------------------
# Planning: where a recognised format's boundaries fall, from its header or central directory.


@dataclass(frozen=True, slots=True)
class _Segment:
    start: int
    end: int
    kind: ChunkKind
    name: str


def _plan(f: FileIO, size: int) -> tuple[FileFormat, list[_Segment] | None, list[TensorInfo]]:
    """The file's format and planned segments (None: content-defined chunks instead)."""
    head = os.pread(f.fileno(), 9, 0)
    try:
        if len(head) == 9 and head[8:9] == b"{":
            planned = _plan_safetensors(f.fileno(), size, head)
            if planned is not None:
                return FileFormat.SAFETENSORS, planned[0], planned[1]
        if head[:4] == b"PK\x03\x04":
            segments = _plan_zip(f, size)
            if segments is not None:
                return FileFormat.ZIP, segments, []
    except _UNPARSEABLE as exc:
        log.debug("chunking as content: the header does not parse (%s)", exc)
    return FileFormat.OPAQUE, None, []


def _plan_safetensors(
    fd: int, size: int, head: bytes
) -> tuple[list[_Segment], list[TensorInfo]] | None:
    (header_len,) = struct.unpack_from("<Q", head)
    if header_len > _SAFETENSORS_MAX_HEADER or 8 + header_len > size:
        return None
    raw = os.pread(fd, header_len, 8)
    if len(raw) != header_len:
        return None
    header = json.loads(raw)
    if not isinstance(header, dict):
        return None
    data_start = 8 + header_len
    data_len = size - data_start
    tensors: list[TensorInfo] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        tensor = _tensor_info(name, entry, data_start, data_len)
        if tensor is None:
            return None
        tensors.append(tensor)
    tensors.sort(key=lambda t: (t.start, t.end))
    segments = [_Segment(0, data_start, ChunkKind.HEADER, "")]
    cursor = data_start
    for tensor in tensors:
        if tensor.start < cursor:
            return None  # overlapping tensors: not a file safetensors would load
        if tensor.start > cursor:
            segments.append(_Segment(cursor, tensor.start, ChunkKind.GAP, ""))
        if tensor.end > tensor.start:
            segments.append(_Segment(tensor.start, tensor.end, ChunkKind.TENSOR, tensor.name))
        cursor = tensor.end
    if cursor < size:
        segments.append(_Segment(cursor, size, ChunkKind.GAP, ""))
    return segments, tensors


def _tensor_info(name: str, entry: Any, data_start: int, data_len: int) -> TensorInfo | None:
    """The tensor an entry of a safetensors header describes, or None if it is malformed."""
    if not isinstance(entry, dict):
        return None
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or not isinstance(shape, list) or not isinstance(offsets, list):
        return None
    if not all(_is_count(d) for d in shape) or len(offsets) != 2:
        return None
    begin, end = offsets
    if not (_is_count(begin) and _is_count(end) and begin <= end <= data_len):
        return None
    bits = _DTYPE_BITS.get(dtype)
    if bits is not None:
        elements = 1
        for d in shape:
            elements *= d
        if (elements * bits + 7) // 8 != end - begin:
            return None
    return TensorInfo(name, dtype, tuple(shape), data_start + begin, data_start + end)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _plan_zip(f: FileIO, size: int) -> list[_Segment] | None:
    with zipfile.ZipFile(f) as archive:
        infos = archive.infolist()
    records: list[tuple[int, int, int, str, ChunkKind]] = []
    for info in infos:
        if not 0 <= info.header_offset <= size:
            # zipfile shifts offsets by where the central directory claims to start; a lying
            # end record makes them negative.
            return None
        local = os.pread(f.fileno(), _LOCAL_HEADER.size, info.header_offset)
        if len(local) != _LOCAL_HEADER.size:
            return None
        signature, name_len, extra_len = _LOCAL_HEADER.unpack(local)
        if signature != b"PK\x03\x04":
            return None
        data_start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
        data_end = data_start + info.compress_size
        if data_end > size:
            return None
        stored = info.compress_type == zipfile.ZIP_STORED
        kind = (
            ChunkKind.STORAGE
            if stored and _STORAGE_RECORD.fullmatch(info.filename)
            else ChunkKind.RECORD
        )
        records.append((info.header_offset, data_start, data_end, info.filename, kind))
    records.sort()
    segments: list[_Segment] = []
    cursor = 0
    for header_offset, data_start, data_end, name, kind in records:
        if header_offset < cursor:
            return None  # overlapping records
        # The local header, and before it anything since the previous record's data (its data
        # descriptor, or bytes before the first record).
        segments.append(_Segment(cursor, data_start, ChunkKind.META, name))
        if data_end > data_start:
            segments.append(_Segment(data_start, data_end, kind, name))
        cursor = data_end
    if cursor < size:
        segments.append(_Segment(cursor, size, ChunkKind.META, ""))
    return segments


def _split_into_pieces(segments: Iterable[_Segment], piece_size: int) -> Iterable[_Segment]:
    for segment in segments:
        for start in range(segment.start, segment.end, piece_size):
            end = min(start + piece_size, segment.end)
            yield _Segment(start, end, segment.kind, segment.name)


# ---------------------------------------------------------------------------------------------
# The pass: read, hash the whole file, cut and hash the chunks.


# One hashing step for the chunk thread: feed `data` to chunk `index`'s hash; `final`: it ends
# the chunk.
_Op = tuple[int, memoryview, bool]


class _Cutter:
    """Decides the chunks of a window of the file's bytes."""

    #: How many bytes of a window may stay unconsumed for the next one.
    carry: int = 0

    def cut(self, window: memoryview, offset: int, eof: bool) -> tuple[list[_Op], int]:
        """The hashing steps for `window` (the file's bytes from `offset`) and how many of its
        bytes they consumed; the rest starts the next window."""
        raise NotImplementedError

    def chunks(self) -> list[tuple[int, int, ChunkKind, str]]:
        """(offset, length, kind, name) of every chunk, by index."""
        raise NotImplementedError

    def chunk_at(self, index: int) -> tuple[int, int, ChunkKind, str]:
        """(offset, length, kind, name) of chunk `index`, once it was cut."""
        raise NotImplementedError


class _PlannedCutter(_Cutter):
    def __init__(self, segments: list[_Segment]) -> None:
        self._segments = segments
        self._next = 0

    def cut(self, window: memoryview, offset: int, eof: bool) -> tuple[list[_Op], int]:
        ops: list[_Op] = []
        end = offset + len(window)
        segments = self._segments
        while self._next < len(segments):
            segment = segments[self._next]
            lo, hi = max(segment.start, offset), min(segment.end, end)
            if lo < hi:
                ops.append((self._next, window[lo - offset : hi - offset], hi == segment.end))
            if segment.end > end:
                break
            self._next += 1
        return ops, len(window)

    def chunks(self) -> list[tuple[int, int, ChunkKind, str]]:
        return [(s.start, s.end - s.start, s.kind, s.name) for s in self._segments]

    def chunk_at(self, index: int) -> tuple[int, int, ChunkKind, str]:
        s = self._segments[index]
        return s.start, s.end - s.start, s.kind, s.name


class _ContentCutter(_Cutter):
    def __init__(self, avg_size: int) -> None:
        self.carry = min(4 * avg_size, _CDC_MAX_LIMIT)
        self._cdc = FastCDC(
            avg_size, min_size=max(64, avg_size // 4), max_size=self.carry, normalized_chunking=1
        )
        self._chunks: list[tuple[int, int, ChunkKind, str]] = []

    def cut(self, window: memoryview, offset: int, eof: bool) -> tuple[list[_Op], int]:
        ops: list[_Op] = []
        consumed = 0
        pieces = self._cdc.cut_buf(window)
        # A cut is final when the cutter saw `max_size` bytes after the chunk's start (it never
        # looks further); a chunk starting nearer the window's end waits for the next window,
        # and is not cut here at all, so no byte is scanned twice.
        while eof or len(window) - consumed >= self.carry:
            piece = next(pieces, None)
            if piece is None:
                break
            ops.append((len(self._chunks), piece.data, True))
            self._chunks.append((offset + piece.offset, piece.length, ChunkKind.CONTENT, ""))
            consumed = piece.offset + piece.length
        return ops, consumed

    def chunks(self) -> list[tuple[int, int, ChunkKind, str]]:
        return self._chunks

    def chunk_at(self, index: int) -> tuple[int, int, ChunkKind, str]:
        return self._chunks[index]


def _scan(
    f: FileIO,
    path: Path,
    size: int,
    cutter: _Cutter,
    on_chunk: Callable[[Chunk], None] | None = None,
) -> tuple[str, list[Chunk]]:
    """Read `size` bytes of `f` once; return the whole-file sha256 and the chunks `cutter` cut."""
    whole = hashlib.sha256()
    hashers: dict[int, Any] = {}
    digests: dict[int, str] = {}

    def hash_chunks(ops: list[_Op]) -> None:
        for index, data, final in ops:
            hasher = hashers.get(index)
            if hasher is None:
                hasher = hashers[index] = hashlib.sha256()
            hasher.update(data)
            if final:
                digests[index] = hashers.pop(index).hexdigest()
                if on_chunk is not None:
                    offset, length, kind, name = cutter.chunk_at(index)
                    on_chunk(Chunk(offset, length, digests[index], kind, name))

    if size <= _READ_SIZE:
        # One read: no threads to start.
        data = memoryview(bytearray(size))
        _read_fully(f, path, data)
        whole.update(data)
        ops, _ = cutter.cut(data, 0, eof=True)
        hash_chunks(ops)
    else:
        _scan_in_threads(f, path, size, cutter, whole.update, hash_chunks)
    chunks = [
        Chunk(offset, length, digests[index], kind, name)
        for index, (offset, length, kind, name) in enumerate(cutter.chunks())
    ]
    return whole.hexdigest(), chunks


def _scan_in_threads(
    f: FileIO,
    path: Path,
    size: int,
    cutter: _Cutter,
    hash_whole: Callable[[memoryview], None],
    hash_chunks: Callable[[list[_Op]], None],
) -> None:
    buffers = [memoryview(bytearray(cutter.carry + _READ_SIZE)) for _ in range(_BUFFERS)]
    in_flight: list[list[Future[None]]] = [[] for _ in range(_BUFFERS)]
    with (
        ThreadPoolExecutor(1, thread_name_prefix="lmvp-hash-file") as file_thread,
        ThreadPoolExecutor(1, thread_name_prefix="lmvp-hash-chunks") as chunk_thread,
    ):
        previous: memoryview | None = None
        carry_from = carry_len = 0
        offset = done = 0  # file offset of the window's first byte; bytes read so far
        turn = 0
        while done < size:
            slot = turn % _BUFFERS
            for future in in_flight[slot]:
                future.result()  # the buffer is free again (and a failure surfaces here)
            buffer = buffers[slot]
            if carry_len:
                assert previous is not None
                buffer[:carry_len] = previous[carry_from : carry_from + carry_len]
            n = min(_READ_SIZE, size - done)
            fresh = buffer[carry_len : carry_len + n]
            _read_fully(f, path, fresh)
            done += n
            window = buffer[: carry_len + n]
            ops, consumed = cutter.cut(window, offset, eof=done == size)
            in_flight[slot] = [file_thread.submit(hash_whole, fresh)]
            in_flight[slot].append(chunk_thread.submit(hash_chunks, ops))
            previous, carry_from, carry_len = window, consumed, len(window) - consumed
            offset += consumed
            turn += 1
        for futures in in_flight:
            for future in futures:
                future.result()


def _read_fully(f: FileIO, path: Path, into: memoryview) -> None:
    got = 0
    while got < len(into):
        n = f.readinto(into[got:])
        if not n:
            raise IntegrityError(
                f"{path} became shorter while it was read (it is being written): chunk it again "
                "once it is complete."
            )
        got += n
