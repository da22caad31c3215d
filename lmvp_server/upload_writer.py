"""Appending a request body to an upload's partial file while hashing it, at disk speed.

The event loop receives the body; one worker thread hashes it and another writes it. Chunks
are gathered into batches of a few MiB so that thread hops are rare, and at most two batches are
in flight, which bounds memory per upload (three 4 MiB buffers). hashlib and pwrite release the
GIL, so receiving, hashing and writing overlap on separate cores.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import hashlib
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

BUFFER_BYTES = 4 * 1024 * 1024
_MAX_IN_FLIGHT = 2


def _load_sync_file_range() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):  # not Linux: the final fsync does all the work
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return fn


_sync_file_range = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to begin writing a range of a file to disk, without waiting for it."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


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
    """Appends request body chunks to a partial upload file at `offset`, hashing them.

    It is given a descriptor of the file (a `dup` of the one whose lock the append session
    holds), which it closes on its write thread after its last write. Feed chunks with
    `feed()`, then `drain()` and `aclose()`; after a refusal `discard()`, after a failed write
    `abandon()` (the session then cuts the file back).

    Received chunks are copied into a few reused batch buffers: allocating a fresh multi-MiB
    buffer per batch costs page faults that showed up as a third of the receive loop's time,
    and hashing one large buffer releases the GIL once instead of once per chunk.
    """

    def __init__(self, fd: int, offset: int, hasher: Any) -> None:
        self.start = offset
        self.offset = offset
        self.hasher = hasher
        # One thread hashes, one writes: each keeps this upload's batches in order, and the two
        # run side by side (hashlib and pwrite release the GIL).
        self._hashing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmvp-hash")
        self._writing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmvp-write")
        self._fd = fd
        self._closed: Future[None] | None = None
        self._batch: bytearray | None = None
        self._fill = 0
        self._free: list[bytearray] = []
        self._in_flight: list[tuple[bytearray, Future[None], Future[None]]] = []

    @property
    def received(self) -> int:
        """Bytes accepted by this writer (written or still buffered)."""
        return self.offset - self.start + self._fill

    async def feed(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            if self._batch is None:
                self._batch = self._free.pop() if self._free else bytearray(BUFFER_BYTES)
            n = min(len(view), BUFFER_BYTES - self._fill)
            self._batch[self._fill : self._fill + n] = view[:n]
            self._fill += n
            view = view[n:]
            if self._fill == BUFFER_BYTES:
                await self._submit()

    async def _submit(self) -> None:
        if self._batch is None or not self._fill:
            return
        batch, size = self._batch, self._fill
        self._batch, self._fill = None, 0
        while len(self._in_flight) >= _MAX_IN_FLIGHT:
            await self._retire_oldest()
        data = memoryview(batch)[:size]
        self._in_flight.append(
            (
                batch,
                self._hashing.submit(self.hasher.update, data),
                self._writing.submit(self._write, data, self.offset),
            )
        )
        self.offset += size

    async def _retire_oldest(self) -> None:
        batch, hashed, written = self._in_flight.pop(0)
        # Shielded: a cancelled request must not cancel a queued write, or the file would get
        # a hole of zeros that still counts toward the offset.
        await asyncio.shield(asyncio.wrap_future(hashed))
        await asyncio.shield(asyncio.wrap_future(written))
        self._free.append(batch)

    def _write(self, data: memoryview, at: int) -> None:
        start, size = at, len(data)
        while data:
            n = os.pwrite(self._fd, data, at)
            data = data[n:]
            at += n
        # Write-behind: start writing this batch to disk now, without waiting, so the disk works
        # during the transfer and the final fsync has little left to do (it was a fifth of a
        # 1 GiB upload's time otherwise).
        start_writeback(self._fd, start, size)

    async def drain(self) -> None:
        """Write everything received so far (and hash it)."""
        await self._submit()
        while self._in_flight:
            await self._retire_oldest()

    async def discard(self) -> None:
        """Write nothing more: what is buffered is dropped, what is in flight finishes."""
        self._batch, self._fill = None, 0
        while self._in_flight:
            await self._retire_oldest()

    async def abandon(self) -> None:
        """Write nothing more after one of the writes failed (a full disk): wait for what is
        in flight, whatever its outcome."""
        self._batch, self._fill = None, 0
        for _batch, hashed, written in self._in_flight:
            for done in (hashed, written):
                await asyncio.shield(asyncio.wait([asyncio.wrap_future(done)]))
        self._in_flight.clear()

    def close(self) -> None:
        """Close the descriptor (on the write thread) and stop the threads."""
        if self._closed is None:
            # Closed by the write thread after any write still queued: a write must never land
            # in another file that reused the descriptor number.
            self._closed = self._writing.submit(os.close, self._fd)
        self._hashing.shutdown(wait=False)
        self._writing.shutdown(wait=False)

    async def aclose(self) -> None:
        """`close`, and wait until the descriptor is closed (so the file's lock can go)."""
        self.close()
        assert self._closed is not None
        await asyncio.shield(asyncio.wrap_future(self._closed))
