"""Chunked transfers (`lmvp.chunked`) against a real server: bit-exact round trips, only the
chunks the project (or the local cache) lacks travel, dropped connections resume, and a damaged
chunk, here or on the server, is caught and never kept as good.

Bytes on the wire are counted at a `CountingRelay` between client and server. Files are a few
MiB; `MIN_SIZE` and `PACK_SIZE` are lowered so that they still go as several packs."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import lmvp
from lmvp import chunked, links
from lmvp._http import HTTP, RetryPolicy
from lmvp.cache import Cache
from lmvp.chunk_codec import CompressionGovernor, encode, raw_frame_header
from lmvp.chunked import chunks_wanted, record_head, send_chunked
from lmvp.chunking import Chunk, ChunkKind, chunk_file
from lmvp.errors import IntegrityError, ProtocolError, ServerUnavailable
from lmvp.publish import collect_files, send_files
from lmvp.transfer import missing_blobs
from lmvp_server.chunk_frames import RECORD_HEAD, verified_chunk
from tests.client.relay import CountingRelay
from tests.client.torch_layout import write_torch_zip
from tests.nginx import NginxProxy, find_nginx, self_signed_certificate, trusting
from tests.support import Api, ServerProcess, sha256_file

MiB = 1 << 20
TENSORS = 40


@pytest.fixture(autouse=True)
def _chunks_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks for the loopback server, for files from 1 MiB, in packs of 2 MiB."""
    monkeypatch.setenv("LMVP_CHUNKS", "1")
    monkeypatch.setattr(chunked, "MIN_SIZE", 1 * MiB)
    monkeypatch.setattr(chunked, "PACK_SIZE", 2 * MiB)


@pytest.fixture
def relay(client_server: ServerProcess) -> Iterator[CountingRelay]:
    with CountingRelay(client_server.port) as counting:
        yield counting


@pytest.fixture
def relayed(relay: CountingRelay, token: str) -> Iterator[HTTP]:
    """The client's session through the relay, with short backoff."""
    connection = HTTP(relay.url, token, retry=RetryPolicy(attempts=5, base=0.05))
    yield connection
    connection.close()


def write_model(path: Path, seed: int, changed: frozenset[int] = frozenset()) -> int:
    """A safetensors file of `TENSORS` float32 tensors (~4.5 MiB), the same for the same seed
    except that the tensors numbered in `changed` are fine-tuned; returns the bytes they take."""
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    changed_bytes = 0
    for i in range(TENSORS):
        rows = 64 + 16 * (i % 5)
        weights = rng.normal(0, 0.02, size=(rows, 256)).astype(np.float32)
        if i in changed:
            tuned = np.random.default_rng(seed * 1000 + i)
            weights = weights + tuned.normal(0, 1e-3, size=weights.shape).astype(np.float32)
            changed_bytes += weights.nbytes
        tensors[f"layers.{i:02d}.weight"] = weights
    save_file(tensors, str(path), metadata={"format": "pt"})
    return changed_bytes


def write_noise(path: Path, size: int, seed: int) -> str:
    """`size` incompressible bytes (`write_random_file` repeats a block, which zstd sees);
    returns their sha256."""
    data = np.random.default_rng(seed).bytes(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def download(http: HTTP, root: Path, project: str, path: Path) -> Path:
    """Download the blob of `path` into the cache at `root`; checks its progress sums up."""
    size = path.stat().st_size
    got: list[int] = []
    blob = Cache(root, http.server).download_blob(
        http, project, sha256_file(path), size, progress=got.append
    )
    assert sum(got) == size
    return blob


def server_chunks(api: Api, project: str, sha256: str) -> list[dict[str, object]]:
    r = api.get(f"/projects/{project}/blobs/{sha256}/chunks")
    assert r.status_code == 200, r.text
    chunks: list[dict[str, object]] = r.json()["chunks"]
    return chunks


# --- the wire format ------------------------------------------------------------------------------


def test_pack_records_read_back_with_the_servers_decoder(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    write_model(path, seed=1)
    data = path.read_bytes()
    for chunk in chunk_file(path).chunks:
        raw = data[chunk.offset : chunk.end]
        for frame in (raw_frame_header(len(raw)) + raw, encode(raw, "F32")):
            record = record_head(chunk.sha256, len(raw), len(frame)) + frame
            sha, raw_len, frame_len = RECORD_HEAD.unpack_from(record)
            assert (sha.hex(), raw_len, frame_len) == (chunk.sha256, len(raw), len(frame))
            body = record[RECORD_HEAD.size :]
            assert verified_chunk(body, chunk.sha256, raw_len) == raw


def test_chunks_go_only_to_a_server_elsewhere_over_a_link_not_known_to_be_fast(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    local, remote = HTTP("http://127.0.0.1:9", None), HTTP("http://10.1.2.3:8000", None)
    big = chunked.MIN_SIZE
    monkeypatch.delenv("LMVP_CHUNKS")
    # Nothing measured yet: a server elsewhere gets chunks both ways, a local one never.
    for way in ("up", "down"):
        assert chunks_wanted(remote, big, way) and not chunks_wanted(remote, big - 1, way)
        assert not chunks_wanted(local, big, way)
    # A 1 Gbit/s link up, a 10 Gbit/s link down: chunks up, whole files down.
    links.record(remote.server, "up", 1_250_000_000, 10.0)
    links.record(remote.server, "down", 12_500_000_000, 10.0)
    assert chunks_wanted(remote, big, "up") and not chunks_wanted(remote, big, "down")
    # The link slows down (a laptop off the LAN): two slow transfers bring the average under.
    links.record(remote.server, "down", 100 << 20, 10.0)
    links.record(remote.server, "down", 100 << 20, 10.0)
    assert chunks_wanted(remote, big, "down")
    # After a slow figure a fast link must show itself twice. Another server's figures are
    # its own; a damaged file of figures is no figure at all.
    links.record(remote.server, "up", 12_500_000_000, 1.0)
    assert chunks_wanted(remote, big, "up")
    links.record(remote.server, "up", 12_500_000_000, 1.0)
    assert not chunks_wanted(remote, big, "up")
    assert chunks_wanted(HTTP("http://10.1.2.4:8000", None), big, "up")
    (tmp_path / "state" / "lmvp" / "links.json").write_text("{not json")
    assert chunks_wanted(remote, big, "up") and links.rate(remote.server, "up") is None
    # Forced either way.
    links.record(remote.server, "up", 12_500_000_000, 1.0)
    monkeypatch.setenv("LMVP_CHUNKS", "1")
    assert chunks_wanted(local, big, "up") and chunks_wanted(remote, big, "up")
    assert not chunks_wanted(local, big - 1, "up")
    monkeypatch.setenv("LMVP_CHUNKS", "0")
    assert not chunks_wanted(remote, big, "down")
    local.close()
    remote.close()


def test_a_link_figure_is_forgotten_after_a_week(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    links.record("http://10.1.2.3:8000", "up", 10_000_000_000, 1.0)
    assert links.is_fast("http://10.1.2.3:8000", "up")
    later = time.time() + links.FORGET_AFTER + 60
    monkeypatch.setattr(links.time, "time", lambda: later)
    assert links.rate("http://10.1.2.3:8000", "up") is None
    assert not links.is_fast("http://10.1.2.3:8000", "up")


def test_every_big_transfer_records_the_rate_its_link_gave(
    client_server: ServerProcess,
    token: str,
    project: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whole or chunked, up or down: a slow link is recorded as slow (the socket buffers on the
    way take a few MiB at once, hence the margins), so that the next big file to that server
    goes as chunks. How a fast figure turns chunks off is the test above: a fast figure here
    would time this machine's load, not the code."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setattr(links, "MIN_BYTES", 1 * MiB)
    # One pack on one connection (the relay paces each connection), and a sample smaller than
    # the 64 MiB that would take a while here.
    monkeypatch.setattr(chunked, "PACK_SIZE", 32 * MiB)
    monkeypatch.setattr(chunked, "_LINK_SAMPLE", 16 * MiB)
    path = tmp_path / "weights.bin"
    path.write_bytes(os.urandom(24 * MiB))
    slow_rate = 12 * MiB  # bytes per second the relay lets through from the client
    with CountingRelay(client_server.port, rate=slow_rate) as slow:
        slowly = HTTP(slow.url, token, retry=RetryPolicy(attempts=5, base=0.05))
        try:
            send_chunked(slowly, project, path)  # LMVP_CHUNKS=1 (this module's fixture)
            chunked_up = links.rate(slow.url, "up")
            (tmp_path / "state" / "lmvp" / "links.json").unlink()
            path.write_bytes(os.urandom(24 * MiB))
            monkeypatch.setenv("LMVP_CHUNKS", "0")
            sent = send_files(slowly, project, collect_files(path, tmp_path)[0], None)
            whole_up = links.rate(slow.url, "up")
        finally:
            slowly.close()
    # The socket buffers on the way (up to ~10 MiB on loopback) take the first bytes at once,
    # and the chunked figure is the time spent in sends; still far below a fast link.
    assert chunked_up is not None and chunked_up < 3 * slow_rate < links.FAST_LINK, chunked_up
    assert whole_up is not None and whole_up < 1.2 * slow_rate, whole_up

    # Down the same slow link: recorded as slow too, and as no faster than the call itself.
    with CountingRelay(client_server.port, received_rate=slow_rate) as down:
        paced = HTTP(down.url, token, retry=RetryPolicy(attempts=5, base=0.05))
        try:
            started = time.perf_counter()
            Cache(tmp_path / "cache", paced.server).download_blob(
                paced, project, sent[0].sha256, sent[0].size
            )
            call = sent[0].size / (time.perf_counter() - started)
        finally:
            paced.close()
    whole_down = links.rate(down.url, "down")
    assert whole_down is not None and call <= whole_down < 1.2 * slow_rate, (whole_down, call)


def test_chunk_file_hands_over_each_chunk_as_soon_as_it_is_hashed(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    write_model(path, seed=13)
    seen: list[Chunk] = []
    cut = chunk_file(path, on_chunk=seen.append)
    assert tuple(seen) == cut.chunks
    big = tmp_path / "big.bin"  # read in several blocks, hashed in threads
    write_noise(big, 20 * MiB + 3, seed=13)
    seen.clear()
    assert tuple(seen) == () and chunk_file(big, on_chunk=seen.append).chunks == tuple(seen)


@pytest.mark.parametrize(
    "body",
    [
        {"sha256": "a" * 64, "size": 10, "chunks": [{"sha256": "b" * 64, "size": 10}]},
        {"sha256": "a" * 64, "size": 10, "chunks": [{"sha256": "b" * 64, "size": 9, "offset": 0}]},
        {
            "sha256": "a" * 64,
            "size": 10,
            "chunks": [
                {"sha256": "b" * 64, "size": 5, "offset": 0},
                {"sha256": "b" * 64, "size": 4, "offset": 5},
            ],
        },
        {"sha256": "a" * 64, "size": 10, "chunks": [{"sha256": "../x", "size": 10, "offset": 0}]},
        {"sha256": "c" * 64, "size": 10, "chunks": [{"sha256": "b" * 64, "size": 10, "offset": 0}]},
    ],
)
def test_a_broken_chunk_list_is_refused(body: dict[str, object]) -> None:
    with pytest.raises(ProtocolError):
        chunked._checked_list(body, "http://server", "a" * 64, 10)


# --- round trips ----------------------------------------------------------------------------------


def write_torch(path: Path) -> None:
    rng = np.random.default_rng(7)
    storages = [
        rng.normal(0, 0.02, size=n).astype(np.float32).tobytes() for n in (300_000, 200_000, 77)
    ]
    write_torch_zip(path, storages, pickle_extra={"epoch": 3})


@pytest.mark.parametrize("kind", ["safetensors", "torch", "random"])
def test_round_trip_is_bit_exact(
    kind: str, http: HTTP, project: str, api: Api, tmp_path: Path
) -> None:
    path = tmp_path / f"weights.{kind}"
    if kind == "safetensors":
        write_model(path, seed=2)
    elif kind == "torch":
        write_torch(path)
    else:
        write_noise(path, 3 * MiB + 5, seed=3)
    size = path.stat().st_size
    seen: list[int] = []
    sent = send_chunked(http, project, path, progress=seen.append)
    assert sent.sha256 == sha256_file(path) and sum(seen) == size
    assert sent.sent_chunks == sent.chunks > 1
    assert missing_blobs(http, project, [sent.sha256]) == set()
    listed = server_chunks(api, project, sent.sha256)
    assert [c["sha256"] for c in listed] == [c.sha256 for c in chunk_file(path).chunks]
    if kind == "random":  # incompressible bytes cost the frame headers, nothing more
        assert sent.sent_frame_bytes <= size * 1.01

    blob = download(http, tmp_path / "cache", project, path)
    assert blob.read_bytes() == path.read_bytes()
    # The plain download serves the same bytes, assembled by the server.
    plain = api.get(f"/projects/{project}/blobs/{sent.sha256}", params={"redirect": "false"})
    assert plain.status_code == 200 and hashlib.sha256(plain.content).hexdigest() == sent.sha256


def test_a_lightning_ckpt_and_a_hugging_face_checkpoint_folder_round_trip_bit_exact(
    client_server: ServerProcess, token: str, project: str, api: Api, tmp_path: Path
) -> None:
    """Through the public API, as a training job's files are published: a Hugging Face
    `checkpoint-N/` folder (two safetensors shards, `optimizer.pt`, `trainer_state.json`,
    `config.json`) and a Lightning `.ckpt` (torch.save's zip with the trainer's state in its
    pickle). The big files travel as chunks, and every file downloads with its sha256."""
    folder = tmp_path / "checkpoint-500"
    folder.mkdir()
    write_model(folder / "model-00001-of-00002.safetensors", seed=41)
    write_model(folder / "model-00002-of-00002.safetensors", seed=42)
    rng = np.random.default_rng(43)
    moments = [rng.normal(0, 1e-3, n).astype(np.float32).tobytes() for n in (400_000, 400_000)]
    write_torch_zip(folder / "optimizer.pt", moments, pickle_extra={"lr": 3e-4, "step": 500})
    (folder / "trainer_state.json").write_text('{"global_step": 500, "log_history": []}')
    (folder / "config.json").write_text('{"hidden_size": 64}')
    ckpt = tmp_path / "epoch=3-step=1000.ckpt"
    weights = [rng.normal(0, 0.02, n).astype(np.float32).tobytes() for n in (500_000, 250_000)]
    lightning = {
        "epoch": 3,
        "global_step": 1000,
        "pytorch-lightning_version": "2.4.0",
        "callbacks": {"ModelCheckpoint": {"best_model_score": 0.25}},
        "hyper_parameters": {"lr": 3e-4},
    }
    write_torch_zip(ckpt, weights, archive="epoch=3-step=1000", pickle_extra=lightning)

    with lmvp.Client(client_server.url, token, cache_dir=tmp_path / "cache") as client:
        client.update(f"{project}/hf", folder, message="checkpoint-500")
        client.update(f"{project}/lightning", ckpt)
        got_folder = client.download(f"{project}/hf:1")
        got_ckpt = client.download(f"{project}/lightning:1")
    for original in sorted(folder.iterdir()):
        assert sha256_file(got_folder / original.name) == sha256_file(original), original.name
    assert sha256_file(got_ckpt) == sha256_file(ckpt)
    # The big files were stored as their chunks (tensors, storage records), the small whole.
    for big in (ckpt, folder / "optimizer.pt", folder / "model-00001-of-00002.safetensors"):
        assert len(server_chunks(api, project, sha256_file(big))) > 2, big.name
    small = sha256_file(folder / "trainer_state.json")
    assert api.get(f"/projects/{project}/blobs/{small}/chunks").status_code == 404


def test_a_chunk_repeated_in_a_file_is_sent_once_and_written_everywhere(
    http: HTTP, project: str, tmp_path: Path
) -> None:
    path = tmp_path / "tied.safetensors"
    rng = np.random.default_rng(15)
    shared = rng.normal(0, 0.02, size=(1024, 256)).astype(np.float32)
    save_file({"embed": shared, "head": shared.copy(), "norm": np.ones(256, np.float32)}, str(path))
    size = path.stat().st_size
    seen: list[int] = []
    sent = send_chunked(http, project, path, progress=seen.append)
    assert sent.chunks == len(chunk_file(path).chunks) - 1 == sent.sent_chunks
    assert sum(seen) == size and all(n > 0 for n in seen)
    assert download(http, tmp_path / "cache", project, path).read_bytes() == path.read_bytes()
    assert list((tmp_path / "cache").glob(f"*/chunk-lists/{sent.sha256}.json"))  # by chunks


def test_a_file_the_project_holds_sends_nothing(http: HTTP, project: str, tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    write_model(path, seed=4)
    send_chunked(http, project, path)
    seen: list[int] = []
    again = send_chunked(http, project, path, progress=seen.append)
    assert again.sent_chunks == 0 and sum(seen) == path.stat().st_size


def test_a_known_hash_that_is_not_the_files_is_refused(
    http: HTTP, project: str, tmp_path: Path
) -> None:
    path = tmp_path / "model.safetensors"
    write_model(path, seed=5)
    with pytest.raises(IntegrityError, match="changed after it was hashed"):
        send_chunked(http, project, path, sha256="0" * 64)


def test_publishing_sends_big_files_as_chunks_and_lmvp_chunks_0_sends_them_whole(
    http: HTTP, project: str, api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    write_model(folder / "model.safetensors", seed=11)
    (folder / "config.json").write_text('{"layers": 40}')
    seen: list[int] = []
    files = send_files(http, project, collect_files(folder, tmp_path)[0], seen.append)
    by_name = {f.relpath: f for f in files}
    big = by_name["model.safetensors"]
    assert big.sha256 == sha256_file(big.path) and sum(seen) == sum(f.size for f in files)
    assert len(server_chunks(api, project, big.sha256)) == TENSORS + 1  # header + tensors
    small = by_name["config.json"]
    assert api.get(f"/projects/{project}/blobs/{small.sha256}/chunks").status_code == 404

    monkeypatch.setenv("LMVP_CHUNKS", "0")
    write_model(folder / "model.safetensors", seed=12)
    files = send_files(http, project, collect_files(folder, tmp_path)[0], None)
    whole = next(f for f in files if f.relpath == "model.safetensors")
    r = api.get(f"/projects/{project}/blobs/{whole.sha256}/chunks")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_chunked"
    assert missing_blobs(http, project, [whole.sha256]) == set()


# --- only what changed travels --------------------------------------------------------------------


def test_a_fine_tune_sends_only_its_changed_tensors_and_downloads_only_them(
    relayed: HTTP, relay: CountingRelay, project: str, tmp_path: Path
) -> None:
    v1, v2 = tmp_path / "v1.safetensors", tmp_path / "v2.safetensors"
    write_model(v1, seed=6)
    changed = frozenset({3, 17, 22, 38})  # 10% of the tensors
    changed_bytes = write_model(v2, seed=6, changed=changed)
    size = v2.stat().st_size
    send_chunked(relayed, project, v1)

    relay.reset_counts()
    seen: list[int] = []
    sent = send_chunked(relayed, project, v2, progress=seen.append)
    assert sent.sent_chunks == len(changed) and sent.sent_raw_bytes == changed_bytes
    assert sum(seen) == size
    assert relay.sent <= 0.15 * size  # counted on the wire, with every request's overhead

    cache_root = tmp_path / "cache"
    download(relayed, cache_root, project, v1)
    relay.reset_counts()
    blob = download(relayed, cache_root, project, v2)
    assert sha256_file(blob) == sha256_file(v2)
    assert relay.received <= 0.15 * size

    # A chunk of the cache that was damaged (a snapshot edited in place) is fetched anew.
    other = tmp_path / "v3.safetensors"
    write_model(other, seed=6, changed=frozenset({5}))
    send_chunked(relayed, project, other)
    shared = next(c for c in chunk_file(v1).chunks if c.name == "layers.30.weight")
    second_cache = tmp_path / "cache2"
    cached_v1 = download(relayed, second_cache, project, v1)
    with cached_v1.open("r+b") as f:
        f.seek(shared.offset + 100)
        f.write(b"\xff" * 8)
    relay.reset_counts()
    blob = download(relayed, second_cache, project, other)
    assert sha256_file(blob) == sha256_file(other)
    assert shared.length < relay.received <= 0.15 * size + shared.length


# --- resuming -------------------------------------------------------------------------------------


def test_an_upload_cut_mid_pack_resumes_with_the_chunks_still_missing(
    client_server: ServerProcess, token: str, project: str, tmp_path: Path
) -> None:
    path = tmp_path / "model.bin"
    size = 6 * MiB
    digest = write_noise(path, size, seed=8)
    with CountingRelay(client_server.port, cut_after=3 * MiB + 12345) as relay:
        http = HTTP(relay.url, token, retry=RetryPolicy(attempts=5, base=0.05))
        seen: list[int] = []
        sent = send_chunked(http, project, path, progress=seen.append)
        http.close()
    assert relay.cuts == 1 and sent.sha256 == digest
    assert sum(seen) == size
    # What arrived before the cut was kept: far less than the file is sent twice.
    assert relay.sent < 1.6 * size
    assert missing_blobs(HTTP(client_server.url, token), project, [digest]) == set()


def test_a_download_cut_mid_stream_resumes_with_the_chunks_still_missing(
    http: HTTP, client_server: ServerProcess, token: str, project: str, tmp_path: Path
) -> None:
    path = tmp_path / "model.bin"
    size = 6 * MiB
    write_noise(path, size, seed=9)
    send_chunked(http, project, path)
    with CountingRelay(client_server.port, cut_received_after=3 * MiB) as relay:
        through = HTTP(relay.url, token, retry=RetryPolicy(attempts=5, base=0.05))
        blob = download(through, tmp_path / "cache", project, path)
        through.close()
    assert relay.cuts == 1 and blob.read_bytes() == path.read_bytes()
    assert relay.received < 1.6 * size


def test_a_download_given_up_goes_on_later_from_the_chunks_already_in_place(
    http: HTTP, client_server: ServerProcess, token: str, project: str, tmp_path: Path
) -> None:
    path = tmp_path / "model.bin"
    size = 6 * MiB
    write_noise(path, size, seed=14)
    send_chunked(http, project, path)
    cache_root = tmp_path / "cache"
    # One relay for both calls: the cache is per server address.
    with CountingRelay(client_server.port, cut_received_after=4 * MiB) as relay:
        once = HTTP(relay.url, token, retry=RetryPolicy(attempts=1))
        with pytest.raises(ServerUnavailable):
            download(once, cache_root, project, path)
        once.close()
        relay.reset_counts()
        through = HTTP(relay.url, token, retry=RetryPolicy(attempts=5, base=0.05))
        blob = download(through, cache_root, project, path)
        through.close()
    assert blob.read_bytes() == path.read_bytes()
    assert relay.received < 0.9 * size  # what the first call wrote was verified and kept


# --- damage on the server -------------------------------------------------------------------------


def test_a_chunk_damaged_on_the_servers_disk_is_never_kept_as_good(
    http: HTTP, client_server: ServerProcess, project: str, tmp_path: Path
) -> None:
    path = tmp_path / "model.bin"
    write_noise(path, 3 * MiB, seed=10)
    sent = send_chunked(http, project, path)
    victim = max(chunk_file(path).chunks, key=lambda c: c.length)
    assert victim.kind is ChunkKind.CONTENT
    stored = [p for p in client_server.data_dir.rglob(victim.sha256) if p.is_file()]
    assert len(stored) == 1, stored
    with stored[0].open("r+b") as f:
        f.seek(os.path.getsize(stored[0]) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))

    cache = Cache(tmp_path / "cache", http.server)
    with pytest.raises(IntegrityError, match=victim.sha256) as caught:
        cache.download_blob(http, project, sent.sha256, sent.size)
    assert "nothing of it was written" in str(caught.value)
    assert not cache.blob_path(sent.sha256).exists()
    partial = cache.blobs / f"{sent.sha256}.chunks-incomplete"
    if partial.exists():  # what is kept for a retry holds no damaged byte
        kept = partial.read_bytes()[victim.offset : victim.end]
        assert kept == bytes(len(kept)) or kept == path.read_bytes()[victim.offset : victim.end]


def test_raw_chunks_of_packs_in_flight_over_https_arrive_intact(
    client_server: ServerProcess,
    token: str,
    project: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through nginx over HTTPS, as a team's server is reached, with every chunk sent raw
    (straight from the file) and many small packs in flight at once.

    Over TLS, Python's `socket.sendfile` seeks the file object and reads it; the packs' threads
    shared that object, so one pack's seek moved another's read and a chunk went out with
    other bytes: the server refused it as damaged and the publish failed, blaming the file."""
    if find_nginx() is None:
        pytest.skip("nginx is not installed (apt-get install nginx; `make test` installs it)")
    monkeypatch.setattr(chunked, "PACK_SIZE", 128 * 1024)
    monkeypatch.setattr(CompressionGovernor, "should_compress", lambda self: False)
    model = tmp_path / "model.bin"
    digest = write_noise(model, 12 * MiB, seed=41)
    proxy = NginxProxy(tmp_path / "nginx", [client_server.port])
    proxy.start()
    try:
        with trusting(proxy.cert):
            connection = HTTP(proxy.url, token, retry=RetryPolicy(attempts=2, base=0.05))
            try:
                sent = send_chunked(connection, project, model, workers=4)
                assert sent.sha256 == digest and sent.sent_chunks == sent.chunks >= 8
                assert sent.sent_frame_bytes > model.stat().st_size  # raw: headers added
                blob = download(connection, tmp_path / "cache", project, model)
                assert sha256_file(blob) == digest
            finally:
                connection.close()
    finally:
        proxy.stop()


class _MovedBetweenSeekAndRead(io.FileIO):
    """The file object the packs share, as another pack's thread leaves it: whatever this one
    seeked to, the next read happens where the other one seeked (the start)."""

    def read(self, size: int | None = -1, /) -> bytes:
        self.seek(0)
        return super().read(size)


def test_a_raw_chunk_sent_over_tls_is_read_at_its_own_offset_wherever_the_file_was_moved(
    tmp_path: Path,
) -> None:
    """The interleaving behind the damaged chunks above, pinned: another pack's seek lands
    between this pack's seek and read. The chunk must still go out with its own bytes."""
    cert, key = self_signed_certificate(tmp_path)
    data = np.random.default_rng(5).bytes(3 * MiB)
    path = tmp_path / "model.bin"
    path.write_bytes(data)
    chunk = Chunk(offset=1 * MiB + 17, length=1 * MiB + 5, sha256="", kind=ChunkKind.CONTENT)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))
    ours, theirs = socket.socketpair()
    received = bytearray()

    def serve() -> None:
        with server_context.wrap_socket(theirs, server_side=True) as tls:
            while len(received) < chunk.length and (got := tls.recv(1 << 16)):
                received.extend(got)

    reader = threading.Thread(target=serve)
    reader.start()
    with client_context.wrap_socket(ours, server_hostname="localhost") as tls:
        with _MovedBetweenSeekAndRead(path, "rb") as source:
            chunked._sendfile(tls, source, chunk, path)
        reader.join(10)
    assert bytes(received) == data[chunk.offset : chunk.offset + chunk.length]
