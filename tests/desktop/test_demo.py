"""`make run` without a display, as a newcomer meets it: the real `lmvp-desktop --demo
--headless` process starting its own local server on a loopback port, with its data, config,
state and token file in a home of the test's own, and a PATH without the virtualenv (nobody has
activated it). No keyring here: the token goes to the 0600 file fallback."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

import lmvp
from lmvp_desktop import demo_job
from lmvp_desktop.main_window import MainWindow
from lmvp_desktop.session import DemoState, DesktopSession
from lmvp_desktop.settings import DesktopSettings
from tests.support import Api, Deployment, free_port

BIN = Path(sys.executable).parent
PATH_WITHOUT_VENV = "/usr/local/bin:/usr/bin:/bin"


@dataclass
class DemoRun:
    """One running `lmvp-desktop --demo --headless`; its stderr is read as it comes."""

    proc: subprocess.Popen[str]
    lines: queue.Queue[str] = field(default_factory=queue.Queue)
    seen: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float = 90.0) -> str:
        """The first line (from now on) that matches `pattern`."""
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
        raise AssertionError(f"no line matching {pattern!r}; the demo said:\n{''.join(self.seen)}")

    def stop(self) -> int:
        """Ctrl-C, as a user stops it; returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@dataclass
class DemoHome:
    """A user's home for the demo: XDG dirs, a free port, no keyring, no venv on PATH."""

    root: Path
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def demo_folder(self) -> Path:
        return self.root / "data" / "lmvp" / "demo-run"

    @property
    def server_data(self) -> Path:
        return self.root / "data" / "lmvp-server"

    def env(self) -> dict[str, str]:
        dropped = ("LMVP_", "XDG_", "QT_", "DISPLAY", "WAYLAND_DISPLAY")
        env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
        env.update(
            PATH=PATH_WITHOUT_VENV,
            HOME=str(self.root),
            XDG_DATA_HOME=str(self.root / "data"),
            XDG_CONFIG_HOME=str(self.root / "config"),
            XDG_STATE_HOME=str(self.root / "state"),
            XDG_CACHE_HOME=str(self.root / "cache"),
            LMVP_PORT=str(self.port),
            PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
        )
        return env

    def start(self, *args: str) -> DemoRun:
        proc = subprocess.Popen(
            [str(BIN / "lmvp-desktop"), "--demo", "--headless", *args],
            env=self.env(),
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        run = DemoRun(proc)
        self.runs.append(run)
        return run

    def admin_password(self) -> str:
        return (self.server_data / "initial-admin-password").read_text().strip()

    runs: list[DemoRun] = field(default_factory=list)


@pytest.fixture
def demo_home(tmp_path: Path) -> Iterator[DemoHome]:
    home = DemoHome(tmp_path)
    try:
        yield home
    finally:
        for run in home.runs:
            run.stop()


def test_the_headless_demo_names_the_lmvp_command_as_it_can_be_run(demo_home: DemoHome) -> None:
    assert shutil.which("lmvp", path=PATH_WITHOUT_VENV) is None  # as on a fresh machine
    run = demo_home.start()

    hint = run.wait_for("versions appear at")

    login = re.search(r"`(\S+) login (\S+)`", hint)
    assert login is not None, hint
    assert login.group(1) == str(BIN / "lmvp")
    assert login.group(2) == demo_home.url
    # Typed as printed, in the shell that ran `make run`, it runs.
    typed = subprocess.run(
        [login.group(1), "--version"], env=demo_home.env(), capture_output=True, text=True
    )
    assert typed.returncode == 0 and typed.stdout.startswith("lmvp "), typed.stderr
    assert f"`{BIN / 'lmvp'} history demo`" in hint
    assert run.stop() == 0


def test_each_start_reuses_the_stored_token_until_it_is_revoked(demo_home: DemoHome) -> None:
    first = demo_home.start()
    first.wait_for("versions appear at")
    assert first.stop() == 0
    second = demo_home.start()
    second.wait_for("versions appear at")
    admin = Api(demo_home.url).login("admin", demo_home.admin_password())

    desktop_tokens = [t for t in admin.get("/tokens").json() if t["name"] == "lmvp desktop"]

    assert len(desktop_tokens) == 1, desktop_tokens  # two starts, one login
    assert admin.delete(f"/tokens/{desktop_tokens[0]['id']}").status_code == 204
    assert second.stop() == 0
    # A revoked (or expired) token is found out at the next start, which logs in again.
    third = demo_home.start()
    third.wait_for("versions appear at")
    desktop_tokens = [t for t in admin.get("/tokens").json() if t["name"] == "lmvp desktop"]
    assert [t["revoked_at"] is not None for t in desktop_tokens] == [True, False]
    assert third.stop() == 0


def _finished_demo(folder: Path) -> None:
    """What a demo job that trained all its steps leaves behind (its last metrics line)."""
    folder.mkdir(parents=True)
    record = {"step": demo_job.STEPS, "loss": 0.05, "time": time.time()}
    (folder / "metrics.jsonl").write_text(json.dumps(record) + "\n")


def test_a_start_after_the_demo_finished_says_so_and_how_to_run_it_again(
    demo_home: DemoHome,
) -> None:
    _finished_demo(demo_home.demo_folder)
    run = demo_home.start()

    finished = run.wait_for("demo: the simulated training job has finished")

    again = re.search(r"`(\S+) --demo --demo-again`", finished)
    assert again is not None and again.group(1) == str(BIN / "lmvp-desktop"), finished
    assert run.stop() == 0
    # Run again as it says: a new folder, so a new run, and the job writes into it.
    rerun = demo_home.start("--demo-again")
    second = demo_home.demo_folder.with_name("demo-run-2")
    rerun.wait_for(f"a simulated training job writes into {re.escape(str(second))}$")
    deadline = time.monotonic() + 30
    while demo_job.last_step(second) < 10:
        assert time.monotonic() < deadline, "the job did not start training again"
        time.sleep(0.2)
    assert rerun.stop() == 0


def test_the_window_says_the_demo_finished_and_runs_it_again(
    qtbot: QtBot, sqlite_deployment: Deployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("LMVP_CONFIG_DIR", str(tmp_path / "config"))
    first = tmp_path / "data" / "lmvp" / "demo-run"
    _finished_demo(first)
    session = DesktopSession(
        lmvp.Client(sqlite_deployment.url, sqlite_deployment.admin.token),
        state_dir=tmp_path / "state",
    )
    main = MainWindow(session, DesktopSettings())
    qtbot.addWidget(main)
    try:
        assert not main.demo_status.again_action.isVisible()  # no demo yet: nothing to offer
        session.start_demo()
        session.start()
        main.start()
        main.show()
        status = main.demo_status

        qtbot.waitUntil(lambda: status.label.text().startswith("Demo finished"), timeout=5_000)
        assert status.isVisible() and status.again_button.isVisible()
        assert status.again_action.isEnabled() and status.again_action.isVisible()

        status.again_button.click()

        qtbot.waitUntil(lambda: session.demo_state() is DemoState.running, timeout=20_000)
        assert session.demo_folder == first.with_name("demo-run-2")
        qtbot.waitUntil(
            lambda: status.label.text().startswith("Demo: the simulated"), timeout=5_000
        )
        assert not status.again_action.isEnabled() and not status.again_button.isVisible()
        qtbot.waitUntil(
            lambda: demo_job.last_step(first.with_name("demo-run-2")) >= 10, timeout=30_000
        )
        watched = {Path(w.folder).name for w in session.outbox.watches()}
        assert watched == {"demo-run", "demo-run-2"}
    finally:
        main.shutdown()
        session.close()
