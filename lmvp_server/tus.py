"""The tus 1.0 wire vocabulary shared by the tus router and the local upload socket: the
protocol version, the headers every answer carries, tus errors, and how an upload's domain
errors (`lmvp_server.upload_errors`) become tus answers."""

from __future__ import annotations

from lmvp_server.errors import APIError
from lmvp_server.upload_errors import (
    ChecksumMismatch,
    OffsetMismatch,
    PastDeclaredLength,
    StoreFull,
    UploadBusy,
    UploadError,
    UploadGone,
)

TUS_VERSION = "1.0.0"

# The status of each domain error's answer; 460 is tus's checksum mismatch.
_STATUS: dict[type[UploadError], int] = {
    UploadGone: 404,
    OffsetMismatch: 409,
    PastDeclaredLength: 413,
    UploadBusy: 423,
    ChecksumMismatch: 460,
    StoreFull: 507,
}


def tus_headers(**extra: str) -> dict[str, str]:
    """`Tus-Resumable` and `extra`: the headers of a tus answer."""
    return {"Tus-Resumable": TUS_VERSION, **extra}


def tus_error(status: int, code: str, message: str, **headers: str) -> APIError:
    """An API error answered with the tus headers."""
    return APIError(status, code, message, headers=tus_headers(**headers))


def tus_error_for(exc: UploadError) -> APIError:
    """The tus answer to a domain error: its status, code and message, and `Upload-Offset`
    when the error names the offset the upload stays at."""
    status = next((s for kind, s in _STATUS.items() if isinstance(exc, kind)), 500)
    extra = {"Upload-Offset": str(exc.held)} if exc.held is not None else {}
    return tus_error(status, exc.code, exc.message, **extra)


__all__ = ["TUS_VERSION", "tus_error", "tus_error_for", "tus_headers"]
