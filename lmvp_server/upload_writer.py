"""Appending a request body to an upload's partial file while hashing it, at disk speed.

The event loop receives the body; a worker thread hashes and writes it. Chunks are gathered
into buffers of a few MiB so that thread hops are rare, and at most two buffers are in flight,
which bounds memory per upload. hashlib and os.write release the GIL, so receiving, hashing and
writing overlap on separate cores.
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
        # A thread of its own keeps this upload's writes, and hash updates, in order.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmvp-upload")
        self._fd = -1
        self._buffer = bytearray()
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
                    self._executor.shutdown(wait=False)
                    raise UploadBusy from None
                await asyncio.sleep(0.05)
        self._fd = fd

    @property
    def received(self) -> int:
        """Bytes accepted by this writer (written or still buffered)."""
        return self.offset - self.start + len(self._buffer)

    async def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        if len(self._buffer) >= BUFFER_BYTES:
            await self._submit()

    async def _submit(self) -> None:
        if not self._buffer:
            return
        data = bytes(self._buffer)
        self._buffer.clear()
        while len(self._in_flight) >= _MAX_IN_FLIGHT:
            await asyncio.wrap_future(self._in_flight.pop(0))
        self._in_flight.append(self._executor.submit(self._write, data, self.offset))
        self.offset += len(data)

    def _write(self, data: bytes, at: int) -> None:
        self.hasher.update(data)
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, at)
            view = view[written:]
            at += written

    async def drain(self) -> None:
        """Write everything received so far."""
        await self._submit()
        while self._in_flight:
            await asyncio.wrap_future(self._in_flight.pop(0))

    async def finish(self) -> int:
        """Write what is buffered, fsync, unlock; returns the new offset."""
        await self.drain()
        await asyncio.get_running_loop().run_in_executor(self._executor, os.fsync, self._fd)
        self.close()
        return self.offset

    async def truncate_to_start(self) -> None:
        """Forget everything this writer appended (the request was refused)."""
        self._buffer.clear()
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
        self._executor.shutdown(wait=False)
