"""Starts and quits the desktop app's window and session `N` times in this process, each time
pausing and resuming syncing first and quitting with the Quit action (Ctrl+Q), as a person
does; for tests/desktop/test_quit_crash.py, which runs it in processes of its own (a crash at
quit kills the process, not the test).

    python -m tests.desktop.quit_loop SERVER TOKEN STATE_DIR N
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pathlib import Path

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

import lmvp
from lmvp_desktop import gc_guard
from lmvp_desktop.main_window import MainWindow
from lmvp_desktop.session import DesktopSession
from lmvp_desktop.settings import DesktopSettings


def one_session(app: QApplication, server: str, token: str, state: Path) -> None:
    session = DesktopSession(lmvp.Client(server, token), state_dir=state, settle_seconds=0.1)
    window = MainWindow(session, DesktopSettings(server_url=server))
    session.start()
    window.start()
    window.show()
    QTimer.singleShot(0, lambda: window.pause_action.setChecked(True))
    QTimer.singleShot(20, lambda: window.pause_action.setChecked(False))
    actions = window.findChildren(type(window.pause_action))
    quit_action = next(a for a in actions if a.shortcut().toString() == "Ctrl+Q")
    QTimer.singleShot(40, quit_action.trigger)
    app.exec()
    window.shutdown()
    session.close()
    window.deleteLater()
    app.processEvents()


def _one_tls_context() -> None:
    """Every `lmvp.Client` builds a TLS context (certifi's bundle: 0.1 s each, four clients a
    session, 40% of a cycle) although the server here is plain http: build it once. Quitting
    is about Qt objects and threads, which this leaves as they are."""
    import httpx._transports.default as transports

    made = transports.create_ssl_context()
    transports.create_ssl_context = lambda *_args, **_kwargs: made  # type: ignore[assignment]


def main() -> int:
    server, token, state, count = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    _one_tls_context()
    app = QApplication(sys.argv[:1])
    app.setQuitOnLastWindowClosed(False)
    gc_guard.install(app)
    for _ in range(count):
        one_session(app, server, token, state)
    print("quit", count, "times", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
