"""Several hosts starting at once on one database: the schema is migrated once, the first admin
is created once and its password written by the one server that made it; and a server with
several workers shows the application's own log lines."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from alembic.script import ScriptDirectory
from sqlalchemy import func, select, text

from lmvp_server.migrate import alembic_config
from lmvp_server.models import User
from lmvp_server.settings import Settings
from tests.conftest import need_postgres
from tests.support import (
    SERVER_MAIN,
    Api,
    PostgresCluster,
    ServerProcess,
    _die_with_parent,
    server_database,
)

HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()


@pytest.fixture
def fresh_postgres(postgres: PostgresCluster | None) -> PostgresCluster:
    return need_postgres(postgres)


def _migrate_together(count: int, data_dir: Path, database_url: str) -> list[int]:
    """Start `count` `lmvp-server migrate` processes at once; their exit codes."""
    env = dict(os.environ, LMVP_DATA_DIR=str(data_dir), LMVP_DATABASE_URL=database_url)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "lmvp_server", "migrate"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(count)
    ]
    codes = []
    for proc in procs:
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, output.decode()
        codes.append(proc.returncode)
    return codes


def _launch(server: ServerProcess, *args: str) -> None:
    """Start `serve` without waiting for it (from this thread: a server started by a thread
    dies with that thread)."""
    server.log_path = server.data_dir / "server.log"
    with server.log_path.open("ab") as log:
        server.proc = subprocess.Popen(
            [sys.executable, str(SERVER_MAIN), "serve", "--port", str(server.port), *args],
            env=server.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )


def _wait_until_up(server: ServerProcess, timeout: float = 60) -> None:
    assert server.proc is not None and server.log_path is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.proc.poll() is None, server.log_path.read_text()
        with contextlib.suppress(requests.ConnectionError):
            if requests.get(f"{server.url}/api/v1/health", timeout=1).ok:
                return
        time.sleep(0.05)
    raise AssertionError(f"no answer in {timeout}s:\n{server.log_path.read_text()}")


def _schema_version(database_url: str, data_dir: Path) -> str | None:
    server = ServerProcess(data_dir=data_dir, database_url=database_url)
    with server_database(server) as session:
        versions = session.execute(text("SELECT version_num FROM alembic_version")).scalars()
        found = list(versions)
    assert len(found) == 1, found
    return found[0]


def test_concurrent_migrations_on_a_fresh_postgres_all_succeed(
    fresh_postgres: PostgresCluster, tmp_path: Path
) -> None:
    # Before the start-up lock, 13 of 24 such processes failed with a UniqueViolation.
    for trial in range(5):
        url = fresh_postgres.new_database()
        data_dir = tmp_path / f"trial-{trial}"
        assert _migrate_together(4, data_dir, url) == [0, 0, 0, 0]
        assert _schema_version(url, data_dir) == HEAD


def test_concurrent_migrations_on_a_fresh_sqlite_all_succeed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lmvp.db'}"
    assert _migrate_together(4, tmp_path, url) == [0, 0, 0, 0]
    assert _schema_version(url, tmp_path) == HEAD


def test_servers_racing_on_a_fresh_database_create_one_admin_and_one_password_file(
    fresh_postgres: PostgresCluster, tmp_path: Path
) -> None:
    url = fresh_postgres.new_database()
    # Three hosts: each its own data dir, one database.
    servers = [
        ServerProcess(
            data_dir=tmp_path / f"host-{i}",
            database_url=url,
            extra_env={"LMVP_INITIAL_ADMIN": "1"},
        )
        for i in range(3)
    ]
    for server in servers:
        server.data_dir.mkdir()
    try:
        for server in servers:
            _launch(server, "--log-level", "warning")
        for server in servers:
            _wait_until_up(server)
        with server_database(servers[0]) as session:
            assert session.scalar(select(func.count()).select_from(User)) == 1
            assert session.scalar(select(User.username)) == "admin"
        files = [s.data_dir / "initial-admin-password" for s in servers]
        written = [f for f in files if f.exists()]
        assert len(written) == 1, written
        password = written[0].read_text().strip()
        # The password in the file logs in, on every server.
        for server in servers:
            assert Api(server.url).login("admin", password).get("/me").ok
        # The servers that did not create the admin print no password, and say where it is.
        for server, file in zip(servers, files, strict=True):
            assert server.log_path is not None
            output = server.log_path.read_text()
            if file.exists():
                assert f"password '{password}'" in output
            else:
                assert "password '" not in output
                assert "created by another server" in output
                assert "initial-admin-password" in output
    finally:
        for server in servers:
            server.stop()


def test_workers_print_the_applications_log_lines(
    fresh_postgres: PostgresCluster, tmp_path: Path
) -> None:
    server = ServerProcess(data_dir=tmp_path, database_url=fresh_postgres.new_database())
    _launch(server, "--workers", "2", "--log-level", "info")
    proc, log_path = server.proc, server.log_path
    assert proc is not None and log_path is not None
    try:
        worker_pids: set[str] = set()
        app_pids: set[str] = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (worker_pids and app_pids & worker_pids):
            assert proc.poll() is None, log_path.read_text()
            output = log_path.read_text()
            worker_pids = set(re.findall(r"Started server process \[(\d+)\]", output))
            app_pids = set(re.findall(r" INFO \[(\d+)\] lmvp_server\.\S+: ", output))
            time.sleep(0.1)
        assert worker_pids, output
        # A line of the application's own logging, written by a worker process.
        assert app_pids & worker_pids, output
        assert str(proc.pid) not in worker_pids
        assert requests.get(f"{server.url}/api/v1/health", timeout=5).ok
    finally:
        server.stop()


@pytest.mark.parametrize("workers", [1, 2, 4, 8, 16, 40])
def test_the_default_pool_of_all_workers_fits_postgres_default_connections(workers: int) -> None:
    size, overflow = Settings(workers=workers).database_pool()
    assert size >= 1
    # The start-up lock's connection too, under PostgreSQL's default max_connections of 100
    # with room for psql and backups.
    assert workers * (size + overflow) + 1 <= 80
    # An operator's sizing wins.
    assert Settings(workers=workers, db_pool_size=3, db_max_overflow=2).database_pool() == (3, 2)
