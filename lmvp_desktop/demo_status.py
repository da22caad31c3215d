"""The demo's part of the main window (`make run`): a status-bar line saying whether its
simulated training job is running, has finished or stopped, and the "Run the demo again"
action once it is not running. Both stay hidden in a session without a demo.

The job is a process of the session's; this widget only asks the session where it stands,
once a second (a `poll()` of the process: nothing that can block), and has the session start it
again off the UI thread.
"""

from __future__ import annotations

import logging

from PySide6.QtCore import QTimer
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QHBoxLayout, QLabel, QToolButton, QWidget

from lmvp_desktop.session import DEMO_MODEL, DEMO_PROJECT, DemoState, DesktopSession
from lmvp_desktop.tasks import run_async

log = logging.getLogger(__name__)

_TEXT = {
    DemoState.running: (
        f"Demo: the simulated training job is running; each checkpoint becomes a version of "
        f"{DEMO_PROJECT}/{DEMO_MODEL}"
    ),
    DemoState.finished: "Demo finished: the simulated training job trained all its steps",
    DemoState.stopped: "Demo stopped before the end of its training job",
}


class DemoStatus(QWidget):
    """The demo's state as a label, and `again_action` ("Run the demo again")."""

    def __init__(self, session: DesktopSession, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.label = QLabel()
        self.again_action = QAction("Run the demo &again", self)
        self.again_action.setToolTip(
            "Start the simulated training job again from its first step, as a new run"
        )
        self.again_action.triggered.connect(self.run_again)
        self.again_button = QToolButton()
        self.again_button.setDefaultAction(self.again_action)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.label)
        layout.addWidget(self.again_button)
        self._restarting = False
        self._timer = QTimer(self)
        self._timer.timeout.connect(self.refresh)
        self._timer.start(1000)
        self.refresh()

    def refresh(self) -> None:
        """Show where the demo stands now."""
        state = self.session.demo_state()
        demo = state is not DemoState.none
        self.setVisible(demo)
        self.again_action.setVisible(demo)
        self.label.setText(
            "Demo: starting its training job again ..."
            if self._restarting
            else _TEXT.get(state, "")
        )
        self.again_action.setEnabled(
            state in (DemoState.finished, DemoState.stopped) and not self._restarting
        )
        self.again_button.setVisible(self.again_action.isEnabled())

    def run_again(self) -> None:
        """Start the demo's job again (a new folder and run; off the UI thread)."""
        self._restarting = True
        self.refresh()
        run_async(
            self.session.restart_demo, on_done=self._restarted, on_error=self._failed, owner=self
        )

    def _restarted(self, _folder: object) -> None:
        self._restarting = False
        self.refresh()

    def _failed(self, exc: BaseException) -> None:
        self._restarting = False
        log.warning("could not run the demo again: %s", exc)
        self.refresh()
        self.label.setText(f"Demo: could not run it again: {exc}")


__all__ = ["DemoStatus"]
