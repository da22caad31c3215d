"""Fixtures shared by every test: real servers on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import (
    ADMIN_PASSWORD,
    Api,
    Deployment,
    PostgresCluster,
    ServerProcess,
    find_pg_bin,
)

BACKENDS = ["sqlite", "postgres"]
_pg_skip_reason: list[str] = []


@pytest.fixture(scope="session", autouse=True)
def _client_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The client's default cache (downloads, remembered hashes) in a temporary folder, never in
    the user's own; tests that need their own cache pass `cache_dir`."""
    saved = os.environ.get("LMVP_CACHE_DIR")
    os.environ["LMVP_CACHE_DIR"] = str(tmp_path_factory.mktemp("lmvp-cache"))
    yield
    if saved is None:
        os.environ.pop("LMVP_CACHE_DIR", None)
    else:
        os.environ["LMVP_CACHE_DIR"] = saved


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster | None]:
    bin_dir = find_pg_bin()
    if bin_dir is None:
        _pg_skip_reason.append("PostgreSQL is not installed (apt-get install postgresql)")
        yield None
        return
    cluster = PostgresCluster(bin_dir)
    try:
        cluster.start()
    except Exception as exc:  # reported loudly at the end of the run
        _pg_skip_reason.append(f"PostgreSQL would not start: {exc}")
        cluster.stop()
        yield None
        return
    yield cluster
    cluster.stop()


@pytest.fixture(params=BACKENDS, scope="session")
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def make_server(
    tmp_path_factory: pytest.TempPathFactory, postgres: PostgresCluster | None
) -> Callable[[str], ServerProcess]:
    """Make (but don't start) a server on a fresh data dir and database of the given backend,
    with an admin user `admin` already created through the real CLI."""

    def make(backend: str) -> ServerProcess:
        data_dir = tmp_path_factory.mktemp(f"server-{backend}")
        if backend == "postgres":
            if postgres is None:
                if os.environ.get("LMVP_REQUIRE_POSTGRES"):
                    pytest.fail(f"PostgreSQL required but unavailable: {_pg_skip_reason}")
                pytest.skip(f"PostgreSQL unavailable: {'; '.join(_pg_skip_reason)}")
            url = postgres.new_database()
        else:
            url = f"sqlite:///{data_dir / 'lmvp.db'}"
        server = ServerProcess(data_dir=Path(data_dir), database_url=url)
        result = server.cli(
            "user", "create", "admin", "--admin", "--password-stdin", stdin=ADMIN_PASSWORD + "\n"
        )
        assert result.returncode == 0, result.stderr
        return server

    return make


@pytest.fixture(scope="session")
def deployment(backend: str, make_server: Callable[[str], ServerProcess]) -> Iterator[Deployment]:
    """One running server per backend, shared by the tests that don't restart it."""
    server = make_server(backend)
    server.start()
    admin = Api(server.url).login("admin", ADMIN_PASSWORD)
    yield Deployment(server=server, admin=admin)
    server.stop()


@pytest.fixture
def fresh_deployment(
    backend: str, make_server: Callable[[str], ServerProcess]
) -> Iterator[Deployment]:
    """A server of the test's own, for tests that kill or restart it."""
    server = make_server(backend)
    server.start()
    admin = Api(server.url).login("admin", ADMIN_PASSWORD)
    yield Deployment(server=server, admin=admin)
    server.stop()


@pytest.fixture(scope="session")
def sqlite_deployment(make_server: Callable[[str], ServerProcess]) -> Iterator[Deployment]:
    """One SQLite server for the client and daemon tests, which make their own users and
    projects; tests that stop or restart a server make their own with `make_server`."""
    server = make_server("sqlite")
    server.start()
    yield Deployment(server=server, admin=Api(server.url).login("admin", ADMIN_PASSWORD))
    server.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _pg_skip_reason:
        terminalreporter.write_sep("!", "PostgreSQL TESTS WERE SKIPPED", red=True, bold=True)
        for reason in _pg_skip_reason:
            terminalreporter.write_line(f"  {reason}", red=True)
