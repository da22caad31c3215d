"""Recognising checkpoints in a watched folder: real files in real temporary folders."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from lmvp_daemon.checkpoints import (
    DEFAULT_INCLUDE,
    CheckpointVanished,
    Fingerprint,
    WatchRootMissing,
    WatchRules,
    files_of,
    fingerprint,
    scan,
    step_from_name,
)
from lmvp_daemon.errors import DaemonError

MODEL_FILES = [
    "model.safetensors",
    "model.pt",
    "model.pth",
    "pytorch_model.bin",
    "epoch=3-step=1000.ckpt",
    "model.onnx",
    "model.h5",
    "model.keras",
    "llama-7b.Q4_K_M.gguf",
    "forest.pkl",
    "forest.joblib",
]


def write(path: Path, data: bytes = b"weights") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_hf_checkpoint(root: Path, step: int) -> Path:
    directory = root / f"checkpoint-{step}"
    for name in (
        "config.json",
        "model.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pth",
        "trainer_state.json",
        "training_args.bin",
    ):
        write(directory / name, name.encode())
    return directory


# -- recognising checkpoints -------------------------------------------------


@pytest.mark.parametrize("name", MODEL_FILES)
def test_each_default_model_file_pattern_is_a_checkpoint(tmp_path: Path, name: str) -> None:
    write(tmp_path / "run" / name)
    rules = WatchRules()
    assert rules.checkpoint_key(f"run/{name}") == f"run/{name}"
    assert list(scan(tmp_path, rules)) == [f"run/{name}"]


def test_every_default_file_pattern_is_covered_by_the_tests() -> None:
    file_patterns = [p for p in DEFAULT_INCLUDE if not p.endswith("/")]
    for pattern in file_patterns:
        assert any(Path(name).match(pattern) for name in MODEL_FILES), pattern


def test_other_files_are_not_checkpoints(tmp_path: Path) -> None:
    for name in ("metrics.jsonl", "metrics.csv", "notes.txt", "config.json", "events.out"):
        write(tmp_path / name)
    rules = WatchRules()
    assert scan(tmp_path, rules) == {}
    assert rules.checkpoint_key("metrics.jsonl") is None


@pytest.mark.parametrize(
    "relpath",
    [
        "model.pt.tmp",
        "model.safetensors.part",
        "model.safetensors.incomplete",
        ".model.pt.swp",
        "model.pt~",
        ".hidden.pt",
        ".cache/model.safetensors",
        "run/.git/objects/pack.pt",
        "checkpoint-500/.model.safetensors.tmp",
        "MODEL.PT.TMP",
    ],
)
def test_temporary_and_hidden_files_are_never_checkpoints(tmp_path: Path, relpath: str) -> None:
    write(tmp_path / relpath)
    rules = WatchRules()
    assert rules.checkpoint_key(relpath) is None
    assert scan(tmp_path, rules) == {}


def test_finished_names_are_not_temporary() -> None:
    rules = WatchRules()
    assert rules.checkpoint_key("model.pt") == "model.pt"
    assert rules.checkpoint_key("run/checkpoint-500/model.safetensors") == "run/checkpoint-500"
    assert rules.checkpoint_key("tmp/model.pt") == "tmp/model.pt"


def test_atomic_save_only_the_renamed_file_is_a_checkpoint(tmp_path: Path) -> None:
    rules = WatchRules()
    tmp = write(tmp_path / "x.pt.tmp", b"half")
    assert rules.checkpoint_key("x.pt.tmp") is None
    assert scan(tmp_path, rules) == {}

    os.replace(tmp, tmp_path / "x.pt")

    assert rules.checkpoint_key("x.pt") == "x.pt"
    found = scan(tmp_path, rules)
    assert list(found) == ["x.pt"]
    assert found["x.pt"] == fingerprint(tmp_path, "x.pt")


def test_hf_trainer_directory_is_one_checkpoint_with_its_step(tmp_path: Path) -> None:
    write_hf_checkpoint(tmp_path / "out", 500)
    rules = WatchRules()

    found = scan(tmp_path, rules)

    assert list(found) == ["out/checkpoint-500"]
    assert len(found["out/checkpoint-500"].files) == 7
    for name in ("model.safetensors", "trainer_state.json", "optimizer.pt"):
        assert rules.checkpoint_key(f"out/checkpoint-500/{name}") == "out/checkpoint-500"
    assert rules.checkpoint_key("out/checkpoint-500") == "out/checkpoint-500"
    assert step_from_name("out/checkpoint-500") == {"step": 500}


def test_files_below_a_checkpoint_directory_belong_to_it(tmp_path: Path) -> None:
    write(tmp_path / "checkpoint-20" / "model.safetensors")
    write(tmp_path / "checkpoint-20" / "sub" / "adapter" / "weights.bin")
    rules = WatchRules()
    assert rules.checkpoint_key("checkpoint-20/sub/adapter/weights.bin") == "checkpoint-20"
    assert list(scan(tmp_path, rules)) == ["checkpoint-20"]
    assert [rel for rel, _ in files_of(tmp_path, "checkpoint-20")] == [
        "model.safetensors",
        "sub/adapter/weights.bin",
    ]


def test_hf_directory_staged_under_a_tmp_name_counts_only_once_renamed(tmp_path: Path) -> None:
    # transformers 4.36-4.38 wrote `tmp-checkpoint-N/` and renamed it when it was complete
    staging = write_hf_checkpoint(tmp_path, 40).rename(tmp_path / "tmp-checkpoint-40")
    rules = WatchRules()
    assert rules.checkpoint_key("tmp-checkpoint-40/model.safetensors") is None
    assert scan(tmp_path, rules) == {}

    staging.rename(tmp_path / "checkpoint-40")

    assert rules.checkpoint_key("checkpoint-40") == "checkpoint-40"
    assert list(scan(tmp_path, rules)) == ["checkpoint-40"]


def test_empty_checkpoint_directory_is_not_reported_until_it_has_files(tmp_path: Path) -> None:
    (tmp_path / "checkpoint-1").mkdir()
    assert scan(tmp_path, WatchRules()) == {}
    assert fingerprint(tmp_path, "checkpoint-1") == Fingerprint(())


def test_lightning_checkpoints_in_lightning_logs_are_found_with_their_step(
    tmp_path: Path,
) -> None:
    checkpoints = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    write(checkpoints / "epoch=3-step=1000.ckpt")
    write(checkpoints / "epoch=4-step=1250-val_loss=0.31.ckpt")
    write(checkpoints / "last.ckpt")
    write(tmp_path / "lightning_logs" / "version_0" / "metrics.csv")
    write(tmp_path / "lightning_logs" / "version_0" / "hparams.yaml")

    found = scan(tmp_path, WatchRules())

    prefix = "lightning_logs/version_0/checkpoints/"
    assert sorted(found) == [
        prefix + "epoch=3-step=1000.ckpt",
        prefix + "epoch=4-step=1250-val_loss=0.31.ckpt",
        prefix + "last.ckpt",
    ]
    assert step_from_name(prefix + "epoch=3-step=1000.ckpt") == {"epoch": 3, "step": 1000}
    assert step_from_name("epoch=4-step=1250-val_loss=0.31.ckpt") == {"epoch": 4, "step": 1250}
    assert step_from_name("last.ckpt") == {}


def test_lightning_deepspeed_checkpoint_directory_is_one_checkpoint(tmp_path: Path) -> None:
    write(tmp_path / "epoch=0-step=10.ckpt" / "checkpoint" / "mp_rank_00_model_states.pt")
    write(tmp_path / "epoch=0-step=10.ckpt" / "latest")
    rules = WatchRules()
    assert list(scan(tmp_path, rules)) == ["epoch=0-step=10.ckpt"]
    key = rules.checkpoint_key("epoch=0-step=10.ckpt/checkpoint/mp_rank_00_model_states.pt")
    assert key == "epoch=0-step=10.ckpt"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("checkpoint-500", {"step": 500}),
        ("epoch=3-step=1000.ckpt", {"epoch": 3, "step": 1000}),
        ("model_step_2000.pt", {"step": 2000}),
        ("step2000", {"step": 2000}),
        ("step-2000.safetensors", {"step": 2000}),
        ("global_step2000", {"step": 2000}),
        ("iter_0002000.pt", {"step": 2000}),
        ("ckpt-300", {"step": 300}),
        ("model.ckpt-300", {"step": 300}),
        ("epoch_5.pt", {"epoch": 5}),
        ("Epoch5.h5", {"epoch": 5}),
        ("model_epoch_2_step_300.pt", {"epoch": 2, "step": 300}),
        ("model.safetensors", {}),
        ("model-00001-of-00002.safetensors", {}),
        ("stepper.pt", {}),
        ("last.ckpt", {}),
        ("checkpoint-best", {}),
    ],
)
def test_step_and_epoch_are_read_from_the_name(name: str, expected: dict[str, int]) -> None:
    assert step_from_name(name) == expected


# -- ignore and include patterns ---------------------------------------------


def test_ignore_patterns_are_gitignore_style(tmp_path: Path) -> None:
    write(tmp_path / "keep.pt")
    write(tmp_path / "pytorch_model.bin")
    write(tmp_path / "sub" / "other.bin")
    write(tmp_path / "runs" / "a.pt")
    write(tmp_path / "runs" / "deep" / "b.safetensors")
    write(tmp_path / "notruns" / "c.pt")
    rules = WatchRules(ignore=["*.bin", "runs/**"])

    assert sorted(scan(tmp_path, rules)) == ["keep.pt", "notruns/c.pt"]
    assert rules.checkpoint_key("pytorch_model.bin") is None
    assert rules.checkpoint_key("sub/other.bin") is None
    assert rules.checkpoint_key("runs/deep/b.safetensors") is None
    assert rules.checkpoint_key("keep.pt") == "keep.pt"


def test_ignore_pattern_can_drop_files_inside_a_checkpoint_directory(tmp_path: Path) -> None:
    write_hf_checkpoint(tmp_path, 500)
    rules = WatchRules(ignore=["optimizer.pt"])

    found = scan(tmp_path, rules)

    assert "optimizer.pt" not in [f.path for f in found["checkpoint-500"].files]
    assert found["checkpoint-500"] == fingerprint(tmp_path, "checkpoint-500", rules=rules)
    assert "optimizer.pt" not in [
        rel for rel, _ in files_of(tmp_path, "checkpoint-500", rules=rules)
    ]
    assert rules.checkpoint_key("checkpoint-500/optimizer.pt") is None
    assert rules.checkpoint_key("checkpoint-500/model.safetensors") == "checkpoint-500"


def test_ignored_directory_hides_its_checkpoints(tmp_path: Path) -> None:
    write_hf_checkpoint(tmp_path / "scratch", 1)
    write(tmp_path / "scratch" / "x.pt")
    rules = WatchRules(ignore=["/scratch/"])
    assert scan(tmp_path, rules) == {}
    assert rules.checkpoint_key("scratch/checkpoint-1/model.safetensors") is None
    assert rules.checkpoint_key("scratch/x.pt") is None


def test_custom_include_patterns_replace_the_defaults(tmp_path: Path) -> None:
    write(tmp_path / "model.pt")
    write(tmp_path / "weights.npz")
    write(tmp_path / "exports" / "best" / "saved_model.pb")
    write(tmp_path / "exports" / "best" / "variables" / "variables.index")
    rules = WatchRules(include=["*.npz", "exports/*/"])
    assert sorted(scan(tmp_path, rules)) == ["exports/best", "weights.npz"]
    assert rules.checkpoint_key("exports/best/variables/variables.index") == "exports/best"
    assert rules.checkpoint_key("model.pt") is None


def test_a_single_string_is_refused_as_pattern_list() -> None:
    with pytest.raises(TypeError):
        WatchRules(include="*.pt")


def test_paths_leaving_the_folder_are_refused(tmp_path: Path) -> None:
    rules = WatchRules()
    with pytest.raises(ValueError):
        rules.checkpoint_key("../other/model.pt")
    with pytest.raises(ValueError):
        fingerprint(tmp_path, "/etc/passwd")


# -- fingerprints ------------------------------------------------------------


def test_fingerprint_is_stable_while_nothing_changes(tmp_path: Path) -> None:
    write(tmp_path / "model.pt", b"a" * 100)
    write_hf_checkpoint(tmp_path, 7)
    for key in ("model.pt", "checkpoint-7"):
        assert fingerprint(tmp_path, key) == fingerprint(tmp_path, key)
    (tmp_path / "checkpoint-7" / "model.safetensors").read_bytes()
    assert scan(tmp_path, WatchRules()) == scan(tmp_path, WatchRules())


def test_fingerprint_changes_when_a_file_grows(tmp_path: Path) -> None:
    path = write(tmp_path / "model.pt", b"a" * 100)
    before = fingerprint(tmp_path, "model.pt")
    with path.open("ab") as f:
        f.write(b"b")
    after = fingerprint(tmp_path, "model.pt")
    assert before != after
    assert after is not None and after.size == 101


def test_fingerprint_changes_when_a_file_is_replaced_even_with_same_size_and_mtime(
    tmp_path: Path,
) -> None:
    path = write(tmp_path / "model.pt", b"a" * 100)
    st = path.stat()
    before = fingerprint(tmp_path, "model.pt")
    replacement = write(tmp_path / "model.pt.tmp", b"b" * 100)
    os.utime(replacement, ns=(st.st_atime_ns, st.st_mtime_ns))
    keep_old_inode_alive = tmp_path / "old.keep"
    os.link(path, keep_old_inode_alive)  # so the new file cannot reuse the inode
    os.replace(replacement, path)
    after = fingerprint(tmp_path, "model.pt")
    assert after is not None and before is not None
    assert (after.files[0].size, after.files[0].mtime_ns) == (100, st.st_mtime_ns)
    assert after != before


def test_fingerprint_of_a_directory_changes_when_a_file_is_added_or_grows(tmp_path: Path) -> None:
    directory = write_hf_checkpoint(tmp_path, 9)
    first = fingerprint(tmp_path, "checkpoint-9")
    write(directory / "extra.safetensors")
    second = fingerprint(tmp_path, "checkpoint-9")
    with (directory / "model.safetensors").open("ab") as f:
        f.write(b"more")
    third = fingerprint(tmp_path, "checkpoint-9")
    write(directory / "model.safetensors.tmp", b"in progress")  # temporary: not counted
    assert first != second != third
    assert fingerprint(tmp_path, "checkpoint-9") == third


def test_fingerprint_survives_a_round_trip_through_json(tmp_path: Path) -> None:
    write_hf_checkpoint(tmp_path, 3)
    fp = fingerprint(tmp_path, "checkpoint-3")
    assert fp is not None
    assert Fingerprint.from_json(fp.to_json()) == fp


def test_fingerprint_of_a_vanished_checkpoint_is_none(tmp_path: Path) -> None:
    write(tmp_path / "model.pt")
    directory = write_hf_checkpoint(tmp_path, 2)
    (tmp_path / "model.pt").unlink()
    shutil.rmtree(directory)
    assert fingerprint(tmp_path, "model.pt") is None
    assert fingerprint(tmp_path, "checkpoint-2") is None
    assert fingerprint(tmp_path, "checkpoint-2/model.safetensors") is None
    with pytest.raises(CheckpointVanished):
        files_of(tmp_path, "model.pt")


def test_files_of_a_single_file_checkpoint_is_its_name_and_path(tmp_path: Path) -> None:
    path = write(tmp_path / "run" / "model.safetensors")
    assert files_of(tmp_path, "run/model.safetensors") == [("model.safetensors", path)]


def test_files_of_a_checkpoint_directory_are_relative_to_it_without_temporaries(
    tmp_path: Path,
) -> None:
    directory = write_hf_checkpoint(tmp_path, 500)
    write(directory / ".DS_Store")
    write(directory / "model.safetensors.part")
    files = files_of(tmp_path, "checkpoint-500")
    assert [rel for rel, _ in files] == [
        "config.json",
        "model.safetensors",
        "optimizer.pt",
        "rng_state.pth",
        "scheduler.pt",
        "trainer_state.json",
        "training_args.bin",
    ]
    assert all(path == directory / rel for rel, path in files)


# -- the watched folder ------------------------------------------------------


def test_scan_of_ten_thousand_files_completes(tmp_path: Path) -> None:
    for d in range(100):
        folder = tmp_path / f"run-{d}"
        folder.mkdir()
        for i in range(98):
            (folder / f"sample-{i}.json").write_bytes(b"{}")
        (folder / f"step_{d}.pt").write_bytes(b"w")
        (folder / f"checkpoint-{d}").mkdir()
        (folder / f"checkpoint-{d}" / "model.safetensors").write_bytes(b"w")
    started = time.perf_counter()
    found = scan(tmp_path, WatchRules(ignore=["*.bin"]))
    elapsed = time.perf_counter() - started
    print(f"scan of 10,000 files in 200 folders: {elapsed * 1000:.0f} ms")
    assert len(found) == 200


def test_missing_watch_root_raises_instead_of_looking_empty(tmp_path: Path) -> None:
    with pytest.raises(WatchRootMissing) as raised:
        scan(tmp_path / "gone", WatchRules())
    assert isinstance(raised.value, DaemonError)
    assert str(tmp_path / "gone") in raised.value.message
    assert raised.value.title


def test_watch_root_that_is_a_file_raises(tmp_path: Path) -> None:
    write(tmp_path / "model.pt")
    with pytest.raises(WatchRootMissing):
        scan(tmp_path / "model.pt", WatchRules())


def test_watch_root_removed_after_a_scan_raises_on_the_next(tmp_path: Path) -> None:
    root = tmp_path / "run"
    write(root / "model.pt")
    assert list(scan(root, WatchRules())) == ["model.pt"]
    root.rename(tmp_path / "renamed")
    with pytest.raises(WatchRootMissing):
        scan(root, WatchRules())


def test_symlink_pointing_outside_the_root_is_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "watched"
    outside = tmp_path / "elsewhere"
    write(outside / "secret.pt")
    write_hf_checkpoint(outside, 1)
    write(root / "model.pt")
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "linked.pt").symlink_to(outside / "secret.pt")
    (root / "checkpoint-9").symlink_to(outside / "checkpoint-1", target_is_directory=True)

    assert list(scan(root, WatchRules())) == ["model.pt"]
    assert fingerprint(root, "link/secret.pt") is None
    assert fingerprint(root, "linked.pt") is None
    assert fingerprint(root, "checkpoint-9") is None
    with pytest.raises(CheckpointVanished):
        files_of(root, "link/secret.pt")


def test_symlink_inside_a_checkpoint_directory_is_not_followed(tmp_path: Path) -> None:
    write(tmp_path / "outside" / "big.safetensors")
    directory = write_hf_checkpoint(tmp_path / "watched", 5)
    (directory / "shared.safetensors").symlink_to(tmp_path / "outside" / "big.safetensors")
    rels = [rel for rel, _ in files_of(tmp_path / "watched", "checkpoint-5")]
    assert "shared.safetensors" not in rels


def test_watch_root_given_as_a_symlink_is_scanned(tmp_path: Path) -> None:
    write(tmp_path / "real" / "model.pt")
    (tmp_path / "alias").symlink_to(tmp_path / "real", target_is_directory=True)
    assert list(scan(tmp_path / "alias", WatchRules())) == ["model.pt"]
