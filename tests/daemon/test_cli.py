"""`lmvp-daemon` as a user runs it: add a watch, run, see the version, check status, and a
second daemon on the same state refused."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import lmvp
from lmvp_daemon.state_dir import LOCK_NAME
from tests.support import Deployment

DAEMON = str(Path(sys.executable).parent / "lmvp-daemon")


def test_watch_run_status_and_a_single_daemon(server: Deployment, tmp_path: Path) -> None:
    user = server.user("cli")
    project = server.project(user)
    folder = tmp_path / "exp1"
    folder.mkdir()
    env = dict(
        os.environ,
        LMVP_DAEMON_STATE_DIR=str(tmp_path / "state"),
        LMVP_SERVER=server.url,
        LMVP_TOKEN=user.token or "",
        LMVP_CONFIG_DIR=str(tmp_path / "config"),
    )

    def daemon(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([DAEMON, *args], env=env, capture_output=True, text=True, timeout=60)

    added = daemon("watch", "add", str(folder), f"{project}/net")
    assert added.returncode == 0, added.stderr
    assert str(folder) in daemon("watch", "list").stdout
    assert daemon("watch", "add", str(folder / "sub"), f"{project}/x").returncode == 1  # nested

    (folder / "checkpoint-700").mkdir()
    (folder / "checkpoint-700" / "model.safetensors").write_bytes(os.urandom(10_000))
    (folder / "checkpoint-700" / "config.json").write_text("{}")
    ran = daemon("run", "--once", "--settle", "0")
    assert ran.returncode == 0, ran.stderr
    with lmvp.Client(server.url, user.token) as client:
        (v,) = client.versions(f"{project}/net")
    assert v.metadata["step"] == 700 and len(v.files) == 2
    status = daemon("status")
    assert "not running" in status.stdout and "done: 1" in status.stdout

    background = subprocess.Popen(
        [DAEMON, "run", "--settle", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # A daemon writes its pid into the lock file once it holds the lock; waiting reads that
        # file here instead of starting an `lmvp-daemon status` process every 0.2 s.
        lock_file = tmp_path / "state" / LOCK_NAME
        deadline = time.monotonic() + 20
        while lock_file.read_text().split()[:1] != [str(background.pid)]:
            assert time.monotonic() < deadline, "the daemon never took its lock"
            time.sleep(0.05)
        assert f"running (pid {background.pid})" in daemon("status").stdout
        second = daemon("run", "--once")
        assert second.returncode == 1
        assert f"another lmvp-daemon (pid {background.pid})" in second.stderr
    finally:
        background.terminate()
        background.wait(20)
    assert background.returncode == 0, background.stderr.read() if background.stderr else ""

    assert daemon("watch", "disable", str(folder)).returncode == 0
    assert "(disabled)" in daemon("watch", "list").stdout
    assert daemon("watch", "enable", str(folder)).returncode == 0
    assert "(disabled)" not in daemon("watch", "list").stdout

    folder.rename(folder.with_name("elsewhere"))
    status = daemon("status")
    assert f"watched folder {folder} is missing" in status.stdout
    assert "nothing was deleted" in status.stdout
    folder.with_name("elsewhere").rename(folder)
    assert "is missing" not in daemon("status").stdout

    assert daemon("pause").returncode == 0
    assert "paused" in daemon("status").stdout
    assert daemon("resume").returncode == 0
    removed = daemon("watch", "rm", str(folder))
    assert removed.returncode == 0 and "nothing on the server" in removed.stdout
