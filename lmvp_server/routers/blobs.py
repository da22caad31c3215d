"""Blobs a project holds: which of a list it lacks, and streaming one (with HTTP Range)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.convertors import Convertor, register_url_convertor
from starlette.responses import Response

from lmvp_server.blob_download import blob_response
from lmvp_server.context import CtxDep
from lmvp_server.deps import CallerDep, SessionDep
from lmvp_server.openapi import errors
from lmvp_server.schemas import MissingRequest, MissingResponse, ProjectName, Sha256
from lmvp_server.services import blobs
from lmvp_server.upload_staging_s3 import wants_hash_first

router = APIRouter(tags=["blobs"])


class Sha256Convertor(Convertor[str]):
    """A path segment that is a sha256, so that `GET .../blobs/missing` is not taken for a blob
    (and answers 405 naming POST, the method that path has, instead of 422)."""

    regex = "[0-9a-f]{64}"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("sha256", Sha256Convertor())


_BYTES = {"type": "string", "format": "binary"}


HASH_FIRST_HEADER = "LMVP-Hash-First"


@router.post(
    "/projects/{project}/blobs/missing",
    response_model=MissingResponse,
    responses={
        200: {
            "headers": {
                HASH_FIRST_HEADER: {
                    "description": "`1` when large files are best hashed before they are "
                    "uploaded, so that the upload declares its sha256.",
                    "schema": {"type": "string", "enum": ["1"]},
                }
            }
        },
        **errors(400, 403, 404, 413, 422),
    },
)
def missing_blobs(
    project: ProjectName,
    body: MissingRequest,
    caller: CallerDep,
    session: SessionDep,
    ctx: CtxDep,
    response: Response,
) -> MissingResponse:
    """Which of the given hashes this project lacks. A hash held only by other projects is
    missing: knowing a hash is no proof of having its bytes. `LMVP-Hash-First: 1` tells a
    client that this server stores a large file faster when its upload declares the sha256
    (blobs in an object store) than when it is sent while being hashed."""
    missing = blobs.missing_blobs(
        session, caller, project, body.sha256, claim_seconds=ctx.settings.gc_grace_seconds
    )
    if wants_hash_first(ctx.blob_store, ctx.sessions, ctx.settings):
        response.headers[HASH_FIRST_HEADER] = "1"
    return MissingResponse(missing=missing)


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
        307: {
            "description": "With `LMVP_S3_PRESIGN=1`: the bytes are at `Location`, a presigned "
            "URL of the object store valid `LMVP_S3_PRESIGN_SECONDS`; send the same request "
            "there, without the `Authorization` header. `?redirect=false` streams instead.",
            "headers": {"Location": {"schema": {"type": "string"}}},
        },
        **errors(
            404,
            416,
            422,
            503,
            notes={
                503: "The blob store cannot be reached right now; nothing was changed: retry "
                "after `Retry-After` seconds."
            },
        ),
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
    project: ProjectName,
    sha256: Sha256,
    request: Request,
    ctx: CtxDep,
    caller: CallerDep,
    session: SessionDep,
    redirect: bool = True,
) -> Response:
    """Stream a blob's bytes; honours `Range` (206) and answers 416 for ranges past the end.
    With presigned downloads on (and `redirect`), answers 307 to the object store instead."""
    blob = blobs.find_blob(session, caller, project, sha256)
    settings = ctx.settings
    presign = settings.s3_presign_seconds if settings.s3_presign and redirect else 0
    return blob_response(request, ctx.blob_store, project, blob, presign=presign)
