"""HTTPS end to end through the shipped nginx site: a team member logs in, publishes and
fetches with the public client; the URLs the server builds name the proxy's https address;
events pass through nginx as they happen."""

from __future__ import annotations

import time
from pathlib import Path

import lmvp
from tests.fleet.conftest import Fleet
from tests.support import EventStream, sha256_file, tus_create, write_random_file


def test_a_team_member_publishes_and_fetches_over_https(fleet: Fleet, tmp_path: Path) -> None:
    alice = fleet.deployment.user("alice")
    project = fleet.deployment.project(alice)
    weights = tmp_path / "model.bin"
    digest = write_random_file(weights, 24 * 1024 * 1024 + 7, seed=1)
    with lmvp.Client(fleet.url, alice.token, cache_dir=tmp_path / "cache-a") as client:
        client.ensure_model(f"{project}/net")
        version = client.update(f"{project}/net", weights, message="over https")
    with lmvp.Client(fleet.url, alice.token, cache_dir=tmp_path / "cache-b") as other:
        fetched = other.download(f"{project}/net:{version.number}")
    assert sha256_file(fetched) == digest
    # The bytes went both ways through nginx, over TLS, to several servers.
    uploads = fleet.served_by("PATCH", "/api/v1/uploads/")
    downloads = fleet.served_by("GET", f"/api/v1/projects/{project}/blobs/")
    assert uploads and downloads
    assert len(set(fleet.served_by("GET", "/api/v1/"))) >= 2


def test_the_servers_build_urls_with_the_proxys_https_address(fleet: Fleet) -> None:
    alice = fleet.deployment.user("alice")
    project = fleet.deployment.project(alice)
    # A tus client follows `Location` as given: behind TLS it must be https, on the proxy's
    # host and port, not the worker's plain http address.
    location = tus_create(alice, project, "0" * 64, 10)
    assert location.startswith(f"{fleet.url}/api/v1/uploads/"), location


def test_events_pass_through_nginx_as_they_happen(fleet: Fleet) -> None:
    alice = fleet.deployment.user("alice")
    project = fleet.deployment.project(alice)
    assert fleet.deployment.commit(alice, project, "m", {"w.bin": b"1"}).status_code == 201
    with EventStream(fleet.url, alice.token) as stream:  # type: ignore[arg-type]
        time.sleep(0.3)
        latencies = []
        for i in range(5):
            sent = time.monotonic()
            r = alice.put(f"/projects/{project}/models/m/aliases/a{i}", json={"version": 1})
            assert r.status_code == 200, r.text
            event = stream.read_until(lambda e: e.kind == "alias.set", timeout=5)[-1]
            latencies.append(time.monotonic() - sent)
            assert event.data["payload"]["alias"] == f"a{i}"
    # A buffering proxy would hold small events until its buffer filled or the stream ended.
    assert max(latencies) < 2, latencies
