"""Starts and quits the desktop app's window and session `N` times in this process, each time
pausing and resuming syncing first and quitting with the Quit action (Ctrl+Q), as a person
does; for tests/desktop/test_quit_crash.py, which runs it in processes of its own (a crash at
quit kills the process, not the test). It prints how long the slowest quit took, from the Quit
action to the session closed.

    python -m tests.desktop.quit_loop SERVER TOKEN STATE_DIR N
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pathlib import Path

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

import lmvp
from lmvp_desktop import gc_guard
from lmvp_desktop.main_window import MainWindow
from lmvp_desktop.session import DesktopSession
from lmvp_desktop.settings import DesktopSettings


def one_session(app: QApplication, server: str, token: str, state: Path) -> float:
    """One start, pause, resume and quit; returns the seconds from Quit to the session closed."""
    session = DesktopSession(lmvp.Client(server, token), state_dir=state, settle_seconds=0.1)
    window = MainWindow(session, DesktopSettings(server_url=server))
    session.start()
    window.start()
    window.show()
    QTimer.singleShot(0, lambda: window.pause_action.setChecked(True))
    QTimer.singleShot(20, lambda: window.pause_action.setChecked(False))
    actions = window.findChildren(type(window.pause_action))
    quit_action = next(a for a in actions if a.shortcut().toString() == "Ctrl+Q")
    quit_at = 0.0

    def quit_now() -> None:
        nonlocal quit_at
        quit_at = time.monotonic()
        quit_action.trigger()

    QTimer.singleShot(40, quit_now)
    app.exec()
    window.shutdown()
    session.close()
    took = time.monotonic() - quit_at
    window.deleteLater()
    app.processEvents()
    return took


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
    slowest = max(one_session(app, server, token, state) for _ in range(count))
    print(f"quit {count} times, the slowest in {slowest:.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
