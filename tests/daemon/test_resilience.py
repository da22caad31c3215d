"""The daemon's data-safety promises, against the real server, real files and a real
`lmvp-daemon run` process: a `kill -9` mid-upload resumes at the server's offset, an offline
server loses nothing, checkpoints written while the daemon was off are picked up, a file
changed during its upload is never committed half-written, and a vanished watched folder is an
error, never "everything was deleted".

Bytes are counted at the wire by a TCP relay in front of the server (tests/client/relay.py),
so "resumed, not resent" is proved by what crossed the network, not by timing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import lmvp
from lmvp.types import Version
from tests.client.relay import CountingRelay
from tests.support import (
    ADMIN_PASSWORD,
    Api,
    Deployment,
    ServerProcess,
    sha256_file,
    write_random_file,
)

DAEMON = str(Path(sys.executable).parent / "lmvp-daemon")
MiB = 1024 * 1024
BIG = 200 * MiB


@dataclass
class Daemon:
    """`lmvp-daemon` for one user, state dir and watched folder, run as a real process."""

    server_url: str
    token: str
    project: str
    folder: Path
    state_dir: Path
    config_dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def ref(self) -> str:
        return f"{self.project}/net"

    @property
    def log(self) -> str:
        path = self.state_dir / "daemon.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def env(self) -> dict[str, str]:
        return dict(
            os.environ,
            LMVP_DAEMON_STATE_DIR=str(self.state_dir),
            LMVP_SERVER=self.server_url,
            LMVP_TOKEN=self.token,
            LMVP_CONFIG_DIR=str(self.config_dir),
        )

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [DAEMON, *args], env=self.env(), capture_output=True, text=True, timeout=120
        )

    def start(self, *, settle: float = 0.5) -> None:
        self.proc = subprocess.Popen(
            [DAEMON, "run", "--settle", str(settle), "--interval", "0.2"],
            env=self.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def versions(self, server_url: str | None = None) -> list[Version]:
        with lmvp.Client(server_url or self.server_url, self.token) as client:
            try:
                return client.versions(self.ref)
            except lmvp.NotFound:
                return []

    def wait_for_versions(
        self, count: int, timeout: float, server_url: str | None = None
    ) -> list[Version]:
        deadline = time.monotonic() + timeout
        while True:
            versions = self.versions(server_url)
            if len(versions) >= count:
                return sorted(versions, key=lambda v: v.number)
            assert self.proc is None or self.alive(), f"the daemon died:\n{self.log[-3000:]}"
            assert time.monotonic() < deadline, (
                f"{len(versions)} of {count} versions after {timeout} s:\n{self.log[-3000:]}"
            )
            time.sleep(0.25)


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[[Deployment, str], Daemon]]:
    """A daemon for a new user and project, watching tmp_path/run, talking to `url`."""
    started: list[Daemon] = []

    def make(deployment: Deployment, url: str) -> Daemon:
        user = deployment.user("resil")
        daemon = Daemon(
            server_url=url,
            token=user.token or "",
            project=deployment.project(user),
            folder=tmp_path / "run",
            state_dir=tmp_path / "state",
            config_dir=tmp_path / "config",
        )
        daemon.folder.mkdir()
        added = daemon.cli("watch", "add", str(daemon.folder), daemon.ref)
        assert added.returncode == 0, added.stderr
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        daemon.stop()


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


def test_resumes_upload_from_server_offset_after_daemon_is_killed(
    server: Deployment, make_daemon: Callable[[Deployment, str], Daemon]
) -> None:
    with CountingRelay(server.server.port) as relay:
        daemon = make_daemon(server, relay.url)
        sha = write_random_file(daemon.folder / "model.safetensors", BIG)
        daemon.start(settle=0.2)
        wait_until(lambda: relay.sent >= 0.45 * BIG, 60, "the upload to pass 45%")
        daemon.kill9()
        relay.wait_idle()  # what the relay still holds reaches the server, which answers it
        first_run = relay.sent
        assert 0.3 * BIG < first_run < 0.8 * BIG, f"killed at {first_run / BIG:.0%}"

        relay.reset_counts()
        daemon.start(settle=0.2)
        (version,) = daemon.wait_for_versions(1, timeout=60)
        second_run = relay.sent
        time.sleep(1.5)  # a few more polls: still exactly one version
        assert len(daemon.versions()) == 1

    assert [(f.path, f.size, f.sha256) for f in version.files] == [("model.safetensors", BIG, sha)]
    remaining = BIG - first_run
    # The second run sent the remainder (plus HTTP chatter), not the whole file again.
    assert second_run <= remaining + 4 * MiB, (
        f"first run {first_run / MiB:.1f} MiB, second {second_run / MiB:.1f} MiB"
    )
    print(
        f"\nkill -9 at {first_run / MiB:.1f} MiB of {BIG / MiB:.0f} MiB; "
        f"after restart sent {second_run / MiB:.1f} MiB (remaining {remaining / MiB:.1f} MiB)"
    )


def test_checkpoints_written_while_the_server_is_down_all_become_versions_in_order(
    make_server: Callable[[str], ServerProcess],
    make_daemon: Callable[[Deployment, str], Daemon],
) -> None:
    s = make_server("sqlite")
    s.start()
    try:
        deployment = Deployment(server=s, admin=Api(s.url).login("admin", ADMIN_PASSWORD))
        daemon = make_daemon(deployment, s.url)
        daemon.start(settle=0.3)
        write_random_file(daemon.folder / "step=0.ckpt", 100_000, seed=0)
        daemon.wait_for_versions(1, timeout=20)

        s.stop()
        down_at = time.monotonic()
        hashes = []
        # Down for 30 s, with a checkpoint arriving every 10 s.
        for step in (100, 200, 300):
            hashes.append(write_random_file(daemon.folder / f"step={step}.ckpt", 100_000, step))
            time.sleep(10)
        assert daemon.alive()
        s.start()  # same data dir and database
        back_at = time.monotonic()
        versions = daemon.wait_for_versions(4, timeout=30)
        caught_up = time.monotonic() - back_at
    finally:
        s.stop()

    assert [v.metadata["step"] for v in versions] == [0, 100, 200, 300]
    assert [v.files[0].sha256 for v in versions[1:]] == hashes
    print(
        f"\nserver down {back_at - down_at:.0f} s; all versions {caught_up:.1f} s after it was back"
    )
    # Backoff is capped low enough that the daemon notices the server's return promptly.
    assert back_at - down_at >= 30
    assert caught_up < 20


def test_checkpoints_written_while_the_daemon_was_off_are_picked_up_at_start(
    server: Deployment, make_daemon: Callable[[Deployment, str], Daemon]
) -> None:
    daemon = make_daemon(server, server.url)
    hashes = []
    for step in (10, 20):
        (daemon.folder / f"checkpoint-{step}").mkdir()
        path = daemon.folder / f"checkpoint-{step}" / "model.safetensors"
        hashes.append(write_random_file(path, 50_000, step))
    daemon.start(settle=0.3)
    versions = daemon.wait_for_versions(2, timeout=20)
    assert [v.metadata["step"] for v in versions] == [10, 20]
    assert [v.files[0].sha256 for v in versions] == hashes


def test_a_file_modified_during_its_upload_is_committed_only_once_stable_again(
    server: Deployment, make_daemon: Callable[[Deployment, str], Daemon]
) -> None:
    with CountingRelay(server.server.port) as relay:
        daemon = make_daemon(server, relay.url)
        path = daemon.folder / "model.safetensors"
        first_sha = write_random_file(path, BIG // 2, seed=1)
        daemon.start(settle=0.5)
        wait_until(lambda: relay.sent >= 10 * MiB, 60, "the upload to start")
        with path.open("ab") as f:  # the training job writes more while the daemon sends
            f.write(os.urandom(MiB))
        final = sha256_file(path)
        (version,) = daemon.wait_for_versions(1, timeout=60)
        time.sleep(1.5)
        assert len(daemon.versions()) == 1

    assert version.files[0].sha256 == final != first_sha
    assert version.files[0].size == BIG // 2 + MiB


def test_a_removed_or_renamed_watched_folder_is_an_error_not_deletions(
    server: Deployment, make_daemon: Callable[[Deployment, str], Daemon], tmp_path: Path
) -> None:
    daemon = make_daemon(server, server.url)
    write_random_file(daemon.folder / "step=1.ckpt", 10_000, seed=1)
    daemon.start(settle=0.2)
    daemon.wait_for_versions(1, timeout=20)

    moved = tmp_path / "moved-away"
    daemon.folder.rename(moved)
    wait_until(lambda: "watch_error" in daemon.log, 10, "the daemon to log the missing folder")
    time.sleep(1)
    assert daemon.alive()
    status = daemon.cli("status")
    assert status.returncode == 0 and "done: 1" in status.stdout, status.stdout
    assert len(daemon.versions()) == 1  # nothing deleted on the server

    moved.rename(daemon.folder)
    write_random_file(daemon.folder / "step=2.ckpt", 10_000, seed=2)
    versions = daemon.wait_for_versions(2, timeout=20)
    assert [v.metadata["step"] for v in versions] == [1, 2]
    assert daemon.alive()
