"""tus uploads whose requests land on different server processes of one deployment.

Two `lmvp-server serve` processes share one data directory and one database, as the workers of
`serve --workers N` (or several units behind a proxy on one host) do; each test sends one
request to one process and the next to the other, which is what a proxy may do. A PATCH whose
body stopped arriving holds its upload on one process; a HEAD or PATCH on the other asks it to
let go and goes on, and the stalled request ends by itself after the stall time
(`LMVP_UPLOAD_STALL_SECONDS`). Whatever a process acknowledged survives its SIGKILL, the upload
completes on the other with the right sha256, and wrong bytes store nothing.

Takeover is decided by the partial file's lock and the let-go signal in the shared upload
folder, not by the database: SQLite is enough, except for the resume after a cut connection,
which also runs on PostgreSQL (the fleet's database).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from tusclient import client as tus

from tests.server.test_uploads import (
    assert_blob_is_stored,
    assert_error,
    missing,
    open_patch,
    partial_file,
    patch,
    send_file_range,
    send_patch,
    send_patch_then_cut_connection,
    server_offset,
    wait_for,
)
from tests.support import (
    ADMIN_PASSWORD,
    Api,
    Deployment,
    ServerProcess,
    sha256_bytes,
    tus_create,
    write_random_file,
)

MiB = 1024 * 1024
# The stall time of the tests that wait for a stalled PATCH to end by itself.
SHORT_STALL = 3.0
# The stall time of the tests in which the let-go signal must end it long before.
LONG_STALL = 120.0

TwoServers = Callable[[float], tuple[Deployment, Deployment]]


@pytest.fixture
def two_servers(backend: str, make_server: Callable[[str], ServerProcess]) -> Iterator[TwoServers]:
    """Start two server processes on one data directory and database, with the given stall
    time; returns a deployment on each (the same admin, logged in on each)."""
    started: list[ServerProcess] = []

    def start(stall: float) -> tuple[Deployment, Deployment]:
        first = make_server(backend)
        first.extra_env = {"LMVP_UPLOAD_STALL_SECONDS": str(stall)}
        second = ServerProcess(
            data_dir=first.data_dir,
            database_url=first.database_url,
            extra_env=dict(first.extra_env),
        )
        for server in (first, second):
            server.start()
            started.append(server)
        admin = Api(first.url).login("admin", ADMIN_PASSWORD)
        return Deployment(first, admin), Deployment(second, Api(second.url, admin.token))

    yield start
    for server in started:
        server.stop()


def on(deployment: Deployment, api: Api, location: str | None = None) -> tuple[Api, str]:
    """`api`'s token on `deployment`'s server, and `location` as that server's URL."""
    other = Api(deployment.url, api.token)
    if location is None:
        return other, ""
    url = urlsplit(location)
    return other, urlunsplit(url._replace(netloc=urlsplit(deployment.url).netloc))


def stalled_patch(api: Api, location: str, source: Path, *, size: int, send: int) -> socket.socket:
    """A PATCH announcing the rest of `source` from 0, of which only `send` bytes come; the
    connection stays open and silent, as a client whose network died silently leaves it."""
    sock = open_patch(api, location, offset=0, length=size)
    send_file_range(sock, source, 0, send)
    return sock


def answer_of(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """The status line the server answers on `sock`, and how long it took to come."""
    start = time.monotonic()
    sock.settimeout(timeout)
    data = sock.recv(4096)
    return data.split(b"\r\n", 1)[0], time.monotonic() - start


@pytest.mark.backends("sqlite")
def test_a_head_on_another_process_takes_over_a_stalled_patch_at_once(
    two_servers: TwoServers, tmp_path: Path
) -> None:
    first, second = two_servers(LONG_STALL)
    owner = first.user("uploader")
    project = first.project(owner)
    size = 24 * MiB
    source = tmp_path / "model.bin"
    digest = write_random_file(source, size, seed=21)
    location = tus_create(owner, project, digest, size, source.name)
    sock = stalled_patch(owner, location, source, size=size, send=10 * MiB)
    try:
        wait_for(lambda: partial_file(first, location).stat().st_size >= 8 * MiB)
        other, other_location = on(second, owner, location)

        started = time.monotonic()
        offset = server_offset(other, other_location)
        took = time.monotonic() - started

        # Asked across processes, the stalled request let go long before its stall time.
        assert took < 10, took
        assert 8 * MiB <= offset <= 10 * MiB
        status, _ = answer_of(sock, 10)
        assert status.startswith(b"HTTP/1.1 409"), status
        status_code, resent = send_patch(other, other_location, source, offset=offset)
        assert status_code == 204
        assert resent == size - offset
        assert_blob_is_stored(owner, project, digest)
    finally:
        sock.close()


@pytest.mark.backends("sqlite")
def test_a_stalled_patch_ends_by_itself_after_the_stall_time_keeping_its_bytes(
    two_servers: TwoServers, tmp_path: Path
) -> None:
    first, second = two_servers(SHORT_STALL)
    owner = first.user("uploader")
    project = first.project(owner)
    size = 8 * MiB
    source = tmp_path / "model.bin"
    digest = write_random_file(source, size, seed=22)
    location = tus_create(owner, project, digest, size, source.name)
    sock = stalled_patch(owner, location, source, size=size, send=3 * MiB)
    try:
        status, waited = answer_of(sock, SHORT_STALL + 10)

        assert status.startswith(b"HTTP/1.1 408"), status
        assert waited < SHORT_STALL + 5, waited
        # Everything that arrived was kept, and the other process goes on from there.
        other, other_location = on(second, owner, location)
        assert server_offset(other, other_location) == 3 * MiB
        status_code, resent = send_patch(other, other_location, source, offset=3 * MiB)
        assert status_code == 204
        assert resent == size - 3 * MiB
        assert_blob_is_stored(owner, project, digest)
    finally:
        sock.close()


def test_an_upload_cut_on_one_process_resumes_on_another_with_the_right_sha256(
    two_servers: TwoServers, tmp_path: Path
) -> None:
    first, second = two_servers(SHORT_STALL)
    owner = first.user("uploader")
    project = first.project(owner)
    size = 40 * MiB
    source = tmp_path / "model.bin"
    digest = write_random_file(source, size, seed=23)
    location = tus_create(owner, project, digest, size, source.name)

    cut_at = send_patch_then_cut_connection(owner, location, source, offset=0, send=size // 2)

    other, other_location = on(second, owner, location)
    offset = server_offset(other, other_location)
    assert 0 < offset <= cut_at
    status, resent = send_patch(other, other_location, source, offset=offset)
    assert status == 204
    assert resent == size - offset
    assert_blob_is_stored(other, project, digest)
    assert not partial_file(first, location).exists()


@pytest.mark.backends("sqlite")
def test_a_process_killed_mid_upload_loses_nothing_it_acknowledged(
    two_servers: TwoServers, tmp_path: Path
) -> None:
    first, second = two_servers(LONG_STALL)
    owner = first.user("uploader")
    project = first.project(owner)
    size = 32 * MiB
    source = tmp_path / "model.bin"
    digest = write_random_file(source, size, seed=24)
    data = source.read_bytes()
    location = tus_create(owner, project, digest, size, source.name)
    acknowledged = patch(owner, location, 0, data[: 8 * MiB])
    assert acknowledged.status_code == 204, acknowledged.text
    assert acknowledged.headers["Upload-Offset"] == str(8 * MiB)
    sock = open_patch(owner, location, offset=8 * MiB, length=size)
    try:
        send_file_range(sock, source, 8 * MiB, 12 * MiB)
        wait_for(lambda: partial_file(first, location).stat().st_size > 8 * MiB)

        first.server.kill()

        other, other_location = on(second, owner, location)
        started = time.monotonic()
        offset = server_offset(other, other_location)
        assert time.monotonic() - started < 5  # a dead process holds nothing
        assert 8 * MiB < offset <= 20 * MiB
        assert patch(other, other_location, offset, data[offset:]).status_code == 204
        assert_blob_is_stored(other, project, digest)
    finally:
        sock.close()


@pytest.mark.backends("sqlite")
def test_wrong_bytes_sent_to_another_process_store_nothing(
    two_servers: TwoServers, tmp_path: Path
) -> None:
    first, second = two_servers(SHORT_STALL)
    owner = first.user("uploader")
    project = first.project(owner)
    data = os.urandom(6 * MiB)
    wrong = data[: 3 * MiB] + os.urandom(3 * MiB)
    location = tus_create(owner, project, sha256_bytes(data), len(data))
    assert patch(owner, location, 0, data[: 3 * MiB]).status_code == 204

    other, other_location = on(second, owner, location)
    r = patch(other, other_location, 3 * MiB, wrong[3 * MiB :])

    assert_error(r, 460, "checksum_mismatch")
    assert missing(owner, project, sha256_bytes(data), sha256_bytes(wrong)) == [
        sha256_bytes(data),
        sha256_bytes(wrong),
    ]
    assert not partial_file(first, location).exists()
    assert not list((first.server.data_dir / "blobs").rglob(sha256_bytes(wrong)))


@pytest.mark.backends("sqlite")
def test_tuspy_completes_with_its_default_retries_past_a_stalled_patch_on_two_workers(
    make_server: Callable[[str], ServerProcess], tmp_path: Path
) -> None:
    """`serve --workers 2`: the kernel hands each connection to either worker; tuspy (no
    retries by default) asks HEAD and PATCHes wherever it lands, while a stalled PATCH of an
    earlier connection holds the upload in one of them."""
    server = make_server("sqlite")
    server.extra_env = {"LMVP_UPLOAD_STALL_SECONDS": str(LONG_STALL)}
    server.serve_args = ["--workers", "2"]
    server.start()
    try:
        deployment = Deployment(server, Api(server.url).login("admin", ADMIN_PASSWORD))
        owner = deployment.user("uploader")
        project = deployment.project(owner)
        for trial in range(4):
            size = 12 * MiB
            source = tmp_path / f"model-{trial}.bin"
            digest = write_random_file(source, size, seed=30 + trial)
            location = tus_create(owner, project, digest, size, source.name)
            sock = stalled_patch(owner, location, source, size=size, send=6 * MiB)
            try:
                wait_for(lambda: partial_file(deployment, location).stat().st_size >= 4 * MiB)
                started = time.monotonic()
                uploader = tus.TusClient(
                    f"{server.url}/api/v1/uploads",
                    headers={"Authorization": f"Bearer {owner.token}"},
                ).uploader(str(source), url=location, chunk_size=4 * MiB)
                assert 4 * MiB <= uploader.offset <= 6 * MiB
                uploader.upload()
                assert uploader.offset == size
                assert time.monotonic() - started < 20
                assert_blob_is_stored(owner, project, digest)
            finally:
                sock.close()
    finally:
        server.stop()
