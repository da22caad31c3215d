"""A run that stopped producing is finished, and training alerts, with the real daemon (real
watchdog) watching a folder that a simulated job in a separate process (tests/daemon/alert_job.py)
writes, against the real server:

- the watch's run is marked finished on the server once the folder produced nothing for the
  run-idle time; a checkpoint and points written after that are not lost: they reach the same
  run, which runs again, and is finished again once the folder is idle again;
- a job seen holding the folder's files open (a /proc scan), or said by a front end to have
  exited, has its run finished seconds after it exits, without waiting for the idle time;
- a loss that jumps far over its recent average is said once (one `loss_diverged` event for
  that key; a stable loss and a jumping non-loss metric say nothing), and the status file
  that `lmvp-daemon status` reads holds it;
- a NaN loss and a job that falls silent are said once each, within a few seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import lmvp
from lmvp_daemon.outbox import Outbox
from lmvp_daemon.service import SyncDaemon, read_status
from lmvp_daemon.sync import EventKind, SyncEvent
from tests.support import Deployment

ROOT = Path(__file__).resolve().parents[2]


def run_job(*args: str) -> list[dict[str, Any]]:
    """Run tests/daemon/alert_job.py to its end; the moments it printed."""
    job = subprocess.run(
        [sys.executable, "-m", "tests.daemon.alert_job", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=ROOT,
    )
    return [json.loads(line) for line in job.stdout.splitlines()]


def start_job(*args: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Start tests/daemon/alert_job.py; returns it, and its first moment once it printed it."""
    job = subprocess.Popen(
        [sys.executable, "-m", "tests.daemon.alert_job", *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert job.stdout is not None
    return job, json.loads(job.stdout.readline())


def wait_for(what: str, check: Callable[[], bool], timeout: float = 20.0) -> float:
    """Poll until `check()`; returns when (time.time()) it first held."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return time.time()


class Setup:
    def __init__(self, server: Deployment, tmp_path: Path, name: str, **daemon: Any) -> None:
        user = server.user(name)
        self.project = server.project(user)
        self.folder = tmp_path / "out"
        self.folder.mkdir()
        self.outbox = Outbox(tmp_path / "state")
        self.watch = self.outbox.add_watch(self.folder, self.project, "net")
        self.client = lmvp.Client(server.url, user.token)
        self.daemon = SyncDaemon(
            self.outbox, self.client, settle_seconds=0.2, interval=0.2, **daemon
        )
        self.events: list[tuple[float, SyncEvent]] = []
        self.jobs: list[subprocess.Popen[str]] = []
        self.daemon.subscribe(lambda e: self.events.append((time.time(), e)))

    def of(self, kind: EventKind) -> list[tuple[float, SyncEvent]]:
        return [(t, e) for t, e in self.events if e.kind is kind]

    def run_id(self) -> int | None:
        return self.outbox.watch_run(self.watch.id).run_id

    def status(self) -> str:
        run_id = self.run_id()
        return self.client.run(run_id).status if run_id else ""

    def close(self) -> None:
        for job in self.jobs:
            job.kill()
            job.wait()
        self.daemon.close()
        self.client.close()
        self.outbox.close()


@pytest.fixture
def setup_factory(server: Deployment, tmp_path: Path) -> Iterator[Callable[..., Setup]]:
    made: list[Setup] = []

    def make(name: str, **daemon: Any) -> Setup:
        made.append(Setup(server, tmp_path, name, **daemon))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_a_run_is_finished_after_the_idle_time_and_runs_again_when_its_folder_goes_on(
    setup_factory: Callable[..., Setup],
) -> None:
    s = setup_factory("run-idle", run_idle_seconds=1.5)
    s.daemon.start()
    # A job that stays alive but writes nothing more (hung, or busy without logging).
    first, _ = start_job("steady", str(s.folder), "--linger", "30")
    s.jobs.append(first)
    wait_for("the run", lambda: s.run_id() is not None)
    run_id = s.run_id()
    assert s.status() == "running"
    finished_at = wait_for("the run finished", lambda: s.status() == "finished")
    wait_for("the event", lambda: bool(s.of(EventKind.run_finished)))
    [(said_at, said)] = s.of(EventKind.run_finished)
    assert said.version == run_id and said.project == s.project
    last_write = max(p.stat().st_mtime for p in s.folder.iterdir())
    assert finished_at - last_write >= 1.5  # not before the idle time
    assert said_at - last_write < 1.5 + 3.0  # nor long after it

    # The job goes on in the same folder: nothing is lost, the same run runs again.
    second, _ = start_job("steady", str(s.folder), "--start", "11", "--linger", "30")
    s.jobs.append(second)
    wait_for("running again", lambda: bool(s.of(EventKind.run_reopened)))
    points = wait_for_points(s, "loss", 20)
    assert sorted(points) == list(range(1, 21))
    versions = wait_for_versions(s, 4)
    assert {v.run for v in versions} == {run_id}
    assert s.run_id() == run_id
    wait_for("finished again", lambda: len(s.of(EventKind.run_finished)) == 2)
    assert s.status() == "finished"


def test_a_job_seen_writing_the_folder_has_its_run_finished_soon_after_it_exits(
    setup_factory: Callable[..., Setup],
) -> None:
    s = setup_factory("run-writer", run_idle_seconds=600)
    s.daemon.start()
    job = subprocess.Popen(
        [sys.executable, "-m", "tests.daemon.alert_job", "hold", str(s.folder), "--hold", "3"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    out, _ = job.communicate(timeout=30)
    exited = time.time()
    assert job.returncode == 0 and "exit" in out
    wait_for_points(s, "loss", 10)
    finished_at = wait_for("the run finished", lambda: s.status() == "finished", timeout=10)
    assert finished_at - exited < 5.0  # the idle time is 600 s
    wait_for("the event", lambda: bool(s.of(EventKind.run_finished)))
    [(_, said)] = s.of(EventKind.run_finished)
    assert "its job exited" in said.message


def test_a_job_that_exited_has_its_run_finished_without_waiting_for_the_idle_time(
    setup_factory: Callable[..., Setup],
) -> None:
    s = setup_factory("run-exit", run_idle_seconds=600)
    s.daemon.start()
    run_job("steady", str(s.folder))  # no process is seen holding its files
    wait_for_points(s, "loss", 10)
    wait_for_versions(s, 2)
    ended = time.time()
    s.daemon.job_ended(s.folder)
    finished_at = wait_for("the run finished", lambda: s.status() == "finished")
    assert finished_at - ended < 3.0


def test_a_diverging_loss_is_said_once_and_kept_in_the_status(
    setup_factory: Callable[..., Setup],
) -> None:
    s = setup_factory("diverge", run_idle_seconds=600)
    s.daemon.start()
    moments = run_job("diverge", str(s.folder))
    wait_for_points(s, "loss", 40)
    time.sleep(0.5)  # anything more would have come by now
    diverged = s.of(EventKind.loss_diverged)
    assert [e.key for _, e in diverged] == ["loss"]  # not val_loss, not accuracy; once
    _, event = diverged[0]
    assert event.step == 31 and "loss diverged at step 31" in event.message
    assert not s.of(EventKind.loss_nan)
    jump = next(m["at"] for m in moments if m["event"] == "jump")
    assert diverged[0][0] - jump < 5.0
    alerts = read_status(s.outbox.state_dir)["alerts"]
    assert [(a["kind"], a["key"]) for a in alerts] == [("loss_diverged", "loss")]
    # `lmvp-daemon status` in another shell says it too, with the folder.
    cli = str(Path(sys.executable).parent / "lmvp-daemon")
    status = subprocess.run(
        [cli, "--state-dir", str(s.outbox.state_dir), "status"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert f"alert: {s.folder}: loss diverged at step 31" in status.stdout, status.stdout


def test_a_nan_loss_and_a_silent_job_are_said_once_each(
    setup_factory: Callable[..., Setup],
) -> None:
    s = setup_factory("nan-silent", run_idle_seconds=600)
    s.daemon.start()
    moments = run_job("nan", str(s.folder), "--every", "1.0")
    nan_at = next(m["at"] for m in moments if m["event"] == "nan")
    last_checkpoint = max(m["mtime"] for m in moments if m["event"] == "checkpoint")
    silent_from = last_checkpoint + 2 * 1.0
    wait_for("the silence", lambda: bool(s.of(EventKind.checkpoints_silent)), timeout=15)
    time.sleep(1.0)
    [(said_nan, nan)] = s.of(EventKind.loss_nan)
    [(said_silent, silent)] = s.of(EventKind.checkpoints_silent)
    assert nan.key == "loss" and nan.step == 21 and "NaN" in nan.message
    assert silent.key == "model_step_20.safetensors"
    assert said_nan - nan_at < 5.0
    assert 0 <= said_silent - silent_from < 5.0


def wait_for_points(s: Setup, key: str, count: int) -> dict[int, float]:
    got: dict[int, float] = {}

    def enough() -> bool:
        nonlocal got
        run_id = s.run_id()
        if run_id is None:
            return False
        series = s.client.metrics(run_id).get(key)
        got = dict(zip(series.steps, series.values, strict=True)) if series else {}
        return len(got) >= count

    wait_for(f"{count} points of {key}", enough)
    return got


def wait_for_versions(s: Setup, count: int) -> list[lmvp.Version]:
    versions: list[lmvp.Version] = []

    def enough() -> bool:
        nonlocal versions
        try:
            versions = s.client.versions(f"{s.project}/net")
        except lmvp.NotFound:
            versions = []
        return len(versions) >= count

    wait_for(f"{count} versions", enough)
    return versions


def test_a_job_that_ended_while_the_daemon_was_off_is_finished_at_start_without_old_alerts(
    setup_factory: Callable[..., Setup],
) -> None:
    s = setup_factory("run-restart", run_idle_seconds=600)
    s.daemon.start()
    run_job("nan", str(s.folder), "--every", "0.5")
    wait_for_points(s, "loss", 22)
    s.daemon.close()  # stopped before the silence became detectable: nothing said of it
    assert not s.of(EventKind.checkpoints_silent)
    run_id = s.run_id()
    assert run_id is not None
    # As if the job had ended only after the daemon stopped (it may have seen it exit).
    s.client.finish_run(run_id, "running")
    time.sleep(2.0)  # the daemon is off, the job long gone

    later = SyncDaemon(s.outbox, s.client, settle_seconds=0.2, interval=0.2, run_idle_seconds=1.5)
    events: list[SyncEvent] = []
    later.subscribe(events.append)
    later.start()
    try:
        wait_for("the run finished", lambda: s.status() == "finished", timeout=10)
        time.sleep(0.5)
    finally:
        later.close()
    kinds = [e.kind for e in events]
    assert EventKind.run_finished in kinds
    # The silence began while the daemon was off, and the NaN was said before: old news.
    assert EventKind.checkpoints_silent not in kinds and EventKind.loss_nan not in kinds
