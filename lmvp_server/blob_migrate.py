"""`lmvp-server blobs migrate --to s3://BUCKET/PREFIX`: copy every blob of the local store into
a bucket, while the server goes on serving reads from the local store.

Resumable: a blob the bucket already holds with the right size is skipped, so a run that was
stopped (or a second run, for blobs that arrived meanwhile) copies only what is left. Each blob
is hashed while it streams up, and the upload is abandoned before it completes if the bytes do
not hash to the blob's name: the bucket only ever holds verified blobs (a damaged local blob is
named at the end and the run exits 1). Nothing is deleted from the local store.

Chunks' frames (`chunks/ab/cd/<sha256>`, issue 17) are copied the same way, after the blobs:
each decoded and checked against its name first, skipped when the bucket holds it.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from lmvp_server.chunk_frames import BadFrame, frame_length, verified_chunk
from lmvp_server.s3_store import S3BlobStore
from lmvp_server.storage import CHUNK_PREFIX

# At most one progress line per this many seconds (and one per blob copied, when slower).
PROGRESS_EVERY = 2.0
_HEX = frozenset("0123456789abcdef")


class DamagedBlob(Exception):
    """A local blob whose bytes do not hash to its name (or whose size changed while read)."""


@dataclass
class MigrateReport:
    """What a run did."""

    copied: int = 0
    copied_bytes: int = 0
    skipped: int = 0
    skipped_bytes: int = 0
    damaged: list[str] = field(default_factory=list)
    # Chunks' frames copied and already there (issue 17).
    chunks_copied: int = 0
    chunks_skipped: int = 0


def local_blobs(root: Path) -> Iterator[tuple[str, Path, int]]:
    """(sha256, path, size) of every blob file of a local store at `root` (`ab/cd/<sha256>`)."""
    for first in sorted(os.scandir(root), key=lambda e: e.name):
        if len(first.name) != 2 or not first.is_dir():
            continue  # tmp/
        for second in sorted(os.scandir(first.path), key=lambda e: e.name):
            if not second.is_dir():
                continue
            for entry in sorted(os.scandir(second.path), key=lambda e: e.name):
                name = entry.name
                if len(name) == 64 and set(name) <= _HEX and name[:4] == first.name + second.name:
                    try:
                        yield name, Path(entry.path), entry.stat().st_size
                    except FileNotFoundError:
                        continue  # deleted meanwhile (garbage collection)


class _VerifyingReader:
    """Reads a blob file for an upload, hashing it; the read that reaches its size raises
    DamagedBlob before handing over the last bytes when they do not hash to its name, so the
    upload is abandoned and nothing is stored. No `seek`: the transfer manager reads it once,
    in order."""

    def __init__(self, path: Path, sha256: str, size: int) -> None:
        self._file = path.open("rb")
        self._sha256 = sha256
        self._size = size
        self._hash = hashlib.sha256()
        self._read = 0

    def read(self, n: int = -1) -> bytes:
        data = self._file.read(n if n is not None and n >= 0 else self._size - self._read + 1)
        self._hash.update(data)
        self._read += len(data)
        if self._read > self._size or (not data and self._read < self._size):
            raise DamagedBlob(f"blob {self._sha256} changed size while it was read")
        if self._read == self._size and data and self._hash.hexdigest() != self._sha256:
            raise DamagedBlob(
                f"blob {self._sha256} in the local store hashes to {self._hash.hexdigest()}"
            )
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._file.close()


def migrate_blobs(root: Path, target: S3BlobStore, out: TextIO) -> MigrateReport:
    """Copy the local store at `root` into `target`, printing progress to `out`."""
    blobs = list(local_blobs(root))
    total = sum(size for _, _, size in blobs)
    report = MigrateReport()
    print(
        f"{len(blobs)} blobs ({_human(total)}) in {root}; copying to {target.location}",
        file=out,
        flush=True,
    )
    last = time.monotonic()
    for index, (sha256, path, size) in enumerate(blobs, 1):
        held = target.stat(sha256)
        if held is not None and held.size == size:
            report.skipped += 1
            report.skipped_bytes += size
        else:
            reader = _VerifyingReader(path, sha256, size)
            try:
                target.put_stream(reader, sha256)  # type: ignore[arg-type]
            except DamagedBlob as exc:
                report.damaged.append(sha256)
                print(f"  skipped: {exc}", file=out, flush=True)
                continue
            except FileNotFoundError:
                continue  # deleted meanwhile
            finally:
                reader.close()
            report.copied += 1
            report.copied_bytes += size
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY or index == len(blobs):
            last = now
            done = report.copied_bytes + report.skipped_bytes
            print(
                f"  {index}/{len(blobs)} blobs, {_human(done)} of {_human(total)}: "
                f"{report.copied} copied, {report.skipped} already there",
                file=out,
                flush=True,
            )
    _migrate_chunks(root / CHUNK_PREFIX, target, out, report)
    return report


def _migrate_chunks(root: Path, target: S3BlobStore, out: TextIO, report: MigrateReport) -> None:
    """Copy every verified chunk frame under `root` the bucket does not hold yet."""
    if not root.is_dir():
        return
    found = list(local_blobs(root))
    if not found:
        return
    for sha256, path, _ in found:
        if target.holds_chunk(sha256):
            report.chunks_skipped += 1
            continue
        try:
            frame = path.read_bytes()
        except FileNotFoundError:
            continue  # deleted meanwhile (garbage collection)
        try:
            verified_chunk(frame, sha256, frame_length(frame))
        except BadFrame as exc:
            report.damaged.append(sha256)
            print(f"  skipped: chunk {sha256}: {exc}", file=out, flush=True)
            continue
        target.put_chunks([(sha256, frame)])
        report.chunks_copied += 1
    print(
        f"  {len(found)} chunks: {report.chunks_copied} copied, {report.chunks_skipped} "
        "already there",
        file=out,
        flush=True,
    )


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover


__all__ = ["DamagedBlob", "MigrateReport", "local_blobs", "migrate_blobs"]
