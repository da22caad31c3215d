"""Request heads are bounded while they arrive, with no proxy in front.

The audit sent a 16 MiB header (answered 200) and two unfinished 128 MiB headers, which grew
the server from 180 to 488 MiB for good. Now a head past 64 KiB, or past 100 header fields, is
answered 431 and the connection closed as soon as the limit is crossed: the server never holds
more of it, and keeps answering everyone else.

SQLite only: the limit is in the HTTP protocol layer; the database plays no part.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.support import Api, Deployment

pytestmark = pytest.mark.backends("sqlite")
MiB = 1024 * 1024


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def send_head_until_closed(
    url: str, head_start: bytes, total: int, *, finish: bool, chunk: int = MiB
) -> tuple[bytes, int]:
    """Send `head_start` and then up to `total` bytes of one header value (and the end of the
    head if `finish`), stopping when the server answers or closes; returns what it answered
    and how many bytes of the value went out."""
    answer = b""
    with connect(url) as s:
        sent = 0
        s.sendall(head_start)
        piece = b"a" * chunk
        try:
            while sent < total:
                s.sendall(piece)
                sent += len(piece)
                if select.select([s], [], [], 0)[0]:
                    break
            else:
                if finish:
                    s.sendall(b"\r\n\r\n")
        except OSError:  # the server closed while we were sending: what it must do
            pass
        with contextlib.suppress(OSError):
            while more := s.recv(65536):
                answer += more
    return answer, sent


def test_a_16_mib_header_gets_431(deployment: Deployment) -> None:
    answer, sent = send_head_until_closed(
        deployment.url, b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Big: ", 16 * MiB, finish=True
    )

    assert sent < 16 * MiB  # refused while the header arrived
    # The answer is 431, or (if the kernel dropped it when the connection was reset under
    # the bytes still coming) nothing: never the 200 the audit got.
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    if answer:
        assert b'"code": "headers_too_large"' in answer


def test_a_head_just_over_the_limit_is_answered_431_with_the_error_body(
    deployment: Deployment,
) -> None:
    with connect(deployment.url) as s:
        s.sendall(
            b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
        )
        answer = b""
        while more := s.recv(65536):
            answer += more

    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large"), head
    assert b"65536 bytes" in body


def test_too_many_header_fields_get_431_and_a_normal_request_still_works(
    deployment: Deployment,
) -> None:
    many = {f"X-H{i}": "1" for i in range(101)}
    r = requests.get(f"{deployment.url}/api/v1/health", headers=many, timeout=10)
    assert r.status_code == 431
    assert r.json()["error"]["code"] == "headers_too_large"

    some = {f"X-H{i}": "v" * 500 for i in range(90)}  # 45 KiB in 90 fields: allowed
    assert requests.get(f"{deployment.url}/api/v1/health", headers=some, timeout=10).ok


def test_an_upload_whose_head_and_body_arrive_together_is_not_cut(deployment: Deployment) -> None:
    owner = deployment.user("heads")
    project = deployment.project(owner)
    data = os.urandom(3 * MiB)
    sha = deployment.upload(owner, project, data)
    assert owner.get(f"/projects/{project}/blobs/{sha}").content == data


def test_unfinished_128_mib_headers_do_not_grow_the_server(deployment: Deployment) -> None:
    assert deployment.server.proc is not None
    pid = deployment.server.proc.pid
    health = Api(deployment.url)
    assert health.get("/health").ok
    before = rss_kib(pid)
    answers: list[bytes] = []
    sent_bytes: list[int] = []

    def attack() -> None:
        answer, sent = send_head_until_closed(
            deployment.url, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ", 128 * MiB, finish=False
        )
        answers.append(answer)
        sent_bytes.append(sent)

    attackers = [threading.Thread(target=attack) for _ in range(2)]
    for t in attackers:
        t.start()
    while any(t.is_alive() for t in attackers):
        started = time.monotonic()
        assert health.get("/health", timeout=5).ok
        assert time.monotonic() - started < 1
        time.sleep(0.05)
    for t in attackers:
        t.join()
    after = rss_kib(pid)

    assert after - before < 8 * 1024, (before, after)  # KiB: not 300 MiB
    assert all(a == b"" or a.startswith(b"HTTP/1.1 431 ") for a in answers), answers
    assert all(sent < 128 * MiB for sent in sent_bytes), sent_bytes
