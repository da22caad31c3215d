"""Appending a request body to an upload's partial file while hashing it, at disk speed.

The event loop receives the body; one worker thread hashes it and another writes it. Chunks
are gathered into batches of a few MiB so that thread hops are rare, and at most two batches are
in flight, which bounds memory per upload. hashlib and pwritev release the GIL, so receiving,
hashing and writing overlap on separate cores.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

BUFFER_BYTES = 4 * 1024 * 1024
_MAX_IN_FLIGHT = 2
# Below the kernel's IOV_MAX (1024) for one pwritev.
_MAX_IOVECS = 512
_HASH_CACHE_SIZE = 1024


class UploadBusy(Exception):
    """Another request is appending to this upload right now."""


class HashCache:
    """The running sha256 of recent uploads, keyed by upload id and offset.

    hashlib state cannot be saved, so after a restart (or on another worker) the partial file is
    hashed again from disk; the cache makes the common case, the next PATCH in this process, free.
    """

    def __init__(self) -> None:
        self._entries: OrderedDict[str, tuple[int, Any]] = OrderedDict()

    def take(self, upload_id: str, offset: int) -> Any | None:
        entry = self._entries.pop(upload_id, None)
        if entry is not None and entry[0] == offset:
            return entry[1]
        return None

    def put(self, upload_id: str, offset: int, hasher: Any) -> None:
        self._entries[upload_id] = (offset, hasher)
        while len(self._entries) > _HASH_CACHE_SIZE:
            self._entries.popitem(last=False)

    def drop(self, upload_id: str) -> None:
        self._entries.pop(upload_id, None)


def hash_file_prefix(path: Path, length: int) -> Any:
    """A sha256 object fed with the first `length` bytes of `path`."""
    hasher = hashlib.sha256()
    with path.open("rb") as f:
        remaining = length
        while remaining:
            chunk = f.read(min(BUFFER_BYTES, remaining))
            if not chunk:
                raise OSError(f"{path} is shorter than {length} bytes")
            hasher.update(chunk)
            remaining -= len(chunk)
    return hasher


class UploadWriter:
    """Appends to a partial upload file at `offset`, holding an exclusive lock on it.

    Use `open()` (async, waits for a lock held by a request that is still winding down), feed
    chunks with `feed()`, and end with `finish()` (fsync) or `truncate_to_start()`.
    """

    def __init__(self, path: Path, offset: int, hasher: Any) -> None:
        self.path = path
        self.start = offset
        self.offset = offset
        self.hasher = hasher
        # One thread hashes, one writes: each keeps this upload's buffers in order, and the two
        # run side by side (hashlib and pwrite release the GIL).
        self._hashing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmvp-hash")
        self._writing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmvp-write")
        self._fd = -1
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._in_flight: list[Future[None]] = []

    async def open(self, wait_seconds: float = 5.0) -> None:
        fd = os.open(self.path, os.O_WRONLY)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if loop.time() > deadline:
                    os.close(fd)
                    self._shutdown()
                    raise UploadBusy from None
                await asyncio.sleep(0.05)
        self._fd = fd

    @property
    def received(self) -> int:
        """Bytes accepted by this writer (written or still buffered)."""
        return self.offset - self.start + self._buffered

    async def feed(self, chunk: bytes) -> None:
        # Chunks are kept as they came (no joining copy): the hash thread updates with each
        # and the write thread hands them all to one pwritev.
        self._buffer.append(chunk)
        self._buffered += len(chunk)
        if self._buffered >= BUFFER_BYTES or len(self._buffer) >= _MAX_IOVECS:
            await self._submit()

    async def _submit(self) -> None:
        if not self._buffer:
            return
        chunks, size = self._buffer, self._buffered
        self._buffer, self._buffered = [], 0
        while len(self._in_flight) >= 2 * _MAX_IN_FLIGHT:
            await asyncio.wrap_future(self._in_flight.pop(0))
        self._in_flight.append(self._hashing.submit(self._hash, chunks))
        self._in_flight.append(self._writing.submit(self._write, chunks, self.offset))
        self.offset += size

    def _hash(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.hasher.update(chunk)

    def _write(self, chunks: list[bytes], at: int) -> None:
        written = os.pwritev(self._fd, chunks, at)
        total = sum(len(c) for c in chunks)
        if written < total:  # rare short write: finish the rest piece by piece
            view = memoryview(b"".join(chunks))[written:]
            at += written
            while view:
                n = os.pwrite(self._fd, view, at)
                view = view[n:]
                at += n

    async def drain(self) -> None:
        """Write everything received so far."""
        await self._submit()
        while self._in_flight:
            await asyncio.wrap_future(self._in_flight.pop(0))

    async def finish(self) -> int:
        """Write what is buffered, fsync, unlock; returns the new offset."""
        await self.drain()
        await asyncio.get_running_loop().run_in_executor(self._writing, os.fsync, self._fd)
        self.close()
        return self.offset

    async def truncate_to_start(self) -> None:
        """Forget everything this writer appended (the request was refused)."""
        self._buffer, self._buffered = [], 0
        for fut in self._in_flight:
            await asyncio.wrap_future(fut)
        self._in_flight.clear()
        os.ftruncate(self._fd, self.start)
        os.fsync(self._fd)
        self.offset = self.start
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # also releases the flock
            self._fd = -1
        self._shutdown()

    def _shutdown(self) -> None:
        self._hashing.shutdown(wait=False)
        self._writing.shutdown(wait=False)
