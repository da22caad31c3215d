"""The local cache (`lmvp.cache`) against a real server: downloads are verified, resumed with
Range (also in a new process), fetched once however many processes ask, repaired when the cache
is damaged, and a manifest from the server can never write outside the version's folder."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lmvp._http import HTTP, RetryPolicy
from lmvp.cache import Cache, safe_relative_path, server_slug
from lmvp.errors import IntegrityError, NotCached
from lmvp.transfer import upload_file
from lmvp.types import FileEntry, Version
from tests.client import worker
from tests.client.relay import CountingRelay
from tests.support import Api, ServerProcess, sha256_file, write_random_file

MiB = 1024 * 1024


def publish(http: HTTP, api: Api, project: str, files: dict[str, Path]) -> Version:
    """Upload `files` (manifest path → local file) and commit them as a new model's version 1."""
    manifest = []
    for name, path in files.items():
        digest, size = sha256_file(path), path.stat().st_size
        upload_file(http, project, path, sha256=digest, size=size, state_dir=path.parent / "st")
        manifest.append({"path": name, "size": size, "sha256": digest})
    assert api.post(f"/projects/{project}/models", json={"name": "net"}).status_code == 201
    r = api.post(f"/projects/{project}/models/net/versions", json={"files": manifest})
    assert r.status_code == 201, r.text
    return Version.from_json(r.json())


def blob_on_server(tmp_path: Path, project: str, http: HTTP, size: int, seed: int) -> str:
    src = tmp_path / f"blob-{seed}.bin"
    digest = write_random_file(src, size, seed=seed)
    upload_file(http, project, src, sha256=digest, size=size, state_dir=tmp_path / "st")
    return digest


def test_cache_is_laid_out_per_server_with_blobs_named_by_hash(tmp_path: Path) -> None:
    cache = Cache(tmp_path, "http://10.0.0.5:8000/lmvp/")
    sha = "ab" * 32
    assert cache.blob_path(sha) == tmp_path / "http--10.0.0.5-8000--lmvp" / "blobs" / sha
    assert server_slug("https://models.example.org") == "https--models.example.org"
    with pytest.raises(IntegrityError):
        cache.blob_path("../../etc/passwd")


def test_second_download_of_a_cached_blob_moves_no_bytes(
    http: HTTP, project: str, token: str, tmp_path: Path, client_server: ServerProcess
) -> None:
    size = 4 * MiB
    digest = blob_on_server(tmp_path, project, http, size, seed=20)
    cache = Cache(tmp_path / "cache", client_server.url)
    with CountingRelay(client_server.port) as relay:
        through_relay = HTTP(relay.url, token)
        path = cache.download_blob(through_relay, project, digest, size)
        assert sha256_file(path) == digest
        assert size <= relay.received < size + 64 * 1024
        assert not list(cache.blobs.glob("*.incomplete"))

        relay.reset_counts()
        assert cache.download_blob(through_relay, project, digest, size) == path
        assert relay.received == 0 and relay.sent == 0


def test_interrupted_download_resumes_in_a_new_process_with_range(
    http: HTTP, project: str, token: str, tmp_path: Path, client_server: ServerProcess
) -> None:
    size = 64 * MiB
    digest = blob_on_server(tmp_path, project, http, size, seed=21)
    cache = Cache(tmp_path / "cache", client_server.url)
    code, _, err = worker.run(
        action="download",
        server=client_server.url,
        token=token,
        cache=str(cache.root),
        cache_server=client_server.url,
        project=project,
        sha256=digest,
        size=size,
        die_after=size // 2,
    )
    assert code == worker.CRASHED, err
    partial = cache.blobs / f"{digest}.incomplete"
    kept = partial.stat().st_size
    assert size // 2 <= kept < size
    assert not cache.has_blob(digest, size)

    with CountingRelay(client_server.port) as relay:
        progress: list[int] = []
        path = cache.download_blob(
            HTTP(relay.url, token), project, digest, size, progress=progress.append
        )
        # Only the remainder crossed the network; the kept prefix was hashed from disk.
        assert size - kept <= relay.received < size - kept + 64 * 1024
    assert progress[0] == kept and sum(progress) == size
    assert sha256_file(path) == digest
    assert not partial.exists()


def test_corrupted_cached_blob_is_detected_by_verify_and_fetched_again(
    http: HTTP, api: Api, project: str, tmp_path: Path
) -> None:
    src = tmp_path / "model.safetensors"
    write_random_file(src, 3 * MiB, seed=22)
    version = publish(http, api, project, {"model.safetensors": src})
    cache = Cache(tmp_path / "cache", http.server)
    folder = cache.download_version(http, version)
    digest = version.files[0].sha256
    assert cache.verify_blob(digest)

    with cache.blob_path(digest).open("r+b") as f:  # a bit flips on disk
        f.seek(MiB)
        byte = f.read(1)
        f.seek(MiB)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(IntegrityError, match="damaged"):
        cache.snapshot(version, verify=True)
    assert not cache.blob_path(digest).exists()  # removed, so the next download repairs it
    with pytest.raises(NotCached):
        cache.snapshot(version)

    fetched: list[int] = []
    assert cache.download_version(http, version, progress=fetched.append) == folder
    assert sum(fetched) == 3 * MiB
    assert sha256_file(folder / "model.safetensors") == digest
    assert cache.verify_blob(digest)


def test_damaged_bytes_from_the_server_are_refused_after_one_retry(
    http: HTTP, project: str, tmp_path: Path, client_server: ServerProcess
) -> None:
    size = 2 * MiB
    digest = blob_on_server(tmp_path, project, http, size, seed=23)
    [stored] = (client_server.data_dir / "blobs").rglob(digest)
    data = bytearray(stored.read_bytes())
    data[100] ^= 0xFF  # the server's disk went bad
    stored.write_bytes(bytes(data))

    cache = Cache(tmp_path / "cache", client_server.url)
    with pytest.raises(IntegrityError, match="arrived damaged"):
        cache.download_blob(http, project, digest, size)
    assert not cache.blob_path(digest).exists()
    assert not (cache.blobs / f"{digest}.incomplete").exists()


def test_two_processes_downloading_one_blob_both_get_a_verified_file(
    http: HTTP, project: str, token: str, tmp_path: Path, client_server: ServerProcess
) -> None:
    size = 48 * MiB
    digest = blob_on_server(tmp_path, project, http, size, seed=24)
    cache = Cache(tmp_path / "cache", client_server.url)
    with CountingRelay(client_server.port) as relay:
        job = {
            "action": "download",
            "server": relay.url,
            "token": token,
            "cache": str(cache.root),
            "cache_server": client_server.url,
            "project": project,
            "sha256": digest,
            "size": size,
        }
        procs = [worker.start(**job) for _ in range(2)]
        results = [p.communicate(timeout=120) for p in procs]
        # The second process waited for the first and found the blob in place.
        assert relay.received < size + MiB
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
        assert f'"sha256": "{digest}"' in out
    assert sha256_file(cache.blob_path(digest)) == digest


def test_snapshot_links_version_files_and_materialize_copies_them(
    http: HTTP, api: Api, project: str, tmp_path: Path
) -> None:
    (tmp_path / "src").mkdir()
    a, b = tmp_path / "src" / "a.bin", tmp_path / "src" / "b.json"
    write_random_file(a, MiB + 1, seed=25)
    b.write_text('{"step": 500}')
    version = publish(http, api, project, {"model/weights.bin": a, "config.json": b})
    cache = Cache(tmp_path / "cache", http.server)

    folder = cache.download_version(http, version, verify=True)
    assert folder == cache.snapshots / project / "net" / "1"
    weights = folder / "model" / "weights.bin"
    assert weights.read_bytes() == a.read_bytes()
    assert (folder / "config.json").read_text() == '{"step": 500}'
    assert os.path.samefile(weights, cache.blob_path(version.files[0].sha256))

    out = cache.materialize(version, tmp_path / "out")
    assert (out / "model" / "weights.bin").read_bytes() == a.read_bytes()
    assert not os.path.samefile(out / "model" / "weights.bin", weights)  # edits stay local


@pytest.mark.parametrize(
    "hostile",
    ["/etc/passwd", "../escape.bin", "a/../../escape.bin", "a//b", "./a", "a\\..\\b", "", "a/"],
)
def test_hostile_manifest_paths_are_refused(tmp_path: Path, hostile: str) -> None:
    cache = Cache(tmp_path / "cache", "http://127.0.0.1:1")
    blob = cache.blob_path("0" * 64)
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"x")
    version = Version(
        project="p",
        model="m",
        number=1,
        message="",
        metadata={},
        metrics={},
        author=None,
        parent=None,
        aliases=(),
        size=1,
        files=(FileEntry(hostile, 1, "0" * 64),),
        source_host="",
        source_path="",
        created_at=datetime.now(UTC),
    )
    with pytest.raises(IntegrityError, match="outside"):
        safe_relative_path(hostile)
    with pytest.raises(IntegrityError):
        cache.snapshot(version)
    with pytest.raises(IntegrityError):
        cache.materialize(version, tmp_path / "out")
    with pytest.raises(IntegrityError):
        cache.download_version(HTTP("http://127.0.0.1:1", None), version)
    assert (
        not (tmp_path / "escape.bin").exists() and not (tmp_path / "cache" / "escape.bin").exists()
    )


def test_hostile_project_names_are_refused(tmp_path: Path) -> None:
    cache = Cache(tmp_path, "http://127.0.0.1:1")
    version = Version.from_json(
        {
            "project": "..",
            "model": "m",
            "number": 1,
            "files": [],
            "created_at": "2026-01-01T00:00:00Z",
        }
    )
    with pytest.raises(IntegrityError):
        cache.snapshot(version)


def test_dropped_download_connection_resumes_within_the_call(
    http: HTTP, project: str, token: str, tmp_path: Path, client_server: ServerProcess
) -> None:
    size = 16 * MiB
    digest = blob_on_server(tmp_path, project, http, size, seed=26)
    cache = Cache(tmp_path / "cache", client_server.url)
    with CountingRelay(client_server.port, cut_received_after=size // 2) as relay:
        flaky = HTTP(relay.url, token, retry=RetryPolicy(attempts=5, base=0.05))
        path = cache.download_blob(flaky, project, digest, size)
        assert relay.cuts == 1
        # Resumed with Range where the connection dropped, not fetched again from the start.
        assert size <= relay.received < size + MiB
    assert sha256_file(path) == digest
