"""A run followed by the daemon, end to end: a simulated training job in a separate process
writes metrics (LMVP's metrics.jsonl, the Hugging Face Trainer's trainer_state.json, Lightning's
metrics.csv) and checkpoints while the real daemon (real watchdog) watches; afterwards the
watch's run on the real server holds exactly the points written, and each checkpoint's version
carries its step, its run and the run's values at that step."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import lmvp
from lmvp_daemon.outbox import Outbox
from lmvp_daemon.service import SyncDaemon
from tests.support import Deployment


def same(a: Any, b: Any) -> bool:
    """Equal floats, NaN equal to NaN (JSON may carry it as the string "NaN")."""
    a, b = float(a), float(b)
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.parametrize("fmt", ["jsonl", "hf", "lightning"])
def test_a_run_followed_from_its_metric_files_ends_with_exactly_the_points_written(
    server: Deployment, tmp_path: Path, fmt: str
) -> None:
    user = server.user(f"metrics-{fmt}")
    project = server.project(user)
    folder = tmp_path / "out"
    folder.mkdir()
    outbox = Outbox(tmp_path / "state")
    watch = outbox.add_watch(folder, project, "net")
    client = lmvp.Client(server.url, user.token)
    daemon = SyncDaemon(outbox, client, settle_seconds=0.5, interval=0.2)
    daemon.start()
    try:
        job = subprocess.run(
            [sys.executable, "-m", "tests.daemon.trainer", fmt, str(folder)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        written = json.loads(job.stdout)
        expected = {k: {int(s): v for s, v in p.items()} for k, p in written["points"].items()}
        checkpoints: dict[str, int] = written["checkpoints"]

        deadline = time.monotonic() + 60
        while True:
            versions = _versions(client, f"{project}/net")
            run_id = outbox.watch_run(watch.id).run_id
            got = _points(client, run_id) if run_id else {}
            if len(versions) == len(checkpoints) and _count(got) == _count(expected):
                break
            assert time.monotonic() < deadline, (
                f"{len(versions)} of {len(checkpoints)} versions, {_count(got)} of "
                f"{_count(expected)} points"
            )
            time.sleep(0.3)
    finally:
        daemon.close()
        client.close()

    assert set(got) == set(expected)
    for key, series in expected.items():
        assert set(got[key]) == set(series), key
        assert all(same(got[key][step], value) for step, value in series.items()), key

    by_key = {Path(v.source_path).relative_to(folder).as_posix(): v for v in versions}
    assert set(by_key) == set(checkpoints)
    for name, step in checkpoints.items():
        version = by_key[name]
        assert (version.step, version.run) == (step, run_id), name
        assert version.metadata["step"] == step
        # The run's latest value of every metric at or before the checkpoint's step.
        snapshot = {
            key: series[max(s for s in series if s <= step)]
            for key, series in expected.items()
            if any(s <= step for s in series)
        }
        assert set(version.metrics) == set(snapshot), name
        assert all(same(version.metrics[k], v) for k, v in snapshot.items()), name

    if fmt == "jsonl":
        state = outbox.watch_run(watch.id).metric_state
        assert state["skipped"] == 1  # the torn line, skipped and counted
        assert math.isnan(got["loss"][30])
    outbox.close()


def test_points_written_while_the_daemon_was_off_are_sent_once_at_start(
    server: Deployment, tmp_path: Path
) -> None:
    user = server.user("metrics-restart")
    project = server.project(user)
    folder = tmp_path / "out"
    folder.mkdir()
    metrics = folder / "metrics.jsonl"
    outbox = Outbox(tmp_path / "state")
    watch = outbox.add_watch(folder, project, "net")
    client = lmvp.Client(server.url, user.token)

    def run_daemon_until(count: int) -> None:
        daemon = SyncDaemon(outbox, client, settle_seconds=0.2, interval=0.2)
        daemon.start()
        try:
            deadline = time.monotonic() + 30
            while True:
                run_id = outbox.watch_run(watch.id).run_id
                if run_id and _count(_points(client, run_id)) == count:
                    return
                assert time.monotonic() < deadline
                time.sleep(0.2)
        finally:
            daemon.close()

    metrics.write_text("".join(json.dumps({"step": s, "loss": 1 / s}) + "\n" for s in (1, 2, 3)))
    run_daemon_until(3)
    sent_before = outbox.watch_run(watch.id).points_sent
    with metrics.open("a") as f:  # while the daemon is off
        f.write("".join(json.dumps({"step": s, "loss": 1 / s}) + "\n" for s in (4, 5)))
    run_daemon_until(5)
    assert outbox.watch_run(watch.id).points_sent == sent_before + 2  # only the new lines
    client.close()
    outbox.close()


def _versions(client: lmvp.Client, ref: str) -> list[lmvp.Version]:
    try:
        return client.versions(ref, limit=1000)
    except lmvp.NotFound:
        return []


def _points(client: lmvp.Client, run_id: int) -> dict[str, dict[int, float]]:
    series = client.metrics(run_id)
    return {k: dict(zip(s.steps, s.values, strict=True)) for k, s in series.items()}


def _count(points: dict[str, dict[int, Any]]) -> int:
    return sum(len(p) for p in points.values())
