"""Big files over a network as content-addressed chunks (issue 17): send only the chunks the
project lacks, fetch only the chunks the local cache lacks.

Sending (`send_chunked`): the file is cut by `lmvp.chunking.chunk_file` (whole sha256 plus
chunks that follow its tensors or records) in a thread, and as its chunks come out the project
is asked, every 16 MiB of them, which it lacks; those go out while the rest of the file is still
being read, in *packs* (one ``POST /chunks`` of at most `PACK_SIZE` raw bytes each,
`PACKS_IN_FLIGHT` at a time): records of sha256 (32 bytes), raw length (u32 LE), frame length
(u32 LE) and a `lmvp.chunk_codec` frame, written straight onto the socket in HTTP/1.1 chunked
encoding, so no pack is ever held in memory. Once the whole sha256 is known, a project that
holds the whole blob stops the sending. Per chunk a `CompressionGovernor` decides from the
measured link and codec speed whether to compress (a few threads encode ahead of the socket:
zstandard and hashlib release the GIL); a raw chunk goes from the file to the socket by
`sendfile`. Then ``blobs/assemble`` records the blob, which the server hashes whole. After a
dropped connection or a 5xx the project is asked again which chunks it lacks and only those are
sent, within the retry policy of the `HTTP` session (`lmvp.wire.transfer_attempts`). The file's
stat before and after must agree, or `IntegrityError`: nothing is assembled from a file that
changed while it was read.

Fetching (`download_chunked`, called by `lmvp.cache.Cache.download_blob`): the server's chunk
list of the blob (a blob stored whole answers 404 ``not_chunked``: `NotChunked`, and the cache
downloads it plainly). Each chunk is looked for locally first: in the partial file of an
interrupted download (``<sha256>.chunks-incomplete``, at its own offset), then inside blobs
already in the cache whose chunk lists were kept (``<cache>/chunk-lists/<sha256>.json``). The
local chunk cache therefore holds decoded chunks *inside the cached blobs themselves*: no second
copy on disk and no decoding when a chunk is reused (reading one back costs a pread and a
sha256, ~1.5 GB/s, against decoding a frame at ~0.7 GB/s plus the same hash). Every local chunk
is hashed before it is used; one that does not match (a snapshot file edited in place, a
damaged disk) is fetched from the server instead. The rest comes from ``POST /chunks/fetch``,
each record decoded and checked against its sha256 and length before it is written: a damaged
one raises `IntegrityError` and is never written as good. The whole file is hashed before it
is renamed into place.

Where chunks are used (`chunks_wanted`): files of at least `MIN_SIZE` bytes to or from a server
that is not on this machine (a local server gets the file over its Unix socket, or plain HTTP,
where chunking would only add work), over a link that was not last measured as fast
(`lmvp.links`: every big transfer, whole or chunked, records the rate it saw, and on a link of
`links.FAST_LINK` or more a whole file arrives sooner than it can be cut). ``LMVP_CHUNKS=0``
switches chunks off, ``LMVP_CHUNKS=1`` uses them for a local server or a fast link too (tests,
benchmarks over loopback).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import re
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from http.client import HTTPConnection, HTTPException, HTTPResponse
from pathlib import Path
from typing import Any

import httpx

from lmvp import links
from lmvp._http import HTTP, Attempts, TransientAnswer
from lmvp.chunk_codec import (
    CompressionGovernor,
    Method,
    decode,
    encode,
    frame_info,
    raw_frame_header,
)
from lmvp.chunking import Chunk, ChunkedFile, ChunkKind, chunk_file
from lmvp.errors import Conflict, IntegrityError, LMVPError, NotFound, ProtocolError, RequestError
from lmvp.transfer import check_unchanged, missing_blobs, server_is_local
from lmvp.types import Progress
from lmvp.wire import (
    SOCKET_TIMEOUT,
    TRANSIENT,
    answer_error,
    api_path,
    base_headers,
    open_connection,
    send_range,
    start_writeback,
    transfer_attempts,
)

__all__ = [
    "MIN_SIZE",
    "PACK_SIZE",
    "ChunkedSend",
    "NotChunked",
    "chunks_wanted",
    "download_chunked",
    "record_head",
    "send_chunked",
]

log = logging.getLogger(__name__)

MiB = 1 << 20
# Files below this go whole: their chunks would be few, and a tus upload or a plain GET costs
# one request.
MIN_SIZE = 8 * MiB
# The most raw bytes one pack (or one fetch) carries; the server takes up to 256 MiB.
PACK_SIZE = 64 * MiB
# Packs (and fetches) on the wire at once.
PACKS_IN_FLIGHT = 2
# How many chunks one question (chunks/missing, chunks/fetch) names at most.
_ASK_BATCH = 10_000
# One record of a pack: sha256, raw length, frame length (then the frame).
_RECORD = struct.Struct("<32sII")
# A frame is at most its raw bytes plus headers (encode stores raw what does not shrink).
_FRAME_SLACK = 1024
CONTENT_TYPE = "application/vnd.lmvp.chunk-pack"
ENV = "LMVP_CHUNKS"
_OFF = frozenset({"0", "false", "no", "off"})
_ON = frozenset({"1", "true", "yes", "on"})
# How long the server may take to answer a pack or an assembly, per byte it must hash.
_SERVER_HASH_RATE = 100 * MiB
_SENDFILE_SLICE = 8 * MiB
# A rate from the time spent in sends means something once the bytes outweigh the socket
# buffers on the way (a few MiB each), which take a small send at once.
_LINK_SAMPLE = 64 * MiB
# How many bytes of new chunks are cut before the project is asked which it lacks.
_ASK_EVERY = 16 * MiB
_RAW_HEADER = len(raw_frame_header(0))
_SHA256 = re.compile(r"[0-9a-f]{64}")


class NotChunked(Exception):
    """The server holds this blob whole, or does not speak the chunk protocol: use the plain
    transfer."""


@dataclass(frozen=True)
class ChunkedSend:
    """What `send_chunked` did: the file's sha256 and size, how many distinct chunks it has,
    how many of them were sent, their raw bytes and the frame bytes that went on the wire."""

    sha256: str
    size: int
    chunks: int
    sent_chunks: int
    sent_raw_bytes: int
    sent_frame_bytes: int


def chunks_wanted(http: HTTP, size: int, direction: links.Direction) -> bool:
    """Whether a file of `size` bytes goes to (``up``) or comes from (``down``) the server of
    `http` as chunks (see the module docstring; `LMVP_CHUNKS` overrides the choice of server
    and link, not the size)."""
    setting = os.environ.get(ENV, "").strip().lower()
    if setting in _OFF or size < MIN_SIZE:
        return False
    if setting in _ON:
        return True
    return not server_is_local(http) and not links.is_fast(http.server, direction)


# ---------------------------------------------------------------------------------------------
# Sending


def send_chunked(
    http: HTTP,
    project: str,
    path: Path,
    *,
    sha256: str | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
) -> ChunkedSend:
    """Make sure `project` holds the bytes of the file at `path`, sending only the chunks it
    lacks; returns what was done (its `sha256` is the whole file's).

    The file is read once to cut and hash it, and the chunks the project lacks go out while the
    rest is still being read. `sha256`, when known, must be the file's (else `IntegrityError`:
    it changed since it was hashed). `progress(n)` counts bytes of the file as they are
    covered: chunks the project holds as soon as that is known, the others as they are sent;
    negative after a dropped connection; the sum ends at the file's size. `workers` threads
    encode chunks (default: the cores, at most 4). Raises `NotChunked` when the server does not
    speak the chunk protocol (send the file whole then), `IntegrityError` when the file changes
    while it is read, `ServerUnavailable` when the server stays out of reach after retries, and
    the mapped `LMVPError` for refusals.
    """
    before = path.stat()
    sender = _Sender(http, project, path, before.st_size, progress, workers)
    sender.run(before, sha256.lower() if sha256 else None)
    assert sender.file is not None
    link = sender.governor.link_speed
    if link and sender.sent_frames >= _LINK_SAMPLE:
        # The link's rate while it was being waited on (see CompressionGovernor), which is
        # not the pipeline's: on a fast link the chunks come slower than it carries them.
        links.record(http.server, "up", sender.sent_frames, sender.sent_frames / link)
    return ChunkedSend(
        sender.file.sha256,
        sender.file.size,
        len(sender.unique),
        sender.sent_chunks,
        sender.sent_raw,
        sender.sent_frames,
    )


class _Incomplete(Exception):
    """The server could not assemble: chunks it needs are missing (ask again)."""


class _Cancelled(Exception):
    """Stops `chunk_file` early: the send failed for good."""


# What the first, pipelined round ends with when the project holds the whole blob.
_HELD = object()


class _Sender:
    """One file's chunks to the server: cut and hash, ask, encode, send in packs, assemble;
    after a failure ask again and send the rest."""

    def __init__(
        self,
        http: HTTP,
        project: str,
        path: Path,
        size: int,
        progress: Progress | None,
        workers: int | None,
    ) -> None:
        self.http = http
        self.project = project
        self.path = path
        self.size = size
        self.progress = progress
        self.workers = max(1, workers or min(4, os.cpu_count() or 1))
        self.file: ChunkedFile | None = None  # once the file is cut and hashed
        # The first occurrence of each distinct chunk, the file bytes each one covers, the
        # dtype it is encoded as, and those the project holds (or was sent).
        self.unique: dict[str, Chunk] = {}
        self.weight: dict[str, int] = {}
        self.dtype: dict[str, str | None] = {}
        self.covered: set[str] = set()
        self._tensor_dtypes: dict[str, str] | None = None
        self.governor = CompressionGovernor(workers=self.workers)
        self.lock = threading.Lock()
        self.reported = 0
        self.position = 0
        self.sent_chunks = 0
        self.sent_raw = 0
        self.sent_frames = 0

    # -- progress ------------------------------------------------------------------------------

    def set_position(self, position: int) -> None:
        with self.lock:
            self.position = position
            self._report()

    def _report(self) -> None:
        if self.progress is not None and self.position != self.reported:
            self.progress(self.position - self.reported)
        self.reported = self.position

    def _add(self, chunk: Chunk) -> bool:
        """Count one chunk of the file; True if its bytes were not met before in the file."""
        sha = chunk.sha256
        with self.lock:
            if sha in self.covered:  # a repeat of a chunk already held or sent
                self.position += chunk.length
                self._report()
                return False
            self.weight[sha] = self.weight.get(sha, 0) + chunk.length
            if sha in self.unique:
                return False
            self.unique[sha] = chunk
        self.dtype[sha] = self._dtype_of(chunk)
        return True

    def _cover(self, sha: str) -> None:
        """The project holds chunk `sha` (or it was just sent): its bytes count as done."""
        with self.lock:
            if sha not in self.covered:
                self.covered.add(sha)
                self.position += self.weight.get(sha, 0)
                self._report()

    def _restart_from(self, missing: list[str]) -> None:
        with self.lock:
            self.covered = set(self.unique).difference(missing)
            self.position = self.size - sum(self.weight[s] for s in missing)
            self._report()

    def _dtype_of(self, chunk: Chunk) -> str | None:
        """The dtype `encode` is told for a chunk: the tensor's for safetensors tensors, None
        (probe a sample) for torch storages and content-defined chunks, bytes for the rest."""
        if chunk.kind is ChunkKind.TENSOR:
            if self._tensor_dtypes is None:
                self._tensor_dtypes = _safetensors_dtypes(self.path)
            return self._tensor_dtypes.get(chunk.name)
        if chunk.kind in (ChunkKind.STORAGE, ChunkKind.CONTENT):
            return None
        return "U8"

    # -- the rounds ----------------------------------------------------------------------------

    def run(self, before: os.stat_result, sha256: str | None) -> None:
        outcome = self._pipelined(before, sha256)
        if outcome is _HELD:
            self.set_position(self.size)
            return
        tries = transfer_attempts(self.http)
        resend = isinstance(outcome, BaseException)
        if isinstance(outcome, BaseException):
            _failed(tries, outcome)
        while True:
            try:
                if resend:
                    missing = self._ask(list(self.unique))
                    self._restart_from(missing)
                    if missing:
                        self._send(missing, tries.progressed)
                check_unchanged(self.path, before)
                self._assemble()
                self.set_position(self.size)
                return
            except (_Incomplete, TransientAnswer, *TRANSIENT) as exc:
                _failed(tries, exc)
                resend = True

    def _pipelined(self, before: os.stat_result, sha256: str | None) -> object:
        """The first round: cut and hash the file in a thread while the chunks it yields are
        asked about and the missing ones sent. Returns `_HELD` when the project turns out to
        hold the whole blob, None when every chunk was sent, or the transient failure that
        interrupted the sending (the file is cut and hashed all the same). Raises what cutting
        the file raises and the server's refusals."""
        found: queue.SimpleQueue[Chunk | None] = queue.SimpleQueue()
        cancel = threading.Event()

        def on_chunk(chunk: Chunk) -> None:
            if cancel.is_set():
                raise _Cancelled
            found.put(chunk)

        def cut() -> ChunkedFile:
            try:
                return chunk_file(self.path, on_chunk=on_chunk)
            finally:
                found.put(None)

        with ThreadPoolExecutor(1, thread_name_prefix="lmvp-chunk") as chunker:
            cutting = chunker.submit(cut)
            try:
                return self._send_while_cutting(found, cutting, before, sha256)
            except BaseException:
                cancel.set()
                raise

    def _send_while_cutting(
        self,
        found: queue.SimpleQueue[Chunk | None],
        cutting: Future[ChunkedFile],
        before: os.stat_result,
        sha256: str | None,
    ) -> object:
        retry: BaseException | None = None
        asking: list[str] = []
        pack: list[str] = []
        with _PackPool(self) as pool:

            def ask() -> None:
                nonlocal retry, pack
                if retry is None and asking:
                    try:
                        missing = self._ask(asking)
                    except (TransientAnswer, *TRANSIENT) as exc:
                        retry = exc
                        pool.abort()
                    else:
                        for sha in set(asking).difference(missing):
                            self._cover(sha)
                        for sha in missing:
                            pack.append(sha)
                            if _full(pack, self.unique):
                                pool.submit(pack)
                                pack = []
                asking.clear()

            asked_raw = 0
            while (chunk := found.get()) is not None:
                if self._add(chunk):
                    asking.append(chunk.sha256)
                    asked_raw += chunk.length
                    if asked_raw >= _ASK_EVERY or len(asking) >= _ASK_BATCH:
                        ask()
                        asked_raw = 0
            ask()
            self.file = cutting.result()
            check_unchanged(self.path, before, while_="chunked")
            if sha256 is not None and sha256 != self.file.sha256:
                raise IntegrityError(
                    f"{self.path} changed after it was hashed (it hashed to {sha256}, now to "
                    f"{self.file.sha256}); publish it again once it is no longer being written."
                )
            if retry is None and pack:
                pool.submit(pack)
            whole = self.file.sha256
            try:
                if whole not in missing_blobs(self.http, self.project, [whole]):
                    pool.abort()
                    return _HELD
            except (TransientAnswer, *TRANSIENT) as exc:
                retry = retry or exc
                pool.abort()
        return retry or pool.error()

    def _ask(self, shas: list[str]) -> list[str]:
        """Those of `shas` the project lacks, in the order given."""
        missing: list[str] = []
        for start in range(0, len(shas), _ASK_BATCH):
            batch = shas[start : start + _ASK_BATCH]
            try:
                body = self.http.json(
                    "POST",
                    f"/projects/{self.project}/chunks/missing",
                    json={"chunks": batch},
                    idempotent=True,
                )
            except (NotFound, RequestError) as exc:
                if exc.status in (404, 405):
                    raise NotChunked(str(exc)) from exc
                raise
            asked = set(batch)
            answer = body.get("missing") if isinstance(body, dict) else None
            if not isinstance(answer, list) or not all(
                isinstance(s, str) and s in asked for s in answer
            ):
                raise ProtocolError(
                    f"the server at {self.http.server} answered chunks/missing with something "
                    "other than chunks it was asked about"
                )
            missing += answer
        return missing

    def _send(self, missing: list[str], progressed: Callable[[], None]) -> None:
        with _PackPool(self, progressed) as pool:
            pack: list[str] = []
            for sha in missing:
                pack.append(sha)
                if _full(pack, self.unique):
                    pool.submit(pack)
                    pack = []
            if pack:
                pool.submit(pack)
        error = pool.error()
        if error is not None:
            raise error

    def _encoded(
        self, pack: list[str], source: Any, encoders: ThreadPoolExecutor
    ) -> Iterator[tuple[str, bytes | None]]:
        """(sha, frame) for each chunk of `pack`, in order, encoded a few chunks ahead by the
        encoder threads; frame None: send the chunk raw (straight from the file)."""
        ahead: deque[tuple[str, Future[bytes] | None]] = deque()
        order = iter(pack)
        depth = self.workers + 1
        while True:
            while len(ahead) < depth:
                sha = next(order, None)
                if sha is None:
                    break
                with self.lock:
                    compress = self.governor.should_compress()
                job = encoders.submit(self._encode, sha, source.fileno()) if compress else None
                ahead.append((sha, job))
            if not ahead:
                return
            sha, job = ahead.popleft()
            yield sha, (job.result() if job is not None else None)

    def _encode(self, sha: str, fd: int) -> bytes:
        chunk = self.unique[sha]
        data = os.pread(fd, chunk.length, chunk.offset)
        if len(data) != chunk.length:
            raise IntegrityError(
                f"{self.path} got shorter while it was uploaded; publish it again once it is "
                "no longer being written."
            )
        started = time.perf_counter()
        frame = encode(data, self.dtype[sha])
        with self.lock:
            self.governor.observe_codec(len(data), len(frame), time.perf_counter() - started)
        return frame

    def _post_pack(
        self,
        pack: list[str],
        source: Any,
        encoders: ThreadPoolExecutor,
        abandoned: threading.Event,
    ) -> None:
        raw_total = sum(self.unique[s].length for s in pack)
        throttle = self.http.throttle
        conn = open_connection(self.http)
        try:
            conn.putrequest(
                "POST",
                api_path(self.http, f"/projects/{self.project}/chunks"),
                skip_accept_encoding=True,
            )
            headers = {
                **base_headers(self.http),
                "Content-Type": CONTENT_TYPE,
                "Transfer-Encoding": "chunked",
            }
            for name, value in headers.items():
                conn.putheader(name, value)
            conn.endheaders()
            sock = conn.sock
            assert sock is not None
            frames = 0
            for sha, frame in self._encoded(pack, source, encoders):
                if abandoned.is_set():
                    raise _Abandoned
                if throttle is not None:
                    throttle.check()
                chunk = self.unique[sha]
                started = time.perf_counter()
                if frame is None:
                    header = raw_frame_header(chunk.length)
                    length = len(header) + chunk.length
                    record = record_head(sha, chunk.length, length) + header
                    sock.sendall(b"%x\r\n" % (len(record) + chunk.length) + record)
                    _sendfile(sock, source, chunk, self.path)
                    sock.sendall(b"\r\n")
                else:
                    length = len(frame)
                    record = record_head(sha, chunk.length, length)
                    sock.sendall(b"%x\r\n" % (len(record) + length) + record)
                    sock.sendall(frame)
                    sock.sendall(b"\r\n")
                with self.lock:
                    self.governor.observe_link(length, time.perf_counter() - started)
                    self.sent_frames += length
                if throttle is not None:
                    throttle.spend(length)
                self._cover(sha)
                frames += length
            sock.sendall(b"0\r\n\r\n")
            sent_at = time.perf_counter()
            # The server hashes what it stores: give it time by the size of the pack.
            sock.settimeout(max(SOCKET_TIMEOUT, raw_total / _SERVER_HASH_RATE))
            response = conn.getresponse()
            waited = time.perf_counter() - sent_at
            body = response.read() if response.status == 200 else b""
            if response.status != 200:
                raise self._pack_error(response)
        finally:
            conn.close()
        with self.lock:
            self.sent_chunks += len(pack)
            self.sent_raw += raw_total
        log.debug(
            "sent a pack of %d chunks (%d raw bytes, %d on the wire), then waited %.3fs for "
            "the answer: %r",
            len(pack),
            raw_total,
            frames,
            waited,
            body[:200],
        )

    def _pack_error(self, response: HTTPResponse) -> Exception:
        error = answer_error(self.http, response)
        if response.status == 422:
            return IntegrityError(
                f"the server refused a chunk of {self.path} as damaged ({error}): the file "
                "probably changed while it was uploaded. Publish it again once it is no longer "
                "being written.",
                code=getattr(error, "code", None),
                status=422,
            )
        return error

    def _assemble(self) -> None:
        cut = self.file
        assert cut is not None
        body = {
            "sha256": cut.sha256,
            "size": cut.size,
            "chunks": [{"sha256": c.sha256, "size": c.length} for c in cut.chunks],
        }
        timeout = httpx.Timeout(max(30.0, cut.size / _SERVER_HASH_RATE), connect=10.0)
        try:
            answer = self.http.json(
                "POST",
                f"/projects/{self.project}/blobs/assemble",
                json=body,
                idempotent=True,
                timeout=timeout,
            )
        except Conflict as exc:
            raise _Incomplete(f"the server lacks chunks to assemble {self.path}: {exc}") from exc
        except RequestError as exc:
            if exc.status == 422:
                raise IntegrityError(
                    f"the server could not assemble {self.path} from its chunks ({exc}): the "
                    "file probably changed while it was uploaded; publish it again.",
                    code=exc.code,
                    status=422,
                ) from exc
            raise
        if not isinstance(answer, dict) or answer.get("sha256") != cut.sha256:
            raise ProtocolError(
                f"the server at {self.http.server} assembled {self.path} under another hash "
                f"({answer!r:.200}) than {cut.sha256}"
            )


class _PackPool:
    """Packs on the wire, `PACKS_IN_FLIGHT` at a time, with the encoder threads and the open
    file they share. A failed pack stops the others (`abort`); `error()` afterwards returns
    the failure worth trying again, and raises any other."""

    def __init__(self, sender: _Sender, progressed: Callable[[], None] | None = None) -> None:
        self.sender = sender
        self.progressed = progressed
        self.abandoned = threading.Event()
        self.futures: list[Future[None]] = []

    def __enter__(self) -> _PackPool:
        self.source = self.sender.path.open("rb", buffering=0)
        workers = self.sender.workers
        self.encoders = ThreadPoolExecutor(workers, thread_name_prefix="lmvp-encode")
        self.senders = ThreadPoolExecutor(PACKS_IN_FLIGHT, thread_name_prefix="lmvp-pack")
        return self

    def __exit__(self, kind: object, *rest: object) -> None:
        if kind is not None:
            self.abort()
        # The senders finish before the encoders stop and the file closes.
        self.senders.shutdown(wait=True)
        self.encoders.shutdown(wait=True)
        self.source.close()

    def submit(self, pack: list[str]) -> None:
        self.futures.append(self.senders.submit(self._one, list(pack)))

    def abort(self) -> None:
        self.abandoned.set()

    def _one(self, pack: list[str]) -> None:
        if self.abandoned.is_set():
            return
        try:
            self.sender._post_pack(pack, self.source, self.encoders, self.abandoned)
        except BaseException:
            self.abandoned.set()
            raise
        if self.progressed is not None:
            self.progressed()

    def error(self) -> BaseException | None:
        errors = [e for e in (f.exception() for f in self.futures) if e is not None]
        errors = [e for e in errors if not isinstance(e, _Abandoned)]
        for error in errors:
            if not isinstance(error, TransientAnswer | OSError | HTTPException):
                raise error
        return errors[0] if errors else None


def _failed(tries: Attempts, error: BaseException) -> None:
    """Count a failed round against `tries` (sleeping before the next, or raising)."""
    if isinstance(error, TransientAnswer):
        tries.failed(error.error, error.retry_after)
    else:
        tries.failed(error)


def _full(pack: list[str], chunks: dict[str, Chunk]) -> bool:
    """Whether `pack` is as large as one pack may be."""
    return len(pack) >= _ASK_BATCH or sum(chunks[s].length for s in pack) >= PACK_SIZE


def _safetensors_dtypes(path: Path) -> dict[str, str]:
    """Tensor name → dtype from a safetensors file's header ({} when none parses; only called
    for a file `chunk_file` recognised as safetensors)."""
    try:
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > 100_000_000:
                return {}
            header = json.loads(f.read(length))
        return {
            name: entry["dtype"]
            for name, entry in header.items()
            if isinstance(entry, dict) and isinstance(entry.get("dtype"), str)
        }
    except (OSError, ValueError, struct.error, AttributeError, TypeError):
        return {}


def record_head(sha256: str, raw_length: int, frame_length: int) -> bytes:
    """The 40 bytes before a frame in a pack: the chunk's sha256 (raw), its raw length and the
    frame's length (u32 little-endian each)."""
    return _RECORD.pack(bytes.fromhex(sha256), raw_length, frame_length)


class _Abandoned(Exception):
    """Another pack of the same file failed: this one stops (the round starts again)."""


def _sendfile(sock: Any, source: Any, chunk: Chunk, path: Path) -> None:
    """Send the chunk's bytes straight from the file, at the chunk's own offsets (the packs in
    flight share `source` from several threads; see `send_range`)."""
    sent = 0
    while sent < chunk.length:
        n = send_range(sock, source, chunk.offset + sent, min(_SENDFILE_SLICE, chunk.length - sent))
        if n == 0:
            raise IntegrityError(
                f"{path} got shorter while it was uploaded; publish it again once it is no "
                "longer being written."
            )
        sent += n


# ---------------------------------------------------------------------------------------------
# Fetching


@dataclass(frozen=True)
class _Listed:
    sha256: str
    length: int
    offsets: tuple[int, ...]


def download_chunked(
    http: HTTP,
    project: str,
    sha256: str,
    size: int,
    *,
    blobs: Path,
    lists: Path,
    progress: Progress | None = None,
) -> Path:
    """Fetch blob `sha256` (`size` bytes) of `project` into `blobs/<sha256>` chunk by chunk,
    taking every chunk it can from the local cache (`lists` holds the chunk lists of cached
    blobs); returns the blob's path. The caller holds the blob's lock.

    `progress(n)` counts the blob's bytes as they become present (chunks found locally at
    once). Raises `NotChunked` when the server holds the blob whole (download it plainly),
    `IntegrityError` when a chunk or the whole file from the server does not match its sha256
    (nothing damaged is kept), `ProtocolError` for a chunk list that breaks the protocol,
    `ServerUnavailable` when the server stays out of reach after retries.
    """
    listing = _chunk_list(http, project, sha256, size)
    fetch = _Fetch(http, project, sha256, size, listing, blobs, lists, progress)
    return fetch.run()


def _chunk_list(http: HTTP, project: str, sha256: str, size: int) -> list[_Listed]:
    try:
        body = http.json("GET", f"/projects/{project}/blobs/{sha256}/chunks")
    except NotFound as exc:
        # "not_chunked": stored whole. Any other 404 (a server without the chunk protocol, a
        # blob the project lacks) is the plain download's to report.
        raise NotChunked(str(exc)) from exc
    except RequestError as exc:
        if exc.status == 405:
            raise NotChunked(str(exc)) from exc
        raise
    return _checked_list(body, http.server, sha256, size)


def _checked_list(body: Any, server: str, sha256: str, size: int) -> list[_Listed]:
    """The chunk list of a reply, checked: it must cover the blob's `size` bytes contiguously
    with chunks named by sha256, each as long everywhere it occurs."""

    def bad(why: str) -> ProtocolError:
        return ProtocolError(f"the server at {server} sent a broken chunk list for {sha256}: {why}")

    if not isinstance(body, dict) or body.get("sha256") != sha256 or body.get("size") != size:
        raise bad("it names another blob or size")
    entries = body.get("chunks")
    if not isinstance(entries, list) or (size > 0 and not entries):
        raise bad("no chunks")
    cursor = 0
    found: dict[str, tuple[int, list[int]]] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise bad("a chunk is not an object")
        sha, length, offset = entry.get("sha256"), entry.get("size"), entry.get("offset")
        if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
            raise bad(f"{sha!r} is not a sha256")
        if not isinstance(length, int) or isinstance(length, bool) or not 0 < length <= 1 << 31:
            raise bad(f"chunk {sha} has size {length!r}")
        if offset != cursor:
            raise bad(f"chunk {sha} is at {offset!r} where {cursor} was next")
        cursor += length
        known = found.setdefault(sha, (length, []))
        if known[0] != length:
            raise bad(f"chunk {sha} has two sizes")
        known[1].append(offset)
    if cursor != size:
        raise bad(f"the chunks cover {cursor} bytes of {size}")
    return [_Listed(sha, length, tuple(offsets)) for sha, (length, offsets) in found.items()]


class _Fetch:
    """One chunked blob into `<sha256>.chunks-incomplete`, then renamed into place."""

    def __init__(
        self,
        http: HTTP,
        project: str,
        sha256: str,
        size: int,
        listing: list[_Listed],
        blobs: Path,
        lists: Path,
        progress: Progress | None,
    ) -> None:
        self.http = http
        self.project = project
        self.sha256 = sha256
        self.size = size
        self.listing = {c.sha256: c for c in listing}
        self.blobs = blobs
        self.lists = lists
        self.final = blobs / sha256
        self.partial = blobs / f"{sha256}.chunks-incomplete"
        self.progress = progress
        self.lock = threading.Lock()
        self.done: set[str] = set()
        self.reported = 0
        self.fetched_chunks = 0
        self.fetched_bytes = 0
        # The chunks in file order, which of them are in place, and a hasher that follows the
        # contiguous prefix in place (so the whole-file hash is done when the last chunk is).
        self.placed = sorted((o, c.length, c.sha256) for c in listing for o in c.offsets)
        self.slots: dict[str, list[int]] = {}
        for i, (_, _, sha) in enumerate(self.placed):
            self.slots.setdefault(sha, []).append(i)
        self.ready = [False] * len(self.placed)
        self.arrived = threading.Condition(self.lock)
        self.stop_hashing = False

    def run(self) -> Path:
        fd = os.open(self.partial, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            self._fill(fd)
        except BaseException:
            with self.lock:  # a retry counts the blob again from what it finds
                if self.progress is not None and self.reported:
                    self.progress(-self.reported)
                self.reported = 0
            raise
        finally:
            os.close(fd)
        os.replace(self.partial, self.final)
        with contextlib.suppress(OSError):
            dir_fd = os.open(self.blobs, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        self._keep_list()
        return self.final

    def _fill(self, fd: int) -> None:
        """Every chunk into the partial file, which must then hash to the blob's name."""
        had = os.fstat(fd).st_size
        if had != self.size:
            os.ftruncate(fd, 0)
            os.ftruncate(fd, self.size)
        with ThreadPoolExecutor(1, thread_name_prefix="lmvp-hash") as hashing:
            whole = hashing.submit(self._hash_in_order, fd)
            try:
                self._from_local(fd, resumed=had == self.size)
                tries = transfer_attempts(self.http)
                while len(self.done) < len(self.listing):
                    try:
                        before = len(self.done)
                        started, received = time.perf_counter(), self.fetched_bytes
                        self._fetch_rest(fd)
                        links.record(
                            self.http.server,
                            "down",
                            self.fetched_bytes - received,
                            time.perf_counter() - started,
                        )
                    except TransientAnswer as exc:
                        tries.failed(exc.error, exc.retry_after)
                    except TRANSIENT as exc:
                        tries.failed(exc)
                    if len(self.done) > before:
                        tries.progressed()
            except BaseException:
                with self.arrived:
                    self.stop_hashing = True
                    self.arrived.notify_all()
                raise
            digest = whole.result()
        if digest != self.sha256:
            os.ftruncate(fd, 0)
            raise IntegrityError(
                f"blob {self.sha256} from {self.http.server} did not hash to its name once "
                f"assembled from its chunks (it hashed to {digest}); nothing was kept"
            )
        os.fsync(fd)

    # -- local chunks --------------------------------------------------------------------------

    def _from_local(self, fd: int, *, resumed: bool) -> None:
        """Mark done (and copy into place) every chunk found intact on this disk: in the
        partial file of an earlier attempt (when `resumed`), or inside a cached blob whose
        chunk list is kept. A few chunks at a time (hashlib and the disk release the GIL)."""
        elsewhere = self._cached_chunks()
        if not resumed and not elsewhere:
            return

        def one(listed: _Listed) -> None:
            good: bytes | None = None
            missing_at: list[int] = list(listed.offsets)
            if resumed:
                missing_at = []
                for offset in listed.offsets:
                    data = os.pread(fd, listed.length, offset)
                    if hashlib.sha256(data).hexdigest() == listed.sha256:
                        good = data
                    else:
                        missing_at.append(offset)
            if good is None:
                good = self._read_cached(elsewhere.get(listed.sha256, []), listed)
            if good is None:
                return
            for offset in missing_at:
                _pwrite_all(fd, good, offset)
            self._mark_done(listed)

        workers = min(4, os.cpu_count() or 1)
        with ThreadPoolExecutor(workers, thread_name_prefix="lmvp-local-chunks") as pool:
            for _ in pool.map(one, self.listing.values()):
                pass

    def _cached_chunks(self) -> dict[str, list[tuple[Path, int]]]:
        """sha256 → [(cached blob, offset), ...] for the chunks of the cached blobs whose
        chunk lists are kept."""
        found: dict[str, list[tuple[Path, int]]] = {}
        try:
            names = sorted(os.listdir(self.lists))
        except FileNotFoundError:
            return found
        for name in names:
            blob_sha = name.removesuffix(".json")
            if blob_sha == self.sha256 or not _SHA256.fullmatch(blob_sha):
                continue
            blob = self.blobs / blob_sha
            try:
                entries = json.loads((self.lists / name).read_text())
                if blob.stat().st_size != sum(int(e["size"]) for e in entries):
                    continue
                for entry in entries:
                    sha = str(entry["sha256"])
                    if sha in self.listing:
                        found.setdefault(sha, []).append((blob, int(entry["offset"])))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a blob gone or a list damaged: its chunks come from the server
        return found

    def _read_cached(self, places: list[tuple[Path, int]], listed: _Listed) -> bytes | None:
        """The chunk's bytes from the first of `places` that holds them intact."""
        for blob, offset in places:
            try:
                with blob.open("rb", buffering=0) as f:
                    data = os.pread(f.fileno(), listed.length, offset)
            except OSError:
                continue
            if hashlib.sha256(data).hexdigest() == listed.sha256:
                return data
            log.warning(
                "the cached copy of chunk %s in %s is damaged; looking for it elsewhere",
                listed.sha256,
                blob,
            )
        return None

    def _mark_done(self, listed: _Listed) -> None:
        with self.arrived:
            self.done.add(listed.sha256)
            if self.progress is not None:
                self.progress(listed.length * len(listed.offsets))
            self.reported += listed.length * len(listed.offsets)
            for i in self.slots[listed.sha256]:
                self.ready[i] = True
            self.arrived.notify_all()

    def _hash_in_order(self, fd: int) -> str | None:
        """The whole file's sha256, hashed from the partial file as its prefix falls into
        place (None if the download stops first)."""
        hasher = hashlib.sha256()
        buffer = memoryview(bytearray(8 * MiB))
        i = 0
        while i < len(self.placed):
            with self.arrived:
                while not self.ready[i] and not self.stop_hashing:
                    self.arrived.wait()
                if self.stop_hashing:
                    return None
                j = i
                while j < len(self.placed) and self.ready[j]:
                    j += 1
            offset, end = self.placed[i][0], self.placed[j - 1][0] + self.placed[j - 1][1]
            while offset < end:
                n = os.preadv(fd, [buffer[: min(len(buffer), end - offset)]], offset)
                if n == 0:
                    raise IntegrityError(f"the partial download of {self.sha256} got shorter")
                hasher.update(buffer[:n])
                offset += n
            i = j
        return hasher.hexdigest()

    # -- chunks from the server ----------------------------------------------------------------

    def _fetch_rest(self, fd: int) -> None:
        rest = [s for s in self.listing if s not in self.done]
        batches: list[list[str]] = [[]]
        raw = 0
        for sha in rest:
            length = self.listing[sha].length
            if batches[-1] and (raw + length > PACK_SIZE or len(batches[-1]) >= _ASK_BATCH):
                batches.append([])
                raw = 0
            batches[-1].append(sha)
            raw += length
        failed = threading.Event()

        def one(batch: list[str]) -> None:
            if failed.is_set():
                return
            try:
                self._fetch_batch(fd, batch, failed)
            except BaseException:
                failed.set()
                raise

        with ThreadPoolExecutor(PACKS_IN_FLIGHT, thread_name_prefix="lmvp-fetch") as pool:
            futures = [pool.submit(one, batch) for batch in batches]
        errors = [e for e in (f.exception() for f in futures) if e is not None]
        # A damaged chunk or a refusal outranks a dropped connection: retrying cannot mend it.
        for error in errors:
            if isinstance(error, LMVPError):
                raise error
        if errors:
            raise errors[0]

    def _fetch_batch(self, fd: int, batch: list[str], failed: threading.Event) -> None:
        conn: HTTPConnection = open_connection(self.http)
        try:
            body = json.dumps({"chunks": batch}).encode()
            headers = {
                **base_headers(self.http),
                "Content-Type": "application/json",
                "Accept": CONTENT_TYPE,
            }
            conn.request(
                "POST",
                api_path(self.http, f"/projects/{self.project}/chunks/fetch"),
                body=body,
                headers=headers,
            )
            response = conn.getresponse()
            if response.status != 200:
                raise answer_error(self.http, response)
            for sha in batch:
                if failed.is_set():
                    return
                self._receive_record(fd, response, self.listing[sha])
        finally:
            conn.close()

    def _receive_record(self, fd: int, response: HTTPResponse, listed: _Listed) -> None:
        head = _read_exact(response, _RECORD.size)
        raw_sha, raw_len, frame_len = _RECORD.unpack(head)
        if raw_sha.hex() != listed.sha256 or raw_len != listed.length:
            raise IntegrityError(
                f"the server at {self.http.server} sent chunk {raw_sha.hex()} ({raw_len} bytes) "
                f"where chunk {listed.sha256} ({listed.length} bytes) of blob {self.sha256} "
                "was asked for; nothing of it was written"
            )
        if frame_len > raw_len + _FRAME_SLACK:
            raise IntegrityError(
                f"the server at {self.http.server} sent a {frame_len}-byte frame for chunk "
                f"{listed.sha256} of {raw_len} bytes: it is damaged; nothing of it was written"
            )
        frame = memoryview(bytearray(frame_len))
        _read_into(response, frame)
        try:
            if frame_info(frame).method is Method.RAW and frame_len == _RAW_HEADER + raw_len:
                data: bytes | memoryview = frame[_RAW_HEADER:]  # no copy: the bytes as they came
            else:
                data = decode(frame, expected_length=listed.length)
        except IntegrityError as exc:
            raise IntegrityError(
                f"chunk {listed.sha256} of blob {self.sha256} arrived damaged from "
                f"{self.http.server} ({exc}); nothing of it was written. If this repeats, the "
                "server's copy is damaged: tell its administrator."
            ) from None
        if hashlib.sha256(data).hexdigest() != listed.sha256:
            raise IntegrityError(
                f"chunk {listed.sha256} of blob {self.sha256} from {self.http.server} does not "
                "hash to its name; nothing of it was written. If this repeats, the server's copy "
                "is damaged: tell its administrator."
            )
        for offset in listed.offsets:
            _pwrite_all(fd, data, offset)
            start_writeback(fd, offset, len(data))
        with self.lock:
            self.fetched_chunks += 1
            self.fetched_bytes += frame_len
        self._mark_done(listed)

    def _keep_list(self) -> None:
        """Remember the blob's chunk list: later downloads take its chunks from it."""
        placed = sorted(
            (offset, c.sha256, c.length) for c in self.listing.values() for offset in c.offsets
        )
        entries = [{"sha256": sha, "size": n, "offset": offset} for offset, sha, n in placed]
        try:
            self.lists.mkdir(parents=True, exist_ok=True, mode=0o700)
            target = self.lists / f"{self.sha256}.json"
            tmp = self.lists / f".{self.sha256}.{os.getpid()}.{threading.get_ident()}.tmp"
            tmp.write_text(json.dumps(entries))
            os.replace(tmp, target)
        except OSError as exc:
            log.warning("could not keep the chunk list of %s (%s)", self.sha256, exc)


def _read_into(response: HTTPResponse, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = response.readinto(view[got:])
        if not n:
            raise ConnectionError(f"the chunk stream ended after {got} of {len(view)} bytes")
        got += n


def _read_exact(response: HTTPResponse, n: int) -> bytes:
    data = response.read(n)
    if len(data) != n:
        raise ConnectionError(f"the chunk stream ended after {len(data)} of {n} bytes")
    return data


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    written = 0
    while written < len(view):
        written += os.pwrite(fd, view[written:], offset + written)
