"""`lmvp diff A B` as a user runs it (a real `lmvp` process against a real server): two pushed
checkpoints of a fine-tune, printed tensor by tensor with the relative changes numpy computes,
a summary line, exit code 0; `--all`, `--json`, a short second reference, and two different
models refused as a usage error."""

from __future__ import annotations

import math

import pytest

import lmvp
from tests.client.test_cli import EXIT_USAGE, Terminal
from tests.support import ServerProcess, unique
from tests.tensor_files import FINE_TUNE_CHANGES, fine_tune, relative_change, write_safetensors


@pytest.fixture(scope="module")
def pushed(
    client_server: ServerProcess, token: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Terminal, str]:
    """A terminal with LMVP_SERVER and LMVP_TOKEN, and a model whose versions 1 and 2 are the
    two checkpoints of `fine_tune` (with a config.json beside them)."""
    tmp_path = tmp_path_factory.mktemp("diff")
    term = Terminal(tmp_path / "terminal", client_server.url, token)
    term.root.mkdir()
    model = f"{unique('diff')}/llm"
    a, b = fine_tune(seed=3)
    for number, tensors in ((1, a), (2, b)):
        folder = tmp_path / f"v{number}"
        write_safetensors(folder / f"checkpoint-{number}00" / "model.safetensors", tensors)
        (folder / "config.json").write_text('{"layers": 4}')
        term.ok("push", folder, model, "--create")
    return term, model


def test_diff_prints_the_tensors_that_changed(pushed: tuple[Terminal, str]) -> None:
    term, model = pushed
    a, b = fine_tune(seed=3)
    result = term.run("diff", f"{model}:1", f"{model}:2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{model}: v1 -> v2"
    assert "checkpoint-100/model.safetensors -> checkpoint-200/model.safetensors" in lines
    header = next(i for i, line in enumerate(lines) if line.startswith("TENSOR"))
    assert lines[header].split() == ["TENSOR", "CHANGE", "DTYPE/SHAPE", "RELATIVE", "CHANGE"]
    rows = {}
    for line in lines[header + 1 :]:
        if not line or line.startswith("("):
            break
        rows[line.split()[0]] = line
    # Unchanged tensors are counted, not listed.
    shown = {n: c for n, c in FINE_TUNE_CHANGES.items() if c != "unchanged"}
    assert {n: rows[n].split()[1] for n in rows} == shown
    assert next(iter(rows)) == "scale"  # the zero tensor that grew: infinitely changed
    assert rows["scale"].endswith("∞ %")
    for name in ("layers.0.weight", "layers.1.weight", "layers.2.weight", "steps"):
        number, unit = rows[name].split()[-2:]  # a percentage at 3 significant digits
        assert unit == "%"
        printed = float(number) / 100
        assert math.isclose(printed, relative_change(a[name], b[name]), rel_tol=5e-3), name
    assert "F32 [10, 64] -> F32 [12, 64]" in rows["head.weight"]
    assert "BF16 [64, 64]" in rows["layers.1.weight"]
    assert "(2 unchanged tensors; --all lists them)" in lines
    assert "5 changed, 1 reshaped, 1 added, 1 removed, 2 unchanged (1 safetensors file)" in lines
    assert lines[-1] == "not compared per tensor (not safetensors): config.json"

    everything = term.ok("diff", f"{model}:1", "2", "--all")  # B as just a number
    assert "embed.weight" in everything and "layers.3.weight" in everything
    assert "--all lists them" not in everything


def test_diff_json_and_usage_errors(pushed: tuple[Terminal, str]) -> None:
    term, model = pushed
    data = term.json("diff", f"{model}:1", f"{model}")  # latest
    assert (data["a"], data["b"]) == (1, 2)
    tensors = {t["name"]: t for t in data["files"][0]["tensors"]}
    assert tensors["scale"]["relative_change"] == "Infinity"
    assert tensors["head.weight"]["a_shape"] == [10, 64]
    assert data["skipped"] == ["config.json"]
    stderr = term.fails(EXIT_USAGE, "diff", f"{model}:1", "other/model:2")
    assert "different models" in stderr
    stderr = term.fails(1, "diff", f"{model}:1", f"{model}:9")
    assert "version" in stderr and "9" in stderr


def test_client_compare_tensors_returns_typed_records(
    pushed: tuple[Terminal, str], client_server: ServerProcess, token: str
) -> None:
    _, model = pushed
    project, name = model.split("/")
    a, b = fine_tune(seed=3)
    with lmvp.Client(client_server.url, token) as client:
        result = client.compare_tensors(project, name, 1, "latest")
        assert isinstance(result, lmvp.TensorComparison)
        assert (result.a, result.b, result.skipped) == (1, 2, ["config.json"])
        (file,) = result.files
        assert isinstance(file, lmvp.FileTensors)
        assert (file.a_path, file.b_path) == (
            "checkpoint-100/model.safetensors",
            "checkpoint-200/model.safetensors",
        )
        rows = {t.name: t for t in file.tensors}
        assert rows["scale"].relative_change == math.inf
        assert rows["head.weight"] == lmvp.TensorChange(
            "head.weight", "reshaped", "F32", "F32", (10, 64), (12, 64), None
        )
        changed = rows["layers.0.weight"].relative_change
        assert changed == pytest.approx(relative_change(a["layers.0.weight"], b["layers.0.weight"]))
        with pytest.raises(lmvp.NotFound):
            client.compare_tensors(project, name, 1, 3)
