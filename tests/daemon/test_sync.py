"""From a watched folder to versions on a real server: settled checkpoints become exactly one
version each, in order, with their step; unfinished ones wait; a dead server means retry."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import lmvp
from lmvp_daemon.outbox import Outbox
from lmvp_daemon.outbox_db import CheckpointState
from lmvp_daemon.sync import Syncer, SyncEvent
from tests.support import Deployment


def one_pass(syncer: Syncer) -> int:
    """What the daemon's loop does in one turn: record what changed, send what is ready."""
    syncer.scan_watches()
    return syncer.sync_ready()


@pytest.fixture
def setup(
    server: Deployment, tmp_path: Path
) -> Iterator[tuple[Syncer, Outbox, Path, str, list[SyncEvent]]]:
    user = server.user("daemon")
    project = server.project(user)
    folder = tmp_path / "run"
    folder.mkdir()
    outbox = Outbox(tmp_path / "state")
    outbox.add_watch(folder, project, "net")
    events: list[SyncEvent] = []
    client = lmvp.Client(server.url, user.token, retries=2)
    # A settle window of zero: these tests decide when files are finished by scanning twice.
    syncer = Syncer(outbox, client, settle_seconds=0.0, listener=events.append)
    yield syncer, outbox, folder, project, events
    client.close()
    outbox.close()


def test_a_settled_checkpoint_becomes_exactly_one_version_with_its_step(setup) -> None:  # type: ignore[no-untyped-def]
    syncer, outbox, folder, project, events = setup
    data = os.urandom(300_000)
    (folder / "model_step_500.pt").write_bytes(data)

    one_pass(syncer)
    one_pass(syncer)  # nothing new: no second version
    versions = syncer.client.versions(f"{project}/net")
    assert [v.number for v in versions] == [1]
    v = versions[0]
    assert v.files[0].sha256 == hashlib.sha256(data).hexdigest()
    assert v.metadata["step"] == 500
    assert v.source_path.endswith("model_step_500.pt")
    assert [e.kind for e in events if e.kind == "committed"] == ["committed"]
    assert outbox.counts()[CheckpointState.done] == 1


def test_a_checkpoint_still_being_written_waits_until_it_settles(setup) -> None:  # type: ignore[no-untyped-def]
    syncer, _outbox, folder, project, _ = setup
    syncer.settle = timedelta(seconds=30)
    path = folder / "checkpoint-100" / "pytorch_model.bin"
    path.parent.mkdir()
    with path.open("wb") as f:
        f.write(os.urandom(100_000))
        f.flush()
        one_pass(syncer)
        f.write(os.urandom(100_000))
    (folder / "checkpoint-100" / "config.json").write_text("{}")
    one_pass(syncer)
    with pytest.raises(lmvp.NotFound):  # not settled: nothing sent, not even the model made
        syncer.client.versions(f"{project}/net")

    later = datetime.now(UTC) + timedelta(seconds=31)
    syncer.scan_watches(later)
    syncer.sync_ready()
    (v,) = syncer.client.versions(f"{project}/net")
    assert sorted(f.path for f in v.files) == ["config.json", "pytorch_model.bin"]
    assert v.metadata["step"] == 100
    by_path = {f.path: f for f in v.files}
    assert by_path["pytorch_model.bin"].sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_checkpoints_land_in_the_order_they_appeared(setup) -> None:  # type: ignore[no-untyped-def]
    syncer, _, folder, project, _ = setup
    for step in (10, 20, 30):
        (folder / f"epoch=0-step={step}.ckpt").write_bytes(os.urandom(1000))
        syncer.scan_watches()
        time.sleep(0.01)
    syncer.sync_ready()
    versions = syncer.client.versions(f"{project}/net")
    assert [(v.number, v.metadata["step"]) for v in versions] == [(3, 30), (2, 20), (1, 10)]


def test_an_unreachable_server_means_retry_later_not_loss(
    server: Deployment, tmp_path: Path
) -> None:
    user = server.user("offline")
    project = server.project(user)
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "w.safetensors").write_bytes(b"weights")
    outbox = Outbox(tmp_path / "state")
    outbox.add_watch(folder, project, "net")
    dead = lmvp.Client("http://127.0.0.1:9", user.token, retries=1)
    one_pass(Syncer(outbox, dead, settle_seconds=0))
    assert outbox.counts()[CheckpointState.waiting_retry] == 1
    dead.close()

    alive = lmvp.Client(server.url, user.token)
    syncer = Syncer(outbox, alive, settle_seconds=0)
    deadline = time.monotonic() + 10
    while outbox.counts()[CheckpointState.done] == 0 and time.monotonic() < deadline:
        one_pass(syncer)
        time.sleep(0.2)
    assert [v.number for v in alive.versions(f"{project}/net")] == [1]
    alive.close()
    outbox.close()


def test_a_missing_watched_folder_is_an_error_not_deletions(setup) -> None:  # type: ignore[no-untyped-def]
    syncer, outbox, folder, project, events = setup
    (folder / "a.pt").write_bytes(b"a")
    one_pass(syncer)
    folder.rename(folder.with_name("moved"))
    one_pass(syncer)
    errors = [e.message for e in events if e.kind == "watch_error"]
    assert errors and str(folder) in errors[0] and "nothing was deleted" in errors[0]
    assert [v.number for v in syncer.client.versions(f"{project}/net")] == [1]
    assert outbox.counts()[CheckpointState.done] == 1
