"""Uploads to a server on the same machine: the client hands over the open file on the server's
Unix socket instead of sending its bytes (lmvp/local_upload.py, lmvp_server/local_uploads.py).

What crosses the TCP socket is counted by a relay in front of the real server; the socket's
protocol is driven raw where the client would never misbehave: a stolen or missing token, a
pipe instead of a file, a wrong offset, a client that hangs up half-way.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
import requests

import lmvp
from lmvp import local_upload
from lmvp._http import HTTP
from lmvp.errors import ServerUnavailable
from lmvp.transfer import missing_blobs, upload_unhashed
from lmvp_server.local_uploads import LocalUploads
from tests.client.relay import CountingRelay
from tests.support import (
    Api,
    Deployment,
    ServerProcess,
    sha256_file,
    tus_metadata,
    tus_patch_headers,
    write_random_file,
)

MiB = 1024 * 1024
SLICE = 64 * MiB  # the server's copy slice (lmvp_server.local_uploads._SLICE)


CreateUpload = Callable[[Api, str, int], tuple[str, str]]


@pytest.fixture
def create_upload() -> Iterator[CreateUpload]:
    """Makes tus uploads without a declared hash, returning each one's URL and the socket name
    the server gave (it must give one: the test talks to it from this machine). Uploads left
    unfinished are aborted afterwards: the server is shared with other tests."""
    made: list[tuple[Api, str]] = []

    def create(api: Api, project: str, length: int) -> tuple[str, str]:
        r = api.post(
            "/uploads",
            headers={
                "Tus-Resumable": "1.0.0",
                "Upload-Length": str(length),
                "Upload-Metadata": tus_metadata(project=project, filename="f.bin"),
            },
        )
        assert r.status_code == 201, r.text
        made.append((api, r.headers["Location"]))
        return r.headers["Location"], r.headers[local_upload.HEADER]

    yield create
    for api, url in made:
        api.http.delete(url, headers={"Tus-Resumable": "1.0.0"}, timeout=30)


@contextlib.contextmanager
def channel(name: str) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect("\0" + name)
    try:
        yield sock
    finally:
        sock.close()


def ask(name: str, request: bytes, fds: list[int]) -> list[dict[str, Any]]:
    """Send one raw request and read every answer line until the server closes."""
    with channel(name) as sock:
        socket.send_fds(sock, [request], fds) if fds else sock.sendall(request)
        with sock.makefile("rb") as answers:
            return [json.loads(line) for line in answers]


def line(**fields: object) -> bytes:
    return json.dumps(fields).encode() + b"\n"


def upload_id(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def head_offset(api: Api, url: str) -> int:
    r = api.http.head(urljoin(api.url, url), headers={"Tus-Resumable": "1.0.0"}, timeout=30)
    assert r.status_code == 200, r.text
    return int(r.headers["Upload-Offset"])


def test_update_hands_the_file_over_and_no_file_bytes_cross_the_wire(
    client_server: ServerProcess, token: str, project: str, tmp_path: Path
) -> None:
    src = tmp_path / "model.safetensors"
    digest = write_random_file(src, 48 * MiB + 5, seed=41)
    with CountingRelay(client_server.port, local_uploads=True) as relay:
        client = lmvp.Client(relay.url, token)
        seen: list[int] = []
        version = client.update(f"{project}/local", src, progress=seen.append)
        client.close()
        assert relay.sent < MiB  # the JSON calls and tus headers only
    assert version.files[0].sha256 == digest
    assert sum(seen) == src.stat().st_size  # progress still adds up to the file's size
    fetched = lmvp.Client(client_server.url, token).download(
        f"{project}/local", cache_dir=tmp_path / "cache"
    )
    assert sha256_file(fetched) == digest


def test_without_the_socket_the_same_upload_goes_over_http(
    client_server: ServerProcess, token: str, project: str, tmp_path: Path
) -> None:
    src = tmp_path / "model.bin"
    size = 8 * MiB
    write_random_file(src, size, seed=42)
    with CountingRelay(client_server.port) as relay:  # switches local uploads off
        http = HTTP(relay.url, token)
        digest = upload_unhashed(http, project, src, size=size, state_dir=tmp_path)
        assert relay.sent >= size
    assert digest == sha256_file(src)
    with pytest.raises(local_upload.Unreachable):
        local_upload.append(
            "lmvp-uploads-nobody", "", "x", src, 0, size, print, timeout=5, finish_timeout=5
        )


def test_a_client_that_hangs_up_midway_leaves_a_resumable_upload(
    api: Api, project: str, tmp_path: Path, create_upload: CreateUpload
) -> None:
    src = tmp_path / "big.bin"
    size = 3 * SLICE + 123
    digest = write_random_file(src, size, seed=43)
    url, name = create_upload(api, project, size)
    with channel(name) as sock, src.open("rb") as f:
        request = line(authorization=f"Bearer {api.token}", upload=upload_id(url), offset=0)
        socket.send_fds(sock, [request], [f.fileno()])
        first = json.loads(sock.makefile("rb").readline())
    assert first == {"offset": SLICE}
    # The server notices at its next slice; what it copied stays, whole slices only.
    held = head_offset(api, url)
    assert held in (SLICE, 2 * SLICE)

    # The rest goes over HTTP: the server's hash of the copied part must be right.
    with src.open("rb") as f:
        f.seek(held)
        r = api.http.patch(url, data=f.read(), headers=tus_patch_headers(held), timeout=60)
    assert r.status_code == 204, r.text
    assert r.headers["LMVP-Blob-Sha256"] == digest


def test_an_upload_begun_over_http_is_finished_through_the_socket(
    api: Api, project: str, tmp_path: Path, create_upload: CreateUpload
) -> None:
    src = tmp_path / "half.bin"
    size = 6 * MiB
    digest = write_random_file(src, size, seed=44)
    url, name = create_upload(api, project, size)
    # Not on a page boundary: the server maps what it hashes, from the page the offset is on.
    first_part = src.read_bytes()[: 2 * MiB + 123]
    r = api.http.patch(url, data=first_part, headers=tus_patch_headers(0), timeout=60)
    assert r.status_code == 204, r.text

    with src.open("rb") as f:
        answers = ask(
            name,
            line(
                authorization=f"Bearer {api.token}", upload=upload_id(url), offset=len(first_part)
            ),
            [f.fileno()],
        )
    assert answers[-1] == {"offset": size, "sha256": digest}
    assert missing_blobs(HTTP(api.url, api.token), project, [digest]) == set()


def refused(answers: list[dict[str, Any]]) -> tuple[int, str]:
    assert len(answers) == 1, answers
    error = answers[0]["error"]
    return error["status"], error["code"]


def test_the_socket_checks_the_caller_like_a_patch(
    deployment_sqlite: Deployment,
    api: Api,
    project: str,
    tmp_path: Path,
    create_upload: CreateUpload,
) -> None:
    src = tmp_path / "f.bin"
    size = MiB
    write_random_file(src, size, seed=45)
    url, name = create_upload(api, project, size)
    uid = upload_id(url)

    def send(request: bytes, fd: int | None = None) -> tuple[int, str]:
        if fd is not None:
            return refused(ask(name, request, [fd]))
        with src.open("rb") as f:
            return refused(ask(name, request, [f.fileno()]))

    owner = f"Bearer {api.token}"
    assert send(line(authorization="", upload=uid, offset=0)) == (401, "not_authenticated")
    assert send(line(authorization="Bearer lmvp_" + "x" * 40, upload=uid, offset=0))[0] == 401
    # Another user, even one allowed to write to the project, cannot append to this upload.
    other = deployment_sqlite.user("intruder")
    deployment_sqlite.add_member(project, other, "contributor")
    assert send(line(authorization=f"Bearer {other.token}", upload=uid, offset=0))[0] == 404
    assert send(line(authorization=owner, upload=uid, offset=5))[0] == 409
    assert send(line(authorization=owner, upload="0" * 32, offset=0))[0] == 404
    read_end, write_end = os.pipe()
    try:
        assert send(line(authorization=owner, upload=uid, offset=0), read_end)[0] == 400
    finally:
        os.close(read_end)
        os.close(write_end)
    assert refused(ask(name, line(authorization=owner, upload=uid, offset=0), [])) == (
        400,
        "invalid_local_upload",
    )
    assert send(b"not json\n")[0] == 400
    assert send(line(authorization=owner, upload=uid))[0] == 400
    # None of that touched the upload.
    assert head_offset(api, url) == 0


def test_a_removed_contributor_cannot_go_on_through_the_socket(
    deployment_sqlite: Deployment, project: str, tmp_path: Path, create_upload: CreateUpload
) -> None:
    member = deployment_sqlite.user("leaver")
    deployment_sqlite.add_member(project, member, "contributor")
    src = tmp_path / "f.bin"
    write_random_file(src, MiB, seed=46)
    url, name = create_upload(member, project, MiB)
    r = deployment_sqlite.admin.delete(f"/projects/{project}/members/{member.username}")  # type: ignore[attr-defined]
    assert r.status_code in (200, 204), r.text
    with src.open("rb") as f:
        answers = ask(
            name,
            line(authorization=f"Bearer {member.token}", upload=upload_id(url), offset=0),
            [f.fileno()],
        )
    assert refused(answers)[0] == 404


def test_the_socket_is_named_only_to_clients_on_this_machine() -> None:
    uploads = LocalUploads()
    uploads.name = "lmvp-uploads-test"
    assert uploads.headers_for("127.0.0.1") == {local_upload.HEADER: "lmvp-uploads-test"}
    assert uploads.headers_for("::1") == {local_upload.HEADER: "lmvp-uploads-test"}
    assert uploads.headers_for("192.0.2.7") == {}
    assert uploads.headers_for(None) == {}


def test_a_paused_transfer_stops_the_server_copy(http: HTTP, project: str, tmp_path: Path) -> None:
    from lmvp.throttle import Throttle, TransferPaused

    src = tmp_path / "paused.bin"
    size = 4 * SLICE
    write_random_file(src, size, seed=47)
    http.throttle = Throttle()

    def pause_after_first_slice(n: int) -> None:
        assert http.throttle is not None
        http.throttle.paused = True

    with pytest.raises(TransferPaused):
        upload_unhashed(
            http, project, src, size=size, progress=pause_after_first_slice, state_dir=tmp_path
        )
    state = next(tmp_path.glob("*.json"))
    url = json.loads(state.read_text())["url"]
    held = head_offset(Api(http.server, http.token), url)
    assert 0 < held < size
    # Resumed: only the rest is copied, and the blob is the file.
    http.throttle.paused = False
    resumed: list[int] = []
    digest = upload_unhashed(
        http, project, src, size=size, progress=resumed.append, state_dir=tmp_path
    )
    assert digest == sha256_file(src)
    assert resumed[0] == held  # the held part is reported at once, not sent again


# --- a full disk --------------------------------------------------------------------------------


@pytest.fixture
def small_disk_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server whose data directory is an 40 MiB tmpfs (mounting needs root)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    data = tmp_path / "small-disk"
    data.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=40m,mode=0700", "tmpfs", str(data)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    server = ServerProcess(data_dir=data, database_url=f"sqlite:///{data / 'lmvp.db'}")
    try:
        result = server.cli(
            "user", "create", "admin", "--admin", "--password-stdin", stdin="full-disk-pw\n"
        )
        assert result.returncode == 0, result.stderr
        server.start()
        yield server
    finally:
        server.stop()
        with contextlib.suppress(OSError):  # kept for reading after a failure
            shutil.copy(data / "server.log", tmp_path / "server.log")
        subprocess.run(["umount", "-l", str(data)], check=False)


@pytest.mark.parametrize("path", ["local", "http"])
def test_a_full_disk_refuses_the_upload_and_keeps_what_was_stored(
    small_disk_server: ServerProcess, path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if path == "http":
        monkeypatch.setenv("LMVP_LOCAL_UPLOADS", "0")
    api = Api(small_disk_server.url).login("admin", "full-disk-pw")
    client = lmvp.Client(small_disk_server.url, api.token, retries=2)
    client.create_project("full")
    small = tmp_path / "small.bin"
    small_digest = write_random_file(small, 4 * MiB, seed=48)
    client.update("full/m", small, message="fits")
    big = tmp_path / "big.bin"
    write_random_file(big, 64 * MiB, seed=49)

    with pytest.raises(ServerUnavailable) as caught:
        client.update("full/m", big, message="does not fit")
    assert "disk is full" in str(caught.value) and "free space" in str(caught.value)

    # The version that fitted is intact, and the server still answers.
    history = client.versions("full/m")
    assert [v.message for v in history] == ["fits"]
    got = client.download("full/m", cache_dir=tmp_path / "cache")
    assert sha256_file(got) == small_digest
    # Once space is free again (here: a smaller file), publishing works.
    smaller = tmp_path / "smaller.bin"
    write_random_file(smaller, 2 * MiB, seed=50)
    assert client.update("full/m", smaller, message="fits too").number == 2
    client.close()
    assert requests.get(f"{small_disk_server.url}/api/v1/health", timeout=10).ok
