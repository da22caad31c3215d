"""The server's reader of chunk frames and chunk packs (issue 17's wire format), and nothing else.

The server shares no code with the client (DESIGN.md): this is its own small decoder of the
frames `lmvp/chunk_codec.py` writes, kept to that file's layout and tested against its bytes.

A *frame* is, little-endian: ``b"LC"``, format version (1), method (0 raw, 1 zstd, 2 grouped),
element width (1 unless grouped: 2, 4 or 8), original length (u64); then the payload: the bytes
as they are (raw), one zstd frame carrying its content size and checksum (zstd), or, grouped,
per byte lane of the elements its method (0 raw, 1 zstd) and stored length (u32) followed by
its bytes, then the bytes past the last whole element, raw. `decode_frame` gives the original
bytes back and raises `BadFrame` for anything that does not parse or add up; it never allocates
more than the length the caller expects. Bytes stored raw carry no checksum: the caller checks
the result against the chunk's sha256 (`verified_chunk` does both).

A *pack* is records back to back, each ``sha256 (32 raw bytes) | raw_len (u32) | frame_len (u32)
| frame``; `RECORD_HEAD` parses the 40 bytes before a frame and `pack_record` writes a record.
"""

from __future__ import annotations

import hashlib
import struct
import threading

import zstandard

__all__ = [
    "MAX_CHUNK_SIZE",
    "MAX_FRAME_OVERHEAD",
    "RECORD_HEAD",
    "BadFrame",
    "decode_frame",
    "frame_length",
    "pack_record",
    "verified_chunk",
]

# The largest chunk (raw bytes) the protocol carries, and the most a frame may add to it
# (headers: 13 bytes, plus 5 per stream of a grouped frame; a frame is stored raw when
# compressing does not pay, so it never grows more).
MAX_CHUNK_SIZE = 16 * 1024 * 1024
MAX_FRAME_OVERHEAD = 1024

RECORD_HEAD = struct.Struct("<32sII")  # sha256, raw length, frame length

_MAGIC = b"LC"
_VERSION = 1
_HEADER = struct.Struct("<2sBBBQ")  # magic, version, method, width, original length
_STREAM = struct.Struct("<BI")  # a grouped frame's stream: method, stored length
_RAW, _ZSTD, _GROUPED = 0, 1, 2
_GROUP_WIDTHS = (2, 4, 8)
# zstd's default window limit: frames the client writes use far less.
_MAX_WINDOW = 1 << 27

_local = threading.local()


class BadFrame(ValueError):
    """A chunk's frame does not decode, or decodes to other bytes than its sha256 names."""


def pack_record(sha256: str, raw_length: int, frame: bytes) -> bytes:
    """The 40-byte head of a pack record for `frame` (the frame follows it on the wire)."""
    return RECORD_HEAD.pack(bytes.fromhex(sha256), raw_length, len(frame))


def verified_chunk(frame: bytes | memoryview, sha256: str, size: int) -> bytes:
    """The raw bytes of `frame` if they are `size` bytes that hash to `sha256`; raises
    `BadFrame` saying what is wrong otherwise."""
    raw = decode_frame(frame, size)
    if hashlib.sha256(raw).hexdigest() != sha256:
        raise BadFrame(f"chunk {sha256}: its bytes do not hash to its sha256")
    return raw


def frame_length(frame: bytes | memoryview) -> int:
    """The original length a frame's header claims; raises `BadFrame` if there is no header."""
    if len(frame) < _HEADER.size:
        raise BadFrame(f"a frame of {len(frame)} bytes is shorter than its header")
    length: int = _HEADER.unpack_from(frame)[4]
    return length


def decode_frame(frame: bytes | memoryview, expected_length: int) -> bytes:
    """The original bytes of `frame`, which must be `expected_length` long; raises `BadFrame`."""
    view = memoryview(frame).cast("B")
    if len(view) < _HEADER.size:
        raise BadFrame(f"a frame of {len(view)} bytes is shorter than its header")
    magic, version, method, width, length = _HEADER.unpack_from(view)
    if magic != _MAGIC or version != _VERSION:
        raise BadFrame("not a chunk frame of format version 1 (wrong magic or version)")
    if length != expected_length:
        raise BadFrame(f"the frame holds {length} bytes where {expected_length} were announced")
    payload = view[_HEADER.size :]
    if method == _RAW and width == 1:
        if len(payload) != length:
            raise BadFrame(f"a raw frame holds {len(payload)} bytes, its header says {length}")
        return bytes(payload)
    if method == _ZSTD and width == 1:
        return _unzstd(payload, length)
    if method == _GROUPED and width in _GROUP_WIDTHS:
        return _ungroup(payload, width, length)
    raise BadFrame(f"unknown frame method {method} with element width {width}")


def _ungroup(payload: memoryview, width: int, length: int) -> bytes:
    whole = length - length % width
    per_stream = whole // width
    streams: list[tuple[int, memoryview]] = []
    offset = 0
    for i in range(width):
        if offset + _STREAM.size > len(payload):
            raise BadFrame(f"the frame ends inside stream {i}")
        method, stored = _STREAM.unpack_from(payload, offset)
        offset += _STREAM.size
        body = payload[offset : offset + stored]
        if len(body) != stored:
            raise BadFrame(f"the frame ends inside stream {i}")
        offset += stored
        if method == _RAW:
            if stored != per_stream:
                raise BadFrame(f"stream {i} stores {stored} bytes where {per_stream} belong")
        elif method != _ZSTD:
            raise BadFrame(f"stream {i} names an unknown method {method}")
        streams.append((method, body))
    tail = payload[offset:]
    if len(tail) != length - whole:
        raise BadFrame(f"the frame ends with {len(tail)} bytes where {length - whole} belong")
    out = bytearray(length)
    for i, (method, body) in enumerate(streams):
        out[i:whole:width] = body.tobytes() if method == _RAW else _unzstd(body, per_stream)
    out[whole:] = tail
    return bytes(out)


def _unzstd(packed: memoryview, length: int) -> bytes:
    """One zstd frame that must give exactly `length` bytes and nothing after it."""
    try:
        params = zstandard.get_frame_parameters(packed)
    except zstandard.ZstdError as error:
        raise BadFrame(f"a zstd stream does not parse ({error})") from None
    if params.content_size != length:
        raise BadFrame(f"a zstd stream claims {params.content_size} bytes where {length} belong")
    decompressor: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if decompressor is None:
        decompressor = _local.decompressor = zstandard.ZstdDecompressor(max_window_size=_MAX_WINDOW)
    try:
        data = decompressor.decompress(packed, allow_extra_data=False)
    except zstandard.ZstdError as error:
        raise BadFrame(f"a zstd stream does not decode ({error})") from None
    if len(data) != length:
        raise BadFrame(f"a zstd stream gave {len(data)} bytes where {length} belong")
    return data
