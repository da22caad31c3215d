"""The tray icon: the daemon's state at a glance, and the app's menu when its window is closed.

`TrayController` shows a `QSystemTrayIcon` where the desktop has a tray, with one icon per
`DaemonState` (drawn at runtime by `state_icon`, so they follow the screen's scale) and a menu:
Open, Pause/Resume, the last five committed versions, Quit. Where there is no tray (offscreen,
GNOME without an extension) it shows nothing: `state_text()` and `state_text_changed` carry
the same information for the main window's status bar, and `available` says which case
this is (the window should only hide itself on close when the tray is there to reopen it).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

from PySide6.QtCore import QObject, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QAction, QColor, QIcon, QPainter, QPainterPath, QPen, QPixmap
from PySide6.QtWidgets import QMenu, QSystemTrayIcon, QWidget

from lmvp_daemon.service import SyncDaemon
from lmvp_daemon.sync import DaemonState, EventKind, SyncEvent
from lmvp_desktop.daemon_bridge import DaemonBridge
from lmvp_desktop.settings import DesktopSettings

log = logging.getLogger(__name__)

RECENT_COUNT = 5

STATE_COLOURS = {
    DaemonState.idle: QColor("#2e9d5b"),
    DaemonState.syncing: QColor("#2f7bd8"),
    DaemonState.paused: QColor("#8a8f98"),
    DaemonState.offline: QColor("#d99a1e"),
    DaemonState.error: QColor("#d23c3c"),
}


@dataclass(frozen=True)
class RecentVersion:
    """A version the daemon committed, as the tray menu lists it."""

    project: str
    model: str
    version: int
    key: str

    @property
    def label(self) -> str:
        return f"{self.project}/{self.model} v{self.version} ({self.key})"


class TrayController(QObject):
    """The tray icon and its menu for one window and one daemon.

    Signals: `quit_requested()` (the app stops the daemon and quits), `open_requested()`
    (after the window was shown and raised), `state_text_changed(str)`, and
    `version_activated(project, model, version)` when a recent version is chosen.
    """

    quit_requested = Signal()
    open_requested = Signal()
    state_text_changed = Signal(str)
    version_activated = Signal(str, str, int)

    def __init__(
        self,
        window: QWidget,
        bridge: DaemonBridge,
        daemon: SyncDaemon,
        settings: DesktopSettings,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.window = window
        self.bridge = bridge
        self.daemon = daemon
        self.settings = settings
        self.recent: deque[RecentVersion] = deque(maxlen=RECENT_COUNT)
        self._state = daemon.state
        self._message = daemon.state_message
        # Why the server cannot be reached (the window's `ServerReachability`), else None.
        self._server_problem: str | None = None

        self.menu = QMenu(window)
        self.open_action = QAction("Open LMVP", self.menu)
        self.open_action.triggered.connect(self.open_window)
        self.pause_action = QAction("Pause syncing", self.menu)
        self.pause_action.triggered.connect(self.toggle_pause)
        self.recent_menu = QMenu("Recent versions", self.menu)
        self.quit_action = QAction("Quit LMVP", self.menu)
        self.quit_action.triggered.connect(self.quit_requested)
        self.menu.addAction(self.open_action)
        self.menu.addAction(self.pause_action)
        self.menu.addSeparator()
        self.menu.addMenu(self.recent_menu)
        self.menu.addSeparator()
        self.menu.addAction(self.quit_action)

        self.tray: QSystemTrayIcon | None = None
        if QSystemTrayIcon.isSystemTrayAvailable():
            self.tray = QSystemTrayIcon(state_icon(self._state), self)
            self.tray.setContextMenu(self.menu)
            self.tray.activated.connect(self._activated)
            self.tray.show()
        else:
            log.info("no system tray here: the window's status bar shows the sync state")

        bridge.state_changed.connect(self._state_changed)
        bridge.sync_event.connect(self._sync_event)
        self._refresh()

    @property
    def available(self) -> bool:
        """Whether a tray icon is shown (so closing the window may keep the app running)."""
        return self.tray is not None

    @property
    def state(self) -> DaemonState:
        return self._state

    def state_text(self) -> str:
        """The daemon's state in words, for a status bar or a tooltip; never "Up to date"
        while the server cannot be reached."""
        if self._server_problem is not None:
            return self._server_problem
        return describe_state(self._state, self._message)

    def shown_state(self) -> DaemonState:
        """The state the icon shows: offline while the server cannot be reached."""
        if self._server_problem is not None and self._state is not DaemonState.paused:
            return DaemonState.offline
        return self._state

    def set_server_problem(self, sentence: str | None) -> None:
        """The server cannot be reached (`sentence` says so), or answers again (None)."""
        self._server_problem = sentence
        self._refresh()

    def icon(self) -> QIcon:
        """The icon for the current state (also for a window without a tray)."""
        return state_icon(self.shown_state())

    def open_window(self) -> None:
        """Show, raise and focus the main window."""
        self.window.showNormal()
        self.window.raise_()
        self.window.activateWindow()
        self.open_requested.emit()

    def toggle_pause(self) -> None:
        """Pause syncing, or resume it (the daemon persists the choice). The daemon's loop
        applies it; its state event then updates the icon and the menu."""
        if self._state is DaemonState.paused:
            self.daemon.resume()
        else:
            self.daemon.pause()

    def hide(self) -> None:
        """Remove the icon from the tray (at quit)."""
        if self.tray is not None:
            self.tray.hide()

    # --- internals ---------------------------------------------------------------------------

    def _activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        if reason in (
            QSystemTrayIcon.ActivationReason.Trigger,
            QSystemTrayIcon.ActivationReason.DoubleClick,
        ):
            self.open_window()

    def _state_changed(self, state: DaemonState, message: str) -> None:
        self._state, self._message = state, message
        self._refresh()

    def _sync_event(self, event: SyncEvent) -> None:
        if event.kind is not EventKind.committed or event.version is None:
            return
        recent = RecentVersion(event.project or "?", event.model or "?", event.version, event.key)
        self.recent.appendleft(recent)
        self._refresh_recent()

    def _refresh(self) -> None:
        paused = self._state is DaemonState.paused
        self.pause_action.setText("Resume syncing" if paused else "Pause syncing")
        text = self.state_text()
        if self.tray is not None:
            self.tray.setIcon(state_icon(self.shown_state()))
            self.tray.setToolTip(f"LMVP: {text}")
        self._refresh_recent()
        self.state_text_changed.emit(text)

    def _refresh_recent(self) -> None:
        self.recent_menu.clear()
        if not self.recent:
            none = self.recent_menu.addAction("No versions synced yet")
            none.setEnabled(False)
            return
        for recent in self.recent:
            action = self.recent_menu.addAction(recent.label)
            action.triggered.connect(
                lambda _checked=False, r=recent: self.version_activated.emit(
                    r.project, r.model, r.version
                )
            )


def describe_state(state: DaemonState, message: str = "") -> str:
    """A short sentence for a state ("Offline: server ... not reachable")."""
    text = {
        DaemonState.idle: "Up to date",
        DaemonState.syncing: "Syncing…",
        DaemonState.paused: "Syncing paused",
        DaemonState.offline: "Offline",
        DaemonState.error: "Sync error",
    }[state]
    return f"{text}: {message}" if message and state in _WITH_MESSAGE else text


_WITH_MESSAGE = (DaemonState.offline, DaemonState.error)


def state_icon(state: DaemonState, size: int = 64) -> QIcon:
    """An icon for `state`: a stack of layers (a model's versions) with a coloured badge
    whose symbol tells the state apart also without colour (check, arrow, bars, dash, !)."""
    icon = QIcon()
    for side in (16, 22, 32, size):
        icon.addPixmap(_draw(state, side))
    return icon


def _draw(state: DaemonState, side: int) -> QPixmap:
    pixmap = QPixmap(side, side)
    pixmap.fill(Qt.GlobalColor.transparent)
    p = QPainter(pixmap)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    s = side / 32.0
    # The stack: three rounded layers.
    layer = QColor("#4a5260")
    for i, alpha in enumerate((110, 170, 255)):
        colour = QColor(layer)
        colour.setAlpha(alpha)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(colour)
        p.drawRoundedRect(QRectF(2 * s, (4 + 6 * i) * s, 20 * s, 6 * s), 2 * s, 2 * s)
    # The badge.
    colour = STATE_COLOURS[state]
    badge = QRectF(14 * s, 14 * s, 17 * s, 17 * s)
    p.setBrush(colour)
    p.setPen(QPen(QColor("white"), max(1.0, 1.5 * s)))
    p.drawEllipse(badge)
    pen = QPen(QColor("white"), max(1.0, 2.2 * s))
    pen.setCapStyle(Qt.PenCapStyle.RoundCap)
    pen.setJoinStyle(Qt.PenJoinStyle.RoundJoin)
    p.setPen(pen)
    p.setBrush(Qt.BrushStyle.NoBrush)
    cx, cy = badge.center().x(), badge.center().y()
    if state is DaemonState.idle:
        path = QPainterPath(QPointF(cx - 4 * s, cy))
        path.lineTo(cx - 1 * s, cy + 3 * s)
        path.lineTo(cx + 4 * s, cy - 3 * s)
        p.drawPath(path)
    elif state is DaemonState.syncing:
        p.drawLine(QPointF(cx, cy + 4 * s), QPointF(cx, cy - 4 * s))
        path = QPainterPath(QPointF(cx - 3 * s, cy - 1 * s))
        path.lineTo(cx, cy - 4 * s)
        path.lineTo(cx + 3 * s, cy - 1 * s)
        p.drawPath(path)
    elif state is DaemonState.paused:
        p.drawLine(QPointF(cx - 2 * s, cy - 3.5 * s), QPointF(cx - 2 * s, cy + 3.5 * s))
        p.drawLine(QPointF(cx + 2 * s, cy - 3.5 * s), QPointF(cx + 2 * s, cy + 3.5 * s))
    elif state is DaemonState.offline:
        p.drawLine(QPointF(cx - 4 * s, cy), QPointF(cx + 4 * s, cy))
    else:
        p.drawLine(QPointF(cx, cy - 4 * s), QPointF(cx, cy + 1 * s))
        p.drawPoint(QPointF(cx, cy + 4 * s))
    p.end()
    return pixmap


__all__ = ["RecentVersion", "TrayController", "describe_state", "state_icon"]
