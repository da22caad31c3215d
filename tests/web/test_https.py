"""The session cookie over HTTPS: the same app in-process (a real app on a real SQLite file),
asked for pages as `https://`, as it is behind a TLS-terminating proxy that says so."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from lmvp_server.app import create_app
from lmvp_server.models import User
from lmvp_server.security import hash_password
from lmvp_server.settings import Settings
from tests.web.conftest import hidden_field


def test_session_cookie_is_secure_when_the_console_is_served_over_https(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path, initial_admin=False))
    with app.state.context.sessions() as session:
        session.add(User(username="ada", password_hash=hash_password("password-of-ada")))
        session.commit()

    async def log_in() -> tuple[httpx.Response, httpx.Response, int]:
        # No lifespan: it would tune this test process's garbage collector.
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://lmvp.example") as c:
            form = await c.get("/login")
            r = await c.post(
                "/login",
                data={
                    "csrf": hidden_field(form.text, "csrf"),
                    "username": "ada",
                    "password": "password-of-ada",
                },
            )
            return form, r, (await c.get("/")).status_code

    try:
        # In a thread of its own: Playwright's sync API keeps an event loop in this one.
        with ThreadPoolExecutor(1) as pool:
            form, r, home = pool.submit(asyncio.run, log_in()).result()
    finally:
        app.state.context.engine.dispose()
    assert "secure" in form.headers["set-cookie"].lower()
    assert r.status_code == 303
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith("lmvp_session="))
    attributes = {part.strip().lower() for part in cookie.split(";")}
    assert {"secure", "httponly", "samesite=lax"} <= attributes
    assert home == 200  # the Secure cookie is sent back over HTTPS and opens the console
