"""Fixtures for the client tests: one real SQLite server for the session, logged in as admin."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lmvp._http import HTTP, RetryPolicy
from tests.support import Api, Deployment, ServerProcess, unique


@pytest.fixture(scope="session")
def client_server(sqlite_deployment: Deployment) -> ServerProcess:
    """The shared real `lmvp-server` process on SQLite."""
    return sqlite_deployment.server


@pytest.fixture(scope="session")
def deployment_sqlite(sqlite_deployment: Deployment) -> Deployment:
    return sqlite_deployment


@pytest.fixture(scope="session")
def token(sqlite_deployment: Deployment) -> str:
    """A token of the server's admin, obtained through the real login endpoint."""
    assert sqlite_deployment.admin.token is not None
    return sqlite_deployment.admin.token


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
