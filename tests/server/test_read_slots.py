"""The hot reads (`latest`, a listing page) run on slots of their own: a worker runs only a few
at once, and they neither wait for the threads the rest of the server uses (uploads, commits,
which may wait long) nor take them. A real app on a real SQLite file or PostgreSQL database, asked
in-process. (That the reads answer right is tested through real servers, several workers behind
nginx among them: test_versions, test_version_listing, test_cross_worker_reads, tests/fleet.)"""

from __future__ import annotations

import asyncio
from pathlib import Path

import anyio.to_thread
import httpx

from lmvp_server.app import create_app
from lmvp_server.models import User
from lmvp_server.security import hash_password
from lmvp_server.settings import Settings
from tests.conftest import need_postgres
from tests.support import PostgresCluster

API = "/api/v1"
LISTING = f"{API}/projects/vision/models/resnet/versions"


def test_hot_reads_use_their_own_few_threads_and_not_the_ones_the_rest_needs(
    backend: str, tmp_path: Path, postgres: PostgresCluster | None
) -> None:
    database = need_postgres(postgres).new_database() if backend == "postgres" else ""
    # No lifespan: it would tune this test process's garbage collector.
    app = create_app(Settings(data_dir=tmp_path, database_url=database, initial_admin=False))
    ctx = app.state.context
    with ctx.sessions() as session:
        session.add(
            User(username="ada", password_hash=hash_password("password-of-ada"), is_admin=True)
        )
        session.commit()
    # A worker runs two hot reads at once on SQLite, where they are CPU in the process, and four
    # on PostgreSQL, where they mostly wait for the database (read_path.read_threads).
    slots = {"sqlite": 2, "postgres": 4}[backend]
    assert ctx.read_slots.total_tokens == slots

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://lmvp.test") as c:
            r = await c.post(
                f"{API}/auth/login", json={"username": "ada", "password": "password-of-ada"}
            )
            c.headers["Authorization"] = f"Bearer {r.json()['token']}"
            assert (await c.post(f"{API}/projects", json={"name": "vision"})).status_code == 201
            r = await c.post(f"{API}/projects/vision/models", json={"name": "resnet"})
            assert r.status_code == 201
            assert (await c.get(LISTING)).json()["items"] == []

            # Every thread the rest of the server shares is taken (uploads waiting for a
            # lease, say): the hot reads are still answered, on their own slots.
            general = anyio.to_thread.current_default_thread_limiter()
            holders = [object() for _ in range(int(general.total_tokens))]
            for holder in holders:
                await general.acquire_on_behalf_of(holder)
            try:
                latest = await asyncio.wait_for(c.get(f"{LISTING}/latest"), 10)
                assert latest.status_code == 404  # the general path's answer: no version yet
                listing = await asyncio.wait_for(c.get(LISTING), 10)
                assert listing.status_code == 200
                assert listing.json()["items"] == []
            finally:
                for holder in holders:
                    general.release_on_behalf_of(holder)

            # Their slots all taken, a hot read waits for one, while the rest is answered.
            readers = [object() for _ in range(slots)]
            for reader in readers:
                await ctx.read_slots.acquire_on_behalf_of(reader)
            waiting = asyncio.create_task(c.get(LISTING))
            await asyncio.sleep(0.5)
            assert not waiting.done()
            projects = await asyncio.wait_for(c.get(f"{API}/projects"), 10)
            assert [p["name"] for p in projects.json()] == ["vision"]
            ctx.read_slots.release_on_behalf_of(readers.pop())
            assert (await asyncio.wait_for(waiting, 10)).status_code == 200
            for reader in readers:
                ctx.read_slots.release_on_behalf_of(reader)

    try:
        asyncio.run(scenario())
    finally:
        ctx.engine.dispose()
