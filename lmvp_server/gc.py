"""The garbage collector: frees the bytes of blobs that no version references, and the claims
that keep a blob alive while an upload or a commit is about to need it.

What is live
------------
A blob's bytes are needed while any of these holds, and the collector frees nothing for which
one does:

1. a version row of a project, live or in the trash (trashed versions keep their rows until
   they are purged), has a file with its sha256: then the project's `ProjectBlob` row stays;
2. any project still holds it (a `ProjectBlob` row), or an upload in progress may complete
   into it (an `Upload` row that declared its hash, or declared none and has its size; the row
   goes in the transaction that makes the project hold the blob): then the `Blob` row and the
   bytes stay. Blobs are shared by projects, so the bytes go only when the last project let
   go;
3. it was stored or claimed within the grace period (`LMVP_GC_GRACE_SECONDS`, one hour by
   default): `ProjectBlob.claimed_at` is set when `blobs/missing` tells a client that the
   project holds it (the client skips the upload and commits a little later), and
   `Blob.claimed_at` when an upload is about to complete into it (`claim_blob`, called before
   the store adopts the bytes, because a store that already holds a hash keeps the bytes it
   has and drops the upload's copy);
4. a commit is referencing it right now: the commit reads the project's rows of its blobs
   again, locked (`hold_for_commit`: `FOR SHARE` on PostgreSQL; on SQLite the commit already
   holds the database's write lock), after taking its model's lock, so either the commit sees
   that the collector took a row and answers 422 `missing_blobs` (the client uploads again), or
   the collector, which skips rows others hold locked, sees the new version's files.

How a pass frees (mark and sweep in small transactions)
-------------------------------------------------------
1. Expired uploads go first: `upload_lifecycle.expire_stale_uploads`, the server's own
   expiry, not a copy of it.
2. Orphans: bytes in the store without a `Blob` row (a crash between a store's write and the
   row's commit, or a store filled by hand) are listed with `BlobStore.iter_blobs`; those older
   than the grace period get a `Blob` row with their size and time and are then freed by step
   4 like any other unreferenced blob, under the same locks.
3. Release: project rows (`ProjectBlob`) that no version of their project references and
   that are older than the grace period are found by a read-only query, a batch at a time
   (`LMVP_GC_BATCH`, keyset by project and hash); each batch is then locked (`FOR UPDATE SKIP
   LOCKED`: rows a commit holds are left for the next pass) and deleted by a statement that
   checks the same conditions again, in a short transaction of its own.
4. Sweep: `Blob` rows that no project holds and that were neither stored nor claimed within
   the grace period are deleted a batch at a time with `DELETE ... RETURNING` (locked the same
   way); *inside that transaction*, with the rows still locked, the store deletes their bytes,
   and only then does the transaction commit. An upload about to complete into one of them
   claims it first (step 3 of "what is live"): the claim waits for the lock, so it either came
   first (and the sweep skips the row) or comes after the bytes are gone (and the upload's
   bytes are stored anew). A `ProjectBlob` row inserted meanwhile is refused by its foreign key
   or skipped as locked.

Chunks (issue 17, lmvp_server/services/chunks.py) follow the same scheme one level down. A
project's `ProjectChunk` row lives while a blob the project holds (a `ProjectBlob` row, which
the steps above keep for live, trashed, claimed and fresh versions) lists the chunk, or while
the row was made or claimed (by `chunks/missing` or an assembly) within the grace period: sent
but not yet assembled. A `Chunk` row and its frame at `chunks/<sha256>` live while any project
holds it, any blob row lists it (`BlobChunk`; the rows go with their blob), or it was stored or
claimed (a pack about to store it claims it first) within the grace period. After step 3, 3b
releases project chunk rows as step 3 does project blob rows; after step 4, 4b sweeps chunk
rows and their frames as step 4 does blobs (frames deleted inside the transaction that deletes
the rows). A dry run counts the chunks unreferenced now, not those the same pass's release of
blobs would leave unreferenced.

Deleting the bytes before the row's deletion commits is what makes a SIGKILL harmless: killed
between the two, the `Blob` row stays with no project holding it and no bytes; nothing can
reach it (downloads and commits go through `ProjectBlob`), an upload of the same bytes stores
them again, and the next pass deletes the row (deleting bytes a store no longer holds is no
error). The other order (commit the row's deletion, then delete the bytes) would let an upload
that completes in between keep the doomed bytes as its own. A pass never holds a lock for more
than one batch, so listings and commits go on while it runs; two passes at once (two workers,
or `lmvp-server gc` beside a server) are safe, since each skips the rows the other holds.

The server runs a pass every `LMVP_GC_INTERVAL` seconds as a fleet job (`lmvp_server.fleet`:
one process of all those sharing the database), `lmvp-server gc [--dry-run]` runs one from the
command line, and `POST /api/v1/admin/gc` on demand (server admins).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    delete,
    exists,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased, sessionmaker

from lmvp_server.db import utcnow
from lmvp_server.models import (
    Blob,
    BlobChunk,
    Chunk,
    Model,
    ProjectBlob,
    ProjectChunk,
    Upload,
    Version,
    VersionFile,
)
from lmvp_server.settings import Settings
from lmvp_server.storage import BlobStore
from lmvp_server.upload_lifecycle import expire_stale_uploads

log = logging.getLogger(__name__)

# The advisory lock (PostgreSQL) that makes the scheduled passes of a fleet run one at a time:
# the bytes of "LMVPgcol". Passes are safe together; this only saves doing the work twice.
_PASS_LOCK_KEY = int.from_bytes(b"LMVPgcol", "big") & 0x7FFF_FFFF_FFFF_FFFF
_ORPHAN_PAGE = 1000


class GCError(Exception):
    """A pass stopped: the store refused a deletion, or the database failed. Nothing referenced
    was touched; run the pass again once the cause is fixed."""


@dataclass(frozen=True)
class GCReport:
    """What one pass freed (or, with `dry_run`, would free)."""

    dry_run: bool
    # Project rows let go: blobs a project held that none of its versions references.
    project_blobs_released: int
    # Blobs whose bytes were deleted (orphans included) and their total size.
    blobs_freed: int
    bytes_freed: int
    # Bytes found in the store with no row, older than the grace period (part of the above).
    orphans_removed: int
    # Abandoned uploads removed (None in a dry run: the expiry is not previewed).
    uploads_removed: int | None
    duration_seconds: float
    # Chunks (issue 17): project rows let go, chunks whose frames were deleted and the frames'
    # stored bytes.
    project_chunks_released: int = 0
    chunks_freed: int = 0
    chunk_bytes_freed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        """The report for a person, one fact a line."""
        verb = "would free" if self.dry_run else "freed"
        uploads = (
            "not examined in a dry run"
            if self.uploads_removed is None
            else f"{self.uploads_removed} removed"
        )
        return [
            f"{verb} {self.blobs_freed} blob(s), {human_bytes(self.bytes_freed)} "
            f"({self.bytes_freed} bytes)",
            f"project blobs released: {self.project_blobs_released}",
            f"orphaned blobs (bytes without a row): {self.orphans_removed}",
            f"{verb} {self.chunks_freed} chunk(s), {human_bytes(self.chunk_bytes_freed)} stored "
            f"({self.project_chunks_released} project chunk(s) released)",
            f"abandoned uploads: {uploads}",
            f"took {self.duration_seconds:.2f} s",
        ]


def human_bytes(size: int) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


# --- the pass -------------------------------------------------------------------------------


def _older_than(created: Any, claimed: Any, cutoff: datetime) -> ColumnElement[bool]:
    return and_(created < cutoff, or_(claimed.is_(None), claimed < cutoff))


def _referenced_in_project() -> Any:
    """EXISTS a version (live or trashed) of the ProjectBlob's project with a file of its
    hash; correlated to `ProjectBlob`."""
    return (
        select(literal(1))
        .select_from(VersionFile)
        .join(Version, Version.id == VersionFile.version_id)
        .join(Model, Model.id == Version.model_id)
        .where(
            VersionFile.sha256 == ProjectBlob.sha256,
            Model.project_id == ProjectBlob.project_id,
        )
        .exists()
    )


def collect(
    sessions: sessionmaker[Session],
    store: BlobStore,
    settings: Settings,
    *,
    dry_run: bool = False,
) -> GCReport:
    """One pass of the collector (see the module's docstring); raises GCError."""
    started = time.monotonic()
    cutoff = utcnow() - timedelta(seconds=settings.gc_grace_seconds)
    batch = settings.gc_batch
    try:
        uploads = None
        if not dry_run:
            with sessions() as session:
                uploads = expire_stale_uploads(session, settings)
        orphans = _adopt_orphans(sessions, store, cutoff, dry_run=dry_run)
        pause = settings.gc_test_pause_seconds
        if dry_run:
            released, freed, size = _preview(sessions, cutoff, batch)
            freed += len(orphans)
            size += sum(orphans.values())
            orphans_removed = len(orphans)
            chunks_released, chunks_freed, chunk_bytes = _preview_chunks(sessions, cutoff)
        else:
            released = _release(sessions, cutoff, batch, pause)
            chunks_released = _release_chunks(sessions, cutoff, batch, pause)
            freed, size, orphans_removed = _sweep(
                sessions, store, cutoff, batch, set(orphans), pause
            )
            chunks_freed, chunk_bytes = _sweep_chunks(sessions, store, cutoff, batch, pause)
    except GCError:
        raise
    except Exception as exc:
        raise GCError(f"the garbage collection pass stopped: {exc}") from exc
    report = GCReport(
        dry_run=dry_run,
        project_blobs_released=released,
        blobs_freed=freed,
        bytes_freed=size,
        orphans_removed=orphans_removed,
        uploads_removed=uploads,
        duration_seconds=time.monotonic() - started,
        project_chunks_released=chunks_released,
        chunks_freed=chunks_freed,
        chunk_bytes_freed=chunk_bytes,
    )
    log.info("garbage collection: %s", "; ".join(report.lines()))
    return report


def _adopt_orphans(
    sessions: sessionmaker[Session], store: BlobStore, cutoff: datetime, *, dry_run: bool
) -> dict[str, int]:
    """Give bytes without a `Blob` row, older than `cutoff`, a row (so that the sweep frees
    them under its locks); returns their sizes by hash. Nothing when the store cannot list."""
    try:
        listing = store.iter_blobs()
    except NotImplementedError:
        log.warning("the blob store cannot list its blobs: orphaned bytes are not looked for")
        return {}
    found: dict[str, int] = {}
    while page := list(islice(listing, _ORPHAN_PAGE)):
        with sessions() as session:
            known = set(
                session.scalars(select(Blob.sha256).where(Blob.sha256.in_([s for s, _ in page])))
            )
            orphans = [
                (sha, stat)
                for sha, stat in page
                if sha not in known
                and stat.modified is not None
                and stat.modified < cutoff.timestamp()
            ]
            if orphans and not dry_run:
                rows = [
                    {
                        "sha256": sha,
                        "size": stat.size,
                        "created_at": datetime.fromtimestamp(stat.modified or 0, UTC),
                        "claimed_at": None,
                    }
                    for sha, stat in orphans
                ]
                dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
                session.execute(dialect.insert(Blob).values(rows).on_conflict_do_nothing())
                session.commit()
            found.update((sha, stat.size) for sha, stat in orphans)
    return found


def _make_way(session: Session, began: float) -> None:
    """After a batch's commit on SQLite, whose one write lock every commit and upload waits for
    (polling, with growing sleeps): pause as long as the batch held it (between 10 and 100 ms),
    so the writers waiting get their turn before the next batch takes the lock again.
    PostgreSQL's row locks leave everyone else alone."""
    if session.get_bind().dialect.name == "sqlite":
        time.sleep(min(0.1, max(0.01, time.monotonic() - began)))


def _unreferenced_project_blobs(
    session: Session, cutoff: datetime, after: tuple[int, str] | None, limit: int
) -> tuple[list[tuple[int, str]], tuple[int, str] | None]:
    """The next `limit` project rows after `after` (by project and hash) older than `cutoff`,
    and which of them no version of their project references; with the last row looked at,
    None when there are no more. Two index-driven queries (the primary key's order, then
    `version_files.sha256` for just those hashes), so the cost never depends on the planner
    finding an anti-join."""
    query = select(ProjectBlob.project_id, ProjectBlob.sha256).where(
        _older_than(ProjectBlob.created_at, ProjectBlob.claimed_at, cutoff)
    )
    if after is not None:
        project_id, sha = after
        query = query.where(
            or_(
                ProjectBlob.project_id > project_id,
                and_(ProjectBlob.project_id == project_id, ProjectBlob.sha256 > sha),
            )
        )
    rows = [
        (p, s)
        for p, s in session.execute(
            query.order_by(ProjectBlob.project_id, ProjectBlob.sha256).limit(limit)
        )
    ]
    if not rows:
        return [], None
    referenced = {
        (p, s)
        for p, s in session.execute(
            select(Model.project_id, VersionFile.sha256)
            .join(Version, Version.id == VersionFile.version_id)
            .join(Model, Model.id == Version.model_id)
            .where(VersionFile.sha256.in_({s for _, s in rows}))
            .distinct()
        )
    }
    return [r for r in rows if r not in referenced], rows[-1]


def _release(sessions: sessionmaker[Session], cutoff: datetime, batch: int, pause: float) -> int:
    """Delete the project rows no version references, a batch per transaction."""
    released = 0
    after: tuple[int, str] | None = None
    while True:
        with sessions() as session:
            began = time.monotonic()
            candidates, scanned_to = _unreferenced_project_blobs(session, cutoff, after, batch)
            session.rollback()  # the read above is no reason to keep a snapshot
            if scanned_to is None:
                return released
            after = scanned_to
            released += _delete_unneeded(
                session, ProjectBlob, candidates, cutoff, _referenced_in_project()
            )
            if pause:
                time.sleep(pause)
            session.commit()
            _make_way(session, began)


def _delete_unneeded(
    session: Session,
    table: type[ProjectBlob] | type[ProjectChunk],
    candidates: list[tuple[int, str]],
    cutoff: datetime,
    needed: Any,
) -> int:
    """Delete the rows of `table` (a project's hold on a blob or on a chunk) among
    `candidates` (project id, sha256) that are older than `cutoff` and that `needed` (a
    correlated EXISTS) no longer finds; rows another transaction holds locked are left for the
    next pass. Returns how many went."""
    by_project: dict[int, list[str]] = {}
    for project_id, sha in candidates:
        by_project.setdefault(project_id, []).append(sha)
    deleted = 0
    for project_id, shas in by_project.items():
        stale = and_(
            table.project_id == project_id,
            table.sha256.in_(shas),
            _older_than(table.created_at, table.claimed_at, cutoff),
        )
        locked = list(
            session.scalars(select(table.sha256).where(stale).with_for_update(skip_locked=True))
        )
        if not locked:
            continue
        # A new statement: it sees every commit that ended before the locks were had.
        result = session.execute(delete(table).where(stale, table.sha256.in_(locked), ~needed))
        deleted += result.rowcount  # type: ignore[attr-defined]
    return deleted


def _unheld_blobs(cutoff: datetime) -> Any:
    """Blobs no project holds, neither stored nor claimed since `cutoff`, as an alias."""
    inner = aliased(Blob)
    unheld = ~exists().where(ProjectBlob.sha256 == inner.sha256)
    return inner, and_(
        unheld, ~_completing(inner), _older_than(inner.created_at, inner.claimed_at, cutoff)
    )


def _completing(blob: Any) -> Any:
    """EXISTS an upload in progress that may complete into `blob`: it declared this hash, or
    declared none and has its size. Its row goes in the transaction that makes its project hold
    the blob."""
    return exists().where(
        or_(
            Upload.sha256 == blob.sha256,
            and_(Upload.sha256 == "", Upload.length == blob.size),
        )
    )


def _sweep(
    sessions: sessionmaker[Session],
    store: BlobStore,
    cutoff: datetime,
    batch: int,
    orphans: set[str],
    pause: float,
) -> tuple[int, int, int]:
    """Delete unheld blobs and their bytes: (blobs, bytes, orphans among them)."""
    freed = size = orphans_removed = 0
    for rows in _swept(
        sessions, Blob, Blob.size, _unheld_blobs(cutoff), store.delete_many, batch, pause, "blob"
    ):
        freed += len(rows)
        size += sum(blob_size for _, blob_size in rows)
        orphans_removed += sum(1 for sha, _ in rows if sha in orphans)
    return freed, size, orphans_removed


def _swept(
    sessions: sessionmaker[Session],
    model: type[Blob] | type[Chunk],
    size: Any,
    unheld: tuple[Any, Any],
    delete_stored: Callable[[list[str]], None],
    batch: int,
    pause: float,
    what: str,
) -> Iterator[list[tuple[str, int]]]:
    """Delete the rows of `model` that `unheld` (an alias of it and the condition on the alias)
    selects, a batch per transaction: the rows deleted (and so locked), then their bytes in the
    store (`delete_stored`), then the commit; yields each batch's (sha256, `size`). Rows another
    transaction holds locked are left for the next pass. Raises GCError if the store refuses a
    deletion: that batch's rows stay."""
    inner, condition = unheld
    last = ""
    conflicts = 0
    while True:
        doomed = (
            select(inner.sha256)
            .where(condition, inner.sha256 > last)
            .order_by(inner.sha256)
            .limit(batch)
            .with_for_update(skip_locked=True)
        )
        with sessions() as session:
            began = time.monotonic()
            try:
                rows = [
                    (sha, stored or 0)
                    for sha, stored in session.execute(
                        delete(model).where(model.sha256.in_(doomed)).returning(model.sha256, size)
                    )
                ]
            except IntegrityError:
                # PostgreSQL: a project (or, for a chunk, a blob) took one of them after the
                # statement's snapshot (its row's foreign key refused the deletion). Again,
                # with a fresh snapshot.
                session.rollback()
                conflicts += 1
                if conflicts > 5:
                    raise
                continue
            if not rows:
                session.rollback()
                return
            last = max(sha for sha, _ in rows)
            try:
                delete_stored([sha for sha, _ in rows])
            except Exception as exc:
                session.rollback()
                raise GCError(
                    f"the blob store refused to delete a {what} ({exc}); the rows of this batch "
                    "stay and the next pass tries again"
                ) from exc
            if pause:
                time.sleep(pause)
            session.commit()
            _make_way(session, began)
        yield rows


def _preview(sessions: sessionmaker[Session], cutoff: datetime, batch: int) -> tuple[int, int, int]:
    """What `_release` and `_sweep` would free now: (project rows, blobs, bytes)."""
    with sessions() as session:
        released = 0
        after: tuple[int, str] | None = None
        while True:
            candidates, scanned_to = _unreferenced_project_blobs(session, cutoff, after, batch)
            if scanned_to is None:
                break
            released += len(candidates)
            after = scanned_to
        # A blob goes when every project row of it would go (or it has none).
        kept = exists().where(
            ProjectBlob.sha256 == Blob.sha256,
            or_(
                ~_older_than(ProjectBlob.created_at, ProjectBlob.claimed_at, cutoff),
                _referenced_in_project(),
            ),
        )
        count, total = session.execute(
            select(func.count(), func.coalesce(func.sum(Blob.size), 0)).where(
                ~kept, ~_completing(Blob), _older_than(Blob.created_at, Blob.claimed_at, cutoff)
            )
        ).one()
    return released, int(count), int(total)


# --- chunks (3b and 4b) -------------------------------------------------------------------------


def _listed_in_project() -> Any:
    """EXISTS a blob the ProjectChunk's project holds that lists its chunk; correlated."""
    return (
        select(literal(1))
        .select_from(BlobChunk)
        .join(ProjectBlob, ProjectBlob.sha256 == BlobChunk.blob_sha256)
        .where(
            BlobChunk.chunk_sha256 == ProjectChunk.sha256,
            ProjectBlob.project_id == ProjectChunk.project_id,
        )
        .exists()
    )


def _releasable_chunks(cutoff: datetime) -> ColumnElement[bool]:
    return and_(
        _older_than(ProjectChunk.created_at, ProjectChunk.claimed_at, cutoff),
        ~_listed_in_project(),
    )


def _release_chunks(
    sessions: sessionmaker[Session], cutoff: datetime, batch: int, pause: float
) -> int:
    """Delete the project chunk rows no blob of their project lists, older than the grace
    period, a batch per transaction (rows others hold locked are left for the next pass)."""
    released = 0
    after: tuple[int, str] | None = None
    while True:
        with sessions() as session:
            began = time.monotonic()
            query = select(ProjectChunk.project_id, ProjectChunk.sha256).where(
                _releasable_chunks(cutoff)
            )
            if after is not None:
                query = query.where(
                    or_(
                        ProjectChunk.project_id > after[0],
                        and_(ProjectChunk.project_id == after[0], ProjectChunk.sha256 > after[1]),
                    )
                )
            candidates = [
                (p, c)
                for p, c in session.execute(
                    query.order_by(ProjectChunk.project_id, ProjectChunk.sha256).limit(batch)
                )
            ]
            session.rollback()
            if not candidates:
                return released
            after = candidates[-1]
            released += _delete_unneeded(
                session, ProjectChunk, candidates, cutoff, _listed_in_project()
            )
            if pause:
                time.sleep(pause)
            session.commit()
            _make_way(session, began)


def _unheld_chunks(cutoff: datetime) -> Any:
    """Chunks no project holds and no blob lists, neither stored nor claimed since `cutoff`."""
    inner = aliased(Chunk)
    return inner, and_(
        ~exists().where(ProjectChunk.sha256 == inner.sha256),
        ~exists().where(BlobChunk.chunk_sha256 == inner.sha256),
        _older_than(inner.created_at, inner.claimed_at, cutoff),
    )


def _sweep_chunks(
    sessions: sessionmaker[Session],
    store: BlobStore,
    cutoff: datetime,
    batch: int,
    pause: float,
) -> tuple[int, int]:
    """Delete unheld chunks and their frames: (chunks, stored bytes)."""
    freed = size = 0
    for rows in _swept(
        sessions,
        Chunk,
        Chunk.stored_size,
        _unheld_chunks(cutoff),
        store.delete_chunks,
        batch,
        pause,
        "chunk",
    ):
        freed += len(rows)
        size += sum(stored for _, stored in rows)
    return freed, size


def _preview_chunks(sessions: sessionmaker[Session], cutoff: datetime) -> tuple[int, int, int]:
    """What `_release_chunks` and `_sweep_chunks` would free now: (project rows, chunks, stored
    bytes), counting only what is unreferenced already."""
    with sessions() as session:
        released = session.scalar(
            select(func.count()).select_from(ProjectChunk).where(_releasable_chunks(cutoff))
        )
        kept = exists().where(ProjectChunk.sha256 == Chunk.sha256, ~_releasable_chunks(cutoff))
        count, total = session.execute(
            select(func.count(), func.coalesce(func.sum(Chunk.stored_size), 0)).where(
                ~kept,
                ~exists().where(BlobChunk.chunk_sha256 == Chunk.sha256),
                _older_than(Chunk.created_at, Chunk.claimed_at, cutoff),
            )
        ).one()
    return int(released or 0), int(count), int(total or 0)


def fleet_jobs(
    sessions: sessionmaker[Session], store: BlobStore, settings: Settings
) -> list[tuple[str, float, Callable[[], object]]]:
    """The server's periodic pass as a fleet job (`lmvp_server.fleet`: one process of all those
    sharing the database runs it), every `LMVP_GC_INTERVAL` seconds; none when that is 0."""
    if settings.gc_interval <= 0:
        return []

    def run() -> None:
        collect(sessions, store, settings)

    return [("garbage-collection", settings.gc_interval, run)]


__all__ = [
    "GCError",
    "GCReport",
    "collect",
    "fleet_jobs",
    "human_bytes",
]
