"""Managing a team's server from the app, through the public client API only: the first-start
guide (a project, a model and a watched folder in one dialog), new projects and models, the
members of a project with their roles, personal API tokens (the secret shown once), and
deleting a model. The server checks the roles (the API's), so a refusal comes back as a
sentence in the dialog.

Each dialog runs its `lmvp.Client` calls off the UI thread (`run_async`) and shows errors with
an `ErrorBox`; questions whose answer destroys something say what goes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

import lmvp
from lmvp.errors import Conflict
from lmvp_desktop.errors import ErrorBox, explain
from lmvp_desktop.tasks import run_async

log = logging.getLogger(__name__)

ROLES = ("viewer", "contributor", "maintainer", "owner")
TOKEN_SCOPES = ("read", "write")


class _TaskDialog(QDialog):
    """A form with an error box and an action button that runs one client call in the
    background; the dialog closes (accepted) when it succeeds."""

    def __init__(self, client: lmvp.Client, title: str, action: str, parent: QWidget | None):
        super().__init__(parent)
        self.setWindowTitle(title)
        self.setMinimumWidth(460)
        self.client = client
        self.form = QFormLayout()
        self.error_box = ErrorBox()
        self.buttons = QDialogButtonBox()
        self.ok_button = self.buttons.addButton(action, QDialogButtonBox.ButtonRole.AcceptRole)
        self.buttons.addButton(QDialogButtonBox.StandardButton.Cancel)
        self.buttons.accepted.connect(self.run)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(self.form)
        layout.addWidget(self.error_box)
        layout.addWidget(self.buttons)
        self.result_value: Any = None

    def work(self) -> Callable[[], Any] | None:
        """The call to make (run off the UI thread), or None when the form is incomplete."""
        raise NotImplementedError

    def run(self) -> None:
        call = self.work()
        if call is None:
            return
        self.ok_button.setEnabled(False)
        self.error_box.show_error(None)
        run_async(call, on_done=self._done, on_error=self._failed, owner=self)

    def _done(self, value: Any) -> None:
        self.result_value = value
        self.ok_button.setEnabled(True)
        self.succeeded(value)

    def succeeded(self, _value: Any) -> None:
        self.accept()

    def _failed(self, exc: BaseException) -> None:
        self.ok_button.setEnabled(True)
        self.error_box.show_error(explain(exc, self.client.server))

    def _say(self, sentence: str) -> None:
        self.error_box.show_error(explain(sentence))


def _line(text: str = "", placeholder: str = "", name: str = "") -> QLineEdit:
    edit = QLineEdit(text)
    edit.setPlaceholderText(placeholder)
    if name:
        edit.setAccessibleName(name)
    return edit


class NewProjectDialog(_TaskDialog):
    """Creates a project (the creator is its owner). `result_value` is the `lmvp.Project`."""

    def __init__(self, client: lmvp.Client, parent: QWidget | None = None) -> None:
        super().__init__(client, "New project", "Create project", parent)
        self.name_edit = _line(placeholder="e.g. vision", name="Project name")
        self.description_edit = _line(name="Project description")
        self.form.addRow("Name", self.name_edit)
        self.form.addRow("Description", self.description_edit)

    def work(self) -> Callable[[], Any] | None:
        name, description = self.name_edit.text().strip(), self.description_edit.text().strip()
        if not name:
            self._say("Give the project a name.")
            return None
        return lambda: self.client.create_project(name, description=description)


class NewModelDialog(_TaskDialog):
    """Creates a model in one of the projects the user may write to."""

    def __init__(
        self,
        client: lmvp.Client,
        projects: list[str],
        parent: QWidget | None = None,
        *,
        project: str | None = None,
    ) -> None:
        super().__init__(client, "New model", "Create model", parent)
        self.project_combo = QComboBox()
        self.project_combo.setAccessibleName("Project")
        self.project_combo.addItems(projects)
        if project in projects:
            self.project_combo.setCurrentText(project)
        self.name_edit = _line(placeholder="e.g. resnet", name="Model name")
        self.description_edit = _line(name="Model description")
        self.form.addRow("Project", self.project_combo)
        self.form.addRow("Name", self.name_edit)
        self.form.addRow("Description", self.description_edit)
        if not projects:
            self._say("Create a project first (Project → New project…).")
            self.ok_button.setEnabled(False)

    @property
    def ref(self) -> str:
        return f"{self.project_combo.currentText()}/{self.name_edit.text().strip()}"

    def work(self) -> Callable[[], Any] | None:
        name = self.name_edit.text().strip()
        if not name:
            self._say("Give the model a name.")
            return None
        ref, description = self.ref, self.description_edit.text().strip()
        return lambda: self.client.create_model(ref, description=description)


class GettingStartedDialog(_TaskDialog):
    """The first start on a server with no project: a project, a model and the folder a
    training job writes its checkpoints into, in one step. After it succeeded, `watch(folder,
    project, model)` was called (the sync panel adds the watch) and `ready(project, model)`
    emitted."""

    ready = Signal(str, str)

    def __init__(
        self,
        client: lmvp.Client,
        watch: Callable[[str, str, str], None],
        parent: QWidget | None = None,
        *,
        pick_folder: Callable[[QWidget], str | None] | None = None,
    ) -> None:
        super().__init__(client, "Get started with LMVP", "Create and watch", parent)
        self._watch = watch
        self._pick_folder = pick_folder or _pick_folder
        intro = QLabel(
            "You are in no project on this server yet. Name a project and a model, and choose "
            "the folder your training job writes checkpoints into: each checkpoint saved there "
            "becomes a version of the model. (To join a teammate's project, ask its owner to "
            "add you.)"
        )
        intro.setWordWrap(True)
        self.form.addRow(intro)
        self.project_edit = _line("my-project", name="Project name")
        self.model_edit = _line("my-model", name="Model name")
        self.folder_edit = _line(placeholder="a folder of checkpoints", name="Folder to watch")
        browse = QPushButton("Browse…")
        browse.setAccessibleName("Choose the folder to watch")
        browse.clicked.connect(self._browse)
        folder_row = QHBoxLayout()
        folder_row.addWidget(self.folder_edit, 1)
        folder_row.addWidget(browse)
        self.form.addRow("Project", self.project_edit)
        self.form.addRow("Model", self.model_edit)
        self.form.addRow("Folder", folder_row)
        # Untouched until the person types (or a screen reader sets text), browses or runs it:
        # an untouched guide may be closed when it is no longer needed.
        self.untouched = True
        for edit in (self.project_edit, self.model_edit, self.folder_edit):
            edit.textChanged.connect(self._touch)
        browse.clicked.connect(self._touch)
        self.ok_button.clicked.connect(self._touch)

    def _touch(self) -> None:
        self.untouched = False

    def work(self) -> Callable[[], Any] | None:
        project, model = self.project_edit.text().strip(), self.model_edit.text().strip()
        folder = self.folder_edit.text().strip()
        if not project or not model:
            self._say("Give a project and a model name.")
            return None
        if folder and not Path(folder).expanduser().is_dir():
            self._say(f"{folder} is not a folder: create it first, or choose another.")
            return None

        def create() -> tuple[str, str, str]:
            with contextlib.suppress(Conflict):  # it exists: use it
                self.client.create_project(project)
            self.client.ensure_model(f"{project}/{model}")
            return project, model, folder

        return create

    def succeeded(self, value: Any) -> None:
        project, model, folder = value
        if folder:
            self._watch(str(Path(folder).expanduser()), project, model)
        self.ready.emit(project, model)
        self.accept()

    def _browse(self) -> None:
        folder = self._pick_folder(self)
        if folder:
            self.folder_edit.setText(folder)


def _pick_folder(parent: QWidget) -> str | None:
    return QFileDialog.getExistingDirectory(parent, "Folder to watch for checkpoints") or None


def confirm(
    parent: QWidget, title: str, text: str, action: str, yes: Callable[[], None]
) -> QMessageBox:
    """Ask `text` with the buttons `action` and Cancel (Cancel the default); `yes()` runs on
    `action`. Returns the open box (tests answer it)."""
    box = QMessageBox(QMessageBox.Icon.Question, title, text, parent=parent)
    box.setWindowModality(Qt.WindowModality.WindowModal)
    button = box.addButton(action, QMessageBox.ButtonRole.AcceptRole)
    box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(QMessageBox.StandardButton.Cancel)

    def answered() -> None:
        if box.clickedButton() is button:
            yes()
        box.deleteLater()

    box.finished.connect(lambda _result: answered())
    box.open()
    return box


class MembersDialog(QDialog):
    """The members of a project with their roles; owners (and admins) add people by name with
    a role, change roles and remove members. The server refuses what the user's role does not
    allow, and the dialog says so."""

    changed = Signal()

    def __init__(self, client: lmvp.Client, project: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"Members of {project}")
        self.setMinimumWidth(480)
        self.client = client
        self.project = project
        self.confirmation: QMessageBox | None = None
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["Member", "Role"])
        self.table.setAccessibleName("Members")
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.username_edit = _line(placeholder="username", name="Username to add")
        self.role_combo = QComboBox()
        self.role_combo.setAccessibleName("Role")
        self.role_combo.addItems(ROLES)
        self.role_combo.setCurrentText("contributor")
        self.add_button = QPushButton("Add or change")
        self.add_button.clicked.connect(self.add_member)
        self.remove_button = QPushButton("Remove…")
        self.remove_button.clicked.connect(self._ask_remove)
        self.error_box = ErrorBox()
        self.message = QLabel()
        row = QHBoxLayout()
        row.addWidget(self.username_edit, 1)
        row.addWidget(self.role_combo)
        row.addWidget(self.add_button)
        close = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        close.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.table)
        layout.addWidget(self.remove_button, 0, Qt.AlignmentFlag.AlignLeft)
        layout.addLayout(row)
        layout.addWidget(self.message)
        layout.addWidget(self.error_box)
        layout.addWidget(close)
        self.refresh()

    def refresh(self) -> None:
        run_async(
            self.client.members, self.project, on_done=self._show, on_error=self._failed, owner=self
        )

    def members(self) -> list[tuple[str, str]]:
        """(username, role) as the table shows them."""
        return [(self._cell(row, 0), self._cell(row, 1)) for row in range(self.table.rowCount())]

    def add_member(self) -> None:
        """Give the typed username the chosen role in the project (adds or changes)."""
        username, role = self.username_edit.text().strip(), self.role_combo.currentText()
        if not username:
            self.error_box.show_error(explain("Type the username of the person to add."))
            return
        run_async(
            self.client.set_member,
            self.project,
            username,
            role,
            on_done=lambda m: self._changed(f"{m.username} is now {m.role} of {self.project}"),
            on_error=self._failed,
            owner=self,
        )

    def remove_member(self, username: str) -> None:
        run_async(
            self.client.remove_member,
            self.project,
            username,
            on_done=lambda _n: self._changed(f"removed {username} from {self.project}"),
            on_error=self._failed,
            owner=self,
        )

    def _ask_remove(self) -> None:
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            self.error_box.show_error(explain("Select the member to remove."))
            return
        username = self._cell(rows[0].row(), 0)
        self.confirmation = confirm(
            self,
            "Remove member",
            f"Remove {username} from {self.project}? They can no longer read or write its "
            "models; their versions stay.",
            "Remove",
            lambda: self.remove_member(username),
        )

    def _cell(self, row: int, column: int) -> str:
        item = self.table.item(row, column)
        return item.text() if item is not None else ""

    def _show(self, members: list[lmvp.Member]) -> None:
        self.table.setRowCount(len(members))
        for row, m in enumerate(sorted(members, key=lambda m: m.username)):
            self.table.setItem(row, 0, QTableWidgetItem(m.username))
            self.table.setItem(row, 1, QTableWidgetItem(m.role))

    def _changed(self, text: str) -> None:
        self.error_box.show_error(None)
        self.message.setText(text)
        self.username_edit.clear()
        self.changed.emit()
        self.refresh()

    def _failed(self, exc: BaseException) -> None:
        self.error_box.show_error(explain(exc, self.client.server))


class TokensDialog(QDialog):
    """The user's personal API tokens: create one (name, scope, expiry; its secret shown once,
    to copy), and revoke one after a question."""

    def __init__(self, client: lmvp.Client, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Personal API tokens")
        self.setMinimumWidth(560)
        self.client = client
        self.confirmation: QMessageBox | None = None
        self.tokens: list[lmvp.Token] = []
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["Name", "Scope", "Expires", "Last used"])
        self.table.setAccessibleName("Tokens")
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.name_edit = _line(placeholder="what it is for, e.g. CI", name="Token name")
        self.scope_combo = QComboBox()
        self.scope_combo.setAccessibleName("Scope")
        self.scope_combo.addItems(TOKEN_SCOPES)
        self.scope_combo.setCurrentText("write")
        self.days_spin = QSpinBox()
        self.days_spin.setAccessibleName("Expires after days")
        self.days_spin.setRange(0, 3650)
        self.days_spin.setValue(90)
        self.days_spin.setSpecialValueText("never")
        self.days_spin.setSuffix(" days")
        self.create_button = QPushButton("Create token")
        self.create_button.clicked.connect(self.create_token)
        self.revoke_button = QPushButton("Revoke…")
        self.revoke_button.clicked.connect(self._ask_revoke)
        self.secret_edit = QLineEdit()
        self.secret_edit.setReadOnly(True)
        self.secret_edit.setAccessibleName("New token")
        self.secret_note = QLabel()
        self.secret_note.setWordWrap(True)
        self.error_box = ErrorBox()
        form = QFormLayout()
        form.addRow("Name", self.name_edit)
        form.addRow("Scope", self.scope_combo)
        form.addRow("Expires after", self.days_spin)
        form.addRow("", self.create_button)
        close = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        close.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.table)
        layout.addWidget(self.revoke_button, 0, Qt.AlignmentFlag.AlignLeft)
        layout.addLayout(form)
        layout.addWidget(self.secret_note)
        layout.addWidget(self.secret_edit)
        layout.addWidget(self.error_box)
        layout.addWidget(close)
        self.secret_edit.hide()
        self.refresh()

    def refresh(self) -> None:
        run_async(self.client.tokens, on_done=self._show, on_error=self._failed, owner=self)

    def create_token(self) -> None:
        name = self.name_edit.text().strip()
        days = self.days_spin.value() or None
        run_async(
            self.client.create_token,
            name,
            scope=self.scope_combo.currentText(),
            expires_in_days=days,
            on_done=self._created,
            on_error=self._failed,
            owner=self,
        )

    def revoke(self, token_id: int) -> None:
        run_async(
            self.client.revoke_token,
            token_id,
            on_done=lambda _n: self.refresh(),
            on_error=self._failed,
            owner=self,
        )

    def _ask_revoke(self) -> None:
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            self.error_box.show_error(explain("Select the token to revoke."))
            return
        token = self.tokens[rows[0].row()]
        self.confirmation = confirm(
            self,
            "Revoke token",
            f"Revoke the token '{token.name or token.prefix}'? Whatever uses it (a script, CI) "
            "is refused from now on.",
            "Revoke",
            lambda: self.revoke(token.id),
        )

    def _created(self, token: lmvp.Token) -> None:
        self.error_box.show_error(None)
        self.secret_edit.setText(token.secret or "")
        self.secret_edit.show()
        self.secret_edit.selectAll()
        expiry = f"expires {token.expires_at:%Y-%m-%d}" if token.expires_at else "never expires"
        self.secret_note.setText(
            f"The new {token.scope} token ({expiry}). Copy it now: it is shown only once. "
            "Use it as LMVP_TOKEN."
        )
        self.name_edit.clear()
        self.refresh()

    def _show(self, tokens: list[lmvp.Token]) -> None:
        self.tokens = [t for t in tokens if t.revoked_at is None]
        self.table.setRowCount(len(self.tokens))
        for row, t in enumerate(self.tokens):
            expires = f"{t.expires_at:%Y-%m-%d}" if t.expires_at else "never"
            used = f"{t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "never"
            for column, text in enumerate((t.name or t.prefix, t.scope, expires, used)):
                self.table.setItem(row, column, QTableWidgetItem(text))

    def _failed(self, exc: BaseException) -> None:
        self.error_box.show_error(explain(exc, self.client.server))


__all__ = [
    "ROLES",
    "GettingStartedDialog",
    "MembersDialog",
    "NewModelDialog",
    "NewProjectDialog",
    "TokensDialog",
    "confirm",
]
