"""Answering a download of one blob over HTTP: the bytes from the blob store in 4 MiB chunks,
`Range` (206, several ranges as multipart/byteranges, 416 for none inside the blob), `If-Range`
and an `ETag` that is the blob's hash. The API's blob route and the console's file download
both answer with `blob_response`."""

from __future__ import annotations

import re

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.responses import FileResponse, RangeNotSatisfiable, Response

from lmvp_server.errors import error_body
from lmvp_server.models import Blob
from lmvp_server.numbers import clamp_digits
from lmvp_server.services.blobs import blob_not_found
from lmvp_server.storage import BlobStore

_RANGE = re.compile(r"^\s*([0-9]*)\s*-\s*([0-9]*)\s*$")
# More ranges than this in one request are ignored and the whole blob is sent.
_MAX_RANGES = 100


def blob_response(request: Request, store: BlobStore, project: str, blob: Blob) -> Response:
    """Stream `blob` of `project` from `store` as the request asks (whole, or its `Range`).

    Raises APIError 404 when the store lacks the blob's bytes; a `Range` with nothing inside
    the blob answers 416 naming the blob's size."""
    sha256 = blob.sha256
    path = store.local_path(sha256)
    if path is None or not path.is_file():
        raise blob_not_found(sha256, project)
    range_header = request.headers.get("range")
    if (
        range_header
        and _range_applies(request, sha256)
        and not _satisfiable(range_header, blob.size)
    ):
        return JSONResponse(
            error_body(
                "range_not_satisfiable",
                f"range {range_header!r} lies outside the blob's {blob.size} bytes",
            ),
            status_code=416,
            headers={"Content-Range": f"bytes */{blob.size}"},
        )
    return BlobFileResponse(
        path,
        media_type="application/octet-stream",
        headers={
            "ETag": f'"{sha256}"',
            # Content addressed: the bytes behind this URL never change.
            "Cache-Control": "private, max-age=31536000, immutable",
        },
    )


class BlobFileResponse(FileResponse):
    # Starlette's 64 KiB default throttles a download to less than half of what 1 MiB gives.
    chunk_size = 4 * 1024 * 1024

    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        # Serve exactly the ranges `blob_response` checked; [] means the whole blob.
        try:
            return parse_byte_ranges(http_range, file_size) or []
        except RangeNotSatisfiableError:
            raise RangeNotSatisfiable(file_size) from None


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


def _range_applies(request: Request, sha256: str) -> bool:
    """False when `If-Range` names another version: then the whole blob is sent (§13.1.5)."""
    if_range = request.headers.get("if-range")
    return if_range is None or if_range == f'"{sha256}"'
