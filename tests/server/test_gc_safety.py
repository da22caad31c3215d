"""The garbage collector never eats a live byte (lmvp_server/gc.py), on real servers of both
databases, with the local store and an S3 bucket (SeaweedFS):

- the race: while passes run back to back, several clients upload and commit versions that
  reuse the blobs that deletions release at the same time, for over 20 s; afterwards every
  committed version that was not deleted downloads and verifies, and every blob a version
  references has its rows and its bytes;
- the crash: a server killed with SIGKILL in the middle of a pass (slowed by the test-only
  LMVP_GC_TEST_PAUSE_SECONDS, which sleeps between a batch's byte deletions and its commit)
  loses nothing referenced, and the next pass frees exactly the rest.

Concurrent writers, row locks and transactions are the database's: both databases."""

from __future__ import annotations

import functools
import hashlib
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from sqlalchemy import delete, select

from lmvp_server.models import Blob, Model, Project, ProjectBlob, Version, VersionFile
from tests.server.test_gc import blob_files, gc_server
from tests.support import (
    ADMIN_PASSWORD,
    Api,
    Deployment,
    ServerProcess,
    server_database,
    sha256_bytes,
)

RACE_SECONDS = 21.0


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> str:
    """The blob store of the test's server (see tests/server/test_gc.py `gc_server`)."""
    return str(request.param)


def payloads(count: int, seed: int) -> list[bytes]:
    """`count` distinct payloads of 1 to 48 KiB."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        size = rng.randint(1024, 48 * 1024)
        block = hashlib.sha512(f"{seed}-{i}".encode()).digest()
        out.append((block * (size // len(block) + 1))[:size])
    return out


@dataclass
class Ledger:
    """What the clients committed and what the deleter removed, shared by the threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    committed: dict[tuple[str, str, int], dict[str, bytes]] = field(default_factory=dict)
    deleted: set[tuple[str, str, int]] = field(default_factory=set)
    refused: int = 0
    errors: list[str] = field(default_factory=list)


def commit_with_retries(
    d: Deployment, api: Api, project: str, model: str, files: dict[str, bytes], ledger: Ledger
) -> None:
    """Ask which blobs are missing, upload them, commit; a commit refused because a pass took
    a blob meanwhile (422 missing_blobs) starts again, as a client does."""
    manifest = [{"path": p, "size": len(b), "sha256": sha256_bytes(b)} for p, b in files.items()]
    by_sha = {m["sha256"]: files[str(m["path"])] for m in manifest}
    for _attempt in range(20):
        r = api.post(f"/projects/{project}/blobs/missing", json={"sha256": list(by_sha)})
        assert r.status_code == 200, r.text
        for sha in r.json()["missing"]:
            d.upload(api, project, by_sha[sha])
        r = api.post(f"/projects/{project}/models/{model}/versions", json={"files": manifest})
        if r.status_code == 201:
            with ledger.lock:
                ledger.committed[(project, model, r.json()["number"])] = files
            return
        assert r.status_code == 422 and r.json()["error"]["code"] == "missing_blobs", r.text
        with ledger.lock:
            ledger.refused += 1
    raise AssertionError(f"no commit to {project}/{model} in 20 attempts")


def referenced_blobs_intact(server: ServerProcess) -> set[str]:
    """Every blob a version references has its project row, its blob row and its bytes;
    returns the referenced hashes."""
    on_disk = blob_files(server)
    with server_database(server) as session:
        rows = session.execute(
            select(Model.project_id, VersionFile.sha256, VersionFile.size)
            .join(Version, Version.id == VersionFile.version_id)
            .join(Model, Model.id == Version.model_id)
        ).all()
        held = {
            (p, s) for p, s in session.execute(select(ProjectBlob.project_id, ProjectBlob.sha256))
        }
        blobs = {s: n for s, n in session.execute(select(Blob.sha256, Blob.size))}
    for project_id, sha, size in rows:
        assert (project_id, sha) in held, f"project {project_id} lost its row of {sha}"
        assert blobs.get(sha) == size, f"blob row of {sha} lost"
        assert on_disk.get(sha) == size, f"bytes of {sha} lost"
    return {sha for _, sha, _ in rows}


def verify_downloads(api: Api, ledger: Ledger) -> int:
    """Every committed, undeleted version downloads with the bytes it was committed with."""
    checked = 0
    for (project, model, number), files in ledger.committed.items():
        if (project, model, number) in ledger.deleted:
            continue
        r = api.get(f"/projects/{project}/models/{model}/versions/{number}")
        assert r.status_code == 200, r.text
        for f in r.json()["files"]:
            body = api.get(f"/projects/{project}/blobs/{f['sha256']}").content
            assert body == files[f["path"]], f"{project}/{model}:{number} {f['path']} differs"
            assert sha256_bytes(body) == f["sha256"]
        checked += 1
    return checked


def hard_delete_one(server: ServerProcess, key: tuple[str, str, int]) -> None:
    project, model, number = key
    with server_database(server) as session:
        model_id = session.scalar(
            select(Model.id).join(Project).where(Project.name == project, Model.name == model)
        )
        session.execute(
            delete(Version).where(Version.model_id == model_id, Version.number == number)
        )


def test_race_commits_reuse_blobs_that_deletions_release_while_passes_run(
    request: pytest.FixtureRequest,
    backend: str,
    store: str,
    make_server: Callable[[str], ServerProcess],
) -> None:
    server = gc_server(request, make_server, backend, store)
    # A grace of 0.3 s: blobs released by deletions are collected at once, while the clients
    # keep committing versions made of the same payloads; some commits find a blob taken between
    # `blobs/missing` and the commit, are refused (422) and upload it again. (With no grace at
    # all, passes back to back could release every upload before its commit: a client would
    # never get through, though nothing would be lost.)
    server.extra_env.update(
        {"LMVP_GC_GRACE_SECONDS": "0.3", "LMVP_GC_INTERVAL": "0", "LMVP_GC_BATCH": "8"}
    )
    server.start()
    try:
        d = Deployment(server=server, admin=Api(server.url).login("admin", ADMIN_PASSWORD))
        p1, p2 = d.project(), d.project()
        pool = payloads(40, seed=7)
        ledger = Ledger()
        stop = threading.Event()
        freed = {"passes": 0, "blobs": 0, "bytes": 0}

        def guarded(work: Callable[[], None]) -> Callable[[], None]:
            def run() -> None:
                try:
                    work()
                except BaseException as exc:
                    ledger.errors.append(f"{type(exc).__name__}: {exc}")
                    stop.set()

            return run

        def client(index: int) -> None:
            api = Api(server.url, d.admin.token)
            rng = random.Random(index)
            project = p2 if index == 3 else p1
            model = f"m{index}"
            assert api.post(f"/projects/{project}/models", json={"name": model}).status_code == 201
            while not stop.is_set():
                chosen = rng.sample(range(len(pool)), rng.randint(1, 2))
                files = {f"f{i}.bin": pool[i] for i in chosen}
                commit_with_retries(d, api, project, model, files, ledger)

        def deleter() -> None:
            rng = random.Random(99)
            while not stop.wait(0.15):
                with ledger.lock:
                    alive = [k for k in ledger.committed if k not in ledger.deleted]
                # Keep a few versions alive; delete the rest as they come.
                for victim in rng.sample(alive, max(0, len(alive) - 3)):
                    hard_delete_one(server, victim)
                    with ledger.lock:
                        ledger.deleted.add(victim)

        def collector() -> None:
            api = Api(server.url, d.admin.token)
            while not stop.is_set():
                r = api.post("/admin/gc")
                assert r.status_code == 200, r.text
                freed["passes"] += 1
                freed["blobs"] += r.json()["blobs_freed"]
                freed["bytes"] += r.json()["bytes_freed"]

        threads = [threading.Thread(target=guarded(functools.partial(client, i))) for i in range(4)]
        threads += [
            threading.Thread(target=guarded(deleter)),
            threading.Thread(target=guarded(collector)),
        ]
        started = time.monotonic()
        for t in threads:
            t.start()
        stop.wait(RACE_SECONDS)
        stop.set()
        for t in threads:
            t.join(60)
        elapsed = time.monotonic() - started
        assert not ledger.errors, ledger.errors
        assert elapsed >= 20

        # It raced: many versions, many deleted, bytes freed by many passes while it ran.
        assert len(ledger.committed) >= 20, ledger
        assert len(ledger.deleted) >= 10, ledger
        assert freed["passes"] >= 10 and freed["blobs"] >= 10, freed

        referenced_blobs_intact(server)
        checked = verify_downloads(d.admin, ledger)
        assert checked == len(ledger.committed) - len(ledger.deleted)

        # Once the grace is over, a last pass leaves exactly the referenced blobs on disk.
        time.sleep(0.5)
        assert d.admin.post("/admin/gc").status_code == 200
        referenced = referenced_blobs_intact(server)
        assert set(blob_files(server)) == referenced
        print(
            f"race ({backend}): {len(ledger.committed)} versions committed, "
            f"{len(ledger.deleted)} deleted, {ledger.refused} commits refused and retried, "
            f"{freed['passes']} passes freed {freed['blobs']} blobs in {elapsed:.1f} s"
        )
    finally:
        server.stop()


def test_sigkill_in_the_middle_of_a_pass_loses_nothing_and_the_next_pass_finishes(
    request: pytest.FixtureRequest,
    backend: str,
    store: str,
    make_server: Callable[[str], ServerProcess],
) -> None:
    server = gc_server(request, make_server, backend, store)
    server.extra_env.update(
        {
            "LMVP_GC_GRACE_SECONDS": "0",
            "LMVP_GC_INTERVAL": "0",
            "LMVP_GC_BATCH": "4",
            # Test-only: each batch sleeps between deleting its bytes and committing.
            "LMVP_GC_TEST_PAUSE_SECONDS": "0.4",
        }
    )
    server.start()
    try:
        d = Deployment(server=server, admin=Api(server.url).login("admin", ADMIN_PASSWORD))
        project = d.project()
        pool = payloads(44, seed=3)
        kept = {"kept-0.bin": pool[0], "kept-1.bin": pool[1], "kept-2.bin": pool[2]}
        assert d.commit(d.admin, project, "m", kept).status_code == 201
        # Nine versions of four blobs each, one of them also in the kept version.
        for v in range(9):
            files = {f"f{i}.bin": pool[3 + v * 4 + i] for i in range(4)}
            files["shared.bin"] = pool[0]
            assert d.commit(d.admin, project, "m", files).status_code == 201
        with server_database(server) as session:
            model_id = session.scalar(
                select(Model.id).join(Project).where(Project.name == project, Model.name == "m")
            )
            session.execute(delete(Version).where(Version.model_id == model_id, Version.number > 1))
        unreferenced = {sha256_bytes(b) for b in pool[3:39]}
        assert len(blob_files(server)) == 39

        result: dict[str, Any] = {}

        def run_pass() -> None:
            try:
                result["response"] = d.admin.post("/admin/gc", timeout=120)
            except requests.ConnectionError as exc:
                result["error"] = exc

        caller = threading.Thread(target=run_pass)
        caller.start()
        deadline = time.monotonic() + 30
        while len(blob_files(server)) > 39 - 6 and time.monotonic() < deadline:
            time.sleep(0.02)
        server.kill()
        caller.join(30)
        assert "response" not in result, "the pass finished before the kill"

        left = blob_files(server)
        assert 3 <= len(left) < 39 - 5  # killed in the middle: some freed, some not
        referenced = referenced_blobs_intact(server)
        assert referenced == {sha256_bytes(b) for b in kept.values()}
        with server_database(server) as session:
            rows = set(session.scalars(select(Blob.sha256)))
        # Rows whose bytes went before the kill stay until the next pass: all unreferenced.
        assert rows - set(left) <= unreferenced

        server.extra_env["LMVP_GC_TEST_PAUSE_SECONDS"] = "0"
        server.start()
        admin = Api(server.url).login("admin", ADMIN_PASSWORD)
        r = admin.post("/admin/gc")
        assert r.status_code == 200, r.text
        assert set(blob_files(server)) == referenced
        with server_database(server) as session:
            assert set(session.scalars(select(Blob.sha256))) == referenced
        version = admin.get(f"/projects/{project}/models/m/versions/1").json()
        for f in version["files"]:
            assert admin.get(f"/projects/{project}/blobs/{f['sha256']}").content == kept[f["path"]]
    finally:
        server.stop()
