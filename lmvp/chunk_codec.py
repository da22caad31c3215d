"""Lossless, float-aware compression of one chunk, and when compressing a chunk pays.

`encode(data, dtype)` turns a chunk's bytes into a self-describing *frame*; `decode(frame)` gives
the bytes back, bit for bit. A frame is one of three methods, chosen per chunk:

- **raw**: the bytes as they are, behind a 13-byte header. Whatever does not compress to at most
  `PAYS_BELOW` (0.97) of its size is stored raw, so incompressible bytes (random data, already
  compressed files) cost the header and nothing else.
- **zstd**: one zstd frame of the whole chunk (text, JSON headers, integers, anything that is not a
  float tensor).
- **grouped**: for float tensors (BF16, F16, F32, F64). Trained weights compress poorly as they
  lie (zstd alone reaches about 0.78 on BF16, 0.93 on F32) because every element interleaves a
  sign-and-exponent byte, which holds about 3 bits of information, with mantissa bytes that are
  nearly random. Grouping byte 0 of every element into one stream, byte 1 into the next, and so
  on, leaves the exponent stream for zstd to code close to its entropy, while the mantissa
  streams are stored as they are without spending CPU on them: about 0.68 of the size for BF16
  and 0.84 for F32 of normal(0, 0.02) weights (`bench/compress.py` measures it). Each stream is
  raw or zstd on its own; bytes past the last whole element (a chunk that cuts an element) ride
  raw at the end.

For a chunk of unknown dtype (`dtype=None`, e.g. a tensor storage inside a `torch.save` zip)
`encode` tries plain zstd and 2- and 4-byte grouping on a sample and keeps the best.

Measured beside ZipNN (`bench/compress.py`, one core): ZipNN packs BF16 weights a little tighter
(0.662 against 0.673) and runs about 1.5x faster to compress and 2.5x to decompress (its own
Huffman coder in C; this codec does about 550 and 700 MB/s of CPU on BF16), but it imports torch
(gigabytes with its CUDA libraries) and rewrites the caller's buffer in place, even an immutable
`bytes`; zstandard is a small wheel, and both are far faster than the links where compression
pays. The grouping itself is bytes slicing with a step, a C loop at 1.5-3 GB/s: numpy would be
at most 1.4x faster there, not worth a dependency of the client.

Frame layout, little-endian: ``b"LC"``, format version (1), method (0 raw, 1 zstd, 2 grouped),
element width (1 unless grouped), original length (u64); then the payload. A grouped payload is,
per stream, its method (0 raw, 1 zstd) and stored length (u32) followed by its bytes, then the
tail. Every zstd frame carries its content size and zstd's content checksum.

Integrity: a truncated, extended or damaged frame raises `CorruptFrame` where it can be seen (a
header that does not parse, lengths that do not add up, a zstd stream that fails to decode or
fails its checksum). Bytes stored raw carry no checksum of their own, so **the caller must verify
the decoded chunk against its sha256** before using it (the chunk's address, which the caller
knows anyway); the frame deliberately holds no second copy of that hash. `decode` never allocates
more than the original length it is told to expect (or `max_length`), whatever a damaged length
field claims.

`CompressionGovernor` decides per chunk whether to compress at all: from the link throughput the
upload achieves and the codec's measured speed and ratio on recent chunks, it compresses only
when that makes the transfer faster (a slow link), and sends raw where the CPU would become the
bottleneck (a server on the same machine, a 10 GbE link). The decision is measured, never
configured by hand.
"""

from __future__ import annotations

import enum
import struct
import threading
from dataclasses import dataclass

import zstandard

from lmvp.errors import IntegrityError

__all__ = [
    "MAX_CHUNK_LENGTH",
    "PAYS_BELOW",
    "CompressionGovernor",
    "CorruptFrame",
    "Method",
    "decode",
    "element_width",
    "encode",
    "frame_info",
    "raw_frame_header",
]

# Compressed output above this fraction of the input is not worth keeping: the chunk (or
# stream) is stored raw. Random bytes therefore never grow by more than the headers.
PAYS_BELOW = 0.97

# `decode` refuses frames that claim more than this unless the caller raises the cap (chunks are
# at most 8 MiB today, see lmvp/chunking.py; a safetensors header chunk can be larger).
MAX_CHUNK_LENGTH = 256 * 1024 * 1024

# The zstd level `encode` uses unless told otherwise.
DEFAULT_LEVEL = 1


class CorruptFrame(IntegrityError):
    """A compressed chunk frame is truncated, damaged or not a frame at all: the chunk must be
    fetched again (and the copy it came from checked)."""


class Method(enum.IntEnum):
    """How a frame (or one stream of a grouped frame) stores its bytes."""

    RAW = 0
    ZSTD = 1
    GROUPED = 2


@dataclass(frozen=True)
class FrameInfo:
    """What a frame's header says: its method, element width and original length."""

    method: Method
    width: int
    length: int


def element_width(dtype: str | None) -> int:
    """Return the byte width to group a chunk of `dtype` by: 2, 4 or 8 for float tensors, 1
    (no grouping) for every other dtype, 0 for unknown (`None`: `encode` probes a sample).

    `dtype` is a safetensors dtype name (``BF16``, ``F32``...) or a torch/numpy name
    (``bfloat16``, ``torch.float32``, ``float16``...), in any case.
    """
    if dtype is None:
        return 0
    name = dtype.strip().lower().removeprefix("torch.")
    return _FLOAT_WIDTHS.get(name, 1)


def encode(
    data: bytes | bytearray | memoryview, dtype: str | None, level: int = DEFAULT_LEVEL
) -> bytes:
    """Compress one chunk into a self-describing frame that `decode` turns back into `data`.

    `dtype` is the element type of the tensor the chunk belongs to (see `element_width`), or
    ``None`` when unknown; `level` is the zstd level (1 is fast and, for floats, also the best
    ratio measured; higher levels cost much CPU for little gain). The method is chosen per chunk
    (and per stream): whatever does not shrink below `PAYS_BELOW` of its size is stored raw, so
    the frame is never longer than ``len(data)`` plus a few header bytes.
    """
    view = memoryview(data).cast("B")
    n = len(view)
    width = element_width(dtype)
    if width == 0:
        width = _probe_width(view, level)
    if width > 1 and 2 * width <= n < width << 32:  # each stream's length fits its u32
        # Slicing bytes with a step runs in C at memory speed; a strided memoryview is 3x slower.
        whole = data if isinstance(data, bytes) else view.tobytes()
        parts = _encode_grouped(whole, width, level)
        if sum(map(len, parts)) <= PAYS_BELOW * n:
            return b"".join([_header(Method.GROUPED, width, n), *parts])
    elif n >= _MIN_COMPRESS:
        packed = _compress_if_pays(view, level, float_stream=False)
        if packed is not None:
            return _header(Method.ZSTD, 1, n) + packed
    return b"".join((_header(Method.RAW, 1, n), view))


def decode(
    frame: bytes | bytearray | memoryview,
    *,
    expected_length: int | None = None,
    max_length: int = MAX_CHUNK_LENGTH,
) -> bytes:
    """Return the original bytes of a frame made by `encode`.

    `expected_length` is the chunk's length as the caller knows it (from the manifest); a frame
    that claims another length is refused before anything is allocated. Without it, frames that
    claim more than `max_length` bytes are refused. Raises `CorruptFrame` for a frame that is
    truncated, extended or damaged where that is detectable; bytes stored raw are not checked,
    so the caller must verify the result against the chunk's sha256.
    """
    view = memoryview(frame).cast("B")
    info = frame_info(view)
    if expected_length is not None and info.length != expected_length:
        raise CorruptFrame(
            f"a chunk frame claims {info.length} bytes where {expected_length} were expected: "
            "the chunk is damaged; fetch it again"
        )
    if info.length > max_length:
        raise CorruptFrame(
            f"a chunk frame claims {info.length} bytes, more than the {max_length} allowed: "
            "the chunk is damaged or not a chunk frame"
        )
    payload = view[_HEADER.size :]
    if info.method is Method.RAW:
        if len(payload) != info.length:
            raise CorruptFrame(
                f"a stored chunk frame holds {len(payload)} bytes where its header says "
                f"{info.length}: the chunk is truncated or damaged; fetch it again"
            )
        return bytes(payload)
    if info.method is Method.ZSTD:
        return _decompress_exact(payload, info.length)
    return _decode_grouped(payload, info.width, info.length)


def raw_frame_header(length: int) -> bytes:
    """The header of a raw frame of `length` bytes: followed by the bytes themselves it is the
    frame `encode` makes for incompressible data, so a sender can put a raw chunk on the wire
    straight from the file (sendfile) without building the frame in memory."""
    return _header(Method.RAW, 1, length)


def frame_info(frame: bytes | bytearray | memoryview) -> FrameInfo:
    """Read a frame's header (method, element width, original length) without decoding it.

    Raises `CorruptFrame` if the header is missing, of another format or inconsistent.
    """
    view = memoryview(frame).cast("B")
    if len(view) < _HEADER.size:
        raise CorruptFrame(
            f"a chunk frame of {len(view)} bytes is shorter than its {_HEADER.size}-byte header: "
            "the chunk is truncated; fetch it again"
        )
    magic, version, method, width, length = _HEADER.unpack_from(view)
    if magic != _MAGIC:
        raise CorruptFrame("the bytes are not a chunk frame (wrong magic): fetch the chunk again")
    if version != _VERSION:
        raise CorruptFrame(
            f"a chunk frame has format version {version}; this client reads version {_VERSION}: "
            "upgrade lmvp, or fetch the chunk again if it is damaged"
        )
    try:
        kind = Method(method)
    except ValueError:
        raise CorruptFrame(f"a chunk frame names an unknown method {method}") from None
    if (kind is Method.GROUPED) != (width in _GROUP_WIDTHS) or (
        kind is not Method.GROUPED and width != 1
    ):
        raise CorruptFrame(f"a chunk frame names element width {width} for method {kind.name}")
    return FrameInfo(kind, width, length)


class CompressionGovernor:
    """Decides, chunk by chunk, whether compressing makes an upload faster.

    Callers feed it what they observe: `observe_link` with the bytes each send put on the wire
    and the seconds the send itself took (not time spent waiting for data to send: a link kept
    idle by a slow compressor must not look like a slow link), and `observe_codec` with each
    `encode`'s input length, output length and seconds. `should_compress()` then compares, per
    byte of the file, the time a pipelined compressed upload takes, ``max(1 / compress_speed,
    ratio / link_speed)``, with the raw upload's ``1 / link_speed``, and compresses only when
    that saves at least `min_gain` (5%) of the time.

    Figures are averaged over recent chunks (older ones decay by `decay` per observation), so the
    decision follows a link that slows down or data that stops compressing. Until both the link
    and the codec have been measured it compresses (that is how the codec gets measured); while
    it sends raw, every `probe_every`-th chunk is compressed anyway to keep the codec's figures
    current. `workers` is how many chunks are compressed in parallel. Pure arithmetic, no
    clock and no threads: not thread-safe, one per upload.
    """

    def __init__(
        self,
        *,
        workers: int = 1,
        min_gain: float = 0.05,
        decay: float = 0.8,
        probe_every: int = 16,
    ) -> None:
        if workers < 1 or not 0 <= min_gain < 1 or not 0 < decay <= 1 or probe_every < 1:
            raise ValueError("workers >= 1, 0 <= min_gain < 1, 0 < decay <= 1, probe_every >= 1")
        self.workers = workers
        self.min_gain = min_gain
        self.decay = decay
        self.probe_every = probe_every
        self._link_bytes = 0.0
        self._link_seconds = 0.0
        self._codec_in = 0.0
        self._codec_out = 0.0
        self._codec_seconds = 0.0
        self._raw_in_a_row = 0

    def observe_link(self, sent_bytes: int, seconds: float) -> None:
        """Record that `sent_bytes` went over the wire in `seconds` of sending."""
        if sent_bytes <= 0 or seconds <= 0:
            return
        self._link_bytes = self._link_bytes * self.decay + sent_bytes
        self._link_seconds = self._link_seconds * self.decay + seconds

    def observe_codec(self, original_bytes: int, encoded_bytes: int, seconds: float) -> None:
        """Record that `encode` turned `original_bytes` into `encoded_bytes` in `seconds`."""
        if original_bytes <= 0:
            return
        self._codec_in = self._codec_in * self.decay + original_bytes
        self._codec_out = self._codec_out * self.decay + encoded_bytes
        # A chunk encoded faster than the clock resolves still took some time.
        self._codec_seconds = self._codec_seconds * self.decay + max(seconds, 1e-9)

    @property
    def link_speed(self) -> float | None:
        """Bytes per second the link carries, as observed; None before any observation."""
        return self._link_bytes / self._link_seconds if self._link_seconds else None

    @property
    def compress_speed(self) -> float | None:
        """Input bytes per second that `workers` encoders get through; None before any."""
        if not self._codec_seconds:
            return None
        return self.workers * self._codec_in / self._codec_seconds

    @property
    def ratio(self) -> float | None:
        """Encoded bytes per input byte over recent chunks; None before any observation."""
        return self._codec_out / self._codec_in if self._codec_in else None

    def compression_pays(self) -> bool:
        """Whether, on the figures observed so far, compressing saves at least `min_gain` of the
        upload time (True while the link or the codec is not yet measured)."""
        link, speed, ratio = self.link_speed, self.compress_speed, self.ratio
        if link is None or speed is None or ratio is None:
            return True
        return compression_pays(
            link_speed=link, compress_speed=speed, ratio=ratio, min_gain=self.min_gain
        )

    def should_compress(self) -> bool:
        """Decide for the next chunk: True to `encode` it, False to send it raw. Call once per
        chunk: it counts the raw decisions to probe the codec now and then."""
        if self.compression_pays():
            self._raw_in_a_row = 0
            return True
        self._raw_in_a_row += 1
        if self._raw_in_a_row >= self.probe_every:
            self._raw_in_a_row = 0
            return True
        return False


def compression_pays(
    *, link_speed: float, compress_speed: float, ratio: float, min_gain: float = 0.05
) -> bool:
    """Whether a pipelined compressed transfer beats a raw one by at least `min_gain`.

    Per byte of input, compressing costs ``max(1 / compress_speed, ratio / link_speed)`` (the
    slower of the compressor and the link, as they overlap) against ``1 / link_speed`` raw.
    Speeds are bytes per second, `ratio` encoded over original bytes.
    """
    if link_speed <= 0 or compress_speed <= 0:
        return False
    compressed = max(1.0 / compress_speed, ratio / link_speed)
    return compressed <= (1.0 - min_gain) / link_speed


# ---------------------------------------------------------------------------------------------

_MAGIC = b"LC"
_VERSION = 1
_HEADER = struct.Struct("<2sBBBQ")  # magic, version, method, width, original length
_STREAM = struct.Struct("<BI")  # a grouped frame's stream: method, stored length
_GROUP_WIDTHS = (2, 4, 8)

_FLOAT_WIDTHS = {
    "bf16": 2,
    "bfloat16": 2,
    "f16": 2,
    "float16": 2,
    "half": 2,
    "f32": 4,
    "float32": 4,
    "float": 4,
    "f64": 8,
    "float64": 8,
    "double": 8,
}

# Below this a chunk is not worth a zstd frame (its own header and checksum eat the gain).
_MIN_COMPRESS = 64

# A stream longer than this is first compressed on a sample (a slice from its middle); if the
# sample does not pay, the stream is stored raw without compressing the rest.
_SAMPLE = 64 * 1024
# The largest zstd window a frame may ask the decoder for (zstd's own default limit): frames
# from `encode` use at most 8 MiB (level 19); a larger claim is a damaged frame.
_MAX_WINDOW = 1 << 27

# The exponent streams of float tensors are literals, not repetitions: zstd's fast strategy with
# long minimum matches spends little time looking for matches that are not there and codes the
# stream close to its entropy (measured on normal(0, 0.02) BF16: 0.345 of the size at ~400 MB/s
# of CPU, against 0.369 at ~350 MB/s for level 1 and 0.42 at ~160 MB/s for level 3).
_FLOAT_STREAM_PARAMS = {
    "strategy": zstandard.STRATEGY_FAST,
    "window_log": 17,
    "hash_log": 10,
    "chain_log": 12,
    "search_log": 1,
    "min_match": 7,
    "target_length": 0,
}

_local = threading.local()


def _header(method: Method, width: int, length: int) -> bytes:
    return _HEADER.pack(_MAGIC, _VERSION, method, width, length)


def _compressor(level: int, float_stream: bool) -> zstandard.ZstdCompressor:
    """A zstd compressor for this thread (they are not safe to share between threads)."""
    cache: dict[tuple[int, bool], zstandard.ZstdCompressor] | None = getattr(
        _local, "compressors", None
    )
    if cache is None:
        cache = _local.compressors = {}
    key = (level, float_stream and level <= 1)
    compressor = cache.get(key)
    if compressor is None:
        if key[1]:
            params = zstandard.ZstdCompressionParameters(
                **_FLOAT_STREAM_PARAMS, write_checksum=True, write_content_size=True
            )
            compressor = zstandard.ZstdCompressor(compression_params=params)
        else:
            compressor = zstandard.ZstdCompressor(
                level=level, write_checksum=True, write_content_size=True
            )
        cache[key] = compressor
    return compressor


def _decompressor() -> zstandard.ZstdDecompressor:
    decompressor: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if decompressor is None:
        decompressor = _local.decompressor = zstandard.ZstdDecompressor(max_window_size=_MAX_WINDOW)
    return decompressor


def _compress_if_pays(data: memoryview, level: int, *, float_stream: bool) -> bytes | None:
    """zstd-compress `data`, or None if that would not shrink it below `PAYS_BELOW`."""
    compressor = _compressor(level, float_stream)
    n = len(data)
    if n > 2 * _SAMPLE:
        start = (n - _SAMPLE) // 2
        sample = compressor.compress(data[start : start + _SAMPLE])
        if len(sample) > PAYS_BELOW * _SAMPLE:
            return None
    packed = compressor.compress(data)
    return packed if len(packed) <= PAYS_BELOW * n else None


def _probe_width(data: memoryview, level: int) -> int:
    """For a chunk of unknown dtype: the grouping (1, 2 or 4) that compresses a sample best."""
    n = len(data)
    if n < 4 * _MIN_COMPRESS:
        return 1
    start = max(0, (n - _SAMPLE) // 2) & ~7  # keep elements aligned in the sample
    sample = data[start : start + _SAMPLE].tobytes()
    best_width, best_size = 1, len(_compressor(level, False).compress(sample))
    for width in (2, 4):
        size = sum(
            min(len(sample) // width, len(_compressor(level, True).compress(sample[i::width])))
            for i in range(width)
        )
        # Grouping must win clearly: it costs a copy of the chunk in each direction.
        if size < 0.95 * best_size:
            best_width, best_size = width, size
    return best_width


def _encode_grouped(data: bytes, width: int, level: int) -> list[bytes]:
    """The pieces of a grouped frame's payload, in order."""
    n = len(data)
    whole = n - n % width
    parts: list[bytes] = []
    for i in range(width):
        stream = data[i:whole:width]
        packed = _compress_if_pays(memoryview(stream), level, float_stream=True)
        if packed is None:
            parts += [_STREAM.pack(Method.RAW, len(stream)), stream]
        else:
            parts += [_STREAM.pack(Method.ZSTD, len(packed)), packed]
    parts.append(data[whole:])
    return parts


def _decode_grouped(payload: memoryview, width: int, length: int) -> bytes:
    whole = length - length % width
    per_stream = whole // width
    # Read the whole stream table first: a truncated or inconsistent frame fails before the
    # output is allocated.
    streams: list[tuple[int, memoryview]] = []
    offset = 0
    for i in range(width):
        if offset + _STREAM.size > len(payload):
            raise CorruptFrame(_truncated(i))
        method, stored = _STREAM.unpack_from(payload, offset)
        offset += _STREAM.size
        body = payload[offset : offset + stored]
        if len(body) != stored:
            raise CorruptFrame(_truncated(i))
        offset += stored
        if method == Method.RAW:
            if stored != per_stream:
                raise CorruptFrame(
                    f"stream {i} of a chunk frame stores {stored} bytes where {per_stream} "
                    "belong: the chunk is damaged; fetch it again"
                )
        elif method == Method.ZSTD:
            _check_zstd_header(body, per_stream)
        else:
            raise CorruptFrame(f"stream {i} of a chunk frame names an unknown method {method}")
        streams.append((method, body))
    tail = payload[offset:]
    if len(tail) != length - whole:
        raise CorruptFrame(
            f"a chunk frame ends with {len(tail)} bytes after its streams where "
            f"{length - whole} belong: the chunk is truncated or damaged; fetch it again"
        )
    out = bytearray(length)
    for i, (method, body) in enumerate(streams):
        if method == Method.RAW:
            out[i:whole:width] = body.tobytes()  # a strided copy from bytes is faster
        else:
            out[i:whole:width] = _decompress_exact(body, per_stream)
    out[whole:] = tail
    return bytes(out)


def _check_zstd_header(packed: memoryview, length: int) -> None:
    """Refuse a zstd frame whose header does not parse or does not promise `length` bytes."""
    try:
        params = zstandard.get_frame_parameters(packed)
    except zstandard.ZstdError as error:
        raise CorruptFrame(
            f"a chunk frame's zstd stream is damaged ({error}); fetch it again"
        ) from None
    if params.content_size != length:
        # Also refuses frames without a content size (CONTENTSIZE_UNKNOWN): encode writes it.
        raise CorruptFrame(
            f"a chunk frame's zstd stream claims {params.content_size} bytes where {length} "
            "belong: the chunk is damaged; fetch it again"
        )


def _decompress_exact(packed: memoryview, length: int) -> bytes:
    """Decompress one zstd frame that must give exactly `length` bytes and nothing after it."""
    _check_zstd_header(packed, length)
    try:
        # The output buffer is the content size checked above, never more; zstd's checksum
        # catches damaged content, allow_extra_data=False a frame followed by anything.
        data = _decompressor().decompress(packed, allow_extra_data=False)
    except zstandard.ZstdError as error:
        raise CorruptFrame(
            f"a chunk frame's zstd stream does not decode ({error}): the chunk is damaged; "
            "fetch it again"
        ) from None
    if len(data) != length:
        raise CorruptFrame(
            f"a chunk frame's zstd stream gave {len(data)} bytes where {length} belong"
        )
    return data


def _truncated(stream: int) -> str:
    return f"a chunk frame ends inside stream {stream}: the chunk is truncated; fetch it again"
