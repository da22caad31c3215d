"""The hot read: `GET .../versions/{ref}` (`latest` above all, which clients, the daemon and the
desktop ask most) proven and answered in a few plain queries, with every check of the general
path and no cache that could outlive a change.

Through the general path the call cost 4-9 ms of server CPU: FastAPI ran the session, the caller
and the endpoint on the thread pool one after another; the token, project, membership, model and
version (with its author, parent and files) were loaded as ORM objects; pydantic validated and
serialised the answer. Here, in one trip to the thread pool:

1. one query proves the token by the sha256 of its secret (it exists, is not revoked, has not
   expired), and finds the project by name, the caller's membership and the model by name;
2. one finds the version `ref` names (`latest`: the newest not in the trash) with its parent's
   number as it is now;
3. its row comes from the row cache (versions never change; `version_rows.version_row`) and its
   aliases, which move, from one query.

Nothing about tokens, members or models is cached: a token revoked, a member removed or a model
deleted on any worker is refused at the next request. Whatever is not the plain case (no such
token, revoked, expired, a last use to record, not a member, a project, model or version that
does not exist or is in the trash) goes the general way (`deps.authenticate`,
`services.versions.get_version`), which answers with its own exact errors: this path only ever
answers what the general one would.
"""

from __future__ import annotations

from sqlalchemy import and_, select
from sqlalchemy.orm import Session, aliased

from lmvp_server.caches import RowCache
from lmvp_server.db import utcnow
from lmvp_server.deps import LAST_USED_GRANULARITY, authenticate
from lmvp_server.models import Alias, Membership, Model, Project, Role, Token, User, Version
from lmvp_server.security import hash_token, looks_like_token
from lmvp_server.services.versions import ALIAS_PATTERN, VERSION_REF, get_version
from lmvp_server.version_rows import dump_json, version_row

_parent = aliased(Version)


def version_json(
    session: Session,
    authorization: str | None,
    project: str,
    model: str,
    ref: str,
    row_cache: RowCache,
) -> bytes:
    """The JSON of `services.versions.get_version` for the caller of `authorization` (viewers
    and above). Raises the general path's APIErrors (401, 404)."""
    found = _plain_case(session, authorization, project, model, ref, row_cache)
    if found is not None:
        return found
    caller = authenticate(session, authorization)
    return get_version(session, caller, project, model, ref).model_dump_json().encode()


def _plain_case(
    session: Session,
    authorization: str | None,
    project: str,
    model: str,
    ref: str,
    row_cache: RowCache,
) -> bytes | None:
    scheme, _, secret = (authorization or "").partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not looks_like_token(secret):
        return None
    conn = session.connection()
    facts = conn.execute(
        select(
            Token.revoked_at,
            Token.expires_at,
            Token.last_used_at,
            User.is_admin,
            Project.id,
            Project.name,
            Membership.role,
            Model.id,
            Model.name,
            Model.created_at,
        )
        .join(User, User.id == Token.user_id)
        .join(Project, Project.name == project)
        .outerjoin(
            Membership, and_(Membership.project_id == Project.id, Membership.user_id == User.id)
        )
        .join(Model, and_(Model.project_id == Project.id, Model.name == model))
        .where(Token.token_hash == hash_token(secret))
    ).first()
    if facts is None:
        return None
    revoked, expires, last_used, is_admin, project_id, project_name, role = facts[:7]
    now = utcnow()
    if revoked is not None or (expires is not None and expires <= now):
        return None
    if last_used is None or now - last_used > LAST_USED_GRANULARITY:
        return None  # the general path records the use
    if not is_admin and (role is None or Role[role] < Role.viewer):
        return None
    model_id, model_name, model_created = facts[7:]
    query = select(Version.id, Version.number, Version.deleted_at, _parent.number).outerjoin(
        _parent, _parent.id == Version.parent_id
    )
    if ref == "latest":
        query = (
            query.where(Version.model_id == model_id, Version.deleted_at.is_(None))
            .order_by(Version.number.desc())
            .limit(1)
        )
    elif match := VERSION_REF.match(ref):
        query = query.where(Version.model_id == model_id, Version.number == int(match.group(1)))
    elif ALIAS_PATTERN.match(ref):
        query = query.join(Alias, Alias.version_id == Version.id).where(
            Alias.model_id == model_id, Alias.name == ref
        )
    else:
        return None
    version = conn.execute(query).first()
    if version is None or version.deleted_at is not None:
        return None
    row = version_row(
        session,
        Project(id=project_id, name=project_name),
        Model(id=model_id, name=model_name, created_at=model_created),
        version.id,
        version.number,
        row_cache,
    )
    # A deleted (purged) parent leaves the version without one: as the database says now.
    row["parent"] = version[3]
    return dump_json(row)


__all__ = ["version_json"]
