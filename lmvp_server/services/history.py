"""A project's history: the events of everything that changed in it (versions, aliases,
members, runs...), newest first, a page at a time."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from lmvp_server.events import event_out
from lmvp_server.models import Event, Role
from lmvp_server.schemas import HistoryPage
from lmvp_server.services.access import Caller, open_project


def project_history(
    session: Session,
    caller: Caller,
    project: str,
    *,
    limit: int,
    before: int | None = None,
    model: str | None = None,
) -> HistoryPage:
    """Up to `limit` events of the project with ids below `before`, of `model` only when
    given, newest first; `next` is the `before` of the next page."""
    scope = open_project(session, caller, project, Role.viewer)
    query = select(Event).where(Event.project_id == scope.project.id)
    if before is not None:
        query = query.where(Event.id < before)
    if model is not None:
        query = query.where(Event.model_name == model)
    events = list(session.scalars(query.order_by(Event.id.desc()).limit(limit + 1)))
    more = len(events) > limit
    events = events[:limit]
    return HistoryPage(items=[event_out(e) for e in events], next=events[-1].id if more else None)
