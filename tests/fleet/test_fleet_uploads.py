"""Uploads move between the servers of a fleet: an upload whose connection is cut resumes on
another server; a server killed mid-upload loses nothing it acknowledged. Everything goes
through nginx over HTTPS; nginx's access log says which server took which request.

`LMVP_FLEET_UPLOAD_MB` sets the size of the cut upload: 96 in `make test`, 200 (the size
issue 15 names) in `make fleet`."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import requests

import lmvp
from tests.client.relay import CountingRelay
from tests.fleet.conftest import Fleet
from tests.support import (
    sha256_file,
    tus_create,
    tus_patch_headers,
    write_random_file,
)

MB = 1024 * 1024
SIZE = int(os.environ.get("LMVP_FLEET_UPLOAD_MB", "96")) * MB


def test_an_upload_cut_midway_resumes_on_another_server(fleet: Fleet, tmp_path: Path) -> None:
    here, there = fleet.servers
    alice = fleet.deployment.user("alice")
    project = fleet.deployment.project(alice)
    weights = tmp_path / "model.bin"
    digest = write_random_file(weights, SIZE, seed=7)
    fleet.only(here)
    start = len(fleet.proxy.served())
    # A network between the client and nginx that takes about 6 s for the file, so the test
    # can act while the bytes flow.
    with CountingRelay(fleet.proxy.port, rate=SIZE / 6) as relay:
        result: dict[str, object] = {}

        def publish() -> None:
            try:
                client = lmvp.Client(f"https://127.0.0.1:{relay.port}", alice.token)
                with client:
                    client.ensure_model(f"{project}/big")
                    result["version"] = client.update(f"{project}/big", weights)
            except Exception as exc:
                result["error"] = exc

        worker = threading.Thread(target=publish)
        worker.start()
        deadline = time.monotonic() + 120
        while relay.sent < SIZE // 4:
            assert worker.is_alive(), result
            assert time.monotonic() < deadline, f"only {relay.sent} bytes sent"
            time.sleep(0.02)
        # A quarter in: the server taking the upload goes out of rotation (it keeps running,
        # and keeps the request it is in), then the connection drops.
        fleet.only(there)
        with relay._lock:
            assert relay.sent < SIZE, "the upload ended before the test could cut it"
            relay.cut_after = relay.sent + 1
        worker.join(180)
        assert not worker.is_alive()
        sent = relay.sent
        assert relay.cuts == 1
    assert "error" not in result, result
    version = result["version"]
    assert isinstance(version, lmvp.Version)
    assert [f.sha256 for f in version.files] == [digest]
    # Resumed, not sent again: a restart would have sent the whole file twice.
    assert sent < SIZE + SIZE // 4, sent
    patches = [
        (s.upstreams[-1], s.status)
        for s in fleet.proxy.served()[start:]
        if s.method == "PATCH" and s.path.startswith("/api/v1/uploads/") and s.upstreams
    ]
    assert patches[0][0] == fleet.address(here), patches
    assert patches[-1] == (fleet.address(there), 204), patches
    # And the bytes a teammate fetches (from whichever server) are the file's.
    with lmvp.Client(fleet.url, alice.token, cache_dir=tmp_path / "cache") as client:
        fetched = client.download(f"{project}/big:{version.number}")
    assert sha256_file(fetched) == digest


def _slow_body(first: bytes, release: threading.Event) -> Iterator[bytes]:
    """A request body that sends `first` and then waits (a client mid-PATCH)."""
    yield first
    release.wait(30)


def test_a_server_killed_mid_upload_loses_nothing_acknowledged(
    fleet: Fleet, tmp_path: Path
) -> None:
    here, there = fleet.servers
    alice = fleet.deployment.user("alice")
    project = fleet.deployment.project(alice)
    weights = tmp_path / "model.bin"
    size = 64 * MB
    digest = write_random_file(weights, size, seed=11)
    data = weights.read_bytes()
    fleet.only(here)
    location = tus_create(alice, project, digest, size, "model.bin")
    acknowledged = 24 * MB
    r = alice.http.patch(location, data=data[:acknowledged], headers=tus_patch_headers(0))
    assert r.status_code == 204, r.text
    assert int(r.headers["Upload-Offset"]) == acknowledged
    # A second PATCH is under way on the same server when it is killed.
    release = threading.Event()
    outcome: dict[str, object] = {}

    def in_flight() -> None:
        try:
            outcome["status"] = alice.http.patch(
                location,
                data=_slow_body(data[acknowledged : acknowledged + 8 * MB], release),
                headers={**tus_patch_headers(acknowledged), "Content-Length": str(16 * MB)},
                timeout=60,
            ).status_code
        except requests.RequestException as exc:
            outcome["error"] = exc

    sender = threading.Thread(target=in_flight)
    sender.start()
    time.sleep(1.0)
    fleet.only(there)
    assert here.proc is not None
    here.kill()
    release.set()
    sender.join(60)
    assert outcome.get("status") != 204, outcome
    # Another server knows the upload and at least every acknowledged byte.
    head = alice.http.head(location, headers={"Tus-Resumable": "1.0.0"}, timeout=30)
    assert head.status_code == 200, head.text
    offset = int(head.headers["Upload-Offset"])
    assert acknowledged <= offset <= size
    r = alice.http.patch(location, data=data[offset:], headers=tus_patch_headers(offset))
    # A server that took the upload over may ask for a moment before it lets go of the dead
    # one's claim (423 with Retry-After); a client then tries again.
    deadline = time.monotonic() + 60
    while r.status_code in (409, 423) and time.monotonic() < deadline:
        time.sleep(float(r.headers.get("Retry-After", "1")))
        head = alice.http.head(location, headers={"Tus-Resumable": "1.0.0"}, timeout=30)
        offset = int(head.headers["Upload-Offset"])
        assert acknowledged <= offset
        r = alice.http.patch(location, data=data[offset:], headers=tus_patch_headers(offset))
    assert r.status_code == 204, r.text
    commit = alice.post(
        f"/projects/{project}/models",
        json={"name": "m"},
    )
    assert commit.status_code == 201, commit.text
    commit = alice.post(
        f"/projects/{project}/models/m/versions",
        json={"files": [{"path": "model.bin", "size": size, "sha256": digest}]},
    )
    assert commit.status_code == 201, commit.text
    blob = alice.get(f"/projects/{project}/blobs/{digest}", timeout=120)
    assert blob.status_code == 200
    assert len(blob.content) == size
    assert hashlib.sha256(blob.content).hexdigest() == digest
