"""Storage: what a project's blobs take (`GET .../usage`), and the garbage collector on demand
(`POST /admin/gc`, server admins): the HTTP face of `services.usage`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from lmvp_server.context import CtxDep
from lmvp_server.deps import CallerDep, SessionDep
from lmvp_server.errors import APIError
from lmvp_server.gc import GCError
from lmvp_server.openapi import errors
from lmvp_server.schemas import GCReportOut, ProjectName, UsageOut
from lmvp_server.services import usage

router = APIRouter(tags=["storage"])


@router.get("/projects/{project}/usage", response_model=UsageOut, responses=errors(404, 422))
def project_usage(project: ProjectName, caller: CallerDep, session: SessionDep) -> UsageOut:
    """Bytes of the distinct blobs the project holds, and per model the bytes its versions
    reference and what removing it would free (blobs no other model references)."""
    return usage.project_usage(session, caller, project)


@router.post("/admin/gc", response_model=GCReportOut, responses=errors(403, 503))
def collect_garbage(
    ctx: CtxDep, caller: CallerDep, dry_run: Annotated[bool, Query()] = False
) -> GCReportOut:
    """Run one garbage collection pass now (server admins): free the bytes of blobs no version,
    live or in the trash, references, and abandoned uploads; `dry_run` only counts."""
    try:
        report = usage.collect_garbage(
            caller, ctx.sessions, ctx.blob_store, ctx.settings, dry_run=dry_run
        )
    except GCError as exc:
        raise APIError(503, "gc_failed", str(exc)) from exc
    return GCReportOut(**report.as_dict())


__all__ = ["router"]
