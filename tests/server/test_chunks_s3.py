"""The chunk protocol (issue 17) with the blob store in an S3-compatible bucket (SeaweedFS,
tests/s3.py): frames go to `<prefix>/chunks/ab/cd/<sha256>` as sent, a blob assembled from
them is committed and downloaded whole and by ranges (streamed by the server even with
presigned downloads on: the bucket holds no object of it), fetched back as a pack, and an
object damaged in the bucket is never served as good; the garbage collector deletes the objects
of chunks nothing keeps; `blobs migrate` copies a folder store's frames into a bucket.

The store is what differs from tests/server/test_chunks.py; the database is not: SQLite only."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lmvp import chunk_codec
from lmvp_server.blob_migrate import migrate_blobs
from lmvp_server.s3 import S3Location
from lmvp_server.s3_store import S3BlobStore
from lmvp_server.storage import LocalBlobStore
from tests.s3 import BUCKET, SeaweedFS, s3_server
from tests.server.test_chunks import (
    PACK,
    assemble,
    missing,
    read_pack,
    sample_file,
    send_pack,
)
from tests.server.test_chunks_gc import commit
from tests.server.test_gc import GC_ENV, gc_pass, hard_delete
from tests.support import ADMIN_PASSWORD, Api, Deployment, ServerProcess, sha256_bytes, unique


@pytest.fixture(scope="module")
def s3_deployment(
    make_server: Callable[[str], ServerProcess], seaweedfs: SeaweedFS
) -> Iterator[Deployment]:
    # No grace period and no scheduled passes: what nothing keeps goes at the pass a test runs.
    server = s3_server(make_server, seaweedfs, LMVP_S3_PRESIGN="1", **GC_ENV)
    server.start()
    yield Deployment(server=server, admin=Api(server.url).login("admin", ADMIN_PASSWORD))
    server.stop()


def test_chunks_round_trip_through_a_bucket(
    s3_deployment: Deployment, seaweedfs: SeaweedFS
) -> None:
    deployment = s3_deployment
    prefix = deployment.server.extra_env["LMVP_BLOB_STORE"].split("/", 3)[3]
    owner = deployment.user("s3-chunker")
    project = deployment.project(owner)
    data, pieces = sample_file(11)
    whole = sha256_bytes(data)

    assert missing(owner, project, pieces) == [p.sha256 for p in pieces]
    r = send_pack(owner, project, b"".join(p.record() for p in pieces))
    assert r.status_code == 200, r.text
    assert r.json()["stored"] == len(pieces)
    objects = seaweedfs.objects(prefix=f"{prefix}/chunks/")
    for p in pieces:
        key = f"{prefix}/chunks/{p.sha256[:2]}/{p.sha256[2:4]}/{p.sha256}"
        assert objects[key] == len(p.frame)
    assert not seaweedfs.objects(prefix=f"{prefix}/blobs/")

    assert assemble(owner, project, pieces).status_code == 200
    assert owner.post(f"/projects/{project}/models", json={"name": "m"}).status_code == 201
    r = owner.post(
        f"/projects/{project}/models/m/versions",
        json={"files": [{"path": "w.bin", "size": len(data), "sha256": whole}]},
    )
    assert r.status_code == 201, r.text

    path = f"/projects/{project}/blobs/{whole}"
    r = owner.get(path, allow_redirects=False)
    assert r.status_code == 200  # not a 307 to the bucket: no object holds these bytes
    assert r.content == data
    r = owner.get(path, headers={"Range": "bytes=300000-700000"}, allow_redirects=False)
    assert r.status_code == 206
    assert r.content == data[300000:700001]

    asked = [p.sha256 for p in reversed(pieces)]
    r = owner.post(f"/projects/{project}/chunks/fetch", json={"chunks": asked})
    assert r.status_code == 200
    assert r.headers["Content-Type"] == PACK
    got = read_pack(r.content)
    assert [sha for sha, _, _ in got] == asked
    assert b"".join(chunk_codec.decode(f, expected_length=n) for _, n, f in reversed(got)) == data

    # An object damaged in the bucket: never served as good.
    first = pieces[0]
    key = f"{prefix}/chunks/{first.sha256[:2]}/{first.sha256[2:4]}/{first.sha256}"
    damaged = bytearray(first.frame)
    damaged[-5] ^= 0x10
    seaweedfs.client().put_object(Bucket=BUCKET, Key=key, Body=bytes(damaged))
    r = owner.get(path, allow_redirects=False)
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "chunk_damaged"


def test_a_pass_deletes_the_objects_of_chunks_nothing_keeps(
    s3_deployment: Deployment, seaweedfs: SeaweedFS
) -> None:
    d = s3_deployment
    prefix = d.server.extra_env["LMVP_BLOB_STORE"].split("/", 3)[3]
    project = d.project()
    _, pieces = sample_file(12)
    commit(d, project, "m", pieces)

    def keys() -> set[str]:
        return {k.rsplit("/", 1)[1] for k in seaweedfs.objects(prefix=f"{prefix}/chunks/")}

    mine = {p.sha256 for p in pieces}
    assert gc_pass(d)["chunks_freed"] == 0
    assert mine <= keys()
    hard_delete(d.server, project, "m", [1])
    report = gc_pass(d)
    assert report["chunks_freed"] == len(mine)
    assert report["chunk_bytes_freed"] == sum(len(p.frame) for p in pieces)
    assert not mine & keys()


def test_blobs_migrate_copies_verified_chunk_frames(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    """`lmvp-server blobs migrate` copies the folder store's chunk frames into the bucket too,
    each checked against its name first (a damaged one is named, never copied), and skips
    those the bucket holds on a second run."""
    local = LocalBlobStore(tmp_path / "blobs")
    _, pieces = sample_file(13)
    local.put_chunks([(p.sha256, p.frame) for p in pieces])
    damaged = pieces[1]
    frame = bytearray(damaged.frame)
    frame[-1] ^= 0x01
    (local._chunk_path(damaged.sha256)).write_bytes(bytes(frame))
    target = S3BlobStore(seaweedfs.client(), S3Location(BUCKET, unique("chunk-migrate")))

    report = migrate_blobs(local.root, target, io.StringIO())
    assert report.damaged == [damaged.sha256]
    assert report.chunks_copied == len(pieces) - 1
    for p in pieces:
        if p is not damaged:
            assert target.read_chunk(p.sha256) == p.frame
    assert not target.holds_chunk(damaged.sha256)
    again = migrate_blobs(local.root, target, io.StringIO())
    assert (again.chunks_copied, again.chunks_skipped) == (0, len(pieces) - 1)
