"""A run's page: its parameters, metric keys and versions, and a chart per metric.

The charts are the one part of the console that needs JavaScript: `static/run.js` draws them
with the vendored uPlot from `metrics.json` below, which is the API's downsampled
`GET /runs/{id}/metrics` answered for the session cookie (a same-origin fetch), with vertical
markers at the steps of the run's versions. The page offers smoothing, a log y axis and the
model's other recent runs drawn over the same charts.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from lmvp_server import metric_store
from lmvp_server.deps import Caller, CtxDep, SessionDep
from lmvp_server.models import Project, Role, Run
from lmvp_server.schemas import MAX_INT, ProjectName
from lmvp_server.services import console, runs
from lmvp_server.web.rendering import PageError, PageRoute, render
from lmvp_server.web.session import WebCallerDep

router = APIRouter(route_class=PageRoute, include_in_schema=False)

# What a chart asks for when the page does not say: about two points per pixel of a wide chart.
DEFAULT_CHART_POINTS = 2000
# The model's newest runs offered for overlay on a run's charts.
OVERLAY_RUNS = 12


@router.get("/projects/{project}/runs/{run_id}")
def run_page(
    request: Request,
    project: ProjectName,
    run_id: int,
    caller: WebCallerDep,
    session: SessionDep,
) -> Response:
    """A run: status, parameters, metric keys with their latest values, its versions and
    the charts."""
    run, row = _load_run(session, caller, project, run_id)
    out = runs.get_run(session, caller, run.id)
    _, _, model = runs.load_run(session, caller, run.id, Role.viewer)
    others = [
        {"id": rid, "name": name, "url": f"/projects/{row.name}/runs/{rid}/metrics.json"}
        for rid, name, *_ in console.recent_runs(session, model, limit=OVERLAY_RUNS)
        if rid != run.id
    ]
    checkpoints = [
        {
            "number": v.number,
            "step": v.step,
            "url": f"/projects/{row.name}/models/{out.model}/versions/{v.number}",
        }
        for v in out.versions
        if v.step is not None
    ]
    return render(
        request,
        "run.html",
        {
            "project": row,
            "run": out,
            "checkpoints": checkpoints,
            "metrics_url": f"/projects/{row.name}/runs/{run.id}/metrics.json",
            "other_runs": others,
        },
    )


@router.get("/projects/{project}/runs/{run_id}/metrics.json")
def run_metrics(
    ctx: CtxDep,
    project: ProjectName,
    run_id: int,
    caller: WebCallerDep,
    session: SessionDep,
    max_points: Annotated[int, Query(ge=4, le=metric_store.MAX_POINTS)] = DEFAULT_CHART_POINTS,
) -> Response:
    """The run's series downsampled to `max_points` per key: the API's answer, for the
    browser's session."""
    run, _ = _load_run(session, caller, project, run_id)
    body = runs.read_metrics(
        session,
        caller,
        run.id,
        keys=None,
        max_points=max_points,
        step_min=None,
        step_max=None,
        max_keys=ctx.settings.max_metric_keys,
    )
    return Response(body, media_type="application/json")


def _load_run(
    session: SessionDep, caller: Caller, project: str, run_id: int
) -> tuple[Run, Project]:
    """The run if it belongs to `project` and the caller may read it; 404 otherwise."""
    if not 1 <= run_id <= MAX_INT:
        raise PageError(404, f"run {run_id} not found")
    run, row, _ = runs.load_run(session, caller, run_id, Role.viewer)
    if row.name != project:
        raise PageError(404, f"project '{project}' has no run {run_id}")
    return run, row
