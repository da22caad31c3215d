"""The blob store seam (lmvp_server/storage.py): what the routers ask of any store, checked
against the local one on a real folder, so that another store (S3, chunks) has a specification
to pass."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from lmvp_server.storage import BlobMissing, BlobStore, LocalBlobStore


def _store(tmp_path: Path) -> BlobStore:
    return LocalBlobStore(tmp_path / "blobs")


def _upload(tmp_path: Path, data: bytes) -> tuple[Path, str]:
    path = tmp_path / "partial"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def test_adopted_upload_is_held_with_its_size_and_the_file_is_taken(tmp_path: Path) -> None:
    store = _store(tmp_path)
    data = os.urandom(3 * 1024 * 1024 + 5)
    path, sha256 = _upload(tmp_path, data)

    assert not store.holds(sha256) and store.stat(sha256) is None
    store.adopt(path, sha256)

    held = store.stat(sha256)
    assert held is not None and held.size == len(data)
    assert store.holds(sha256)
    assert not path.exists()


def test_range_reader_gives_exactly_the_bytes_asked_in_bounded_pieces(tmp_path: Path) -> None:
    store = _store(tmp_path)
    data = os.urandom(2 * 1024 * 1024 + 17)
    path, sha256 = _upload(tmp_path, data)
    store.adopt(path, sha256)

    pieces = list(store.read_range(sha256, 1000, len(data) - 3, chunk_size=64 * 1024))

    assert b"".join(pieces) == data[1000:-3]
    assert max(len(p) for p in pieces) == 64 * 1024
    assert b"".join(store.read_range(sha256, 0, 0)) == b""


def test_stream_is_adopted_atomically_and_a_held_blob_is_not_written_again(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)
    data = os.urandom(100_000)
    sha256 = hashlib.sha256(data).hexdigest()

    store.adopt_stream(io.BytesIO(data), sha256)
    store.adopt_stream(io.BytesIO(b"other bytes"), sha256)

    assert b"".join(store.read_range(sha256, 0, len(data))) == data
    assert not list((tmp_path / "blobs" / "tmp").iterdir())


def test_deleted_blob_is_missing_and_reading_it_says_so(tmp_path: Path) -> None:
    store = _store(tmp_path)
    path, sha256 = _upload(tmp_path, b"checkpoint bytes")
    store.adopt(path, sha256)

    store.delete(sha256)
    store.delete(sha256)  # deleting what is not held is no error

    assert not store.holds(sha256)
    with pytest.raises(BlobMissing, match=sha256):
        next(store.read_range(sha256, 0, 1))
