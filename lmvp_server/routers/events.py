"""`GET /api/v1/events`: the live event stream (Server-Sent Events) with `Last-Event-ID` replay."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from sse_starlette import EventSourceResponse, ServerSentEvent

from lmvp_server.context import CtxDep, ServerContext
from lmvp_server.db import session_scope, utcnow
from lmvp_server.deps import Caller, authenticate
from lmvp_server.events import event_out, last_event_id, readable_events_after
from lmvp_server.models import Token
from lmvp_server.numbers import parse_count
from lmvp_server.openapi import NEEDS_TOKEN, errors
from lmvp_server.schemas import MAX_BIGINT, EventOut

router = APIRouter(tags=["events"])

_BATCH = 500


@router.get(
    "/events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "Server-Sent Events: `id` is the event's id, `event` its kind, "
            "`data` the event as JSON (see EventOut); a comment every 15 s keeps it open.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **errors(400, 422, notes={400: "`Last-Event-ID` is not an event id."}),
    },
    openapi_extra={
        **NEEDS_TOKEN,
        "parameters": [
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "description": "Replay the events after this id first (what an EventSource "
                "sends when it reconnects).",
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
            }
        ],
    },
)
async def event_stream(
    request: Request,
    ctx: CtxDep,
    since: int | None = Query(None, ge=0, le=MAX_BIGINT, description="replay events after this id"),
) -> EventSourceResponse:
    """Events of every project the caller can read, as they happen.

    Reconnecting with `Last-Event-ID` (or `?since=`) first replays what was missed; without
    either the stream starts with the next event.
    """
    caller, start = await run_in_threadpool(
        _authorize,
        ctx,
        request.headers.get("authorization"),
        request.headers.get("last-event-id"),
        since,
    )
    return EventSourceResponse(_events(request, ctx, caller, start), ping=15, send_timeout=30)


def _authorize(
    ctx: ServerContext, authorization: str | None, last_id: str | None, since: int | None
) -> tuple[Caller, int]:
    with session_scope(ctx.sessions) as session:
        caller = authenticate(session, authorization)
        if last_id is not None:
            return caller, parse_count(last_id, "Last-Event-ID", maximum=MAX_BIGINT)
        if since is not None:
            return caller, since
        return caller, last_event_id(session)


async def _events(
    request: Request, ctx: ServerContext, caller: Caller, after: int
) -> AsyncIterator[ServerSentEvent]:
    hub = ctx.event_hub
    waiter = hub.subscribe()
    try:
        while not await request.is_disconnected():
            waiter.clear()
            rows = await run_in_threadpool(_fetch, ctx, caller, after)
            if rows is None:
                # The token was revoked or expired while streaming: hang up. The client's
                # reconnect then gets the 401 that says why.
                return
            for row in rows:
                after = row.id
                yield ServerSentEvent(id=str(row.id), event=row.kind, data=row.model_dump_json())
            if len(rows) == _BATCH:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.wait(), hub.poll_seconds)
    finally:
        hub.unsubscribe(waiter)


def _fetch(ctx: ServerContext, caller: Caller, after: int) -> list[EventOut] | None:
    """The next events for the caller, or None when their token no longer holds."""
    with session_scope(ctx.sessions) as session:
        token = session.get(Token, caller.token.id)
        if (
            token is None
            or token.revoked_at is not None
            or (token.expires_at is not None and token.expires_at <= utcnow())
        ):
            return None
        rows = readable_events_after(session, token.user, after, _BATCH)
        return [event_out(e) for e in rows]
