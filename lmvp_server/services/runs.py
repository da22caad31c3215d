"""Runs and their metrics: start a run of a model, list, read and finish runs; ingest batches
of points (idempotent per key and step) and read series downsampled by `metric_store`.

A run belongs to a model of a project; `run_id` addresses it alone, and the caller must be a
member of its project (viewers read, contributors log and finish). Someone who is not a member
gets 404, as for everything else in a project.
"""

from __future__ import annotations

import math
import operator
from collections import defaultdict
from itertools import islice
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session

from lmvp_server import metric_store
from lmvp_server.db import utcnow
from lmvp_server.errors import APIError, forbidden
from lmvp_server.models import MetricKey, Model, Project, Role, Run, RunStatus, Version
from lmvp_server.schemas import (
    MAX_BIGINT,
    MetricKeyOut,
    MetricsBatch,
    MetricsIngested,
    RunCreate,
    RunOut,
    RunPage,
    RunUpdate,
    RunVersionOut,
    json_value_problem,
)
from lmvp_server.services.access import (
    Caller,
    ProjectScope,
    in_trash_error,
    open_model,
    role_in,
)

# The most points one request may carry (the JSON body limit allows about this many too).
MAX_BATCH_POINTS = 200_000


def create_run(
    session: Session, caller: Caller, project: str, body: RunCreate, *, max_params_bytes: int
) -> RunOut:
    """Start a run of one of the project's models (contributors); records `run.created`.

    Raises APIError 413 when `params` is over `max_params_bytes` once serialised."""
    scope = open_model(session, caller, project, body.model, Role.contributor)
    row, model = scope.project, scope.model
    _check_params_size(max_params_bytes, body.params)
    now = utcnow()
    run = Run(
        project_id=row.id,
        model_id=model.id,
        name=body.name,
        host=body.host,
        params=body.params,
        status=RunStatus.running.value,
        author_id=caller.user.id,
        started_at=body.started_at or now,
        updated_at=now,
    )
    run.author = caller.user
    session.add(run)
    session.flush()
    if not run.name:
        run.name = f"run-{run.id}"
    scope.record_model_event(
        "run.created", payload={"run": run.id, "name": run.name, "host": run.host}
    )
    session.commit()
    return _runs_out(session, row, model, [run])[0]


def list_runs(
    session: Session,
    caller: Caller,
    project: str,
    model: str,
    *,
    limit: int,
    before: int | None = None,
) -> RunPage:
    """The model's runs newest first, `limit` at a time, with ids below `before` when given."""
    scope = open_model(session, caller, project, model, Role.viewer)
    query = select(Run).where(Run.model_id == scope.model.id)
    if before is not None:
        query = query.where(Run.id < before)
    runs = list(session.scalars(query.order_by(Run.id.desc()).limit(limit + 1)))
    more = len(runs) > limit
    runs = runs[:limit]
    items = _runs_out(session, scope.project, scope.model, runs)
    return RunPage(items=items, next=runs[-1].id if more else None)


def get_run(session: Session, caller: Caller, run_id: int) -> RunOut:
    """A run with its metric keys (count, step range, latest value) and its versions."""
    run, project, model = load_run(session, caller, run_id, Role.viewer)
    return _runs_out(session, project, model, [run])[0]


def update_run(
    session: Session, caller: Caller, run_id: int, body: RunUpdate, *, max_params_bytes: int
) -> RunOut:
    """Finish a run (status finished or failed), rename it or change its parameters
    (contributors). Finishing records a `run.finished` event."""
    run, project, model = load_run(session, caller, run_id, Role.contributor)
    finished = False
    if body.status is not None and body.status != run.status:
        if body.status == RunStatus.running.value:
            run.ended_at = None
        else:
            run.ended_at = body.ended_at or utcnow()
            finished = True
        run.status = body.status
    elif body.ended_at is not None and run.status != RunStatus.running.value:
        run.ended_at = body.ended_at
    if body.name is not None:
        run.name = body.name
    if body.params is not None:
        _check_params_size(max_params_bytes, body.params)
        run.params = body.params
    run.updated_at = utcnow()
    if finished:
        scope = ProjectScope(session, caller, project, Role.contributor)
        scope.record(
            "run.finished",
            model=model.name,
            payload={"run": run.id, "name": run.name, "status": run.status},
        )
    session.commit()
    return _runs_out(session, project, model, [run])[0]


def log_metrics(
    session: Session, caller: Caller, run_id: int, batch: MetricsBatch, *, max_keys: int
) -> MetricsIngested:
    """Add a batch of points to a run (contributors); points it holds already are ignored.

    Raises APIError 413 `too_many_points` past `MAX_BATCH_POINTS`, 422 `invalid_metrics` for
    what cannot be stored and 422 `too_many_metric_keys` when the run would hold more than
    `max_keys` keys (then nothing of the batch is stored)."""
    run, _, _ = load_run(session, caller, run_id, Role.contributor)
    series, received = _normalize(batch)
    try:
        result = metric_store.ingest(session.connection(), run.id, series, received, max_keys)
    except metric_store.TooManyKeys as exc:
        session.rollback()
        raise _too_many_keys(run.id, exc) from None
    session.commit()
    return MetricsIngested(received=result.received, inserted=result.inserted)


def read_metrics(
    session: Session,
    caller: Caller,
    run_id: int,
    *,
    keys: list[str] | None,
    max_points: int | None,
    step_min: int | None,
    step_max: int | None,
    max_keys: int,
) -> bytes:
    """The run's series as the JSON of `schemas.MetricsOut`, each series exact when the range
    holds at most `max_points` points, else M4-downsampled; only `keys` (comma-separated
    parts allowed) when given, else the run's keys up to `max_keys` in name order.

    Raises APIError 422 `too_many_keys` when more than `max_keys` keys are asked for."""
    run, _, _ = load_run(session, caller, run_id, Role.viewer)
    names = None
    if keys is not None:
        names = sorted({k for part in keys for k in part.split(",") if k})
        if len(names) > max_keys:
            raise APIError(
                422,
                "too_many_keys",
                f"{len(names)} keys asked for; ask for at most {max_keys} at a time",
            )
    conn = session.connection()
    out = []
    for key in metric_store.run_keys(conn, run.id, names, limit=max_keys):
        series = metric_store.read_series(
            conn,
            key,
            step_min=step_min,
            step_max=step_max,
            max_points=max_points or metric_store.MAX_POINTS,
        )
        out.append(
            {
                "key": series.key,
                "steps": series.steps,
                "values": metric_store.json_values(series.values),
                "wall_times": series.walls,
                "count": series.count,
                "downsampled": series.downsampled,
            }
        )
    # Built as plain lists and serialised by orjson: validating 100,000 points per key through
    # the response model would cost more than reading them.
    return orjson.dumps({"run": run.id, "series": out})


def load_run(
    session: Session, caller: Caller, run_id: int, need: Role
) -> tuple[Run, Project, Model]:
    """The run, its project and model, if the caller's role in the project is at least `need`.

    404 for a run that does not exist *or* whose project the caller is not a member of."""
    run = session.get(Run, run_id)
    project = session.get(Project, run.project_id) if run is not None else None
    role = role_in(session, caller, project) if project is not None else None
    if run is None or project is None or role is None:
        raise APIError(
            404, "not_found", f"run {run_id} not found, or you are not a member of its project"
        )
    if role < need:
        raise forbidden(
            f"you are a {role.name} in project '{project.name}'; this needs the {need.name} "
            "role or above"
        )
    model = session.get(Model, run.model_id)
    assert model is not None
    if project.deleted_at is not None or model.deleted_at is not None:
        # Its model or project is in the trash (services/trash.py): so is the run.
        held = project if project.deleted_at is not None else model
        ref = project.deleted_name or project.name
        if held is model:
            ref = f"{ref}/{model.deleted_name or model.name}"
        raise in_trash_error(f"run {run_id}", ref, held.deleted_by)
    return run, project, model


def _runs_out(session: Session, project: Project, model: Model, runs: list[Run]) -> list[RunOut]:
    ids = [r.id for r in runs]
    keys: dict[int, list[MetricKeyOut]] = defaultdict(list)
    for run_id, key, count, first, last, value in session.execute(
        select(
            MetricKey.run_id,
            MetricKey.key,
            MetricKey.point_count,
            MetricKey.first_step,
            MetricKey.last_step,
            MetricKey.last_value,
        )
        .where(MetricKey.run_id.in_(ids))
        .order_by(MetricKey.run_id, MetricKey.key)
    ):
        keys[run_id].append(
            MetricKeyOut(
                key=key,
                count=count,
                first_step=first,
                last_step=last,
                last_value=metric_store.json_value(value) if last is not None else None,
            )
        )
    versions: dict[int, list[RunVersionOut]] = defaultdict(list)
    for version_run, number, step in session.execute(
        select(Version.run_id, Version.number, Version.step)
        .where(Version.run_id.in_(ids), Version.deleted_at.is_(None))
        .order_by(Version.number)
    ):
        if version_run is not None:
            versions[version_run].append(RunVersionOut(number=number, step=step))
    out = []
    for run in runs:
        run_keys = keys.get(run.id, [])
        steps = [k.last_step for k in run_keys if k.last_step is not None]
        out.append(
            RunOut(
                id=run.id,
                project=project.name,
                model=model.name,
                name=run.name,
                host=run.host,
                params=run.params or {},
                status=run.status,
                author=run.author.username if run.author else None,
                started_at=run.started_at,
                ended_at=run.ended_at,
                updated_at=run.updated_at,
                last_step=max(steps) if steps else None,
                point_count=sum(k.count for k in run_keys),
                keys=run_keys,
                versions=versions.get(run.id, []),
            )
        )
    return out


def _too_many_keys(run_id: int, exc: metric_store.TooManyKeys) -> APIError:
    if exc.held:
        held = f"it holds {exc.held} and this batch adds {exc.adding}"
    else:
        held = f"this batch has {exc.adding}"
    return APIError(
        422,
        "too_many_metric_keys",
        f"run {run_id} may have at most {exc.limit} distinct metric keys (the server's "
        f"LMVP_MAX_METRIC_KEYS) and {held}: nothing of the batch was stored; log fewer keys "
        f"(one key per quantity, its steps for the values over time), or start a new run",
    )


def _normalize(batch: MetricsBatch) -> tuple[dict[str, metric_store.SeriesIn], int]:
    """Group the batch by key, each key's points sorted by step (the first of a repeated step
    wins), NaN as None; refuse what cannot be stored. Returns the series and the point count."""
    now = utcnow().timestamp()
    grouped: dict[str, tuple[list[int], list[float], list[float]]] = {}
    for s in batch.series:
        n = len(s.steps)
        if len(s.values) != n or (s.wall_times is not None and len(s.wall_times) != n):
            raise _invalid(f"series {s.key!r}: steps, values and wall_times differ in length")
        steps, values, walls = grouped.setdefault(s.key, ([], [], []))
        steps.extend(s.steps)
        values.extend(s.values)
        walls.extend(s.wall_times if s.wall_times is not None else [now] * n)
    for p in batch.points:
        steps, values, walls = grouped.setdefault(p.key, ([], [], []))
        steps.append(p.step)
        values.append(p.value)
        walls.append(p.wall_time if p.wall_time is not None else now)
    received = sum(len(steps) for steps, _, _ in grouped.values())
    if received > MAX_BATCH_POINTS:
        raise APIError(
            413,
            "too_many_points",
            f"{received} points in one request; send at most {MAX_BATCH_POINTS} at a time",
        )
    out: dict[str, metric_store.SeriesIn] = {}
    for key, (steps, values, walls) in grouped.items():
        if not steps:
            continue
        if problem := json_value_problem(key, "metric key"):
            raise _invalid(problem)
        if min(steps) < 0 or max(steps) > MAX_BIGINT:
            raise _invalid(f"series {key!r}: steps must be integers from 0 to {MAX_BIGINT}")
        if not all(map(math.isfinite, walls)):
            raise _invalid(f"series {key!r}: wall times must be finite seconds since the epoch")
        clean: list[float | None] = [None if v != v else v for v in values]
        if not all(map(operator.lt, steps, islice(steps, 1, None))):
            order = sorted(range(len(steps)), key=steps.__getitem__)  # stable: first one wins
            keep = [i for n, i in enumerate(order) if n == 0 or steps[order[n - 1]] != steps[i]]
            steps = [steps[i] for i in keep]
            clean = [clean[i] for i in keep]
            walls = [walls[i] for i in keep]
        out[key] = metric_store.SeriesIn(steps, clean, walls)
    return out, received


def _invalid(message: str) -> APIError:
    return APIError(422, "invalid_metrics", message)


def _check_params_size(limit: int, params: dict[str, Any]) -> None:
    size = len(orjson.dumps(params))
    if size > limit:
        raise APIError(
            413,
            "params_too_large",
            f"params are {size} bytes once serialised; the limit is {limit}",
        )
