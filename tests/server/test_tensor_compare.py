"""Two versions compared tensor by tensor (`GET .../compare/tensors`, issue 17), against a real
server: a fine-tune's changed, reshaped, added, removed and unchanged tensors, with relative
changes as numpy computes them, whether the files went whole (tus) or as chunks through the
public client (then unchanged tensors are decided from chunk hashes, without reading them);
files matched by role, recognised as safetensors by their bytes; headers that lie are files
"not safetensors", never a 500.

SQLite only, but for the chunked test: the answer is computed above the database, except the
chunk lists, which are read with one query on both backends.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import lmvp
from lmvp import chunked
from tests.support import Api, Deployment
from tests.tensor_files import (
    FINE_TUNE_CHANGES,
    T,
    fine_tune,
    relative_change,
    safetensors_bytes,
    with_header,
    write_safetensors,
)

pytestmark = pytest.mark.backends("sqlite")

KiB = 1 << 10


def compare(api: Api, project: str, model: str, a: str | int, b: str | int) -> Any:
    r = api.get(f"/projects/{project}/models/{model}/compare/tensors", params={"a": a, "b": b})
    assert r.status_code == 200, r.text
    return r.json()


def check_fine_tune(file: dict[str, Any], a: dict[str, T], b: dict[str, T]) -> None:
    """`file` says of each tensor what `fine_tune` did, with numpy's relative changes, in the
    promised order."""
    rows = {t["name"]: t for t in file["tensors"]}
    assert {name: t["change"] for name, t in rows.items()} == FINE_TUNE_CHANGES
    for name, row in rows.items():
        if row["change"] == "changed":
            expected = relative_change(a[name], b[name])
            if math.isinf(expected):
                assert row["relative_change"] == "Infinity", name
            else:
                assert row["relative_change"] == pytest.approx(expected, rel=1e-9), name
        else:
            assert row["relative_change"] is None, name
    head = rows["head.weight"]
    assert (head["a_dtype"], head["b_dtype"]) == ("F32", "F32")
    assert (head["a_shape"], head["b_shape"]) == ([10, 64], [12, 64])
    assert rows["new.bias"]["a_shape"] is None and rows["new.bias"]["b_shape"] == [12]
    assert rows["old.bias"]["b_dtype"] is None and rows["old.bias"]["a_dtype"] == "F32"
    assert rows["layers.1.weight"]["a_dtype"] == "BF16"
    # Changed first, largest relative change first ("Infinity": the zero tensor that grew),
    # then reshaped, added, removed, unchanged.
    order = [t["name"] for t in file["tensors"]]
    changed = [n for n in order if rows[n]["change"] == "changed"]
    assert changed[0] == "scale"
    sizes = [rows[n]["relative_change"] for n in changed[1:]]
    assert sizes == sorted(sizes, reverse=True)
    assert order[len(changed) :] == [
        "head.weight",
        "new.bias",
        "old.bias",
        "embed.weight",
        "layers.3.weight",
    ]


def test_a_fine_tune_sent_whole_is_compared_tensor_by_tensor(deployment: Deployment) -> None:
    api = deployment.admin
    project = deployment.project()
    a, b = fine_tune()
    same = safetensors_bytes({"w": T("F32", (4,), bytes(16))})
    r = deployment.commit(
        api,
        project,
        "m",
        {
            "checkpoint-100/model.safetensors": safetensors_bytes(a),
            "config.json": b'{"hidden": 64}',
            "extra.bin": same,  # safetensors by its bytes, whatever its name
        },
    )
    assert r.status_code == 201, r.text
    r = deployment.commit(
        api,
        project,
        "m",
        {
            "checkpoint-200/model.safetensors": safetensors_bytes(b),
            "config.json": b'{"hidden": 64, "tuned": true}',
            "extra.bin": same,
        },
    )
    assert r.status_code == 201, r.text

    result = compare(api, project, "m", 1, "latest")
    assert (result["a"], result["b"]) == (1, 2)
    assert result["skipped"] == ["config.json"]
    paths = [(f["a_path"], f["b_path"]) for f in result["files"]]
    assert paths == [
        ("checkpoint-100/model.safetensors", "checkpoint-200/model.safetensors"),
        ("extra.bin", "extra.bin"),
    ]
    check_fine_tune(result["files"][0], a, b)
    assert result["files"][1]["tensors"] == [
        {
            "name": "w",
            "change": "unchanged",
            "a_dtype": "F32",
            "b_dtype": "F32",
            "a_shape": [4],
            "b_shape": [4],
            "relative_change": None,
        }
    ]
    # The other way round, removed and added swap.
    back = compare(api, project, "m", "v2", "1")
    rows = {t["name"]: t["change"] for t in back["files"][0]["tensors"]}
    assert (rows["old.bias"], rows["new.bias"]) == ("added", "removed")


@pytest.fixture
def chunks_on(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The public client sends files from 16 KiB as chunks to this loopback server."""
    monkeypatch.setenv("LMVP_CHUNKS", "1")
    monkeypatch.setattr(chunked, "MIN_SIZE", 16 * KiB)
    yield


@pytest.mark.backends("sqlite", "postgres")
def test_chunked_checkpoints_are_compared_from_chunk_hashes(
    deployment: Deployment, chunks_on: None, tmp_path: Path
) -> None:
    api = deployment.admin
    project = deployment.project()
    a, b = fine_tune(seed=7)
    with lmvp.Client(deployment.url, api.token, cache_dir=tmp_path / "cache") as client:
        client.create_model(f"{project}/m")
        path_a = write_safetensors(tmp_path / "a" / "model.safetensors", a)
        path_b = write_safetensors(tmp_path / "b" / "model.safetensors", b)
        client.update(f"{project}/m", path_a)
        v2 = client.update(f"{project}/m", path_b)
    blob_b = v2.files[0].sha256
    r = api.get(f"/projects/{project}/blobs/{blob_b}/chunks")
    assert r.status_code == 200, r.text  # sent as chunks, not whole
    chunks = r.json()["chunks"]

    result = compare(api, project, "m", 1, 2)
    assert result["skipped"] == []
    assert len(result["files"]) == 1
    check_fine_tune(result["files"][0], a, b)

    # Unchanged tensors are decided from their chunks' hashes, never read: with the frames of
    # every chunk holding an unchanged tensor gone from the store, the answer is the same.
    start = 8 + struct.unpack("<Q", path_b.read_bytes()[:8])[0]
    unchanged = {b[n].data for n in ("embed.weight", "layers.3.weight")}
    data = path_b.read_bytes()
    gone = []
    for chunk in chunks:
        at, size = chunk["offset"], chunk["size"]
        if at >= start and data[at : at + size] in unchanged:
            sha = chunk["sha256"]
            (deployment.server.data_dir / "blobs" / "chunks" / sha[:2] / sha[2:4] / sha).unlink()
            gone.append(f"bytes={at}-{at + size - 1}")
    assert len(gone) == 2
    assert compare(api, project, "m", 1, 2) == result
    # ... which a download of those bytes would have needed.
    r = api.get(f"/projects/{project}/blobs/{blob_b}", headers={"Range": gone[0]})
    assert r.status_code == 500 and r.json()["error"]["code"] == "chunk_damaged"


F32x4 = bytes(16)
LIES: dict[str, bytes] = {
    "offsets-leave-the-file.safetensors": with_header(
        {"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1 << 40]}}, F32x4
    ),
    "dtype-does-not-fit.safetensors": with_header(
        {"x": {"dtype": "F64", "shape": [4], "data_offsets": [0, 16]}}, F32x4
    ),
    "unknown-dtype.safetensors": with_header(
        {"x": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}, F32x4
    ),
    "overlap.safetensors": with_header(
        {
            "x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
            "y": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
        },
        F32x4,
    ),
    "negative.safetensors": with_header(
        {"x": {"dtype": "F32", "shape": [-4], "data_offsets": [-16, 0]}}, F32x4
    ),
    "bool-shape.safetensors": with_header(
        {"x": {"dtype": "U8", "shape": [True], "data_offsets": [0, 1]}}, F32x4
    ),
    "length-past-the-end.safetensors": struct.pack("<Q", 1 << 62) + b'{"x": 1}' + F32x4,
    "not-json.safetensors": struct.pack("<Q", 12) + b"{not json at" + F32x4,
    "deep.safetensors": struct.pack("<Q", 200_000) + b"{" * 200_000,
    "entry-not-object.safetensors": with_header({"x": [1, 2]}, F32x4),
    "short.safetensors": b"{}",
}


def test_headers_that_lie_make_files_not_safetensors(deployment: Deployment) -> None:
    api = deployment.admin
    project = deployment.project()
    good = safetensors_bytes({"x": T("F32", (4,), F32x4)})
    r = deployment.commit(api, project, "m", {"ok.safetensors": good, "pair.safetensors": good})
    assert r.status_code == 201, r.text
    r = deployment.commit(
        api,
        project,
        "m",
        {"ok.safetensors": good, **LIES, "pair.safetensors": LIES["overlap.safetensors"]},
    )
    assert r.status_code == 201, r.text

    result = compare(api, project, "m", 1, 2)
    # A file matched to one that is not safetensors has nothing to say per tensor either.
    assert sorted(result["skipped"]) == sorted([*LIES, "pair.safetensors"])
    assert [(f["a_path"], f["b_path"]) for f in result["files"]] == [
        ("ok.safetensors", "ok.safetensors")
    ]


def test_versions_and_projects_that_are_not_there_answer_404(deployment: Deployment) -> None:
    api = deployment.admin
    project = deployment.project()
    r = deployment.commit(api, project, "m", {"model.safetensors": safetensors_bytes({})})
    assert r.status_code == 201, r.text
    url = f"/projects/{project}/models/m/compare/tensors"
    for a, b in [(1, 9), (9, 1), (1, "nope"), (1, "v0"), (1, "\x00")]:
        r = api.get(url, params={"a": a, "b": b})
        assert r.status_code == 404, (a, b, r.text)
    assert api.get(url, params={"a": 1}).status_code == 422
    assert api.get(f"/projects/{project}/models/x/compare/tensors?a=1&b=1").status_code == 404
    # Readers may compare; others do not learn the project exists.
    outsider = deployment.user()
    assert outsider.get(url, params={"a": 1, "b": 1}).status_code == 404
    deployment.add_member(project, outsider, "viewer")
    r = outsider.get(url, params={"a": 1, "b": "latest"})
    assert r.status_code == 200, r.text
    assert r.json()["files"] == [
        {"a_path": "model.safetensors", "b_path": "model.safetensors", "tensors": []}
    ]
