"""Who may read the server's files (audit, issue 12 finding 7).

The audit found `lmvp.db` and its `-wal`/`-shm` created 0644 in a data directory that already
existed as 0755, so another local user read the password hashes. These tests start the real
server under the common umask 022 on such a directory, use it (a first start, a login, an
upload, a version, an unfinished upload), and look at the mode of every file it made.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Api, Deployment, ServerProcess, tus_create, tus_patch_headers, unique

# Written by the test harness (ServerProcess), not by the server.
HARNESS_FILES = {"server.log"}


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The common default umask, under which files are created group/world-readable."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def open_to_others(data_dir: Path) -> list[str]:
    """Every file or folder below `data_dir` that another local user may read or enter."""
    found = []
    for path in data_dir.rglob("*"):
        if path.name in HARNESS_FILES:
            continue
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode & 0o077:
            found.append(f"{path.relative_to(data_dir)} {mode:04o}")
    return sorted(found)


def use_the_server(server: ServerProcess, admin: Api) -> None:
    """A project, a version of two uploaded files, and an upload left half done."""
    deployment = Deployment(server=server, admin=admin)
    project = deployment.project()
    r = deployment.commit(admin, project, "m", {"a.bin": os.urandom(5000), "b.bin": b"b" * 100})
    assert r.status_code == 201, r.text
    location = tus_create(admin, project, "0" * 64, 1000, "partial.bin")
    r = admin.http.patch(location, data=b"x" * 400, headers=tus_patch_headers(0), timeout=30)
    assert r.status_code == 204, r.text


def test_a_first_start_in_an_open_data_dir_makes_only_private_files_and_warns(
    tmp_path: Path, umask_022: None
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    os.chmod(data_dir, 0o755)
    server = ServerProcess(
        data_dir=data_dir,
        database_url=f"sqlite:///{data_dir / 'lmvp.db'}",
        extra_env={"LMVP_INITIAL_ADMIN": "1"},
    )
    server.start()
    try:
        password = (data_dir / "initial-admin-password").read_text().strip()
        admin = Api(server.url).login("admin", password)
        use_the_server(server, admin)
        # The write-ahead log and its index exist while the server runs: SQLite made them.
        assert (data_dir / "lmvp.db-wal").exists() and (data_dir / "lmvp.db-shm").exists()
        assert open_to_others(data_dir) == []
        assert any((data_dir / "blobs").rglob("*")), "the upload made blob files"
    finally:
        server.stop()

    assert server.log_path is not None
    log = server.log_path.read_text()
    assert f"the data directory {data_dir} is open to other users (mode 0755)" in log
    assert f"run `chmod 700 {data_dir}`" in log
    # The server does not change the mode of the directory it was given; it says how.
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o755


def test_files_an_older_server_left_readable_are_closed_at_start(
    tmp_path: Path, umask_022: None
) -> None:
    # A data dir as an older server left it: database, its WAL and the blob folders readable.
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    os.chmod(data_dir, 0o700)
    database = data_dir / "lmvp.db"
    with sqlite3.connect(database) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE left_by_an_older_server (x)")
    (data_dir / "lmvp.db-wal").touch()
    for folder in ("blobs", "blobs/ab", "uploads"):
        (data_dir / folder).mkdir()
    for path in data_dir.rglob("*"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    assert open_to_others(data_dir)

    server = ServerProcess(
        data_dir=data_dir,
        database_url=f"sqlite:///{database}",
        extra_env={"LMVP_INITIAL_ADMIN": "1"},
    )
    server.start()
    try:
        password = (data_dir / "initial-admin-password").read_text().strip()
        use_the_server(server, Api(server.url).login("admin", password))
        # blobs/ab is inside blobs/, now closed: nobody else reaches it.
        assert open_to_others(data_dir) == ["blobs/ab 0755"]
    finally:
        server.stop()
    assert server.log_path is not None
    assert "open to other users" not in server.log_path.read_text()


def test_the_cli_makes_a_private_database_too(tmp_path: Path, umask_022: None) -> None:
    # `lmvp-server user create` on a new data dir is the usual first command of a deployment.
    data_dir = tmp_path / "data"
    server = ServerProcess(data_dir=data_dir, database_url=f"sqlite:///{data_dir / 'lmvp.db'}")
    name = unique("modes")
    result = server.cli("user", "create", name, "--password-stdin", stdin="a password\n")
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert open_to_others(data_dir) == []
