"""Blob downloads against the real server, on SQLite and PostgreSQL: the whole blob with its
sha256 as ETag, HTTP Range requests (single, suffix, open-ended, several at once), 416 for
ranges outside the blob, and 404 for blobs the project does not hold."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

import pytest
import requests

from tests.support import Api, Deployment, tus_create

SIZE = 3 * 1024 * 1024 + 17


@dataclass
class StoredBlob:
    api: Api
    project: str
    data: bytes
    sha256: str

    @property
    def path(self) -> str:
        return f"/projects/{self.project}/blobs/{self.sha256}"

    def get(self, range_header: str | None = None, **headers: str) -> requests.Response:
        if range_header is not None:
            headers["Range"] = range_header
        return self.api.get(self.path, headers=headers)


@pytest.fixture
def blob(deployment: Deployment) -> StoredBlob:
    owner = deployment.user("downloader")
    project = deployment.project(owner)
    data = os.urandom(SIZE)
    return StoredBlob(owner, project, data, deployment.upload(owner, project, data))


def test_whole_blob_comes_back_with_its_sha256_as_etag(blob: StoredBlob) -> None:
    r = blob.get()

    assert r.status_code == 200
    assert r.headers["ETag"] == f'"{blob.sha256}"'
    assert r.headers["Accept-Ranges"] == "bytes"
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert int(r.headers["Content-Length"]) == SIZE
    assert hashlib.sha256(r.content).hexdigest() == blob.sha256


def test_single_range_returns_206_with_exactly_those_bytes(blob: StoredBlob) -> None:
    r = blob.get("bytes=1000-1999")

    assert r.status_code == 206
    assert r.headers["Content-Range"] == f"bytes 1000-1999/{SIZE}"
    assert r.headers["ETag"] == f'"{blob.sha256}"'
    assert r.content == blob.data[1000:2000]


def test_range_spanning_many_read_chunks_returns_exactly_those_bytes(blob: StoredBlob) -> None:
    r = blob.get(f"bytes=17-{SIZE - 2}")

    assert r.status_code == 206
    assert r.headers["Content-Range"] == f"bytes 17-{SIZE - 2}/{SIZE}"
    assert r.content == blob.data[17 : SIZE - 1]


def test_suffix_range_returns_the_last_n_bytes(blob: StoredBlob) -> None:
    r = blob.get("bytes=-500")

    assert r.status_code == 206
    assert r.headers["Content-Range"] == f"bytes {SIZE - 500}-{SIZE - 1}/{SIZE}"
    assert r.content == blob.data[-500:]


def test_suffix_range_longer_than_the_blob_returns_all_of_it(blob: StoredBlob) -> None:
    r = blob.get(f"bytes=-{SIZE * 2}")

    assert r.status_code == 206
    assert r.headers["Content-Range"] == f"bytes 0-{SIZE - 1}/{SIZE}"
    assert r.content == blob.data


def test_open_ended_range_returns_the_rest_of_the_blob(blob: StoredBlob) -> None:
    r = blob.get(f"bytes={SIZE - 1_000_000}-")

    assert r.status_code == 206
    assert r.headers["Content-Range"] == f"bytes {SIZE - 1_000_000}-{SIZE - 1}/{SIZE}"
    assert r.content == blob.data[-1_000_000:]


def test_range_ending_past_the_blob_stops_at_its_last_byte(blob: StoredBlob) -> None:
    r = blob.get(f"bytes={SIZE - 10}-{SIZE + 1000}")

    assert r.status_code == 206
    assert r.headers["Content-Range"] == f"bytes {SIZE - 10}-{SIZE - 1}/{SIZE}"
    assert r.content == blob.data[-10:]


def test_several_ranges_come_back_as_multipart_byteranges(blob: StoredBlob) -> None:
    r = blob.get("bytes=0-99, 2000000-2000099, -10")

    assert r.status_code == 206
    content_type = r.headers["Content-Type"]
    assert content_type.startswith("multipart/byteranges; boundary=")
    parts = parse_byteranges(r.content, content_type.split("boundary=", 1)[1])
    assert parts == [
        (f"bytes 0-99/{SIZE}", blob.data[:100]),
        (f"bytes 2000000-2000099/{SIZE}", blob.data[2_000_000:2_000_100]),
        (f"bytes {SIZE - 10}-{SIZE - 1}/{SIZE}", blob.data[-10:]),
    ]
    assert int(r.headers["Content-Length"]) == len(r.content)


@pytest.mark.parametrize(
    "range_header",
    [
        "bytes={size}-",
        "bytes={size}-{end}",
        "bytes=-0",
        "bytes=99999999999-",
        "bytes=5-3",
        "bytes={size}-,-0",
        "bytes=abc",
        "bytes=",
    ],
)
def test_range_outside_the_blob_gets_416_with_its_size(blob: StoredBlob, range_header: str) -> None:
    header = range_header.format(size=SIZE, end=SIZE + 10)

    r = blob.get(header)

    assert r.status_code == 416, header
    assert r.headers["Content-Range"] == f"bytes */{SIZE}"
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["code"] == "range_not_satisfiable"


def test_ranges_past_the_end_are_dropped_when_others_are_satisfiable(blob: StoredBlob) -> None:
    r = blob.get(f"bytes=0-1,{SIZE}-")

    assert r.status_code == 206
    assert r.headers["Content-Range"] == f"bytes 0-1/{SIZE}"
    assert r.content == blob.data[:2]


def test_range_in_an_unknown_unit_is_ignored(blob: StoredBlob) -> None:
    r = blob.get("items=0-5")

    assert r.status_code == 200
    assert r.content == blob.data


def test_if_range_with_the_etag_honours_the_range_and_with_another_sends_everything(
    blob: StoredBlob,
) -> None:
    same = blob.get("bytes=0-9", **{"If-Range": f'"{blob.sha256}"'})
    assert same.status_code == 206 and same.content == blob.data[:10]

    other = blob.get("bytes=0-9", **{"If-Range": f'"{"0" * 64}"'})
    assert other.status_code == 200 and other.content == blob.data


def test_any_range_of_an_empty_blob_gets_416(deployment: Deployment) -> None:
    owner = deployment.user("downloader")
    project = deployment.project(owner)
    digest = hashlib.sha256(b"").hexdigest()
    tus_create(owner, project, digest, 0)  # an empty upload is complete once created
    empty = StoredBlob(owner, project, b"", digest)

    assert empty.get().content == b""
    for header in ("bytes=0-", "bytes=-5", "bytes=0-0"):
        r = empty.get(header)
        assert r.status_code == 416, header
        assert r.headers["Content-Range"] == "bytes */0"
        assert r.json()["error"]["code"] == "range_not_satisfiable"


def test_unknown_sha256_gets_404(blob: StoredBlob) -> None:
    r = blob.api.get(f"/projects/{blob.project}/blobs/{'0' * 64}")

    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


def test_malformed_sha256_is_refused(blob: StoredBlob) -> None:
    for bad in ("xyz", blob.sha256.upper(), blob.sha256[:-1]):
        r = blob.api.get(f"/projects/{blob.project}/blobs/{bad}")
        assert 400 <= r.status_code < 500, bad
        assert r.json()["error"]["code"]


def test_viewer_downloads_and_non_member_gets_404(deployment: Deployment, blob: StoredBlob) -> None:
    viewer = deployment.user("viewer")
    deployment.add_member(blob.project, viewer, "viewer")
    stranger = deployment.user("stranger")

    assert viewer.get(blob.path).content == blob.data
    r = stranger.get(blob.path)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"
    assert Api(deployment.url).get(blob.path).status_code == 401


def parse_byteranges(body: bytes, boundary: str) -> list[tuple[str, bytes]]:
    """The (Content-Range, bytes) of each part of a multipart/byteranges body."""
    parts = []
    for chunk in body.split(f"--{boundary}".encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, payload = chunk.partition(b"\r\n\r\n")
        match = re.search(rb"Content-Range: (.+?)\r\n", head + b"\r\n", re.IGNORECASE)
        assert match, head
        assert payload.endswith(b"\r\n")
        parts.append((match.group(1).decode(), payload[:-2]))
    return parts
