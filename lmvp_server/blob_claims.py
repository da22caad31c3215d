"""Claims on blobs: what an upload completing, `blobs/missing` and a commit do so that the
garbage collector (lmvp_server/gc.py, whose docstring has the whole scheme) keeps the blob they
are about to need. Kept apart from the collector so that the upload and version code can call
it without importing the collector.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from lmvp_server.db import utcnow
from lmvp_server.models import Blob, ProjectBlob

# `blobs/missing` claims again a blob whose claim is older than this part of the grace period,
# so that asking twice in a row writes once.
_RECLAIM_FRACTION = 0.25


def claim_blob(session: Session, sha256: str, size: int) -> None:
    """Before an upload completes into `sha256`: make sure a `Blob` row exists and is claimed
    now, and commit. Called before the store adopts the bytes: if a pass is deleting this blob,
    this waits for it to finish (the bytes are then gone, and the upload stores its own), and
    a pass that comes later sees the claim and leaves the blob alone."""
    now = utcnow()
    values = {"sha256": sha256, "size": size, "created_at": now, "claimed_at": now}
    if session.get_bind().dialect.name == "postgresql":
        pg = postgresql.insert(Blob).values(values)
        session.execute(
            pg.on_conflict_do_update(index_elements=[Blob.sha256], set_={"claimed_at": now})
        )
    else:
        lite = sqlite.insert(Blob).values(values)
        session.execute(
            lite.on_conflict_do_update(index_elements=[Blob.sha256], set_={"claimed_at": now})
        )
    session.commit()


def claim_project_blobs(
    session: Session, project_id: int, hashes: Sequence[str], grace_seconds: float
) -> set[str]:
    """Which of `hashes` the project holds, each claimed for the grace period (for
    `blobs/missing`: the client will commit them without uploading). Claims older than a
    quarter of the grace period are renewed; a row a pass takes meanwhile counts as missing."""
    wanted = list(dict.fromkeys(hashes))
    if not wanted:
        return set()
    rows = session.execute(
        select(ProjectBlob.sha256, ProjectBlob.created_at, ProjectBlob.claimed_at).where(
            ProjectBlob.project_id == project_id, ProjectBlob.sha256.in_(wanted)
        )
    ).all()
    now = utcnow()
    renew_before = now - timedelta(seconds=grace_seconds * _RECLAIM_FRACTION)
    held = {sha for sha, _, _ in rows}
    stale = [
        sha for sha, created, claimed in rows if max(created, claimed or created) < renew_before
    ]
    if stale:
        session.execute(
            update(ProjectBlob)
            .where(ProjectBlob.project_id == project_id, ProjectBlob.sha256.in_(stale))
            .values(claimed_at=now)
        )
        session.commit()
        # A pass may have released some between the read and the claim.
        still = set(
            session.scalars(
                select(ProjectBlob.sha256).where(
                    ProjectBlob.project_id == project_id, ProjectBlob.sha256.in_(stale)
                )
            )
        )
        held -= set(stale) - still
    return held


def hold_for_commit(session: Session, project_id: int, hashes: set[str]) -> set[str]:
    """For a commit, after it took its model's lock: the project's rows of `hashes`, read
    again and held until the commit ends (`FOR SHARE` on PostgreSQL, the write lock the commit
    already has on SQLite), so a pass cannot release them under it. Returns the hashes the
    project no longer holds (a pass released them since the commit first looked)."""
    held = set(
        session.scalars(
            select(ProjectBlob.sha256)
            .where(ProjectBlob.project_id == project_id, ProjectBlob.sha256.in_(hashes))
            .with_for_update(read=True)
        )
    )
    return hashes - held


__all__ = ["claim_blob", "claim_project_blobs", "hold_for_commit"]
