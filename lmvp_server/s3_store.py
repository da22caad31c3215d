"""`S3BlobStore`: blobs as objects `<prefix>/blobs/ab/cd/<sha256>` of a bucket in any
S3-compatible object store (AWS S3, MinIO, SeaweedFS, Ceph RGW, R2), through boto3, and chunks'
frames as objects `<prefix>/chunks/ab/cd/<sha256>` (one PUT each).

An object appears whole or not at all (a PUT, or the completion of a multipart upload, is
atomic in S3), so a reader never sees part of a blob. Adopting a blob the bucket already holds
writes nothing. Large blobs go up as multipart uploads through boto3's transfer manager, several
parts at once; reads are ranged GETs streamed in pieces. A store that cannot be reached raises
`StoreUnavailable` (503 with Retry-After); `check` at start turns bad credentials or a missing
bucket into a `BlobStoreConfigError` that names the setting to fix. A multipart upload cut by
the store going down may stay behind as an incomplete upload: a bucket lifecycle rule
(AbortIncompleteMultipartUpload) removes those.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn

from lmvp_server.s3 import S3Location, error_code, s3_client, store_unreachable
from lmvp_server.storage import (
    CHUNK_PREFIX,
    READ_CHUNK,
    BlobMissing,
    BlobStat,
    BlobStore,
    BlobStoreConfigError,
    ChunkMissing,
    StoreUnavailable,
)

if TYPE_CHECKING:
    from boto3.s3.transfer import TransferConfig
    from mypy_boto3_s3 import S3Client

    from lmvp_server.settings import Settings

log = logging.getLogger(__name__)

# Blobs at least this large go up in parts, this large each, several at once.
MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNK = 32 * 1024 * 1024
UPLOAD_CONCURRENCY = 4
# Blobs are opaque bytes: a presigned download says so (not text/plain).
_OBJECT_ARGS = {"ContentType": "application/octet-stream"}
_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_CREDENTIAL_HINTS = {
    "InvalidAccessKeyId": "the store knows no such access key: check AWS_ACCESS_KEY_ID",
    "SignatureDoesNotMatch": "the secret key does not match the access key: check "
    "AWS_SECRET_ACCESS_KEY",
    "InvalidToken": "the session token is invalid: check AWS_SESSION_TOKEN",
    "ExpiredToken": "the session token has expired: renew the credentials",
    "AccessDenied": "the credentials may not use this bucket: grant them s3:ListBucket, "
    "s3:GetObject, s3:PutObject and s3:DeleteObject on it",
    "403": "the credentials were refused (wrong keys, or no s3:ListBucket on the bucket): check "
    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
}


class S3BlobStore(BlobStore):
    """Blobs in `location` of the store `client` talks to."""

    def __init__(self, client: S3Client, location: S3Location, *, endpoint: str = "") -> None:
        self.client = client
        self.location = location
        # For messages: where the store is.
        self.endpoint = endpoint or "AWS S3"
        self._transfer: TransferConfig | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> S3BlobStore:
        location = settings.s3_location
        assert location is not None, "LMVP_BLOB_STORE names no bucket"
        return cls(s3_client(settings), location, endpoint=settings.s3_endpoint_url)

    def key(self, sha256: str) -> str:
        """The object key of blob `sha256`."""
        return self.location.key("blobs", sha256[:2], sha256[2:4], sha256)

    # --- the BlobStore seam ---------------------------------------------------------------------

    def stat(self, sha256: str) -> BlobStat | None:
        try:
            head = self.client.head_object(Bucket=self.location.bucket, Key=self.key(sha256))
        except Exception as exc:
            if error_code(exc) in _MISSING_CODES:
                return None
            self._fail(exc, f"look up blob {sha256}")
        return BlobStat(size=head["ContentLength"], modified=head["LastModified"].timestamp())

    def read_range(
        self, sha256: str, start: int, end: int, *, chunk_size: int = READ_CHUNK
    ) -> Iterator[bytes]:
        if start >= end:
            if self.stat(sha256) is None:
                raise BlobMissing(sha256)
            return
        try:
            response = self.client.get_object(
                Bucket=self.location.bucket, Key=self.key(sha256), Range=f"bytes={start}-{end - 1}"
            )
        except Exception as exc:
            code = error_code(exc)
            if code in _MISSING_CODES:
                raise BlobMissing(sha256) from None
            if code == "InvalidRange":
                raise OSError(f"blob {sha256} ends before byte {start}") from None
            self._fail(exc, f"read blob {sha256}")
        body = response["Body"]
        position = start
        try:
            while position < end:
                try:
                    chunk = body.read(min(chunk_size, end - position))
                except Exception as exc:
                    self._fail(exc, f"read blob {sha256} at byte {position}")
                if not chunk:
                    raise OSError(f"blob {sha256} ends at byte {position}, before byte {end}")
                position += len(chunk)
                yield chunk
        finally:
            body.close()

    def adopt(self, src: Path, sha256: str) -> None:
        if not self.holds(sha256):
            try:
                self.client.upload_file(
                    str(src),
                    self.location.bucket,
                    self.key(sha256),
                    ExtraArgs=_OBJECT_ARGS,
                    Config=self._config(),
                )
            except Exception as exc:
                self._fail(exc, f"store blob {sha256}")
        src.unlink(missing_ok=True)

    def adopt_stream(self, stream: BinaryIO, sha256: str) -> None:
        if not self.holds(sha256):
            self.put_stream(stream, sha256)

    def put_stream(self, stream: BinaryIO, sha256: str) -> None:
        """Store what `stream` gives as blob `sha256`, replacing what the bucket holds there
        (`blobs migrate` replaces an object of the wrong size). An exception `stream` raises
        abandons the upload: nothing is stored."""
        try:
            self.client.upload_fileobj(
                stream,
                self.location.bucket,
                self.key(sha256),
                ExtraArgs=_OBJECT_ARGS,
                Config=self._config(),
            )
        except Exception as exc:
            self._fail(exc, f"store blob {sha256}")

    def delete(self, sha256: str) -> None:
        try:
            self.client.delete_object(Bucket=self.location.bucket, Key=self.key(sha256))
        except Exception as exc:
            if error_code(exc) in _MISSING_CODES:
                return
            self._fail(exc, f"delete blob {sha256}")

    def delete_many(self, hashes: list[str]) -> None:
        """Remove these blobs, a thousand to a request (S3's DeleteObjects)."""
        for start in range(0, len(hashes), 1000):
            batch = hashes[start : start + 1000]
            try:
                answer = self.client.delete_objects(
                    Bucket=self.location.bucket,
                    Delete={"Objects": [{"Key": self.key(h)} for h in batch], "Quiet": True},
                )
            except Exception as exc:
                self._fail(exc, f"delete {len(batch)} blobs")
            failed = [e for e in answer.get("Errors", []) if e.get("Code") not in _MISSING_CODES]
            if failed:
                log.error("the object store kept %d blobs it was asked to delete", len(failed))
                raise StoreUnavailable(
                    f"the blob store at {self.endpoint} refused to delete {len(failed)} blobs "
                    f"({failed[0].get('Code')}: {failed[0].get('Message')}); try again later"
                )

    def iter_blobs(self) -> Iterator[tuple[str, BlobStat]]:
        prefix = self.location.key("blobs") + "/"
        pages = self.client.get_paginator("list_objects_v2")
        try:
            for page in pages.paginate(Bucket=self.location.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    name = item["Key"].rsplit("/", 1)[-1]
                    if len(name) == 64 and item["Key"] == self.key(name):
                        yield name, BlobStat(item["Size"], item["LastModified"].timestamp())
        except Exception as exc:
            self._fail(exc, "list the blobs")

    def put_chunks(self, frames: Sequence[tuple[str, bytes]]) -> None:
        """One PUT per frame (atomic in S3), a few at once."""
        if len(frames) <= 1:
            for sha256, frame in frames:
                self._put_chunk(sha256, frame)
            return
        with ThreadPoolExecutor(min(len(frames), UPLOAD_CONCURRENCY)) as pool:
            for done in [pool.submit(self._put_chunk, sha, frame) for sha, frame in frames]:
                done.result()

    def _put_chunk(self, sha256: str, frame: bytes) -> None:
        try:
            self.client.put_object(
                Bucket=self.location.bucket,
                Key=self.chunk_key(sha256),
                Body=frame,
                **_OBJECT_ARGS,  # type: ignore[arg-type]
            )
        except Exception as exc:
            self._fail(exc, f"store chunk {sha256}")

    def read_chunk(self, sha256: str) -> bytes:
        try:
            response = self.client.get_object(
                Bucket=self.location.bucket, Key=self.chunk_key(sha256)
            )
            body = response["Body"]
            try:
                return body.read()
            finally:
                body.close()
        except Exception as exc:
            if error_code(exc) in _MISSING_CODES:
                raise ChunkMissing(sha256) from None
            self._fail(exc, f"read chunk {sha256}")

    def delete_chunks(self, hashes: list[str]) -> None:
        """Remove these chunks' frames, a thousand to a request (S3's DeleteObjects)."""
        for start in range(0, len(hashes), 1000):
            batch = hashes[start : start + 1000]
            try:
                answer = self.client.delete_objects(
                    Bucket=self.location.bucket,
                    Delete={"Objects": [{"Key": self.chunk_key(h)} for h in batch], "Quiet": True},
                )
            except Exception as exc:
                self._fail(exc, f"delete {len(batch)} chunks")
            failed = [e for e in answer.get("Errors", []) if e.get("Code") not in _MISSING_CODES]
            if failed:
                raise StoreUnavailable(
                    f"the blob store at {self.endpoint} refused to delete {len(failed)} chunks "
                    f"({failed[0].get('Code')}: {failed[0].get('Message')}); try again later"
                )

    def holds_chunk(self, sha256: str) -> bool:
        """Whether the bucket holds a frame for chunk `sha256` (`blobs migrate`)."""
        try:
            self.client.head_object(Bucket=self.location.bucket, Key=self.chunk_key(sha256))
        except Exception as exc:
            if error_code(exc) in _MISSING_CODES:
                return False
            self._fail(exc, f"look up chunk {sha256}")
        return True

    def chunk_key(self, sha256: str) -> str:
        """The object key of chunk `sha256`'s frame."""
        return self.location.key(CHUNK_PREFIX, sha256[:2], sha256[2:4], sha256)

    def presigned_url(self, sha256: str, seconds: int) -> str | None:
        """A SigV4 presigned GET of the blob, valid `seconds`: signed here, with no request
        to the store; it carries the access key's id, never the secret or a user's token."""
        return self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.location.bucket, "Key": self.key(sha256)},
            ExpiresIn=seconds,
        )

    # --- start-up -------------------------------------------------------------------------------

    def check(self, *, create_bucket: bool = False) -> None:
        """Try the credentials and the bucket once, so that a store that cannot work stops the
        server at start with what to fix, not its first upload. A bucket that does not exist
        is created when `create_bucket` allows. Raises BlobStoreConfigError."""
        from botocore.exceptions import NoCredentialsError, PartialCredentialsError

        bucket = self.location.bucket
        where = f"bucket {bucket!r} at {self.endpoint}"
        try:
            self.client.list_objects_v2(
                Bucket=bucket, Prefix=self.location.key("blobs") + "/", MaxKeys=1
            )
            return
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise BlobStoreConfigError(
                f"no credentials for the object store ({exc}): set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or run where an instance role applies"
            ) from None
        except Exception as exc:
            code = error_code(exc)
            if code in _CREDENTIAL_HINTS:
                raise BlobStoreConfigError(
                    f"the object store refused the server's credentials for {where} ({code}): "
                    f"{_CREDENTIAL_HINTS[code]}"
                ) from None
            if code != "NoSuchBucket":
                reason = "cannot reach" if store_unreachable(exc) else "failed to use"
                raise BlobStoreConfigError(
                    f"the server {reason} the object store for {where} ({exc}): check "
                    "LMVP_S3_ENDPOINT_URL, LMVP_S3_REGION and that the store is running"
                ) from None
        if not create_bucket:
            raise BlobStoreConfigError(
                f"{where} does not exist: create it, or set LMVP_S3_CREATE_BUCKET=1 to let "
                "the server create it, or correct LMVP_BLOB_STORE"
            )
        self._create_bucket()
        log.warning("created %s for the server's blobs", where)

    def _create_bucket(self) -> None:
        bucket = self.location.bucket
        region = self.client.meta.region_name
        arguments: dict[str, Any] = {"Bucket": bucket}
        if region and region != "us-east-1" and self.endpoint == "AWS S3":
            arguments["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self.client.create_bucket(**arguments)
        except Exception as exc:
            if error_code(exc) in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return  # another worker made it first
            raise BlobStoreConfigError(
                f"could not create bucket {bucket!r} at {self.endpoint} ({exc}): create it "
                "yourself, or grant the credentials s3:CreateBucket"
            ) from None

    # --- helpers --------------------------------------------------------------------------------

    def _config(self) -> TransferConfig:
        if self._transfer is None:
            from boto3.s3.transfer import TransferConfig

            self._transfer = TransferConfig(
                multipart_threshold=MULTIPART_THRESHOLD,
                multipart_chunksize=MULTIPART_CHUNK,
                max_concurrency=UPLOAD_CONCURRENCY,
                use_threads=True,
            )
        return self._transfer

    def _fail(self, exc: Exception, doing: str) -> NoReturn:
        """Raise what `exc` means for the server: StoreUnavailable when the store could not
        answer (or refused, which an operator must look at: the log says which), else `exc`."""
        cause = _root_cause(exc)
        if store_unreachable(cause):
            log.warning("the object store could not %s: %s", doing, cause)
            raise StoreUnavailable(
                f"the blob store at {self.endpoint} cannot be reached right now; nothing stored "
                "was changed: try again shortly"
            ) from exc
        code = error_code(cause)
        if code:
            log.error("the object store refused to %s (%s): %s", doing, code, cause)
            raise StoreUnavailable(
                f"the blob store at {self.endpoint} refused to {doing} ({code}); the server's "
                "operator must look at its log: try again later"
            ) from exc
        raise exc


def _root_cause(exc: BaseException) -> BaseException:
    """The botocore error under boto3's transfer wrappers (S3UploadFailedError names it only
    in its message and its context)."""
    from boto3.exceptions import S3UploadFailedError

    seen = exc
    while isinstance(seen, S3UploadFailedError) and (seen.__cause__ or seen.__context__):
        seen = seen.__cause__ or seen.__context__  # type: ignore[assignment]
    return seen


__all__ = ["MULTIPART_CHUNK", "MULTIPART_THRESHOLD", "S3BlobStore"]
