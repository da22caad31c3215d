"""The status bar and the tray never say "Up to date" while the server cannot be reached (issue
18): a window whose local server is not running says so in a sentence and offers "Start it",
which starts a real server process there; then the sentence goes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

import lmvp
from lmvp_daemon.sync import DaemonState
from lmvp_desktop.main_window import MainWindow
from lmvp_desktop.session import DesktopSession
from lmvp_desktop.settings import DesktopSettings
from tests.support import free_port


@pytest.fixture
def dead_window(
    qtbot: QtBot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[MainWindow]:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))  # the local server's data
    monkeypatch.delenv("LMVP_PORT", raising=False)
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    session = DesktopSession(lmvp.Client(url, "no-token"), state_dir=tmp_path / "state")
    main = MainWindow(session, DesktopSettings(server_url=url, local_server=True))
    qtbot.addWidget(main)
    main.start()
    main.show()
    try:
        yield main
    finally:
        main.shutdown()
        session.close()


def test_a_server_that_does_not_answer_is_never_up_to_date_and_can_be_started(
    qtbot: QtBot, dead_window: MainWindow
) -> None:
    main = dead_window
    port = main.session.client.server.rsplit(":", 1)[1]
    assert main.session.daemon.state is DaemonState.idle  # the daemon has nothing to send
    assert "Up to date" not in main.state_label.text()

    qtbot.waitUntil(lambda: "is not running" in main.state_label.text(), timeout=15_000)
    assert main.state_label.text() == f"The LMVP server at 127.0.0.1:{port} is not running."
    assert main.tray.state_text() == main.state_label.text()
    assert main.tray.shown_state() is DaemonState.offline
    assert main.start_server_button.isVisibleTo(main)
    # The daemon's idle state event does not make it "Up to date" again.
    main._show_state(DaemonState.idle, "")
    assert "Up to date" not in main.state_label.text()

    # The details pane says it too, with the same button.
    qtbot.waitUntil(lambda: main.history.details.error_box.isVisibleTo(main), timeout=15_000)
    assert main.history.details.error_box.text().endswith("is not running.")
    start_here = [
        b
        for b in main.history.details.error_box.findChildren(type(main.start_server_button))
        if b.text() == "Start it"
    ]
    assert len(start_here) == 1 and start_here[0].isVisibleTo(main)

    main.start_server_button.click()
    # The periodic check may see the server answer before its start has returned: both.
    qtbot.waitUntil(
        lambda: main.reach.reachable is True and main.session.local_server is not None,
        timeout=60_000,
    )
    assert main.session.local_server is not None and main.session.local_server.answers()
    assert "not running" not in main.state_label.text()
    assert not main.start_server_button.isVisibleTo(main)
    assert main.tray.shown_state() is DaemonState.idle
