"""The Sync tab tells bad data from lost data: the malformed records the embedded daemon skipped
in a watched folder's metric files show in the folder's row, per file, from what the daemon
saved before the panel opened and then from its events (the real server and daemon)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import Qt, QThreadPool
from pytestqt.qtbot import QtBot

import lmvp
from lmvp_daemon.outbox import Outbox
from lmvp_daemon.service import SyncDaemon
from lmvp_desktop.daemon_bridge import DaemonBridge
from lmvp_desktop.sync_model import WatchColumn
from lmvp_desktop.sync_panel import SyncPanel
from tests.support import Deployment

CSV = "lightning_logs/version_0/metrics.csv"


@pytest.fixture
def client(sqlite_deployment: Deployment) -> Iterator[tuple[lmvp.Client, str]]:
    user = sqlite_deployment.user("panel-skips")
    assert user.token is not None
    with lmvp.Client(sqlite_deployment.url, user.token, retries=2) as client:
        yield client, sqlite_deployment.project(user)


def test_the_folders_row_shows_each_metric_files_malformed_records(
    qtbot: QtBot, tmp_path: Path, client: tuple[lmvp.Client, str]
) -> None:
    api, project = client
    folder = tmp_path / "run"
    folder.mkdir()
    jsonl = folder / "metrics.jsonl"
    jsonl.write_text('{"step": 1, "loss": 0.5}\nnot json\n{"step": 2, "loss": 0.4}\n')
    outbox = Outbox(tmp_path / "state")
    watch = outbox.add_watch(folder, project, "net")
    daemon = SyncDaemon(outbox, api, settle_seconds=0.2, interval=0.1)
    bridge = DaemonBridge(daemon)
    daemon.start()
    try:
        qtbot.waitUntil(lambda: daemon.metric_skips() == {watch.id: {"metrics.jsonl": 1}})
        # Opened afterwards: the count comes from what the daemon saved.
        panel = SyncPanel(daemon, bridge, api)
        qtbot.addWidget(panel)
        cell = lambda: panel.watches_model.index(0, WatchColumn.skipped)  # noqa: E731
        qtbot.waitUntil(lambda: cell().data() == "metrics.jsonl: 1", timeout=5000)
        tooltip = cell().data(Qt.ItemDataRole.ToolTipRole)
        assert "metrics.jsonl: 1 malformed line skipped (bad data in the file itself" in tooltip

        # While it is open: from the daemon's events, no refresh needed, and no queue row.
        with jsonl.open("a") as f:
            f.write('{"step": 3, "loss": \n{"step": 4, "loss": 0.3}\n')
        (folder / CSV).parent.mkdir(parents=True)
        (folder / CSV).write_text("step,loss\r\n5,0.2\r\n6,0.1,extra\r\n")
        qtbot.waitUntil(
            lambda: cell().data() == f"{CSV}: 1, metrics.jsonl: 2",
            timeout=10_000,
        )
        assert panel.watches_model.metric_skips(watch.id) == {"metrics.jsonl": 2, CSV: 1}
        assert panel.queue_model.rowCount() == 0
        header = panel.watches_model.headerData(WatchColumn.skipped, Qt.Orientation.Horizontal)
        assert header == "Skipped metric records"
        run_id = outbox.watch_run(watch.id).run_id
        assert run_id is not None
        qtbot.waitUntil(lambda: len(api.metrics(run_id)["loss"].steps) == 4, timeout=10_000)
    finally:
        QThreadPool.globalInstance().waitForDone(30_000)
        daemon.close()
        bridge.close()
        outbox.close()
