"""Chunked transfers across a fleet: the packs of one file, sent through nginx to whichever
server takes each, and the fetches of another client, make the same verified blob; a fine-tune
sends only its changed tensors whichever server answers `chunks/missing`; a server killed
between the packs of a send loses nothing another server cannot finish.

The fleet keeps chunks in its S3 bucket and their records in PostgreSQL, so no server may hold
state of a send or a fetch that the next request needs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

import lmvp
from lmvp import chunked
from lmvp._http import HTTP, RetryPolicy
from lmvp.cache import Cache
from lmvp.chunked import send_chunked
from tests.client.test_chunked import write_model
from tests.fleet.conftest import Fleet
from tests.support import sha256_file

MiB = 1 << 20


@pytest.fixture(autouse=True)
def _chunks_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks through the fleet's loopback address, for files from 1 MiB, in packs of 512 KiB:
    a ~4.5 MiB model goes as about ten packs, enough to reach every server."""
    monkeypatch.setenv("LMVP_CHUNKS", "1")
    monkeypatch.setattr(chunked, "MIN_SIZE", 1 * MiB)
    monkeypatch.setattr(chunked, "PACK_SIZE", MiB // 2)


def test_packs_spread_over_the_fleet_make_one_verified_blob_that_a_fine_tune_reuses(
    fleet: Fleet, tmp_path: Path
) -> None:
    alice = fleet.deployment.user("alice")
    project = fleet.deployment.project(alice)
    v1, v2 = tmp_path / "v1.safetensors", tmp_path / "v2.safetensors"
    write_model(v1, seed=11)
    changed = frozenset({2, 19, 33})
    changed_bytes = write_model(v2, seed=11, changed=changed)
    start = len(fleet.proxy.served())
    http = HTTP(fleet.url, alice.token, retry=RetryPolicy(attempts=5, base=0.05))
    try:
        first = send_chunked(http, project, v1)
        assert first.sha256 == sha256_file(v1) and first.sent_chunks == first.chunks
        packs = fleet.served_by("POST", f"/api/v1/projects/{project}/chunks", start, at_least=2)
        assert len(set(packs)) == len(fleet.servers), f"packs served by {Counter(packs)}"

        # The fine-tune: only its changed tensors travel, whichever server says what is missing.
        second = send_chunked(http, project, v2)
        assert (second.sent_chunks, second.sent_raw_bytes) == (len(changed), changed_bytes)

        # Another client, another cache: the blob comes back bit-exact from chunks fetched
        # through any server.
        fetched = Cache(tmp_path / "cache", http.server).download_blob(
            http, project, second.sha256, v2.stat().st_size
        )
        assert sha256_file(fetched) == second.sha256
    finally:
        http.close()

    # And as a user meets it: a version published through the fleet downloads whole.
    with lmvp.Client(fleet.url, alice.token) as client:
        client.ensure_model(f"{project}/tuned")
        version = client.update(f"{project}/tuned", v2, message="fine-tuned")
        assert [f.sha256 for f in version.files] == [second.sha256]
        path = client.download(f"{project}/tuned", cache_dir=tmp_path / "user-cache")
        assert sha256_file(path) == second.sha256


def test_a_send_whose_server_dies_between_packs_is_finished_by_another(
    fleet: Fleet, tmp_path: Path
) -> None:
    """The first host takes the first packs and is killed; the send goes on through nginx to
    the other host, which lacks nothing the dead one acknowledged."""
    here, there = fleet.servers
    alice = fleet.deployment.user("alice")
    project = fleet.deployment.project(alice)
    model = tmp_path / "model.safetensors"
    write_model(model, seed=12)
    fleet.only(here)
    start = len(fleet.proxy.served())
    packs = 0

    def progress(n: int) -> None:
        nonlocal packs
        if fleet.served_by("POST", chunks, start, at_least=0) and not packs:
            packs = 1  # a pack is in: the host goes, and nginx sends the rest elsewhere
            fleet.only(there)
            here.stop()

    chunks = f"/api/v1/projects/{project}/chunks"
    http = HTTP(fleet.url, alice.token, retry=RetryPolicy(attempts=8, base=0.1))
    try:
        sent = send_chunked(http, project, model, progress=progress)
        assert sent.sha256 == sha256_file(model)
        fetched = Cache(tmp_path / "cache", http.server).download_blob(
            http, project, sent.sha256, model.stat().st_size
        )
        assert sha256_file(fetched) == sent.sha256
    finally:
        http.close()
    served = Counter(fleet.served_by("POST", chunks, start, at_least=2))
    assert served[fleet.address(here)] >= 1 and served[fleet.address(there)] >= 1, served
