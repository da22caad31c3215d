"""Aliases: movable names on a model (`production`, `best`, ...) pointing at one version. List
them (viewers), set or move one and delete one (maintainers)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from lmvp_server.db import utcnow
from lmvp_server.errors import APIError, not_found
from lmvp_server.models import Alias, Role, Version
from lmvp_server.schemas import AliasOut
from lmvp_server.services.access import Caller, lock_model, open_model
from lmvp_server.services.versions import ALIAS_PATTERN, VERSION_REF, resolve_ref


def list_aliases(session: Session, caller: Caller, project: str, model: str) -> list[AliasOut]:
    """The model's aliases by name, with the version each points at."""
    scope = open_model(session, caller, project, model, Role.viewer)
    rows = session.execute(
        select(Alias, Version.number)
        .join(Version, Version.id == Alias.version_id)
        .where(Alias.model_id == scope.model.id)
        .order_by(Alias.name)
    )
    return [AliasOut(name=a.name, version=n, updated_at=a.updated_at) for a, n in rows]


def put_alias(
    session: Session, caller: Caller, project: str, model: str, alias: str, version: int
) -> AliasOut:
    """Point `alias` at version number `version`, creating or moving it (maintainers).

    Raises APIError 422 `invalid_alias` for a name that cannot be an alias, 404 for a version
    that does not exist."""
    scope = open_model(session, caller, project, model, Role.maintainer)
    m = scope.model
    check_alias_name(alias)
    lock_model(session, m)
    target = resolve_ref(session, scope.project, m, str(version))
    existing = session.get(Alias, (m.id, alias))
    previous = None
    if existing is None:
        existing = Alias(model_id=m.id, name=alias, version_id=target.id, updated_at=utcnow())
        session.add(existing)
    else:
        previous = session.scalar(select(Version.number).where(Version.id == existing.version_id))
        existing.version_id = target.id
        existing.updated_at = utcnow()
    scope.record_model_event(
        "alias.set", version=target.number, payload={"alias": alias, "previous": previous}
    )
    session.commit()
    return AliasOut(name=alias, version=target.number, updated_at=existing.updated_at)


def delete_alias(session: Session, caller: Caller, project: str, model: str, alias: str) -> None:
    """Remove `alias` from the model (maintainers); APIError 404 when it has no such alias."""
    scope = open_model(session, caller, project, model, Role.maintainer)
    m = scope.model
    lock_model(session, m)
    existing = session.get(Alias, (m.id, alias)) if ALIAS_PATTERN.match(alias) else None
    if existing is None:
        raise not_found(f"alias '{alias}' of model '{project}/{model}'")
    session.delete(existing)
    scope.record_model_event("alias.deleted", payload={"alias": alias})
    session.commit()


def check_alias_name(alias: str) -> None:
    """Raise APIError 422 `invalid_alias` unless `alias` can name an alias."""
    if not ALIAS_PATTERN.match(alias) or alias == "latest" or VERSION_REF.match(alias):
        raise APIError(
            422,
            "invalid_alias",
            f"{alias!r} cannot be an alias: use a letter first, then letters, digits, '.', '_' "
            "or '-' (not 'latest', nor 'v' followed by digits, which name versions)",
        )
