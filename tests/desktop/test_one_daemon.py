"""One daemon per state directory, whichever program runs it: the real `lmvp-desktop` (offscreen,
in a process of its own) and `lmvp-daemon run` never sync the same folders at once. The second
one refuses, naming the first one's pid and what to stop; the desktop says so in a dialog (and
its log) instead of crashing, and without a display it says so and exits."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lmvp_daemon.state_dir import DAEMON, DESKTOP, lock_holder
from tests.support import Deployment

BIN = Path(sys.executable).parent


@dataclass
class Program:
    """A running program whose stderr is read as it comes."""

    proc: subprocess.Popen[str]
    lines: queue.Queue[str] = field(default_factory=queue.Queue)
    seen: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float = 60.0) -> str:
        """The first line from now on that matches `pattern`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            self.seen.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no line matching {pattern!r}; it said:\n{''.join(self.seen)}")

    def stop(self) -> int:
        """SIGTERM, as logging out of the desktop does; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@dataclass
class Home:
    """One user's environment: a server login, a state dir, config dirs; no keyring."""

    root: Path
    server: Deployment
    token: str
    programs: list[Program] = field(default_factory=list)

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LMVP_", "XDG_"))}
        env.update(
            LMVP_SERVER=self.server.url,
            LMVP_TOKEN=self.token,
            LMVP_DAEMON_STATE_DIR=str(self.state_dir),
            LMVP_CONFIG_DIR=str(self.root / "config"),
            XDG_CONFIG_HOME=str(self.root / "xdg-config"),
            XDG_DATA_HOME=str(self.root / "xdg-data"),
            QT_QPA_PLATFORM="offscreen",
            PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
        )
        return env

    def start(self, program: str, *args: str) -> Program:
        proc = subprocess.Popen(
            [str(BIN / program), *args],
            env=self.env(),
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.programs.append(Program(proc))
        return self.programs[-1]

    def wait_until_held_by(self, program: Program, holder: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while lock_holder(self.state_dir) != (str(program.proc.pid), holder):
            assert program.proc.poll() is None, f"it ended: {''.join(program.seen)}"
            assert time.monotonic() < deadline, f"{holder} never took the state dir's lock"
            time.sleep(0.05)


@pytest.fixture
def home(tmp_path: Path, sqlite_deployment: Deployment) -> Iterator[Home]:
    user = sqlite_deployment.user("one-daemon")
    assert user.token is not None
    home = Home(tmp_path, sqlite_deployment, user.token)
    try:
        yield home
    finally:
        for program in home.programs:
            program.stop()


def test_lmvp_daemon_run_refuses_while_the_desktop_app_syncs_the_same_state_dir(
    home: Home,
) -> None:
    desktop = home.start("lmvp-desktop")
    home.wait_until_held_by(desktop, DESKTOP)

    daemon = subprocess.run(
        [str(BIN / "lmvp-daemon"), "run"],
        env=home.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert daemon.returncode == 1, daemon.stderr
    assert f"the LMVP desktop app (pid {desktop.proc.pid}) is already syncing" in daemon.stderr
    assert "quit it first" in daemon.stderr
    assert "Traceback" not in daemon.stderr
    # The desktop's daemon goes on, and quits cleanly.
    assert lock_holder(home.state_dir) == (str(desktop.proc.pid), DESKTOP)
    assert desktop.stop() == 0, "".join(desktop.seen)


def test_the_desktop_app_tells_the_person_that_lmvp_daemon_run_syncs_the_same_state_dir(
    home: Home,
) -> None:
    daemon = home.start("lmvp-daemon", "run")
    home.wait_until_held_by(daemon, DAEMON)

    desktop = home.start("lmvp-desktop")
    said = desktop.wait_for(r"already syncing")

    assert f"another lmvp-daemon (pid {daemon.proc.pid}) is already syncing" in said
    assert f"kill {daemon.proc.pid}" in said
    # It shows that sentence in a dialog and waits for the person to read it: not a crash.
    time.sleep(1.0)
    assert desktop.proc.poll() is None, "".join(desktop.seen)
    assert not any("Traceback" in line for line in desktop.seen)
    assert lock_holder(home.state_dir) == (str(daemon.proc.pid), DAEMON)

    # Without a display, the same sentence on stderr, and exit code 1.
    headless = subprocess.run(
        [str(BIN / "lmvp-desktop"), "--headless"],
        env=home.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert headless.returncode == 1, headless.stderr
    assert f"lmvp-desktop: another lmvp-daemon (pid {daemon.proc.pid})" in headless.stderr
    assert "Traceback" not in headless.stderr
    assert daemon.stop() == 0, "".join(daemon.seen)
