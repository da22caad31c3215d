"""Background work across a fleet: several servers (hosts, workers) on one PostgreSQL database.

The periodic jobs (`lmvp_server.fleet`) run on exactly one process at a time and move to another
when that one dies by SIGKILL; the upload expiry decides from the database, so a host starting
or expiring beside another never deletes the other's upload in progress; and a commit names
only blobs this server's blob store holds, never one it could not serve."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import (
    ADMIN_PASSWORD,
    Api,
    Deployment,
    ServerProcess,
    running,
    sha256_bytes,
    tus_create,
    tus_patch_headers,
)

# What exists only on PostgreSQL: several hosts on one database.
pytestmark = pytest.mark.backends("postgres")

FAST_JOBS = {"LMVP_UPLOAD_EXPIRY_CHECK_SECONDS": "0.2", "LMVP_FLEET_RETRY_SECONDS": "0.3"}
# The application's INFO lines (the fleet's) on top of the tests' usual warning level.
INFO = ["--log-level", "info"]
_RAN = re.compile(r"fleet: background job 'expire-uploads' ran \(pid (\d+),")


def _runs(log: Path, start: int = 0) -> list[int]:
    """The pids that ran the expiry job, in order, in `log` from byte `start` on."""
    with log.open("rb") as f:
        f.seek(start)
        return [int(m.group(1)) for m in _RAN.finditer(f.read().decode(errors="replace"))]


def _size(log: Path) -> int:
    return log.stat().st_size if log.exists() else 0


def _wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _parent(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no parent for {pid}")


def test_background_jobs_run_on_one_process_and_move_on_when_it_is_killed(
    make_server: Callable[[str], ServerProcess],
) -> None:
    first = make_server("postgres")
    first.extra_env.update(FAST_JOBS)
    first.serve_args = INFO
    # Another host on the same database and data dir, itself with two workers.
    second = ServerProcess(
        first.data_dir,
        first.database_url,
        extra_env=dict(FAST_JOBS),
        serve_args=["--workers", "2", *INFO],
    )
    with running(first):
        log = first.data_dir / "server.log"
        assert first.proc is not None
        leader = first.proc.pid
        _wait_for("the first server to run the job", lambda: leader in _runs(log))
        # Two workers importing the app at once take a while on a busy machine.
        second.start(timeout=120)
        try:
            assert second.proc is not None
            mark = _size(log)
            time.sleep(3)  # 15 turns of the job
            ran = _runs(log, mark)
            assert len(ran) >= 3, ran
            assert set(ran) == {leader}, "the job ran on more than one process"

            first.kill()  # SIGKILL: its database session, and the lock with it, end
            mark = _size(log)
            try:
                _wait_for("another process to take over", lambda: bool(_runs(log, mark)), 60)
            except AssertionError as exc:  # CI saw this once: say what the fleet was doing
                raise AssertionError(f"{exc}\n{_fleet_state(first, log, mark)}") from None
            time.sleep(2)
            ran = _runs(log, mark)
            assert len(set(ran)) == 1, f"the job ran on several processes at once: {ran}"
            assert _parent(ran[0]) == second.proc.pid, "the job did not move to a live worker"
        finally:
            second.stop()


def _fleet_state(server: ServerProcess, log: Path, mark: int) -> str:
    """The fleet's lines of the log since `mark`, the live processes, and who holds the leader
    lock and which fleet sessions PostgreSQL sees."""
    from sqlalchemy import create_engine, text

    from lmvp_server.fleet import LEADER_LOCK_KEY, LEADER_NAME

    with log.open("rb") as f:
        f.seek(mark)
        lines = [ln for ln in f.read().decode(errors="replace").splitlines() if "fleet" in ln]
    engine = create_engine(server.database_url)
    try:
        with engine.connect() as conn:
            holders = conn.execute(
                text(
                    "SELECT l.pid, a.application_name, a.state, a.wait_event, a.backend_start "
                    "FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.granted "
                    "AND (l.classid::bigint << 32) | l.objid::bigint = :key"
                ),
                {"key": LEADER_LOCK_KEY},
            ).all()
            sessions = conn.execute(
                text(
                    "SELECT pid, state, backend_start FROM pg_stat_activity "
                    "WHERE application_name = :name"
                ),
                {"name": LEADER_NAME},
            ).all()
            count = conn.scalar(text("SELECT count(*) FROM pg_stat_activity"))
    finally:
        engine.dispose()
    return (
        f"fleet lines since the kill ({len(lines)}):\n"
        + "\n".join(lines[-30:])
        + f"\nleader lock held by: {holders}\nfleet sessions: {sessions}\n"
        f"database sessions in all: {count}"
    )


def _login(server: ServerProcess) -> Api:
    return Api(server.url).login("admin", ADMIN_PASSWORD)


def test_an_upload_in_progress_survives_another_host_starting_and_expiring(
    make_server: Callable[[str], ServerProcess],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # Two hosts on one database, each with its own data dir (its own disk). The second starts
    # first, so that it is the one running the expiry while the first receives an upload.
    first = make_server("postgres")
    first.extra_env.update(FAST_JOBS)
    second = ServerProcess(
        tmp_path_factory.mktemp("second-host"),
        first.database_url,
        extra_env=dict(FAST_JOBS),
        serve_args=INFO,
    )
    data = b"weights " * 100_000
    with running(second), running(first):
        one = Deployment(first, _login(first))
        project = one.project()
        location = tus_create(one.admin, project, sha256_bytes(data), len(data), "model.bin")
        half = len(data) // 2
        r = one.admin.http.patch(location, data=data[:half], headers=tus_patch_headers(0))
        assert r.status_code == 204, r.text

        log = second.data_dir / "server.log"
        mark = _size(log)
        _wait_for("the second host's expiry to run", lambda: len(_runs(log, mark)) >= 3)
        # And the second host starting again beside the upload.
        second.stop()
        second.start()
        mark = _size(log)
        time.sleep(1)

        r = one.admin.http.head(location, headers={"Tus-Resumable": "1.0.0"})
        assert r.status_code == 200, f"the upload in progress is gone: {r.status_code}"
        assert r.headers["Upload-Offset"] == str(half)
        r = one.admin.http.patch(location, data=data[half:], headers=tus_patch_headers(half))
        assert r.status_code == 204, r.text


def test_a_commit_names_only_blobs_this_servers_store_holds(
    make_server: Callable[[str], ServerProcess],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    first = make_server("postgres")
    second = ServerProcess(tmp_path_factory.mktemp("second-host"), first.database_url)
    data = b"checkpoint bytes " * 1000
    digest = sha256_bytes(data)
    with running(first), running(second):
        one = Deployment(first, _login(first))
        two = Deployment(second, _login(second))
        project = one.project()
        assert one.upload(one.admin, project, data) == digest
        model_path = f"/projects/{project}/models"
        assert one.admin.post(model_path, json={"name": "m"}).status_code == 201
        manifest = {"files": [{"path": "model.bin", "size": len(data), "sha256": digest}]}

        # The second host's store lacks the bytes (its own disk): it refuses the commit instead
        # of recording a version it could not serve.
        r = two.admin.post(f"{model_path}/m/versions", json=manifest)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "missing_blobs"
        assert r.json()["error"]["details"]["missing"] == [digest]

        # Uploading them there heals it; then both serve the version's bytes.
        assert two.upload(two.admin, project, data) == digest
        r = two.admin.post(f"{model_path}/m/versions", json=manifest)
        assert r.status_code == 201, r.text
        for api in (one.admin, two.admin):
            r = api.get(f"/projects/{project}/blobs/{digest}")
            assert r.status_code == 200 and r.content == data
