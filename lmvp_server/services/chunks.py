"""Chunks a project holds, and blobs assembled from them (issue 17's chunk protocol; the spec is
the one the client follows, the routes are lmvp_server/routers/chunks.py).

A client sends only the chunks a project lacks (`missing_chunks`, then a *pack* of frames that
`PackIngest` verifies record by record and stores at `chunks/<sha256>` of the blob store), then
asks for the file to be assembled (`assemble_blob`): the server decodes the chunks in order,
hashes them, and only if they are the announced file records the blob exactly as a finished tus
upload does (the `Blob` row, the project's `ProjectBlob`, the same claims), with its ordered
chunk list (`BlobChunk`). Downloads read a chunked blob through its list (`chunk_spans`,
lmvp_server/blob_download.py), and `fetch_chunks` streams frames as stored.

Like blobs, chunks are per project: knowing a hash is never proof of having the bytes, so a
project holds a chunk only once its bytes were sent into it, or it assembled (or holds) a blob
that lists it. Claims keep what `chunks/missing` reported and what an assembly is reading safe
from the garbage collector (lmvp_server/gc.py) for its grace period: the `Chunk` row is claimed
before its frame is written (as `claim_blob` does for blobs), the `ProjectChunk` rows when a
client is told the project holds them.
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, delete, exists, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from lmvp_server.blob_claims import claim_blob, claim_project_blobs
from lmvp_server.chunk_frames import (
    MAX_CHUNK_SIZE,
    MAX_FRAME_OVERHEAD,
    RECORD_HEAD,
    BadFrame,
    decode_frame,
    pack_record,
    verified_chunk,
)
from lmvp_server.db import utcnow
from lmvp_server.errors import APIError
from lmvp_server.models import Blob, BlobChunk, Chunk, ProjectBlob, ProjectChunk, Role
from lmvp_server.services.access import Caller, open_project
from lmvp_server.services.blobs import find_blob
from lmvp_server.storage import BlobStore, ChunkMissing

log = logging.getLogger(__name__)

PACK_MEDIA_TYPE = "application/vnd.lmvp.chunk-pack"
# The largest pack a request may carry.
MAX_PACK_BYTES = 256 * 1024 * 1024
# Verified records are stored a batch at a time: this many bytes of frames, or this many records.
_BATCH_BYTES = 16 * 1024 * 1024
_BATCH_RECORDS = 256
# Threads reading and decoding chunks ahead of the hash of an assembly, and reading frames
# ahead of a fetch's pack.
_ASSEMBLY_READERS = 3
_FETCH_READERS = 4
# A claim older than this part of the grace period is renewed (as `claim_project_blobs` does).
_RECLAIM_FRACTION = 0.25


# --- asking -------------------------------------------------------------------------------------


def missing_chunks(
    session: Session, caller: Caller, project: str, hashes: Sequence[str], *, claim_seconds: float
) -> list[str]:
    """Which of `hashes` the project lacks, in the order asked, without repeats (contributors).
    The ones it holds are claimed for `claim_seconds`, for the assembly that follows."""
    scope = open_project(session, caller, project, Role.contributor)
    wanted = list(dict.fromkeys(hashes))
    held = claim_project_chunks(session, scope.project.id, wanted, claim_seconds)
    return [h for h in wanted if h not in held]


def claim_project_chunks(
    session: Session, project_id: int, hashes: Sequence[str], grace_seconds: float
) -> set[str]:
    """Which of `hashes` the project holds, each claimed for the grace period (claims older than
    a quarter of it are renewed, and committed); a row a pass takes meanwhile counts as
    missing."""
    held: set[str] = set()
    stale: list[str] = []
    renew_before = utcnow() - timedelta(seconds=grace_seconds * _RECLAIM_FRACTION)
    for part in _parts(list(dict.fromkeys(hashes))):
        rows = session.execute(
            select(ProjectChunk.sha256, ProjectChunk.created_at, ProjectChunk.claimed_at).where(
                ProjectChunk.project_id == project_id, ProjectChunk.sha256.in_(part)
            )
        ).all()
        held.update(sha for sha, _, _ in rows)
        stale += [sha for sha, made, claimed in rows if max(made, claimed or made) < renew_before]
    if stale:
        now = utcnow()
        still: set[str] = set()
        for part in _parts(stale):
            session.execute(
                update(ProjectChunk)
                .where(ProjectChunk.project_id == project_id, ProjectChunk.sha256.in_(part))
                .values(claimed_at=now)
            )
        session.commit()
        for part in _parts(stale):
            still.update(
                session.scalars(
                    select(ProjectChunk.sha256).where(
                        ProjectChunk.project_id == project_id, ProjectChunk.sha256.in_(part)
                    )
                )
            )
        held -= set(stale) - still
    return held


# --- sending: a pack ----------------------------------------------------------------------------


@dataclass
class PackRecord:
    """One complete record of a pack, not yet verified."""

    sha256: str
    size: int
    frame: bytes


@dataclass
class PackIngest:
    """One pack being received into a project: `feed` it the body as it arrives, `finish` it
    at the end (or `flush` what is complete when the body is cut). Records are verified and
    stored a batch at a time (`store_batch`, on a worker thread: it decodes, hashes and writes),
    so at most one record and one batch are held in memory, never the whole pack."""

    project_id: int
    received: int = 0
    frame_bytes: int = 0
    stored: int = 0
    skipped: int = 0
    records: int = 0
    _buffer: bytearray = field(default_factory=bytearray)
    _pending: list[PackRecord] = field(default_factory=list)
    _pending_bytes: int = 0

    def feed(self, data: bytes) -> bool:
        """Take the next bytes of the body; True when a batch is ready for `take_batch`.
        Raises APIError 413 past `MAX_PACK_BYTES`, 422 for a record head that cannot be right
        (the caller stores what came before first: `take_batch`)."""
        self.received += len(data)
        if self.received > MAX_PACK_BYTES:
            raise APIError(
                413,
                "pack_too_large",
                f"a chunk pack may hold at most {MAX_PACK_BYTES} bytes: send the rest in "
                "another pack (the complete records before this point are stored)",
            )
        self._buffer += data
        while len(self._buffer) >= RECORD_HEAD.size:
            digest, size, frame_len = RECORD_HEAD.unpack_from(self._buffer)
            sha = digest.hex()
            if size > MAX_CHUNK_SIZE or frame_len > size + MAX_FRAME_OVERHEAD:
                raise bad_chunk(
                    sha,
                    f"record {self.records} announces {size} raw bytes in a frame of {frame_len} "
                    f"bytes; a chunk is at most {MAX_CHUNK_SIZE} bytes and its frame at most "
                    f"{MAX_FRAME_OVERHEAD} bytes longer",
                )
            end = RECORD_HEAD.size + frame_len
            if len(self._buffer) < end:
                break
            frame = bytes(self._buffer[RECORD_HEAD.size : end])
            del self._buffer[:end]
            self._pending.append(PackRecord(sha, size, frame))
            self._pending_bytes += frame_len
            self.frame_bytes += frame_len
            self.records += 1
        return self._pending_bytes >= _BATCH_BYTES or len(self._pending) >= _BATCH_RECORDS

    def take_batch(self) -> list[PackRecord]:
        """The complete records received since the last batch."""
        batch, self._pending, self._pending_bytes = self._pending, [], 0
        return batch

    def check_complete(self) -> None:
        """At the end of the body: raises 422 if it ended inside a record."""
        if self._buffer:
            raise APIError(
                422,
                "truncated_pack",
                f"the chunk pack ends inside record {self.records} ({len(self._buffer)} bytes "
                "of it arrived): the complete records before it are stored; ask "
                "chunks/missing and send the rest",
            )

    def result(self) -> dict[str, int]:
        return {"stored": self.stored, "skipped": self.skipped, "bytes": self.frame_bytes}


def bad_chunk(sha256: str, reason: str) -> APIError:
    """The 422 for a record that fails verification."""
    return APIError(
        422,
        "bad_chunk",
        f"chunk {sha256} of the pack was refused ({reason}); the records before it are "
        "stored: encode it again from the file and resend it",
        details={"chunk": sha256},
    )


def open_pack(session: Session, caller: Caller, project: str) -> PackIngest:
    """A pack into `project`, if the caller may send (contributors)."""
    scope = open_project(session, caller, project, Role.contributor)
    pack = PackIngest(project_id=scope.project.id)
    session.rollback()  # no snapshot is held while the pack streams in
    return pack


def store_batch(
    sessions: sessionmaker[Session], store: BlobStore, pack: PackIngest, batch: list[PackRecord]
) -> None:
    """Verify and store a batch of records in order: those the project holds are skipped, the
    others decoded and checked against their sha256 and length; the verified ones before a bad
    record are stored, then the bad one raises 422 (`bad_chunk`)."""
    if not batch:
        return
    with sessions() as session:
        held = set(
            session.scalars(
                select(ProjectChunk.sha256).where(
                    ProjectChunk.project_id == pack.project_id,
                    ProjectChunk.sha256.in_({r.sha256 for r in batch}),
                )
            )
        )
    good: dict[str, PackRecord] = {}
    failure: APIError | None = None
    for record in batch:
        if record.sha256 in held or record.sha256 in good:
            pack.skipped += 1
            continue
        try:
            verified_chunk(record.frame, record.sha256, record.size)
        except BadFrame as exc:
            failure = bad_chunk(record.sha256, str(exc))
            break
        good[record.sha256] = record
    if good:
        _store_chunks(sessions, store, pack.project_id, list(good.values()))
        pack.stored += len(good)
    if failure is not None:
        raise failure


def _store_chunks(
    sessions: sessionmaker[Session], store: BlobStore, project_id: int, records: list[PackRecord]
) -> None:
    """Claim the chunks' rows (committed before any byte is written, so a garbage collection
    pass either deleted them already or leaves them alone), write the frames the store does
    not hold yet, then record that the project holds them."""
    now = utcnow()
    shas = [r.sha256 for r in records]
    with sessions() as session:
        rows = [
            {"sha256": r.sha256, "size": r.size, "created_at": now, "claimed_at": now}
            for r in records
        ]
        # Many rows to one statement compiled once (SQLAlchemy's "insertmanyvalues").
        claim = _insert(session, Chunk).on_conflict_do_update(
            index_elements=[Chunk.sha256], set_={"claimed_at": now}
        )
        session.execute(claim, rows)
        session.commit()
        unwritten = set(
            session.scalars(
                select(Chunk.sha256).where(Chunk.sha256.in_(shas), Chunk.stored_size.is_(None))
            )
        )
        session.rollback()
        to_write = [r for r in records if r.sha256 in unwritten]
        store.put_chunks([(r.sha256, r.frame) for r in to_write])
        if to_write:
            session.connection().execute(
                update(Chunk)
                .where(Chunk.sha256 == bindparam("chunk"))
                .values(stored_size=bindparam("stored")),
                [{"chunk": r.sha256, "stored": len(r.frame)} for r in to_write],
            )
        held = [{"project_id": project_id, "sha256": s, "created_at": now} for s in shas]
        session.execute(_insert(session, ProjectChunk).on_conflict_do_nothing(), held)
        session.commit()


# --- assembling a blob --------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkRef:
    """A chunk of a blob to assemble: its sha256 and raw size."""

    sha256: str
    size: int


def assemble_blob(
    session: Session,
    store: BlobStore,
    caller: Caller,
    project: str,
    sha256: str,
    size: int,
    chunks: Sequence[ChunkRef],
    *,
    grace_seconds: float,
) -> None:
    """Record blob `sha256` of `size` bytes in the project from its ordered `chunks`, once
    their decoded bytes prove to be it (contributors). A blob the project holds returns at
    once. Raises APIError 409 `missing_chunks` (details.missing: the chunks to send) when the
    project lacks some, 422 when the sizes or the hash are not the announced ones (nothing is
    recorded)."""
    scope = open_project(session, caller, project, Role.contributor)
    project_id = scope.project.id
    if claim_project_blobs(session, project_id, [sha256], grace_seconds):
        return
    total = sum(c.size for c in chunks)
    if total != size:
        raise APIError(
            422,
            "size_mismatch",
            f"the chunks add up to {total} bytes, not the {size} announced for blob {sha256}",
        )
    distinct = list(dict.fromkeys(c.sha256 for c in chunks))
    held = claim_project_chunks(session, project_id, distinct, grace_seconds)
    missing = [c for c in distinct if c not in held]
    if missing:
        raise missing_chunks_error(project, missing)
    known = dict(
        session.execute(select(Chunk.sha256, Chunk.size).where(Chunk.sha256.in_(distinct))).all()
    )
    for ref in chunks:
        if known.get(ref.sha256) != ref.size:
            raise APIError(
                422,
                "size_mismatch",
                f"chunk {ref.sha256} holds {known.get(ref.sha256)} bytes, not {ref.size}",
                details={"chunk": ref.sha256},
            )
    session.rollback()  # nothing is held open while the chunks are read
    digest = _whole_sha256(session, store, project_id, project, chunks)
    if digest != sha256:
        # Each chunk was checked when it came; one damaged since is asked for again (409).
        for ref in {c.sha256: c for c in chunks}.values():
            _read_verified(session, store, project_id, project, ref)
        raise APIError(
            422,
            "sha256_mismatch",
            f"the chunks decode to bytes whose sha256 is {digest}, not {sha256}: "
            "nothing was recorded; chunk the file again",
        )
    claim_blob(session, sha256, size)
    _record_assembled(session, store, project, project_id, sha256, size, chunks)
    log.info("assembled blob %s (%d bytes, %d chunks) in %s", sha256, size, len(chunks), project)


def missing_chunks_error(project: str, missing: list[str]) -> APIError:
    return APIError(
        409,
        "missing_chunks",
        f"project '{project}' does not hold {len(missing)} of the chunks named: send them "
        "(chunks/missing, then a pack), then assemble again",
        details={"missing": missing},
    )


def _whole_sha256(
    session: Session, store: BlobStore, project_id: int, project: str, chunks: Sequence[ChunkRef]
) -> str:
    """The sha256 of the chunks' decoded bytes in order. Frames are read and decoded a few
    ahead on threads while this one hashes (each chunk was checked against its own sha256 when
    it came: hashing it again would halve the speed; a mismatch of the whole checks them). A
    frame lost or that no longer decodes is asked for again (409, `_read_verified`)."""
    digest = hashlib.sha256()
    refs = iter(chunks)
    with ThreadPoolExecutor(_ASSEMBLY_READERS) as pool:
        ahead: deque[tuple[ChunkRef, Future[bytes]]] = deque()

        def read_next() -> None:
            ref = next(refs, None)
            if ref is not None:
                frame = pool.submit(lambda r: decode_frame(store.read_chunk(r.sha256), r.size), ref)
                ahead.append((ref, frame))

        for _ in range(_ASSEMBLY_READERS + 1):
            read_next()
        try:
            while ahead:
                ref, pending = ahead.popleft()
                read_next()
                try:
                    raw = pending.result()
                except (BadFrame, ChunkMissing):
                    _read_verified(session, store, project_id, project, ref)  # raises 409
                    raise  # it checked out after all: the store changed under the read
                digest.update(raw)
        finally:
            for _, pending in ahead:
                pending.cancel()
    return digest.hexdigest()


def _read_verified(
    session: Session, store: BlobStore, project_id: int, project: str, ref: ChunkRef
) -> bytes:
    """A chunk's raw bytes, checked against its sha256. A stored frame that no longer decodes
    to them (damaged, or lost) is forgotten by the project and its row marked unwritten, so the
    client, told it is missing, sends it again and the pack rewrites it."""
    try:
        return verified_chunk(store.read_chunk(ref.sha256), ref.sha256, ref.size)
    except (BadFrame, ChunkMissing) as exc:
        log.error("stored chunk %s is damaged or lost (%s): asking for it again", ref.sha256, exc)
        session.execute(update(Chunk).where(Chunk.sha256 == ref.sha256).values(stored_size=None))
        session.execute(
            delete(ProjectChunk).where(
                ProjectChunk.project_id == project_id, ProjectChunk.sha256 == ref.sha256
            )
        )
        session.commit()
        raise missing_chunks_error(project, [ref.sha256]) from None


def _record_assembled(
    session: Session,
    store: BlobStore,
    project: str,
    project_id: int,
    sha256: str,
    size: int,
    chunks: Sequence[ChunkRef],
) -> None:
    """In one transaction: the blob is chunked (unless the store holds it whole), lists its
    chunks, and the project holds it and every chunk it lists. Two assemblies of the same bytes
    at once: the one that loses the race to insert rows rolls back and tries again."""
    distinct = list(dict.fromkeys(c.sha256 for c in chunks))
    for attempt in range(3):
        try:
            # Held still? (`FOR SHARE` on PostgreSQL; SQLite's write lock is taken below.)
            kept: set[str] = set()
            for part in _parts(distinct):
                kept.update(
                    session.scalars(
                        select(ProjectChunk.sha256)
                        .where(ProjectChunk.project_id == project_id, ProjectChunk.sha256.in_(part))
                        .with_for_update(read=True)
                    )
                )
            gone = [c for c in distinct if c not in kept]
            if gone:
                session.rollback()
                raise missing_chunks_error(project, gone)
            blob = session.get(Blob, sha256)
            assert blob is not None  # claimed just before
            listed = session.scalar(select(exists().where(BlobChunk.blob_sha256 == sha256)))
            if not listed and not (not blob.chunked and store.holds(sha256)):
                offset = 0
                for position, ref in enumerate(chunks):
                    session.add(
                        BlobChunk(
                            blob_sha256=sha256,
                            position=position,
                            chunk_sha256=ref.sha256,
                            size=ref.size,
                            offset=offset,
                        )
                    )
                    offset += ref.size
                blob.chunked = True
            elif listed:
                # Listed already (another project assembled it): this project, which proved it
                # has the bytes, holds the chunks of that list too.
                blob.chunked = True
                others = session.scalars(
                    select(BlobChunk.chunk_sha256).where(BlobChunk.blob_sha256 == sha256)
                )
                rows = [
                    {"project_id": project_id, "sha256": s, "created_at": utcnow()}
                    for s in set(others)
                ]
                if rows:
                    session.execute(_insert(session, ProjectChunk).on_conflict_do_nothing(), rows)
            if session.get(ProjectBlob, (project_id, sha256)) is None:
                session.add(ProjectBlob(project_id=project_id, sha256=sha256, size=size))
            session.commit()
            return
        except IntegrityError:
            session.rollback()
            if attempt == 2:
                raise


# --- reading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkSpan:
    """A chunk of a chunked blob: its raw bytes are the blob's from `offset`, `size` long."""

    sha256: str
    size: int
    offset: int


def chunk_spans(blob: Blob) -> list[ChunkSpan]:
    """A chunked blob's chunks in order (read through the blob's session, which must be open)."""
    return [ChunkSpan(c.chunk_sha256, c.size, c.offset) for c in blob.chunks]


def chunk_list(session: Session, caller: Caller, project: str, sha256: str) -> dict[str, Any]:
    """The ordered chunks of blob `sha256` of the project (readers): 404 `not_chunked` for a
    blob stored whole (the client downloads it plainly)."""
    blob = find_blob(session, caller, project, sha256)
    if not blob.chunked:
        raise APIError(
            404,
            "not_chunked",
            f"blob {sha256} is stored whole, not as chunks: download it with GET "
            f"/projects/{project}/blobs/{sha256}",
        )
    return {
        "sha256": blob.sha256,
        "size": blob.size,
        "chunks": [
            {"sha256": s.sha256, "size": s.size, "offset": s.offset} for s in chunk_spans(blob)
        ],
    }


def fetchable_chunks(
    session: Session, caller: Caller, project: str, hashes: Sequence[str]
) -> list[tuple[str, int]]:
    """`(sha256, raw size)` of each chunk asked, in order, if the project holds every one
    (readers): sent into it, or listed by a blob it holds. Raises APIError 404 naming the
    others, before anything is read."""
    scope = open_project(session, caller, project, Role.viewer)
    project_id = scope.project.id
    wanted = list(dict.fromkeys(hashes))
    sizes: dict[str, int] = {}
    for part in _parts(wanted):
        sizes.update(
            session.execute(
                select(Chunk.sha256, Chunk.size).where(
                    Chunk.sha256.in_(part),
                    Chunk.stored_size.is_not(None),
                    exists().where(
                        ProjectChunk.project_id == project_id, ProjectChunk.sha256 == Chunk.sha256
                    )
                    | exists().where(
                        ProjectBlob.project_id == project_id,
                        BlobChunk.blob_sha256 == ProjectBlob.sha256,
                        BlobChunk.chunk_sha256 == Chunk.sha256,
                    ),
                )
            ).all()
        )
    missing = [h for h in wanted if h not in sizes]
    if missing:
        raise APIError(
            404,
            "not_found",
            f"project '{project}' holds no chunk {missing[0]}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
            details={"missing": missing},
        )
    return [(h, sizes[h]) for h in hashes]


def pack_stream(store: BlobStore, chunks: list[tuple[str, int]]) -> Iterator[bytes]:
    """The pack of `chunks` (`(sha256, raw size)`), frames as stored, in order; a few frames
    are read ahead on threads (an object store answers each read after a round trip)."""
    todo = iter(chunks)
    with ThreadPoolExecutor(_FETCH_READERS) as pool:
        ahead: deque[tuple[str, int, Future[bytes]]] = deque()

        def read_next() -> None:
            item = next(todo, None)
            if item is not None:
                ahead.append((item[0], item[1], pool.submit(store.read_chunk, item[0])))

        for _ in range(_FETCH_READERS + 1):
            read_next()
        try:
            while ahead:
                sha256, size, pending = ahead.popleft()
                read_next()
                frame = pending.result()
                yield pack_record(sha256, size, frame)
                yield frame
        finally:
            for _, _, pending in ahead:
                pending.cancel()


# --- helpers ------------------------------------------------------------------------------------


def _insert(session: Session, table: Any) -> Any:
    """An INSERT of the session's dialect, with `on_conflict_*`."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def _parts(items: list[str], size: int = 500) -> Iterator[list[str]]:
    """`items` in slices short enough for one `IN (...)` (SQLite's bound-parameter limit)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


__all__ = [
    "MAX_PACK_BYTES",
    "PACK_MEDIA_TYPE",
    "ChunkRef",
    "ChunkSpan",
    "PackIngest",
    "assemble_blob",
    "chunk_list",
    "chunk_spans",
    "claim_project_chunks",
    "fetchable_chunks",
    "missing_chunks",
    "open_pack",
    "pack_stream",
    "store_batch",
]
