"""Fixtures for the client tests: one real SQLite server for the session, logged in as admin."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from lmvp._http import HTTP, RetryPolicy
from tests.support import ADMIN_PASSWORD, Api, ServerProcess, unique


@pytest.fixture(scope="session")
def client_server(make_server: Callable[[str], ServerProcess]) -> Iterator[ServerProcess]:
    """A real `lmvp-server` process on SQLite, shared by the client tests."""
    server = make_server("sqlite")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def token(client_server: ServerProcess) -> str:
    """A token of the server's admin, obtained through the real login endpoint."""
    api = Api(client_server.url).login("admin", ADMIN_PASSWORD)
    assert api.token is not None
    return api.token


@pytest.fixture
def api(client_server: ServerProcess, token: str) -> Api:
    """Plain requests to the server, for setting up and checking what the client did."""
    return Api(client_server.url, token)


@pytest.fixture
def http(client_server: ServerProcess, token: str) -> Iterator[HTTP]:
    """The client's HTTP connection to the server, with short backoff so retries stay fast."""
    connection = HTTP(client_server.url, token, retry=RetryPolicy(attempts=5, base=0.05))
    yield connection
    connection.close()


@pytest.fixture
def project(api: Api) -> str:
    """A fresh project owned by the admin."""
    name = unique("client")
    r = api.post("/projects", json={"name": name})
    assert r.status_code == 201, r.text
    return name
