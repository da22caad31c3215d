"""The server's in-memory caches, shared by the event loop, the thread pool and the local
upload socket's threads: every one is a `cachetools` LRU behind its own lock.

- `HashCache`: the running sha256 of recent uploads, so the next append needs no rehash.
- `ListingCache`: serialised version listings, bounded by total bytes.
- `RowCache`: rows of versions already read, bounded by count.

They live on the server's context (`lmvp_server.context.ServerContext`); a cache is only ever
an optimisation, so a miss always falls back to the database or the disk.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Any

from cachetools import LRUCache

from lmvp_server.compression import gzipped

_HASH_CACHE_SIZE = 1024
RowKey = tuple[int, int, str, int]


class HashCache:
    """The running sha256 of recent uploads, keyed by upload id and offset.

    hashlib state cannot be saved, so after a restart (or on another worker) the partial file is
    hashed again from disk; the cache makes the common case, the next append in this process,
    free. `take` removes the entry: only the one appending request may continue a hasher.
    """

    def __init__(self, max_entries: int = _HASH_CACHE_SIZE) -> None:
        self._entries: LRUCache[str, tuple[int, Any]] = LRUCache(maxsize=max_entries)
        self._lock = threading.Lock()

    def take(self, upload_id: str, offset: int) -> Any | None:
        """The hasher fed with the upload's first `offset` bytes, or None; removed either way."""
        with self._lock:
            entry = self._entries.pop(upload_id, None)
        if entry is not None and entry[0] == offset:
            return entry[1]
        return None

    def put(self, upload_id: str, offset: int, hasher: Any) -> None:
        """Keep `hasher`, fed with the upload's first `offset` bytes."""
        with self._lock:
            self._entries[upload_id] = (offset, hasher)

    def drop(self, upload_id: str) -> None:
        """Forget the upload (finished or aborted)."""
        with self._lock:
            self._entries.pop(upload_id, None)


class ListingCache:
    """Serialised version listings, and answers about one version (`read_path`), keyed by the
    model's identity and revision.

    Versions are immutable and every change to a model's versions or aliases bumps its
    revision (`deps.lock_model`), so a listing or an answer stays valid exactly as long as the
    revision does; an entry for an old revision is simply never asked for again. Bounded by
    total bytes; a listing bigger than a quarter of the bound is not kept.
    """

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self._entries: LRUCache[Hashable, bytes] = LRUCache(maxsize=max_bytes, getsizeof=len)
        self._max_bytes = max_bytes
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> bytes | None:
        """The listing stored under `key`, or None."""
        with self._lock:
            return self._entries.get(key)

    def put(self, key: Hashable, value: bytes) -> None:
        """Keep `value` under `key`, dropping the least recently used listings to make room."""
        if len(value) > self._max_bytes // 4:
            return
        with self._lock:
            self._entries[key] = value

    def gzipped(self, key: Hashable, body: bytes) -> bytes:
        """`body` (the listing under `key`) gzipped: compressed once, then kept beside it."""
        compressed_key = ("gzip", key)
        found = self.get(compressed_key)
        if found is None:
            found = gzipped(body)
            self.put(compressed_key, found)
        return found


class RowCache:
    """Rows of versions already read, by (version id, model id, model creation time, number);
    least recently used rows go first once `max_entries` are held."""

    def __init__(self, max_entries: int = 20_000) -> None:
        self._entries: LRUCache[RowKey, dict[str, Any]] = LRUCache(maxsize=max_entries)
        self._lock = threading.Lock()

    def get(self, key: RowKey) -> dict[str, Any] | None:
        """The row stored under `key`, or None."""
        with self._lock:
            return self._entries.get(key)

    def put(self, key: RowKey, row: dict[str, Any]) -> None:
        """Keep `row` under `key`."""
        with self._lock:
            self._entries[key] = row
