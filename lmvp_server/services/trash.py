"""The trash: deleting a version, a model or a project (by hand, or a version by a retention
policy) marks its row `deleted_at` instead of removing it. What is in the trash is left out of
listings, `latest` and aliases; it is listed (`list_trash`), restored (`restore_*`) until
`Settings.trash_days` have passed, and then purged (`purge_expired_trash`: the rows go, and with
them the last references that keep its blobs from the garbage collector). A maintainer may
empty a project's trash sooner (`empty_trash`).

Rules the rest of the server relies on:
- A version in the trash keeps its files' rows, so its blobs stay referenced until the purge.
- A model or a project in the trash keeps its versions as they were: it is the model (or the
  project) that is hidden, and restoring it brings back everything in it. A version trashed on
  its own before stays in the trash.
- A model or a project in the trash gives up its name (its row is renamed `<name>~<id>`, which
  no name can be, and `deleted_name` keeps the name): a new one may take it at once, as after a
  deletion for good. Restoring needs the name free again; of several in the trash under one
  name, the one deleted last is restored.
- Deleting a version by hand removes the aliases on it (as MLflow does), and remembers them: a
  restore puts back each alias that nobody has pointed elsewhere meanwhile. A retention policy
  never removes an aliased version.
- Every move is an event (the audit log): `version.deleted`, `model.deleted` and
  `project.deleted` (payload `trash: true`, `reason`), `*.restored`, and `*.purged` by the
  server (no actor).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, delete, func, select, update
from sqlalchemy.orm import Session

from lmvp_server.db import utcnow
from lmvp_server.errors import APIError
from lmvp_server.events import record_event
from lmvp_server.models import Alias, Membership, Model, Project, Role, User, Version
from lmvp_server.retention_schemas import TrashItem
from lmvp_server.services.access import (
    Caller,
    ModelScope,
    ProjectScope,
    in_trash_error,
    load_model,
    lock_model,
    open_project,
    role_in,
)

if TYPE_CHECKING:
    from lmvp_server.schemas import ModelOut, ProjectOut, VersionOut

BY_HAND = "by hand"
# Purged per transaction, so a long trash never holds locks for long.
PURGE_BATCH = 500


def live(column: Any = None) -> ColumnElement[bool]:
    """The condition 'not in the trash' for versions (or for the `deleted_at` column given)."""
    return (Version.deleted_at if column is None else column).is_(None)


def trash_ref(project: str, model: str | None = None, version: int | None = None) -> str:
    """How `lmvp trash restore` names an item: `project`, `project/model`, `project/model:N`."""
    ref = project if model is None else f"{project}/{model}"
    return ref if version is None else f"{ref}:{version}"


# --- moving into the trash ----------------------------------------------------------------------


def trash_version(
    session: Session,
    project: Project,
    model: Model,
    version: Version,
    *,
    actor: User | None,
    reason: str,
    payload: dict[str, Any] | None = None,
) -> None:
    """Move `version` to the trash and record it; the caller holds the model's lock
    (`lock_model`) and commits. Its aliases are removed and remembered on the row."""
    names = list(
        session.scalars(
            select(Alias.name).where(Alias.version_id == version.id).order_by(Alias.name)
        )
    )
    if names:
        session.execute(delete(Alias).where(Alias.version_id == version.id))
    version.deleted_at = utcnow()
    version.deleted_by = actor.username if actor else None
    version.deleted_reason = reason[:255]
    version.deleted_aliases = names or None
    record_event(
        session,
        project=project,
        actor=actor,
        kind="version.deleted",
        model=model.name,
        version=version.number,
        payload={"trash": True, "reason": reason, "aliases": names, **(payload or {})},
    )


def delete_model(session: Session, scope: ModelScope) -> None:
    """Move the model, with everything in it, to the trash (the scope's caller; maintainers)."""
    m = scope.model
    lock_model(session, m)
    scope.record("model.deleted", model=m.name, payload={"trash": True})
    m.deleted_at = utcnow()
    m.deleted_by = scope.caller.user.username
    m.deleted_name = m.name
    m.name = _trash_name(m.name, m.id, 128)
    session.commit()


def delete_project(session: Session, scope: ProjectScope) -> None:
    """Move the project, with everything in it, to the trash (owners)."""
    p = scope.project
    scope.record("project.deleted", payload={"trash": True})
    session.flush()  # the event carries the project's own name
    p.deleted_at = utcnow()
    p.deleted_by = scope.caller.user.username
    p.deleted_name = p.name
    p.name = _trash_name(p.name, p.id, 64)
    session.commit()


def _trash_name(name: str, row_id: int, width: int) -> str:
    """The name a row in the trash goes by: `<name>~<id>`, cut to fit; never a valid name."""
    tail = f"~{row_id}"
    return name[: width - len(tail)] + tail


def _name(row: Project | Model) -> str:
    """The name a project or model has, or had before it went to the trash."""
    return row.deleted_name or row.name


# --- listing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Found:
    project: Project
    role: Role


def list_trash(
    session: Session, caller: Caller, trash_days: float, project: str | None = None
) -> list[TrashItem]:
    """What is in the trash, newest deletion first: of `project` (viewers), or of every project
    the caller is a member of (all, for admins), projects in the trash included."""
    if project is not None:
        found = [_open_any(session, caller, project, Role.viewer)]
    else:
        query = select(Project)
        if not caller.user.is_admin:
            query = query.join(Membership, Membership.project_id == Project.id).where(
                Membership.user_id == caller.user.id
            )
        found = [_Found(p, Role.viewer) for p in session.scalars(query.order_by(Project.name))]
    keep = timedelta(days=trash_days)
    items: list[TrashItem] = []
    for f in found:
        p = f.project
        if p.deleted_at is not None:
            size = session.scalar(
                select(func.coalesce(func.sum(Version.size), 0))
                .join(Model, Model.id == Version.model_id)
                .where(Model.project_id == p.id)
            )
            items.append(_item("project", p, None, None, p.deleted_at, p.deleted_by, None, size))
            continue
        sizes = dict(
            session.execute(
                select(Version.model_id, func.coalesce(func.sum(Version.size), 0))
                .join(Model, Model.id == Version.model_id)
                .where(Model.project_id == p.id, Model.deleted_at.is_not(None))
                .group_by(Version.model_id)
            ).all()
        )
        for m in session.scalars(
            select(Model).where(Model.project_id == p.id, Model.deleted_at.is_not(None))
        ):
            assert m.deleted_at is not None
            items.append(
                _item("model", p, m, None, m.deleted_at, m.deleted_by, None, sizes.get(m.id, 0))
            )
        rows = session.execute(
            select(Version, Model)
            .join(Model, Model.id == Version.model_id)
            .where(
                Model.project_id == p.id,
                Model.deleted_at.is_(None),
                Version.deleted_at.is_not(None),
            )
        )
        for v, m in rows:
            assert v.deleted_at is not None
            items.append(
                _item("version", p, m, v, v.deleted_at, v.deleted_by, v.deleted_reason, v.size)
            )
    items = [i.model_copy(update={"purge_at": i.deleted_at + keep}) for i in items]
    items.sort(key=lambda i: (i.deleted_at, i.version or 0), reverse=True)
    return items


def _item(
    kind: str,
    project: Project,
    model: Model | None,
    version: Version | None,
    deleted_at: datetime,
    deleted_by: str | None,
    reason: str | None,
    size: int | None,
) -> TrashItem:
    number = version.number if version is not None else None
    model_name = _name(model) if model is not None else None
    return TrashItem(
        kind=kind,
        ref=trash_ref(_name(project), model_name, number),
        project=_name(project),
        model=model_name,
        version=number,
        deleted_at=deleted_at,
        deleted_by=deleted_by,
        reason=reason,
        purge_at=deleted_at,
        size=int(size or 0),
    )


def _open_any(
    session: Session, caller: Caller, name: str, need: Role, *, trashed: bool = False
) -> _Found:
    """The project `name`, or (if none, or with `trashed` always) the one of that name last put
    in the trash, if the caller's role in it is at least `need`."""
    project = None if trashed else session.scalar(select(Project).where(Project.name == name))
    if project is None:
        project = session.scalar(
            select(Project)
            .where(Project.deleted_name == name)
            .order_by(Project.deleted_at.desc())
            .limit(1)
        )
    role = role_in(session, caller, project) if project is not None else None
    if project is None or role is None:
        raise APIError(
            404, "not_found", f"project '{name}' not found, or you are not a member of it"
        )
    if role < need:
        raise APIError(
            403,
            "forbidden",
            f"you are a {role.name} in project '{name}'; this needs the {need.name} role or above",
        )
    return _Found(project, role)


# --- restoring ----------------------------------------------------------------------------------


def restore_version(
    session: Session, caller: Caller, project: str, model: str, number: int
) -> VersionOut:
    """Take version `number` out of the trash (maintainers), with the aliases it had that are
    still free; APIError 404 when it is not in the trash (or was purged)."""
    from lmvp_server.services import versions  # versions moves versions here: no import cycle

    scope = _open_model_scope(session, caller, project, model, Role.maintainer)
    m = scope.model
    lock_model(session, m)
    v = session.scalar(select(Version).where(Version.model_id == m.id, Version.number == number))
    if v is None or v.deleted_at is None:
        state = "is not in the trash" if v is not None else "does not exist (or was purged)"
        raise APIError(404, "not_found", f"version {number} of '{project}/{model}' {state}")
    restored = []
    for name in v.deleted_aliases or []:
        if session.get(Alias, (m.id, name)) is None:
            session.add(Alias(model_id=m.id, name=name, version_id=v.id, updated_at=utcnow()))
            restored.append(name)
    v.deleted_at = None
    v.deleted_by = None
    v.deleted_reason = None
    v.deleted_aliases = None
    scope.record_model_event("version.restored", version=number, payload={"aliases": restored})
    session.commit()
    return versions.get_version(session, caller, project, model, str(number))


def restore_model(session: Session, caller: Caller, project: str, model: str) -> ModelOut:
    """Take the model, with everything it held, out of the trash (maintainers). APIError 409
    when a new model of that name was made after it went to the trash."""
    from lmvp_server.services import models  # models moves models here: no import cycle

    scope = open_project(session, caller, project, Role.maintainer)
    m = session.scalar(
        select(Model)
        .where(Model.project_id == scope.project.id, Model.deleted_name == model)
        .order_by(Model.deleted_at.desc())
        .limit(1)
    )
    if m is None:
        raise APIError(
            404, "not_found", f"model '{project}/{model}' is not in the trash (or was purged)"
        )
    if session.scalar(
        select(Model.id).where(Model.project_id == scope.project.id, Model.name == model)
    ):
        raise APIError(
            409,
            "conflict",
            f"a new model '{project}/{model}' was made after this one went to the trash: "
            "delete or rename the new one first",
        )
    lock_model(session, m)
    m.name = model
    m.deleted_at = m.deleted_by = m.deleted_name = None
    scope.record("model.restored", model=model)
    session.commit()
    return models.get_model(session, caller, project, model)


def restore_project(session: Session, caller: Caller, project: str) -> ProjectOut:
    """Take the project, with everything it held, out of the trash (owners). APIError 409
    when a new project of that name was made after it went to the trash."""
    from lmvp_server.services import projects  # projects moves projects here: no import cycle

    found = _open_any(session, caller, project, Role.owner, trashed=True)
    p = found.project
    if session.scalar(select(Project.id).where(Project.name == project)) is not None:
        raise APIError(
            409,
            "conflict",
            f"a new project '{project}' was made after this one went to the trash: delete the "
            "new one first",
        )
    p.name = project
    p.deleted_at = p.deleted_by = p.deleted_name = None
    ProjectScope(session, caller, p, found.role).record("project.restored")
    session.commit()
    return projects.get_project(session, caller, project)


def _open_model_scope(
    session: Session, caller: Caller, project: str, model: str, need: Role
) -> ModelScope:
    scope = open_project(session, caller, project, need)
    m = load_model(session, scope.project, model)
    return ModelScope(session, caller, scope.project, scope.role, m)


# --- purging ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Purged:
    """What one purge removed for good."""

    versions: int = 0
    models: int = 0
    projects: int = 0


def purge_expired_trash(
    session: Session, trash_days: float, *, now: datetime | None = None
) -> Purged:
    """Remove for good what has been in the trash longer than `trash_days`: versions (their
    rows and files' rows; the blobs are then the garbage collector's), models and projects
    with everything in them. Records a `*.purged` event for each, by the server. Commits in
    batches; safe to run on several workers at once (each row is deleted once)."""
    cutoff = (now or utcnow()) - timedelta(days=trash_days)
    models = projects = 0
    versions = _purge_versions(
        session, [Version.deleted_at.is_not(None), Version.deleted_at < cutoff], by=None
    )
    for m, p in session.execute(
        select(Model, Project)
        .join(Project, Project.id == Model.project_id)
        .where(Model.deleted_at.is_not(None), Model.deleted_at < cutoff)
    ).all():
        _purged_event(session, p, "model.purged", model=_name(m))
        session.delete(m)
        session.commit()
        models += 1
    for p in session.scalars(
        select(Project).where(Project.deleted_at.is_not(None), Project.deleted_at < cutoff)
    ).all():
        _purged_event(session, p, "project.purged")
        session.flush()
        session.delete(p)
        session.commit()
        projects += 1
    return Purged(versions, models, projects)


def empty_trash(
    session: Session, caller: Caller, project: str, *, deleted_through: datetime
) -> Purged:
    """Purge now (maintainers) what is in the project's trash and was deleted at or before
    `deleted_through` (the newest deletion the caller was shown, so that what was put in the
    trash since is not purged unseen): its versions, and its models with everything in them,
    as `purge_expired_trash` does after the trash period, with a `*.purged` event naming the
    caller. The blobs are the garbage collector's from then on. Commits in batches."""
    scope = open_project(session, caller, project, Role.maintainer)
    p, actor = scope.project, caller.user
    models = 0
    versions = _purge_versions(
        session,
        [Version.deleted_at.is_not(None), Version.deleted_at <= deleted_through],
        by=actor,
        where=[Model.project_id == p.id, Model.deleted_at.is_(None)],
    )
    for m in session.scalars(
        select(Model).where(
            Model.project_id == p.id,
            Model.deleted_at.is_not(None),
            Model.deleted_at <= deleted_through,
        )
    ).all():
        name = _name(m)
        # The database removes its versions, their files' rows, aliases and runs with it.
        if session.scalar(
            delete(Model).where(Model.id == m.id, Model.deleted_at.is_not(None)).returning(Model.id)
        ):
            _purged_event(session, p, "model.purged", model=name, by=actor)
            models += 1
        session.commit()
    return Purged(versions, models, 0)


def _purge_versions(
    session: Session,
    trashed: list[ColumnElement[bool]],
    *,
    by: User | None,
    where: Sequence[ColumnElement[bool]] = (),
) -> int:
    """Remove for good, in batches, the versions that are `trashed` (the conditions the delete
    checks again, so that one restored or purged meanwhile by another worker is left alone)
    and match `where`; a `version.purged` event for each, by `by` (None: the server). Their
    models' revisions move on: listings cached by revision (on every worker), whose children
    lost their parent, are read again. Returns how many went."""
    purged = 0
    while True:
        rows = session.execute(
            select(Version.id, Version.number, Model, Project)
            .join(Model, Model.id == Version.model_id)
            .join(Project, Project.id == Model.project_id)
            .where(*trashed, *where)
            .order_by(Version.id)
            .limit(PURGE_BATCH)
        ).all()
        if not rows:
            return purged
        # The database removes their files' rows and unlinks their children.
        gone = set(
            session.scalars(
                delete(Version)
                .where(Version.id.in_([vid for vid, *_ in rows]), *trashed)
                .returning(Version.id)
            )
        )
        for vid, number, m, p in rows:
            if vid in gone:
                _purged_event(session, p, "version.purged", model=_name(m), version=number, by=by)
        if touched := {m.id for vid, _, m, _ in rows if vid in gone}:
            session.execute(
                update(Model).where(Model.id.in_(touched)).values(revision=Model.revision + 1)
            )
        session.commit()
        purged += len(gone)


def _purged_event(
    session: Session,
    project: Project,
    kind: str,
    *,
    model: str | None = None,
    version: int | None = None,
    by: User | None = None,
) -> None:
    """Record a purge (by the server, or by `by` emptying the trash), under the project's own
    name (not its name in the trash)."""
    row = record_event(session, project=project, actor=by, kind=kind, model=model, version=version)
    row.project_name = _name(project)


__all__ = [
    "BY_HAND",
    "Purged",
    "delete_model",
    "delete_project",
    "empty_trash",
    "in_trash_error",
    "list_trash",
    "live",
    "purge_expired_trash",
    "restore_model",
    "restore_project",
    "restore_version",
    "trash_ref",
    "trash_version",
]
