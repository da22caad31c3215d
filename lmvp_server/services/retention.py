"""Retention policies: which versions of a model to keep, by rules a user can read, and moving
every other version to the trash (`services.trash`).

A policy is set on a model, or on a project as the default of its models that have none
(`RetentionPolicy`: keep the latest N, the best K by a metric minimised or maximised, the first
version of every S steps or every H hours, everything younger than T hours). Rules are a union;
a version that an alias points at is always kept. The plan (`plan`) is computed from the live
versions alone; `preview` shows it, `apply_policy` carries it out under the model's lock (the
same computation on the same rows, so a preview and the apply after it agree), recording a
`version.deleted` event naming the policy for each version it removes.

Policies are applied after every commit to a model (the router schedules `apply_after_commit`
to run once the commit's answer is sent, so commits do not wait for it) and on a schedule
(`apply_all`, with `trash.purge_expired_trash`, from `run_maintenance`).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from lmvp_server.db import utcnow
from lmvp_server.events import record_event
from lmvp_server.models import Alias, Blob, Model, Project, Role, User, Version, VersionFile
from lmvp_server.retention_schemas import (
    KeptVersion,
    RemovedVersion,
    RetentionOut,
    RetentionPolicy,
    RetentionPreview,
)
from lmvp_server.services.access import Caller, lock_model, open_model, open_project
from lmvp_server.services.trash import purge_expired_trash, trash_version

log = logging.getLogger(__name__)
Source = Literal["model", "project"]
# Blob hashes per `IN (...)` when counting what a removal frees.
_CHUNK = 500


# --- reading and setting policies ---------------------------------------------------------------


def effective_policy(
    project: Project, model: Model
) -> tuple[RetentionPolicy | None, Source | None]:
    """The policy that applies to the model (its own, else the project's default) and where it
    comes from; (None, None) when neither has one."""
    if model.retention_policy:
        return RetentionPolicy.model_validate(model.retention_policy), "model"
    if project.retention_policy:
        return RetentionPolicy.model_validate(project.retention_policy), "project"
    return None, None


def _policy(value: dict[str, Any] | None) -> RetentionPolicy | None:
    return RetentionPolicy.model_validate(value) if value else None


def get_model_policy(session: Session, caller: Caller, project: str, model: str) -> RetentionOut:
    """The model's policy and the one in force (viewers)."""
    scope = open_model(session, caller, project, model, Role.viewer)
    effective, source = effective_policy(scope.project, scope.model)
    return RetentionOut(
        project=project,
        model=model,
        policy=_policy(scope.model.retention_policy),
        effective=effective,
        source=source,
    )


def get_project_policy(session: Session, caller: Caller, project: str) -> RetentionOut:
    """The project's default policy (viewers)."""
    scope = open_project(session, caller, project, Role.viewer)
    policy = _policy(scope.project.retention_policy)
    return RetentionOut(
        project=project,
        model=None,
        policy=policy,
        effective=policy,
        source="project" if policy else None,
    )


def set_model_policy(
    session: Session, caller: Caller, project: str, model: str, policy: RetentionPolicy | None
) -> RetentionOut:
    """Set (or with None, remove) the model's own policy (maintainers). It applies from the
    next commit or scheduled pass; preview it first."""
    scope = open_model(session, caller, project, model, Role.maintainer)
    lock_model(session, scope.model)
    scope.model.retention_policy = policy.model_dump() if policy else None
    kind = "retention.set" if policy else "retention.deleted"
    scope.record_model_event(kind, payload={"policy": scope.model.retention_policy})
    session.commit()
    return get_model_policy(session, caller, project, model)


def set_project_policy(
    session: Session, caller: Caller, project: str, policy: RetentionPolicy | None
) -> RetentionOut:
    """Set (or remove) the project's default policy (maintainers)."""
    scope = open_project(session, caller, project, Role.maintainer)
    scope.project.retention_policy = policy.model_dump() if policy else None
    kind = "retention.set" if policy else "retention.deleted"
    scope.record(kind, payload={"policy": scope.project.retention_policy})
    session.commit()
    return get_project_policy(session, caller, project)


# --- the plan -----------------------------------------------------------------------------------


@dataclass
class _Row:
    id: int
    number: int
    step: int | None
    created_at: datetime
    size: int
    metrics: dict[str, Any]


@dataclass
class Plan:
    """What a policy keeps (number → the rules keeping it) and removes, newest first."""

    keep: dict[int, list[str]] = field(default_factory=dict)
    remove: list[_Row] = field(default_factory=list)


def plan(session: Session, model: Model, policy: RetentionPolicy | None, *, now: datetime) -> Plan:
    """Which live versions of `model` the policy keeps, with the rules that keep each, and which
    it removes. No policy keeps everything."""
    rows = [
        _Row(vid, number, step, created, size or 0, metrics if isinstance(metrics, dict) else {})
        for vid, number, step, created, size, metrics in session.execute(
            select(
                Version.id,
                Version.number,
                Version.step,
                Version.created_at,
                Version.size,
                Version.metrics,
            )
            .where(Version.model_id == model.id, Version.deleted_at.is_(None))
            .order_by(Version.number.desc())
        )
    ]
    reasons: dict[int, list[str]] = defaultdict(list)
    if policy is None:
        return Plan(keep={r.number: [] for r in rows}, remove=[])
    by_id = {r.id: r for r in rows}
    for vid, name in session.execute(
        select(Alias.version_id, Alias.name).where(Alias.model_id == model.id).order_by(Alias.name)
    ):
        if vid in by_id:
            reasons[by_id[vid].number].append(f"alias:{name}")
    if policy.keep_latest:
        for r in rows[: policy.keep_latest]:
            reasons[r.number].append(f"latest:{policy.keep_latest}")
    for best in policy.keep_best:
        scored = [(v, r) for r in rows if (v := _number(r.metrics.get(best.metric))) is not None]
        # Best first; between equal values the newer version.
        sign = 1 if best.mode == "min" else -1
        scored.sort(key=lambda vr: (sign * vr[0], -vr[1].number))
        for _, r in scored[: best.count]:
            reasons[r.number].append(f"best:{best.count}:{best.metric}:{best.mode}")
    if policy.keep_every_steps:
        every = policy.keep_every_steps
        _first_of_each(
            reasons,
            [(r.step // every, r.step, r.number) for r in rows if r.step is not None],
            f"every-steps:{every}",
        )
    if policy.keep_every_hours:
        width = policy.keep_every_hours * 3600
        _first_of_each(
            reasons,
            [
                (math.floor(r.created_at.timestamp() / width), r.created_at.timestamp(), r.number)
                for r in rows
            ],
            f"every-hours:{_g(policy.keep_every_hours)}",
        )
    if policy.keep_within_hours:
        since = now - timedelta(hours=policy.keep_within_hours)
        for r in rows:
            if r.created_at > since:
                reasons[r.number].append(f"within-hours:{_g(policy.keep_within_hours)}")
    out = Plan()
    for r in rows:
        if r.number in reasons:
            out.keep[r.number] = reasons[r.number]
        else:
            out.remove.append(r)
    return out


def _first_of_each(
    reasons: dict[int, list[str]], keyed: list[tuple[int, float, int]], label: str
) -> None:
    """Keep, of each bucket, the version first in it (lowest step or time, then number)."""
    first: dict[int, tuple[float, int]] = {}
    for bucket, at, number in keyed:
        if bucket not in first or (at, number) < first[bucket]:
            first[bucket] = (at, number)
    for _, number in first.values():
        reasons[number].append(label)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _g(value: float) -> str:
    return f"{value:g}"


def bytes_freed(session: Session, project: Project, removed: list[int]) -> int:
    """Bytes of the blobs that versions `removed` reference and no other version of the project
    (live or in the trash, in a live model or not) does."""
    if not removed:
        return 0
    gone = set(removed)
    hashes = set(
        session.scalars(select(VersionFile.sha256).where(VersionFile.version_id.in_(gone)))
    )
    still: set[str] = set()
    ordered = sorted(hashes)
    for i in range(0, len(ordered), _CHUNK):
        chunk = ordered[i : i + _CHUNK]
        for sha, vid in session.execute(
            select(VersionFile.sha256, VersionFile.version_id)
            .join(Version, Version.id == VersionFile.version_id)
            .join(Model, Model.id == Version.model_id)
            .where(Model.project_id == project.id, VersionFile.sha256.in_(chunk))
        ):
            if vid not in gone:
                still.add(sha)
    freed = sorted(hashes - still)
    total = 0
    for i in range(0, len(freed), _CHUNK):
        total += (
            session.scalar(
                select(func.coalesce(func.sum(Blob.size), 0)).where(
                    Blob.sha256.in_(freed[i : i + _CHUNK])
                )
            )
            or 0
        )
    return int(total)


def _preview(
    session: Session,
    project: Project,
    model: Model,
    policy: RetentionPolicy | None,
    source: Source | None,
    the_plan: Plan,
    *,
    applied: bool,
) -> RetentionPreview:
    return RetentionPreview(
        project=project.name,
        model=model.name,
        source=source,
        policy=policy,
        keep=[KeptVersion(number=n, rules=rules) for n, rules in the_plan.keep.items()],
        remove=[
            RemovedVersion(number=r.number, size=r.size, step=r.step, created_at=r.created_at)
            for r in the_plan.remove
        ],
        bytes_freed=bytes_freed(session, project, [r.id for r in the_plan.remove]),
        applied=applied,
    )


# --- preview and apply --------------------------------------------------------------------------


def preview(
    session: Session,
    caller: Caller,
    project: str,
    model: str,
    policy: RetentionPolicy | None = None,
) -> RetentionPreview:
    """What the model's policy (or `policy`, to try one before setting it) would keep and
    remove now (viewers)."""
    scope = open_model(session, caller, project, model, Role.viewer)
    source: Source | None
    if policy is None:
        policy, source = effective_policy(scope.project, scope.model)
    else:
        source = None
    the_plan = plan(session, scope.model, policy, now=utcnow())
    return _preview(session, scope.project, scope.model, policy, source, the_plan, applied=False)


def apply(session: Session, caller: Caller, project: str, model: str) -> RetentionPreview:
    """Apply the model's policy now (maintainers): what it removed, moved to the trash."""
    scope = open_model(session, caller, project, model, Role.maintainer)
    return apply_policy(session, scope.project, scope.model, actor_name=caller.user.username)


def apply_policy(
    session: Session, project: Project, model: Model, *, actor_name: str | None = None
) -> RetentionPreview:
    """Apply the policy in force on `model` under its lock, moving what it removes to the trash
    with an event naming the policy, and commit. The caller's user (if any) is the actor.

    The plan is made first without the lock: when it removes nothing (a policy keeping all
    that is young, most commits), nothing is written and no writer waits. Otherwise it is made
    again under the lock, on what is there then."""
    policy, source = effective_policy(project, model)
    the_plan = plan(session, model, policy, now=utcnow())
    if policy is not None and the_plan.remove:
        lock_model(session, model)
        session.refresh(model)
        session.refresh(project)
        policy, source = effective_policy(project, model)
        the_plan = plan(session, model, policy, now=utcnow())
    result = _preview(session, project, model, policy, source, the_plan, applied=True)
    if policy is not None and the_plan.remove:
        actor = (
            session.scalar(select(User).where(User.username == actor_name)) if actor_name else None
        )
        reason = f"retention policy of {'model' if source == 'model' else 'project'}"
        removed = {r.id for r in the_plan.remove}
        for v in session.scalars(select(Version).where(Version.id.in_(removed))):
            trash_version(
                session,
                project,
                model,
                v,
                actor=actor,
                reason=reason,
                payload={"policy": policy.model_dump(), "source": source},
            )
        record_event(
            session,
            project=project,
            actor=actor,
            kind="retention.applied",
            model=model.name,
            payload={
                "removed": [r.number for r in the_plan.remove],
                "bytes_freed": result.bytes_freed,
                "source": source,
            },
        )
    session.commit()
    return result


def apply_after_commit(sessions: sessionmaker[Session], project_id: int, model_id: int) -> None:
    """Apply the policy in force on a model after a commit to it (run once the commit's answer
    is sent). A failure is logged, never raised: the commit stands, and the scheduled pass
    applies the policy later."""
    try:
        with sessions() as session:
            model = session.get(Model, model_id)
            project = session.get(Project, project_id)
            if model is None or project is None or model.deleted_at or project.deleted_at:
                return
            if not (model.retention_policy or project.retention_policy):
                return
            apply_policy(session, project, model)
    except Exception:
        log.exception("applying the retention policy of model %d after a commit failed", model_id)


def apply_all(sessions: sessionmaker[Session]) -> int:
    """Apply every policy in force, model by model (each in its own transaction); returns how
    many versions went to the trash."""
    removed = 0
    with sessions() as session:
        targets = session.execute(
            select(Model.id, Project.id)
            .join(Project, Project.id == Model.project_id)
            .where(
                Model.deleted_at.is_(None),
                Project.deleted_at.is_(None),
                (Model.retention_policy.is_not(None)) | (Project.retention_policy.is_not(None)),
            )
        ).all()
    for model_id, project_id in targets:
        try:
            with sessions() as session:
                model = session.get(Model, model_id)
                project = session.get(Project, project_id)
                if model is None or project is None or model.deleted_at or project.deleted_at:
                    continue
                removed += len(apply_policy(session, project, model).remove)
        except Exception:
            log.exception("applying the retention policy of model %d failed", model_id)
    return removed


def run_maintenance(sessions: sessionmaker[Session], trash_days: float) -> None:
    """One scheduled pass: purge the expired trash, then apply every retention policy."""
    try:
        with sessions() as session:
            purged = purge_expired_trash(session, trash_days)
        if purged.versions or purged.models or purged.projects:
            log.info(
                "purged from the trash: %d versions, %d models, %d projects",
                purged.versions,
                purged.models,
                purged.projects,
            )
    except Exception:
        log.exception("purging the trash failed")
    removed = apply_all(sessions)
    if removed:
        log.info("retention policies moved %d versions to the trash", removed)


__all__ = [
    "Plan",
    "apply",
    "apply_after_commit",
    "apply_all",
    "apply_policy",
    "bytes_freed",
    "effective_policy",
    "get_model_policy",
    "get_project_policy",
    "plan",
    "preview",
    "run_maintenance",
    "set_model_policy",
    "set_project_policy",
]
