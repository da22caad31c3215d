"""Runs from the client's side, against a real server process: `lmvp.init_run`, `run.log`
(buffered, sent in the background, flushed at finish and at interpreter exit, kept while the
server is down), `lmvp.get_metrics`, versions tied to the current run by `lmvp.update`, and the
`lmvp runs` / `lmvp metrics` commands."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import lmvp
from lmvp import runs as runs_module
from tests.support import ADMIN_PASSWORD, Api, Deployment, ServerProcess, unique

LMVP = Path(sys.executable).parent / "lmvp"


@pytest.fixture(scope="module")
def user(deployment_sqlite: Deployment) -> Api:
    return deployment_sqlite.user("runs")


@pytest.fixture
def env(
    deployment_sqlite: Deployment, user: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """The module functions talk to the shared server as `user`."""
    values = {
        "LMVP_SERVER": deployment_sqlite.url,
        "LMVP_TOKEN": user.token or "",
        "LMVP_CONFIG_DIR": str(tmp_path / "config"),
        "LMVP_CACHE_DIR": str(tmp_path / "cache"),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture
def project(env: dict[str, str]) -> str:
    return lmvp.default_client().create_project(unique("runs")).name


@pytest.fixture(autouse=True)
def _no_run_left_behind() -> Iterator[None]:
    """A run a test leaves open would be flushed at pytest's exit, against a server long gone."""
    yield
    for run in list(runs_module._live):
        if not run.finished:
            run._abandon.set()
            run._finished = True
            run._stop(timeout=1.0)


# --- logging ------------------------------------------------------------------------------------


def test_logged_points_round_trip_through_the_server(project: str) -> None:
    run = lmvp.init_run(f"{project}/resnet", name="baseline", params={"lr": 0.001})
    assert lmvp.current_run() is run
    assert (run.name, run.project, run.model) == ("baseline", project, "resnet")
    for i in range(1000):
        run.log({"loss": 1.0 / (i + 1), "acc": i / 1000})  # steps 0, 1, 2 ...
    run.log({"eval/acc": 0.75}, step=2000)
    lmvp.log_metrics({"eval/acc": 0.8}, step=3000)
    info = run.finish()
    assert lmvp.current_run() is None

    assert (info.status, info.point_count, info.last_step) == ("finished", 2002, 3000)
    assert info.params == {"lr": 0.001} and info.ended_at is not None
    series = lmvp.get_metrics(run)
    assert sorted(series) == ["acc", "eval/acc", "loss"]
    loss = series["loss"]
    assert loss.steps == list(range(1000)) and not loss.downsampled and loss.count == 1000
    assert loss.values == [1.0 / (i + 1) for i in range(1000)]
    assert all(w > 1.7e9 for w in loss.wall_times)
    assert series["eval/acc"].steps == [2000, 3000]
    assert [(p.step, p.value) for p in series["eval/acc"].points()] == [(2000, 0.75), (3000, 0.8)]

    only = lmvp.get_metrics(run.id, keys=["loss"], max_points=100)
    assert list(only) == ["loss"]
    assert only["loss"].downsampled and len(only["loss"]) <= 100
    assert only["loss"].values[0] == 1.0 and 1.0 / 1000 in only["loss"].values

    client = lmvp.default_client()
    assert [r.id for r in client.runs(f"{project}/resnet")] == [run.id]
    assert {k.key: k.count for k in client.run(run.id).keys} == {
        "acc": 1000,
        "eval/acc": 2,
        "loss": 1000,
    }


def test_points_wait_in_the_buffer_until_finish_sends_them(project: str) -> None:
    client = lmvp.default_client()
    info = client.create_run(f"{project}/m")
    # A flush interval of an hour: only finish() can have sent these.
    run = lmvp.Run(client, info, flush_interval=3600)
    for step in range(500):
        run.log({"loss": float(step)}, step)
    assert client.run(run.id).point_count == 0
    assert run.finish().point_count == 500
    assert lmvp.get_metrics(run.id)["loss"].steps == list(range(500))


def test_a_full_batch_is_sent_without_waiting_for_the_interval(project: str) -> None:
    client = lmvp.default_client()
    run = lmvp.Run(client, client.create_run(f"{project}/m"), batch_points=100, flush_interval=3600)
    for step in range(100):
        run.log({"loss": 1.0}, step)
    deadline = time.monotonic() + 30
    while client.run(run.id).point_count < 100:
        assert time.monotonic() < deadline, "a full batch was not sent"
        time.sleep(0.05)
    run.finish()


def test_nan_and_infinities_round_trip_as_floats(project: str) -> None:
    run = lmvp.init_run(f"{project}/m")
    run.log({"loss": float("nan"), "grad": float("inf")}, step=0)
    run.log({"loss": 1.5, "grad": float("-inf")}, step=1)
    run.finish()
    series = lmvp.get_metrics(run)
    assert math.isnan(series["loss"].values[0]) and series["loss"].values[1] == 1.5
    assert series["grad"].values == [math.inf, -math.inf]
    info = lmvp.default_client().run(run.id)
    assert {k.key: k.last_value for k in info.keys}["grad"] == -math.inf


def test_a_run_used_as_a_context_manager_fails_when_the_block_raises(project: str) -> None:
    with lmvp.init_run(f"{project}/m") as run:
        run.log({"loss": 1.0})
    assert lmvp.default_client().run(run.id).status == "finished"

    with pytest.raises(RuntimeError), lmvp.init_run(f"{project}/m") as failing:
        failing.log({"loss": 2.0})
        raise RuntimeError("diverged")
    info = lmvp.default_client().run(failing.id)
    assert info.status == "failed" and info.point_count == 1


def test_log_refuses_what_cannot_be_stored_at_once(project: str) -> None:
    run = lmvp.init_run(f"{project}/m")
    with pytest.raises(TypeError, match="not a number"):
        run.log({"loss": "low"})
    with pytest.raises(ValueError, match="metric names"):
        run.log({"": 1.0})
    with pytest.raises(ValueError, match="step"):
        run.log({"loss": 1.0}, step=-1)
    run.finish()
    with pytest.raises(lmvp.LMVPError, match="finished"):
        run.log({"loss": 1.0})
    with pytest.raises(lmvp.LMVPError, match="init_run"):
        lmvp.log_metrics({"loss": 1.0})


def test_log_takes_numpy_numbers_for_steps_and_values(project: str) -> None:
    import numpy as np

    run = lmvp.init_run(f"{project}/m")
    run.log({"loss": np.float32(0.5), "tokens": np.int64(1024), "flag": True}, step=np.int64(7))
    run.log({"loss": np.float64(0.25)})
    run.finish()
    series = lmvp.get_metrics(run)
    assert series["loss"].steps == [7, 8] and series["loss"].values == [0.5, 0.25]
    assert series["tokens"].values == [1024.0] and series["flag"].values == [1.0]


def test_starting_a_run_finishes_the_current_one(project: str) -> None:
    first = lmvp.init_run(f"{project}/m")
    first.log({"loss": 1.0})
    second = lmvp.init_run(f"{project}/m")
    assert first.finished and lmvp.current_run() is second
    assert lmvp.default_client().run(first.id).status == "finished"
    second.finish()


def test_client_log_metrics_is_idempotent(project: str) -> None:
    client = lmvp.default_client()
    info = client.create_run(f"{project}/m", name="by-hand", params={"seed": 1})
    points = [lmvp.MetricPoint("loss", step, 1.0 / (step + 1), 1.7e9 + step) for step in range(120)]
    assert client.log_metrics(info.id, points) == 120
    assert client.log_metrics(info.id, points) == 0
    assert client.log_metrics(info.id, [lmvp.MetricPoint("loss", 500, math.nan)]) == 1
    series = client.metrics(info.id, keys=["loss"])["loss"]
    assert series.steps == [*range(120), 500] and series.wall_times[0] == 1.7e9
    assert client.finish_run(info.id, "failed").status == "failed"


# --- the server going away ----------------------------------------------------------------------


def test_points_logged_while_the_server_is_down_are_sent_when_it_returns(
    make_server: Callable[[str], ServerProcess],
) -> None:
    server = make_server("sqlite")
    server.start()
    try:
        admin = Api(server.url).login("admin", ADMIN_PASSWORD)
        with lmvp.Client(server.url, admin.token, retries=2) as client:
            client.create_project("outage")
            run = lmvp.Run(client, client.create_run("outage/m"), flush_interval=0.05)
            run.log({"loss": 0.0}, step=0)
            run.flush(timeout=30)
            server.stop()
            for step in range(1, 2001):
                run.log({"loss": float(step)}, step)  # never blocks, never raises
            with pytest.raises(TimeoutError):
                run.flush(timeout=1.0)
            server.start()
            info = run.finish(timeout=120)
            assert info.point_count == 2001
            assert client.metrics(run.id)["loss"].steps == list(range(2001))
    finally:
        server.stop()


# --- at exit ------------------------------------------------------------------------------------

_SCRIPT = """
import sys
import lmvp

run = lmvp.init_run(sys.argv[1], name=sys.argv[2])
for step in range(20_000):
    lmvp.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
print(run.id, flush=True)
if sys.argv[2] == "crash":
    raise RuntimeError("the training script died")
"""


@pytest.mark.parametrize(
    ("name", "status", "returncode"), [("ok", "finished", 0), ("crash", "failed", 1)]
)
def test_an_unfinished_run_is_flushed_and_closed_at_interpreter_exit(
    project: str, env: dict[str, str], tmp_path: Path, name: str, status: str, returncode: int
) -> None:
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(_SCRIPT))
    result = subprocess.run(
        [sys.executable, str(script), f"{project}/m", name],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == returncode, result.stderr
    run_id = int(result.stdout.split()[0])
    info = lmvp.default_client().run(run_id)
    assert (info.status, info.point_count) == (status, 20_000)


# --- versions -----------------------------------------------------------------------------------


def test_update_ties_the_version_to_the_current_run_and_its_step(
    project: str, tmp_path: Path
) -> None:
    weights = tmp_path / "model.bin"
    weights.write_bytes(os.urandom(1000))
    run = lmvp.init_run(f"{project}/resnet")
    for step in range(0, 501, 50):
        run.log({"loss": 10.0 - step / 100, "acc": step / 1000}, step=step)

    version = lmvp.update(f"{project}/resnet", weights, message="step 500")
    assert (version.run, version.step) == (run.id, 500)
    assert version.metrics == {"loss": 5.0, "acc": 0.5}

    own = lmvp.update(f"{project}/resnet", weights, metrics={"bleu": 30.1})
    assert own.run == run.id and own.metrics == {"bleu": 30.1}

    other = lmvp.update(f"{project}/other", weights)
    assert (other.run, other.step, other.metrics) == (None, None, {})
    run.finish()

    assert lmvp.get_metrics(f"{project}/resnet:1")["loss"].steps == list(range(0, 501, 50))
    info = lmvp.default_client().run(run.id)
    assert [(v.number, v.step) for v in info.versions] == [(1, 500), (2, 500)]
    with pytest.raises(lmvp.NotFound, match="not taken during a run"):
        lmvp.get_metrics(f"{project}/other:1")


# --- the command line ---------------------------------------------------------------------------


def _lmvp(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LMVP), *args],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("LMVP_")},
            **env,
            "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_runs_and_metrics_commands(project: str, env: dict[str, str], tmp_path: Path) -> None:
    run = lmvp.init_run(f"{project}/m", name="cli-run")
    for step in range(3000):
        run.log({"loss": 3.0 - step / 1000, "lr": 0.1}, step=step)
    run.log({"loss": float("nan")}, step=3000)
    run.finish()
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"weights")
    lmvp.default_client().update(f"{project}/m", weights, run=run.id, step=1000)

    table = _lmvp(env, "runs", f"{project}/m")
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split()[:4] == ["ID", "NAME", "STATUS", "HOST"]
    assert row.split()[:3] == [str(run.id), "cli-run", "finished"]
    listed = json.loads(_lmvp(env, "runs", f"{project}/m", "--json").stdout)
    assert [r["id"] for r in listed] == [run.id]
    assert {k["key"]: k["last_value"] for k in listed[0]["keys"]} == {"loss": "NaN", "lr": 0.1}

    table = _lmvp(env, "metrics", str(run.id))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["KEY", "POINTS", "FIRST_STEP", "LAST_STEP", "LAST", "MIN", "MAX"]
    assert lines[1].split() == ["loss", "3001", "0", "3000", "nan", "0.001", "3"]

    data = json.loads(
        _lmvp(
            env, "metrics", f"{project}/m:1", "--keys", "loss", "--max-points", "100", "--json"
        ).stdout
    )
    assert data["run"] == run.id and list(data["series"]) == ["loss"]
    loss = data["series"]["loss"]
    assert loss["downsampled"] and len(loss["steps"]) <= 100 and loss["count"] == 3001
    assert loss["values"][-1] == "NaN"

    bad = _lmvp(env, "metrics", str(run.id), "--max-points", "2")
    assert bad.returncode == 2 and "at least 4" in bad.stderr
    missing = _lmvp(env, "metrics", "999999")
    assert missing.returncode == 1 and "not found" in missing.stderr
