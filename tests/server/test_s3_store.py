"""A server whose blobs live in an S3-compatible object store (SeaweedFS on loopback,
tests/s3.py): checkpoints go through it and come back verified, a store that cannot work stops
the server at start with what to fix, and a store that goes down answers 503 with Retry-After
and touches nothing, until it is back."""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from lmvp._http import HTTP
from lmvp.cache import Cache
from lmvp.transfer import upload_file
from lmvp_server.s3 import S3Location
from lmvp_server.s3_store import S3BlobStore
from tests.s3 import (
    BUCKET,
    SeaweedFS,
    s3_server,
    start_seaweedfs,
)
from tests.support import (
    ADMIN_PASSWORD,
    Api,
    Deployment,
    ServerProcess,
    sha256_bytes,
    sha256_file,
    tus_create,
    tus_patch_headers,
    unique,
    write_random_file,
)

MiB = 1024 * 1024


def _deployment(server: ServerProcess) -> Deployment:
    server.start()
    return Deployment(server=server, admin=Api(server.url).login("admin", ADMIN_PASSWORD))


@pytest.fixture
def own_store() -> Iterator[SeaweedFS]:
    """A store of this test's own, which it may stop and start again."""
    store = start_seaweedfs()
    store.make_bucket()
    yield store
    store.remove()


def _blob_key(server: ServerProcess, sha256: str) -> str:
    location = S3Location.parse(server.extra_env["LMVP_BLOB_STORE"])
    return location.key("blobs", sha256[:2], sha256[2:4], sha256)


# One PUT, and a multipart upload (from 64 MiB) read back across its parts.
@pytest.mark.parametrize("size", [5, 70 * MiB + 7], ids=["tiny", "multipart"])
def test_checkpoint_round_trip_through_a_server_on_s3(
    make_server: Callable[[str], ServerProcess], seaweedfs: SeaweedFS, size: int
) -> None:
    server = s3_server(make_server, seaweedfs)
    deployment = _deployment(server)
    try:
        owner = deployment.user("s3")
        project = deployment.project(owner)
        data = hashlib.sha512(str(size).encode()).digest() * (size // 64 + 1)
        data = data[:size]
        r = deployment.commit(owner, project, "net", {"model.bin": data})
        assert r.status_code == 201, r.text
        digest = sha256_bytes(data)

        # The bytes are in the bucket under the server's prefix, and not on its disk.
        assert seaweedfs.objects(prefix=_blob_key(server, digest)) == {
            _blob_key(server, digest): size
        }
        assert not [p for p in (server.data_dir / "blobs").rglob(digest)]

        whole = owner.get(f"/projects/{project}/blobs/{digest}")
        assert whole.status_code == 200 and whole.headers["ETag"] == f'"{digest}"'
        assert sha256_bytes(whole.content) == digest
        part = owner.get(f"/projects/{project}/blobs/{digest}", headers={"Range": "bytes=2-"})
        assert part.status_code == 206 and part.content == data[2:]
        assert part.headers["Content-Range"] == f"bytes 2-{size - 1}/{size}"
    finally:
        server.stop()


def test_bad_credentials_stop_the_server_at_start_saying_which(
    make_server: Callable[[str], ServerProcess], seaweedfs: SeaweedFS
) -> None:
    server = s3_server(make_server, seaweedfs, AWS_SECRET_ACCESS_KEY="not-the-secret")
    with pytest.raises(RuntimeError, match="server exited at start") as failed:
        server.start()
    assert "refused the server's credentials" in str(failed.value)
    assert "check AWS_SECRET_ACCESS_KEY" in str(failed.value)

    server = s3_server(make_server, seaweedfs, AWS_ACCESS_KEY_ID="unknown-key")
    result = server.cli("serve", "--port", str(server.port))
    assert result.returncode == 2
    assert "AWS_ACCESS_KEY_ID" in result.stderr and "Traceback" not in result.stderr


def test_missing_bucket_is_a_clear_error_unless_the_server_may_create_it(
    make_server: Callable[[str], ServerProcess], seaweedfs: SeaweedFS
) -> None:
    bucket = unique("no-such-bucket").lower()
    server = s3_server(make_server, seaweedfs, bucket=bucket)
    result = server.cli("serve", "--port", str(server.port))
    assert result.returncode == 2
    assert f"bucket {bucket!r}" in result.stderr and "does not exist" in result.stderr
    assert "LMVP_S3_CREATE_BUCKET=1" in result.stderr
    assert bucket not in {b["Name"] for b in seaweedfs.client().list_buckets()["Buckets"]}

    server.extra_env["LMVP_S3_CREATE_BUCKET"] = "1"
    deployment = _deployment(server)
    try:
        owner = deployment.user("s3")
        project = deployment.project(owner)
        assert deployment.commit(owner, project, "net", {"a.bin": b"bytes"}).status_code == 201
        assert seaweedfs.objects(bucket=bucket)
    finally:
        server.stop()


def _once_the_store_serves(get: Callable[[], requests.Response]) -> requests.Response:
    """`get` again while the server answers 503 store_unavailable (for up to 30 s), honouring
    its Retry-After as a client does, but in steps of half a second."""
    deadline = time.monotonic() + 30
    while True:
        answer = get()
        if answer.status_code != 503 or time.monotonic() > deadline:
            return answer
        assert answer.json()["error"]["code"] == "store_unavailable"
        assert int(answer.headers["Retry-After"]) > 0
        time.sleep(0.5)


def test_store_down_mid_download_answers_503_and_the_server_recovers(
    make_server: Callable[[str], ServerProcess], own_store: SeaweedFS
) -> None:
    server = s3_server(make_server, own_store)
    deployment = _deployment(server)
    try:
        owner = deployment.user("s3")
        project = deployment.project(owner)
        data = hashlib.sha512(b"down").digest() * (32 * MiB // 64)
        assert deployment.commit(owner, project, "net", {"m.bin": data}).status_code == 201
        digest = sha256_bytes(data)
        url = f"{server.url}/api/v1/projects/{project}/blobs/{digest}"
        auth = {"Authorization": f"Bearer {owner.token}"}

        with requests.get(url, headers=auth, stream=True, timeout=30) as streaming:
            assert streaming.status_code == 200
            received = streaming.raw.read(MiB)
            own_store.stop()
            with pytest.raises(requests.exceptions.ChunkedEncodingError):
                for chunk in streaming.iter_content(MiB):
                    received += chunk
        assert len(received) < len(data)  # cut, never passed off as whole

        refused = requests.get(url, headers=auth, timeout=60)
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["Retry-After"]) > 0
        assert refused.json()["error"]["code"] == "store_unavailable"
        assert "try again" in refused.json()["error"]["message"]
        # Metadata does not need the store.
        assert owner.get(f"/projects/{project}/models/net/versions/latest").status_code == 200

        own_store.start()
        # A store that has just started may answer before it serves its data: the server says
        # 503 with Retry-After until it does (never a 200 cut at byte 0), as a client is told.
        back = _once_the_store_serves(lambda: requests.get(url, headers=auth, timeout=60))
        assert back.status_code == 200 and sha256_bytes(back.content) == digest
    finally:
        server.stop()


def test_store_down_when_an_upload_completes_answers_503_and_the_upload_is_kept(
    make_server: Callable[[str], ServerProcess], own_store: SeaweedFS
) -> None:
    server = s3_server(make_server, own_store)
    deployment = _deployment(server)
    try:
        owner = deployment.user("s3")
        project = deployment.project(owner)
        kept = hashlib.sha512(b"kept").digest() * 1024
        assert deployment.commit(owner, project, "kept", {"k.bin": kept}).status_code == 201

        data = hashlib.sha512(b"adopt").digest() * (4 * MiB // 64)
        digest = sha256_bytes(data)
        location = tus_create(owner, project, digest, len(data))
        half = len(data) // 2
        r = owner.http.patch(location, data=data[:half], headers=tus_patch_headers(0))
        assert r.status_code == 204, r.text

        own_store.stop()
        r = owner.http.patch(location, data=data[half:], headers=tus_patch_headers(half))
        assert r.status_code == 503, r.text
        assert int(r.headers["Retry-After"]) > 0

        own_store.start()
        # The store holds what it held; the upload goes on from where the server says.
        held = _once_the_store_serves(
            lambda: owner.get(f"/projects/{project}/blobs/{sha256_bytes(kept)}")
        )
        assert held.status_code == 200 and held.content == kept
        head = owner.http.head(location, headers={"Tus-Resumable": "1.0.0"})
        offset = int(head.headers["Upload-Offset"])
        # All bytes had arrived: the HEAD stores them now that the store is back. Else the
        # client sends the rest.
        if offset < len(data):
            r = owner.http.patch(location, data=data[offset:], headers=tus_patch_headers(offset))
            assert r.status_code == 204, r.text
        missing = owner.post(f"/projects/{project}/blobs/missing", json={"sha256": [digest]})
        assert missing.json() == {"missing": []}
        back = owner.get(f"/projects/{project}/blobs/{digest}")
        assert sha256_bytes(back.content) == digest
    finally:
        server.stop()


def test_blobs_are_listed_and_deleted_in_batches(seaweedfs: SeaweedFS) -> None:
    store = S3BlobStore(seaweedfs.client(), S3Location(BUCKET, unique("batch")))
    blobs = [f"blob {i}".encode() for i in range(3)]
    digests = [sha256_bytes(b) for b in blobs]
    for data, digest in zip(blobs, digests):
        store.adopt_stream(io.BytesIO(data), digest)
    # Something else under the prefix is no blob.
    seaweedfs.client().put_object(Bucket=BUCKET, Key=store.location.key("blobs", "x"), Body=b"")

    assert {sha: held.size for sha, held in store.iter_blobs()} == {
        d: len(b) for d, b in zip(digests, blobs)
    }
    store.delete_many([digests[0], digests[2], sha256_bytes(b"never stored")])
    assert [store.holds(d) for d in digests] == [False, True, False]


def test_the_client_waits_out_a_store_outage_on_upload_and_download(
    make_server: Callable[[str], ServerProcess], own_store: SeaweedFS, tmp_path: Path
) -> None:
    server = s3_server(make_server, own_store, LMVP_LOCAL_UPLOADS="0")
    deployment = _deployment(server)
    try:
        owner = deployment.user("s3")
        project = deployment.project(owner)
        http = HTTP(server.url, owner.token)
        src = tmp_path / "ckpt.bin"
        digest = write_random_file(src, 6 * MiB, seed=7)

        def outage(work: Callable[[], object]) -> None:
            """Run `work` with the store down for its first seconds; it must finish."""
            own_store.stop()
            done = ThreadPoolExecutor(1).submit(work)
            time.sleep(3)
            assert not done.done()  # waiting (503, Retry-After), not failed
            own_store.start()
            done.result(timeout=120)

        outage(lambda: upload_file(http, project, src, sha256=digest, size=6 * MiB))
        missing = owner.post(f"/projects/{project}/blobs/missing", json={"sha256": [digest]})
        assert missing.json() == {"missing": []}

        cache = Cache(tmp_path / "cache", server.url)
        outage(lambda: cache.download_blob(http, project, digest, 6 * MiB))
        assert sha256_file(cache.blob_path(digest)) == digest
    finally:
        server.stop()
