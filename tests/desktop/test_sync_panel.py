"""The sync panel against the real server and the real embedded daemon (watchdog on temporary
folders): a folder added through the panel's own dialog is synced with a progress bar that
reaches 100 % before the row says done; a checkpoint the server refuses shows its error, and
Retry sends it once access is granted; pause/resume, enable/disable and removal reach the
daemon."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PySide6.QtCore import QModelIndex, Qt, QThreadPool
from pytestqt.qtbot import QtBot

import lmvp
from lmvp_daemon.outbox import Outbox
from lmvp_daemon.service import SyncDaemon
from lmvp_daemon.sync import DaemonState
from lmvp_desktop.daemon_bridge import DaemonBridge
from lmvp_desktop.settings import DesktopSettings
from lmvp_desktop.sync_model import QueueColumn, QueueRow, QueueState, WatchColumn
from lmvp_desktop.sync_panel import SyncPanel
from lmvp_desktop.tray import TrayController, state_icon
from tests.support import Api, Deployment, write_random_file

MiB = 1024 * 1024


@dataclass
class Embedded:
    daemon: SyncDaemon
    bridge: DaemonBridge
    client: lmvp.Client
    outbox: Outbox
    folder: Path


@pytest.fixture
def embed(tmp_path: Path, sqlite_deployment: Deployment) -> Iterator[Callable[[Api], Embedded]]:
    """Start a daemon as the app embeds it, for a user's token, on a fresh state dir."""
    started: list[Embedded] = []

    def start(user: Api) -> Embedded:
        folder = tmp_path / "run"
        folder.mkdir()
        outbox = Outbox(tmp_path / "state")
        assert user.token is not None
        client = lmvp.Client(sqlite_deployment.url, user.token, retries=2)
        daemon = SyncDaemon(outbox, client, settle_seconds=0.2, interval=0.2)
        bridge = DaemonBridge(daemon)
        daemon.start()
        started.append(Embedded(daemon, bridge, client, outbox, folder))
        return started[-1]

    yield start
    # A restart the panel asked for (to see new watches) must not outlive the test.
    QThreadPool.globalInstance().waitForDone(30_000)
    for e in started:
        e.daemon.close()
        e.bridge.close()
        e.client.close()
        e.outbox.close()


def make_panel(qtbot: QtBot, e: Embedded) -> SyncPanel:
    panel = SyncPanel(e.daemon, e.bridge, e.client, folder_picker=lambda _parent: str(e.folder))
    qtbot.addWidget(panel)
    panel.resize(900, 600)
    return panel


def row_of(panel: SyncPanel, key: str) -> QueueRow | None:
    return next((r for r in panel.queue_model.rows() if r.key == key), None)


def test_a_folder_added_in_the_panel_is_synced_with_progress_reaching_100_then_done(
    qtbot: QtBot, sqlite_deployment: Deployment, embed: Callable[[Api], Embedded]
) -> None:
    user = sqlite_deployment.user("panel")
    project = sqlite_deployment.project(user)
    e = embed(user)
    panel = make_panel(qtbot, e)
    tray = TrayController(panel, e.bridge, e.daemon, DesktopSettings())
    states: list[str] = []
    tray.state_text_changed.connect(states.append)
    seen: list[tuple[QueueState, float | None]] = []

    def record(*_args: object) -> None:
        row = row_of(panel, "model_step_10.safetensors")
        if row is not None and (not seen or seen[-1] != (row.state, row.progress)):
            seen.append((row.state, row.progress))

    panel.queue_model.dataChanged.connect(record)
    panel.queue_model.rowsInserted.connect(record)
    panel.queue_model.modelReset.connect(record)

    # Add: the folder picker gives the folder, the dialog lists the user's projects.
    panel.add_button.click()
    dialog = panel.target_dialog
    assert dialog is not None and dialog.folder == str(e.folder)
    qtbot.waitUntil(lambda: dialog.project_combo.findText(project) >= 0, timeout=5000)
    dialog.project_combo.setCurrentText(project)
    dialog.model_combo.setEditText("resnet")
    dialog.accept()  # added off the UI thread; the list follows
    qtbot.waitUntil(lambda: panel.watches_model.rowCount() == 1, timeout=5000)
    [watch] = e.outbox.watches()
    assert (watch.folder, watch.project, watch.model) == (str(e.folder), project, "resnet")
    index = panel.watches_model.index(0, WatchColumn.target)
    assert index.data() == f"{project}/resnet"

    # A checkpoint written there goes up, with a bar, and becomes version 1.
    write_random_file(e.folder / "model_step_10.safetensors", 3 * MiB, seed=3)
    qtbot.waitUntil(
        lambda: (
            (row := row_of(panel, "model_step_10.safetensors")) is not None
            and row.state is QueueState.done
        ),
        timeout=20_000,
    )
    row = row_of(panel, "model_step_10.safetensors")
    assert row is not None and row.version == 1 and row.target == f"{project}/resnet"
    uploading = [p for s, p in seen if s is QueueState.uploading]
    assert uploading and uploading[-1] == 1.0
    assert seen.index((QueueState.uploading, 1.0)) < seen.index((QueueState.done, 1.0))
    assert all(a is not None and b is not None and a <= b for a, b in itertools.pairwise(uploading))
    at = panel.queue_model.rows().index(row)
    assert panel.queue_model.index(at, QueueColumn.progress).data() == "100%"
    assert panel.queue_model.index(at, QueueColumn.state).data() == "Synced (v1)"
    # The delegate draws the bar (a real paint, offscreen).
    assert not panel.queue_view.viewport().grab().isNull()
    assert e.client.version(f"{project}/resnet").number == 1
    qtbot.waitUntil(lambda: "Up to date" in panel.state_label.text(), timeout=5000)

    # The tray controller followed: offscreen there is no tray, so its text is what shows. The
    # panel may read the daemon's state before the queued state signal reaches the tray.
    assert not tray.available and tray.tray is None
    qtbot.waitUntil(lambda: tray.state_text() == "Up to date", timeout=5000)
    assert "Syncing…" in states
    assert [r.label for r in tray.recent] == [f"{project}/resnet v1 (model_step_10.safetensors)"]
    assert [a.text() for a in tray.recent_menu.actions()] == [tray.recent[0].label]
    with qtbot.waitSignal(tray.version_activated) as activated:
        tray.recent_menu.actions()[0].trigger()
    assert activated.args == [project, "resnet", 1]
    assert all(not state_icon(s).pixmap(22, 22).isNull() for s in DaemonState)


def test_a_refused_checkpoint_shows_its_error_and_retry_sends_it_after_access_is_granted(
    qtbot: QtBot, sqlite_deployment: Deployment, embed: Callable[[Api], Embedded]
) -> None:
    owner = sqlite_deployment.user("owner")
    project = sqlite_deployment.project(owner)
    viewer = sqlite_deployment.user("viewer")
    sqlite_deployment.add_member(project, viewer, "viewer")
    e = embed(viewer)
    panel = make_panel(qtbot, e)
    with qtbot.waitSignal(panel.watches_changed, timeout=5000):
        panel.add_watch_for(e.folder, project, "net")

    write_random_file(e.folder / "c_step_3.pt", 10_000, seed=7)
    qtbot.waitUntil(
        lambda: (
            (row := row_of(panel, "c_step_3.pt")) is not None
            and row.state is QueueState.failed
            and row.checkpoint_id is not None
        ),
        timeout=20_000,
    )
    row = row_of(panel, "c_step_3.pt")
    assert row is not None
    assert "contributor" in row.message or "permission" in row.message.lower()
    at = panel.queue_model.rows().index(row)
    assert panel.queue_model.index(at, QueueColumn.message).data() == row.message
    assert panel.queue_model.index(at, QueueColumn.state).data() == "Failed"
    assert panel.retry_all_button.isEnabled() and not panel.retry_button.isEnabled()
    qtbot.waitUntil(lambda: panel.state_label.text().startswith("Sync error"), timeout=5000)

    sqlite_deployment.add_member(project, viewer, "contributor")
    panel.queue_view.selectRow(at)
    assert panel.retry_button.isEnabled() and panel.retry_action.isEnabled()
    panel.retry_button.click()
    qtbot.waitUntil(
        lambda: (r := row_of(panel, "c_step_3.pt")) is not None and r.state is QueueState.done,
        timeout=20_000,
    )
    assert e.outbox.failures() == []
    qtbot.waitUntil(lambda: e.daemon.state is DaemonState.idle, timeout=5000)


def test_pause_resume_enable_disable_and_remove_reach_the_daemon(
    qtbot: QtBot, sqlite_deployment: Deployment, embed: Callable[[Api], Embedded], tmp_path: Path
) -> None:
    user = sqlite_deployment.user("pauser")
    project = sqlite_deployment.project(user)
    e = embed(user)
    panel = make_panel(qtbot, e)
    tray = TrayController(panel, e.bridge, e.daemon, DesktopSettings())
    assert panel.pause_button.text() == "Pause syncing"

    panel.pause_button.click()  # the daemon's loop applies it, and its state event says so
    qtbot.waitUntil(
        lambda: e.daemon.paused and panel.pause_button.text() == "Resume syncing", timeout=5000
    )
    qtbot.waitUntil(lambda: panel.state_label.text() == "Syncing paused", timeout=5000)
    # The tray hears it through the bridge (queued when the daemon's thread saw it first).
    qtbot.waitUntil(lambda: tray.state is DaemonState.paused, timeout=5000)
    assert tray.pause_action.text() == "Resume syncing" and tray.state_text() == "Syncing paused"
    panel.pause_button.click()
    qtbot.waitUntil(
        lambda: not e.daemon.paused and panel.pause_button.text() == "Pause syncing", timeout=5000
    )
    qtbot.waitUntil(lambda: panel.state_label.text() != "Syncing paused", timeout=5000)
    tray.pause_action.trigger()  # the tray's menu does the same
    qtbot.waitUntil(lambda: e.daemon.paused, timeout=5000)
    qtbot.waitUntil(lambda: panel.pause_button.text() == "Resume syncing", timeout=5000)
    tray.pause_action.trigger()
    qtbot.waitUntil(lambda: not e.daemon.paused, timeout=5000)
    with qtbot.waitSignal(tray.quit_requested):
        tray.quit_action.trigger()

    other = tmp_path / "other"
    other.mkdir()
    messages: list[str] = []
    panel.message.connect(messages.append)
    # Off the UI thread, one after another in the order asked.
    panel.add_watch_for(e.folder, project, "a")
    panel.add_watch_for(other, project, "b")
    panel.add_watch_for(other / "nested", project, "c")
    qtbot.waitUntil(lambda: len(messages) == 3, timeout=5000)
    assert "not a folder" in messages[-1]
    (other / "nested").mkdir()
    panel.add_watch_for(other / "nested", project, "c")
    qtbot.waitUntil(lambda: len(messages) == 4, timeout=5000)
    assert "inside" in messages[-1]  # refused: inside a watched folder
    qtbot.waitUntil(lambda: panel.watches_model.rowCount() == 2, timeout=3000)

    enabled = panel.watches_model.index(1, WatchColumn.enabled)
    assert enabled.data(Qt.ItemDataRole.CheckStateRole) == Qt.CheckState.Checked
    panel.watches_model.setData(enabled, Qt.CheckState.Unchecked, Qt.ItemDataRole.CheckStateRole)
    qtbot.waitUntil(
        lambda: (
            panel.watches_model.index(1, WatchColumn.enabled).data(Qt.ItemDataRole.CheckStateRole)
            == Qt.CheckState.Unchecked
        ),
        timeout=3000,
    )
    assert [w.enabled for w in e.outbox.watches()] == [True, False]

    panel.watches_view.selectRow(0)
    panel.remove_button.click()
    qtbot.waitUntil(lambda: panel.watches_model.rowCount() == 1, timeout=3000)
    assert [w.model for w in e.outbox.watches()] == ["b"]
    assert panel.watches_model.index(0, WatchColumn.folder, QModelIndex()).data() == str(other)


def test_an_unreachable_server_is_a_sentence_in_the_sync_header(
    qtbot: QtBot, sqlite_deployment: Deployment, embed: Callable[[Api], Embedded]
) -> None:
    e = embed(sqlite_deployment.user("header"))
    panel = make_panel(qtbot, e)
    raw = (
        "could not reach the LMVP server at http://127.0.0.1:8470 ([Errno 111] Connection "
        "refused): is it running? (LMVP_SERVER or `lmvp login SERVER`)"
    )
    panel._show_state(DaemonState.offline, raw)
    host = e.client.server.split("//", 1)[1]
    assert panel.state_label.text() == (
        f"The LMVP server at {host} is not running. Checkpoints wait and are sent when it is back."
    )
    assert panel.state_label.toolTip() == raw  # the detail, for whoever wants it
