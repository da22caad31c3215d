"""Presigned downloads (LMVP_S3_PRESIGN=1): the server answers a blob download with a 307 to a
short-lived presigned URL of the object store, and the client (`lmvp.cache`, which the API,
the daemon and the desktop download through) fetches the bytes from the store, verified as
ever, resumed with Range, without the user's token ever reaching the store; a URL the store
refuses (expired) makes the client ask the server to send the bytes itself.

The store is reached through a `StoreTap` (tests/s3.py), which keeps what was sent to it, and
the server through a `CountingRelay`, which counts what crossed it."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from lmvp._http import HTTP, RetryPolicy
from lmvp.cache import Cache
from tests.client.relay import CountingRelay
from tests.s3 import SeaweedFS, StoreTap, s3_server
from tests.support import ADMIN_PASSWORD, Api, Deployment, ServerProcess, sha256_file

MiB = 1024 * 1024
SIZE = 8 * MiB


@pytest.fixture
def tap(seaweedfs: SeaweedFS) -> Iterator[StoreTap]:
    with StoreTap(seaweedfs.s3_port) as relay:
        yield relay


def _presigning_server(
    make_server: Callable[[str], ServerProcess], seaweedfs: SeaweedFS, tap: StoreTap, seconds: int
) -> ServerProcess:
    server = s3_server(
        make_server, seaweedfs, LMVP_S3_PRESIGN="1", LMVP_S3_PRESIGN_SECONDS=str(seconds)
    )
    # The server reaches the store through the tap, so the URLs it signs name the tap.
    server.extra_env["LMVP_S3_ENDPOINT_URL"] = tap.url
    return server


def _blob(deployment: Deployment, tmp_path: Path) -> tuple[Api, str, str, bytes]:
    owner = deployment.user("presign")
    project = deployment.project(owner)
    data = hashlib.sha512(b"presign").digest() * (SIZE // 64)
    assert deployment.commit(owner, project, "net", {"m.bin": data}).status_code == 201
    return owner, project, hashlib.sha256(data).hexdigest(), data


def test_download_is_redirected_to_the_store_verified_and_the_token_never_reaches_it(
    make_server: Callable[[str], ServerProcess],
    seaweedfs: SeaweedFS,
    tap: StoreTap,
    tmp_path: Path,
) -> None:
    server = _presigning_server(make_server, seaweedfs, tap, 300)
    server.start()
    try:
        deployment = Deployment(server, Api(server.url).login("admin", ADMIN_PASSWORD))
        owner, project, digest, data = _blob(deployment, tmp_path)
        assert owner.token is not None

        asked = owner.get(f"/projects/{project}/blobs/{digest}", allow_redirects=False)
        assert asked.status_code == 307
        location = asked.headers["Location"]
        assert location.startswith(tap.url) and "X-Amz-Signature=" in location
        assert owner.token not in location and asked.headers["Cache-Control"] == "no-store"
        # Another user's request is checked first, as ever: no redirect for a non-member.
        stranger = deployment.user("stranger")
        assert stranger.get(f"/projects/{project}/blobs/{digest}").status_code == 404

        cache = Cache(tmp_path / "cache", server.url)
        with CountingRelay(server.port) as relay:
            http = HTTP(relay.url, owner.token)
            path = cache.download_blob(http, project, digest, SIZE)
            # The bytes came from the store: only the redirect crossed the server's link.
            assert relay.received < 64 * 1024
        assert sha256_file(path) == digest

        # A download resumed with Range goes to the store too, still without the token.
        partial = cache.blobs / f"{digest}.incomplete"
        partial.write_bytes(data[: SIZE // 2])
        path.unlink()
        tap_before = len(tap.seen())
        path = cache.download_blob(HTTP(server.url, owner.token), project, digest, SIZE)
        assert sha256_file(path) == digest
        resumed = tap.seen()[tap_before:]
        assert f"Range: bytes={SIZE // 2}-".encode() in resumed

        seen = tap.seen()
        assert b"X-Amz-Signature=" in seen  # the client's GETs went through the tap
        assert owner.token.encode() not in seen
        assert b"Bearer" not in seen
    finally:
        server.stop()


def test_expired_presigned_url_is_refused_clearly_and_the_client_falls_back_to_the_server(
    make_server: Callable[[str], ServerProcess],
    seaweedfs: SeaweedFS,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Every request reaches the store 2.5 s late: a URL valid for 1 s has expired on arrival.
    with StoreTap(seaweedfs.s3_port, delay=2.5) as slow_tap:
        server = _presigning_server(make_server, seaweedfs, slow_tap, 1)
        server.start(timeout=60)
        try:
            deployment = Deployment(server, Api(server.url).login("admin", ADMIN_PASSWORD))
            owner, project, digest, _ = _blob(deployment, tmp_path)
            assert owner.token is not None

            asked = owner.get(f"/projects/{project}/blobs/{digest}", allow_redirects=False)
            expired = requests.get(asked.headers["Location"], timeout=30)
            assert expired.status_code == 403 and "expired" in expired.text

            cache = Cache(tmp_path / "cache", server.url)
            with (
                caplog.at_level(logging.WARNING, logger="lmvp.cache"),
                CountingRelay(server.port) as relay,
            ):
                http = HTTP(relay.url, owner.token, retry=RetryPolicy(attempts=3, base=0.05))
                path = cache.download_blob(http, project, digest, SIZE)
                assert relay.received >= SIZE  # sent by the server itself
            assert sha256_file(path) == digest
            assert "refused the presigned URL" in caplog.text and "expired" in caplog.text
            assert owner.token.encode() not in slow_tap.seen()
        finally:
            server.stop()
