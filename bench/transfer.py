"""Upload and download a large checkpoint through a real LMVP server and compare with `cp`.

In one run: make a 1 GiB file, copy it with `cp` + fsync (the baseline: what the disk and the
page cache allow), then upload it with tus (one PATCH, streamed) and download it back (streamed
to disk, fsynced, sha256 verified); then the same through `lmvp.update` (which hands the file to
this machine's server over its Unix socket; also timed over HTTP) and `lmvp.download`. Prints
MB/s and each ratio against the baseline, medians of --repeat runs.
Usage: python bench/transfer.py [--size-mib 1024] [--repeat 3]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import lmvp
from lmvp.wire import start_writeback

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _server import BenchServer, bench_server, median, post_json, rss_mb

CHUNK = 1024 * 1024


def make_file(path: Path, size: int) -> str:
    block = os.urandom(CHUNK)
    h = hashlib.sha256()
    with path.open("wb") as f:
        for i in range(size // CHUNK):
            piece = i.to_bytes(8, "little") + block[8:]
            f.write(piece)
            h.update(piece)
    return h.hexdigest()


def make_unique(path: Path, n: int) -> str:
    """Give the file bytes no earlier upload had (its first 16 bytes); returns its sha256.

    The server keeps one copy of each blob, so an upload of bytes it already holds ends by
    throwing the received copy away: not what uploading a new checkpoint costs.
    """
    with path.open("r+b") as f:
        f.write(b"LMVP-bench-" + n.to_bytes(5, "little"))
    return sha256_file(path)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_baseline(src: Path, dst: Path) -> float:
    settle()
    start = time.perf_counter()
    subprocess.run(["cp", str(src), str(dst)], check=True)
    fsync_path(dst)
    elapsed = time.perf_counter() - start
    dst.unlink()
    return elapsed


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * CHUNK):
            h.update(chunk)
    return h.hexdigest()


def upload(server: BenchServer, project: str, src: Path, digest: str) -> float:
    """tus create + one streamed PATCH; the timer covers both, the client hash is apart."""
    size = src.stat().st_size
    meta = ",".join(
        f"{k} {base64.b64encode(v.encode()).decode()}"
        for k, v in {"project": project, "sha256": digest, "filename": src.name}.items()
    )
    auth = {"Authorization": f"Bearer {server.token}", "Tus-Resumable": "1.0.0"}
    settle()
    start = time.perf_counter()
    conn = http.client.HTTPConnection(server.host, server.port, timeout=600, blocksize=CHUNK)
    conn.request(
        "POST",
        "/api/v1/uploads",
        headers={**auth, "Upload-Length": str(size), "Upload-Metadata": meta},
    )
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 201, resp.status
    location = resp.getheader("Location", "")
    path = location.split(f":{server.port}", 1)[1]
    # The body goes out with sendfile(2): straight from the page cache to the socket, which
    # leaves the CPU to the server on a two-core machine (a client-side choice; tus allows any).
    conn.putrequest("PATCH", path, skip_accept_encoding=True)
    for name, value in {
        **auth,
        "Upload-Offset": "0",
        "Content-Length": str(size),
        "Content-Type": "application/offset+octet-stream",
    }.items():
        conn.putheader(name, value)
    conn.endheaders()
    with src.open("rb") as body:
        assert conn.sock is not None
        conn.sock.sendfile(body)
    resp = conn.getresponse()
    text = resp.read()
    assert resp.status == 204, (resp.status, text)
    conn.close()
    return time.perf_counter() - start


def download(server: BenchServer, project: str, digest: str, dst: Path) -> float:
    """Stream the blob to disk while a second thread hashes it; fsync; verify.

    Reads go into a few reused buffers: a fresh 4 MiB bytes object per read costs page faults.
    """
    settle()
    start = time.perf_counter()
    conn = http.client.HTTPConnection(server.host, server.port, timeout=600)
    conn.request(
        "GET",
        f"/api/v1/projects/{project}/blobs/{digest}",
        headers={"Authorization": f"Bearer {server.token}"},
    )
    resp = conn.getresponse()
    assert resp.status == 200, resp.status
    hasher = hashlib.sha256()
    buffers = [bytearray(4 * CHUNK) for _ in range(3)]
    hashing = ThreadPoolExecutor(max_workers=1)
    pending: list[Future[None]] = []
    with dst.open("wb", buffering=0) as out:
        i = written = 0
        while True:
            buf = buffers[i % len(buffers)]
            if len(pending) == len(buffers) - 1:
                pending.pop(0).result()  # the buffer we are about to fill is hashed
            n = resp.readinto(buf)
            if not n:
                break
            view = memoryview(buf)[:n]
            out.write(view)
            start_writeback(out.fileno(), written, n)
            written += n
            pending.append(hashing.submit(hasher.update, view))
            i += 1
        for fut in pending:
            fut.result()
        os.fsync(out.fileno())
    hashing.shutdown()
    conn.close()
    elapsed = time.perf_counter() - start
    assert hasher.hexdigest() == digest, "downloaded bytes do not match"
    dst.unlink()
    return elapsed


def settle() -> None:
    """Write every dirty page out before the next timed step, so that no step pays for the
    write-back of the gigabytes the one before it wrote (cp + fsync, run right after a 1 GiB
    download, measured anywhere from 550 to 1,300 MB/s)."""
    os.sync()
    time.sleep(0.2)


def timed(action: Callable[[], object]) -> float:
    settle()
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mib * CHUNK
    mb = size / 1e6
    work = Path(tempfile.mkdtemp(prefix="lmvp-transfer-", dir=os.environ.get("BENCH_DIR")))
    try:
        src = work / "checkpoint.safetensors"
        print(f"making a {args.size_mib} MiB file in {work} ...", flush=True)
        digest = make_file(src, size)
        t0 = time.perf_counter()
        assert sha256_file(src) == digest
        hash_s = time.perf_counter() - t0

        with bench_server(work / "server") as server:
            idle_rss = rss_mb(server.pid)
            cp_s, up_s, down_s = [], [], []
            api_up_s, api_down_s, republish_s, rehash_s = [], [], [], []
            api_http_up_s: list[float] = []
            client = lmvp.Client(server.url, server.token)
            for i in range(args.repeat):
                cp_s.append(copy_baseline(src, work / "copy"))
                project = f"bench{i}"
                post_json(server, "/projects", {"name": project})
                digest = make_unique(src, 3 * i)
                up_s.append(upload(server, project, src, digest))
                down_s.append(download(server, project, digest, work / "download"))
                # The client path: what `lmvp.update` / `lmvp.download` cost end to end
                # (update includes hashing the file; download verifies and fills the cache).
                api_project = f"api{i}"
                client.create_project(api_project)
                # Each first publish starts with no remembered hashes, as on a new machine.
                os.environ["LMVP_CACHE_DIR"] = str(work / f"memo{i}")
                make_unique(src, 3 * i + 1)
                # Files changed in the last 2 s are not remembered (they may still change
                # within the clock's granularity); a checkpoint is older by the time it is
                # published again.
                time.sleep(2.1)
                api_up_s.append(timed(lambda: client.update(f"{api_project}/m", src)))  # noqa: B023
                republish_s.append(timed(lambda: client.update(f"{api_project}/m", src)))  # noqa: B023
                os.environ["LMVP_CACHE_DIR"] = str(work / f"memo{i}-cold")
                rehash_s.append(timed(lambda: client.update(f"{api_project}/m", src)))  # noqa: B023
                # The same first publish as to a server on another machine: over HTTP.
                client.create_project(f"{api_project}-http")
                os.environ["LMVP_CACHE_DIR"] = str(work / f"memo{i}-http")
                os.environ["LMVP_LOCAL_UPLOADS"] = "0"
                make_unique(src, 3 * i + 2)
                api_http_up_s.append(
                    timed(lambda: client.update(f"{api_project}-http/m", src))  # noqa: B023
                )
                del os.environ["LMVP_LOCAL_UPLOADS"]
                cache = work / f"cache{i}"
                api_down_s.append(
                    timed(lambda: client.download(f"{api_project}/m", cache_dir=cache))  # noqa: B023
                )
                shutil.rmtree(cache)
                print(
                    f"  run {i + 1}: cp {mb / cp_s[-1]:.0f} MB/s | server: upload "
                    f"{mb / up_s[-1]:.0f}, download {mb / down_s[-1]:.0f} MB/s | lmvp.update "
                    f"{mb / api_up_s[-1]:.0f} (over HTTP {mb / api_http_up_s[-1]:.0f}), "
                    f"lmvp.download {mb / api_down_s[-1]:.0f} MB/s, "
                    f"re-publish {republish_s[-1]:.2f} s "
                    f"({rehash_s[-1]:.2f} s without remembered hashes)",
                    flush=True,
                )
            client.close()
            busy_rss = rss_mb(server.pid)

        cp, up, down = mb / median(cp_s), mb / median(up_s), mb / median(down_s)
        api_up, api_down = mb / median(api_up_s), mb / median(api_down_s)
        print(f"\n{args.size_mib} MiB, medians of {args.repeat} runs:")
        print(f"  cp + fsync (baseline)        {cp:7.0f} MB/s")
        print(f"  server upload (tus PATCH)    {up:7.0f} MB/s   {up / cp:.2f}x baseline")
        print(f"  server download (GET)        {down:7.0f} MB/s   {down / cp:.2f}x baseline")
        api_http_up = mb / median(api_http_up_s)
        print(f"  lmvp.update (first publish)  {api_up:7.0f} MB/s   {api_up / cp:.2f}x baseline")
        print(
            f"    the same over HTTP         {api_http_up:7.0f} MB/s   {api_http_up / cp:.2f}x "
            "baseline (LMVP_LOCAL_UPLOADS=0: as to a server on another machine)"
        )
        print(
            f"  lmvp.download (to cache)     {api_down:7.0f} MB/s   {api_down / cp:.2f}x baseline"
        )
        print(
            f"  re-publishing the unchanged file: {median(republish_s):.2f} s with its hash "
            f"remembered, {median(rehash_s):.2f} s without (the server is on this machine, so "
            "the client does not hash the file as well: it hands it over, the server hashes it "
            "and keeps the blob it already has)"
        )
        print(
            f"  sha256 of the file alone: {mb / hash_s:.0f} MB/s "
            f"({hash_s:.2f} s, not in the server upload figure)"
        )
        print(f"  server RSS: idle {idle_rss:.0f} MB, after the transfers {busy_rss:.0f} MB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
