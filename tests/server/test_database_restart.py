"""The database restarts (an upgrade, a failover) under a running server on PostgreSQL: the
server keeps no ping before each use of a pooled connection, so the request that meets a
dropped connection gets 503 with Retry-After (nothing changed), every later one works, and the
public client, which retries 503, never notices. While the database is down, 503, never 500."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import text

import lmvp
from lmvp_server.db import make_engine, make_sessionmaker
from lmvp_server.deps import get_session
from tests.conftest import need_postgres
from tests.support import Api, PostgresCluster, ServerProcess, find_pg_bin, running

PASSWORD = "restart-password-1"


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    """A cluster of this test's own: restarting the shared one would hand every other server
    of this test process one 503."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    own = PostgresCluster(bin_dir)
    own.start()
    yield own
    own.stop()


def test_a_database_restart_costs_one_retried_request_and_nothing_else(
    cluster: PostgresCluster, tmp_path: Path
) -> None:
    server = ServerProcess(tmp_path, cluster.new_database())
    made = server.cli("user", "create", "admin", "--admin", "--password-stdin", stdin=PASSWORD)
    assert made.returncode == 0, made.stderr
    with running(server):
        admin = Api(server.url).login("admin", PASSWORD)
        assert admin.post("/projects", json={"name": "p"}).status_code == 201
        for name in ("a", "b", "c"):
            assert admin.post("/projects/p/models", json={"name": name}).status_code == 201

        cluster.restart()
        answers = [admin.get("/projects/p/models") for _ in range(20)]
        statuses = [r.status_code for r in answers]
        # The server holds one worker: the first request meets a dropped connection and the
        # pool replaces all the others.
        assert set(statuses) <= {200, 503} and statuses.count(503) <= 1, statuses
        for r in answers:
            if r.status_code == 503:
                assert r.headers["Retry-After"] == "1"
                assert r.json()["error"]["code"] == "database_unavailable"
        assert [m["name"] for m in answers[-1].json()] == ["a", "b", "c"]

        cluster.restart()
        with lmvp.Client(server.url, admin.token) as client:  # retries the 503
            assert [m.name for m in client.models("p")] == ["a", "b", "c"]

        # Down: a clear 503 that says what happened, not a 500.
        cluster.halt()
        down = admin.get("/projects/p/models")
        assert down.status_code == 503, down.text
        assert "database" in down.json()["error"]["message"]
        assert "Traceback" not in (tmp_path / "server.log").read_text()


def test_a_connection_the_database_drops_as_a_request_ends_is_replaced_without_an_error(
    postgres: PostgresCluster | None, caplog: pytest.LogCaptureFixture
) -> None:
    """The race CI met: the database went down between an endpoint's last query and the end of
    its request, whose answer had already started. Closing the request's session rolled back on
    the dead connection and raised, after the answer, as a traceback in the server's log. Here
    the request's connection is cut in the middle of its transaction, as a restart cuts it."""
    engine = make_engine(need_postgres(postgres).new_database())
    try:
        ctx = SimpleNamespace(sessions=make_sessionmaker(engine))
        request = get_session(ctx)  # type: ignore[arg-type]
        session = next(request)
        pid = session.scalar(text("SELECT pg_backend_pid()"))  # a transaction is open
        with postgres.connect("postgres") as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with (
            caplog.at_level(logging.WARNING, logger="lmvp_server.db"),
            pytest.raises(StopIteration),
        ):
            next(request)  # the request ends: no error escapes
        assert "the database dropped a connection as a session ended" in caplog.text
        # The next request gets a working connection, not the dead one.
        again = get_session(ctx)  # type: ignore[arg-type]
        assert next(again).scalar(text("SELECT pg_backend_pid()")) != pid
        with pytest.raises(StopIteration):
            next(again)
    finally:
        engine.dispose()
