"""Reaching an S3-compatible object store: where in it the server keeps things (`S3Location`,
parsed from `LMVP_BLOB_STORE=s3://BUCKET/PREFIX`), the one way a boto3 client is made from the
settings (`s3_client`: endpoint, region, credentials the standard AWS way, retries, timeouts and
a connection pool sized for the server's threads), and which failures mean the store cannot be
reached right now (`store_unreachable`) as opposed to a refusal.

Everything the server stores in a bucket lives under the location's prefix: blobs under
`<prefix>/blobs/` (`lmvp_server.s3_store`), other kinds of object under their own folder
(`S3Location.key`). boto3 is imported only when a client is made, so a server on the local
store does not pay for it.
"""

from __future__ import annotations

import builtins
import ipaddress
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from lmvp_server.settings import Settings

SCHEME = "s3://"
# Bucket names as S3 allows them (3-63 characters; dots, dashes, lowercase and digits).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
# Connections each client may keep open: the server streams from threads (Starlette's pool
# of 40, the transfer manager's workers), and a connection waited for is a stalled download.
MAX_POOL_CONNECTIONS = 64
# Seconds to wait to connect, and for a response to go on, before retrying.
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 60.0
# Attempts per request in botocore's "standard" mode: transient failures retried with backoff.
MAX_ATTEMPTS = 3
# The HTTP statuses of an S3 answer that mean "not now" rather than "no".
_UNAVAILABLE_STATUSES = frozenset({500, 502, 503, 504})


class S3LocationError(ValueError):
    """`LMVP_BLOB_STORE` does not name a bucket the way the server understands."""


@dataclass(frozen=True)
class S3Location:
    """A bucket and a prefix inside it (no leading or trailing slash; may be empty)."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """`s3://BUCKET` or `s3://BUCKET/PREFIX` as a location; raises S3LocationError saying
        what is wrong otherwise."""
        if not url.startswith(SCHEME):
            raise S3LocationError(
                f"LMVP_BLOB_STORE={url!r} is neither 'local' nor 's3://BUCKET/PREFIX'"
            )
        bucket, _, prefix = url[len(SCHEME) :].partition("/")
        if not _BUCKET.match(bucket):
            raise S3LocationError(
                f"{url!r} names no valid bucket: a bucket name is 3 to 63 characters of "
                "lowercase letters, digits, dots and dashes (s3://BUCKET/PREFIX)"
            )
        prefix = prefix.strip("/")
        if "//" in prefix:
            raise S3LocationError(f"the prefix of {url!r} has an empty folder ('//')")
        return cls(bucket=bucket, prefix=prefix)

    def key(self, *parts: str) -> str:
        """The object key of `parts` (joined by '/') under this location's prefix."""
        return "/".join(p for p in (self.prefix, *parts) if p)

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}" if self.prefix else f"{SCHEME}{self.bucket}"


def s3_client(settings: Settings, *, sign_payload: bool = True) -> S3Client:
    """A boto3 S3 client as the settings say: `LMVP_S3_ENDPOINT_URL` (empty: AWS),
    `LMVP_S3_REGION` (empty: the AWS configuration's), credentials found the standard AWS way
    (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, the shared files, an instance
    role). Path-style addressing for a custom endpoint (MinIO, SeaweedFS, Ceph take it; a
    loopback address has no bucket sub-domains). A client is safe to share between threads.

    Without `sign_payload`, request bodies are not hashed into the signature (UNSIGNED-PAYLOAD,
    which botocore otherwise uses only over HTTPS): for a client whose bodies either travel a
    protected link (`link_protected`) or carry a Content-MD5 that the store checks (the upload
    staging's parts and tails), which spares a sha256 of every byte here and another in the
    store."""
    import boto3
    from botocore.config import Config

    endpoint = settings.s3_endpoint_url or None
    config = Config(
        region_name=settings.s3_region or None,
        signature_version="s3v4",
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
        max_pool_connections=MAX_POOL_CONNECTIONS,
        s3={
            "addressing_style": "path" if endpoint else "auto",
            **({} if sign_payload else {"payload_signing_enabled": False}),
        },
        # Checksums only where S3 requires them: several S3-compatible stores refuse the
        # trailing CRC checksums botocore adds by default since 1.36. Integrity is the
        # server's own sha256 check, end to end.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=endpoint, config=config)


def link_protected(endpoint_url: str) -> bool:
    """Whether bytes sent to the store at `endpoint_url` arrive as they were sent without a
    checksum of our own: over HTTPS, where TLS authenticates every record, or to this machine,
    where there is no wire to tamper with. An empty endpoint is AWS's own, over HTTPS. Over plain
    HTTP to another host, a man in the middle could change a body undetected unless a signed
    header (Content-MD5) commits to it."""
    if not endpoint_url:
        return True
    url = urlsplit(endpoint_url)
    if url.scheme.lower() == "https":
        return True
    host = (url.hostname or "").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def store_unreachable(exc: BaseException) -> bool:
    """Whether `exc` (raised by boto3/botocore) means the store cannot answer right now (down,
    unreachable, timing out, overloaded: try again later) rather than that it refused."""
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        ConnectionError,
        HTTPClientError,
        IncompleteReadError,
        ReadTimeoutError,
    )

    if isinstance(
        exc, ConnectionError | ConnectionClosedError | ReadTimeoutError | IncompleteReadError
    ):
        return True
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return status in _UNAVAILABLE_STATUSES
    # Sockets refused, reset or timing out (not a local file that is missing).
    return isinstance(exc, HTTPClientError | builtins.ConnectionError | TimeoutError)


def error_code(exc: BaseException) -> str:
    """The S3 error code of a ClientError ('NoSuchKey', '404', 'InvalidAccessKeyId'...), or ''."""
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


__all__ = [
    "S3Location",
    "S3LocationError",
    "error_code",
    "link_protected",
    "s3_client",
    "store_unreachable",
]
