"""The event log: recording events beside the change they describe, and waking live streams.

Every change is written to the `events` table in the same transaction as the change itself, so
the audit log and the data never disagree. After the commit, `EventHub` wakes the Server-Sent
Events streams of this process; streams also poll, so events written by other workers or hosts
arrive too.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy import select
from sqlalchemy.orm import Session

from lmvp_server.models import Event, Membership, Project, User
from lmvp_server.schemas import EventOut

_PENDING = "lmvp_events_pending"


def record_event(
    session: Session,
    *,
    project: Project,
    actor: User | None,
    kind: str,
    model: str | None = None,
    version: int | None = None,
    payload: dict[str, Any] | None = None,
) -> Event:
    """Append an event to the log; it becomes visible when the caller's transaction commits."""
    row = Event(
        project_id=project.id,
        project_name=project.name,
        actor_id=actor.id if actor else None,
        kind=kind,
        model_name=model,
        version_number=version,
        payload=payload or {},
    )
    row.actor = actor
    session.add(row)
    session.info[_PENDING] = True
    return row


def event_out(row: Event) -> EventOut:
    return EventOut(
        id=row.id,
        kind=row.kind,
        project=row.project_name,
        model=row.model_name,
        version=row.version_number,
        actor=row.actor.username if row.actor else None,
        payload=row.payload or {},
        created_at=row.created_at,
    )


def readable_events_after(session: Session, user: User, after_id: int, limit: int) -> list[Event]:
    """Events newer than `after_id` in every project `user` can read, oldest first."""
    query = select(Event).where(Event.id > after_id, Event.project_id.is_not(None))
    if not user.is_admin:
        member_of = select(Membership.project_id).where(Membership.user_id == user.id)
        query = query.where(Event.project_id.in_(member_of))
    return list(session.scalars(query.order_by(Event.id).limit(limit)))


def last_event_id(session: Session) -> int:
    return session.scalar(select(Event.id).order_by(Event.id.desc()).limit(1)) or 0


class EventHub:
    """Wakes the event streams of this process when a transaction that wrote events commits."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: set[asyncio.Event] = set()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def subscribe(self) -> asyncio.Event:
        waiter = asyncio.Event()
        self._waiters.add(waiter)
        return waiter

    def unsubscribe(self, waiter: asyncio.Event) -> None:
        self._waiters.discard(waiter)

    def notify(self) -> None:
        """Thread-safe: called from the worker thread that committed."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake_all)

    def _wake_all(self) -> None:
        for waiter in self._waiters:
            waiter.set()

    def watch_sessions(self, session_class: type[Session] | Any) -> None:
        """Call `notify` after every commit of a session that recorded events."""

        @sa_event.listens_for(session_class, "after_commit")
        def _after_commit(session: Session) -> None:
            if session.info.pop(_PENDING, False):
                self.notify()
