"""The server's context: one frozen, typed object holding what every request and every
background thread of a server shares (settings, database, blob store, event hub, caches, the
local upload socket).

`lmvp_server.app.create_app` builds it once and keeps it as `app.state.context`. Endpoints
reach it through one dependency, `CtxDep` (`ctx: CtxDep`, also exported by `lmvp_server.deps`);
code outside a request (the local upload socket's threads, the event stream's workers,
start-up) is handed it explicitly. Nothing reads `app.state` but `get_context`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from anyio import CapacityLimiter
from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from lmvp_server.caches import HashCache, ListingCache, RowCache
from lmvp_server.events import EventHub
from lmvp_server.settings import Settings
from lmvp_server.storage import BlobStore

if TYPE_CHECKING:
    from lmvp_server.local_uploads import LocalUploads


@dataclass(frozen=True, eq=False)
class ServerContext:
    """What one server's requests and threads share; built once by `create_app`."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    blob_store: BlobStore
    event_hub: EventHub
    hash_cache: HashCache
    listing_cache: ListingCache
    row_cache: RowCache
    local_uploads: LocalUploads
    # Password checks (argon2) running at once (`lmvp_server.login_guard`).
    password_check_slots: asyncio.Semaphore
    # The hot reads (`latest`, a listing page) running at once, on threads of their own
    # (`lmvp_server.read_path.read_threads`).
    read_slots: CapacityLimiter


def get_context(request: Request) -> ServerContext:
    """The server's context: the one place a request reaches what `create_app` built."""
    ctx: ServerContext = request.app.state.context
    return ctx


async def _context(request: Request) -> ServerContext:
    # A coroutine, so that FastAPI calls it on the event loop: it runs a plain function
    # dependency on the thread pool, a hand-off that costs more than reading an attribute.
    return get_context(request)


CtxDep = Annotated[ServerContext, Depends(_context)]

__all__ = ["CtxDep", "ServerContext", "get_context"]
