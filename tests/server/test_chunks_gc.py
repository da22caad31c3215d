"""The garbage collector and the storage figures with chunks (issue 17), on real servers of
both databases: a chunk lives while a blob the collector keeps (live, trashed) lists it, or
while it is within the grace period (sent, not yet assembled); chunks shared by two blobs stay
while one is kept; what goes leaves the disk; a dry run says so first; the usage counts the
chunks a project holds and what their frames take.

GC is SQL over several tables, with locks: both databases."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.server.test_chunks import (
    Piece,
    assemble,
    chunk_files,
    pieces_of,
    sample_file,
    send_pack,
)
from tests.server.test_gc import GC_ENV, gc_pass, hard_delete
from tests.support import ADMIN_PASSWORD, Api, Deployment, ServerProcess, sha256_bytes


@pytest.fixture(scope="module")
def no_grace(backend: str, make_server: Callable[[str], ServerProcess]) -> Iterator[Deployment]:
    """A server of this module's own with no grace period: what nothing keeps goes at once."""
    server = make_server(backend)
    server.extra_env.update(GC_ENV)
    server.start()
    yield Deployment(server=server, admin=Api(server.url).login("admin", ADMIN_PASSWORD))
    server.stop()


def commit(d: Deployment, project: str, model: str, pieces: list[Piece]) -> str:
    """Send `pieces`, assemble them and commit the file as a version; returns its sha256."""
    assert send_pack(d.admin, project, b"".join(p.record() for p in pieces)).status_code == 200
    assert assemble(d.admin, project, pieces).status_code == 200
    data = b"".join(p.data for p in pieces)
    if d.admin.get(f"/projects/{project}/models/{model}").status_code == 404:
        assert d.admin.post(f"/projects/{project}/models", json={"name": model}).status_code == 201
    r = d.admin.post(
        f"/projects/{project}/models/{model}/versions",
        json={"files": [{"path": "w.bin", "size": len(data), "sha256": sha256_bytes(data)}]},
    )
    assert r.status_code == 201, r.text
    return sha256_bytes(data)


def test_a_pass_frees_the_chunks_no_kept_blob_lists(no_grace: Deployment) -> None:
    d = no_grace
    project = d.project()
    _, first = sample_file(21)
    # The second checkpoint shares its first two chunks with the first.
    fresh = pieces_of(bytes(range(256)) * 400, [50_000, 52_400])
    second = [*first[:2], *fresh]
    one = commit(d, project, "m", first)
    two = commit(d, project, "m", second)
    stray = pieces_of(b"sent but never assembled" * 100, [2400])[0]
    assert send_pack(d.admin, project, stray.record()).status_code == 200
    every = {p.sha256 for p in [*first, *second, stray]}
    assert set(chunk_files(d)) >= every

    usage = d.admin.get(f"/projects/{project}/usage").json()
    assert usage["chunks"] == len(every)
    assert usage["chunk_bytes"] == sum(
        len(p.frame) for p in {p.sha256: p for p in [*first, *second, stray]}.values()
    )

    # With no grace, the chunk sent but never assembled goes; those of kept blobs stay.
    preview = gc_pass(d, dry_run=True)
    assert (preview["chunks_freed"], preview["chunk_bytes_freed"]) == (1, len(stray.frame))
    assert stray.sha256 in chunk_files(d)  # a dry run changes nothing
    report = gc_pass(d)
    assert (report["chunks_freed"], report["chunk_bytes_freed"]) == (1, len(stray.frame))
    assert report["project_chunks_released"] == 1
    assert set(chunk_files(d)) & every == every - {stray.sha256}

    # Version 1 in the trash keeps its blob, and so its chunks.
    assert d.admin.delete(f"/projects/{project}/models/m/versions/1").status_code == 204
    assert gc_pass(d)["chunks_freed"] == 0
    data_one = b"".join(p.data for p in first)
    assert d.admin.get(f"/projects/{project}/blobs/{one}").content == data_one

    # Purged: the chunks only version 1 listed go; the shared ones stay with version 2.
    hard_delete(d.server, project, "m", [1])
    only_first = {p.sha256 for p in first[2:]}
    report = gc_pass(d)
    assert report["blobs_freed"] == 1
    assert report["chunks_freed"] == len(only_first)
    assert report["chunk_bytes_freed"] == sum(len(p.frame) for p in first[2:])
    assert not set(chunk_files(d)) & only_first
    data_two = b"".join(p.data for p in second)
    assert d.admin.get(f"/projects/{project}/blobs/{two}").content == data_two
    usage = d.admin.get(f"/projects/{project}/usage").json()
    assert usage["chunks"] == len({p.sha256 for p in second})

    # Everything purged: nothing of the project's chunks is left.
    hard_delete(d.server, project, "m", [2])
    gc_pass(d)
    assert not set(chunk_files(d)) & every
    assert d.admin.get(f"/projects/{project}/usage").json()["chunks"] == 0


def test_chunks_within_the_grace_period_stay(deployment: Deployment) -> None:
    """On a server with the default grace period (an hour), a chunk sent but not assembled
    survives a pass: the assembly that follows finds it."""
    project = deployment.project()
    stray = pieces_of(b"awaiting its assembly " * 100, [2200])[0]
    assert send_pack(deployment.admin, project, stray.record()).status_code == 200
    gc_pass(deployment)
    assert stray.sha256 in chunk_files(deployment)
    assert assemble(deployment.admin, project, [stray]).status_code == 200
