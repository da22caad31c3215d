"""Where the bytes of an upload in progress wait when blobs live in an S3-compatible store: in the
store itself, as a multipart upload, so that any worker on any host continues any upload.

The mapping is tusd's s3store's. A tus upload is one multipart upload, created with the upload:
at the blob's own key when the upload declared its sha256 ("direct"; see below), else at the
staging key `<prefix>/uploads/<id>`. A PATCH's bytes go up in parts of
`part_size_for(length)` (at least 5 MiB, S3's minimum for all parts but the last; large enough
that 9,000 parts hold the longest upload, S3 allowing 10,000); bytes short of a part when the
PATCH ends wait in a small object of their own, the tail (`<id>.tail-<generation>-<offset>`),
which the next PATCH reads back and sends first. The database holds the truth
(`uploads.staged` = the parts' sizes + the tail's, the parts in `upload_parts` with their
ETags, the tail's key, the next part number), each change in one transaction after the store
took the bytes. What the store keeps is what the server hashed: parts and tails travel a link
nobody can change them on (HTTPS, or this machine's loopback: `s3.link_protected`), or else go
up with their Content-MD5, a signed header the store checks. MD5 costs 1.5 ms of CPU per MiB
here, the largest share of a worker's cost per byte, so it is paid only where it protects.

Who writes: a lease in the database (`uploads.writer`, `writer_until`, `generation`). A request
takes it if it is free or expired, renews it every second while bytes flow (`writer_until` =
now + the stall time + a margin), and records each part only while it still holds it (`UPDATE
... WHERE writer = me AND generation = g`): a writer that lost the lease (it stalled, its
process froze) notices at its next record and stops before anything of it counts. A newer
request sets `let_go`, which the writer reads every second and obeys (it keeps what it
recorded and answers 409); a dead writer's lease expires within the stall time and a margin.
A writer taking over from one whose lease expired starts two part numbers further on, so a
part the old writer was still sending can never replace one of the new writer's (S3 takes
part numbers with gaps; the completion lists the recorded ones).

Integrity, end to end: a blob is stored under a sha256 only if its bytes hash to it.

Direct uploads (the sha256 declared, the common case). The multipart upload is at the blob's
key, and a multipart upload in progress is invisible (no GET, no listing, no HEAD sees it):
completing it is what makes the object appear, atomically. So it is completed only after the
running sha256 of every byte equals the declared one and the parts add up to the length; on a
mismatch it is aborted, and nothing ever appears at the key, nor is anything already stored
there touched (aborting a multipart upload leaves the key's object alone). If the store holds
the blob already, the upload is aborted rather than completed. No byte is copied: this halves
what the store writes per upload. The parts of a multipart upload in progress cannot be read
back, so a worker taking over cannot re-hash them: instead the running sha256 is saved with
each part, in the same transaction that records the part under the lease
(`upload_parts.hash_state`, `lmvp_server.sha256_state`), and a worker taking over continues
the state of the last recorded part, which must account for exactly the bytes of the recorded
parts, then hashes the tail it reads back. The state was computed by the worker that received
those bytes and sent them over a protected link or with their MD5, which the store checked,
so it covers exactly the bytes the parts hold; a state that cannot be continued (missing,
another format, another count of bytes) drops the upload (460) rather than storing anything
unverified. Where the running state cannot be saved (`sha256_state.available()` false),
uploads use the staging key.

Staged uploads (no sha256 declared, or no savable state). The
worker that received every byte (the common case: one PATCH, or all PATCHes on one worker)
has the running sha256 of them (`ServerContext.hash_cache`, keyed by the offset it covers) and
uses it. A worker that takes over mid-upload does not have it and never trusts a prefix it
did not hash: when the last byte is in, it completes the multipart upload (at the staging key,
never the blob's) and reads the object back from the store to hash it. Persisting the hash
state instead was weighed and left: `rehash` (picklable OpenSSL sha256 state) was last
released in 2022 and works by copying OpenSSL's internal context, which a Python or OpenSSL
upgrade may change under it; and a state saved by another worker is a prefix this one did
not hash. Only after the hash and size match is the object copied to the blob's key (a
server-side copy; nothing is copied when the store already holds the blob) and the staging
object deleted; bytes that do not match are deleted with the upload (`ChecksumMismatch`).

A store that cannot be reached raises `StoreUnavailable` (503 with Retry-After): nothing
recorded is lost, nothing stored is touched, and the upload resumes from `staged` when the
store is back. Aborting or expiring an upload aborts its multipart upload (wherever it is;
`uploads.multipart_key`) and deletes its tails and staging object; the garbage collector never
sees a multipart upload in progress (it lists objects), and a blob it deletes while one is in
progress at its key comes back whole only once verified and claimed (`claim_blob` first). A
bucket lifecycle rule AbortIncompleteMultipartUpload should cover the blobs' folder as well as
the uploads' for what a crash leaves behind.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import math
import os
import secrets
import socket
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn, cast

from sqlalchemy import CursorResult, delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from lmvp_server.blob_claims import claim_blob
from lmvp_server.db import session_scope, utcnow
from lmvp_server.models import Project, Upload, UploadPart
from lmvp_server.s3 import error_code, link_protected, s3_client, store_unreachable
from lmvp_server.sha256_state import SavableSha256, StateMismatch, available
from lmvp_server.storage import BlobStore, StoreUnavailable
from lmvp_server.upload_errors import ChecksumMismatch, UploadBusy, UploadGone

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from lmvp_server.s3_store import S3BlobStore
    from lmvp_server.settings import Settings

log = logging.getLogger(__name__)

MiB = 1024 * 1024
# S3's smallest part (but the last), and the part size below which the server never goes.
MIN_PART = 5 * MiB
DEFAULT_PART = 16 * MiB
# Parts one upload may use, leaving S3's 10,000 room for the numbers skipped at takeovers.
_PART_BUDGET = 9000
# Beyond the stall time, how long a writer's lease lasts without renewal.
_LEASE_MARGIN_SECONDS = 5.0
_LEASE_CHECK_SECONDS = 1.0
_POLL_SECONDS = 0.1
# Part numbers a writer skips when it takes over from one whose lease expired.
_TAKEOVER_SKIP = 2
_NO_UPLOAD = frozenset({"NoSuchUpload", "404"})
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
_READ_CHUNK = 8 * MiB
# The largest object one CopyObject may copy.
_COPY_OBJECT_LIMIT = 5 * 1024 * MiB


def part_size_for(length: int) -> int:
    """The size of every part of an upload of `length` bytes but its last."""
    return max(DEFAULT_PART, math.ceil(length / _PART_BUDGET / MiB) * MiB)


def _md5(data: memoryview | bytes | bytearray) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


@dataclass
class Lease:
    """A request's right to write an upload: its owner name and the generation it got."""

    upload_id: str
    owner: str
    generation: int


@dataclass
class Staged:
    """What the database says the store holds of an upload."""

    staged: int
    length: int
    multipart_id: str
    tail_key: str | None
    tail_size: int
    next_part: int
    # The multipart upload's key when it is the blob's (an upload sent straight, completed
    # only once verified, its running hash saved with each part); None: the staging key.
    multipart_key: str | None


def _owner() -> str:
    return f"{socket.gethostname()[:30]}:{os.getpid()}:{secrets.token_hex(6)}"


class S3Staging:
    """Uploads in progress as multipart uploads in the bucket of `store`."""

    def __init__(self, store: S3BlobStore, sessions: sessionmaker[Session], settings: Settings):
        self.store = store
        # Its own client: every body it sends travels a protected link or carries a Content-MD5
        # the store checks, so the payload is not also hashed into the signature.
        self.client = s3_client(settings, sign_payload=False)
        self.content_md5 = not link_protected(settings.s3_endpoint_url)
        self.bucket = store.location.bucket
        self.location = store.location
        self.sessions = sessions
        self.stall_seconds = settings.upload_stall_seconds

    # --- keys -----------------------------------------------------------------------------------

    def key(self, upload_id: str) -> str:
        """The staging key: the multipart upload's of an upload that declared no sha256 (and,
        once completed, the unverified object's); the prefix of every upload's tails."""
        return self.location.key("uploads", upload_id)

    def tail_key(self, upload_id: str, generation: int, offset: int) -> str:
        return f"{self.key(upload_id)}.tail-{generation}-{offset}"

    # --- an upload's life -----------------------------------------------------------------------

    def create(self, upload: Upload) -> None:
        """Start the upload's multipart upload (before its row is committed): at the blob's key
        when the sha256 is declared (and running hashes can be saved), else at the staging
        key."""
        key = self.key(upload.id)
        if upload.sha256 and available():
            key = upload.multipart_key = self.store.key(upload.sha256)
        try:
            answer = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=key, ContentType="application/octet-stream"
            )
        except Exception as exc:
            self._fail(exc, "start an upload")
        upload.multipart_id = answer["UploadId"]

    def discard(
        self, upload_id: str, multipart_id: str | None, multipart_key: str | None = None
    ) -> None:
        """Free everything the store holds for the upload: its multipart upload (aborted, at
        `multipart_key` if not the staging key), its tails and its completed staging object.
        Best effort: what is left, a lifecycle rule removes."""
        _discard(self.client, self.bucket, self.key(upload_id), multipart_id, multipart_key)

    # --- the lease ------------------------------------------------------------------------------

    def _lease_until(self) -> Any:
        return utcnow() + timedelta(seconds=self.stall_seconds + _LEASE_MARGIN_SECONDS)

    def acquire(self, upload_id: str, seconds: float) -> Lease:
        """Take the upload's lease, asking a writer that holds it to let go and waiting up to
        `seconds` for it (or for its lease to expire). Raises `UploadBusy`, `UploadGone`."""
        owner = _owner()
        deadline = time.monotonic() + seconds
        asked = False
        while True:
            with session_scope(self.sessions) as session:
                now = utcnow()
                row = session.execute(
                    select(Upload.writer, Upload.writer_until, Upload.generation).where(
                        Upload.id == upload_id
                    )
                ).one_or_none()
                if row is None:
                    raise UploadGone(upload_id)
                writer, until, generation = row
                if writer is None or until is None or until < now:
                    values: dict[str, Any] = {
                        "writer": owner,
                        "writer_until": self._lease_until(),
                        "let_go": False,
                        "generation": generation + 1,
                    }
                    if writer is not None:  # its writer died or stalled: skip its part numbers
                        values["next_part"] = Upload.next_part + _TAKEOVER_SKIP
                    taken = _changed(
                        session,
                        update(Upload)
                        .where(Upload.id == upload_id, Upload.generation == generation)
                        .values(**values),
                    )
                    session.commit()
                    if taken:
                        return Lease(upload_id, owner, generation + 1)
                    continue
                if not asked:
                    session.execute(
                        update(Upload)
                        .where(Upload.id == upload_id, Upload.generation == generation)
                        .values(let_go=True)
                    )
                    session.commit()
                    asked = True
            if time.monotonic() > deadline:
                raise UploadBusy()
            time.sleep(_POLL_SECONDS)

    def keep_lease(self, lease: Lease, renew: bool) -> bool:
        """Whether `lease` still holds and nobody asked it to let go; renews it when `renew`."""
        with session_scope(self.sessions) as session:
            condition = (
                Upload.id == lease.upload_id,
                Upload.writer == lease.owner,
                Upload.generation == lease.generation,
                Upload.let_go.is_(False),
            )
            if renew:
                kept = _changed(
                    session,
                    update(Upload).where(*condition).values(writer_until=self._lease_until()),
                )
                session.commit()
                return bool(kept)
            return session.execute(select(Upload.id).where(*condition)).first() is not None

    def release(self, lease: Lease) -> None:
        """Let go of the upload (if the lease is still ours)."""
        with session_scope(self.sessions) as session:
            session.execute(
                update(Upload)
                .where(
                    Upload.id == lease.upload_id,
                    Upload.writer == lease.owner,
                    Upload.generation == lease.generation,
                )
                .values(writer=None, writer_until=None)
            )
            session.commit()

    def settled(self, upload_id: str, seconds: float) -> Staged | None:
        """What the store holds of the upload once no request writes to it: a writer is
        asked to let go, and waited for up to `seconds` (or until its lease expires); then what
        is recorded. None if the upload is gone."""
        deadline = time.monotonic() + seconds
        asked = False
        while True:
            with session_scope(self.sessions) as session:
                upload = session.get(Upload, upload_id)
                if upload is None:
                    return None
                busy = (
                    upload.writer is not None
                    and upload.writer_until is not None
                    and upload.writer_until >= utcnow()
                )
                if not busy or time.monotonic() > deadline:
                    return _staged(upload)
                if not asked:
                    upload.let_go = True
                    session.commit()
                    asked = True
            time.sleep(_POLL_SECONDS)

    def state(self, upload_id: str) -> Staged:
        """What the database records of the upload. Raises `UploadGone`."""
        with session_scope(self.sessions) as session:
            upload = session.get(Upload, upload_id)
            if upload is None:
                raise UploadGone(upload_id)
            return _staged(upload)

    # --- recording what the store took ----------------------------------------------------------

    def record_part(
        self,
        lease: Lease,
        number: int,
        size: int,
        etag: str,
        staged: int,
        hash_state: bytes | None = None,
    ) -> bool:
        """Record a part the store took (which, with the tail it began with, now holds `staged`
        bytes; `hash_state`: the running sha256 after it, saved); False, recording nothing, if
        the lease was lost."""
        with session_scope(self.sessions) as session:
            moved = _changed(
                session,
                update(Upload)
                .where(
                    Upload.id == lease.upload_id,
                    Upload.writer == lease.owner,
                    Upload.generation == lease.generation,
                )
                .values(
                    staged=staged,
                    tail_key=None,
                    tail_size=0,
                    next_part=number + 1,
                    writer_until=self._lease_until(),
                    updated_at=utcnow(),
                ),
            )
            if not moved:
                session.rollback()
                return False
            session.add(
                UploadPart(
                    upload_id=lease.upload_id,
                    number=number,
                    size=size,
                    etag=etag,
                    hash_state=hash_state,
                )
            )
            session.commit()
            return True

    def record_tail(self, lease: Lease, key: str | None, size: int, staged: int) -> bool:
        """Record the tail object now holding the bytes past the last part."""
        with session_scope(self.sessions) as session:
            moved = _changed(
                session,
                update(Upload)
                .where(
                    Upload.id == lease.upload_id,
                    Upload.writer == lease.owner,
                    Upload.generation == lease.generation,
                )
                .values(staged=staged, tail_key=key, tail_size=size, updated_at=utcnow()),
            )
            session.commit()
            return bool(moved)

    def rollback_to(self, lease: Lease, before: Staged) -> None:
        """Forget the parts and tail recorded since `before` (a PATCH that overran the declared
        length keeps none of its bytes); their objects stay unreferenced until the upload ends."""
        with session_scope(self.sessions) as session:
            session.execute(
                delete(UploadPart).where(
                    UploadPart.upload_id == lease.upload_id, UploadPart.number >= before.next_part
                )
            )
            session.execute(
                update(Upload)
                .where(Upload.id == lease.upload_id, Upload.writer == lease.owner)
                .values(staged=before.staged, tail_key=before.tail_key, tail_size=before.tail_size)
            )
            session.commit()

    # --- bytes ----------------------------------------------------------------------------------

    def put_part(
        self, upload_id: str, key: str, multipart_id: str, number: int, data: bytes | bytearray
    ) -> str:
        """Send a part (with its MD5 if the link needs it) to the multipart upload at `key`;
        returns its ETag. `data` goes as it is (botocore takes a bytearray without a copy): it
        must not change until this returns."""
        try:
            answer = self.client.upload_part(
                Bucket=self.bucket,
                Key=key,
                UploadId=multipart_id,
                PartNumber=number,
                Body=data,  # type: ignore[arg-type]  # botocore takes a bytearray as it is
                **self._checked(data),
            )
        except Exception as exc:
            if error_code(exc) in _NO_UPLOAD:
                raise UploadGone(upload_id) from None
            self._fail(exc, "store part of an upload")
        return answer["ETag"]

    def put_tail(self, key: str, data: memoryview) -> None:
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=key, Body=bytes(data), **self._checked(data)
            )
        except Exception as exc:
            self._fail(exc, "store the end of an upload")

    def _checked(self, data: memoryview | bytes | bytearray) -> dict[str, Any]:
        """The arguments that make the store check a body: its Content-MD5, where the link to
        the store does not protect it already."""
        return {"ContentMD5": _md5(data)} if self.content_md5 else {}

    def get_tail(self, key: str, size: int) -> bytes:
        try:
            data = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except Exception as exc:
            self._fail(exc, "read the end of an upload")
        if len(data) != size:
            raise OSError(f"the store holds {len(data)} bytes of {key}, not {size}")
        return data

    def delete_object(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            log.warning("could not delete %s from the store: %s", key, exc)

    # --- completion -----------------------------------------------------------------------------

    def complete(self, upload_id: str, digest: str | None) -> str | None:
        """Store a fully staged upload as a blob of its project: complete the multipart upload
        at the staging key, hash it from the store unless `digest` (the running hash of every
        byte, computed by this process) is given, and copy it to the blob's key only if it is
        the declared one. Returns the blob's sha256, or None if another request stored it a
        moment ago. Raises `ChecksumMismatch` (the upload is dropped), `UploadGone`,
        `StoreUnavailable`."""
        with session_scope(self.sessions) as session:
            upload = session.get(Upload, upload_id)
            if upload is None:
                return None
            if upload.staged != upload.length:
                raise UploadGone(upload_id)
            parts = session.scalars(
                select(UploadPart)
                .where(UploadPart.upload_id == upload_id)
                .order_by(UploadPart.number)
            ).all()
            direct: _Direct | None = None
            listed = [{"PartNumber": p.number, "ETag": p.etag} for p in parts]
            declared, length, multipart_id = upload.sha256, upload.length, upload.multipart_id
            project_id = upload.project_id
            if upload.multipart_key is not None:
                direct = _Direct(
                    key=upload.multipart_key,
                    multipart_id=multipart_id or "",
                    parts=listed,
                    size=sum(p.size for p in parts),
                    last_state=parts[-1].hash_state if parts else None,
                )
        if direct is not None:
            return self._complete_direct(upload_id, project_id, declared, length, direct, digest)
        key = self.key(upload_id)
        try:
            try:
                self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=multipart_id or "",
                    MultipartUpload={"Parts": listed},  # type: ignore[typeddict-item]
                )
            except Exception as exc:
                # Completed a moment ago by a request that stopped before storing the blob?
                if error_code(exc) not in _NO_UPLOAD:
                    raise
            size = self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"]
            if digest is None:
                digest = self._hash_object(key)
        except (ChecksumMismatch, UploadGone):
            raise
        except Exception as exc:
            self._fail(exc, "complete an upload")
        if (declared and digest != declared) or size != length:
            self.discard(upload_id, multipart_id)
            with session_scope(self.sessions) as session:
                gone = session.get(Upload, upload_id)
                if gone is not None:
                    session.delete(gone)
                    session.commit()
            raise ChecksumMismatch(digest, declared)
        # Claimed first, so a garbage collection pass never deletes bytes the store then keeps
        # instead of this upload's copy (lmvp_server/gc.py).
        with session_scope(self.sessions) as session:
            claim_blob(session, digest, size)
        if not self.store.holds(digest):
            try:
                self._copy(key, self.store.key(digest), size)
            except Exception as exc:
                self._fail(exc, "store a finished upload")
        return self._recorded(upload_id, project_id, digest, size)

    def _copy(self, source: str, target: str, size: int) -> None:
        """Copy an object within the bucket: one CopyObject up to S3's 5 GiB limit for it (one
        request, which some stores serve faster than the transfer manager's copy in 8 MiB
        parts), the transfer manager's multipart copy beyond."""
        if size <= _COPY_OBJECT_LIMIT:
            self.client.copy_object(
                Bucket=self.bucket,
                Key=target,
                CopySource={"Bucket": self.bucket, "Key": source},
                ContentType="application/octet-stream",
                MetadataDirective="REPLACE",
            )
            return
        self.client.copy(
            {"Bucket": self.bucket, "Key": source},
            self.bucket,
            target,
            ExtraArgs={"ContentType": "application/octet-stream"},
        )

    def _complete_direct(
        self,
        upload_id: str,
        project_id: int,
        declared: str,
        length: int,
        direct: _Direct,
        digest: str | None,
    ) -> str | None:
        """`complete` for an upload sent straight to its blob's key: complete its multipart
        upload only if its bytes hash to the declared sha256 (the running hash, or the one
        saved with its last part), else abort it, so that nothing unverified ever appears at a
        blob's key and nothing already stored there is touched."""
        if digest is None:
            digest = _saved_digest(direct.last_state, length)
        if digest != declared or direct.size != length:
            self.discard(upload_id, direct.multipart_id, direct.key)
            with session_scope(self.sessions) as session:
                gone = session.get(Upload, upload_id)
                if gone is not None:
                    session.delete(gone)
                    session.commit()
            raise ChecksumMismatch(digest or UNKNOWN_DIGEST, declared)
        # Claimed first, so a garbage collection pass never deletes bytes the store then keeps
        # instead of this upload's (lmvp_server/gc.py).
        with session_scope(self.sessions) as session:
            claim_blob(session, digest, length)
        try:
            if self.store.holds(digest):  # the same bytes are stored: these are not needed
                _abort(self.client, self.bucket, direct.key, direct.multipart_id)
            else:
                self._complete_at(direct)
        except (ChecksumMismatch, UploadGone):
            raise
        except Exception as exc:
            self._fail(exc, "complete an upload")
        return self._recorded(upload_id, project_id, digest, length)

    def _recorded(self, upload_id: str, project_id: int, digest: str, size: int) -> str | None:
        """Record the stored blob as the upload's outcome and discard what is left of it (its
        tails, if any); None when another request recorded it first."""
        from lmvp_server.upload_lifecycle import record_blob

        with session_scope(self.sessions) as session:
            if session.get(Upload, upload_id) is None:  # another request stored it
                return None
            project = session.get(Project, project_id)
            if project is None:
                raise UploadGone(upload_id)
            name = project.name
            record_blob(session, upload_id, project_id, digest, size)
        self.discard(upload_id, None)
        log.info("upload %s stored as blob %s (%d bytes) in %s", upload_id, digest, size, name)
        return digest

    def _complete_at(self, direct: _Direct) -> None:
        """Complete a verified multipart upload at the blob's key."""
        try:
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=direct.key,
                UploadId=direct.multipart_id,
                MultipartUpload={"Parts": direct.parts},  # type: ignore[typeddict-item]
            )
        except Exception as exc:
            # Completed (or, the blob being stored already, aborted) a moment ago by a request
            # that stopped before recording the blob: then the blob's object is there.
            if error_code(exc) not in _NO_UPLOAD:
                raise
            head = self.client.head_object(Bucket=self.bucket, Key=direct.key)
            if head["ContentLength"] != direct.size:
                raise

    def resumed_hasher(self, upload_id: str, hashed: int) -> SavableSha256:
        """The running sha256 of an upload sent straight to its blob's key, as saved with its
        last recorded part, which must cover `hashed` bytes (the parts'). Raises
        `StateMismatch`."""
        with session_scope(self.sessions) as session:
            state = session.scalars(
                select(UploadPart.hash_state)
                .where(UploadPart.upload_id == upload_id)
                .order_by(UploadPart.number.desc())
                .limit(1)
            ).first()
        if state is None:
            if hashed:
                raise StateMismatch(f"no running sha256 was saved for the {hashed} bytes held")
            return SavableSha256()
        return SavableSha256.restore(state, hashed)

    def _hash_object(self, key: str) -> str:
        """The sha256 of an object, read back from the store."""
        hasher = hashlib.sha256()
        body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        try:
            while chunk := body.read(_READ_CHUNK):
                hasher.update(chunk)
        finally:
            body.close()
        return hasher.hexdigest()

    def _fail(self, exc: BaseException, doing: str) -> NoReturn:
        if store_unreachable(exc) or error_code(exc):
            log.warning("the object store could not %s: %s", doing, exc)
            raise StoreUnavailable(
                f"the blob store cannot {doing} right now; the bytes received so far are kept: "
                "resume the upload shortly"
            ) from exc
        raise exc


def staging_for(
    store: BlobStore, sessions: sessionmaker[Session], settings: Settings
) -> S3Staging | None:
    """The object-store staging of a server whose blobs are in an S3 store (one per store),
    or None for the local staging (`lmvp_server.upload_staging`)."""
    if settings.s3_location is None:
        return None
    staging = _stagings.get(store)
    if staging is None:
        from lmvp_server.s3_store import S3BlobStore

        if not isinstance(store, S3BlobStore):
            return None
        staging = _stagings[store] = S3Staging(store, sessions, settings)
    return staging


_stagings: weakref.WeakKeyDictionary[BlobStore, S3Staging] = weakref.WeakKeyDictionary()


def wants_hash_first(store: BlobStore, sessions: sessionmaker[Session], settings: Settings) -> bool:
    """Whether a client should hash a file before uploading it rather than while: true for an
    object store that can take a declared upload straight at the blob's key. An upload that
    declares no sha256 must wait under a staging key and be copied to its blob key once its
    hash is known, a copy of every byte inside the store that a local folder (a rename) never
    pays; hashing first costs the client about a second per GiB."""
    return staging_for(store, sessions, settings) is not None and available()


@dataclass
class _Direct:
    """An upload's multipart upload at its blob's key, as recorded."""

    key: str
    multipart_id: str
    parts: list[dict[str, Any]]
    size: int
    last_state: bytes | None


UNKNOWN_DIGEST = "an unknown sha256 (the running hash saved with its parts could not be continued)"


def _saved_digest(state: bytes | None, length: int) -> str | None:
    """The sha256 of the `length` bytes a saved running hash covers, or None if it is not
    there or covers other bytes."""
    try:
        if state is None:
            return SavableSha256().hexdigest() if length == 0 else None
        return SavableSha256.restore(state, length).hexdigest()
    except (StateMismatch, RuntimeError):
        return None


def _abort(client: S3Client, bucket: str, key: str, multipart_id: str) -> None:
    """Abort a multipart upload (gone already is fine)."""
    try:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=multipart_id)
    except Exception as exc:
        if error_code(exc) not in _NO_UPLOAD:
            raise


def _discard(
    client: S3Client,
    bucket: str,
    key: str,
    multipart_id: str | None,
    multipart_key: str | None = None,
) -> None:
    """Abort the multipart upload (at `multipart_key`, else `key`) and delete the objects
    under `key` (the staging key: tails, a completed staging object). A blob's key is never a
    prefix deleted here."""
    try:
        if multipart_id:
            _abort(client, bucket, multipart_key or key, multipart_id)
        pages = client.get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=bucket, Prefix=key):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=bucket, Key=item["Key"])
    except Exception as exc:
        log.warning("could not free the staged bytes of %s: %s", key, exc)


def discard_staged(settings: Settings, uploads: list[tuple[str, str | None, str | None]]) -> None:
    """Free the store's bytes of uploads (id, multipart upload id, its key if not the staging
    key) whose rows are gone: what expiry does for the object store's staging."""
    if settings.s3_location is None or not uploads:
        return
    from lmvp_server.s3_store import S3BlobStore

    store = S3BlobStore.from_settings(settings)
    for upload_id, multipart_id, multipart_key in uploads:
        _discard(
            store.client,
            store.location.bucket,
            store.location.key("uploads", upload_id),
            multipart_id,
            multipart_key,
        )


def _changed(session: Session, statement: Any) -> int:
    """Run an UPDATE; how many rows it changed."""
    result = cast("CursorResult[Any]", session.execute(statement))
    return result.rowcount


def _staged(upload: Upload) -> Staged:
    return Staged(
        staged=upload.staged,
        length=upload.length,
        multipart_id=upload.multipart_id or "",
        tail_key=upload.tail_key,
        tail_size=upload.tail_size,
        next_part=upload.next_part,
        multipart_key=upload.multipart_key,
    )


class S3Writer:
    """Sends a PATCH body into an upload's multipart upload: the bytes are gathered into parts
    (starting with the upload's tail, read back from the store), each part hashed (when the
    running hash is known), sent (with its MD5 where the link needs it) and recorded under the
    lease, one part in flight while the next fills. The same interface as
    `lmvp_server.upload_writer.UploadWriter`: `feed`, `drain`, `discard`, `abandon`,
    `close`/`aclose`; then `finish` keeps the rest as the tail (or, with the last byte, as the
    last part)."""

    def __init__(
        self, staging: S3Staging, lease: Lease, before: Staged, hasher: Any | None, tail: bytes
    ) -> None:
        self.staging = staging
        self.lease = lease
        self.before = before
        self.hasher = hasher
        self.part_size = part_size_for(before.length)
        self.key = before.multipart_key or staging.key(lease.upload_id)
        self.start = before.staged
        self._received = 0
        # The upload's bytes recorded in the database (parts and tail).
        self.recorded = before.staged
        self.next_part = before.next_part
        self.lost = False
        # A tail is what a PATCH left short of a part (`finish`), so a part always ends in
        # this PATCH's bytes.
        if len(tail) >= self.part_size:
            raise RuntimeError(
                f"upload {lease.upload_id}: a tail of {len(tail)} bytes, not short of a part"
            )
        self._buffer = bytearray(tail)
        # Bytes at the front of the buffer already recorded (and hashed): the old tail's.
        self._counted = len(tail)
        self._tail_key = before.tail_key
        self._sending = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmvp-s3-part")
        self._in_flight: Future[None] | None = None

    @property
    def received(self) -> int:
        """Bytes of this PATCH accepted."""
        return self._received

    @property
    def offset(self) -> int:
        """The upload's offset after the bytes accepted so far."""
        return self.start + self._received

    async def feed(self, chunk: bytes) -> None:
        self._received += len(chunk)
        view = memoryview(chunk)
        while view:
            # Each byte is copied once, into the part that goes to the store as it is.
            taken = view[: self.part_size - len(self._buffer)]
            self._buffer += taken
            view = view[len(taken) :]
            if len(self._buffer) == self.part_size:
                part, self._buffer = self._buffer, bytearray()
                counted, self._counted = self._counted, 0
                await self._wait()
                self._in_flight = self._sending.submit(self._send_part, part, counted)

    async def _wait(self) -> None:
        if self._in_flight is not None:
            done, self._in_flight = self._in_flight, None
            await asyncio.shield(asyncio.wrap_future(done))

    def _send_part(self, part: bytearray, counted: int) -> None:
        """Send and record one part whose first `counted` bytes were recorded (as the tail)."""
        if self.lost:
            return
        view = memoryview(part)
        if self.hasher is not None:
            self.hasher.update(view[counted:])
        state = None
        if self.before.multipart_key is not None:  # continued by whoever takes over
            assert isinstance(self.hasher, SavableSha256), "a direct upload needs its hash"
            state = self.hasher.save()
        number = self.next_part
        etag = self.staging.put_part(
            self.lease.upload_id, self.key, self.before.multipart_id, number, part
        )
        staged = self.recorded + len(part) - counted
        if not self.staging.record_part(self.lease, number, len(part), etag, staged, state):
            self.lost, self.hasher = True, None
            return
        self.next_part, self.recorded = number + 1, staged
        if self._tail_key is not None:  # its bytes are in this part now
            self.staging.delete_object(self._tail_key)
            self._tail_key = None

    async def drain(self) -> None:
        await self._wait()

    async def discard(self) -> None:
        self._buffer.clear()
        await self._wait()

    async def abandon(self) -> None:
        self._buffer.clear()
        if self._in_flight is not None:
            await asyncio.wait([asyncio.wrap_future(self._in_flight)])
            self._in_flight = None

    def close(self) -> None:
        self._sending.shutdown(wait=False)

    async def aclose(self) -> None:
        self.close()

    def finish(self, last: bool) -> int:
        """Keep what is buffered (blocking: call in a thread, after `drain`): as the last part
        when `last`, else as the new tail. Returns the upload's offset recorded now."""
        if self.lost or len(self._buffer) == self._counted:
            return self.recorded
        if last:
            self._send_part(self._buffer, self._counted)
            self._buffer, self._counted = bytearray(), 0
            return self.recorded
        data = memoryview(self._buffer)
        if self.hasher is not None:
            self.hasher.update(data[self._counted :])
        key = self.staging.tail_key(self.lease.upload_id, self.lease.generation, self.offset)
        self.staging.put_tail(key, data)
        staged = self.recorded + len(data) - self._counted
        if not self.staging.record_tail(self.lease, key, len(data), staged):
            self.lost, self.hasher = True, None
            self.staging.delete_object(key)
            return self.recorded
        if self._tail_key is not None:
            self.staging.delete_object(self._tail_key)
        self._tail_key, self.recorded, self._counted = key, staged, len(data)
        return staged


def lease_keeper(staging: S3Staging, lease: Lease, stop: Callable[[], None]) -> asyncio.Task[None]:
    """A task that renews the lease every second (a request that stalls ends within the stall
    time, and one whose process dies or freezes renews nothing) and calls `stop()` once it is
    lost or a newer request asked this one to let go."""

    async def keep() -> None:
        from fastapi.concurrency import run_in_threadpool

        while True:
            await asyncio.sleep(_LEASE_CHECK_SECONDS)
            if not await run_in_threadpool(staging.keep_lease, lease, True):
                stop()
                return

    return asyncio.create_task(keep(), name=f"lease-{lease.upload_id}")


__all__ = [
    "UNKNOWN_DIGEST",
    "Lease",
    "S3Staging",
    "S3Writer",
    "Staged",
    "discard_staged",
    "lease_keeper",
    "part_size_for",
    "staging_for",
    "wants_hash_first",
]
