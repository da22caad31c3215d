"""The hot reads: `GET .../versions/{ref}` (`latest` above all, which clients, the daemon and
the desktop ask most) and a page of a model's listing, proven and answered in a few plain
queries, with every check of the general path and no cache that could outlive a change.

Through the general path `latest` cost 4-9 ms of server CPU: FastAPI ran the session, the caller
and the endpoint on the thread pool one after another; the token, project, membership, model and
version (with its author, parent and files) were loaded as ORM objects; pydantic validated and
serialised the answer. Here, in one trip to the thread pool, on a plain connection, with
statements built once:

1. one query proves the token by the sha256 of its secret (it exists, is not revoked, has not
   expired), and finds the project by name, the caller's membership and the model by name with
   its revision;
2. for a version, an answer already given for the same `ref` at the model's revision read in
   1. is given again (`caches.ListingCache`: every change to a model's versions and aliases
   bumps its revision, so such an answer is current exactly as long as the revision is);
   otherwise one query finds the version `ref` names (`latest`: the newest not in the trash)
   with its parent's number as it is now, its row comes from the row cache (versions never
   change; `version_rows.version_row`) and its aliases, which move, from one more query;
3. for a listing, the page's ETag follows from the model's revision: a caller's copy still
   current is answered 304, a page in the listing cache is answered from there.

Nothing about tokens, members or models is cached: a token revoked, a member removed or a model
deleted on any worker is refused at the next request. So `latest` asked again of an unchanged
model costs that one query: its answer does not depend on who asks, only on the model's
versions and aliases, which its revision stands for, and on the names the query read.

A worker runs at most `read_threads` of these reads at once, on slots of their own
(`ServerContext.read_slots`), not the 40 threads it has for everything else: every thread of a
worker takes turns at one GIL, and under 16 clients asking at once the extra threads cost more
in handing it over than they add. On this 2-core machine (`bench/scale.py`, `latest` and the
1,000-version listing under 16 keep-alive clients, the server's CPU per request and requests/s):

| threads | embedded (SQLite) | PostgreSQL, 1 worker | PostgreSQL, 2 workers |
|---|---|---|---|
| 40 (before) | 1.01 ms, 1178/s | 0.82 ms, 1234/s | 0.67 ms, 2119/s, cores 92% busy |
| 8 | 0.76 ms, 1480/s | 0.82 ms, 1220/s | 0.68 ms, 2194/s |
| 4 | 0.70 ms, 1537/s | 0.83 ms, 1187/s | 0.65 ms, 2301/s, cores 96% busy |
| 2 | 0.61 ms, 1710/s | 0.78 ms, 1213/s | 0.68 ms, 2251/s, cores 98% busy |

A read on SQLite is CPU in this process (two threads let one run SQLite while the other runs
Python); one on PostgreSQL mostly waits for the database, so its workers keep 4, which still
cover a database a few milliseconds away at these rates. These reads wait for nothing but
the database (on SQLite, the one that records a token's use may wait for the write lock, which
commits hold for milliseconds), so a slot is never held for long; and uploads, commits and the
rest, which may wait long, never hold these slots, nor the reads theirs.

Whatever is not the plain case (no such token, revoked, expired, a last use to record, not a
member, a project, model or version that does not exist or is in the trash, a listing page not
cached yet) goes the general way (`deps.authenticate`, `services.versions`), which answers with
its own exact errors: this path only ever answers what the general one would.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, and_, bindparam, select
from sqlalchemy.orm import Session, aliased, sessionmaker

from lmvp_server.caches import ListingCache, RowCache
from lmvp_server.db import utcnow
from lmvp_server.deps import LAST_USED_GRANULARITY, authenticate
from lmvp_server.models import Alias, Membership, Model, Project, Role, Token, User, Version
from lmvp_server.security import hash_token, looks_like_token
from lmvp_server.services.versions import (
    ALIAS_PATTERN,
    VERSION_REF,
    VersionListing,
    get_version,
    list_versions,
    listing_etag,
)
from lmvp_server.version_rows import dump_json, version_row

_parent = aliased(Version)

# The statements, built once: building one costs more than running it.
_FACTS = (
    select(
        Token.revoked_at,
        Token.expires_at,
        Token.last_used_at,
        User.is_admin,
        Project.name.label("project_name"),
        Membership.role,
        Model.id,
        Model.name,
        Model.created_at,
        Model.revision,
    )
    .join(User, User.id == Token.user_id)
    .join(Project, Project.name == bindparam("project"))
    .outerjoin(Membership, and_(Membership.project_id == Project.id, Membership.user_id == User.id))
    .join(Model, and_(Model.project_id == Project.id, Model.name == bindparam("model")))
    .where(Token.token_hash == bindparam("token_hash"))
)
_VERSION = select(Version.id, Version.number, Version.deleted_at, _parent.number).outerjoin(
    _parent, _parent.id == Version.parent_id
)
_LATEST = (
    _VERSION.where(Version.model_id == bindparam("model_id"), Version.deleted_at.is_(None))
    .order_by(Version.number.desc())
    .limit(1)
)
_BY_NUMBER = _VERSION.where(
    Version.model_id == bindparam("model_id"), Version.number == bindparam("number")
)
_BY_ALIAS = _VERSION.join(Alias, Alias.version_id == Version.id).where(
    Alias.model_id == bindparam("model_id"), Alias.name == bindparam("alias")
)


def read_threads(engine: Engine) -> int:
    """How many of these reads one worker runs at once (see the module's docstring)."""
    return 4 if engine.dialect.name == "postgresql" else 2


def version_json(
    engine: Engine,
    sessions: sessionmaker[Session],
    authorization: str | None,
    project: str,
    model: str,
    ref: str,
    row_cache: RowCache,
    answers: ListingCache,
) -> bytes:
    """The JSON of `services.versions.get_version` for the caller of `authorization` (viewers
    and above). Raises the general path's APIErrors (401, 404)."""
    with _reading(engine) as conn:
        found = _plain_case(conn, authorization, project, model, ref, row_cache, answers)
    if found is not None:
        return found
    with sessions() as session:
        caller = authenticate(session, authorization)
        return get_version(session, caller, project, model, ref).model_dump_json().encode()


def listing(
    engine: Engine,
    sessions: sessionmaker[Session],
    authorization: str | None,
    project: str,
    model: str,
    *,
    limit: int,
    before: int | None,
    if_none_match: str | None,
    listing_cache: ListingCache,
    row_cache: RowCache,
) -> VersionListing:
    """`services.versions.list_versions` for the caller of `authorization`: a page still
    current for the caller's copy (`If-None-Match`) or already in `listing_cache` is answered
    after the one query that proves the caller; any other page the general way, which builds
    and caches it."""
    with _reading(engine) as conn:
        facts = _facts(conn, authorization, project, model)
    if facts is not None:
        etag = listing_etag(facts.id, facts.created_at, facts.revision, before, limit)
        if if_none_match == etag:
            return VersionListing(etag, None)
        if (body := listing_cache.get(etag)) is not None:
            return VersionListing(etag, body)
    with sessions() as session:
        caller = authenticate(session, authorization)
        return list_versions(
            session,
            caller,
            project,
            model,
            limit=limit,
            before=before,
            if_none_match=if_none_match,
            listing_cache=listing_cache,
            row_cache=row_cache,
        )


def _reading(engine: Engine) -> Connection:
    """A connection for this path's few reads. On PostgreSQL in autocommit: each statement sees
    what was committed when it began, exactly as inside the READ COMMITTED transaction it would
    otherwise run in, without that transaction's BEGIN and ROLLBACK, two of the six trips to the
    database that `latest` made (and two of the four of a cached listing page). SQLite's
    driver begins no transaction for reads anyway."""
    conn = engine.connect()
    if engine.dialect.name == "postgresql":
        conn.execution_options(isolation_level="AUTOCOMMIT")
    return conn


def _facts(conn: Connection, authorization: str | None, project: str, model: str) -> Any:
    """The project's name and the model's id, name, creation time and revision, if the token is
    valid, its last use recent enough and the caller a viewer of the project or more; else
    None."""
    scheme, _, secret = (authorization or "").partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not looks_like_token(secret):
        return None
    facts = conn.execute(
        _FACTS, {"project": project, "model": model, "token_hash": hash_token(secret)}
    ).first()
    if facts is None:
        return None
    now = utcnow()
    if facts.revoked_at is not None or (facts.expires_at is not None and facts.expires_at <= now):
        return None
    if facts.last_used_at is None or now - facts.last_used_at > LAST_USED_GRANULARITY:
        return None  # the general path records the use
    if not facts.is_admin and (facts.role is None or Role[facts.role] < Role.viewer):
        return None
    return facts


def _plain_case(
    conn: Connection,
    authorization: str | None,
    project: str,
    model: str,
    ref: str,
    row_cache: RowCache,
    answers: ListingCache,
) -> bytes | None:
    facts = _facts(conn, authorization, project, model)
    if facts is None:
        return None
    key = (
        "version",
        facts.id,
        facts.created_at,
        facts.revision,
        facts.project_name,
        facts.name,
        ref,
    )
    if (answer := answers.get(key)) is not None:
        return answer
    if ref == "latest":
        version = conn.execute(_LATEST, {"model_id": facts.id}).first()
    elif match := VERSION_REF.match(ref):
        number = int(match.group(1))
        version = conn.execute(_BY_NUMBER, {"model_id": facts.id, "number": number}).first()
    elif ALIAS_PATTERN.match(ref):
        version = conn.execute(_BY_ALIAS, {"model_id": facts.id, "alias": ref}).first()
    else:
        return None
    if version is None or version.deleted_at is not None:
        return None
    row = version_row(
        conn,
        facts.project_name,
        facts.name,
        (facts.id, facts.created_at),
        (version.id, version.number),
        row_cache,
    )
    # A parent purged from the trash leaves the version without one: as the database says now.
    row["parent"] = version[3]
    answer = dump_json(row)
    # Read after the revision: as new as the revision says, or newer (a change committed since),
    # never older.
    answers.put(key, answer)
    return answer


__all__ = ["listing", "read_threads", "version_json"]
