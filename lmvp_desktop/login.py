"""The first-start dialog: log in to a team's server, or start a local server for one person.

`LoginDialog` asks for the server's address, a username and a password, logs in off the UI
thread and stores the new token with `lmvp.credentials.save_login` (the system keyring, or a
0600 file where none works), so later starts skip the dialog. "Start a local server" runs
`lmvp-server` on this machine (`LocalServer`) and logs in as its admin. After `exec()` returns
Accepted, `client` is a logged-in `lmvp.Client` and `local_server` the server it started, if any.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

import lmvp
from lmvp.credentials import normalize_server, save_login
from lmvp_desktop.errors import ErrorBox, explain
from lmvp_desktop.local_server import LocalServer
from lmvp_desktop.tasks import run_async

log = logging.getLogger(__name__)


class LoginDialog(QDialog):
    """Log in (server, username, password) or start a local server."""

    def __init__(
        self,
        server: str = "",
        parent: QWidget | None = None,
        *,
        local_server: Callable[[], LocalServer] = LocalServer,
        error: BaseException | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("LMVP: log in")
        self.client: lmvp.Client | None = None
        self.local_server: LocalServer | None = None
        self._make_local_server = local_server

        self.server = QLineEdit(server or "http://127.0.0.1:8470")
        self.username = QLineEdit()
        self.password = QLineEdit()
        self.password.setEchoMode(QLineEdit.EchoMode.Password)
        form = QFormLayout()
        form.addRow("Server", self.server)
        form.addRow("Username", self.username)
        form.addRow("Password", self.password)

        self.message = QLabel()
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        # An error: a sentence, the technical detail behind "Details".
        self.error_box = ErrorBox()
        self.busy = QProgressBar()
        self.busy.setRange(0, 0)  # an indeterminate bar while a request runs
        self.busy.hide()

        buttons = QDialogButtonBox()
        self.login_button = buttons.addButton("Log in", QDialogButtonBox.ButtonRole.AcceptRole)
        self.local_button = QPushButton("Start a local server")
        self.local_button.setToolTip(
            "For one person on this machine: runs an LMVP server here and logs in as its admin"
        )
        buttons.addButton(self.local_button, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.addButton(QDialogButtonBox.StandardButton.Cancel)
        buttons.rejected.connect(self.reject)
        self.login_button.clicked.connect(self.log_in)
        self.local_button.clicked.connect(self.start_local_server)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.message)
        layout.addWidget(self.error_box)
        layout.addWidget(self.busy)
        layout.addWidget(buttons)
        self.password.returnPressed.connect(self.log_in)
        if error is not None:
            self._failed(error)

    def log_in(self) -> None:
        """Log in with the fields' values (off the UI thread)."""
        server = normalize_server(self.server.text())
        username, password = self.username.text().strip(), self.password.text()
        if not username or not password:
            self._show_error("Give a username and a password.")
            return
        self._busy(True, f"Logging in to {server} ...")
        run_async(
            lmvp.Client.login,
            server,
            username,
            password,
            label="lmvp desktop",
            on_done=self._logged_in,
            on_error=self._failed,
            owner=self,
        )

    def start_local_server(self) -> None:
        """Start (or reuse) a server on this machine and log in as its admin."""
        server = self._make_local_server()
        self._busy(True, "Starting a local server ...")

        def start() -> lmvp.Client:
            server.start()
            return server.admin_login()

        def started(client: lmvp.Client) -> None:
            self.local_server = server
            self._logged_in(client)

        run_async(start, on_done=started, on_error=self._failed, owner=self)

    def _logged_in(self, client: lmvp.Client) -> None:
        assert client.token is not None
        where = save_login(client.server, client.token)
        log.info("logged in to %s; the token is in %s", client.server, where)
        self.client = client
        self._busy(False, "")
        self.accept()

    def _failed(self, exc: BaseException) -> None:
        self._busy(False, "")
        error = explain(exc, normalize_server(self.server.text() or "http://127.0.0.1:8470"))
        if error.unreachable:
            error = type(error)(
                f"{error.sentence} Start a local server, or give another server's address.",
                error.detail,
                error.unreachable,
            )
        self.error_box.show_error(error)

    def _show_error(self, message: str) -> None:
        self.error_box.show_error(explain(message))

    def _busy(self, busy: bool, message: str) -> None:
        self.busy.setVisible(busy)
        for widget in (self.login_button, self.local_button, self.server, self.username):
            widget.setEnabled(not busy)
        self.message.setText(message)
        if busy:
            self.error_box.show_error(None)


__all__ = ["LoginDialog"]
