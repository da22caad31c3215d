"""Blobs a project holds: which of a list it lacks, and finding one it holds. A hash held only
by other projects counts as missing: knowing a hash is no proof of having its bytes."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from lmvp_server.blob_claims import claim_project_blobs
from lmvp_server.errors import not_found
from lmvp_server.models import Blob, ProjectBlob, Role
from lmvp_server.services.access import Caller, open_project


def missing_blobs(
    session: Session,
    caller: Caller,
    project: str,
    hashes: Sequence[str],
    *,
    claim_seconds: float = 0,
) -> list[str]:
    """Which of `hashes` the project lacks, in the order given, without repeats
    (contributors). The ones it holds are claimed: the garbage collector keeps them for
    `claim_seconds` (its grace period), for the commit that follows."""
    scope = open_project(session, caller, project, Role.contributor)
    wanted = list(dict.fromkeys(hashes))
    held = claim_project_blobs(session, scope.project.id, wanted, claim_seconds)
    return [h for h in wanted if h not in held]


def find_blob(session: Session, caller: Caller, project: str, sha256: str) -> Blob:
    """The blob `sha256` if the project holds it and the caller may read the project; raises
    APIError 404 (`blob_not_found`'s message) otherwise."""
    scope = open_project(session, caller, project, Role.viewer)
    blob = session.scalar(
        select(Blob)
        .join(ProjectBlob, ProjectBlob.sha256 == Blob.sha256)
        .where(ProjectBlob.project_id == scope.project.id, Blob.sha256 == sha256)
    )
    if blob is None:
        raise blob_not_found(sha256, project)
    return blob


def blob_not_found(sha256: str, project: str) -> Exception:
    """The 404 for a blob the project does not hold (or whose bytes the store lacks)."""
    return not_found(f"blob {sha256} in project '{project}'")
