"""The FastAPI application factory: wires settings, database, blob store and routers."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from anyio import CapacityLimiter
from fastapi import APIRouter, FastAPI

from lmvp_server import __version__
from lmvp_server.body_limit import DEFAULT_MAX_JSON_BODY, JSONBodyLimit
from lmvp_server.caches import HashCache, ListingCache, RowCache
from lmvp_server.context import ServerContext
from lmvp_server.db import make_engine, make_sessionmaker, session_scope
from lmvp_server.errors import install_error_handlers
from lmvp_server.events import EventHub
from lmvp_server.fleet import Fleet
from lmvp_server.gc import fleet_jobs as gc_jobs
from lmvp_server.local_uploads import LocalUploads
from lmvp_server.login_guard import PASSWORD_CHECK_SLOTS
from lmvp_server.migrate import upgrade_database
from lmvp_server.openapi import install_openapi
from lmvp_server.read_path import read_threads
from lmvp_server.routers import (
    auth,
    blobs,
    chunks,
    events,
    models,
    projects,
    retention,
    runs,
    uploads,
    versions,
)
from lmvp_server.routers import storage as storage_routes
from lmvp_server.security_headers import SecurityHeaders
from lmvp_server.services.retention import run_maintenance
from lmvp_server.settings import Settings
from lmvp_server.storage import open_blob_store
from lmvp_server.upload_errors import UploadError
from lmvp_server.upload_lifecycle import expire_stale_uploads, remove_orphan_partials
from lmvp_server.web import install_web_console

log = logging.getLogger(__name__)
API_PREFIX = "/api/v1"


def create_app(settings: Settings | None = None, *, migrate: bool = True) -> FastAPI:
    """Build the app. With `migrate`, the database schema is brought up to date first."""
    settings = settings or Settings()
    settings.prepare_dirs()
    engine = make_engine(settings.effective_database_url, pool=settings.database_pool())
    if migrate:
        upgrade_database(engine)
    hub = EventHub()
    sessions = make_sessionmaker(engine)
    hub.watch_sessions(sessions)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        hub.bind(asyncio.get_running_loop())
        listener = None
        if engine.dialect.name == "postgresql":
            # One connection per worker wakes its streams on commits anywhere (LISTEN/NOTIFY).
            listener = asyncio.create_task(hub.listen(engine.url), name="event-listener")
        with session_scope(sessions) as session:
            removed = remove_orphan_partials(session, settings)
        if removed:
            log.info("removed %d partial upload files no upload owns", removed)
        fleet = Fleet(engine, retry_seconds=settings.fleet_retry_seconds)
        for name, seconds, job in background_jobs(ctx):
            fleet.every(name, seconds, job)
        tune_garbage_collector()
        if settings.local_uploads:
            local_uploads.start(ctx)
        fleet.start()
        yield
        fleet.stop()
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        local_uploads.stop()
        engine.dispose()

    app = FastAPI(
        title="LMVP",
        version=__version__,
        description="Lightweight Model Versioning Platform",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    local_uploads = LocalUploads()
    ctx = ServerContext(
        settings=settings,
        engine=engine,
        sessions=sessions,
        blob_store=open_blob_store(settings),
        event_hub=hub,
        hash_cache=HashCache(),
        listing_cache=ListingCache(),
        row_cache=RowCache(),
        local_uploads=local_uploads,
        password_check_slots=asyncio.Semaphore(PASSWORD_CHECK_SLOTS),
        read_slots=CapacityLimiter(read_threads(engine)),
    )
    # The one place the context is kept; `context.get_context` is the one place it is read.
    app.state.context = ctx
    install_error_handlers(app)
    app.add_exception_handler(UploadError, uploads.answer_upload_error)
    app.add_middleware(
        JSONBodyLimit,
        limit=DEFAULT_MAX_JSON_BODY,
        exempt_prefix=f"{API_PREFIX}/uploads",
        # Chunk packs (routers/chunks.py) stream up to 256 MiB and count it themselves.
        exempt_pattern=rf"^{API_PREFIX}/projects/[^/]+/chunks$",
    )
    # Added last, so outermost: its headers are on every answer, refusals included.
    app.add_middleware(SecurityHeaders, docs_prefix=f"{API_PREFIX}/docs")

    api = APIRouter(prefix=API_PREFIX)

    @api.get("/health", tags=["meta"])
    def health() -> dict[str, str]:
        """Liveness probe; needs no token."""
        return {"status": "ok", "version": __version__}

    for module in (auth, projects, models, versions, retention, runs, blobs, chunks, uploads):
        api.include_router(module.router)
    api.include_router(events.router)
    api.include_router(storage_routes.router)
    app.include_router(api)
    install_openapi(app, prefix=API_PREFIX)
    install_web_console(app)
    return app


def background_jobs(ctx: ServerContext) -> list[tuple[str, float, Callable[[], object]]]:
    """The fleet's periodic jobs as (name, every so many seconds, job): each runs on exactly
    one process of all those sharing the database (`lmvp_server.fleet`), on a thread of its
    own. A job decides from the database what it may touch, never from what its process knows.
    """

    def expire_uploads() -> None:
        with session_scope(ctx.sessions) as session:
            removed = expire_stale_uploads(session, ctx.settings)
        if removed:
            log.info(
                "removed %d uploads untouched for %d days", removed, ctx.settings.upload_expiry_days
            )

    def trash_and_retention() -> None:
        run_maintenance(ctx.sessions, ctx.settings.trash_days)

    return [
        # The garbage collector's passes, every LMVP_GC_INTERVAL seconds (lmvp_server/gc.py).
        *gc_jobs(ctx.sessions, ctx.blob_store, ctx.settings),
        ("expire-uploads", ctx.settings.upload_expiry_check_seconds, expire_uploads),
        # Purge the trash past LMVP_TRASH_DAYS, then apply every retention policy.
        ("trash-and-retention", ctx.settings.retention_interval_seconds, trash_and_retention),
    ]


def tune_garbage_collector() -> None:
    """Keep the cyclic garbage collector off the request path.

    A server builds thousands of short-lived dicts per listing; with CPython's default
    thresholds the collector ran so often, over every long-lived object of the app, that it took
    70% of the time of building a 1,000-version listing. Objects alive after start-up are frozen
    (never scanned again) and young collections run less often.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory` workers: settings from the environment, schema already
    migrated by `lmvp-server serve`."""
    return create_app(Settings(), migrate=False)
