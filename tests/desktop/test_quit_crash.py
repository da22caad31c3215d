"""No crash at quit (issue 18: one quit in five ended with `Fatal Python error: none_dealloc`).

The cause was the Qt binding: PySide6/shiboken6 6.12.0 on Python 3.11 drops a reference to
None on every Qt call that returns nothing and to True on every signal emit, so the app's
calls wore the singletons' reference counts down until one reached zero, most often while
quitting (pyproject.toml keeps it below 6.12). The first test measures the binding itself;
the second starts the app's window and session, pauses and resumes syncing and quits with the
Quit action in four processes against a real server: 8 times in `make test`, 100 in
`make stress` (LMVP_QUIT_ROUNDS)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QLabel
from pytestqt.qtbot import QtBot

from tests.support import Deployment

ROOT = Path(__file__).resolve().parents[2]
# Quits in all (a multiple of 4): 100 took 73-99 s at a load of 16, too long for every run.
QUITS = int(os.environ.get("LMVP_QUIT_ROUNDS", "8"))
QUIT_SECONDS = 2.5


class _Emitter(QObject):
    fired = Signal(object)


def test_qt_calls_and_signal_emits_keep_their_references_to_none_and_true(qtbot: QtBot) -> None:
    label = QLabel()
    qtbot.addWidget(label)
    emitter = _Emitter()
    emitter.fired.connect(lambda _value: None)
    keep = [None, True] * 50_000  # 6.12.0 would otherwise crash here rather than fail
    none_before, true_before = sys.getrefcount(None), sys.getrefcount(True)
    for _ in range(20_000):
        label.setText("x")  # returns nothing
        emitter.fired.emit(1)  # returns True
    lost_none = none_before - sys.getrefcount(None)
    lost_true = true_before - sys.getrefcount(True)
    del keep
    assert lost_none < 100 and lost_true < 100, (
        f"the Qt binding lost {lost_none} references to None and {lost_true} to True in "
        "20,000 calls: it will crash the app (none_dealloc); use PySide6 < 6.12"
    )


def test_quits_after_pause_and_resume_without_a_crash(
    sqlite_deployment: Deployment, tmp_path: Path
) -> None:
    user = sqlite_deployment.user("quitter")
    per_loop = QUITS // 4

    def loop(i: int) -> subprocess.Popen[str]:
        args = [
            sqlite_deployment.url,
            str(user.token),
            str(tmp_path / f"state-{i % 2}"),
            str(per_loop),
        ]
        return subprocess.Popen(
            [sys.executable, "-m", "tests.desktop.quit_loop", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    quits = 0
    slowest = 0.0
    for pair in ((0, 1), (2, 3)):  # two at a time, one per core
        for i, run in [(i, loop(i)) for i in pair]:
            out, err = run.communicate(timeout=180)
            assert run.returncode == 0, f"quit loop {i} died ({run.returncode}):\n{err[-3000:]}"
            said = re.search(rf"quit {per_loop} times, the slowest in ([0-9.]+) s", out)
            assert said, f"quit loop {i} said: {out!r}"
            quits += per_loop
            slowest = max(slowest, float(said[1]))
    assert quits == 4 * per_loop
    # A quit is timed from the Quit action to the session closed, so starting Qt and the client
    # (most of a loop's time, and what a loaded machine stretches: 8 quits took 12 to 34 s in
    # all in CI) does not count. The slowest quit takes 0.1 s on a quiet machine and 0.3 s
    # beside six busy loops on two cores; the event stream's thread is given 5 s to stop, so
    # more than 2.5 s means a thread waited out a timeout instead of stopping when asked (the
    # daemon's loop slept through a stop for up to its 1 s interval, until it no longer did).
    assert slowest < QUIT_SECONDS, f"a quit took {slowest:.1f} s"
