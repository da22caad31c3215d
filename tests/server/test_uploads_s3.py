"""tus uploads staged in an S3-compatible store (SeaweedFS), continued by any server.

Two `lmvp-server serve` processes share one database and one bucket prefix but not a data
directory, as workers on two hosts would: the bytes of an upload in progress wait in the store
as a multipart upload (`lmvp_server.upload_staging_s3`), so each PATCH may land on either. A
PATCH cut or stalled on one is continued on the other; SIGKILL of the writing process loses
nothing it acknowledged; the blob is stored only under the sha256 of its bytes, also when no
process saw them all; wrong bytes store nothing; expiry aborts the multipart upload; a store
that stops answers 503 and the upload resumes once it is back.

The lease and the parts list live in the database, so the cut-connection resume also runs on
PostgreSQL (the fleet's database); the rest on SQLite.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from tusclient import client as tus

from tests.s3 import SeaweedFS, start_seaweedfs
from tests.server.test_uploads import (
    assert_error,
    missing,
    open_patch,
    patch,
    send_file_range,
    send_patch,
    send_patch_then_cut_connection,
    server_offset,
)
from tests.support import (
    ADMIN_PASSWORD,
    Api,
    Deployment,
    ServerProcess,
    running,
    server_database,
    sha256_bytes,
    tus_create,
    unique,
    write_random_file,
)

MiB = 1024 * 1024
SHORT_STALL = 3.0
LONG_STALL = 120.0
BUCKET = "lmvp-tests"


class Pair:
    """Two servers on one database and one bucket prefix, each with a data dir of its own."""

    def __init__(self, first: Deployment, second: Deployment, store: SeaweedFS, prefix: str):
        self.first = first
        self.second = second
        self.store = store
        self.prefix = prefix

    def staged_objects(self) -> dict[str, int]:
        return self.store.objects(BUCKET, f"{self.prefix}/uploads/")

    def multipart_uploads(self) -> list[str]:
        """The keys of the multipart uploads in progress (at the staging keys, or the blobs'
        own for uploads that declared their sha256)."""
        answer = self.store.client().list_multipart_uploads(Bucket=BUCKET, Prefix=f"{self.prefix}/")
        return [item["Key"] for item in answer.get("Uploads", [])]

    def blob_key(self, digest: str) -> str:
        return f"{self.prefix}/blobs/{digest[:2]}/{digest[2:4]}/{digest}"

    def blob_objects(self) -> dict[str, int]:
        return self.store.objects(BUCKET, f"{self.prefix}/blobs/")


Pairs = Callable[[float], Pair]


@pytest.fixture
def two_servers(
    backend: str,
    make_server: Callable[[str], ServerProcess],
    seaweedfs: SeaweedFS,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Pairs]:
    started: list[ServerProcess] = []

    def start(stall: float) -> Pair:
        prefix = unique("staging")
        env = seaweedfs.server_env(prefix, LMVP_UPLOAD_STALL_SECONDS=str(stall))
        first = make_server(backend)
        first.extra_env = env
        second = ServerProcess(
            data_dir=tmp_path_factory.mktemp("second-host"),
            database_url=first.database_url,
            extra_env=dict(env),
        )
        for server in (first, second):
            server.start()
            started.append(server)
        admin = Api(first.url).login("admin", ADMIN_PASSWORD)
        return Pair(
            Deployment(first, admin),
            Deployment(second, Api(second.url, admin.token)),
            seaweedfs,
            prefix,
        )

    yield start
    for server in started:
        server.stop()


def on(deployment: Deployment, api: Api, location: str) -> tuple[Api, str]:
    """`api`'s token on `deployment`'s server, and `location` as that server's URL."""
    url = urlsplit(location)
    netloc = urlsplit(deployment.url).netloc
    return Api(deployment.url, api.token), urlunsplit(url._replace(netloc=netloc))


def downloaded_sha256(api: Api, project: str, digest: str) -> str:
    h = hashlib.sha256()
    with api.get(f"/projects/{project}/blobs/{digest}", stream=True) as r:
        assert r.status_code == 200, r.text
        for chunk in r.iter_content(MiB):
            h.update(chunk)
    return h.hexdigest()


def assert_stored_and_cleaned(pair: Pair, api: Api, project: str, digest: str) -> None:
    """The project holds the blob, its bytes hash to `digest`, it is in the bucket's blob
    folder, and nothing of the upload is left in the store."""
    assert missing(api, project, digest) == []
    assert downloaded_sha256(api, project, digest) == digest
    assert any(key.endswith(digest) for key in pair.blob_objects())
    assert pair.staged_objects() == {}
    assert pair.multipart_uploads() == []


@pytest.mark.backends("sqlite")
def test_patches_alternating_between_servers_store_the_blob_under_its_sha256(
    two_servers: Pairs, tmp_path: Path
) -> None:
    pair = two_servers(SHORT_STALL)
    owner = pair.first.user("uploader")
    project = pair.first.project(owner)
    size = 45 * MiB + 123
    source = tmp_path / "model.bin"
    digest = write_random_file(source, size, seed=41)
    data = source.read_bytes()
    location = tus_create(owner, project, digest, size, source.name)
    other, other_location = on(pair.second, owner, location)

    # 7 MiB (short of a part: kept as the tail), 20 MiB more on the other server (a part of
    # the tail and new bytes, and a new tail), then the rest back on the first: no server saw
    # every byte, so the last one hashes the completed object from the store.
    cuts = [(owner, location, 0, 7 * MiB), (other, other_location, 7 * MiB, 27 * MiB)]
    cuts.append((owner, location, 27 * MiB, size))
    for api, url, start, end in cuts:
        r = patch(api, url, start, data[start:end])
        assert r.status_code == 204, r.text
        assert int(r.headers["Upload-Offset"]) == end
        if end < size:
            assert server_offset(other, other_location) == end
    assert r.headers["LMVP-Blob-Sha256"] == digest
    assert_stored_and_cleaned(pair, owner, project, digest)
    # Nothing waited on either server's disk.
    for deployment in (pair.first, pair.second):
        assert list((deployment.server.data_dir / "uploads").iterdir()) == []


def test_an_upload_cut_on_one_server_resumes_on_the_other(
    two_servers: Pairs, tmp_path: Path
) -> None:
    pair = two_servers(SHORT_STALL)
    owner = pair.first.user("uploader")
    project = pair.first.project(owner)
    size = 60 * MiB
    source = tmp_path / "model.bin"
    digest = write_random_file(source, size, seed=42)
    location = tus_create(owner, project, digest, size, source.name)

    cut_at = send_patch_then_cut_connection(owner, location, source, offset=0, send=40 * MiB)

    other, other_location = on(pair.second, owner, location)
    offset = server_offset(other, other_location)
    assert 16 * MiB <= offset <= cut_at
    status, resent = send_patch(other, other_location, source, offset=offset)
    assert status == 204
    assert resent == size - offset
    assert_stored_and_cleaned(pair, other, project, digest)


@pytest.mark.backends("sqlite")
def test_a_head_on_the_other_server_takes_over_a_stalled_patch(
    two_servers: Pairs, tmp_path: Path
) -> None:
    pair = two_servers(LONG_STALL)
    owner = pair.first.user("uploader")
    project = pair.first.project(owner)
    size = 40 * MiB
    source = tmp_path / "model.bin"
    digest = write_random_file(source, size, seed=43)
    location = tus_create(owner, project, digest, size, source.name)
    sock = open_patch(owner, location, offset=0, length=size)
    try:
        send_file_range(sock, source, 0, 20 * MiB)
        time.sleep(1)
        other, other_location = on(pair.second, owner, location)

        started = time.monotonic()
        offset = server_offset(other, other_location)

        assert time.monotonic() - started < 10
        assert offset == 20 * MiB  # the part sent and the rest kept as the tail
        sock.settimeout(10)
        assert sock.recv(4096).startswith(b"HTTP/1.1 409 ")
        uploader = tus.TusClient(
            f"{pair.second.url}/api/v1/uploads",
            headers={"Authorization": f"Bearer {owner.token}"},
        ).uploader(str(source), url=other_location, chunk_size=8 * MiB)
        assert uploader.offset == offset
        uploader.upload()
        assert_stored_and_cleaned(pair, owner, project, digest)
    finally:
        sock.close()


@pytest.mark.backends("sqlite")
def test_a_server_killed_mid_upload_loses_nothing_it_acknowledged(
    two_servers: Pairs, tmp_path: Path
) -> None:
    pair = two_servers(SHORT_STALL)
    owner = pair.first.user("uploader")
    project = pair.first.project(owner)
    size = 50 * MiB
    source = tmp_path / "model.bin"
    digest = write_random_file(source, size, seed=44)
    data = source.read_bytes()
    location = tus_create(owner, project, digest, size, source.name)
    acknowledged = patch(owner, location, 0, data[: 10 * MiB])
    assert acknowledged.status_code == 204
    assert acknowledged.headers["Upload-Offset"] == str(10 * MiB)
    sock = open_patch(owner, location, offset=10 * MiB, length=size)
    try:
        send_file_range(sock, source, 10 * MiB, 30 * MiB)
        time.sleep(1)
        pair.first.server.kill()

        other, other_location = on(pair.second, owner, location)
        started = time.monotonic()
        offset = server_offset(other, other_location)
        # The dead writer's lease expires within the stall time and a margin.
        assert time.monotonic() - started < SHORT_STALL + 10
        assert 10 * MiB <= offset <= 40 * MiB
        r = patch(other, other_location, offset, data[offset:])
        assert r.status_code == 204, r.text
        assert r.headers["LMVP-Blob-Sha256"] == digest
        assert_stored_and_cleaned(pair, other, project, digest)
    finally:
        sock.close()


@pytest.mark.backends("sqlite")
def test_wrong_bytes_sent_to_the_other_server_store_nothing(
    two_servers: Pairs, tmp_path: Path
) -> None:
    pair = two_servers(SHORT_STALL)
    owner = pair.first.user("uploader")
    project = pair.first.project(owner)
    data = os.urandom(24 * MiB)
    wrong = data[: 20 * MiB] + os.urandom(4 * MiB)
    location = tus_create(owner, project, sha256_bytes(data), len(data))
    assert patch(owner, location, 0, data[: 20 * MiB]).status_code == 204

    other, other_location = on(pair.second, owner, location)
    r = patch(other, other_location, 20 * MiB, wrong[20 * MiB :])

    assert_error(r, 460, "checksum_mismatch")
    both = [sha256_bytes(data), sha256_bytes(wrong)]
    assert missing(owner, project, *both) == both
    assert pair.blob_objects() == {}
    assert pair.staged_objects() == {}
    assert pair.multipart_uploads() == []


@pytest.mark.backends("sqlite")
def test_an_upload_that_declared_its_sha256_goes_to_the_blob_key_only_once_verified(
    two_servers: Pairs, tmp_path: Path
) -> None:
    pair = two_servers(SHORT_STALL)
    owner = pair.first.user("uploader")
    project = pair.first.project(owner)
    size = 40 * MiB + 5
    source = tmp_path / "model.bin"
    digest = write_random_file(source, size, seed=45)
    data = source.read_bytes()
    location = tus_create(owner, project, digest, size, source.name)
    assert patch(owner, location, 0, data[: 20 * MiB]).status_code == 204

    # The bytes go up as a multipart upload at the blob's own key, which shows nothing yet.
    assert pair.multipart_uploads() == [pair.blob_key(digest)]
    assert pair.blob_objects() == {}
    assert missing(owner, project, digest) == [digest]

    # The other server, which never saw the first 20 MiB, takes over and finishes: it
    # continues the running hash saved with the part, over the tail it reads back.
    other, other_location = on(pair.second, owner, location)
    assert server_offset(other, other_location) == 20 * MiB
    r = patch(other, other_location, 20 * MiB, data[20 * MiB :])

    assert r.status_code == 204, r.text
    assert r.headers["LMVP-Blob-Sha256"] == digest
    assert_stored_and_cleaned(pair, owner, project, digest)
    assert pair.blob_objects() == {pair.blob_key(digest): size}


@pytest.mark.backends("sqlite")
def test_wrong_bytes_on_the_direct_path_leave_no_object_at_the_blob_key(
    two_servers: Pairs,
) -> None:
    pair = two_servers(SHORT_STALL)
    owner = pair.first.user("uploader")
    project = pair.first.project(owner)
    data = os.urandom(37 * MiB)
    wrong = data[:-1] + bytes([data[-1] ^ 1])
    location = tus_create(owner, project, sha256_bytes(data), len(data))

    r = patch(owner, location, 0, wrong)

    assert_error(r, 460, "checksum_mismatch")
    assert pair.blob_objects() == {}
    assert pair.multipart_uploads() == []
    assert pair.staged_objects() == {}
    both = [sha256_bytes(data), sha256_bytes(wrong)]
    assert missing(owner, project, *both) == both


@pytest.mark.backends("sqlite")
def test_wrong_bytes_declared_as_a_stored_blob_leave_it_untouched(two_servers: Pairs) -> None:
    pair = two_servers(SHORT_STALL)
    owner = pair.first.user("uploader")
    project = pair.first.project(owner)
    data = os.urandom(21 * MiB)
    digest = sha256_bytes(data)
    first = tus_create(owner, project, digest, len(data))
    assert patch(owner, first, 0, data).headers["LMVP-Blob-Sha256"] == digest
    stored = pair.blob_objects()
    assert stored == {pair.blob_key(digest): len(data)}

    # Another upload claims the same sha256 with other bytes, its last part on the other
    # server: refused, and the stored blob is the same object with the same bytes.
    wrong = os.urandom(len(data))
    second = tus_create(owner, project, digest, len(wrong))
    assert patch(owner, second, 0, wrong[: 17 * MiB]).status_code == 204
    other, other_location = on(pair.second, owner, second)
    r = patch(other, other_location, 17 * MiB, wrong[17 * MiB :])

    assert_error(r, 460, "checksum_mismatch")
    assert pair.blob_objects() == stored
    assert pair.multipart_uploads() == []
    assert downloaded_sha256(owner, project, digest) == digest


@pytest.mark.backends("sqlite")
def test_an_upload_without_a_declared_sha256_is_stored_under_the_hash_of_its_bytes(
    two_servers: Pairs,
) -> None:
    pair = two_servers(SHORT_STALL)
    owner = pair.first.user("uploader")
    project = pair.first.project(owner)
    data = os.urandom(19 * MiB)
    digest = sha256_bytes(data)
    location = tus_create(owner, project, "", len(data))
    assert patch(owner, location, 0, data[: 18 * MiB]).status_code == 204
    # Not knowing the sha256 yet, it waits at the staging key.
    assert pair.multipart_uploads() == [f"{pair.prefix}/uploads/{location.rsplit('/', 1)[1]}"]

    other, other_location = on(pair.second, owner, location)
    r = patch(other, other_location, 18 * MiB, data[18 * MiB :])

    assert r.status_code == 204, r.text
    assert r.headers["LMVP-Blob-Sha256"] == digest
    assert_stored_and_cleaned(pair, owner, project, digest)


@pytest.mark.backends("sqlite")
def test_an_expired_upload_has_its_multipart_upload_aborted(
    two_servers: Pairs, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lmvp_server.models import Upload
    from lmvp_server.settings import Settings
    from lmvp_server.upload_lifecycle import expire_stale_uploads

    pair = two_servers(SHORT_STALL)
    owner = pair.first.user("uploader")
    project = pair.first.project(owner)
    data = os.urandom(3 * MiB)
    location = tus_create(owner, project, sha256_bytes(data), len(data))
    assert patch(owner, location, 0, data[:MiB]).status_code == 204
    assert len(pair.multipart_uploads()) == 1 and len(pair.staged_objects()) == 1  # the tail
    upload_id = location.rsplit("/", 1)[1]
    with server_database(pair.first.server) as session:
        row = session.get(Upload, upload_id)
        row.updated_at = row.updated_at.replace(year=2000)

    for name, value in pair.first.server.extra_env.items():
        monkeypatch.setenv(name, value)
    with server_database(pair.first.server) as session:
        assert expire_stale_uploads(session, Settings(data_dir=pair.first.server.data_dir)) == 1

    assert pair.multipart_uploads() == []
    assert pair.staged_objects() == {}
    assert owner.http.head(location, headers={"Tus-Resumable": "1.0.0"}).status_code == 404


@pytest.mark.backends("sqlite")
def test_a_store_that_stops_mid_upload_gets_503_and_the_upload_resumes_once_it_is_back(
    backend: str, make_server: Callable[[str], ServerProcess]
) -> None:
    store = start_seaweedfs()
    try:
        store.make_bucket()
        server = make_server(backend)
        server.extra_env = store.server_env(unique("down"))
        with running(server):
            deployment = Deployment(server, Api(server.url).login("admin", ADMIN_PASSWORD))
            owner = deployment.user("uploader")
            project = deployment.project(owner)
            data = os.urandom(40 * MiB)
            location = tus_create(owner, project, sha256_bytes(data), len(data))
            assert patch(owner, location, 0, data[: 20 * MiB]).status_code == 204

            store.stop()
            # Small enough to be sent whole before the answer comes.
            r = patch(owner, location, 20 * MiB, data[20 * MiB : 20 * MiB + 256 * 1024])

            assert_error(r, 503)
            assert int(r.headers["Retry-After"]) > 0
            store.start()
            offset = server_offset(owner, location)
            assert offset == 20 * MiB  # nothing recorded was lost, nothing half-sent counted
            # As a client does: on 503, again after Retry-After (a restarted store may take a
            # moment to serve the objects it holds).
            deadline = time.monotonic() + 60
            while (r := patch(owner, location, offset, data[offset:])).status_code == 503:
                assert time.monotonic() < deadline, r.text
                time.sleep(int(r.headers["Retry-After"]))
            assert r.status_code == 204, r.text
            assert r.headers["LMVP-Blob-Sha256"] == sha256_bytes(data)
            assert downloaded_sha256(owner, project, sha256_bytes(data)) == sha256_bytes(data)
    finally:
        store.remove()


@pytest.mark.backends("sqlite")
def test_a_big_file_the_project_holds_is_not_sent_again_to_an_object_store_server(
    two_servers: Pairs, tmp_path: Path
) -> None:
    """A server whose blobs are in an object store asks clients to hash large files before
    sending them (`LMVP-Hash-First`): an upload that declares its sha256 goes straight to the
    blob's key, where one sent while hashed must be copied inside the store once its hash is
    known. Hashing first also lets the client skip a file the project already holds, which a
    client on the server's machine, sending while hashing, would have sent whole."""
    import lmvp
    from lmvp.publish import SEND_WHILE_HASHING

    pair = two_servers(LONG_STALL)
    owner = pair.first.user("hasher")
    project = pair.first.project(owner)
    answer = owner.post(f"/projects/{project}/blobs/missing", json={"sha256": []})
    assert answer.headers.get("LMVP-Hash-First") == "1"

    first = tmp_path / "first.bin"
    digest = write_random_file(first, SEND_WHILE_HASHING + 5, seed=46)
    copy = tmp_path / "copy.bin"  # the same bytes, under a name the client never hashed
    copy.write_bytes(first.read_bytes())
    with lmvp.Client(pair.first.url, owner.token) as client:
        [sent] = client.send_files(project, [lmvp.LocalFile("a.bin", first, first.stat().st_size)])
        assert sent.sha256 == digest
        assert pair.blob_objects() == {pair.blob_key(digest): first.stat().st_size}
        assert pair.staged_objects() == {}  # it went straight to its blob key

        progress: list[int] = []
        [again] = client.send_files(
            project, [lmvp.LocalFile("b.bin", copy, copy.stat().st_size)], progress=progress.append
        )
    assert again.sha256 == digest
    assert sum(progress) == 0  # hashed, found held, not sent


def test_a_server_with_blobs_in_a_folder_lets_big_files_go_while_they_are_hashed(
    sqlite_deployment: Deployment,
) -> None:
    owner = sqlite_deployment.user("sender")
    project = sqlite_deployment.project(owner)
    answer = owner.post(f"/projects/{project}/blobs/missing", json={"sha256": []})
    assert answer.status_code == 200
    assert "LMVP-Hash-First" not in answer.headers
