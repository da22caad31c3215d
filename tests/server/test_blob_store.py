"""The blob store seam (lmvp_server/storage.py): what the routers ask of any store, checked
against each backend: the local one on a real folder and the S3 one on a real SeaweedFS
(tests/s3.py), so that another store (chunks) has a specification to pass."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from lmvp_server.s3 import S3Location
from lmvp_server.s3_store import S3BlobStore
from lmvp_server.storage import BlobMissing, BlobStore, LocalBlobStore
from tests.s3 import BUCKET, SeaweedFS
from tests.support import unique

STORES = ["local", "s3"]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    """The store under test: a folder, or a prefix of its own in the session's bucket."""
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    weed: SeaweedFS = request.getfixturevalue("seaweedfs")
    location = S3Location(BUCKET, unique("store-test"))
    return S3BlobStore(weed.client(), location, endpoint=weed.endpoint_url)


def _upload(tmp_path: Path, data: bytes) -> tuple[Path, str]:
    path = tmp_path / "partial"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def test_adopted_upload_is_held_with_its_size_and_the_file_is_taken(
    tmp_path: Path, store: BlobStore
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    path, sha256 = _upload(tmp_path, data)

    assert not store.holds(sha256) and store.stat(sha256) is None
    store.adopt(path, sha256)

    held = store.stat(sha256)
    assert held is not None and held.size == len(data)
    assert store.holds(sha256)
    assert not path.exists()


def test_range_reader_gives_exactly_the_bytes_asked_in_bounded_pieces(
    tmp_path: Path, store: BlobStore
) -> None:
    data = os.urandom(2 * 1024 * 1024 + 17)
    path, sha256 = _upload(tmp_path, data)
    store.adopt(path, sha256)

    pieces = list(store.read_range(sha256, 1000, len(data) - 3, chunk_size=64 * 1024))

    assert b"".join(pieces) == data[1000:-3]
    assert max(len(p) for p in pieces) == 64 * 1024
    assert b"".join(store.read_range(sha256, 0, 0)) == b""


def test_stream_is_adopted_atomically_and_a_held_blob_is_not_written_again(
    tmp_path: Path, store: BlobStore
) -> None:
    data = os.urandom(100_000)
    sha256 = hashlib.sha256(data).hexdigest()

    store.adopt_stream(io.BytesIO(data), sha256)
    store.adopt_stream(io.BytesIO(b"other bytes"), sha256)

    assert b"".join(store.read_range(sha256, 0, len(data))) == data
    if isinstance(store, LocalBlobStore):
        assert not list((tmp_path / "blobs" / "tmp").iterdir())


def test_deleted_blob_is_missing_and_reading_it_says_so(tmp_path: Path, store: BlobStore) -> None:
    path, sha256 = _upload(tmp_path, b"checkpoint bytes")
    store.adopt(path, sha256)

    store.delete(sha256)
    store.delete(sha256)  # deleting what is not held is no error

    assert not store.holds(sha256)
    with pytest.raises(BlobMissing, match=sha256):
        next(store.read_range(sha256, 0, 1))
