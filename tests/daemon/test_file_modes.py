"""Who may read the daemon's outbox (audit, issue 12 finding 7): it lists the user's checkpoints
and where their uploads go on the server; it stays the user's alone in a state directory that
already exists open to others, under the common umask 022, and a warning names that directory."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmvp_daemon.outbox import Outbox


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def test_the_outbox_is_private_in_an_open_state_dir_and_a_warning_names_it(
    tmp_path: Path, umask_022: None, caplog: pytest.LogCaptureFixture
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o755)
    os.chmod(state_dir, 0o755)
    runs = tmp_path / "runs"
    runs.mkdir()

    with caplog.at_level(logging.WARNING), Outbox(state_dir) as box:
        box.add_watch(runs, "vision", "resnet")
        # SQLite made its write-ahead log and index while the outbox is open.
        assert (state_dir / "outbox.db-wal").exists() and (state_dir / "outbox.db-shm").exists()
        modes = {
            p.name: stat.S_IMODE(p.stat().st_mode)
            for p in state_dir.iterdir()
            if p.name.startswith("outbox.db")
        }

    assert modes == {"outbox.db": 0o600, "outbox.db-wal": 0o600, "outbox.db-shm": 0o600}
    assert f"the daemon's state directory {state_dir} is open to other users" in caplog.text
    assert f"run `chmod 700 {state_dir}`" in caplog.text
