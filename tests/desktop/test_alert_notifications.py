"""Training alerts reach the desktop (issue 14): a simulated job in a separate process
(tests/daemon/alert_job.py) writes a NaN loss and then falls silent in a folder the embedded
daemon watches; the app's notifier, with its real batching, makes ONE notification of each,
within 5 s of the condition being detectable, and each reaches a real notification server on a
session D-Bus (tests/desktop/dbus_recorder.py, a separate process). An alert kind switched off
in the settings sends nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pytestqt.qtbot import QtBot

import lmvp
from lmvp_daemon.outbox import Outbox
from lmvp_daemon.service import SyncDaemon
from lmvp_desktop.daemon_bridge import DaemonBridge
from lmvp_desktop.notifications import Notifier
from lmvp_desktop.settings import DesktopSettings
from tests.desktop import test_notifications
from tests.support import Deployment

# The private session bus and the recording notification server, as test_notifications has them.
session_bus = test_notifications.session_bus
notification_server = test_notifications.notification_server

ROOT = Path(__file__).resolve().parents[2]
EVERY = 1.0  # seconds between the job's checkpoints (its --every)


class Recorded:
    """The Notify calls the recorder wrote, each with when the test first saw it."""

    def __init__(self, record: Path) -> None:
        self.record = record
        self.calls: list[tuple[float, dict[str, Any]]] = []

    def poll(self) -> int:
        lines = self.record.read_text().splitlines() if self.record.exists() else []
        for line in lines[len(self.calls) :]:
            self.calls.append((time.time(), json.loads(line)))
        return len(self.calls)


def run_alert_job(
    qtbot: QtBot,
    deployment: Deployment,
    tmp_path: Path,
    record: Path,
    settings: DesktopSettings,
) -> tuple[Recorded, dict[str, float]]:
    """Watch a folder with the embedded daemon, notify through the app's notifier, run the
    `nan` job to its end and wait until its silence is detectable and 5 s more have passed.
    Returns the calls recorded and when each condition became detectable."""
    user = deployment.user("alerts")
    project = deployment.project(user)
    folder = tmp_path / "out"
    folder.mkdir()
    outbox = Outbox(tmp_path / "state")
    outbox.add_watch(folder, project, "net")
    client = lmvp.Client(deployment.url, user.token)
    daemon = SyncDaemon(outbox, client, settle_seconds=0.2, interval=0.2, run_idle_seconds=600)
    bridge = DaemonBridge(daemon)
    notifier = Notifier(settings)  # the app's own batching (delay and window)
    assert notifier.tray is None  # offscreen: no tray, so D-Bus it is
    notifier.follow(bridge)
    recorded = Recorded(record)
    daemon.start()
    try:
        job = subprocess.Popen(
            [sys.executable, "-m", "tests.daemon.alert_job", "nan", str(folder), "--every", "1"],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        qtbot.waitUntil(lambda: (recorded.poll(), job.poll())[1] is not None, timeout=30_000)
        assert job.returncode == 0
        assert job.stdout is not None
        moments = [json.loads(line) for line in job.stdout.read().splitlines()]
        detectable = {
            "nan": next(m["at"] for m in moments if m["event"] == "nan"),
            "silent": max(m["mtime"] for m in moments if m["event"] == "checkpoint") + 2 * EVERY,
        }
        end = max(detectable.values()) + 5.5
        while time.time() < end:
            recorded.poll()
            qtbot.wait(50)
        notifier.wait_for_delivery()
        recorded.poll()
    finally:
        daemon.close()
        bridge.close()
        client.close()
        outbox.close()
    return recorded, detectable


def test_a_nan_loss_and_a_job_gone_silent_make_one_notification_each_within_5_s(
    qtbot: QtBot, sqlite_deployment: Deployment, tmp_path: Path, notification_server: Path
) -> None:
    settings = DesktopSettings(notify_synced=False)  # the checkpoints' own notices aside
    recorded, detectable = run_alert_job(
        qtbot, sqlite_deployment, tmp_path, notification_server, settings
    )
    by_title = {call["summary"].split(":")[0]: (at, call) for at, call in recorded.calls}
    assert len(recorded.calls) == 2, [c["summary"] for _, c in recorded.calls]
    nan_at, nan = by_title["Loss is NaN"]
    silent_at, silent = by_title["Training went silent"]
    assert nan["summary"].endswith("/net") and nan["body"] == "loss is NaN at step 21"
    assert "no checkpoint for" in silent["body"] and "model_step_20" in silent["body"]
    assert nan["signature"] == silent["signature"] == "susssasa{sv}i"
    latency = {"nan": nan_at - detectable["nan"], "silent": silent_at - detectable["silent"]}
    assert all(0 <= v < 5.0 for v in latency.values()), latency


def test_alert_kinds_switched_off_in_the_settings_send_nothing(
    qtbot: QtBot, sqlite_deployment: Deployment, tmp_path: Path, notification_server: Path
) -> None:
    settings = DesktopSettings(notify_synced=False, alert_nan=False)
    recorded, _ = run_alert_job(qtbot, sqlite_deployment, tmp_path, notification_server, settings)
    assert [call["summary"].split(":")[0] for _, call in recorded.calls] == ["Training went silent"]
