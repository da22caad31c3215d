"""lmvp.chunking: chunks that cover a file exactly, follow its format, and survive hostile bytes."""

from __future__ import annotations

import hashlib
import json
import os
import random
import struct
import zipfile
from pathlib import Path

import numpy as np
import pyfastcdc
import pytest
from safetensors.numpy import save_file

from lmvp.chunking import (
    CDC_AVG_SIZE,
    ChunkedFile,
    ChunkKind,
    FileFormat,
    chunk_file,
)
from lmvp.errors import IntegrityError
from tests.client.torch_layout import ALIGNMENT, record_data_ranges, write_torch_zip

MiB = 1 << 20


def assert_covers(path: Path, chunked: ChunkedFile) -> None:
    """The chunks, in order, are the file's bytes: no gap, no overlap, each hashed right."""
    data = path.read_bytes()
    assert chunked.size == len(data)
    assert chunked.sha256 == hashlib.sha256(data).hexdigest()
    position = 0
    for chunk in chunked.chunks:
        assert chunk.offset == position
        assert chunk.length > 0
        assert chunk.sha256 == hashlib.sha256(data[chunk.offset : chunk.end]).hexdigest()
        position = chunk.end
    assert position == len(data)
    assert b"".join(data[c.offset : c.end] for c in chunked.chunks) == data


def model(
    seed: int, *, changed: frozenset[int] = frozenset(), count: int = 20
) -> dict[str, np.ndarray]:
    """A small model: `count` tensors of varied dtypes and shapes; tensor i's values depend only
    on (i, whether i is in `changed`)."""
    tensors: dict[str, np.ndarray] = {}
    for i in range(count):
        rng = np.random.default_rng(seed * 1000 + i + (500 if i in changed else 0))
        dtype = [np.float32, np.float16, np.int64, np.float64][i % 4]
        shape = (64 + 8 * i, 32 + i) if i % 5 else (100 + i,)
        tensors[f"layers.{i}.weight"] = rng.standard_normal(shape).astype(dtype)
    return tensors


def safetensors_ranges(path: Path) -> dict[str, tuple[int, int]]:
    """Each tensor's byte range in the file, read from the header as the format defines it."""
    raw = path.read_bytes()
    (n,) = struct.unpack_from("<Q", raw)
    header = json.loads(raw[8 : 8 + n])
    return {
        name: (8 + n + entry["data_offsets"][0], 8 + n + entry["data_offsets"][1])
        for name, entry in header.items()
        if name != "__metadata__"
    }


@pytest.fixture(scope="module")
def safetensors_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A safetensors file as the `safetensors` package writes it (tests only read it)."""
    path = tmp_path_factory.mktemp("safetensors") / "model.safetensors"
    save_file(model(1), str(path), metadata={"format": "pt"})
    return path


@pytest.fixture(scope="module")
def torch_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint laid out as `torch.save` writes it, with a 3 MiB storage among small ones."""
    path = tmp_path_factory.mktemp("torch") / "checkpoint.pt"
    rng = random.Random(7)
    write_torch_zip(path, [rng.randbytes(n) for n in (4, 1000, 70_000, 3 * MiB + 5, 8)])
    return path


@pytest.fixture(scope="module")
def random_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 MiB of random bytes: several 8 MiB reads, many content-defined chunks."""
    path = tmp_path_factory.mktemp("random") / "blob.bin"
    path.write_bytes(random.Random(3).randbytes(20 * MiB + 123))
    return path


@pytest.mark.parametrize("kind", ["safetensors", "torch", "random", "text"])
def test_chunks_cover_every_format_exactly_and_the_same_bytes_chunk_the_same(
    kind: str, safetensors_file: Path, torch_file: Path, random_file: Path, tmp_path: Path
) -> None:
    if kind == "text":
        path = tmp_path / "trainer_state.json"
        path.write_text(
            json.dumps({"log_history": [{"step": i, "loss": 1 / (i + 1)} for i in range(50_000)]})
        )
    else:
        path = {"safetensors": safetensors_file, "torch": torch_file, "random": random_file}[kind]
    chunked = chunk_file(path)
    assert_covers(path, chunked)
    # Deterministic: again, and for a copy under another name and folder.
    copy = tmp_path / "elsewhere" / "copy.bin"
    copy.parent.mkdir()
    copy.write_bytes(path.read_bytes())
    assert chunk_file(path) == chunked
    assert chunk_file(copy) == chunked


def test_safetensors_chunks_are_the_header_then_one_per_tensor(safetensors_file: Path) -> None:
    chunked = chunk_file(safetensors_file)
    assert chunked.format == FileFormat.SAFETENSORS
    ranges = safetensors_ranges(safetensors_file)
    header = chunked.chunks[0]
    assert header.kind == ChunkKind.HEADER and header.offset == 0
    assert header.end == min(start for start, _ in ranges.values())
    tensor_chunks = {
        c.name: (c.offset, c.end) for c in chunked.chunks if c.kind == ChunkKind.TENSOR
    }
    assert tensor_chunks == ranges
    assert len(chunked.chunks) == 1 + len(ranges)  # save_file leaves no gaps


def test_safetensors_tensor_table_matches_the_arrays(safetensors_file: Path) -> None:
    arrays = model(1)
    chunked = chunk_file(safetensors_file)
    data = safetensors_file.read_bytes()
    dtypes = {np.float32: "F32", np.float16: "F16", np.int64: "I64", np.float64: "F64"}
    assert {t.name for t in chunked.tensors} == set(arrays)
    assert [t.start for t in chunked.tensors] == sorted(t.start for t in chunked.tensors)
    for tensor in chunked.tensors:
        array = arrays[tensor.name]
        assert tensor.dtype == dtypes[array.dtype.type]
        assert tensor.shape == array.shape
        assert data[tensor.start : tensor.end] == array.tobytes()


def test_a_tensor_larger_than_a_piece_is_split_into_pieces_from_its_start(tmp_path: Path) -> None:
    """20 MiB in 3 MiB pieces: pieces straddle the pass's 8 MiB reads."""
    path = tmp_path / "big.safetensors"
    big = np.arange(5 * MiB + 1, dtype=np.float32)
    save_file({"big": big, "small": np.ones(3, dtype=np.float32)}, str(path))
    chunked = chunk_file(path, piece_size=3 * MiB)
    assert_covers(path, chunked)
    pieces = [c for c in chunked.chunks if c.name == "big"]
    assert [c.length for c in pieces] == [3 * MiB] * 6 + [big.nbytes - 18 * MiB]
    data = path.read_bytes()
    assert b"".join(data[c.offset : c.end] for c in pieces) == big.tobytes()
    assert [c.name for c in chunked.chunks if c.kind == ChunkKind.TENSOR][-1] == "small"


def test_safetensors_is_recognised_by_its_bytes_not_its_name(
    safetensors_file: Path, random_file: Path, tmp_path: Path
) -> None:
    renamed = tmp_path / "pytorch_model.bin"
    renamed.write_bytes(safetensors_file.read_bytes())
    assert chunk_file(renamed).format == FileFormat.SAFETENSORS
    disguised = tmp_path / "model.safetensors"
    disguised.write_bytes(random_file.read_bytes())
    assert chunk_file(disguised).format == FileFormat.OPAQUE


def test_bytes_no_tensor_claims_become_gap_chunks(tmp_path: Path) -> None:
    header = {
        "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "b": {"dtype": "U8", "shape": [3], "data_offsets": [32, 35]},
    }
    raw = json.dumps(header).encode()
    path = tmp_path / "gappy.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(range(40)))
    chunked = chunk_file(path)
    assert_covers(path, chunked)
    assert [(c.kind, c.name, c.length) for c in chunked.chunks[1:]] == [
        (ChunkKind.TENSOR, "a", 16),
        (ChunkKind.GAP, "", 16),
        (ChunkKind.TENSOR, "b", 3),
        (ChunkKind.GAP, "", 5),
    ]


def test_torch_zip_storages_become_chunks_of_their_own(torch_file: Path) -> None:
    chunked = chunk_file(torch_file)
    assert chunked.format == FileFormat.ZIP
    ranges = record_data_ranges(torch_file)
    storages = {name: span for name, span in ranges.items() if "/data/" in name}
    assert len(storages) == 5
    for name, (start, end) in storages.items():
        assert start % ALIGNMENT == 0  # the layout torch writes, which the fixture reproduces
        pieces = [c for c in chunked.chunks if c.name == name and c.kind == ChunkKind.STORAGE]
        assert (pieces[0].offset, pieces[-1].end) == (start, end)
    for name in ("archive/data.pkl", "archive/version", "archive/byteorder"):
        (record,) = [c for c in chunked.chunks if c.name == name and c.kind == ChunkKind.RECORD]
        assert (record.offset, record.end) == ranges[name]
    # Local headers and the central directory are small chunks between them.
    meta = [c for c in chunked.chunks if c.kind == ChunkKind.META]
    assert meta[-1].end == chunked.size and all(c.length < 4096 for c in meta)
    assert zipfile.ZipFile(torch_file).testzip() is None  # the fixture is a sound zip


def test_a_large_storage_is_split_into_pieces(tmp_path: Path) -> None:
    path = tmp_path / "model" / "last.ckpt"
    path.parent.mkdir()
    storage = random.Random(1).randbytes(5 * MiB + 17)
    write_torch_zip(path, [storage], archive="last", pickle_extra={"epoch": 3})
    chunked = chunk_file(path, piece_size=2 * MiB)
    assert_covers(path, chunked)
    pieces = [c for c in chunked.chunks if c.kind == ChunkKind.STORAGE]
    assert [c.length for c in pieces] == [2 * MiB, 2 * MiB, MiB + 17]
    assert {c.name for c in pieces} == {"last/data/0"}


def test_compressed_zip_records_are_chunked_at_their_boundaries(tmp_path: Path) -> None:
    path = tmp_path / "bundle.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", json.dumps({"layers": 12}) * 100)
        archive.writestr("notes.txt", "hello " * 1000)
    chunked = chunk_file(path)
    assert_covers(path, chunked)
    assert chunked.format == FileFormat.ZIP
    assert [c.name for c in chunked.chunks if c.kind == ChunkKind.RECORD] == [
        "config.json",
        "notes.txt",
    ]


def test_a_fine_tune_shares_the_unchanged_tensors(tmp_path: Path) -> None:
    before, after = tmp_path / "step-100.safetensors", tmp_path / "step-200.safetensors"
    save_file(model(1), str(before))
    save_file(model(1, changed=frozenset({3, 11})), str(after))
    old, new = chunk_file(before), chunk_file(after)
    have = {c.sha256 for c in old.chunks}
    missing = [c for c in new.chunks if c.sha256 not in have]
    assert {c.name for c in missing if c.kind == ChunkKind.TENSOR} == {
        "layers.3.weight",
        "layers.11.weight",
    }
    shared = sum(c.length for c in new.chunks if c.sha256 in have)
    assert shared / new.size >= 0.85  # 2 of 20 tensors changed


def test_a_torch_checkpoint_shares_its_unchanged_storages(tmp_path: Path) -> None:
    rng = random.Random(5)
    storages = [rng.randbytes(n) for n in (100_000, 200_000, 300_000, 400_000)]
    before, after = tmp_path / "epoch=1.ckpt", tmp_path / "epoch=2.ckpt"
    write_torch_zip(before, storages, pickle_extra={"epoch": 1})
    write_torch_zip(
        after, [*storages[:2], rng.randbytes(300_000), storages[3]], pickle_extra={"epoch": 2}
    )
    old, new = chunk_file(before), chunk_file(after)
    have = {c.sha256 for c in old.chunks}
    missing_storages = {
        c.name for c in new.chunks if c.sha256 not in have and c.kind == ChunkKind.STORAGE
    }
    assert missing_storages == {"archive/data/2"}


def test_content_defined_chunks_survive_an_insertion_near_the_start(
    random_file: Path, tmp_path: Path
) -> None:
    data = random_file.read_bytes()
    inserted = tmp_path / "inserted.bin"
    inserted.write_bytes(data[: 100 * 1024] + os.urandom(1024) + data[100 * 1024 :])
    old, new = chunk_file(random_file), chunk_file(inserted)
    assert old.format == new.format == FileFormat.OPAQUE
    have = {c.sha256 for c in old.chunks}
    shared = sum(c.length for c in new.chunks if c.sha256 in have)
    assert shared / new.size >= 0.85
    assert len(old.chunks) >= 10


def test_content_defined_chunks_do_not_depend_on_how_the_file_is_read(random_file: Path) -> None:
    """The pass reads 8 MiB at a time; the boundaries are those of FastCDC over the whole file."""
    data = random_file.read_bytes()
    for avg in (64 * 1024, CDC_AVG_SIZE, 4 * MiB):
        cdc = pyfastcdc.FastCDC(avg, min_size=avg // 4, max_size=4 * avg)
        expected = [(c.offset, c.length) for c in cdc.cut_buf(data)]
        chunked = chunk_file(random_file, cdc_avg_size=avg)
        assert [(c.offset, c.length) for c in chunked.chunks] == expected


def test_an_empty_file_has_no_chunks(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    chunked = chunk_file(path)
    assert chunked.chunks == ()
    assert chunked.size == 0
    assert chunked.sha256 == hashlib.sha256(b"").hexdigest()


def test_a_file_smaller_than_a_chunk_is_one_chunk(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"hidden_size": 768}')
    chunked = chunk_file(path)
    assert len(chunked.chunks) == 1
    assert chunked.chunks[0].kind == ChunkKind.CONTENT
    assert_covers(path, chunked)


def _header(entries: object) -> bytes:
    return _raw_header(json.dumps(entries).encode())


def _raw_header(raw: bytes) -> bytes:
    return struct.pack("<Q", len(raw)) + raw


HOSTILE_SAFETENSORS = {
    "header longer than the file": struct.pack("<Q", 10_000) + b'{"a": 1}',
    "header length beyond 2**63": struct.pack("<Q", 2**64 - 1) + b"{" + bytes(100),
    "header not json": struct.pack("<Q", 5) + b"{abcd" + bytes(64),
    "header a json list": _header([1, 2, 3]) + bytes(64),
    "header not utf-8": struct.pack("<Q", 4) + b"{\xff\xfe}" + bytes(64),
    "offsets beyond the data": _header(
        {"a": {"dtype": "U8", "shape": [64], "data_offsets": [0, 64]}}
    )
    + bytes(10),
    "overlapping tensors": _header(
        {
            "a": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]},
            "b": {"dtype": "U8", "shape": [8], "data_offsets": [4, 12]},
        }
    )
    + bytes(12),
    "negative offset": _header({"a": {"dtype": "U8", "shape": [1], "data_offsets": [-1, 0]}})
    + bytes(8),
    "offsets as booleans": _header(
        {"a": {"dtype": "U8", "shape": [1], "data_offsets": [False, True]}}
    )
    + bytes(8),
    "offsets as floats": _header({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0.0, 1.5]}})
    + bytes(8),
    "shape that does not fit the bytes": _header(
        {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}
    )
    + bytes(8),
    "huge shape": _header({"a": {"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 8]}})
    + bytes(8),
    "entry not an object": _header({"a": [0, 8]}) + bytes(8),
    "deeply nested": _raw_header(b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
}


@pytest.mark.parametrize("content", HOSTILE_SAFETENSORS.values(), ids=HOSTILE_SAFETENSORS.keys())
def test_a_hostile_safetensors_header_is_chunked_as_content(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "hostile.safetensors"
    path.write_bytes(content)
    chunked = chunk_file(path)
    assert chunked.format == FileFormat.OPAQUE
    assert chunked.tensors == ()
    assert_covers(path, chunked)


def test_a_truncated_safetensors_file_is_chunked_as_content(
    safetensors_file: Path, tmp_path: Path
) -> None:
    data = safetensors_file.read_bytes()
    (n,) = struct.unpack_from("<Q", data)
    for cut in (4, 9, n // 2, 8 + n + 100, len(data) - 1):
        path = tmp_path / f"cut-{cut}.safetensors"
        path.write_bytes(data[:cut])
        chunked = chunk_file(path)
        assert chunked.format == FileFormat.OPAQUE
        assert_covers(path, chunked)


def test_a_truncated_or_damaged_zip_is_chunked_as_content(torch_file: Path, tmp_path: Path) -> None:
    data = torch_file.read_bytes()
    ranges = record_data_ranges(torch_file)
    damaged = {
        "cut in a storage": data[: ranges["archive/data/3"][0] + 1000],
        "cut in the central directory": data[:-30],
        "only the local header": data[:30],
    }
    with zipfile.ZipFile(torch_file) as archive:
        header = archive.getinfo("archive/data/2").header_offset
    damaged["a local header's signature wrong"] = data[:header] + b"XXXX" + data[header + 4 :]
    # A central directory entry whose local header offset points past the end of the file.
    directory = data.rfind(b"PK\x01\x02")
    damaged["local header offset past the end"] = (
        data[: directory + 42] + struct.pack("<I", len(data) + 10) + data[directory + 46 :]
    )
    # The end record claiming a central directory larger than the file.
    end = data.rfind(b"PK\x05\x06")
    # The end record placing the central directory further on than it is: zipfile then shifts
    # every record's offset back, the first one before the start of the file.
    (directory_offset,) = struct.unpack_from("<I", data, end + 16)
    damaged["central directory offset too large"] = (
        data[: end + 16] + struct.pack("<I", directory_offset + 1000) + data[end + 20 :]
    )
    damaged["central directory larger than the file"] = (
        data[: end + 12] + struct.pack("<I", 2**31) + data[end + 16 :]
    )
    for name, content in damaged.items():
        path = tmp_path / f"{name}.pt"
        path.write_bytes(content)
        chunked = chunk_file(path)
        assert_covers(path, chunked)
        assert chunked.format == FileFormat.OPAQUE, name


def test_random_damage_to_a_header_never_breaks_chunking(tmp_path: Path) -> None:
    """Bytes flipped, 32-bit fields overwritten with extreme values and files cut short, where the
    formats keep their structure (a safetensors header, a zip's central directory and end record):
    whatever the format is then taken for, the chunks cover the file."""
    sources = [tmp_path / "small.safetensors", tmp_path / "small.pt"]
    save_file({f"t{i}": np.ones(i + 1, dtype=np.float32) for i in range(5)}, str(sources[0]))
    write_torch_zip(sources[1], [random.Random(i).randbytes(n) for i, n in enumerate((4, 300))])
    rng = random.Random(17)
    path = tmp_path / "damaged"
    for attempt in range(400):
        data = bytearray(sources[attempt % 2].read_bytes())
        structure = range(0, 200) if attempt % 2 == 0 else range(len(data) - 300, len(data) - 4)
        for _ in range(rng.randint(1, 6)):
            at = rng.choice(structure)
            if rng.random() < 0.5:
                data[at] = rng.randrange(256)
            else:
                value = rng.choice([0, 1, 2**31 - 1, 2**32 - 1, rng.randrange(2**32)])
                data[at : at + 4] = struct.pack("<I", value)
        if rng.random() < 0.2:
            del data[rng.randrange(len(data)) :]
        path.write_bytes(bytes(data))
        assert_covers(path, chunk_file(path))


def test_chunk_sizes_must_be_sensible(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(b"x")
    with pytest.raises(ValueError):
        chunk_file(path, piece_size=0)
    with pytest.raises(ValueError):
        chunk_file(path, cdc_avg_size=8 * MiB)


def test_a_file_that_reads_shorter_than_its_size_is_refused(tmp_path: Path) -> None:
    """A checkpoint truncated while it is read: sysfs files show the same thing without a race
    (their size says 4096, their bytes are fewer)."""
    shorter = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not shorter.exists() or shorter.stat().st_size <= len(shorter.read_bytes()):
        pytest.skip("no sysfs file that reads shorter than its size here")
    with pytest.raises(IntegrityError, match="became shorter while it was read"):
        chunk_file(shorter)


def test_zip64_records_are_found_through_their_longer_local_headers(tmp_path: Path) -> None:
    """PyTorch writes zip64 extra fields for records of 4 GiB and more; zipfile can write them
    for any size, which moves every record's data by the extra field's length."""
    path = tmp_path / "zip64.pt"
    storages = [random.Random(i).randbytes(n) for i, n in enumerate((10, 5000, 100_000))]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for key, data in enumerate(storages):
            with archive.open(f"archive/data/{key}", "w", force_zip64=True) as record:
                record.write(data)
    chunked = chunk_file(path)
    assert_covers(path, chunked)
    assert chunked.format == FileFormat.ZIP
    contents = path.read_bytes()
    found = [contents[c.offset : c.end] for c in chunked.chunks if c.kind == ChunkKind.STORAGE]
    assert found == storages
