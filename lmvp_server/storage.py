"""Content-addressed blob storage: bytes addressed by their sha256, written atomically.

`BlobStore` is everything the server asks of a store: whether it holds a hash and how big that
blob is (`stat`, `holds`), its bytes or a range of them (`read_range`), taking a finished,
verified upload (`adopt` a local file, or `adopt_stream` from a stream) and `delete`. Downloads,
uploads and the web console reach blobs only through it, so another backend (S3, a chunk
store) is a new subclass and nothing else. `LocalBlobStore` keeps blobs in a folder (the
embedded default); `lmvp_server.s3_store.S3BlobStore` in an S3-compatible bucket;
`open_blob_store` makes the one the settings name.

Chunks (issue 17, lmvp_server/services/chunks.py) live in the same store under a key prefix of
their own, `chunks/<sha256>`: each is one frame as the client sent it (lmvp_server/chunk_frames.py
reads it), written whole or not at all (`put_chunks`), read whole (`read_chunk`; a frame is at
most a few MiB) and deleted by the garbage collector (`delete_chunks`).

A store that cannot be reached right now raises `StoreUnavailable` (answered 503 with
Retry-After, nothing stored touched); one that cannot work as configured (bad credentials, no
bucket) raises `BlobStoreConfigError` when the server starts.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import tempfile
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from lmvp_server.s3_store import S3BlobStore
    from lmvp_server.settings import Settings

# How much `read_range` reads at a time unless told otherwise.
READ_CHUNK = 1024 * 1024
# Where chunks' frames live in a store: `<root>/chunks/ab/cd/<sha256>`, `<prefix>/chunks/...`.
CHUNK_PREFIX = "chunks"
# Threads writing one batch of chunk frames at once (`LocalBlobStore.put_chunks`).
_CHUNK_WRITERS = 8
_DISCARD_PREFIX = "discard-"


class BlobMissing(Exception):
    """The store does not hold the blob (never stored, deleted, or lost underneath it)."""

    def __init__(self, sha256: str) -> None:
        super().__init__(f"the blob store holds no blob {sha256}")
        self.sha256 = sha256


class ChunkMissing(Exception):
    """The store does not hold the chunk (never stored, deleted, or lost underneath it)."""

    def __init__(self, sha256: str) -> None:
        super().__init__(f"the blob store holds no chunk {sha256}")
        self.sha256 = sha256


class StoreUnavailable(Exception):
    """The blob store cannot be reached or does not answer right now (down, overloaded, the
    network cut): the request may be retried later. Nothing the store held was changed."""

    # Seconds a client is told to wait before it tries again (HTTP Retry-After).
    retry_after = 5

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BlobStoreConfigError(Exception):
    """The blob store cannot work as configured (no credentials, refused credentials, no such
    bucket); the message names the setting to fix. Raised when the server starts."""


@dataclass(frozen=True)
class BlobStat:
    """What a store knows of a blob it holds without reading it."""

    size: int
    # When the store took the blob (seconds since the epoch), if it knows: HTTP Last-Modified.
    modified: float | None = None


class BlobStore(ABC):
    """Where verified blob bytes live. Callers check hashes before handing bytes over; a store
    trusts the name it is given. Every method may be called from any thread."""

    @abstractmethod
    def stat(self, sha256: str) -> BlobStat | None:
        """The blob's size (and when it was stored), or None when the store does not hold it."""

    def holds(self, sha256: str) -> bool:
        """Whether the store holds the blob."""
        return self.stat(sha256) is not None

    @abstractmethod
    def read_range(
        self, sha256: str, start: int, end: int, *, chunk_size: int = READ_CHUNK
    ) -> Iterator[bytes]:
        """The blob's bytes from `start` up to `end` (exclusive), in pieces of at most
        `chunk_size` bytes. Raises `BlobMissing` (at the first `next`) when the store lacks the
        blob, and OSError when the blob ends before `end`."""

    @abstractmethod
    def adopt(self, src: Path, sha256: str) -> None:
        """Take a complete, verified, fsynced local file as the blob `sha256`.

        The file is moved (or copied) into the store atomically; `src` no longer exists after.
        If the store already holds the blob, `src` is simply removed.
        """

    @abstractmethod
    def adopt_stream(self, stream: BinaryIO, sha256: str) -> None:
        """Take the verified bytes `stream` gives until its end as the blob `sha256`,
        atomically (a reader never sees part of it); nothing happens if the store holds it."""

    @abstractmethod
    def delete(self, sha256: str) -> None:
        """Remove the blob; removing a blob the store does not hold is no error."""

    def iter_blobs(self) -> Iterator[tuple[str, BlobStat]]:
        """Every blob the store holds, with its size and time, in no particular order (the
        garbage collector looks for bytes no row knows). Raises NotImplementedError for a store
        that cannot list."""
        raise NotImplementedError(f"{type(self).__name__} cannot list its blobs")

    def delete_many(self, hashes: list[str]) -> None:
        """Remove these blobs (the garbage collector's batches); as `delete` for each unless a
        store can do better."""
        for sha256 in hashes:
            self.delete(sha256)

    def presigned_url(self, sha256: str, seconds: int) -> str | None:
        """A URL from which anyone holding it may GET the blob's bytes (Range allowed) for
        `seconds`, without the server, or None when the store cannot give one (a folder)."""
        return None

    # --- chunks: one frame per chunk at `chunks/<sha256>` ---------------------------------------

    @abstractmethod
    def put_chunks(self, frames: Sequence[tuple[str, bytes]]) -> None:
        """Store each verified `(sha256, frame)`, durably and atomically (a reader never sees
        part of a frame), replacing a frame the store holds under that hash."""

    @abstractmethod
    def read_chunk(self, sha256: str) -> bytes:
        """The frame stored for chunk `sha256`; raises `ChunkMissing` when there is none."""

    @abstractmethod
    def delete_chunks(self, hashes: list[str]) -> None:
        """Remove these chunks' frames; removing one the store does not hold is no error."""


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable (POSIX needs the directory fsynced too)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBlobStore(BlobStore):
    """Blobs as files `<root>/ab/cd/<sha256>`, made by temp file + fsync + rename."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._tmp = root / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True, mode=0o700)
        for left in self._tmp.glob(f"{_DISCARD_PREFIX}*"):
            left.unlink(missing_ok=True)

    def stat(self, sha256: str) -> BlobStat | None:
        try:
            st = os.stat(self._path(sha256))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return BlobStat(size=st.st_size, modified=st.st_mtime)

    def read_range(
        self, sha256: str, start: int, end: int, *, chunk_size: int = READ_CHUNK
    ) -> Iterator[bytes]:
        try:
            fd = os.open(self._path(sha256), os.O_RDONLY)
        except FileNotFoundError:
            raise BlobMissing(sha256) from None
        try:
            position = start
            while position < end:
                chunk = os.pread(fd, min(chunk_size, end - position), position)
                if not chunk:
                    raise OSError(f"blob {sha256} ends at byte {position}, before byte {end}")
                position += len(chunk)
                yield chunk
        finally:
            os.close(fd)

    def adopt(self, src: Path, sha256: str) -> None:
        dst = self._path(sha256)
        if dst.is_file():
            self._discard(src)
            return
        self._make_parents(dst)
        try:
            os.replace(src, dst)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # The upload folder is on another file system: copy beside the destination.
            with src.open("rb") as inp:
                self._write_atomically(inp, dst)
            src.unlink()
        fsync_dir(dst.parent)

    def adopt_stream(self, stream: BinaryIO, sha256: str) -> None:
        dst = self._path(sha256)
        if dst.is_file():
            return
        self._make_parents(dst)
        self._write_atomically(stream, dst)
        fsync_dir(dst.parent)

    def delete(self, sha256: str) -> None:
        path = self._path(sha256)
        if path.is_file():
            self._discard(path)

    def delete_many(self, hashes: list[str]) -> None:
        """Renamed out of the way at once, unlinked by one thread for the lot (see `_discard`)."""
        gone = []
        for sha256 in hashes:
            trash = self._tmp / f"{_DISCARD_PREFIX}{uuid.uuid4().hex}"
            try:
                os.rename(self._path(sha256), trash)
            except FileNotFoundError:
                continue
            except OSError:
                self.delete(sha256)
                continue
            gone.append(trash)

        def unlink_all() -> None:
            for path in gone:
                path.unlink(missing_ok=True)

        if gone:
            threading.Thread(target=unlink_all, daemon=True).start()

    def iter_blobs(self) -> Iterator[tuple[str, BlobStat]]:
        for first in os.scandir(self.root):
            if len(first.name) != 2 or not first.is_dir():
                continue  # tmp/
            for second in os.scandir(first.path):
                for entry in os.scandir(second.path):
                    if len(entry.name) == 64 and entry.name.startswith(first.name + second.name):
                        try:
                            st = entry.stat()
                        except FileNotFoundError:
                            continue  # deleted meanwhile
                        yield entry.name, BlobStat(size=st.st_size, modified=st.st_mtime)

    def put_chunks(self, frames: Sequence[tuple[str, bytes]]) -> None:
        """Each frame written and fsynced on a thread of a few: the file system commits their
        journal entries together (one by one, 64 KiB chunks went to disk at 36 MiB/s)."""

        def put(item: tuple[str, bytes]) -> None:
            dst = self._chunk_path(item[0])
            self._make_parents(dst, chunks=True)
            self._write_atomically(io.BytesIO(item[1]), dst)
            fsync_dir(dst.parent)

        if len(frames) > 1:
            with ThreadPoolExecutor(min(len(frames), _CHUNK_WRITERS)) as pool:
                list(pool.map(put, frames))
        else:
            for item in frames:
                put(item)

    def read_chunk(self, sha256: str) -> bytes:
        try:
            return self._chunk_path(sha256).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise ChunkMissing(sha256) from None

    def delete_chunks(self, hashes: list[str]) -> None:
        for sha256 in hashes:
            self._chunk_path(sha256).unlink(missing_ok=True)

    def _path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def _chunk_path(self, sha256: str) -> Path:
        return self.root / CHUNK_PREFIX / sha256[:2] / sha256[2:4] / sha256

    @staticmethod
    def _make_parents(dst: Path, *, chunks: bool = False) -> None:
        if chunks:
            dst.parent.parent.parent.mkdir(exist_ok=True, mode=0o700)
        dst.parent.parent.mkdir(exist_ok=True, mode=0o700)
        dst.parent.mkdir(exist_ok=True, mode=0o700)

    def _write_atomically(self, stream: BinaryIO, dst: Path) -> None:
        """Copy `stream` to a temp name, fsync, then rename to `dst`: a reader never sees a
        partial blob."""
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp)
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(stream, out, READ_CHUNK)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp_name, dst)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def _discard(self, path: Path) -> None:
        """Delete a file the store does not need (bytes it already holds, or a deleted blob),
        without waiting: removing a large file means dropping its pages from the cache, a
        quarter of a second for 1 GiB. It is renamed out of the way at once and unlinked by a
        thread; names left by a server that stopped first are removed at the next start."""
        trash = self._tmp / f"{_DISCARD_PREFIX}{uuid.uuid4().hex}"
        try:
            os.rename(path, trash)
        except OSError:  # another file system: remove it here
            path.unlink(missing_ok=True)
            return
        threading.Thread(target=trash.unlink, kwargs={"missing_ok": True}, daemon=True).start()


_s3_stores: dict[tuple[str, ...], S3BlobStore] = {}
_s3_stores_lock = threading.Lock()


def _credential_key() -> str:
    """What names the credentials a new client would find in the environment."""
    return "|".join(os.environ.get(k, "") for k in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE"))


def open_blob_store(settings: Settings, *, check: bool = False) -> BlobStore:
    """The store `LMVP_BLOB_STORE` names: the local folder, or a bucket. With `check`, an S3
    store is tried first (credentials, the bucket, created if `LMVP_S3_CREATE_BUCKET` allows)
    and `BlobStoreConfigError` says what to fix."""
    location = settings.s3_location
    if location is None:
        return LocalBlobStore(settings.blob_dir)
    from lmvp_server.s3_store import S3BlobStore

    # One client per process and store: `serve` checks the store and then builds the app with
    # it, and making a boto3 client costs a good part of a second.
    key = (str(location), settings.s3_endpoint_url, settings.s3_region, _credential_key())
    with _s3_stores_lock:
        store = _s3_stores.get(key)
        if store is None:
            store = _s3_stores[key] = S3BlobStore.from_settings(settings)
    if check:
        store.check(create_bucket=settings.s3_create_bucket)
    return store


__all__ = [
    "CHUNK_PREFIX",
    "READ_CHUNK",
    "BlobMissing",
    "BlobStat",
    "BlobStore",
    "BlobStoreConfigError",
    "ChunkMissing",
    "LocalBlobStore",
    "StoreUnavailable",
    "fsync_dir",
    "open_blob_store",
]
