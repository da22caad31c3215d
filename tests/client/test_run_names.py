"""Runs are named after their job or folder when `lmvp.init_run` is given no name (issue 18:
runs were 'run-1', 'run-2' in the desktop and the console), against a real server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import lmvp
from lmvp import runs as runs_module
from lmvp.api import default_run_name
from tests.support import Deployment, unique


@pytest.fixture
def project(
    deployment_sqlite: Deployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    user = deployment_sqlite.user("names")
    for name, value in {
        "LMVP_SERVER": deployment_sqlite.url,
        "LMVP_TOKEN": user.token or "",
        "LMVP_CONFIG_DIR": str(tmp_path / "config"),
        "LMVP_CACHE_DIR": str(tmp_path / "cache"),
    }.items():
        monkeypatch.setenv(name, value)
    for variable in ("LMVP_RUN_NAME", "SLURM_JOB_NAME", "PBS_JOBNAME", "LSB_JOBNAME", "JOB_NAME"):
        monkeypatch.delenv(variable, raising=False)
    yield lmvp.default_client().create_project(unique("names")).name
    for run in list(runs_module._live):
        if not run.finished:
            run.finish()


def test_a_run_without_a_name_is_named_after_its_folder_then_its_job(
    project: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "sweep-lr-3e-4"
    folder.mkdir()
    monkeypatch.chdir(folder)
    run = lmvp.init_run(f"{project}/net", params={"lr": 3e-4})
    run.finish()
    monkeypatch.setenv("SLURM_JOB_NAME", "resnet-ablation")
    job = lmvp.init_run(f"{project}/net")
    job.finish()
    named = lmvp.init_run(f"{project}/net", name="chosen")
    named.finish()

    runs = lmvp.default_client().runs(f"{project}/net")
    assert [r.name for r in reversed(runs)] == ["sweep-lr-3e-4", "resnet-ablation", "chosen"]
    assert runs[-1].params == {"lr": 3e-4}


def test_an_interactive_shell_is_no_job_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_JOB_NAME", "bash")
    monkeypatch.delenv("LMVP_RUN_NAME", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_run_name() == tmp_path.name
