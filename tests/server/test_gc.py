"""The garbage collector (lmvp_server/gc.py) and storage accounting, on real servers of both
databases, with the local store and with an S3 bucket (SeaweedFS): a pass frees exactly the
bytes no version (live or in the trash) references, measured on disk or in the bucket; blobs
shared by projects stay while one holds them; orphaned bytes go, fresh ones stay (local store);
a dry run says what the pass then does; the usage figures; `lmvp-server gc`; only admins may
run a pass over the API.

GC and accounting are SQL over several tables, with locks: both databases
(see tests/conftest.py `pytest_generate_tests`)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select

import lmvp
from lmvp.types import ModelUsage, Usage
from lmvp_server.models import Blob, Model, Project, ProjectBlob, Version
from tests.s3 import SeaweedFS
from tests.support import (
    ADMIN_PASSWORD,
    Api,
    Deployment,
    ServerProcess,
    server_database,
    sha256_bytes,
)

GC_ENV = {"LMVP_GC_GRACE_SECONDS": "0", "LMVP_GC_INTERVAL": "0", "LMVP_GC_BATCH": "7"}


# `make test` runs each GC test on local + SQLite and on S3 + PostgreSQL: each store and each
# database once (the pass is the same SQL over either store, and the same store calls over
# either database; the other two pairs cost ~60 s of the run). `make stress` sets
# LMVP_GC_FULL_MATRIX for all four pairs.
FULL_MATRIX = bool(os.environ.get("LMVP_GC_FULL_MATRIX"))


def skip_off_the_diagonal(backend: str, store: str) -> None:
    if not FULL_MATRIX and (backend, store) in {("sqlite", "s3"), ("postgres", "local")}:
        pytest.skip("runs in `make stress` (LMVP_GC_FULL_MATRIX=1); make test runs the diagonal")


# Which server keeps its blobs in which store, for `blob_files`.
_BUCKETS: dict[Path, SeaweedFS] = {}


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> str:
    """The blob store of the test's server: the local folder, or a prefix in the session's
    SeaweedFS bucket (tests/s3.py)."""
    return str(request.param)


def gc_server(
    request: pytest.FixtureRequest,
    make_server: Callable[[str], ServerProcess],
    backend: str,
    store: str,
    **env: str,
) -> ServerProcess:
    """A server (made, not started) on `backend` with its blobs in `store`; skips the test,
    before anything is made, for a pair off the diagonal (see `FULL_MATRIX`)."""
    skip_off_the_diagonal(backend, store)
    server = make_server(backend)
    if store == "s3":
        seaweedfs: SeaweedFS = request.getfixturevalue("seaweedfs")
        server.extra_env.update(seaweedfs.server_env())
        _BUCKETS[server.data_dir] = seaweedfs
    server.extra_env.update(env)
    return server


@pytest.fixture
def gc_deployment(
    request: pytest.FixtureRequest,
    backend: str,
    store: str,
    make_server: Callable[[str], ServerProcess],
) -> Iterator[Deployment]:
    """A server of the test's own with no grace period (what nothing references goes at the
    next pass) and small batches (a pass takes several transactions)."""
    server = gc_server(request, make_server, backend, store, **GC_ENV)
    server.start()
    yield Deployment(server=server, admin=Api(server.url).login("admin", ADMIN_PASSWORD))
    server.stop()


def blob_files(server: ServerProcess) -> dict[str, int]:
    """The blobs the server's store holds, on disk or in the bucket: sha256 -> size."""
    bucket = _BUCKETS.get(server.data_dir)
    if bucket is not None:
        prefix = server.extra_env["LMVP_BLOB_STORE"].split("/", 3)[3]
        objects = bucket.objects(prefix=f"{prefix}/blobs/")
        return {
            key.rsplit("/", 1)[1]: size
            for key, size in objects.items()
            if len(key.rsplit("/", 1)[1]) == 64
        }
    root = server.data_dir / "blobs"
    return {
        p.name: p.stat().st_size for p in root.glob("??/??/*") if p.is_file() and len(p.name) == 64
    }


def payload(tag: str, size: int) -> bytes:
    return (tag.encode() * (size // len(tag) + 1))[:size]


def gc_pass(deployment: Deployment, *, dry_run: bool = False) -> dict[str, Any]:
    r = deployment.admin.post("/admin/gc", params={"dry_run": str(dry_run).lower()})
    assert r.status_code == 200, r.text
    report: dict[str, Any] = r.json()
    return report


def hard_delete(server: ServerProcess, project: str, model: str, numbers: list[int]) -> None:
    """Remove version rows for good (what purging the trash does)."""
    with server_database(server) as session:
        model_id = session.scalar(
            select(Model.id).join(Project).where(Project.name == project, Model.name == model)
        )
        session.execute(
            delete(Version).where(Version.model_id == model_id, Version.number.in_(numbers))
        )


def test_a_pass_frees_exactly_what_no_version_references(gc_deployment: Deployment) -> None:
    d, server = gc_deployment, gc_deployment.server
    a, b, c, shared = (
        payload(t, n) for t, n in (("a", 3000), ("b", 5000), ("c", 7000), ("s", 11000))
    )
    p1, p2 = d.project(), d.project()
    for files in ({"a": a, "b": b}, {"b": b, "c": c}, {"s": shared}):
        assert d.commit(d.admin, p1, "m", files).status_code == 201
    assert d.commit(d.admin, p2, "other", {"s": shared}).status_code == 201
    before = blob_files(server)
    assert len(before) == 4

    # Nothing unreferenced yet: a pass frees nothing.
    report = gc_pass(d)
    assert (report["blobs_freed"], report["bytes_freed"]) == (0, 0)

    # A version in the trash keeps its bytes.
    assert d.admin.delete(f"/projects/{p1}/models/m/versions/1").status_code == 204
    assert gc_pass(d)["blobs_freed"] == 0
    assert blob_files(server) == before
    # ... and comes back from either store with every file whole, until it is purged.
    restored = d.admin.post(f"/projects/{p1}/models/m/versions/1/restore")
    assert restored.status_code == 200, restored.text
    for file in restored.json()["files"]:
        body = d.admin.get(f"/projects/{p1}/blobs/{file['sha256']}").content
        assert (len(body), sha256_bytes(body)) == (file["size"], file["sha256"])
    assert d.admin.delete(f"/projects/{p1}/models/m/versions/1").status_code == 204

    # Purged: only `a` goes (`b` is still in version 2).
    hard_delete(server, p1, "m", [1])
    preview = gc_pass(d, dry_run=True)
    assert (preview["blobs_freed"], preview["bytes_freed"]) == (1, len(a))
    assert blob_files(server) == before  # a dry run changes nothing
    report = gc_pass(d)
    assert (report["blobs_freed"], report["bytes_freed"]) == (1, len(a))
    after = blob_files(server)
    assert sum(before.values()) - sum(after.values()) == len(a)

    # The shared blob leaves p1 but stays on disk while p2 holds it.
    hard_delete(server, p1, "m", [2, 3])
    report = gc_pass(d)
    assert (report["blobs_freed"], report["bytes_freed"]) == (2, len(b) + len(c))
    assert report["project_blobs_released"] == 3
    assert sorted(blob_files(server).values()) == [len(shared)]

    # What remains downloads and verifies.
    version = d.admin.get(f"/projects/{p2}/models/other/versions/latest").json()
    (file,) = version["files"]
    assert d.admin.get(f"/projects/{p2}/blobs/{file['sha256']}").content == shared
    # p1 no longer holds what it let go: a commit naming it must upload again.
    r = d.admin.post(
        f"/projects/{p1}/models/m/versions",
        json={"files": [{"path": "a", "size": len(a), "sha256": file["sha256"]}]},
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "missing_blobs"


def test_orphaned_bytes_go_after_the_grace_period_and_fresh_ones_stay(
    backend: str, make_server: Callable[[str], ServerProcess]
) -> None:
    server = make_server(backend)
    server.extra_env.update({**GC_ENV, "LMVP_GC_GRACE_SECONDS": "600"})
    server.start()
    try:
        d = Deployment(server=server, admin=Api(server.url).login("admin", ADMIN_PASSWORD))
        project = d.project()
        assert d.commit(d.admin, project, "m", {"kept": payload("k", 4000)}).status_code == 201
        root = server.data_dir / "blobs"
        old, fresh = "ab" * 32, "cd" * 32
        for name, size in ((old, 1234), (fresh, 4321)):
            path = root / name[:2] / name[2:4] / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x" * size)
        stamp = time.time() - 3600
        os.utime(root / old[:2] / old[2:4] / old, (stamp, stamp))

        report = gc_pass(d)
        assert (report["orphans_removed"], report["blobs_freed"], report["bytes_freed"]) == (
            1,
            1,
            1234,
        )
        files = blob_files(server)
        assert old not in files and fresh in files and len(files) == 2
        with server_database(server) as session:
            assert session.get(Blob, old) is None
    finally:
        server.stop()


def test_usage_per_project_and_model(gc_deployment: Deployment) -> None:
    d = gc_deployment
    project = d.project()
    shared, only_a, only_b = payload("s", 1000), payload("a", 2000), payload("b", 4000)
    assert d.commit(d.admin, project, "a", {"s": shared, "x": only_a}).status_code == 201
    assert d.commit(d.admin, project, "a", {"x": only_a}).status_code == 201
    assert d.commit(d.admin, project, "b", {"s": shared, "y": only_b}).status_code == 201
    r = d.admin.get(f"/projects/{project}/usage")
    assert r.status_code == 200, r.text
    usage = r.json()
    assert (usage["bytes"], usage["blobs"], usage["unreferenced_bytes"]) == (7000, 3, 0)
    assert usage["models"] == [
        {"name": "a", "referenced_bytes": 3000, "exclusive_bytes": 2000},
        {"name": "b", "referenced_bytes": 5000, "exclusive_bytes": 4000},
    ]
    listed = {p["name"]: p["size"] for p in d.admin.get("/projects").json()}
    assert listed[project] == 7000
    # The Python client says the same (the desktop app reads it there).
    with lmvp.Client(d.url, d.admin.token) as client:
        assert client.usage(project) == Usage(
            project, 7000, 3, 0, (ModelUsage("a", 3000, 2000), ModelUsage("b", 5000, 4000))
        )

    # Removing model b frees what its usage said, measured on disk.
    before = sum(blob_files(d.server).values())
    hard_delete(d.server, project, "b", [1])
    assert d.admin.get(f"/projects/{project}/usage").json()["unreferenced_bytes"] == 4000
    assert gc_pass(d)["bytes_freed"] == 4000
    assert before - sum(blob_files(d.server).values()) == 4000
    assert {p["name"]: p["size"] for p in d.admin.get("/projects").json()}[project] == 3000


def test_only_admins_run_a_pass(gc_deployment: Deployment) -> None:
    user = gc_deployment.user()
    r = user.post("/admin/gc")
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"


def test_cli_gc_dry_run_then_pass(gc_deployment: Deployment) -> None:
    d, server = gc_deployment, gc_deployment.server
    project = d.project()
    data = payload("z", 9000)
    assert d.commit(d.admin, project, "m", {"z": data}).status_code == 201
    hard_delete(server, project, "m", [1])
    dry = server.cli("gc", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would free 1 blob(s), 8.8 KiB (9000 bytes)" in dry.stdout
    assert len(blob_files(server)) == 1
    done = server.cli("gc")
    assert done.returncode == 0, done.stderr
    assert "freed 1 blob(s), 8.8 KiB (9000 bytes)" in done.stdout
    assert blob_files(server) == {}
    with server_database(server) as session:
        assert session.scalars(select(ProjectBlob)).all() == []


def test_after_the_trash_period_a_pass_frees_what_the_retention_preview_said(
    request: pytest.FixtureRequest,
    backend: str,
    store: str,
    make_server: Callable[[str], ServerProcess],
) -> None:
    # No trash period, and the fleet's trash job every second: deleted versions are purged at
    # once; the collector then frees their blobs.
    server = gc_server(
        request,
        make_server,
        backend,
        store,
        **GC_ENV,
        LMVP_TRASH_DAYS="0",
        LMVP_RETENTION_INTERVAL_SECONDS="1",
    )
    server.start()
    try:
        d = Deployment(server=server, admin=Api(server.url).login("admin", ADMIN_PASSWORD))
        project = d.project()
        shared = payload("shared", 5000)
        for n in range(1, 7):
            files = {"shared.bin": shared, "own.bin": payload(f"own{n}", 1000 * n)}
            if n % 2:
                files["odd.bin"] = payload("odd", 777)  # also in versions the policy keeps
            assert d.commit(d.admin, project, "m", files).status_code == 201
        base = f"/projects/{project}/models/m/retention"
        r = d.admin.post(f"{base}/preview", json={"keep_latest": 2})
        assert r.status_code == 200, r.text
        preview = r.json()
        removed = sorted(v["number"] for v in preview["remove"])
        assert removed == [1, 2, 3, 4]
        # Versions 1-4 own 1000..4000 bytes each; `shared` and `odd` live on in 5 and 6.
        assert preview["bytes_freed"] == 1000 + 2000 + 3000 + 4000

        before = sum(blob_files(server).values())
        for n in removed:
            assert d.admin.delete(f"/projects/{project}/models/m/versions/{n}").status_code == 204
        deadline = time.monotonic() + 30
        while d.admin.get("/trash", params={"project": project}).json():
            assert time.monotonic() < deadline, "the trash was not purged"
            time.sleep(0.2)

        report = gc_pass(d)
        assert report["bytes_freed"] == preview["bytes_freed"]
        assert before - sum(blob_files(server).values()) == preview["bytes_freed"]
        for n in (5, 6):
            version = d.admin.get(f"/projects/{project}/models/m/versions/{n}").json()
            for f in version["files"]:
                body = d.admin.get(f"/projects/{project}/blobs/{f['sha256']}").content
                assert sha256_bytes(body) == f["sha256"]
    finally:
        server.stop()
