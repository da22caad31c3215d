"""What the upload staging sends an S3-compatible store, by the link between them.

Parts and tails go up with a Content-MD5 (a signed header the store checks) only where the link
could change them on the way: plain HTTP to another host. Over HTTPS, TLS authenticates every
record; on this machine's loopback there is no wire; MD5 there would cost the worker 1.5 ms of
CPU per MiB for nothing. A relay between the server and a real store (SeaweedFS) sees what
goes over the wire, and on a non-loopback address plays the man in the middle who flips a byte
of every body: the store refuses the part, nothing is recorded or stored, and the upload
completes with the right sha256 once the link is clean again.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from lmvp_server.s3 import link_protected
from tests.s3 import SeaweedFS
from tests.server.test_uploads import assert_error, patch, server_offset
from tests.server.test_uploads_s3 import downloaded_sha256
from tests.support import (
    ADMIN_PASSWORD,
    Api,
    Deployment,
    ServerProcess,
    running,
    sha256_bytes,
    tus_create,
    unique,
)

MiB = 1024 * 1024
# Bodies at least this long are a part's or a tail's (the store's other requests are small).
BODY = 1 * MiB


@pytest.mark.parametrize(
    ("endpoint", "protected"),
    [
        ("", True),  # AWS's own endpoints, over HTTPS
        ("https://s3.example.org", True),
        ("HTTPS://10.0.0.5:9000", True),
        ("http://127.0.0.1:8333", True),
        ("http://127.8.9.10:8333", True),
        ("http://[::1]:8333", True),
        ("http://localhost:9000", True),
        ("http://minio.localhost:9000", True),
        ("http://10.0.0.5:9000", False),
        ("http://[fd00::5]:9000", False),
        ("http://minio.internal:9000", False),
        ("http://localhost.evil.example:9000", False),
    ],
)
def test_only_a_link_that_could_change_the_bytes_needs_their_md5(
    endpoint: str, protected: bool
) -> None:
    assert link_protected(endpoint) is protected


class StoreRelay:
    """Relays `host`:<port> to the store, reading each request's headers: `md5` counts the big
    bodies that came with a Content-MD5 and `bare` those without; with `tamper` set, one byte
    of every big body is flipped on the way."""

    def __init__(self, host: str, store_port: int) -> None:
        self.store_port = store_port
        self.tamper = False
        self.md5 = self.bare = self.flipped = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server((host, 0))
        self.endpoint_url = f"http://{host}:{self._listener.getsockname()[1]}"
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        for sock in [self._listener, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            store = socket.create_connection(("127.0.0.1", self.store_port))
            self._sockets += [client, store]
            threading.Thread(target=self._requests, args=(client, store), daemon=True).start()
            threading.Thread(target=self._pump, args=(store, client), daemon=True).start()

    def _requests(self, src: socket.socket, dst: socket.socket) -> None:
        """Each request's headers as they are, its body (flipped if tampering) after them."""
        pending = b""
        try:
            while True:
                while b"\r\n\r\n" not in pending:
                    data = src.recv(1 << 16)
                    if not data:
                        return
                    pending += data
                head, _, pending = pending.partition(b"\r\n\r\n")
                fields = {
                    name.strip().lower(): value.strip()
                    for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
                }
                length = int(fields.get(b"content-length", b"0"))
                dst.sendall(head + b"\r\n\r\n")
                body = bytearray(pending[:length])
                pending = pending[length:]
                while len(body) < length:
                    data = src.recv(min(1 << 20, length - len(body)))
                    if not data:
                        return
                    body += data
                if length >= BODY:
                    with self._lock:
                        if b"content-md5" in fields:
                            self.md5 += 1
                        else:
                            self.bare += 1
                        if self.tamper:
                            body[length // 2] ^= 0x01
                            self.flipped += 1
                dst.sendall(body)
        except OSError:
            pass

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 20):
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def non_loopback_address() -> str | None:
    """An address of this machine that is not loopback (the one its default route leaves
    from), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent; the kernel picks a route
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") or address == "0.0.0.0" else address


@dataclass
class Uploader:
    server: ServerProcess
    prefix: str  # the server's in the bucket
    owner: Api  # a user who may upload to `project`
    project: str


@contextlib.contextmanager
def uploading_through(
    relay: StoreRelay, make_server: Callable[[str], ServerProcess], store: SeaweedFS
) -> Iterator[Uploader]:
    """A running server that reaches `store` through `relay`, with a user and a project."""
    server = make_server("sqlite")
    prefix = unique("link")
    server.extra_env = {**store.server_env(prefix), "LMVP_S3_ENDPOINT_URL": relay.endpoint_url}
    try:
        with running(server):
            deployment = Deployment(server, Api(server.url).login("admin", ADMIN_PASSWORD))
            owner = deployment.user("uploader")
            yield Uploader(server, prefix, owner, deployment.project(owner))
    finally:
        relay.close()


@pytest.mark.backends("sqlite")
def test_over_loopback_parts_go_without_their_md5(
    make_server: Callable[[str], ServerProcess], seaweedfs: SeaweedFS
) -> None:
    relay = StoreRelay("127.0.0.1", seaweedfs.s3_port)
    with uploading_through(relay, make_server, seaweedfs) as up:
        data = os.urandom(37 * MiB)
        digest = sha256_bytes(data)
        location = tus_create(up.owner, up.project, digest, len(data))
        # 20 MiB: a part and a tail; the rest: the tail read back, a part and the last one.
        assert patch(up.owner, location, 0, data[: 20 * MiB]).status_code == 204
        r = patch(up.owner, location, 20 * MiB, data[20 * MiB :])

        assert r.status_code == 204, r.text
        assert r.headers["LMVP-Blob-Sha256"] == digest
        assert downloaded_sha256(up.owner, up.project, digest) == digest
        assert relay.bare >= 3
        assert relay.md5 == 0


@pytest.mark.backends("sqlite")
def test_over_plain_http_to_another_host_a_byte_changed_on_the_way_is_refused(
    make_server: Callable[[str], ServerProcess], seaweedfs: SeaweedFS
) -> None:
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no address but loopback to reach the store by")
    relay = StoreRelay(address, seaweedfs.s3_port)
    with uploading_through(relay, make_server, seaweedfs) as up:
        data = os.urandom(37 * MiB)
        digest = sha256_bytes(data)
        location = tus_create(up.owner, up.project, digest, len(data))
        assert patch(up.owner, location, 0, data[: 20 * MiB]).status_code == 204
        assert relay.md5 >= 2 and relay.bare == 0  # a part and a tail, each with its MD5

        relay.tamper = True
        r = patch(up.owner, location, 20 * MiB, data[20 * MiB :])

        # The store refused the changed part: nothing of it counts, nothing is stored.
        assert relay.flipped >= 1
        assert_error(r, 503)
        assert up.server.log_path is not None
        assert "BadDigest" in up.server.log_path.read_text()
        assert server_offset(up.owner, location) == 20 * MiB
        assert seaweedfs.objects(prefix=f"{up.prefix}/blobs/") == {}

        relay.tamper = False
        r = patch(up.owner, location, 20 * MiB, data[20 * MiB :])
        assert r.status_code == 204, r.text
        assert r.headers["LMVP-Blob-Sha256"] == digest
        assert downloaded_sha256(up.owner, up.project, digest) == digest
