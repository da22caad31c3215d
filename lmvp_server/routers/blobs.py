"""Blobs a project holds: which of a list it lacks, and streaming one (with HTTP Range)."""

from __future__ import annotations

import re

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select
from starlette.convertors import Convertor, register_url_convertor
from starlette.responses import FileResponse, RangeNotSatisfiable, Response

from lmvp_server.deps import CallerDep, SessionDep, load_project
from lmvp_server.errors import error_body, not_found
from lmvp_server.models import Blob, ProjectBlob, Role
from lmvp_server.numbers import clamp_digits
from lmvp_server.openapi import errors
from lmvp_server.schemas import MissingRequest, MissingResponse, ProjectName, Sha256

router = APIRouter(tags=["blobs"])

_RANGE = re.compile(r"^\s*([0-9]*)\s*-\s*([0-9]*)\s*$")
# More ranges than this in one request are ignored and the whole blob is sent.
_MAX_RANGES = 100


class Sha256Convertor(Convertor[str]):
    """A path segment that is a sha256, so that `GET .../blobs/missing` is not taken for a blob
    (and answers 405 naming POST, the method that path has, instead of 422)."""

    regex = "[0-9a-f]{64}"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("sha256", Sha256Convertor())


class BlobFileResponse(FileResponse):
    # Starlette's 64 KiB default throttles a download to less than half of what 1 MiB gives.
    chunk_size = 4 * 1024 * 1024

    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        # Serve exactly the ranges `download_blob` checked; [] means the whole blob.
        try:
            return parse_byte_ranges(http_range, file_size) or []
        except RangeNotSatisfiableError:
            raise RangeNotSatisfiable(file_size) from None


_BYTES = {"type": "string", "format": "binary"}


class RangeNotSatisfiableError(ValueError):
    """No range of a `Range` header lies inside the blob, or the header is malformed."""


@router.post(
    "/projects/{project}/blobs/missing",
    response_model=MissingResponse,
    responses=errors(400, 403, 404, 413, 422),
)
def missing_blobs(
    project: ProjectName, body: MissingRequest, caller: CallerDep, session: SessionDep
) -> MissingResponse:
    """Which of the given hashes this project lacks. A hash held only by other projects is
    missing: knowing a hash is no proof of having its bytes."""
    row, _ = load_project(session, caller, project, Role.contributor)
    wanted = list(dict.fromkeys(body.sha256))
    held = set(
        session.scalars(
            select(ProjectBlob.sha256).where(
                ProjectBlob.project_id == row.id, ProjectBlob.sha256.in_(wanted)
            )
        )
    )
    return MissingResponse(missing=[h for h in wanted if h not in held])


@router.get(
    "/projects/{project}/blobs/{sha256:sha256}",
    response_class=Response,
    responses={
        200: {
            "description": "The blob's bytes.",
            "content": {"application/octet-stream": {"schema": _BYTES}},
        },
        206: {
            "description": "The bytes of the asked range (or ranges, as multipart/byteranges).",
            "content": {
                "application/octet-stream": {"schema": _BYTES},
                "multipart/byteranges": {"schema": _BYTES},
            },
            "headers": {
                "Content-Range": {
                    "description": "`bytes <first>-<last>/<size>` (one range)",
                    "schema": {"type": "string"},
                }
            },
        },
        **errors(404, 416, 422),
    },
    openapi_extra={
        "parameters": [
            {
                "name": "Range",
                "in": "header",
                "required": False,
                "description": "`bytes=<first>-<last>`, `bytes=<first>-` or `bytes=-<suffix>`, "
                "comma-separated; a malformed or unsatisfiable one answers 416.",
                "schema": {"type": "string"},
            },
            {
                "name": "If-Range",
                "in": "header",
                "required": False,
                "description": 'The blob\'s ETag (`"<sha256>"`): any other value gets the '
                "whole blob.",
                "schema": {"type": "string"},
            },
        ]
    },
)
def download_blob(
    project: ProjectName, sha256: Sha256, request: Request, caller: CallerDep, session: SessionDep
) -> Response:
    """Stream a blob's bytes; honours `Range` (206) and answers 416 for ranges past the end."""
    row, _ = load_project(session, caller, project, Role.viewer)
    blob = session.scalar(
        select(Blob)
        .join(ProjectBlob, ProjectBlob.sha256 == Blob.sha256)
        .where(ProjectBlob.project_id == row.id, Blob.sha256 == sha256)
    )
    store = request.app.state.blob_store
    path = store.local_path(sha256) if blob is not None else None
    if blob is None or path is None or not path.is_file():
        raise not_found(f"blob {sha256} in project '{project}'")
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
