"""Uploads with `lmvp.transfer` against a real server: tus, resumable across dropped
connections and processes, parallel, and refused when the bytes are not the declared ones."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pytest

from lmvp._http import HTTP, RetryPolicy
from lmvp.cache import Cache
from lmvp.errors import IntegrityError
from lmvp.transfer import (
    hash_file,
    missing_blobs,
    server_is_local,
    upload_file,
    upload_files,
    upload_unhashed,
)
from tests.client import worker
from tests.client.relay import CountingRelay
from tests.support import Api, ServerProcess, sha256_file, write_random_file

MiB = 1024 * 1024


def test_hash_file_matches_hashlib_and_reports_every_byte(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    digest = write_random_file(path, 9 * MiB + 123, seed=1)
    seen: list[int] = []
    assert hash_file(path, progress=seen.append) == digest
    assert sum(seen) == 9 * MiB + 123
    empty = tmp_path / "empty"
    empty.touch()
    assert hash_file(empty) == hashlib.sha256(b"").hexdigest()


def test_uploaded_file_downloads_back_with_the_same_sha256(
    http: HTTP, project: str, tmp_path: Path, client_server: ServerProcess
) -> None:
    src = tmp_path / "model.safetensors"
    size = 5 * MiB + 7
    digest = write_random_file(src, size, seed=2)
    assert missing_blobs(http, project, [digest]) == {digest}

    sent: list[int] = []
    upload_file(
        http, project, src, sha256=digest, size=size, progress=sent.append, state_dir=tmp_path
    )
    assert sum(sent) == size
    assert missing_blobs(http, project, [digest]) == set()
    assert list(tmp_path.glob("*.json")) == []  # a finished upload leaves no state behind

    cache = Cache(tmp_path / "cache", client_server.url)
    got: list[int] = []
    path = cache.download_blob(http, project, digest, size, progress=got.append)
    assert path == cache.blob_path(digest)
    assert sha256_file(path) == digest and sum(got) == size


def test_empty_file_uploads(http: HTTP, project: str, tmp_path: Path) -> None:
    src = tmp_path / "empty.bin"
    src.touch()
    digest = hashlib.sha256(b"").hexdigest()
    upload_file(http, project, src, sha256=digest, size=0, state_dir=tmp_path)
    assert missing_blobs(http, project, [digest]) == set()


def test_missing_blobs_asks_in_batches_and_names_only_what_the_project_lacks(
    http: HTTP, project: str, tmp_path: Path
) -> None:
    src = tmp_path / "a.bin"
    held = write_random_file(src, 1000, seed=3)
    upload_file(http, project, src, sha256=held, size=1000, state_dir=tmp_path)
    # More than the server takes in one request (10,000).
    unknown = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(10_005)]
    assert missing_blobs(http, project, [held, *unknown]) == set(unknown)


def test_upload_files_sends_several_in_parallel_with_one_progress_total(
    http: HTTP, project: str, tmp_path: Path
) -> None:
    files = []
    for i in range(6):
        path = tmp_path / f"shard-{i}.bin"
        size = MiB + i * 1000
        files.append((path, write_random_file(path, size, seed=10 + i), size))
    files.append(files[0])  # the same bytes twice are sent once
    total: list[int] = []
    upload_files(http, project, files, parallel=3, progress=total.append, state_dir=tmp_path)
    assert sum(total) == sum(size for _, _, size in files[:6])
    assert missing_blobs(http, project, [sha for _, sha, _ in files]) == set()


def test_dropped_connection_mid_upload_resumes_from_server_offset(
    project: str, token: str, tmp_path: Path, client_server: ServerProcess
) -> None:
    src = tmp_path / "big.bin"
    size = 32 * MiB
    digest = write_random_file(src, size, seed=4)
    with CountingRelay(client_server.port, cut_after=size // 2) as relay:
        http = HTTP(relay.url, token, retry=RetryPolicy(attempts=5, base=0.05))
        position: list[int] = []
        upload_file(
            http,
            project,
            src,
            sha256=digest,
            size=size,
            progress=position.append,
            state_dir=tmp_path,
        )
        assert relay.cuts == 1
        # Sent again from the start, the file would cross the relay one and a half times;
        # resumed at the server's offset, it crosses once, plus what the server never got:
        # bytes in its socket buffer and uvicorn's when the connection dropped (4 MiB seen
        # with a busy server).
        assert size <= relay.sent < size + 8 * MiB
    assert sum(position) == size  # a rewind is reported as a negative step
    assert missing_blobs(HTTP(client_server.url, token), project, [digest]) == set()


def test_upload_resumes_in_a_new_process_from_the_state_file(
    project: str, token: str, tmp_path: Path, client_server: ServerProcess
) -> None:
    src = tmp_path / "big.bin"
    size = 64 * MiB
    digest = write_random_file(src, size, seed=5)
    state_dir = tmp_path / "state"
    with CountingRelay(client_server.port) as relay:
        code, _, err = worker.run(
            action="upload",
            server=relay.url,
            token=token,
            project=project,
            path=str(src),
            sha256=digest,
            size=size,
            state_dir=str(state_dir),
            die_after=size * 3 // 4,
        )
        assert code == worker.CRASHED, err
        [state] = state_dir.glob("*.json")
        assert json.loads(state.read_text())["sha256"] == digest
        # The dead process's bytes in flight reach the server before the new one starts, as
        # they would long before a person starts it again. (Started at once, the new process
        # takes the upload over from the request still reading them, and sends again what
        # that request had not read: up to 38 MiB of these 48 in a busy CI run.)
        relay.wait_idle()
        delivered = relay.sent

        relay.reset_counts()
        upload_file(
            HTTP(relay.url, token), project, src, sha256=digest, size=size, state_dir=state_dir
        )
        # Resumed where the server's bytes end, not restarted (a restart sends all 64 MiB).
        assert delivered >= size * 3 // 4
        assert relay.sent <= size - delivered + 64 * 1024  # the rest, and the requests' heads
    assert list(state_dir.glob("*.json")) == []
    assert missing_blobs(HTTP(client_server.url, token), project, [digest]) == set()


def test_file_changed_while_uploading_raises_integrity_error(
    http: HTTP, project: str, tmp_path: Path
) -> None:
    src = tmp_path / "changing.bin"
    declared = write_random_file(src, 2 * MiB, seed=6)
    write_random_file(src, 2 * MiB, seed=7)  # rewritten after it was hashed
    with pytest.raises(IntegrityError, match="changed while it was uploaded"):
        upload_file(http, project, src, sha256=declared, size=2 * MiB, state_dir=tmp_path)
    assert missing_blobs(http, project, [declared]) == {declared}
    assert list(tmp_path.glob("*.json")) == []  # the next try starts a fresh upload


def test_upload_the_server_forgot_starts_over(
    project: str, token: str, tmp_path: Path, client_server: ServerProcess
) -> None:
    src = tmp_path / "big.bin"
    # The client reports progress after each sendfile slice (16 MiB): a 16 MiB file was all
    # queued before the worker could die at half of it, and the server stored it whole unless
    # the DELETE below won that race. Dying at the first report past 8 MiB of 32 leaves at
    # least 8 MiB (with 16 MiB slices, 16) never sent, so the upload stays unfinished.
    size = 32 * MiB
    digest = write_random_file(src, size, seed=8)
    state_dir = tmp_path / "state"
    with CountingRelay(client_server.port) as relay:
        code, _, err = worker.run(
            action="upload",
            server=relay.url,
            token=token,
            project=project,
            path=str(src),
            sha256=digest,
            size=size,
            state_dir=str(state_dir),
            die_after=size // 4,
        )
        assert code == worker.CRASHED, err
        # What the dead process left in flight reaches the server first, as it would long
        # before anyone starts the upload again (else it is still counted below).
        relay.wait_idle()
        [state] = state_dir.glob("*.json")
        # The server drops the half-done upload (as its expiry does); HEAD now answers 404.
        url = json.loads(state.read_text())["url"]
        forgotten = Api(client_server.url, token).http.delete(
            client_server.url + url, headers={"Tus-Resumable": "1.0.0"}
        )
        assert forgotten.status_code == 204

        relay.reset_counts()
        upload_file(
            HTTP(relay.url, token), project, src, sha256=digest, size=size, state_dir=state_dir
        )
        assert size <= relay.sent < size + MiB
    assert list(state_dir.glob("*.json")) == []
    assert missing_blobs(HTTP(client_server.url, token), project, [digest]) == set()


# --- sending while hashing ----------------------------------------------------------------------


@pytest.mark.parametrize("hash_here", [True, False], ids=["hashed-here-too", "server-hash"])
def test_upload_without_hashing_first_stores_the_file_and_returns_its_sha256(
    http: HTTP, project: str, tmp_path: Path, hash_here: bool
) -> None:
    src = tmp_path / "new.bin"
    digest = write_random_file(src, 20 * MiB + 7, seed=20)
    position: list[int] = []
    returned = upload_unhashed(
        http,
        project,
        src,
        size=20 * MiB + 7,
        progress=position.append,
        state_dir=tmp_path,
        hash_here=hash_here,
    )
    assert returned == digest
    assert sum(position) == 20 * MiB + 7
    assert missing_blobs(http, project, [digest]) == set()
    assert list(tmp_path.glob("*.json")) == []


def test_upload_while_hashing_stops_once_the_hash_shows_the_project_holds_the_bytes(
    project: str, token: str, tmp_path: Path, client_server: ServerProcess
) -> None:
    src = tmp_path / "held.bin"
    size = 64 * MiB
    digest = write_random_file(src, size, seed=21)
    upload_file(HTTP(client_server.url, token), project, src, sha256=digest, size=size)
    # A link of 25 MB/s: hashing the file (and asking the server about the hash) is many times
    # faster than sending it, also on a loaded machine (at 100 MB/s, with a load of 5-10 on two
    # cores, the hash came after 32 to 64 of the 64 MiB had gone out).
    with CountingRelay(client_server.port, rate=25e6) as relay:
        position: list[int] = []
        assert (
            upload_unhashed(
                HTTP(relay.url, token),
                project,
                src,
                size=size,
                progress=position.append,
                state_dir=tmp_path,
                hash_here=True,
            )
            == digest
        )
        # Most of the file never goes out; the progress still adds up to the whole file.
        assert relay.sent < size // 2
    assert sum(position) == size
    assert list((client_server.data_dir / "uploads").iterdir()) == []  # the upload was aborted


@pytest.mark.parametrize("hash_here", [True, False], ids=["hashed-here-too", "server-hash"])
def test_upload_without_hashing_first_resumes_from_server_offset_after_a_dropped_connection(
    project: str, token: str, tmp_path: Path, client_server: ServerProcess, hash_here: bool
) -> None:
    src = tmp_path / "big.bin"
    size = 32 * MiB
    digest = write_random_file(src, size, seed=22)
    with CountingRelay(client_server.port, cut_after=size // 2) as relay:
        http = HTTP(relay.url, token, retry=RetryPolicy(attempts=5, base=0.05))
        sent = upload_unhashed(
            http, project, src, size=size, state_dir=tmp_path, hash_here=hash_here
        )
        assert sent == digest
        assert relay.cuts == 1
        # Resumed, not restarted: a restart from zero would send the 16 MiB before the cut
        # again. What is sent twice is only what the server never got: bytes still in its
        # socket buffer and uvicorn's, which a dropped connection discards (0.1-1 MiB on a
        # quiet machine, 4 MiB with a busy server in the fresh root), so the bound leaves room.
        assert size <= relay.sent < size + 8 * MiB
    assert missing_blobs(HTTP(client_server.url, token), project, [digest]) == set()


@pytest.mark.parametrize("hash_here", [True, False], ids=["hashed-here-too", "server-hash"])
def test_file_rewritten_while_it_is_uploaded_unhashed_raises_integrity_error(
    http: HTTP, project: str, tmp_path: Path, hash_here: bool
) -> None:
    src = tmp_path / "changing.bin"
    write_random_file(src, 8 * MiB, seed=23)
    before = src.stat()
    stop = threading.Event()

    def rewrite() -> None:
        while not stop.is_set():
            with src.open("r+b") as f:
                f.write(os.urandom(4096))
            time.sleep(0.001)

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        with pytest.raises(IntegrityError, match="changed while it was uploaded"):
            upload_unhashed(
                http, project, src, size=before.st_size, state_dir=tmp_path, hash_here=hash_here
            )
    finally:
        stop.set()
        writer.join()


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("http://127.0.0.1:8470", True),
        ("http://127.3.4.5", True),
        ("http://[::1]:8470", True),
        ("http://localhost:8470/lmvp", True),
        ("https://lmvp.example.org", False),
        ("http://10.0.0.7:8470", False),
    ],
)
def test_only_a_server_on_this_machine_counts_as_local(url: str, local: bool) -> None:
    assert server_is_local(HTTP(url, None)) is local
