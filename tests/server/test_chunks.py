"""The server side of the chunk protocol (issue 17), against real servers on SQLite and
PostgreSQL, with frames made by the client's own codec (lmvp/chunk_codec.py), so the server's
decoder (lmvp_server/chunk_frames.py) is proven to read what the client writes: which chunks a
project lacks, a pack streamed in and verified record by record, a blob assembled from chunks
and then named by a commit and downloaded whole and by ranges, its chunk list, chunks fetched
back as a pack; and hostile input: a frame whose bytes are not its sha256, a pack cut short,
an assembly with the wrong hash or chunks the project does not hold, a non-member, a viewer, a
chunk damaged on disk."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests

from lmvp import chunk_codec
from lmvp_server.chunk_frames import BadFrame, decode_frame
from tests.support import Api, Deployment, sha256_bytes

PACK = "application/vnd.lmvp.chunk-pack"
KiB = 1024


@dataclass(frozen=True)
class Piece:
    """One chunk of a test file: its raw bytes and the frame the client codec made of them."""

    data: bytes
    frame: bytes

    @property
    def sha256(self) -> str:
        return sha256_bytes(self.data)

    def record(self) -> bytes:
        return record(self.sha256, len(self.data), self.frame)


def record(sha256: str, size: int, frame: bytes) -> bytes:
    return bytes.fromhex(sha256) + struct.pack("<II", size, len(frame)) + frame


def pieces_of(data: bytes, sizes: list[int], dtype: str | None = None) -> list[Piece]:
    out, at = [], 0
    for size in sizes:
        part = data[at : at + size]
        out.append(Piece(part, chunk_codec.encode(part, dtype)))
        at += size
    assert at == len(data)
    return out


def sample_file(seed: int) -> tuple[bytes, list[Piece]]:
    """About 1.3 MiB in chunks of every kind the codec makes: float weights (grouped), text
    (zstd), random bytes (raw), and one with a tail past the last whole element."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(0, 0.02, 160 * KiB).astype(np.float32).tobytes()  # 640 KiB
    text = (f"layer {seed} config " * 30_000).encode()[: 300 * KiB]
    noise = rng.bytes(256 * KiB + 3)
    halves = rng.normal(0, 0.02, 64 * KiB).astype(np.float16).tobytes() + b"x"
    pieces = [
        *pieces_of(weights, [320 * KiB, 320 * KiB], "F32"),
        *pieces_of(text, [300 * KiB]),
        *pieces_of(noise, [len(noise)]),
        *pieces_of(halves, [len(halves)], "F16"),
    ]
    methods = {p.frame[3] for p in pieces}
    assert methods == {0, 1, 2}, methods  # raw, zstd and grouped frames all go over the wire
    return b"".join(p.data for p in pieces), pieces


def send_pack(api: Api, project: str, body: bytes, **headers: str) -> requests.Response:
    return api.post(
        f"/projects/{project}/chunks", data=body, headers={"Content-Type": PACK, **headers}
    )


def missing(api: Api, project: str, pieces: list[Piece]) -> list[str]:
    r = api.post(f"/projects/{project}/chunks/missing", json={"chunks": [p.sha256 for p in pieces]})
    assert r.status_code == 200, r.text
    result: list[str] = r.json()["missing"]
    return result


def assemble(
    api: Api, project: str, pieces: list[Piece], sha256: str | None = None
) -> requests.Response:
    data = b"".join(p.data for p in pieces)
    return api.post(
        f"/projects/{project}/blobs/assemble",
        json={
            "sha256": sha256 or sha256_bytes(data),
            "size": len(data),
            "chunks": [{"sha256": p.sha256, "size": len(p.data)} for p in pieces],
        },
    )


def read_pack(body: bytes) -> list[tuple[str, int, bytes]]:
    """A pack's records: (sha256, raw length, frame)."""
    out, at = [], 0
    while at < len(body):
        digest, size, frame_len = struct.unpack_from("<32sII", body, at)
        at += 40
        out.append((digest.hex(), size, body[at : at + frame_len]))
        at += frame_len
    assert at == len(body)
    return out


def chunk_files(deployment: Deployment) -> dict[str, Path]:
    root = deployment.server.data_dir / "blobs" / "chunks"
    return {p.name: p for p in root.glob("??/??/*") if p.is_file()}


@pytest.fixture(scope="module")
def sample() -> tuple[bytes, list[Piece]]:
    return sample_file(1)


# --- the round trip -----------------------------------------------------------------------------


def test_a_file_sent_as_chunks_is_committed_and_downloaded_whole_and_by_ranges(
    deployment: Deployment, sample: tuple[bytes, list[Piece]]
) -> None:
    data, pieces = sample
    owner = deployment.user("chunker")
    project = deployment.project(owner)
    whole = sha256_bytes(data)

    assert missing(owner, project, pieces) == [p.sha256 for p in pieces]
    pack = b"".join(p.record() for p in pieces)
    r = send_pack(owner, project, pack)
    assert r.status_code == 200, r.text
    frames = sum(len(p.frame) for p in pieces)
    assert r.json() == {"stored": len(pieces), "skipped": 0, "bytes": frames}
    assert frames < 0.9 * len(data)  # stored compressed where that paid
    assert missing(owner, project, pieces) == []
    # Sent again: read and skipped, nothing stored twice.
    assert send_pack(owner, project, pack).json() == {
        "stored": 0,
        "skipped": len(pieces),
        "bytes": frames,
    }
    # Frames kept as received, under chunks/ of the store.
    files = chunk_files(deployment)
    for p in pieces:
        assert files[p.sha256].read_bytes() == p.frame

    r = assemble(owner, project, pieces)
    assert r.status_code == 200, r.text
    assert r.json() == {"sha256": whole, "size": len(data)}
    assert assemble(owner, project, pieces).status_code == 200  # held: at once
    # The project holds the blob as after a tus upload: blobs/missing and a commit know it.
    r = owner.post(f"/projects/{project}/blobs/missing", json={"sha256": [whole]})
    assert r.json() == {"missing": []}
    assert owner.post(f"/projects/{project}/models", json={"name": "m"}).status_code == 201
    r = owner.post(
        f"/projects/{project}/models/m/versions",
        json={"files": [{"path": "model.bin", "size": len(data), "sha256": whole}]},
    )
    assert r.status_code == 201, r.text

    path = f"/projects/{project}/blobs/{whole}"
    r = owner.get(path)
    assert r.status_code == 200
    assert int(r.headers["Content-Length"]) == len(data)
    assert r.headers["ETag"] == f'"{whole}"'
    assert r.content == data
    # Ranges inside a chunk, across chunk boundaries, the tail, and several at once.
    for first, last in [(5, 9), (320 * KiB - 3, 640 * KiB + 10), (len(data) - 7, len(data) - 1)]:
        r = owner.get(path, headers={"Range": f"bytes={first}-{last}"})
        assert r.status_code == 206
        assert r.content == data[first : last + 1]
    r = owner.get(path, headers={"Range": "bytes=0-0,700000-700009"})
    assert r.status_code == 206
    assert r.headers["Content-Type"].startswith("multipart/byteranges")
    assert data[:1] in r.content and data[700000:700010] in r.content
    assert owner.get(path, headers={"Range": f"bytes={len(data)}-"}).status_code == 416

    r = owner.get(f"{path}/chunks")
    assert r.status_code == 200
    listing = r.json()
    assert listing["sha256"] == whole and listing["size"] == len(data)
    offsets = [sum(len(q.data) for q in pieces[:i]) for i in range(len(pieces))]
    assert listing["chunks"] == [
        {"sha256": p.sha256, "size": len(p.data), "offset": o}
        for p, o in zip(pieces, offsets, strict=True)
    ]

    # Fetched back as a pack, in the order asked, which the client's codec decodes.
    asked = [pieces[3].sha256, pieces[0].sha256, pieces[3].sha256]
    r = owner.post(f"/projects/{project}/chunks/fetch", json={"chunks": asked})
    assert r.status_code == 200
    assert r.headers["Content-Type"] == PACK
    got = read_pack(r.content)
    assert [sha for sha, _, _ in got] == asked
    for sha, size, frame in got:
        raw = chunk_codec.decode(frame, expected_length=size)
        assert sha256_bytes(raw) == sha


def test_the_server_decoder_reads_every_frame_the_client_codec_writes() -> None:
    rng = np.random.default_rng(7)
    cases: list[tuple[bytes, str | None]] = [
        (b"", None),
        (b"abc", None),
        (rng.bytes(5000), None),
        (b"z" * 70_000, None),
        (rng.normal(0, 1, 9_999).astype(np.float64).tobytes() + b"12345", "F64"),
        (rng.normal(0, 1, 20_001).astype(np.float32).tobytes(), None),  # probed width
        (rng.normal(0, 1, 30_000).astype(np.float16).tobytes(), "BF16"),
    ]
    for data, dtype in cases:
        frame = chunk_codec.encode(data, dtype)
        assert decode_frame(frame, len(data)) == data
        for damaged in (frame[:-1], frame + b"\0", frame[:5]):
            if damaged != frame:
                with pytest.raises(BadFrame):
                    decode_frame(damaged, len(data))
        with pytest.raises(BadFrame):
            decode_frame(frame, len(data) + 1)


def test_chunks_are_per_project_and_shared_chunks_are_not_sent_again(
    deployment: Deployment, sample: tuple[bytes, list[Piece]]
) -> None:
    _, pieces = sample
    owner = deployment.user("sharer")
    first, second = deployment.project(owner), deployment.project(owner)
    assert send_pack(owner, first, b"".join(p.record() for p in pieces)).status_code == 200
    # Another project must send them itself: knowing the hashes proves nothing.
    assert missing(owner, second, pieces) == [p.sha256 for p in pieces]
    r = assemble(owner, second, pieces)
    assert r.status_code == 409
    assert r.json()["missing"] == [p.sha256 for p in pieces]
    assert r.json()["error"]["details"]["missing"] == [p.sha256 for p in pieces]
    r = owner.post(f"/projects/{second}/chunks/fetch", json={"chunks": [pieces[0].sha256]})
    assert r.status_code == 404

    # A next checkpoint that changed one chunk: only that one is missing.
    changed = pieces_of(b"\x01" * len(pieces[2].data), [len(pieces[2].data)])
    later = [*pieces[:2], *changed, *pieces[3:]]
    assert missing(owner, first, later) == [changed[0].sha256]
    assert send_pack(owner, first, changed[0].record()).json()["stored"] == 1
    r = assemble(owner, first, later)
    assert r.status_code == 200, r.text
    later_data = b"".join(p.data for p in later)
    assert owner.get(f"/projects/{first}/blobs/{sha256_bytes(later_data)}").content == later_data


# --- hostile input ------------------------------------------------------------------------------


def test_a_frame_that_is_not_its_sha256_is_refused_and_what_came_before_is_kept(
    deployment: Deployment,
) -> None:
    owner = deployment.user("liar")
    project = deployment.project(owner)
    _, pieces = sample_file(2)
    good, bad, after = pieces[0], pieces[1], pieces[2]
    forged = record(bad.sha256, len(good.data), good.frame)  # good bytes under another name
    r = send_pack(owner, project, good.record() + forged + after.record())
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "bad_chunk"
    assert r.json()["error"]["details"]["chunk"] == bad.sha256
    assert missing(owner, project, [good, bad, after]) == [bad.sha256, after.sha256]
    assert bad.sha256 not in chunk_files(deployment)

    # A frame that does not decode, one whose length lies, one too big to be a chunk.
    broken = bytearray(bad.frame)
    broken[len(broken) // 2] ^= 0xFF
    for body in (
        record(bad.sha256, len(bad.data), bytes(broken)),
        record(bad.sha256, len(bad.data) + 1, bad.frame),
        record(bad.sha256, 64 * 1024 * 1024, bad.frame),
    ):
        r = send_pack(owner, project, body)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["details"]["chunk"] == bad.sha256
    assert missing(owner, project, [bad]) == [bad.sha256]


def test_a_pack_cut_short_keeps_its_complete_records(deployment: Deployment) -> None:
    owner = deployment.user("cutter")
    project = deployment.project(owner)
    _, pieces = sample_file(3)
    whole = b"".join(p.record() for p in pieces[:3])
    # The body ends inside the third record.
    r = send_pack(owner, project, whole[:-100])
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "truncated_pack"
    assert missing(owner, project, pieces[:3]) == [pieces[2].sha256]

    # The connection itself cut mid-pack (Content-Length promised more).
    body = b"".join(p.record() for p in pieces[3:5])
    url = urlsplit(deployment.url)
    with socket.create_connection((url.hostname, url.port)) as sock:
        head = (
            f"POST /api/v1/projects/{project}/chunks HTTP/1.1\r\nHost: {url.netloc}\r\n"
            f"Authorization: Bearer {owner.token}\r\nContent-Type: {PACK}\r\n"
            f"Content-Length: {len(body) + 1000}\r\n\r\n"
        )
        sock.sendall(head.encode() + body[:-10])
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while missing(owner, project, pieces[3:5]) != [pieces[4].sha256]:
        assert time.monotonic() < deadline, missing(owner, project, pieces[3:5])
        time.sleep(0.1)
    # Resuming is asking again and sending the rest.
    assert send_pack(owner, project, pieces[4].record()).json()["stored"] == 1
    assert assemble(owner, project, pieces[:5]).status_code == 409  # pieces[2] never came
    assert send_pack(owner, project, pieces[2].record()).status_code == 200
    assert assemble(owner, project, pieces[:5]).status_code == 200


def test_an_assembly_that_is_not_the_announced_file_records_nothing(
    deployment: Deployment, sample: tuple[bytes, list[Piece]]
) -> None:
    data, pieces = sample
    owner = deployment.user("assembler")
    project = deployment.project(owner)
    assert send_pack(owner, project, b"".join(p.record() for p in pieces)).status_code == 200
    wrong = hashlib.sha256(b"another file").hexdigest()
    r = assemble(owner, project, pieces, sha256=wrong)
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "sha256_mismatch"
    # The chunks out of order are other bytes.
    r = assemble(owner, project, [pieces[1], pieces[0], *pieces[2:]], sha256=sha256_bytes(data))
    assert r.status_code == 422
    body: dict[str, Any] = {
        "sha256": sha256_bytes(data),
        "size": len(data) + 1,
        "chunks": [{"sha256": p.sha256, "size": len(p.data)} for p in pieces],
    }
    assert owner.post(f"/projects/{project}/blobs/assemble", json=body).status_code == 422
    body["size"] = len(data)
    body["chunks"][0]["size"] += 1
    body["chunks"][1]["size"] -= 1
    assert owner.post(f"/projects/{project}/blobs/assemble", json=body).status_code == 422
    for sha in (wrong, sha256_bytes(data)):
        r = owner.post(f"/projects/{project}/blobs/missing", json={"sha256": [sha]})
        assert r.json() == {"missing": [sha]}
        assert owner.get(f"/projects/{project}/blobs/{sha}").status_code == 404


def test_roles_non_members_get_404_viewers_read_but_do_not_send(
    deployment: Deployment, sample: tuple[bytes, list[Piece]]
) -> None:
    data, pieces = sample
    owner = deployment.user("roles-owner")
    project = deployment.project(owner)
    assert send_pack(owner, project, b"".join(p.record() for p in pieces)).status_code == 200
    assert assemble(owner, project, pieces).status_code == 200
    whole = sha256_bytes(data)
    shas = {"chunks": [pieces[0].sha256]}

    stranger = deployment.user("stranger")
    for r in (
        stranger.post(f"/projects/{project}/chunks/missing", json=shas),
        send_pack(stranger, project, pieces[0].record()),
        assemble(stranger, project, pieces),
        stranger.get(f"/projects/{project}/blobs/{whole}/chunks"),
        stranger.post(f"/projects/{project}/chunks/fetch", json=shas),
    ):
        assert r.status_code == 404, r.text

    viewer = deployment.user("viewer")
    deployment.add_member(project, viewer, "viewer")
    for r in (
        viewer.post(f"/projects/{project}/chunks/missing", json=shas),
        send_pack(viewer, project, pieces[0].record()),
        assemble(viewer, project, pieces),
    ):
        assert r.status_code == 403, r.text
    assert viewer.get(f"/projects/{project}/blobs/{whole}/chunks").status_code == 200
    assert viewer.post(f"/projects/{project}/chunks/fetch", json=shas).status_code == 200
    # A read-only token may fetch (a POST that only reads) but not send.
    r = viewer.post("/tokens", json={"name": "ro", "scope": "read"})
    assert r.status_code == 201, r.text
    reader = Api(deployment.url, r.json()["token"])
    assert reader.post(f"/projects/{project}/chunks/fetch", json=shas).status_code == 200
    assert send_pack(reader, project, pieces[0].record()).status_code == 403


def test_wrong_media_type_too_large_and_not_chunked(deployment: Deployment) -> None:
    owner = deployment.user("edges")
    project = deployment.project(owner)
    r = owner.post(f"/projects/{project}/chunks", data=b"x" * 40)
    assert r.status_code == 415
    # (On a connection of its own: the body it announces never comes.)
    liar = Api(deployment.url, owner.token)
    r = send_pack(liar, project, b"", **{"Content-Length": str(257 * 1024 * 1024)})
    assert r.status_code == 413
    liar.http.close()
    assert send_pack(owner, project, b"").json() == {"stored": 0, "skipped": 0, "bytes": 0}
    sha = deployment.upload(owner, project, b"stored whole by tus")
    r = owner.get(f"/projects/{project}/blobs/{sha}/chunks")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_chunked"
    r = owner.post(f"/projects/{project}/chunks/missing", json={"chunks": ["0" * 64] * 10_001})
    assert r.status_code == 422


def test_a_chunk_damaged_on_disk_is_never_served_as_good(deployment: Deployment) -> None:
    owner = deployment.user("damage")
    project = deployment.project(owner)
    data, pieces = sample_file(4)
    assert send_pack(owner, project, b"".join(p.record() for p in pieces)).status_code == 200
    assert assemble(owner, project, pieces).status_code == 200
    path = f"/projects/{project}/blobs/{sha256_bytes(data)}"
    files = chunk_files(deployment)

    # The text chunk (zstd): one flipped byte. It is the third chunk: the download starts,
    # then stops before a byte of it goes out.
    damaged = files[pieces[2].sha256]
    frame = bytearray(damaged.read_bytes())
    frame[len(frame) // 2] ^= 0x55
    damaged.write_bytes(bytes(frame))
    with pytest.raises(requests.exceptions.RequestException):
        r = owner.get(path)
        # If the client library does not notice the short body itself, the length tells.
        assert len(r.content) == len(data)
    # Asked from within it: a clear error before anything is sent.
    start = sum(len(p.data) for p in pieces[:2])
    r = owner.get(path, headers={"Range": f"bytes={start}-{start + 10}"})
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "chunk_damaged"
    assert pieces[2].sha256 in r.json()["error"]["message"]
    # The chunks before it are still served.
    r = owner.get(path, headers={"Range": f"bytes=0-{start - 1}"})
    assert r.status_code == 206 and r.content == data[:start]

    # A raw chunk (no checksum of its own) with a flipped byte: its sha256 catches it.
    raw_file = files[pieces[3].sha256]
    assert pieces[3].frame[3] == 0
    frame = bytearray(raw_file.read_bytes())
    frame[-1] ^= 0x01
    raw_file.write_bytes(bytes(frame))
    start = sum(len(p.data) for p in pieces[:3])
    r = owner.get(path, headers={"Range": f"bytes={start}-"})
    assert r.status_code == 500

    # An assembly reading a damaged chunk asks for it again, and the resent one heals it.
    again = [pieces[3], pieces[0]]
    r = assemble(owner, project, again)
    assert r.status_code == 409
    assert r.json()["missing"] == [pieces[3].sha256]
    assert send_pack(owner, project, pieces[3].record()).json()["stored"] == 1
    assert raw_file.read_bytes() == pieces[3].frame
    assert assemble(owner, project, again).status_code == 200


def test_a_pack_of_many_small_chunks(deployment: Deployment) -> None:
    """A pack of 600 small chunks (several batches of the server's), stored in one request."""
    owner = deployment.user("small")
    project = deployment.project(owner)
    data = os.urandom(600 * 100)
    pieces = pieces_of(data, [100] * 600)
    started = time.monotonic()
    r = send_pack(owner, project, b"".join(p.record() for p in pieces))
    assert r.status_code == 200, r.text
    assert r.json()["stored"] == 600
    assert assemble(owner, project, pieces).status_code == 200
    assert owner.get(f"/projects/{project}/blobs/{sha256_bytes(data)}").content == data
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("bad_at", [100, 290])
def test_a_bad_record_in_a_later_batch_keeps_exactly_the_records_before_it(
    deployment: Deployment, bad_at: int
) -> None:
    """The server stores a pack a batch at a time (256 records) while the next arrives: a bad
    record in the first batch or in the second keeps every record before it and none after."""
    owner = deployment.user("batches")
    project = deployment.project(owner)
    # 4 KiB records: the body arrives in pieces of many records, batches form as it does.
    pieces = pieces_of(os.urandom(300 * 4096), [4096] * 300)
    records = [p.record() for p in pieces]
    records[bad_at] = record(pieces[bad_at].sha256, 4096, pieces[bad_at - 1].frame)
    r = send_pack(owner, project, b"".join(records))
    assert r.status_code == 422
    assert r.json()["error"]["details"]["chunk"] == pieces[bad_at].sha256
    assert missing(owner, project, pieces) == [p.sha256 for p in pieces[bad_at:]]
