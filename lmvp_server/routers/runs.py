"""Runs and their metrics: the HTTP face of `services.runs` (create, list, finish; ingest
batches of points; read series downsampled on the server).

A run belongs to a model of a project; `/runs/{id}` addresses it by id alone, and the caller
must be a member of its project (viewers read, contributors log and finish). Someone who is
not a member gets 404, as for everything else in a project.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from lmvp_server import metric_store
from lmvp_server.deps import CallerDep, CtxDep, SessionDep
from lmvp_server.openapi import errors
from lmvp_server.schemas import (
    MAX_BIGINT,
    MAX_INT,
    MetricsBatch,
    MetricsIngested,
    MetricsOut,
    ModelName,
    ProjectName,
    RunCreate,
    RunOut,
    RunPage,
    RunUpdate,
)
from lmvp_server.services import runs

router = APIRouter(tags=["runs"])

RunId = Annotated[int, Path(ge=1, le=MAX_INT, description="the run's id")]


# --- runs ---------------------------------------------------------------------------------------


@router.post(
    "/projects/{project}/runs",
    response_model=RunOut,
    status_code=201,
    responses=errors(400, 403, 404, 413, 422),
)
def create_run(
    project: ProjectName, body: RunCreate, ctx: CtxDep, caller: CallerDep, session: SessionDep
) -> RunOut:
    """Start a run of one of the project's models (contributors)."""
    return runs.create_run(
        session,
        caller,
        project,
        body,
        max_params_bytes=ctx.settings.max_metadata_bytes,
    )


@router.get(
    "/projects/{project}/models/{model}/runs", response_model=RunPage, responses=errors(404, 422)
)
def list_runs(
    project: ProjectName,
    model: ModelName,
    caller: CallerDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    before: Annotated[
        int | None, Query(ge=1, le=MAX_INT, description="only runs with a smaller id")
    ] = None,
) -> RunPage:
    """The model's runs, newest first, `limit` at a time; pass `next` back as `before`."""
    return runs.list_runs(session, caller, project, model, limit=limit, before=before)


@router.get("/runs/{run_id}", response_model=RunOut, responses=errors(404, 422))
def get_run(caller: CallerDep, session: SessionDep, run_id: RunId) -> RunOut:
    """A run with its metric keys (count, step range, latest value) and its versions."""
    return runs.get_run(session, caller, run_id)


@router.patch("/runs/{run_id}", response_model=RunOut, responses=errors(400, 403, 404, 413, 422))
def update_run(
    body: RunUpdate,
    ctx: CtxDep,
    caller: CallerDep,
    session: SessionDep,
    run_id: RunId,
) -> RunOut:
    """Finish a run (`status` finished or failed), or rename it or change its parameters
    (contributors). Finishing records a `run.finished` event."""
    return runs.update_run(
        session,
        caller,
        run_id,
        body,
        max_params_bytes=ctx.settings.max_metadata_bytes,
    )


# --- metrics ------------------------------------------------------------------------------------


async def read_metrics_batch(request: Request) -> MetricsBatch:
    """The request body, parsed and validated in one pass by pydantic's JSON parser: large
    batches spend a third of the time they would through `json.loads` and a model."""
    body = await request.body()
    try:
        # On a worker thread: validating 50,000 points takes the event loop from every stream.
        return await run_in_threadpool(MetricsBatch.model_validate_json, body)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


def _inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema of `model` with its `$defs` references resolved in place."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


@router.post(
    "/runs/{run_id}/metrics",
    response_model=MetricsIngested,
    responses=errors(
        400,
        403,
        404,
        413,
        422,
        notes={
            413: "More points in one request than the server takes, or a body over its limit.",
            422: "Invalid, or the run would hold more distinct keys than the server allows.",
        },
    ),
    # The body is read by `read_metrics_batch`, so FastAPI cannot see it: document it here.
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _inline_schema(MetricsBatch)}},
        }
    },
)
def log_metrics(
    ctx: CtxDep,
    caller: CallerDep,
    session: SessionDep,
    batch: Annotated[MetricsBatch, Depends(read_metrics_batch)],
    run_id: RunId,
) -> MetricsIngested:
    """Add points to a run (contributors): `points` ({key, step, value, wall_time}) and/or
    `series` ({key, steps, values, wall_times}). Values are numbers or "NaN", "Infinity",
    "-Infinity"; steps are integers from 0; wall times are seconds since the Unix epoch.

    Idempotent per (key, step): points the run holds already are ignored, so a re-sent batch
    changes nothing. Up to 200,000 points per request; a run holds at most 1,000 distinct keys
    (the server's `LMVP_MAX_METRIC_KEYS`), and a batch that would exceed that is refused
    whole."""
    return runs.log_metrics(session, caller, run_id, batch, max_keys=ctx.settings.max_metric_keys)


@router.get("/runs/{run_id}/metrics", response_model=MetricsOut, responses=errors(404, 422))
def read_metrics(
    ctx: CtxDep,
    caller: CallerDep,
    session: SessionDep,
    run_id: RunId,
    keys: Annotated[
        list[str] | None,
        Query(description="comma-separated keys (or the parameter repeated); default: all"),
    ] = None,
    max_points: Annotated[
        int | None,
        Query(
            ge=4,
            le=metric_store.MAX_POINTS,
            description="at most this many points per key (M4 downsampling, keeping minima and "
            "maxima); default and limit 100,000",
        ),
    ] = None,
    step_min: Annotated[int | None, Query(ge=0, le=MAX_BIGINT)] = None,
    step_max: Annotated[int | None, Query(ge=0, le=MAX_BIGINT)] = None,
) -> Response:
    """The run's series, each exact when the range holds at most `max_points` points, else
    downsampled on the server: `max_points // 4` buckets of steps, each giving its first,
    last, minimum and maximum point, so the range's minimum and maximum always show.

    Values are numbers or "NaN", "Infinity", "-Infinity". Only the keys asked for are read;
    without `keys`, the run's keys up to the server's key limit, in name order."""
    body = runs.read_metrics(
        session,
        caller,
        run_id,
        keys=keys,
        max_points=max_points,
        step_min=step_min,
        step_max=step_max,
        max_keys=ctx.settings.max_metric_keys,
    )
    return Response(body, media_type="application/json")


__all__ = ["router"]
