"""Blobs a project holds: which of a list it lacks, and streaming one (with HTTP Range)."""

from __future__ import annotations

import re

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select
from starlette.responses import FileResponse, Response

from lmvp_server.deps import CallerDep, SessionDep, load_project
from lmvp_server.errors import error_body, not_found
from lmvp_server.models import Blob, ProjectBlob, Role
from lmvp_server.schemas import MissingRequest, MissingResponse, ProjectName, Sha256

router = APIRouter(tags=["blobs"])

_RANGE = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")


class BlobFileResponse(FileResponse):
    # Starlette's 64 KiB default throttles a download to less than half of what 1 MiB gives.
    chunk_size = 1024 * 1024


@router.post("/projects/{project}/blobs/missing", response_model=MissingResponse)
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
    "/projects/{project}/blobs/{sha256}",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}, 206: {}, 416: {}},
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
    if range_header and not _range_satisfiable(range_header, blob.size):
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


def _range_satisfiable(header: str, size: int) -> bool:
    """False when a `bytes=` range starts past the end (RFC 9110 §14.1.2) or is malformed."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or not spec:
        return False
    for part in spec.split(","):
        match = _RANGE.match(part)
        if not match:
            return False
        start, end = match.groups()
        if start:
            if int(start) >= size or (end and int(end) < int(start)):
                return False
        elif not end or int(end) == 0:
            return False
    return True
