"""Why an upload cannot go on: the domain errors of `lmvp_server.upload_session` and
`lmvp_server.upload_lifecycle`, free of HTTP. The tus router and the local socket turn them into
their own answers (`lmvp_server.tus.tus_error_for`); `held` is the offset the upload stays at,
when the error knows it."""

from __future__ import annotations


class UploadError(Exception):
    """An append, or storing a finished upload, could not go on."""

    code = "upload_error"

    def __init__(self, message: str, *, held: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.held = held


class UploadGone(UploadError):
    """The upload is not the caller's, or no more: it finished, expired or was aborted."""

    code = "not_found"

    def __init__(self, upload_id: str) -> None:
        super().__init__(f"upload {upload_id} not found: it finished, expired or was aborted")
        self.upload_id = upload_id


class UploadBusy(UploadError):
    """Another request is appending to this upload right now."""

    code = "upload_busy"

    def __init__(self) -> None:
        super().__init__("another request is writing to this upload; retry")


class OffsetMismatch(UploadError):
    """The append does not start where the server's bytes end (`held`)."""

    code = "offset_mismatch"

    def __init__(self, held: int) -> None:
        super().__init__(
            f"the server holds {held} bytes of this upload; send from Upload-Offset {held}",
            held=held,
        )


class PastDeclaredLength(UploadError):
    """The append carries more bytes than the upload declared; nothing of it was kept."""

    code = "past_declared_length"

    def __init__(self, held: int, message: str) -> None:
        super().__init__(message, held=held)


class ChecksumMismatch(UploadError):
    """The finished upload's bytes are not the declared ones (hash or size); it was dropped."""

    code = "checksum_mismatch"

    def __init__(self, digest: str, declared: str) -> None:
        super().__init__(
            f"the bytes received hash to {digest}, not the declared {declared}: the file "
            "changed while it was sent, or was damaged on the way; nothing was stored: upload "
            "again"
        )
        self.digest = digest


class StoreFull(UploadError):
    """The server's disk filled up during an append; the upload was dropped with it."""

    code = "insufficient_storage"

    def __init__(self) -> None:
        super().__init__(
            "the server's disk is full, so this upload was dropped: free space on the server "
            "(or ask its admin to), then upload again; versions already stored are intact"
        )


__all__ = [
    "ChecksumMismatch",
    "OffsetMismatch",
    "PastDeclaredLength",
    "StoreFull",
    "UploadBusy",
    "UploadError",
    "UploadGone",
]
