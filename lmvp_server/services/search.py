"""Search from one box: the projects, models and versions a caller can read whose name,
description, message, alias, author or metadata contain the words typed (case-insensitive,
every word somewhere in the item). What is in the trash is left out."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import ColumnElement, Text, and_, cast, false, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from lmvp_server.models import Alias, Membership, Model, Project, User, Version
from lmvp_server.services.access import Caller

# At most this many of each kind of result; the page says when there were more.
LIMIT = 50


@dataclass(frozen=True)
class VersionHit:
    """A version found, with where it is and why it matched."""

    project: str
    model: str
    number: int
    message: str
    author: str | None
    aliases: list[str]
    created_at: datetime


@dataclass
class SearchResults:
    """What a search found, by kind; `more` names the kinds cut at `LIMIT`."""

    projects: list[tuple[str, str]] = field(default_factory=list)
    models: list[tuple[str, str, str]] = field(default_factory=list)
    versions: list[VersionHit] = field(default_factory=list)
    more: set[str] = field(default_factory=set)

    @property
    def empty(self) -> bool:
        return not (self.projects or self.models or self.versions)


def search(session: Session, caller: Caller, query: str) -> SearchResults:
    """Everything readable by the caller that matches every word of `query`."""
    words = [w for w in query.split() if w][:8]
    out = SearchResults()
    if not words:
        return out
    readable = select(Project.id).where(Project.deleted_at.is_(None))
    if not caller.user.is_admin:
        readable = readable.join(Membership, Membership.project_id == Project.id).where(
            Membership.user_id == caller.user.id
        )

    def every(*columns: InstrumentedAttribute[str]) -> ColumnElement[bool]:
        return and_(*(or_(*(c.icontains(w, autoescape=True) for c in columns)) for w in words))

    projects = session.execute(
        select(Project.name, Project.description)
        .where(Project.id.in_(readable), every(Project.name, Project.description))
        .order_by(Project.name)
        .limit(LIMIT + 1)
    ).all()
    out.projects = [(n, d) for n, d in projects[:LIMIT]]
    models = session.execute(
        select(Project.name, Model.name, Model.description)
        .join(Project, Project.id == Model.project_id)
        .where(Project.id.in_(readable), Model.deleted_at.is_(None))
        .where(every(Model.name, Model.description))
        .order_by(Project.name, Model.name)
        .limit(LIMIT + 1)
    ).all()
    out.models = [(p, m, d) for p, m, d in models[:LIMIT]]

    has_alias = [
        select(Alias.name)
        .where(Alias.version_id == Version.id, Alias.name.icontains(w, autoescape=True))
        .exists()
        for w in words
    ]
    per_word = [
        or_(
            Version.message.icontains(w, autoescape=True),
            User.username.icontains(w, autoescape=True),
            cast(Version.meta, Text).icontains(w, autoescape=True),
            alias,
        )
        for w, alias in zip(words, has_alias, strict=True)
    ]
    rows = session.execute(
        select(
            Version.id,
            Project.name,
            Model.name,
            Version.number,
            Version.message,
            User.username,
            Version.created_at,
        )
        .join(Model, Model.id == Version.model_id)
        .join(Project, Project.id == Model.project_id)
        .outerjoin(User, User.id == Version.author_id)
        .where(Project.id.in_(readable), Model.deleted_at.is_(None), Version.deleted_at.is_(None))
        .where(and_(*per_word) if per_word else false())
        .order_by(Version.id.desc())
        .limit(LIMIT + 1)
    ).all()
    ids = [r[0] for r in rows[:LIMIT]]
    aliases: dict[int, list[str]] = {}
    for version_id, name in session.execute(
        select(Alias.version_id, Alias.name).where(Alias.version_id.in_(ids)).order_by(Alias.name)
    ):
        aliases.setdefault(version_id, []).append(name)
    out.versions = [
        VersionHit(p, m, n, msg, author, aliases.get(vid, []), created)
        for vid, p, m, n, msg, author, created in rows[:LIMIT]
    ]
    for kind, found in (("projects", projects), ("models", models), ("versions", rows)):
        if len(found) > LIMIT:
            out.more.add(kind)
    return out
