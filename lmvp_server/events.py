"""The event log: recording events beside the change they describe, in commit order, and waking
live streams on every worker.

Every change is written to the `events` table in the same transaction as the change itself, so
the audit log and the data never disagree. A stream reads `id > last_seen`, oldest first, so
event ids must be handed out in commit order, or a stream skips an event whose transaction
committed after a later id was already streamed (and a `Last-Event-ID` reconnect skips it too).

Ordering. SQLite has one writer at a time, so ids already follow commits. PostgreSQL hands out
sequence values at INSERT time and transactions commit in any order, so every flush that inserts
an event first takes a transaction-scoped advisory lock (`pg_advisory_xact_lock` on
`EVENT_ORDER_LOCK_KEY`, distinct from `migrate.STARTUP_LOCK_KEY`), held until commit or
rollback. The next event id is therefore drawn only after the previous event-writing transaction
has ended and become visible: id order is commit order, and `id > last_seen` misses nothing.
The lock is taken at the flush (in practice at the `commit()` that follows `record_event`), after
the change's own row locks, so it serialises only the last stretch of event-writing
transactions. Its cost, measured with 16 clients setting aliases on two workers (a loaded 2-core
machine, a test cluster without fsync): roughly 100-170 event-writing commits/s with the lock
against 130-180/s without, a 10-25% loss in the noise; with a durable WAL the lock is also held
through the commit's fsync, so event-writing commits no longer share one fsync (group commit).
A commit-ordered sequence column was the alternative; it needs a second ordering
step after commit and a new column and index, while the lock needs neither.

Waking. After a commit, `EventHub` wakes the streams of this process. On PostgreSQL the
committing transaction also sends `NOTIFY lmvp_events` (delivered at commit, only if it
commits); each worker keeps one listening connection (`EventHub.listen`) that wakes all of that
worker's streams, so an event reaches a stream on another worker within milliseconds. Streams
still poll, rarely while the listener is connected (to notice revoked tokens) and every second
without it (SQLite, or while the listener reconnects).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psycopg
from sqlalchemy import event as sa_event
from sqlalchemy import select, text
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from lmvp_server.models import Event, Membership, Project, User
from lmvp_server.schemas import EventOut

log = logging.getLogger(__name__)

_PENDING = "lmvp_events_pending"
# The advisory lock that orders event ids: any fixed 64-bit number; the bytes of "LMVPevnt".
EVENT_ORDER_LOCK_KEY = 0x4C4D5650_65766E74
NOTIFY_CHANNEL = "lmvp_events"
# The listening connection's application_name, as pg_stat_activity shows it.
LISTENER_NAME = "lmvp-event-listener"
# How often a stream reads the database without being woken.
POLL_SECONDS = 1.0
POLL_SECONDS_WHILE_LISTENING = 15.0
_RELISTEN_SECONDS = 1.0


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


@sa_event.listens_for(Session, "before_flush")
def _order_events_by_commit(session: Session, _flush_context: Any, _instances: Any) -> None:
    """On PostgreSQL, before a flush inserts events: take the event-order lock (held to the end
    of the transaction) and queue the cross-worker NOTIFY. Every session of every process that
    writes events comes through here, the CLI's included."""
    if not any(isinstance(obj, Event) for obj in session.new):
        return
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        return
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": EVENT_ORDER_LOCK_KEY})
    connection.execute(text("SELECT pg_notify(:channel, '')"), {"channel": NOTIFY_CHANNEL})


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
    """Wakes the event streams of this process when a transaction that wrote events commits,
    here or (PostgreSQL, through `listen`) on any other worker or host."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: set[asyncio.Event] = set()
        self._listening = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    @property
    def poll_seconds(self) -> float:
        """How long a stream waits for a wake-up before it reads the database anyway."""
        return POLL_SECONDS_WHILE_LISTENING if self._listening else POLL_SECONDS

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

    async def listen(self, database_url: URL) -> None:
        """Run until cancelled (on the event loop of `bind`): one PostgreSQL connection that
        LISTENs for events committed anywhere and wakes this process's streams. When the
        connection drops, streams fall back to polling every second until it is back."""
        conninfo = database_url.set(drivername="postgresql").render_as_string(hide_password=False)
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    conninfo, autocommit=True, application_name=LISTENER_NAME
                ) as conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self._listening = True
                    # Whatever was committed while not listening is read now.
                    self._wake_all()
                    async for _ in conn.notifies():
                        self._wake_all()
            except (psycopg.Error, OSError) as exc:
                log.warning(
                    "event listener lost its database connection (%s); streams poll every "
                    "%.0f s until it is back",
                    exc,
                    POLL_SECONDS,
                )
            finally:
                self._listening = False
                self._wake_all()
            await asyncio.sleep(_RELISTEN_SECONDS)
