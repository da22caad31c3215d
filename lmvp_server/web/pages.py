"""The pages for reading: projects (with the bytes each stores), a project's history across its
models (and its storage per model), a model's versions (with its retention policy, the rules
keeping each version and what the next application would remove), a version (with its files to
download) and two versions compared.

Every page loads its project through `services.access` with the role the matching API call
needs, so the console shows exactly what the API would: a non-member gets 404, never a hint
that the project exists.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import PurePosixPath
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import RedirectResponse
from sqlalchemy.orm import Session

from lmvp_server.blob_download import blob_response
from lmvp_server.deps import CtxDep, SessionDep
from lmvp_server.errors import APIError
from lmvp_server.models import Role
from lmvp_server.retention_schemas import RetentionPolicy
from lmvp_server.schemas import MAX_INT, ModelName, ProjectName
from lmvp_server.services import (
    blobs,
    compare,
    console,
    models,
    projects,
    retention,
    tensor_compare,
    usage,
)
from lmvp_server.services.access import Caller, open_model, open_project
from lmvp_server.services.versions import resolve_ref
from lmvp_server.web.forms import FormProblem
from lmvp_server.web.rendering import PageError, PageRoute, render
from lmvp_server.web.session import WebCallerDep

router = APIRouter(route_class=PageRoute, include_in_schema=False)

PAGE_SIZE = 50
# Columns of key metrics on a model's page: the keys most versions of the page carry.
KEY_METRIC_COLUMNS = 3
# The versions a model's page names of those its policy would remove (the count and the bytes
# are of all of them; `lmvp retention preview` lists every one).
REMOVALS_SHOWN = 100
# The retention form's fields, as the API's policy names them.
POLICY_FIELDS = (
    "keep_latest",
    "keep_best",
    "keep_every_steps",
    "keep_every_hours",
    "keep_within_hours",
)


@router.get("/")
def projects_page(request: Request, caller: WebCallerDep, session: SessionDep) -> Response:
    """The projects the user is a member of, and the form that creates one."""
    return show_projects(request, session, caller)


def show_projects(
    request: Request,
    session: Session,
    caller: Caller,
    *,
    problem: FormProblem | None = None,
    status: int = 200,
) -> Response:
    """The projects page, with `problem` beside the form that was refused."""
    rows = usage.with_sizes(session, projects.list_projects(session, caller))
    return render(request, "projects.html", {"projects": rows, "problem": problem}, status=status)


@router.get("/projects/{project}")
def project_page(
    request: Request,
    project: ProjectName,
    caller: WebCallerDep,
    session: SessionDep,
    before: Annotated[int | None, Query(ge=1, le=MAX_INT)] = None,
) -> Response:
    """A project: its models, and its versions across all models, newest first."""
    return show_project(request, session, caller, project, before=before)


def show_project(
    request: Request,
    session: Session,
    caller: Caller,
    project: str,
    *,
    before: int | None = None,
    problem: FormProblem | None = None,
    status: int = 200,
) -> Response:
    """A project's page, with `problem` beside the form that was refused."""
    scope = open_project(session, caller, project, Role.viewer)
    row, role = scope.project, scope.role
    model_rows = models.list_models(session, caller, project)
    stored = usage.project_usage(session, caller, project)
    default = retention.get_project_policy(session, caller, project).policy
    history, older = console.project_versions(session, row, before=before, limit=PAGE_SIZE)
    return render(
        request,
        "project.html",
        {
            "project": row,
            "role": role.name,
            "can_create_model": role >= Role.contributor,
            "models": model_rows,
            "usage": stored,
            "model_usage": {u.name: u for u in stored.models},
            "default_policy": console.policy_words(default) if default else None,
            "history": history,
            "older": older,
            "paged": before is not None,
            "problem": problem,
        },
        status=status,
    )


@router.get("/projects/{project}/models/{model}")
def model_page(
    request: Request,
    project: ProjectName,
    model: ModelName,
    caller: WebCallerDep,
    session: SessionDep,
    before: Annotated[int | None, Query(ge=1, le=MAX_INT)] = None,
) -> Response:
    """A model's versions, newest first, a page at a time; its aliases and recent runs; its
    retention policy with what the next application would remove, and its storage."""
    return show_model(request, session, caller, project, model, before=before)


def show_model(
    request: Request,
    session: Session,
    caller: Caller,
    project: str,
    model: str,
    *,
    before: int | None = None,
    problem: FormProblem | None = None,
    status: int = 200,
) -> Response:
    """A model's page, with `problem` beside the retention form that was refused."""
    scope = open_model(session, caller, project, model, Role.viewer)
    row, role, m = scope.project, scope.role, scope.model
    rows = console.version_table(session, m, before=before, limit=PAGE_SIZE)
    older = rows[PAGE_SIZE - 1]["number"] if len(rows) > PAGE_SIZE else None
    rows = rows[:PAGE_SIZE]
    counts = Counter(key for r in rows for key in r["metrics"])
    metric_keys = sorted(counts, key=lambda k: (-counts[k], k))[:KEY_METRIC_COLUMNS]
    aliases = console.alias_numbers(session, m)
    runs = console.recent_runs(session, m, limit=10)
    kept = console.model_retention(session, row, m)
    if kept.effective is not None:
        for r in rows:
            rules = kept.kept.get(r["number"])
            r["kept_by"] = rules
            r["kept_words"] = [console.rule_words(rule) for rule in rules or []]
    return render(
        request,
        "model.html",
        {
            "project": row,
            "model": m,
            "role": role.name,
            "can_delete": role >= Role.maintainer,
            "can_set_policy": role >= Role.maintainer,
            "versions": rows,
            "metric_keys": metric_keys,
            "aliases": aliases,
            "runs": runs,
            "older": older,
            "paged": before is not None,
            "retention": kept,
            "policy_words": console.policy_words(kept.effective) if kept.effective else None,
            "policy_form": policy_form_values(kept.own),
            "default_applies": row.retention_policy is not None,
            "shown_removals": REMOVALS_SHOWN,
            "storage": console.model_storage(session, caller, project, model),
            "problem": problem,
        },
        status=status,
    )


def policy_form_values(policy: RetentionPolicy | None) -> dict[str, str]:
    """The retention form's fields as the model's own policy fills them ('' for no rule)."""
    if policy is None:
        return dict.fromkeys(POLICY_FIELDS, "")
    return {
        "keep_latest": str(policy.keep_latest or ""),
        "keep_best": ", ".join(f"{b.count}:{b.metric}:{b.mode}" for b in policy.keep_best),
        "keep_every_steps": str(policy.keep_every_steps or ""),
        "keep_every_hours": f"{policy.keep_every_hours:g}" if policy.keep_every_hours else "",
        "keep_within_hours": f"{policy.keep_within_hours:g}" if policy.keep_within_hours else "",
    }


@router.get("/projects/{project}/models/{model}/versions/{ref}")
def version_page(
    request: Request,
    project: ProjectName,
    model: ModelName,
    ref: str,
    caller: WebCallerDep,
    session: SessionDep,
) -> Response:
    """A version: metadata, metrics, files with download links, lineage, the line that
    downloads it, and (for maintainers) the alias forms. An alias or `latest` redirects to
    the version's number, so that the address names what is shown."""
    return show_version(request, session, caller, project, model, ref)


def show_version(
    request: Request,
    session: Session,
    caller: Caller,
    project: str,
    model: str,
    ref: str,
    *,
    problem: FormProblem | None = None,
    status: int = 200,
) -> Response:
    """A version's page, with `problem` beside the alias form that was refused."""
    scope = open_model(session, caller, project, model, Role.viewer)
    row, role, m = scope.project, scope.role, scope.model
    v = resolve_ref(session, row, m, ref)
    if ref != str(v.number):
        return RedirectResponse(
            f"/projects/{row.name}/models/{m.name}/versions/{v.number}", status_code=303
        )
    all_aliases = console.alias_numbers(session, m)
    children = console.children_of(session, v)
    run = console.run_of(session, v)
    return render(
        request,
        "version.html",
        {
            "project": row,
            "model": m,
            "role": role.name,
            "can_alias": role >= Role.maintainer,
            "v": v,
            "aliases_here": [name for name, number in all_aliases if number == v.number],
            "aliases_elsewhere": [(n, num) for n, num in all_aliases if num != v.number],
            "children": children,
            "run": run,
            "download_line": f'lmvp.download("{row.name}/{m.name}:{v.number}")',
            "problem": problem,
        },
        status=status,
    )


@router.get("/projects/{project}/models/{model}/versions/{number}/files/{path:path}")
def download_file(
    request: Request,
    project: ProjectName,
    model: ModelName,
    number: int,
    path: str,
    ctx: CtxDep,
    caller: WebCallerDep,
    session: SessionDep,
) -> Response:
    """One file of a version, as an attachment named like the file (Range works as in the
    API, which streams it)."""
    scope = open_model(session, caller, project, model, Role.viewer)
    row, m = scope.project, scope.model
    v = resolve_ref(session, row, m, str(number))
    entry = next((f for f in v.files if f.path == path), None)
    if entry is None:
        raise PageError(404, f"version {v.number} of '{row.name}/{m.name}' has no file {path!r}")
    blob = blobs.find_blob(session, caller, row.name, entry.sha256)
    response = blob_response(request, ctx.blob_store, row.name, blob)
    name = PurePosixPath(entry.path).name
    response.headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(name)}"
    return response


@router.get("/projects/{project}/models/{model}/compare")
def compare_page(
    request: Request,
    project: ProjectName,
    model: ModelName,
    caller: WebCallerDep,
    session: SessionDep,
    ctx: CtxDep,
    a: Annotated[int, Query(ge=1, le=MAX_INT)],
    b: Annotated[int, Query(ge=1, le=MAX_INT)],
) -> Response:
    """Two versions side by side: metrics with their difference, metadata, files by role, and
    the tensors of their safetensors files (changed ones first)."""
    scope = open_model(session, caller, project, model, Role.viewer)
    va = resolve_ref(session, scope.project, scope.model, str(a))
    vb = resolve_ref(session, scope.project, scope.model, str(b))
    problem = None
    try:
        tensors: tensor_compare.TensorComparison | None = tensor_compare.compare_tensors(
            session, ctx.blob_store, scope.project.name, va, vb
        )
    except APIError as exc:  # a blob or chunk the store lost: the rest of the page still reads
        tensors, problem = None, exc.message
    return render(
        request,
        "compare.html",
        {
            "project": scope.project,
            "model": scope.model,
            "role": scope.role.name,
            "a": va,
            "b": vb,
            "diff": compare.compare(va, vb),
            "tensor_files": [_tensor_file(f) for f in tensors.files] if tensors else [],
            "skipped": tensors.skipped if tensors else [],
            "tensor_problem": problem,
        },
    )


def _tensor_file(f: tensor_compare.FileTensors) -> dict[str, Any]:
    """One safetensors file's tensors as the compare page shows them."""
    counts = Counter(t.change for t in f.tensors)
    order = ("changed", "reshaped", "added", "removed", "unchanged")
    return {
        "title": f.a_path if f.a_path == f.b_path else f"{f.a_path or '—'} → {f.b_path or '—'}",
        "summary": ", ".join(f"{counts[c]} {c}" for c in order if counts[c]) or "no tensors",
        "rows": [
            {
                "name": t.name,
                "change": t.change,
                "layout": _tensor_layout(t),
                "relative": _relative_change(t.relative_change),
            }
            for t in f.tensors
        ],
    }


def _tensor_layout(t: tensor_compare.TensorChange) -> str:
    def one(dtype: str | None, shape: tuple[int, ...] | None) -> str:
        return "" if dtype is None or shape is None else f"{dtype} [{', '.join(map(str, shape))}]"

    a, b = one(t.a_dtype, t.a_shape), one(t.b_dtype, t.b_shape)
    if not a or not b or a == b:
        return a or b
    return f"{a} → {b}"


def _relative_change(value: float | None) -> str:
    """A relative change as a percentage at 3 significant digits ("0.412 %", "∞ %" where
    version a was all zeros), as `lmvp diff` and the desktop show it (lmvp.types.percent_change:
    the server and the client share no code)."""
    if value is None:
        return ""
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "∞ %"
    percent = value * 100
    if percent == 0:
        return "0 %"
    if abs(percent) >= 1000:
        return f"{float(f'{percent:.3g}'):.0f} %"
    text = f"{percent:#.3g}"
    return f"{text if 'e' in text else text.rstrip('.')} %"
