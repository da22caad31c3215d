"""Fixtures shared by every test: real servers on SQLite and on PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# The session's S3-compatible store (SeaweedFS), for every test that names `seaweedfs`.
from tests.s3 import seaweedfs  # noqa: F401
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
# Test folders whose tests run one after another on a single pytest-xdist worker. The daemon's
# and the desktop's tests watch folders with inotify, and two tests of tests/daemon lower the
# kernel's per-user inotify limits (root only) for a moment: no other watcher may run then. The
# web tests' Chromium watches files with inotify too. The server and client tests watch nothing
# and share no state beyond their own servers, databases and temporary folders (named per
# process), so they are spread over the workers.
SERIAL_FOLDERS = {"daemon", "desktop", "web"}


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


def need_postgres(postgres: PostgresCluster | None) -> PostgresCluster:
    """The session's PostgreSQL (the `postgres` fixture's value); where it is unavailable, the
    test is skipped, or failed when PostgreSQL is required (LMVP_REQUIRE_POSTGRES, as in CI)."""
    if postgres is None:
        why = "; ".join(_pg_skip_reason)
        if os.environ.get("LMVP_REQUIRE_POSTGRES"):
            pytest.fail(f"PostgreSQL required but unavailable: {why}")
        pytest.skip(f"PostgreSQL unavailable: {why}")
    return postgres


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """pytest-xdist's load-scope scheduling, with every test of SERIAL_FOLDERS in one scope (so
    on one worker, one test after another), tests/fleet in another (one fleet of servers and
    nginx, started once), and every other test a scope of its own. (Its own
    `xdist_group` mark would say the same, but does nothing under pytest 9.2, whose node ids it
    can no longer rename.) Scopes are handed out largest first, so this one starts at once."""
    from xdist.scheduler import LoadScopeScheduling

    class SerialFoldersScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            folder = Path(nodeid.split("::", 1)[0]).parts[1:2]
            if folder == ("fleet",):
                return "fleet"  # one worker starts the fleet (tests/fleet/conftest.py) once
            return "serial folders" if set(folder) & SERIAL_FOLDERS else nodeid

    return SerialFoldersScheduling(config, log)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that uses a server of the `backend` fixture runs on each backend, unless it
    (or its module) is marked `@pytest.mark.backends("sqlite")`. Each module that narrows the
    list says why next to its mark: only tests of what the database itself decides (SQL,
    constraints, concurrent writers, migrations, stored types and times, event ordering,
    metrics storage) need PostgreSQL as well; elsewhere the backends behave the same."""
    if "backend" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("backends")
        backends = list(marker.args) if marker else BACKENDS
        assert set(backends) <= set(BACKENDS), backends
        metafunc.parametrize("backend", backends, indirect=True, scope="session")


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def make_server(
    tmp_path_factory: pytest.TempPathFactory, postgres: PostgresCluster | None
) -> Callable[[str], ServerProcess]:
    """Make (but don't start) a server on a fresh data dir and database of the given backend,
    with an admin user `admin` already created through the real CLI.

    The CLI runs once per backend, on a template database that no server ever opens; each
    server gets a copy of it (SQLite's backup API; PostgreSQL's CREATE DATABASE ... TEMPLATE),
    which saves a Python start-up of `lmvp-server` (about 1.5 s) per server."""
    templates: dict[str, str] = {}

    def database(backend: str, data_dir: Path) -> str:
        """A new database URL for a server in `data_dir`: empty unless a template exists."""
        if backend == "postgres":
            return need_postgres(postgres).new_database(copy_of=templates.get(backend))
        path = data_dir / "lmvp.db"
        if backend in templates:
            template = templates[backend].removeprefix("sqlite:///")
            with (
                contextlib.closing(sqlite3.connect(template)) as source,
                contextlib.closing(sqlite3.connect(path)) as target,
            ):
                source.backup(target)
        return f"sqlite:///{path}"

    def make(backend: str) -> ServerProcess:
        if backend not in templates:
            template_dir = tmp_path_factory.mktemp(f"template-{backend}")
            template = ServerProcess(template_dir, database(backend, template_dir))
            result = template.cli(
                "user",
                "create",
                "admin",
                "--admin",
                "--password-stdin",
                stdin=ADMIN_PASSWORD + "\n",
            )
            assert result.returncode == 0, result.stderr
            templates[backend] = template.database_url
        data_dir = tmp_path_factory.mktemp(f"server-{backend}")
        return ServerProcess(data_dir=data_dir, database_url=database(backend, data_dir))

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
    # Under pytest-xdist the `postgres` fixture runs in the workers, so the reasons are read
    # back from the skip reports too.
    reasons = dict.fromkeys(_pg_skip_reason)
    for report in terminalreporter.stats.get("skipped", []):
        message = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
        if "PostgreSQL unavailable: " in message:
            reasons[message.split("PostgreSQL unavailable: ", 1)[1]] = None
    if reasons:
        terminalreporter.write_sep("!", "PostgreSQL TESTS WERE SKIPPED", red=True, bold=True)
        for reason in reasons:
            terminalreporter.write_line(f"  {reason}", red=True)
