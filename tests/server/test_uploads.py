"""tus 1.0 uploads against the real server, on SQLite and PostgreSQL.

An upload resumes at the offset the server holds, after a cut connection and after the server
is killed; only the missing bytes are sent again. Every bad upload gets a 4xx JSON error and
stores nothing. Blobs belong to the project they were uploaded to, and two people uploading the
same bytes at once end up with one blob.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from tusclient import client as tus

from tests.support import (
    ADMIN_PASSWORD,
    Api,
    Deployment,
    ServerProcess,
    running,
    sha256_bytes,
    tus_create,
    tus_metadata,
    tus_patch_headers,
    write_random_file,
)

MiB = 1024 * 1024
BIG = 100 * MiB
TUS = {"Tus-Resumable": "1.0.0"}
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


# --- resuming ------------------------------------------------------------------------------------


def test_resumes_upload_from_server_offset_after_connection_is_cut_half_way(
    deployment: Deployment, tmp_path: Path
) -> None:
    owner = deployment.user("uploader")
    project = deployment.project(owner)
    source = tmp_path / "model.safetensors"
    digest = write_random_file(source, BIG, seed=11)
    location = tus_create(owner, project, digest, BIG, source.name)

    cut_at = send_patch_then_cut_connection(owner, location, source, offset=0, send=BIG // 2)

    offset = server_offset(owner, location)
    assert 0 < offset <= cut_at
    status, resent = send_patch(owner, location, source, offset=offset)
    assert status == 204
    assert resent == BIG - offset
    assert_blob_is_stored(owner, project, digest)


def test_resume_takes_over_from_a_connection_the_server_has_not_seen_drop(
    deployment: Deployment, tmp_path: Path
) -> None:
    # A network that dies silently leaves the server's request waiting for bytes that will never
    # come; the client that resumes on a new connection must not wait for TCP to give up.
    owner = deployment.user("uploader")
    project = deployment.project(owner)
    size = 20 * MiB
    source = tmp_path / "model.safetensors"
    digest = write_random_file(source, size, seed=13)
    location = tus_create(owner, project, digest, size, source.name)
    silent = open_patch(owner, location, offset=0, length=size)
    try:
        send_file_range(silent, source, 0, size // 2)
        wait_for(lambda: partial_file(deployment, location).stat().st_size > 0)

        offset = server_offset(owner, location)
        assert 0 < offset <= size // 2
        status, resent = send_patch(owner, location, source, offset=offset)

        assert status == 204
        assert resent == size - offset
        assert_blob_is_stored(owner, project, digest)
        # The request that was taken over answered on its own connection.
        silent.settimeout(30)
        assert silent.recv(4096).startswith(b"HTTP/1.1 409 ")
    finally:
        silent.close()


@pytest.mark.parametrize("resume_with", ["plain_patch", "tuspy"])
def test_resumes_upload_from_server_offset_after_server_is_killed(
    fresh_deployment: Deployment, tmp_path: Path, resume_with: str
) -> None:
    deployment = fresh_deployment
    owner = deployment.user("uploader")
    project = deployment.project(owner)
    source = tmp_path / "model.safetensors"
    digest = write_random_file(source, BIG, seed=12)
    location = tus_create(owner, project, digest, BIG, source.name)

    # Half the file goes out on a connection that stays open while the server dies under it.
    sock = open_patch(owner, location, offset=0, length=BIG)
    send_file_range(sock, source, 0, BIG // 2)
    wait_for(lambda: partial_file(deployment, location).stat().st_size >= BIG // 4)
    deployment.server.kill()
    sock.close()
    deployment.server.start()

    offset = server_offset(owner, location)
    assert 0 < offset <= BIG // 2
    assert offset == partial_file(deployment, location).stat().st_size
    if resume_with == "tuspy":
        uploader = tus.TusClient(
            f"{deployment.url}/api/v1/uploads", headers={"Authorization": f"Bearer {owner.token}"}
        ).uploader(str(source), url=location, chunk_size=16 * MiB)
        assert uploader.offset == offset  # tuspy asked the server (HEAD) where to go on from
        uploader.upload()
        assert uploader.offset == BIG
    else:
        status, resent = send_patch(owner, location, source, offset=offset)
        assert status == 204
        assert resent == BIG - offset
    assert_blob_is_stored(owner, project, digest)
    assert not partial_file(deployment, location).exists()


def test_upload_whose_last_byte_reached_the_disk_before_a_crash_is_stored_at_the_next_head(
    fresh_deployment: Deployment,
) -> None:
    deployment = fresh_deployment
    owner = deployment.user("uploader")
    project = deployment.project(owner)
    data = os.urandom(MiB)
    location = tus_create(owner, project, sha256_bytes(data), len(data))
    assert patch(owner, location, 0, data[:1000]).status_code == 204
    deployment.server.kill()
    # The crash came after the server wrote the rest, before it recorded the blob.
    with partial_file(deployment, location).open("ab") as f:
        f.write(data[1000:])
    deployment.server.start()

    # A tus client that sees every byte held is done, so HEAD is where the blob gets stored.
    assert server_offset(owner, location) == len(data)
    assert_blob_is_stored(owner, project, sha256_bytes(data))
    assert head(owner, location).status_code == 404


def test_upload_completes_in_several_patches_each_continuing_at_the_last_offset(
    deployment: Deployment,
) -> None:
    owner = deployment.user("uploader")
    project = deployment.project(owner)
    data = os.urandom(3 * MiB + 5)
    location = tus_create(owner, project, sha256_bytes(data), len(data))
    for start in range(0, len(data), MiB):
        r = patch(owner, location, start, data[start : start + MiB])
        assert r.status_code == 204, r.text
        assert int(r.headers["Upload-Offset"]) == min(start + MiB, len(data))
    assert_blob_is_stored(owner, project, sha256_bytes(data))


def test_upload_without_a_declared_sha256_is_stored_under_the_hash_of_its_bytes(
    deployment: Deployment,
) -> None:
    """A client may start sending before it has hashed the file; the last PATCH then tells it
    the stored blob's sha256, which it checks against its own."""
    owner = deployment.user("uploader")
    project = deployment.project(owner)
    data = os.urandom(2 * MiB + 3)
    r = create_upload(owner, len(data), project=project, filename="late.bin")
    assert r.status_code == 201, r.text
    location = r.headers["Location"]

    first = patch(owner, location, 0, data[:MiB])
    assert first.status_code == 204 and "LMVP-Blob-Sha256" not in first.headers
    last = patch(owner, location, MiB, data[MiB:])

    assert last.status_code == 204, last.text
    assert last.headers["LMVP-Blob-Sha256"] == sha256_bytes(data)
    assert_blob_is_stored(owner, project, sha256_bytes(data))
    assert head(owner, location).status_code == 404


def test_tuspy_uploads_a_file_without_declaring_its_sha256(
    deployment: Deployment, tmp_path: Path
) -> None:
    owner = deployment.user("uploader")
    project = deployment.project(owner)
    source = tmp_path / "weights.bin"
    data = os.urandom(3 * MiB)
    source.write_bytes(data)
    tus.TusClient(
        f"{deployment.url}/api/v1/uploads", headers={"Authorization": f"Bearer {owner.token}"}
    ).uploader(str(source), metadata={"project": project}, chunk_size=MiB).upload()
    assert_blob_is_stored(owner, project, sha256_bytes(data))


# --- bad input: each gets a 4xx JSON error and stores nothing ------------------------------------


def test_upload_whose_bytes_do_not_match_declared_sha256_is_discarded(
    deployment: Deployment,
) -> None:
    owner = deployment.user("uploader")
    project = deployment.project(owner)
    declared = sha256_bytes(os.urandom(64))
    data = os.urandom(2 * MiB)
    location = tus_create(owner, project, declared, len(data))

    r = patch(owner, location, 0, data)

    assert_error(r, 460, "checksum_mismatch")
    assert missing(owner, project, declared, sha256_bytes(data)) == [declared, sha256_bytes(data)]
    assert not partial_file(deployment, location).exists()
    assert not blob_file(deployment, sha256_bytes(data)).exists()
    assert head(owner, location).status_code == 404


def test_patch_whose_content_length_goes_past_upload_length_gets_413_and_keeps_offset(
    deployment: Deployment,
) -> None:
    owner = deployment.user("uploader")
    project = deployment.project(owner)
    data = os.urandom(256 * 1024)
    location = tus_create(owner, project, sha256_bytes(data), len(data))
    assert patch(owner, location, 0, data[:1000]).status_code == 204

    r = patch(owner, location, 1000, data[1000:] + b"one byte too many")

    assert_error(r, 413, "past_declared_length")
    assert server_offset(owner, location) == 1000
    assert partial_file(deployment, location).stat().st_size == 1000
    assert patch(owner, location, 1000, data[1000:]).status_code == 204
    assert_blob_is_stored(owner, project, sha256_bytes(data))


def test_chunked_patch_that_overruns_upload_length_gets_413_and_keeps_offset(
    deployment: Deployment,
) -> None:
    owner = deployment.user("uploader")
    project = deployment.project(owner)
    data = os.urandom(MiB)
    location = tus_create(owner, project, sha256_bytes(data), len(data))
    assert patch(owner, location, 0, data[:1000]).status_code == 204

    def overrunning_body() -> object:
        # No Content-Length: the server can only tell once the bytes arrive.
        yield data[1000 : 600 * 1024]
        yield data[600 * 1024 :]
        yield b"x" * 100_000

    r = owner.http.patch(location, data=overrunning_body(), headers=tus_patch_headers(1000))

    assert_error(r, 413, "past_declared_length")
    assert r.request.headers.get("Transfer-Encoding") == "chunked"
    assert server_offset(owner, location) == 1000
    assert partial_file(deployment, location).stat().st_size == 1000
    assert missing(owner, project, sha256_bytes(data)) == [sha256_bytes(data)]
    # The upload is still good for the right bytes, hashed from what the server really kept.
    assert patch(owner, location, 1000, data[1000:]).status_code == 204
    assert_blob_is_stored(owner, project, sha256_bytes(data))


def test_patch_at_wrong_offset_gets_409_with_the_current_offset(deployment: Deployment) -> None:
    owner = deployment.user("uploader")
    project = deployment.project(owner)
    data = os.urandom(10_000)
    location = tus_create(owner, project, sha256_bytes(data), len(data))
    assert patch(owner, location, 0, data[:4000]).status_code == 204

    for wrong in (0, 3999, 4001, 9000):
        r = patch(owner, location, wrong, data[wrong:])
        assert_error(r, 409, "offset_mismatch")
        assert r.headers["Upload-Offset"] == "4000"
    assert server_offset(owner, location) == 4000


@pytest.mark.parametrize(
    "content_type", [None, "application/octet-stream", "text/plain", "multipart/form-data"]
)
def test_patch_with_wrong_content_type_gets_415(
    deployment: Deployment, content_type: str | None
) -> None:
    owner = deployment.user("uploader")
    project = deployment.project(owner)
    data = os.urandom(1000)
    location = tus_create(owner, project, sha256_bytes(data), len(data))
    headers = {**TUS, "Upload-Offset": "0"}
    if content_type:
        headers["Content-Type"] = content_type

    r = owner.http.patch(location, data=data, headers=headers)

    assert_error(r, 415, "unsupported_media_type")
    assert server_offset(owner, location) == 0


@pytest.mark.parametrize("version", [None, "0.2.2", "1.0", ""])
def test_tus_requests_without_tus_resumable_1_0_0_get_412(
    deployment: Deployment, version: str | None
) -> None:
    owner = deployment.user("uploader")
    project = deployment.project(owner)
    data = os.urandom(1000)
    location = tus_create(owner, project, sha256_bytes(data), len(data))
    bad = {} if version is None else {"Tus-Resumable": version}

    create = owner.post(
        "/uploads",
        headers={
            **bad,
            "Upload-Length": "1000",
            "Upload-Metadata": tus_metadata(project=project, sha256=sha256_bytes(data)),
        },
    )
    assert_error(create, 412, "tus_version")
    assert create.headers["Tus-Version"] == "1.0.0"
    append = owner.http.patch(
        location,
        data=data,
        headers={**bad, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
    )
    assert_error(append, 412, "tus_version")
    assert owner.http.head(location, headers=bad).status_code == 412
    assert_error(owner.http.delete(location, headers=bad), 412, "tus_version")
    assert server_offset(owner, location) == 0


# A setting of the server, checked before anything is stored: SQLite is enough. (The test starts
# a server of its own, which made it one of the slowest on PostgreSQL.)
@pytest.mark.backends("sqlite")
def test_upload_longer_than_the_configured_maximum_gets_413(
    backend: str, make_server: Callable[[str], ServerProcess]
) -> None:
    server = make_server(backend)
    server.extra_env = {"LMVP_MAX_UPLOAD_SIZE": "1000"}
    with running(server):
        deployment = Deployment(server, Api(server.url).login("admin", ADMIN_PASSWORD))
        owner = deployment.user("uploader")
        project = deployment.project(owner)
        options = requests.options(f"{server.url}/api/v1/uploads", timeout=30)
        assert options.headers["Tus-Max-Size"] == "1000"

        r = create_upload(owner, 1001, project=project, sha256=sha256_bytes(b"x" * 1001))

        assert_error(r, 413, "too_large")
        assert list((server.data_dir / "uploads").iterdir()) == []
        data = os.urandom(1000)  # the maximum itself is fine
        assert_blob_is_stored(owner, project, deployment.upload(owner, project, data))


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({"Upload-Metadata": "project !!!notbase64, sha256 " + "0" * 8}, "invalid_metadata"),
        ({"Upload-Metadata": "project /w==, sha256 AAAA"}, "invalid_metadata"),  # not UTF-8
        ({"Upload-Metadata": tus_metadata(project="{project}", sha256="abc")}, "invalid_sha256"),
        ({"Upload-Metadata": tus_metadata(sha256=EMPTY_SHA256)}, "missing_project"),
        ({"Upload-Metadata": ""}, "missing_project"),
        ({"Upload-Length": None}, "invalid_header"),
        ({"Upload-Length": "-5"}, "invalid_header"),
        ({"Upload-Length": "ten"}, "invalid_header"),
        ({"Upload-Length": "\u00b2"}, "invalid_header"),  # a digit to str.isdigit(), not to int()
        ({"Upload-Defer-Length": "1"}, "defer_length"),
    ],
    ids=[
        "metadata-not-base64",
        "metadata-not-utf8",
        "short-sha256",
        "no-project",
        "no-metadata",
        "no-length",
        "negative-length",
        "word-length",
        "superscript-length",
        "deferred-length",
    ],
)
def test_malformed_upload_creation_gets_400_and_creates_nothing(
    deployment: Deployment, headers: dict[str, str | None], code: str
) -> None:
    owner = deployment.user("uploader")
    project = deployment.project(owner)
    request = {
        **TUS,
        "Upload-Length": "10",
        "Upload-Metadata": tus_metadata(project=project, sha256=EMPTY_SHA256),
    }
    for name, value in headers.items():
        if value is None:
            del request[name]
        else:
            request[name] = value.replace("{project}", project)
    before = set((deployment.server.data_dir / "uploads").iterdir())

    r = owner.post("/uploads", headers=request)

    assert_error(r, 400, code)
    assert "Location" not in r.headers
    assert set((deployment.server.data_dir / "uploads").iterdir()) <= before


def test_terminated_upload_is_gone_with_its_partial_file(deployment: Deployment) -> None:
    owner = deployment.user("uploader")
    project = deployment.project(owner)
    data = os.urandom(100_000)
    location = tus_create(owner, project, sha256_bytes(data), len(data))
    assert patch(owner, location, 0, data[:50_000]).status_code == 204
    assert partial_file(deployment, location).stat().st_size == 50_000

    r = owner.http.delete(location, headers=TUS)

    assert r.status_code == 204
    assert head(owner, location).status_code == 404
    assert not partial_file(deployment, location).exists()
    assert_error(patch(owner, location, 50_000, data[50_000:]), 404, "not_found")
    assert_error(owner.http.delete(location, headers=TUS), 404, "not_found")
    assert missing(owner, project, sha256_bytes(data)) == [sha256_bytes(data)]


def test_truncated_upload_never_becomes_a_blob(deployment: Deployment) -> None:
    owner = deployment.user("uploader")
    project = deployment.project(owner)
    data = os.urandom(100_000)
    digest = sha256_bytes(data)
    location = tus_create(owner, project, digest, len(data))

    # Every byte but the last arrives, then the client goes away for good.
    assert patch(owner, location, 0, data[:-1]).status_code == 204

    assert server_offset(owner, location) == len(data) - 1
    assert missing(owner, project, digest) == [digest]
    assert not blob_file(deployment, digest).exists()
    assert owner.post(f"/projects/{project}/models", json={"name": "m"}).status_code == 201
    r = owner.post(
        f"/projects/{project}/models/m/versions",
        json={"files": [{"path": "m.bin", "size": len(data), "sha256": digest}]},
    )
    assert_error(r, 422, "missing_blobs")
    assert r.json()["error"]["details"]["missing"] == [digest]


def test_another_users_upload_is_not_found(deployment: Deployment) -> None:
    owner = deployment.user("uploader")
    project = deployment.project(owner)
    teammate = deployment.user("teammate")
    deployment.add_member(project, teammate, "owner")
    data = os.urandom(1000)
    location = tus_create(owner, project, sha256_bytes(data), len(data))

    assert head(teammate, location).status_code == 404
    assert_error(patch(teammate, location, 0, data), 404, "not_found")
    assert_error(teammate.http.delete(location, headers=TUS), 404, "not_found")
    assert server_offset(owner, location) == 0
    assert partial_file(deployment, location).exists()


def test_unknown_upload_id_is_not_found(deployment: Deployment) -> None:
    owner = deployment.user("uploader")
    for upload_id in ("0" * 32, "nope", "../../lmvp.db"):
        location = f"{deployment.url}/api/v1/uploads/{upload_id}"
        assert head(owner, location).status_code == 404
        assert_error(patch(owner, location, 0, b"abc"), 404)


@pytest.mark.parametrize(("role", "status"), [("viewer", 403), (None, 404)])
def test_viewer_and_non_member_cannot_create_an_upload(
    deployment: Deployment, role: str | None, status: int
) -> None:
    project = deployment.project()
    someone = deployment.user("someone")
    if role:
        deployment.add_member(project, someone, role)
    before = set((deployment.server.data_dir / "uploads").iterdir())

    r = create_upload(someone, 10, project=project, sha256=EMPTY_SHA256)

    assert_error(r, status)
    assert set((deployment.server.data_dir / "uploads").iterdir()) <= before


def test_contributor_who_lost_the_role_cannot_continue_an_upload(deployment: Deployment) -> None:
    project = deployment.project()
    contributor = deployment.user("contributor")
    deployment.add_member(project, contributor, "contributor")
    data = os.urandom(1000)
    location = tus_create(contributor, project, sha256_bytes(data), len(data))
    deployment.add_member(project, contributor, "viewer")

    assert_error(patch(contributor, location, 0, data), 403, "forbidden")
    assert server_offset(contributor, location) == 0


def test_read_only_token_cannot_create_or_append_to_an_upload(deployment: Deployment) -> None:
    owner = deployment.user("uploader")
    project = deployment.project(owner)
    r = owner.post("/tokens", json={"name": "ci", "scope": "read"})
    assert r.status_code == 201, r.text
    reader = Api(deployment.url, r.json()["token"])
    data = os.urandom(1000)
    location = tus_create(owner, project, sha256_bytes(data), len(data))

    create = create_upload(reader, 1000, project=project, sha256=sha256_bytes(data))
    assert_error(create, 403, "forbidden")
    assert_error(patch(reader, location, 0, data), 403, "forbidden")
    assert_error(reader.http.delete(location, headers=TUS), 403, "forbidden")
    assert server_offset(owner, location) == 0
    assert missing(owner, project, sha256_bytes(data)) == [sha256_bytes(data)]


def test_upload_without_a_token_gets_401(deployment: Deployment) -> None:
    anonymous = Api(deployment.url)
    r = create_upload(anonymous, 0, project="any", sha256=EMPTY_SHA256)
    assert_error(r, 401, "not_authenticated")


def test_zero_length_file_is_stored_by_creating_the_upload(deployment: Deployment) -> None:
    owner = deployment.user("uploader")
    project = deployment.project(owner)

    tus_create(owner, project, EMPTY_SHA256, 0, "empty.txt")

    assert missing(owner, project, EMPTY_SHA256) == []
    r = owner.get(f"/projects/{project}/blobs/{EMPTY_SHA256}")
    assert r.status_code == 200 and r.content == b""
    assert r.headers["ETag"] == f'"{EMPTY_SHA256}"'


def test_zero_length_upload_declaring_another_sha256_stores_nothing(
    deployment: Deployment,
) -> None:
    owner = deployment.user("uploader")
    project = deployment.project(owner)
    declared = sha256_bytes(os.urandom(8))

    r = create_upload(owner, 0, project=project, sha256=declared)

    assert_error(r, 460, "checksum_mismatch")
    assert missing(owner, project, declared) == [declared]


def test_tuspy_uploads_a_zero_length_file(deployment: Deployment, tmp_path: Path) -> None:
    owner = deployment.user("uploader")
    project = deployment.project(owner)
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    tus.TusClient(
        f"{deployment.url}/api/v1/uploads", headers={"Authorization": f"Bearer {owner.token}"}
    ).uploader(str(empty), metadata={"project": project, "sha256": EMPTY_SHA256}).upload()
    assert missing(owner, project, EMPTY_SHA256) == []


# --- blobs belong to projects --------------------------------------------------------------------


def test_blob_uploaded_to_one_project_is_missing_from_another(deployment: Deployment) -> None:
    owner = deployment.user("uploader")
    project_a = deployment.project(owner, "a")
    project_b = deployment.project(owner, "b")
    data = os.urandom(50_000)
    digest = deployment.upload(owner, project_a, data)

    assert missing(owner, project_a, digest) == []
    assert missing(owner, project_b, digest) == [digest]
    assert owner.post(f"/projects/{project_b}/models", json={"name": "m"}).status_code == 201
    r = owner.post(
        f"/projects/{project_b}/models/m/versions",
        json={"files": [{"path": "m.bin", "size": len(data), "sha256": digest}]},
    )
    assert_error(r, 422, "missing_blobs")
    assert r.json()["error"]["details"]["missing"] == [digest]
    assert_error(owner.get(f"/projects/{project_b}/blobs/{digest}"), 404, "not_found")
    assert owner.get(f"/projects/{project_a}/blobs/{digest}").content == data

    # Uploading the bytes to B too makes them B's; the store still holds them once.
    deployment.upload(owner, project_b, data)
    assert missing(owner, project_b, digest) == []
    assert owner.get(f"/projects/{project_b}/blobs/{digest}").content == data


def test_an_upload_of_bytes_the_store_holds_leaves_no_file_behind(deployment: Deployment) -> None:
    owner = deployment.user("uploader")
    data = os.urandom(3 * MiB)
    digest = deployment.upload(owner, deployment.project(owner, "a"), data)
    project_b = deployment.project(owner, "b")
    location = tus_create(owner, project_b, digest, len(data))
    r = patch(owner, location, 0, data)
    assert r.status_code == 204, r.text
    # The received copy is thrown away: at once from the upload folder, soon from the store's
    # scratch folder (a thread unlinks it), and the blob the store held is untouched.
    data_dir = deployment.server.data_dir
    assert not (data_dir / "uploads" / location.rstrip("/").rsplit("/", 1)[-1]).exists()
    scratch = data_dir / "blobs" / "tmp"
    deadline = time.monotonic() + 10
    while list(scratch.glob("discard-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(scratch.glob("discard-*")) == []
    assert missing(owner, project_b, digest) == []
    assert (
        sha256_bytes((data_dir / "blobs" / digest[:2] / digest[2:4] / digest).read_bytes())
        == digest
    )


@pytest.mark.backends("sqlite")  # the blob store's own start-up; no database involved
def test_files_a_stopped_server_was_still_throwing_away_are_removed_at_start(
    fresh_deployment: Deployment,
) -> None:
    server = fresh_deployment.server
    server.stop()
    left = server.data_dir / "blobs" / "tmp" / "discard-0123456789abcdef"
    left.write_bytes(b"x" * 1000)
    kept = server.data_dir / "blobs" / "tmp" / "unrelated"
    kept.write_bytes(b"y")
    server.start()
    assert not left.exists()
    assert kept.exists()


def test_concurrent_uploads_of_the_same_bytes_by_two_users_store_one_blob(
    deployment: Deployment,
) -> None:
    project = deployment.project()
    alice, bob = deployment.user("alice"), deployment.user("bob")
    deployment.add_member(project, alice, "contributor")
    deployment.add_member(project, bob, "contributor")

    for _ in range(4):
        data = os.urandom(2 * MiB)
        digest = sha256_bytes(data)
        locations = {api: tus_create(api, project, digest, len(data)) for api in (alice, bob)}
        for api, location in locations.items():
            assert patch(api, location, 0, data[:-1]).status_code == 204
        # Both last bytes land together, so both uploads complete at the same moment.
        start = threading.Barrier(2)
        results: dict[Api, requests.Response] = {}

        def finish(api: Api, location: str) -> None:
            start.wait()
            results[api] = patch(api, location, len(data) - 1, data[-1:])

        threads = [threading.Thread(target=finish, args=item) for item in locations.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        for r in results.values():
            assert r.status_code == 204, r.text
        for location in locations.values():
            assert not partial_file(deployment, location).exists()
        assert missing(alice, project, digest) == []
        assert list(deployment.server.data_dir.joinpath("blobs").rglob(digest)) == [
            blob_file(deployment, digest)
        ]
        assert bob.get(f"/projects/{project}/blobs/{digest}").content == data


# --- helpers -------------------------------------------------------------------------------------


def assert_error(r: requests.Response, status: int, code: str | None = None) -> None:
    """`r` is the JSON error `{"error": {"code", "message"}}` with this status (and code)."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    error = r.json()["error"]
    assert error["message"]
    if code is not None:
        assert error["code"] == code, error


def assert_blob_is_stored(api: Api, project: str, digest: str) -> None:
    """The project holds the blob and downloading it gives bytes that hash to `digest`."""
    assert missing(api, project, digest) == []
    h = hashlib.sha256()
    with api.get(f"/projects/{project}/blobs/{digest}", stream=True) as r:
        assert r.status_code == 200, r.text
        for chunk in r.iter_content(MiB):
            h.update(chunk)
    assert h.hexdigest() == digest


def missing(api: Api, project: str, *digests: str) -> list[str]:
    r = api.post(f"/projects/{project}/blobs/missing", json={"sha256": list(digests)})
    assert r.status_code == 200, r.text
    return list(r.json()["missing"])


def create_upload(api: Api, length: int, **metadata: str) -> requests.Response:
    """POST /uploads declaring `length` bytes, with `metadata` as Upload-Metadata."""
    return api.post(
        "/uploads",
        headers={**TUS, "Upload-Length": str(length), "Upload-Metadata": tus_metadata(**metadata)},
    )


def patch(api: Api, location: str, offset: int, data: bytes) -> requests.Response:
    return api.http.patch(location, data=data, headers=tus_patch_headers(offset), timeout=60)


def head(api: Api, location: str) -> requests.Response:
    return api.http.head(location, headers=TUS, timeout=30)


def server_offset(api: Api, location: str) -> int:
    r = head(api, location)
    assert r.status_code == 200, r.headers
    assert r.headers["Tus-Resumable"] == "1.0.0"
    return int(r.headers["Upload-Offset"])


def partial_file(deployment: Deployment, location: str) -> Path:
    """Where the server keeps an unfinished upload's bytes."""
    return deployment.server.data_dir / "uploads" / location.rstrip("/").rsplit("/", 1)[1]


def blob_file(deployment: Deployment, digest: str) -> Path:
    return deployment.server.data_dir / "blobs" / digest[:2] / digest[2:4] / digest


def open_patch(api: Api, location: str, *, offset: int, length: int) -> socket.socket:
    """A raw socket on which a PATCH from `offset` to `length` has been announced (headers sent,
    `Content-Length` the whole rest) and whose body the caller sends, or doesn't."""
    url = urlsplit(location)
    assert url.hostname and url.port
    sock = socket.create_connection((url.hostname, url.port), timeout=60)
    headers = {
        "Host": f"{url.hostname}:{url.port}",
        "Authorization": f"Bearer {api.token}",
        **tus_patch_headers(offset),
        "Content-Length": str(length - offset),
    }
    head_lines = [f"PATCH {url.path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
    sock.sendall(("\r\n".join(head_lines) + "\r\n\r\n").encode("latin-1"))
    return sock


def send_file_range(sock: socket.socket, source: Path, start: int, count: int) -> int:
    sent = 0
    with source.open("rb") as f:
        f.seek(start)
        while sent < count:
            chunk = f.read(min(MiB, count - sent))
            sock.sendall(chunk)
            sent += len(chunk)
    return sent


def send_patch_then_cut_connection(
    api: Api, location: str, source: Path, *, offset: int, send: int
) -> int:
    """Start a PATCH for the whole rest of `source`, send only `send` bytes of it and close the
    connection, as a dropped network would. Returns where the cut was, as a file offset."""
    sock = open_patch(api, location, offset=offset, length=source.stat().st_size)
    try:
        sent = send_file_range(sock, source, offset, send)
    finally:
        sock.close()
    return offset + sent


def send_patch(api: Api, location: str, source: Path, *, offset: int) -> tuple[int, int]:
    """PATCH the rest of `source` from `offset`, streamed; returns (status, body bytes sent)."""
    url = urlsplit(location)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=120)
    try:
        conn.putrequest("PATCH", url.path)
        length = source.stat().st_size
        headers = {
            "Authorization": f"Bearer {api.token}",
            **tus_patch_headers(offset),
            "Content-Length": str(length - offset),
        }
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        sent = 0
        with source.open("rb") as f:
            f.seek(offset)
            while chunk := f.read(MiB):
                conn.send(chunk)
                sent += len(chunk)
        response = conn.getresponse()
        response.read()
        return response.status, sent
    finally:
        conn.close()


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.01)


def test_filename_with_a_control_character_is_refused(deployment: Deployment) -> None:
    api = deployment.user("ctl")
    project = deployment.project(api)
    r = api.post(
        "/uploads",
        headers={
            "Tus-Resumable": "1.0.0",
            "Upload-Length": "3",
            "Upload-Metadata": tus_metadata(
                project=project, sha256="a" * 64, filename="bad\x00name"
            ),
        },
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_metadata"
