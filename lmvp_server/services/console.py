"""What the web console's pages read besides the API's own calls: the versions of a project
across its models, a model's version table, its aliases and recent runs, a version's children
and run, what a deletion would take with it, and the audit log filtered by kind and person.
Every function takes a project, model or version its caller has already been allowed to read
(`access.open_project` / `open_model`).

Also a model's retention and storage as its page shows them (`model_retention`,
`model_storage`): read through `services.retention` (the policy, and the preview of what its
next application removes, the very plan `apply` carries out) and `services.usage`, with the
policy and its rules in words (`policy_words`, `rule_words`)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Text, cast, func, select
from sqlalchemy.orm import Session, aliased

from lmvp_server.db import utcnow
from lmvp_server.models import Alias, Event, Model, Project, Run, User, Version
from lmvp_server.retention_schemas import RetentionPolicy
from lmvp_server.schemas import ModelUsageOut
from lmvp_server.services import retention, usage
from lmvp_server.services.access import Caller


@dataclass(frozen=True)
class VersionDeletion:
    """What deleting one version takes with it: its files, and the aliases pointing at it."""

    number: int
    message: str
    file_count: int
    size: int
    aliases: list[str]
    children: list[int]


@dataclass(frozen=True)
class ModelDeletion:
    """What deleting a model takes with it: every version, alias and run of it."""

    name: str
    versions: int
    size: int
    aliases: list[str]
    runs: int


@dataclass(frozen=True)
class AuditFilter:
    """The audit log's choices: event kinds present in the project and the people who acted."""

    kinds: list[str]
    actors: list[str]


def project_versions(
    session: Session, project: Project, *, before: int | None, limit: int
) -> tuple[list[dict[str, Any]], int | None]:
    """The project's versions across its models, newest first: `limit` of them with ids below
    `before`, and the `before` of the next page (None on the last)."""
    query = (
        select(
            Version.id,
            Model.name,
            Version.number,
            Version.message,
            User.username,
            Version.size,
            Version.step,
            Version.created_at,
        )
        .join(Model, Model.id == Version.model_id)
        .outerjoin(User, User.id == Version.author_id)
        .where(Model.project_id == project.id, Model.deleted_at.is_(None))
        .where(Version.deleted_at.is_(None))
    )
    if before is not None:
        query = query.where(Version.id < before)
    found = session.execute(query.order_by(Version.id.desc()).limit(limit + 1)).all()
    history = [
        {
            "model": name,
            "number": number,
            "message": message,
            "author": author,
            "size": size,
            "step": step,
            "created_at": created,
        }
        for _, name, number, message, author, size, step, created in found[:limit]
    ]
    older = found[limit - 1][0] if len(found) > limit else None
    return history, older


def alias_numbers(session: Session, model: Model) -> list[tuple[str, int]]:
    """The model's aliases by name, each with the number of the version it points at."""
    rows = session.execute(
        select(Alias.name, Version.number)
        .join(Version, Version.id == Alias.version_id)
        .where(Alias.model_id == model.id)
        .order_by(Alias.name)
    ).all()
    return [(name, number) for name, number in rows]


def recent_runs(session: Session, model: Model, *, limit: int) -> list[tuple[Any, ...]]:
    """The model's newest `limit` runs as (id, name, status, started_at, parameters), the
    parameters as a short `key=value, ...` line (the first few of them)."""
    rows = session.execute(
        select(Run.id, Run.name, Run.status, Run.started_at, Run.params)
        .where(Run.model_id == model.id)
        .order_by(Run.id.desc())
        .limit(limit)
    ).all()
    return [
        (rid, name, status, started, _params_line(params))
        for rid, name, status, started, params in rows
    ]


def _params_line(params: Any, shown: int = 4) -> str:
    if not isinstance(params, dict) or not params:
        return ""
    items = [f"{k}={v}" for k, v in list(params.items())[:shown]]
    more = len(params) - shown
    return ", ".join(items) + (f" and {more} more" if more > 0 else "")


def children_of(session: Session, version: Version) -> list[int]:
    """The numbers of the versions whose parent is `version`, in order."""
    return list(
        session.scalars(
            select(Version.number)
            .where(Version.parent_id == version.id, Version.deleted_at.is_(None))
            .order_by(Version.number)
        )
    )


def run_of(session: Session, version: Version) -> Run | None:
    """The run the version came from, if it names one."""
    return session.get(Run, version.run_id) if version.run_id is not None else None


def version_table(
    session: Session, model: Model, *, before: int | None, limit: int
) -> list[dict[str, Any]]:
    """The rows of a model's version table: `limit` versions below number `before`, newest
    first, and one more when older ones exist, each with its aliases.

    A plain Core query: ORM objects with their files for every row would cost more than the
    page needs, which is what the table shows."""
    parent = aliased(Version)
    query = (
        select(
            Version.id,
            Version.number,
            Version.message,
            User.username,
            Version.size,
            Version.file_count,
            Version.step,
            Version.created_at,
            cast(Version.metrics, Text),
            Version.run_id,
            parent.number,
        )
        .outerjoin(User, User.id == Version.author_id)
        .outerjoin(parent, parent.id == Version.parent_id)
        .where(Version.model_id == model.id, Version.deleted_at.is_(None))
    )
    if before is not None:
        query = query.where(Version.number < before)
    found = session.connection().execute(query.order_by(Version.number.desc()).limit(limit + 1))
    aliases: dict[int, list[str]] = defaultdict(list)
    for version_id, name in session.execute(
        select(Alias.version_id, Alias.name).where(Alias.model_id == model.id).order_by(Alias.name)
    ):
        aliases[version_id].append(name)
    return [
        {
            "number": number,
            "message": message,
            "author": author,
            "size": size,
            "file_count": file_count,
            "step": step,
            "created_at": created,
            "metrics": _metrics(metrics),
            "run": run_id,
            "parent": parent_number,
            "aliases": aliases.get(vid, []),
        }
        for (
            vid,
            number,
            message,
            author,
            size,
            file_count,
            step,
            created,
            metrics,
            run_id,
            parent_number,
        ) in found
    ]


def _metrics(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    value = orjson.loads(text)
    return value if isinstance(value, dict) else {}


def version_deletion(session: Session, model: Model, version: Version) -> VersionDeletion:
    """What goes when `version` is deleted (its aliases go with it; its children stay)."""
    aliases = list(
        session.scalars(
            select(Alias.name)
            .where(Alias.model_id == model.id, Alias.version_id == version.id)
            .order_by(Alias.name)
        )
    )
    return VersionDeletion(
        number=version.number,
        message=version.message,
        file_count=version.file_count,
        size=version.size,
        aliases=aliases,
        children=children_of(session, version),
    )


def model_deletion(session: Session, model: Model) -> ModelDeletion:
    """What goes when `model` is deleted: its versions (count and bytes), aliases and runs."""
    count, size = session.execute(
        select(func.count(Version.id), func.coalesce(func.sum(Version.size), 0)).where(
            Version.model_id == model.id, Version.deleted_at.is_(None)
        )
    ).one()
    aliases = list(
        session.scalars(select(Alias.name).where(Alias.model_id == model.id).order_by(Alias.name))
    )
    runs = session.scalar(select(func.count(Run.id)).where(Run.model_id == model.id)) or 0
    return ModelDeletion(model.name, int(count), int(size), aliases, int(runs))


def audit_events(
    session: Session,
    project: Project,
    *,
    kind: str | None,
    actor: str | None,
    before: int | None,
    limit: int,
) -> tuple[list[Event], int | None]:
    """The project's events newest first, of one `kind` (or kind family such as `member`) and
    one `actor` when given: `limit` of them below id `before`, and the `before` of the next
    page (None on the last)."""
    query = select(Event).where(Event.project_id == project.id)
    if kind:
        query = query.where(
            (Event.kind == kind) | Event.kind.startswith(kind + ".", autoescape=True)
        )
    if actor:
        query = query.join(User, User.id == Event.actor_id).where(User.username == actor)
    if before is not None:
        query = query.where(Event.id < before)
    events = list(session.scalars(query.order_by(Event.id.desc()).limit(limit + 1)))
    older = events[limit - 1].id if len(events) > limit else None
    return events[:limit], older


def audit_filter(session: Session, project: Project) -> AuditFilter:
    """The kinds of event the project has and the people who caused them, for the filter."""
    kinds = session.scalars(
        select(Event.kind).where(Event.project_id == project.id).distinct().order_by(Event.kind)
    )
    actors = session.scalars(
        select(User.username)
        .join(Event, Event.actor_id == User.id)
        .where(Event.project_id == project.id)
        .distinct()
        .order_by(User.username)
    )
    return AuditFilter(list(kinds), list(actors))


# --- retention and storage ----------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRetention:
    """A model's retention as its page shows it: the policy set on the model (`own`), the one
    in force (`effective`, the model's own or the project's default, from `source`), and what
    applying it now would do, the very plan `retention.apply` carries out: by version number
    the rules keeping each kept version (`kept`; a live version missing from it goes), the
    versions it would remove as (number, size), newest first, and the bytes that frees."""

    own: RetentionPolicy | None
    effective: RetentionPolicy | None
    source: str | None
    kept: dict[int, list[str]]
    remove: list[tuple[int, int]]
    bytes_freed: int


def model_retention(session: Session, project: Project, model: Model) -> ModelRetention:
    """The model's policy and, when one is in force, what applying it now would keep (by
    which rules) and remove, with the bytes freed: `retention.plan` and `retention.bytes_freed`,
    as `GET .../retention/preview` answers them."""
    own = RetentionPolicy.model_validate(model.retention_policy) if model.retention_policy else None
    effective, source = retention.effective_policy(project, model)
    if effective is None:
        return ModelRetention(own, None, None, {}, [], 0)
    the_plan = retention.plan(session, model, effective, now=utcnow())
    freed = retention.bytes_freed(session, project, [r.id for r in the_plan.remove])
    removed = [(r.number, r.size) for r in the_plan.remove]
    return ModelRetention(own, effective, source, the_plan.keep, removed, freed)


def model_storage(session: Session, caller: Caller, project: str, model: str) -> ModelUsageOut:
    """What the model's versions (live or in the trash) reference, and what removing the
    model would free, as `GET .../usage` counts them (viewers)."""
    found = usage.project_usage(session, caller, project)
    return next(
        (m for m in found.models if m.name == model),
        ModelUsageOut(name=model, referenced_bytes=0, exclusive_bytes=0),
    )


def policy_words(policy: RetentionPolicy) -> str:
    """The policy as a sentence: 'Keep every aliased version; the latest 3; the best 3 by
    val_loss (lowest); ... Every other version goes to the trash.'"""
    parts = ["every aliased version"]
    if policy.keep_latest:
        parts.append(f"the latest {policy.keep_latest}")
    for best in policy.keep_best:
        parts.append(f"the best {best.count} by {best.metric} ({_BEST[best.mode]})")
    if policy.keep_every_steps:
        parts.append(f"one every {policy.keep_every_steps} steps")
    if policy.keep_every_hours:
        parts.append(f"one every {_hours(policy.keep_every_hours)}")
    if policy.keep_within_hours:
        parts.append(f"everything younger than {_hours(policy.keep_within_hours)}")
    return "Keep " + "; ".join(parts) + ". Every other version goes to the trash."


def rule_words(rule: str) -> str:
    """One rule of a preview's `keep` in words: `best:3:val_loss:min` is 'best 3 by val_loss',
    `latest:3` 'latest 3', `alias:production` 'alias production', `every-steps:5000` 'one per
    5000 steps', `every-hours:6` 'one per 6 hours', `within-hours:24` 'younger than 24 hours'."""
    kind, _, rest = rule.partition(":")
    if kind == "best":
        count, _, metric_mode = rest.partition(":")
        metric = metric_mode.rsplit(":", 1)[0]
        return f"best {count} by {metric}"
    if kind == "latest":
        return f"latest {rest}"
    if kind == "alias":
        return f"alias {rest}"
    if kind == "every-steps":
        return f"one per {rest} steps"
    if kind in ("every-hours", "within-hours"):
        try:
            span = _hours(float(rest))
        except ValueError:
            span = f"{rest} hours"
        return f"one per {span}" if kind == "every-hours" else f"younger than {span}"
    return rule


_BEST = {"min": "lowest", "max": "highest"}


def _hours(hours: float) -> str:
    return f"{hours:g} hour{'' if hours == 1 else 's'}"
