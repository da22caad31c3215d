"""Answering a download of one blob over HTTP, from whatever store holds it: the bytes read
through `BlobStore.read_range` in 1 MiB pieces, `Range` (206, several ranges as
multipart/byteranges, 416 for none inside the blob), `If-Range`, and an `ETag` that is the
blob's hash; or, when asked to `presign` and the store can, a 307 redirect to a short-lived
presigned URL of the store, so that the bytes go from the store to the client directly (the
redirect carries no token: the URL is signed with the store's own key). Built on Starlette's
public `StreamingResponse`, so no private behaviour of the framework is relied on. The API's
blob route and the console's file download both answer with `blob_response`.

A blob assembled from chunks (lmvp_server/services/chunks.py) is served the same way, its bytes
decoded from its chunks' frames in order (`read_chunked`), never presigned (the store holds no
object of it). Each chunk is checked against its sha256 before any of its bytes go out: a
damaged or lost chunk is never served as good; the download answers 500 `chunk_damaged` if it
is the first piece, and is cut short otherwise (the client sees fewer bytes than
Content-Length)."""

from __future__ import annotations

import bisect
import itertools
import logging
import re
import secrets
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.responses import Response, StreamingResponse

from lmvp_server.chunk_frames import BadFrame, verified_chunk
from lmvp_server.errors import APIError, error_body
from lmvp_server.models import Blob
from lmvp_server.numbers import clamp_digits
from lmvp_server.services.blobs import blob_not_found
from lmvp_server.services.chunks import ChunkSpan, chunk_spans
from lmvp_server.storage import BlobMissing, BlobStore, ChunkMissing

log = logging.getLogger(__name__)

# A download is read and sent in pieces of this size: Starlette's 64 KiB file default throttled
# a download to less than half of what 1 MiB gives.
CHUNK_BYTES = 1024 * 1024
_MEDIA_TYPE = "application/octet-stream"
_RANGE = re.compile(r"^\s*([0-9]*)\s*-\s*([0-9]*)\s*$")
# More ranges than this in one request are ignored and the whole blob is sent.
_MAX_RANGES = 100


def blob_response(
    request: Request, store: BlobStore, project: str, blob: Blob, *, presign: int = 0
) -> Response:
    """Stream `blob` of `project` from `store` as the request asks (whole, or its `Range`),
    or with `presign` (seconds) redirect to a presigned URL of the store valid that long.

    Raises APIError 404 when the store lacks the blob's bytes; a `Range` with nothing inside
    the blob answers 416 naming the blob's size."""
    sha256 = blob.sha256
    read: Callable[[int, int], Iterator[bytes]]
    if blob.chunked:
        spans = chunk_spans(blob)
        size = blob.size
        modified: float | None = blob.created_at.timestamp()

        def read(start: int, end: int) -> Iterator[bytes]:
            return read_chunked(store, sha256, spans, start, end)

    else:
        held = store.stat(sha256)
        if held is None:
            raise blob_not_found(sha256, project)
        if presign:
            url = store.presigned_url(sha256, presign)
            if url is not None:
                # 307 keeps the method and the Range header; the URL expires, so is never cached.
                return Response(
                    status_code=307,
                    headers={"Location": url, "Cache-Control": "no-store", "ETag": f'"{sha256}"'},
                )
        size, modified = held.size, held.modified

        def read(start: int, end: int) -> Iterator[bytes]:
            return store.read_range(sha256, start, end, chunk_size=CHUNK_BYTES)

    headers = {
        "Accept-Ranges": "bytes",
        "ETag": f'"{sha256}"',
        # Content addressed: the bytes behind this URL never change.
        "Cache-Control": "private, max-age=31536000, immutable",
    }
    if modified is not None:
        headers["Last-Modified"] = formatdate(modified, usegmt=True)
    range_header = request.headers.get("range")
    ranges: list[tuple[int, int]] | None = None
    if range_header and _range_applies(request, headers):
        try:
            ranges = parse_byte_ranges(range_header, size)
        except RangeNotSatisfiableError:
            return JSONResponse(
                error_body(
                    "range_not_satisfiable",
                    f"range {range_header!r} lies outside the blob's {size} bytes",
                ),
                status_code=416,
                headers={"Content-Range": f"bytes */{size}"},
            )
    if not ranges:
        return _streamed(200, _first_piece_read(read(0, size), project), size, headers)
    if len(ranges) == 1:
        start, end = ranges[0]
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        body = _first_piece_read(read(start, end), project)
        return _streamed(206, body, end - start, headers)
    boundary = secrets.token_hex(13)
    parts = [(start, end, _part_head(boundary, start, end, size)) for start, end in ranges]
    closing = f"--{boundary}--".encode("latin-1")
    length = sum(len(head) + (end - start) + 2 for start, end, head in parts) + len(closing)
    headers["Content-Type"] = f"multipart/byteranges; boundary={boundary}"
    body = _first_piece_read(_multipart(read, parts, closing), project)
    return _streamed(206, body, length, headers)


class DamagedChunk(Exception):
    """A chunk of a chunked blob is lost from the store or no longer decodes to its sha256."""

    def __init__(self, blob: str, chunk: str, reason: str) -> None:
        super().__init__(f"chunk {chunk} of blob {blob} {reason}")
        self.blob = blob
        self.chunk = chunk


def read_chunked(
    store: BlobStore, sha256: str, spans: Sequence[ChunkSpan], start: int, end: int
) -> Iterator[bytes]:
    """Bytes `start` to `end` (exclusive) of a chunked blob whose chunks are `spans`, decoded
    from the store's frames, each chunk checked against its sha256 before any of it is given
    out; the next chunk is read and checked on a thread of its own while this one is sent.
    Raises `DamagedChunk` for a chunk the store lost or that does not check out."""
    first = max(bisect.bisect_right([s.offset for s in spans], start) - 1, 0)
    wanted = [s for s in spans[first:] if s.offset < end and s.offset + s.size > start]

    def load(span: ChunkSpan) -> bytes:
        try:
            return verified_chunk(store.read_chunk(span.sha256), span.sha256, span.size)
        except ChunkMissing:
            log.error("blob %s: the store has lost chunk %s", sha256, span.sha256)
            raise DamagedChunk(sha256, span.sha256, "is missing from the store") from None
        except BadFrame as exc:
            log.error("blob %s: stored chunk %s is damaged: %s", sha256, span.sha256, exc)
            raise DamagedChunk(sha256, span.sha256, f"is damaged in the store ({exc})") from None

    if not wanted:
        return
    with ThreadPoolExecutor(1) as pool:
        ahead = pool.submit(load, wanted[0])
        for i, span in enumerate(wanted):
            raw = ahead.result()
            if i + 1 < len(wanted):
                ahead = pool.submit(load, wanted[i + 1])
            view = memoryview(raw)[max(start - span.offset, 0) : min(end - span.offset, span.size)]
            for at in range(0, len(view), CHUNK_BYTES):
                yield bytes(view[at : at + CHUNK_BYTES])


def _streamed(status: int, body: Iterator[bytes], length: int, headers: dict[str, str]) -> Response:
    # A synchronous iterator: Starlette reads each piece on a worker thread.
    response = StreamingResponse(body, status_code=status, headers=headers, media_type=_MEDIA_TYPE)
    response.headers["Content-Length"] = str(length)
    return response


def _first_piece_read(body: Iterator[bytes], project: str) -> Iterator[bytes]:
    """`body` with its first piece read now, before any header is sent: a store that cannot
    deliver the bytes (an object store that is down, or just restarted and not yet serving its
    data) answers with its own error (503 and Retry-After) instead of a 200 cut at byte 0,
    which a client can only take for a broken connection."""
    try:
        first = next(body)
    except StopIteration:
        return iter(())
    except BlobMissing as missing:  # removed since the stat a moment ago
        raise blob_not_found(missing.sha256, project) from None
    except DamagedChunk as damaged:
        raise APIError(
            500,
            "chunk_damaged",
            f"{damaged}: the server will not serve these bytes as the file; its operator must "
            "restore the chunk (or send the file again to this project)",
            details={"chunk": damaged.chunk},
        ) from None
    return itertools.chain((first,), body)


def _part_head(boundary: str, start: int, end: int, size: int) -> bytes:
    return (
        f"--{boundary}\r\n"
        f"Content-Type: {_MEDIA_TYPE}\r\n"
        f"Content-Range: bytes {start}-{end - 1}/{size}\r\n"
        "\r\n"
    ).encode("latin-1")


def _multipart(
    read: Callable[[int, int], Iterator[bytes]], parts: list[tuple[int, int, bytes]], closing: bytes
) -> Iterator[bytes]:
    for start, end, head in parts:
        yield head
        yield from read(start, end)
        yield b"\r\n"
    yield closing


class RangeNotSatisfiableError(ValueError):
    """No range of a `Range` header lies inside the blob, or the header is malformed."""


def parse_byte_ranges(header: str, size: int) -> list[tuple[int, int]] | None:
    """The `(start, end)` byte ranges (end exclusive) a `Range` header asks of `size` bytes,
    sorted with overlaps merged; None when the header is to be ignored and the whole blob sent
    (a unit other than bytes, or more ranges than it is worth serving, RFC 9110 §14.2).

    Ranges that start past the end are dropped (§14.1.1); raises `RangeNotSatisfiableError`
    when none is left, or when the header is malformed.
    """
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes":
        return None
    parts = spec.split(",")
    if len(parts) > _MAX_RANGES:
        return None
    ranges = []
    for part in parts:
        match = _RANGE.match(part)
        if not match or not any(match.groups()):
            raise RangeNotSatisfiableError(f"malformed range {part.strip()!r}")
        # Positions past 2**63 are past any blob's end (and int() refuses 4,300 digits).
        first, last = (clamp_digits(g) if g else None for g in match.groups())
        if first is not None:
            if last is not None and last < first:
                raise RangeNotSatisfiableError(f"range {part.strip()!r} ends before it starts")
            if first < size:
                ranges.append((first, min(last + 1, size) if last is not None else size))
        elif last is not None and last > 0 and size > 0:  # suffix: the last N bytes
            ranges.append((max(size - last, 0), size))
    if not ranges:
        raise RangeNotSatisfiableError("no range lies inside the blob")
    ranges.sort()
    merged = [ranges[0]]
    for start, end in ranges[1:]:
        if start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _satisfiable(header: str, size: int) -> bool:
    try:
        parse_byte_ranges(header, size)
    except RangeNotSatisfiableError:
        return False
    return True


def _range_applies(request: Request, headers: dict[str, str]) -> bool:
    """False when `If-Range` names another version (neither the ETag nor the Last-Modified
    date of this one): then the whole blob is sent (RFC 9110 §13.1.5)."""
    if_range = request.headers.get("if-range")
    return if_range is None or (
        not if_range.startswith("W/")
        and if_range in (headers["ETag"], headers.get("Last-Modified"))
    )
