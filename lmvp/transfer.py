"""Bulk bytes to the server: what to upload and how, which blobs a project lacks, fast sha256.

Files are uploaded with tus (`lmvp.tus` carries one upload through: resumable across dropped
connections, crashes and processes); this module decides what is sent: only what the project
lacks, several files at a time, and large files while they are still being hashed. The
download side lives in `lmvp.cache`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from lmvp._http import HTTP
from lmvp.errors import IntegrityError
from lmvp.tus import TusUpload, UploadState, default_state_dir
from lmvp.types import Progress
from lmvp.wire import CHUNK

__all__ = [
    "check_unchanged",
    "hash_file",
    "missing_blobs",
    "serialised",
    "server_is_local",
    "upload_file",
    "upload_files",
    "upload_unhashed",
]

_MISSING_BATCH = 10_000


def upload_file(
    http: HTTP,
    project: str,
    path: Path,
    *,
    sha256: str,
    size: int,
    progress: Progress | None = None,
    state_dir: Path | None = None,
) -> None:
    """Upload `path` (whose bytes hash to `sha256` and number `size`) into `project` with tus.

    Resumable: the upload's URL is kept in a state file under `state_dir` (default: the user
    state dir, `uploads/`), so a later call, also in another process, asks the server how much
    it holds (HEAD) and sends only the rest. A dropped connection is resumed the same way, with
    backoff, within the retry policy of `http`. `progress(n)` is called as the file's position
    on the server advances: bytes the server already held are reported at once, and `n` is
    negative when a dropped connection lost bytes that must be sent again; the sum ends at
    `size`.

    Returns None once the server has stored the blob. Raises `IntegrityError` when the bytes the
    server received do not hash to `sha256` (the file changed while it was sent),
    `ServerUnavailable` when the server cannot be reached after retries, and the mapped
    `LMVPError` for refusals (`PermissionDenied`, `NotFound`, ...).
    """
    state = UploadState(state_dir or default_state_dir(), http.server, project, sha256)
    with state.locked() as waited:
        if waited and sha256 not in missing_blobs(http, project, [sha256]):
            # Another process uploaded the same bytes while this one waited for the lock.
            if progress:
                progress(size)
            return
        TusUpload(
            http, project, path, sha256, size, progress, state, held=_holds(http, project)
        ).run()


def upload_files(
    http: HTTP,
    project: str,
    files: list[tuple[Path, str, int]],
    *,
    parallel: int = 4,
    progress: Progress | None = None,
    state_dir: Path | None = None,
) -> None:
    """Upload several `(path, sha256, size)` files into `project`, `parallel` at a time.

    `progress(n)` receives the bytes of all files together (calls are serialised, so a plain
    counter or a tqdm bar works). Files with the same sha256 are sent once. Returns None when
    all are stored; raises the first error of any file (the others are still let finish, so
    their state files stay consistent).
    """
    unique: dict[str, tuple[Path, str, int]] = {}
    for entry in files:
        unique.setdefault(entry[1], entry)
    report = serialised(progress)

    def one(entry: tuple[Path, str, int]) -> None:
        path, sha256, size = entry
        upload_file(
            http, project, path, sha256=sha256, size=size, progress=report, state_dir=state_dir
        )

    with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="lmvp-up") as pool:
        futures = [pool.submit(one, entry) for entry in unique.values()]
    for future in futures:
        future.result()


def upload_unhashed(
    http: HTTP,
    project: str,
    path: Path,
    *,
    size: int,
    progress: Progress | None = None,
    state_dir: Path | None = None,
    hash_here: bool | None = None,
) -> str:
    """Upload `path` into `project` without hashing it first; returns its sha256.

    Hashing a large file before sending it costs as long again as sending it. Here the upload
    declares no hash: the server stores the bytes under the hash of what it received and names
    it in its last answer. The size, mtime, ctime and inode of the file must be the same after
    the upload as before it, or `IntegrityError` is raised and nothing refers to the bytes.

    With `hash_here`, the file is also hashed here while it is sent: the server's hash must then
    equal this one (or `IntegrityError`: bytes were damaged on the way), and as soon as it is
    known the project is asked whether it already holds those bytes; if it does, the upload
    stops at once and is aborted. By default it is on unless the server is on this machine
    (loopback): there no bytes cross a wire that could damage them, and the two hashes would
    compete for the same CPU.

    Resumable like `upload_file`: a later call for the same unchanged file (same device, inode,
    size and mtime), also in another process, goes on from the server's offset. Raises
    `ServerUnavailable`, `IntegrityError`, `OSError` for a file that cannot be read, and the
    mapped `LMVPError` for refusals.
    """
    if hash_here is None:
        hash_here = not server_is_local(http)
    before = path.stat()
    identity = f"unhashed:{before.st_dev}:{before.st_ino}:{size}:{before.st_mtime_ns}"
    state = UploadState(state_dir or default_state_dir(), http.server, project, identity)
    stop = threading.Event()

    def ask_if_held(hashing: Future[str]) -> None:
        try:
            digest = hashing.result()
            if digest not in missing_blobs(http, project, [digest]):
                stop.set()
        except Exception:  # the upload goes on; a failed hash is raised below
            if hashing.exception() is not None:
                stop.set()

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmvp-hash") as pool:
        hashing: Future[str] | None = None
        if hash_here:
            hashing = pool.submit(hash_file, path)
            hashing.add_done_callback(ask_if_held)
        with state.locked():
            upload = TusUpload(
                http,
                project,
                path,
                "",
                size,
                progress,
                state,
                digest=hashing.result if hashing else None,
                stop=stop,
                held=_holds(http, project),
            )
            upload.run()
        digest = hashing.result() if hashing else upload.stored_as
    check_unchanged(path, before)
    if upload.stopped:  # the hash showed the project holds the bytes
        upload.report_position(size)
        assert digest is not None
        return digest
    if digest is None:
        # Stored, but the answer naming its hash was lost (another request finished it).
        digest = hash_file(path)
        check_unchanged(path, before)
        if digest in missing_blobs(http, project, [digest]):
            raise IntegrityError(
                f"{path} changed while it was uploaded; nothing was published. Upload it again "
                "once it is no longer being written."
            )
        return digest
    if upload.stored_as != digest:
        raise IntegrityError(
            f"{path} changed while it was uploaded, or its bytes were damaged on the way: they "
            f"hash to {digest} here but to {upload.stored_as} on the server. Upload it again "
            "once it is no longer being written."
        )
    return digest


def server_is_local(http: HTTP) -> bool:
    """Whether the server's URL names this machine (localhost or a loopback address)."""
    host = urlsplit(http.server).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_unchanged(path: Path, before: os.stat_result, *, while_: str = "uploaded") -> None:
    """Raise `IntegrityError` if `path` is no longer the file `before` describes (size, mtime,
    ctime or inode moved): it changed while it was read."""
    after = path.stat()
    fields = ("st_size", "st_mtime_ns", "st_ctime_ns", "st_ino")
    if any(getattr(after, f) != getattr(before, f) for f in fields):
        raise IntegrityError(
            f"{path} changed while it was {while_}; nothing was published. Publish it again "
            "once it is no longer being written."
        )


def serialised(progress: Progress | None) -> Progress | None:
    """`progress`, callable from several threads at once (None stays None)."""
    if progress is None:
        return None
    lock = threading.Lock()

    def report(n: int) -> None:
        with lock:
            progress(n)

    return report


def missing_blobs(http: HTTP, project: str, hashes: Iterable[str]) -> set[str]:
    """The hashes among `hashes` whose bytes `project` does not hold (asked in batches of
    10,000). Raises the mapped `LMVPError` (e.g. `PermissionDenied` for a viewer)."""
    wanted = list(dict.fromkeys(h.lower() for h in hashes))
    missing: set[str] = set()
    for start in range(0, len(wanted), _MISSING_BATCH):
        batch = wanted[start : start + _MISSING_BATCH]
        # Asking is idempotent: retry it like a GET.
        body = http.json(
            "POST", f"/projects/{project}/blobs/missing", json={"sha256": batch}, idempotent=True
        )
        missing.update(body["missing"])
    return missing


HASH_FIRST_HEADER = "LMVP-Hash-First"


def wants_hash_first(http: HTTP, project: str) -> bool:
    """Whether the server stores a large file faster when its upload declares the sha256 than
    when the file is sent while it is hashed (its blobs are in an object store, where bytes
    sent without a hash are copied once more, inside the store, after they arrived). The
    server says so in the `LMVP-Hash-First` header of its `blobs/missing` answer."""
    response = http.request(
        "POST", f"/projects/{project}/blobs/missing", json={"sha256": []}, idempotent=True
    )
    return bool(response.headers.get(HASH_FIRST_HEADER) == "1")


def _holds(http: HTTP, project: str) -> Callable[[str], bool]:
    """Whether `project` holds the blob of a sha256 (a question for `TusUpload`)."""
    return lambda sha256: sha256 not in missing_blobs(http, project, [sha256])


def hash_file(path: Path, progress: Progress | None = None) -> str:
    """The sha256 of the file at `path`, hex. Reads 4 MiB at a time into one reused buffer
    (hashlib releases the GIL, so several files hash in parallel threads). Raises `OSError`."""
    hasher = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buffer):
            hasher.update(view[:n])
            if progress:
                progress(n)
    return hasher.hexdigest()
