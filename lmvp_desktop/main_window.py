"""The main window: it composes the panes and wires them together, and holds no logic of its own.

- "Models": the project/model tree, the version history and the detail pane (`HistoryPane`)
  above the metric plot of the selected model (`MetricPlot`). Choosing a model shows its runs;
  clicking a checkpoint marker on a curve selects that version in the table, and selecting a
  version highlights its marker.
- "Sync": watched folders, the queue with progress, errors with retry, pause (`SyncPanel`).
- The status bar shows the daemon's state, the demo's (`make run`: running, or finished with
  "Run the demo again") and, where there is no tray, the notifications.
- The server's event stream feeds the history, the plot and teammates' notifications, so a new
  version shows up without the user doing anything. Closing the window keeps syncing in the
  tray (where there is one); Quit stops the daemon cleanly.
"""

from __future__ import annotations

import logging

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QCloseEvent
from PySide6.QtWidgets import (
    QApplication,
    QLabel,
    QMainWindow,
    QPushButton,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

import lmvp
from lmvp import credentials
from lmvp_daemon.sync import DaemonState
from lmvp_desktop.daemon_bridge import DaemonBridge
from lmvp_desktop.demo_status import DemoStatus
from lmvp_desktop.errors import PlainError, is_local, server_name
from lmvp_desktop.history_view import HistoryPane
from lmvp_desktop.local_server import LocalServer
from lmvp_desktop.manage import (
    GettingStartedDialog,
    MembersDialog,
    NewModelDialog,
    NewProjectDialog,
    TokensDialog,
    confirm,
)
from lmvp_desktop.metric_plot import MetricPlot
from lmvp_desktop.notifications import Notifier
from lmvp_desktop.reachability import ServerReachability
from lmvp_desktop.search import SearchBox
from lmvp_desktop.server_events import ServerEvents
from lmvp_desktop.session import DesktopSession
from lmvp_desktop.settings import DesktopSettings, SettingsDialog
from lmvp_desktop.sync_panel import SyncPanel
from lmvp_desktop.tasks import run_async
from lmvp_desktop.tray import TrayController

log = logging.getLogger(__name__)

_STATE_TEXT = {
    DaemonState.idle: "Up to date",
    DaemonState.syncing: "Syncing checkpoints ...",
    DaemonState.paused: "Syncing paused",
    DaemonState.offline: "Server unreachable: checkpoints wait and are sent when it is back",
    DaemonState.error: "Sync error",
}


def status_line(title: str, body: str) -> str:
    """A notification on one status bar line: the body alone when it starts with what the
    title says ("2 checkpoints synced to p/m", not "2 checkpoints synced: 2 checkpoints
    synced to p/m"), its first line only, at most 160 characters."""
    first = body.splitlines()[0] if body else ""
    line = first if first.startswith(title) else f"{title}: {first}" if first else title
    return line if len(line) <= 160 else line[:159] + "…"


class MainWindow(QMainWindow):
    """History, plots and sync of one `DesktopSession`."""

    def __init__(
        self,
        session: DesktopSession,
        settings: DesktopSettings,
        parent: QWidget | None = None,
        *,
        demo: bool = False,
    ) -> None:
        super().__init__(parent)
        self.session = session
        self.settings = settings
        self.setWindowTitle(f"LMVP - {session.client.server}")
        self._fit_to_screen(1280, 820)
        client = session.client

        self.bridge = DaemonBridge(session.daemon, self)
        self.events = ServerEvents(client.server, client.token, self)
        # Whether the server answers: the status bar and the tray never say "Up to date"
        # while it does not (the daemon only notices when it has something to send).
        self.reach = ServerReachability(client.server, client.token, self)
        self.history = HistoryPane(client, self)
        self.plot = MetricPlot(client, self)
        self.sync_panel = SyncPanel(session.daemon, self.bridge, client, self)
        self.tray = TrayController(self, self.bridge, session.daemon, settings, parent=self)
        # Notifications name each watch's project/model (the daemon's events carry them) and
        # show as tray balloons where there is a tray, else through the desktop's notification
        # service.
        self.notifier = Notifier(settings, tray=self.tray.tray, parent=self)

        models = QSplitter(Qt.Orientation.Vertical)
        models.addWidget(self.history)
        models.addWidget(self.plot)
        models.setStretchFactor(0, 3)
        models.setStretchFactor(1, 2)
        self.tabs = QTabWidget()
        self.tabs.addTab(models, "Models")
        self.tabs.addTab(self.sync_panel, "Sync")
        # One box finds projects, models and versions; a result opens the model or version.
        self.search = SearchBox(client)
        self.search.model_chosen.connect(self._open_model)
        self.search.version_chosen.connect(self._open_version)
        central = QWidget()
        central_layout = QVBoxLayout(central)
        central_layout.setContentsMargins(4, 4, 4, 0)
        central_layout.addWidget(self.search)
        central_layout.addWidget(self.tabs, 1)
        self.setCentralWidget(central)
        # No accessible name of its own: a screen reader reads what it says ("Up to date",
        # "Sync error: ..."), not a fixed "Sync state".
        self.state_label = QLabel()
        self.statusBar().addPermanentWidget(self.state_label)
        self.start_server_button = QPushButton("Start it")
        self.start_server_button.setAccessibleName("Start the local server")
        self.start_server_button.clicked.connect(self.start_local_server)
        self.start_server_button.hide()
        self.statusBar().addPermanentWidget(self.start_server_button)
        self._daemon_state = (session.daemon.state, "")
        self.demo_status = DemoStatus(session, self)
        self.statusBar().addPermanentWidget(self.demo_status)
        self._show_state(session.daemon.state, "")
        self._build_menus()

        self.history.model_selected.connect(self.plot.show_model)
        self.history.version_selected.connect(self._version_selected)
        self.plot.version_clicked.connect(self.history.select_version)
        self.events.received.connect(self._server_event)
        # Subscribed first, then reconciled: what changed before the stream opened is read.
        self.events.opened.connect(self.history.reconcile)
        self.events.opened.connect(self.plot.reconcile)
        self.bridge.sync_event.connect(self.notifier.on_sync_event)
        self.bridge.state_changed.connect(self._show_state)
        self.reach.changed.connect(self._reach_changed)
        self.events.opened.connect(self.reach.mark_reachable)
        self.events.lost.connect(lambda _message: self.reach.check())
        self.notifier.shown.connect(self._notified)
        self.tray.quit_requested.connect(self.quit)
        self.tray.version_activated.connect(self._open_version)
        # The dialog opened last (tests reach it here), whether the first-start guide was
        # offered in this run, and the guide opened by itself (closed again, if the person
        # has not begun with it, once projects appear). A demo makes its own project after
        # the tree's first look found none: no guide over it.
        self.dialog: QWidget | None = None
        self._guide_offered = demo
        self._offered_guide: GettingStartedDialog | None = None
        self.history.get_started_requested.connect(self.get_started)
        # An unreachable local server, said in the details pane, can be started from there.
        server = client.server
        self.history.details.error_box.add_action(
            "Start it",
            self.start_local_server,
            when=lambda error: error.unreachable and is_local(server),
        )
        self.history.tree_model.loaded.connect(self._offer_guide)

    # --- life -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start following the server's events (the session starts the daemon)."""
        self.events.start()
        self.reach.start()

    def shutdown(self) -> None:
        """Stop following events and listening to the daemon (before the session closes)."""
        self.reach.stop()
        self.events.stop()
        self.bridge.close()
        self.tray.hide()

    def has_tray(self) -> bool:
        return self.tray.available

    def show_model(self, project: str, model: str) -> None:
        """Select a model in the tree (its history and plot follow)."""
        self.history.select_model(project, model)
        self.plot.show_model(project, model)

    def quit(self) -> None:
        """Quit the app: the caller then stops the daemon cleanly."""
        app = QApplication.instance()
        if app is not None:
            app.quit()

    def closeEvent(self, event: QCloseEvent) -> None:
        if self.tray.available:
            # Syncing goes on; the tray's menu opens the window again or quits.
            event.ignore()
            self.hide()
            return
        event.accept()
        self.quit()

    # --- wiring -----------------------------------------------------------------------------

    def _server_event(self, event: lmvp.Event) -> None:
        self.history.on_server_event(event)
        self.plot.on_server_event(event)
        self.notifier.on_server_event(event, me=self.session.username)

    def _fit_to_screen(self, width: int, height: int) -> None:
        """Open at `width`x`height`, or smaller on a smaller screen (1366x768 laptops)."""
        screen = self.screen() or QApplication.primaryScreen()
        if screen is not None:
            room = screen.availableGeometry()
            # The frame the window manager adds is not known yet: leave it some room.
            width, height = min(width, room.width() - 16), min(height, room.height() - 48)
        self.resize(width, height)

    def _open_model(self, project: str, model: str) -> None:
        self.tabs.setCurrentIndex(0)
        self.show_model(project, model)

    def _open_version(self, project: str, model: str, number: int) -> None:
        """Show the window (raised, from the tray) on version `number` of `project/model`."""
        self.showNormal()
        self.raise_()
        self.activateWindow()
        self.tabs.setCurrentIndex(0)
        self.show_model(project, model)
        self.history.select_version(number)

    def _version_selected(self, version: lmvp.Version | None) -> None:
        self.plot.highlight_version(version.number if version is not None else None)

    def _show_state(self, state: DaemonState, message: str) -> None:
        self._daemon_state = (state, message)
        problem = self.reach.problem
        server = server_name(self.session.client.server)
        if problem is not None:
            text = problem.sentence
            if state is DaemonState.paused:
                text = f"Syncing paused. {text}"
            tooltip = f"{problem.detail}\nCheckpoints wait and are sent when it is back."
            self.state_label.setStyleSheet("color: #b00020;")
        elif not self.reach.known and state in (DaemonState.idle, DaemonState.syncing):
            text, tooltip = f"Connecting to {server} …", ""
            self.state_label.setStyleSheet("")
        else:
            text = _STATE_TEXT.get(state, state.value)
            tooltip = message
            if state is DaemonState.error and message:
                text = f"{text}: {message.splitlines()[0][:80]}"
            self.state_label.setStyleSheet("")
        self.state_label.setText(text)
        self.state_label.setToolTip(tooltip)

    def _reach_changed(self, problem: PlainError | None) -> None:
        self.tray.set_server_problem(problem.sentence if problem is not None else None)
        self.start_server_button.setVisible(
            problem is not None and problem.unreachable and is_local(self.session.client.server)
        )
        self.start_server_button.setEnabled(True)
        self._show_state(*self._daemon_state)

    def start_local_server(self) -> None:
        """Start the LMVP server on this machine the app logs in to ("Start it")."""
        server = LocalServer.for_url(self.session.client.server)
        if server is None:
            return
        self.start_server_button.setEnabled(False)
        self.state_label.setText(f"Starting the LMVP server at {server_name(server.url)} …")

        def started(_none: object) -> None:
            self.session.local_server = server  # stopped when the app quits
            self.settings.local_server = True
            self.reach.check()
            self.history.details.show_message(f"Started the LMVP server at {server.url}")
            self.history.refresh()

        def failed(exc: BaseException) -> None:
            self.start_server_button.setEnabled(True)
            self.state_label.setText(getattr(exc, "message", None) or str(exc))

        run_async(server.start, on_done=started, on_error=failed, owner=self)

    def _notified(self, title: str, body: str) -> None:
        if not self.tray.available:
            self.statusBar().showMessage(status_line(title, body), 10_000)

    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        settings = QAction("&Settings ...", self)
        settings.triggered.connect(self.open_settings)
        file_menu.addAction(settings)
        logout = QAction("Log &out", self)
        logout.triggered.connect(self.log_out)
        file_menu.addAction(logout)
        file_menu.addSeparator()
        quit_action = QAction("&Quit", self)
        quit_action.setShortcut("Ctrl+Q")
        quit_action.triggered.connect(self.quit)
        file_menu.addAction(quit_action)

        project_menu = self.menuBar().addMenu("&Project")
        for text, slot in (
            ("&Get started …", self.get_started),
            ("New &project …", self.new_project),
            ("New &model …", self.new_model),
            ("M&embers …", self.open_members),
            ("Personal API &tokens …", self.open_tokens),
            (None, None),
            ("&Delete model …", self.ask_delete_model),
        ):
            if text is None:
                project_menu.addSeparator()
                continue
            action = QAction(text, self)
            action.triggered.connect(slot)
            project_menu.addAction(action)

        sync_menu = self.menuBar().addMenu("&Sync")
        self.pause_action = QAction("&Pause syncing", self)
        self.pause_action.setCheckable(True)
        self.pause_action.setChecked(self.session.daemon.paused)
        self.pause_action.toggled.connect(self._toggle_pause)
        sync_menu.addAction(self.pause_action)
        sync_menu.addAction(self.demo_status.again_action)  # shown only with a demo
        self.bridge.state_changed.connect(
            lambda state, _message: self.pause_action.setChecked(state is DaemonState.paused)
        )

    # --- managing the server -----------------------------------------------------------------

    def _open(self, dialog: QWidget) -> None:
        if self.dialog is not None:
            self.dialog.close()
        self.dialog = dialog
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.destroyed.connect(lambda _o=None: self._forget_dialog(dialog))
        dialog.show()
        dialog.raise_()

    def _forget_dialog(self, dialog: QWidget) -> None:
        if self.dialog is dialog:
            self.dialog = None
        if self._offered_guide is dialog:
            self._offered_guide = None

    def _offer_guide(self) -> None:
        """On the first start against a server without a project, open the guide once; close
        it again, untouched, when projects appear (a teammate added this person to one, or
        something else made one): it says "You are in no project on this server yet"."""
        if self.history.tree_model.rowCount() > 0:
            guide = self._offered_guide
            if guide is not None and self.dialog is guide and guide.untouched:
                guide.close()
                self.statusBar().showMessage(
                    "You are in a project now: the guide closed (Project → Get started… opens "
                    "it again)",
                    15_000,
                )
            return
        if self._guide_offered:
            return
        self._guide_offered = True
        self._offered_guide = self.get_started()

    def get_started(self) -> GettingStartedDialog:
        """The first-start guide: a project, a model and a watched folder in one dialog."""
        dialog = GettingStartedDialog(self.session.client, self.sync_panel.add_watch_for, self)
        dialog.ready.connect(self._created_model)
        self._open(dialog)
        return dialog

    def new_project(self) -> None:
        dialog = NewProjectDialog(self.session.client, self)

        def created() -> None:
            project = dialog.result_value
            self.history.refresh()
            self.statusBar().showMessage(
                f"Created the project {project.name}: add a model with Project → New model…",
                15_000,
            )

        dialog.accepted.connect(created)
        self._open(dialog)

    def new_model(self) -> None:
        tree = self.history.tree_model
        projects = [
            tree.item(row).text()
            for row in range(tree.rowCount())
            if tree.role_of(tree.item(row).text()) not in (None, "viewer")
        ]
        dialog = NewModelDialog(self.session.client, projects, self, project=self.history.project)
        dialog.accepted.connect(
            lambda: self._created_model(dialog.result_value.project, dialog.result_value.name)
        )
        self._open(dialog)

    def _created_model(self, project: str, model: str) -> None:
        self.history.refresh()
        self.tabs.setCurrentIndex(0)
        self.show_model(project, model)

    def open_members(self) -> None:
        project = self.history.project or self._first_project()
        if project is None:
            self.statusBar().showMessage("Create a project first (Project → New project…)", 10_000)
            return
        dialog = MembersDialog(self.session.client, project, self)
        dialog.changed.connect(self.history.refresh)
        self._open(dialog)

    def open_tokens(self) -> None:
        self._open(TokensDialog(self.session.client, self))

    def ask_delete_model(self) -> None:
        """Ask, saying what goes, then delete the model shown (maintainers)."""
        project, model = self.history.project, self.history.model
        if project is None or model is None:
            self.statusBar().showMessage("Select the model to delete first", 10_000)
            return
        count = self.history.versions.rowCount()
        loaded = "" if self.history.versions.all_loaded() else " or more"
        text = (
            f"Delete the model {project}/{model} with all its {count}{loaded} versions, their "
            "aliases and runs? Files that no other model's versions share go too. This cannot "
            "be undone."
        )
        self.dialog = confirm(
            self, "Delete model", text, "Delete model", lambda: self._delete_model(project, model)
        )

    def _delete_model(self, project: str, model: str) -> None:
        def done(_none: object) -> None:
            self.statusBar().showMessage(f"Deleted the model {project}/{model}", 10_000)
            self.history.refresh()

        run_async(
            self.session.client.delete_model,
            f"{project}/{model}",
            on_done=done,
            on_error=self.history.details.show_error,
            owner=self,
        )

    def _first_project(self) -> str | None:
        tree = self.history.tree_model
        return tree.item(0).text() if tree.rowCount() else None

    def _toggle_pause(self, paused: bool) -> None:
        # The daemon's loop applies it; its state event then checks the action (no-op here).
        daemon = self.session.daemon
        if paused and daemon.state is not DaemonState.paused:
            daemon.pause()
        elif not paused and daemon.state is DaemonState.paused:
            daemon.resume()

    def open_settings(self) -> None:
        dialog = SettingsDialog(self.settings, self.session.daemon, self)
        dialog.logout_requested.connect(self.log_out)
        dialog.exec()

    def log_out(self) -> None:
        """Forget the stored token and quit; the next start asks to log in."""
        credentials.forget_login(self.session.client.server)
        self.quit()


__all__ = ["MainWindow"]
