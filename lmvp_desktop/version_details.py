"""The selected version's side of the model history: `VersionDetails` shows one version (its
fields, files, metadata and metrics) and the actions on it: download it into a folder with the
progress bar following (`DownloadProgress`), copy its `lmvp.download(...)` line, and point an
alias at it (maintainers and owners). Its `lmvp.Client` calls run off the UI thread
(`run_async`). Its message line also shows what the history pane around it has to tell.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGridLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

import lmvp
from lmvp.history import human_size
from lmvp_desktop.errors import ErrorBox, explain
from lmvp_desktop.manage import confirm
from lmvp_desktop.tasks import run_async
from lmvp_desktop.version_columns import version_step

# Roles that may move aliases.
ALIAS_ROLES = frozenset({"maintainer", "owner"})
# The progress bar counts in thousandths: QProgressBar's int would overflow at 2 GiB of bytes.
_PROGRESS_STEPS = 1000


class VersionDetails(QWidget):
    """One version's details and the actions on it. See the module docstring.

    Signals: `download_finished(Path)`, `download_failed(message)`, `alias_set(alias, number)`,
    `alias_removed(alias)`, `version_deleted(number)`.
    """

    download_finished = Signal(object)  # pathlib.Path
    download_failed = Signal(str)
    alias_set = Signal(str, int)
    alias_removed = Signal(str)
    version_deleted = Signal(int)

    def __init__(self, client: lmvp.Client, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._client = client
        self._role: str | None = None
        self._current: lmvp.Version | None = None
        self._downloading = False
        self._download_dir_provider: Callable[[], str | Path | None] = self._ask_download_dir
        self._more_buttons: list[tuple[QPushButton, Callable[[], bool]]] = []

        self.title_label = QLabel()
        self.title_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.fields: dict[str, QLabel] = {}
        form = QFormLayout()
        for name in (
            "Created",
            "Author",
            "Message",
            "Size",
            "Parent",
            "Aliases",
            "Source host",
            "Source folder",
            "Run",
            "Step",
        ):
            label = QLabel()
            label.setWordWrap(True)
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            self.fields[name] = label
            form.addRow(f"{name}:", label)

        self.files_table = QTableWidget(0, 3)
        self.files_table.setHorizontalHeaderLabels(["File", "Size", "sha256"])
        self.files_table.verticalHeader().setVisible(False)
        self.files_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.files_table.horizontalHeader().setStretchLastSection(True)
        self.metadata_view = QPlainTextEdit()
        self.metadata_view.setReadOnly(True)

        self.download_button = QPushButton("Download…")
        self.download_button.clicked.connect(self.download_selected)
        self.copy_button = QPushButton("Copy download line")
        self.copy_button.clicked.connect(self.copy_download_line)
        self.alias_button = QPushButton("Set alias…")
        self.alias_button.clicked.connect(self._ask_alias)
        self.remove_alias_button = QPushButton("Remove alias…")
        self.remove_alias_button.clicked.connect(self._ask_remove_alias)
        self.delete_button = QPushButton("Delete version…")
        self.delete_button.clicked.connect(self.ask_delete)
        # The confirmation shown last (tests answer it), None when none is open.
        self.confirmation: QMessageBox | None = None
        # Two buttons a row: the pane stays narrow enough for the table beside it on 1366 px.
        self._buttons = QGridLayout()
        self._button_count = 0
        for button in (
            self.download_button,
            self.copy_button,
            self.alias_button,
            self.remove_alias_button,
            self.delete_button,
        ):
            self._add_to_row(button)
        self.files_table.setAccessibleName("Files")
        self.metadata_view.setAccessibleName("Metadata and metrics")

        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.progress.setAccessibleName("Download progress")
        self.message_label = QLabel()
        self.message_label.setWordWrap(True)
        self.message_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error_box = ErrorBox()

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.title_label)
        # The fields scroll when the pane is short: the window must fit a 768-pixel screen.
        fields = QWidget()
        fields.setLayout(form)
        self.fields_area = QScrollArea()
        self.fields_area.setWidget(fields)
        self.fields_area.setWidgetResizable(True)
        self.fields_area.setFrameShape(QFrame.Shape.NoFrame)
        self.fields_area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        layout.addWidget(self.fields_area, 3)
        layout.addWidget(QLabel("Files:"))
        layout.addWidget(self.files_table, 2)
        layout.addWidget(QLabel("Metadata and metrics:"))
        layout.addWidget(self.metadata_view, 2)
        layout.addLayout(self._buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.message_label)
        layout.addWidget(self.error_box)

        self.show_version(None)

    # --- public API ------------------------------------------------------------------------

    @property
    def version(self) -> lmvp.Version | None:
        """The version whose details are shown."""
        return self._current

    def show_version(self, v: lmvp.Version | None) -> None:
        """Show `v` (None: no version) and enable the actions it allows."""
        self._current = v
        if v is None:
            self.title_label.setText("<i>No version selected</i>")
            for label in self.fields.values():
                label.clear()
            self.files_table.setRowCount(0)
            self.metadata_view.clear()
            self.update_actions()
            return
        self.title_label.setText(f"<b>{v.project}/{v.model}</b> version <b>{v.number}</b>")
        step = version_step(v)
        values = {
            "Created": v.created_at.astimezone().strftime("%Y-%m-%d %H:%M:%S"),
            "Author": v.author or "—",
            "Message": v.message or "—",
            "Size": f"{human_size(v.size)} in {len(v.files)} file(s)",
            "Parent": f"v{v.parent}" if v.parent is not None else "— (first of its line)",
            "Aliases": ", ".join(v.aliases) or "—",
            "Source host": v.source_host or "—",
            "Source folder": v.source_path or "—",
            "Run": str(v.run) if v.run is not None else "—",
            "Step": str(step) if step is not None else "—",
        }
        for name, text in values.items():
            self.fields[name].setText(text)
        self.files_table.setRowCount(len(v.files))
        for row, entry in enumerate(v.files):
            size = QTableWidgetItem(human_size(entry.size))
            size.setToolTip(f"{entry.size:,} bytes")
            size.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            digest = QTableWidgetItem(entry.sha256[:16] + "…")
            digest.setToolTip(entry.sha256)
            self.files_table.setItem(row, 0, QTableWidgetItem(entry.path))
            self.files_table.setItem(row, 1, size)
            self.files_table.setItem(row, 2, digest)
        self.files_table.resizeColumnToContents(0)
        self.metadata_view.setPlainText(
            json.dumps(
                {"metadata": v.metadata, "metrics": v.metrics},
                indent=2,
                sort_keys=True,
                default=str,
            )
        )
        self.update_actions()

    def set_role(self, role: str | None) -> None:
        """The user's role in the project of the versions shown (None: not known yet), which
        says whether they may set aliases."""
        self._role = role
        self.update_actions()

    def add_button(self, button: QPushButton, enabled: Callable[[], bool]) -> None:
        """Put a button of the pane's own at the end of the row of actions, enabled while
        `enabled()` says so (asked now and whenever the actions are updated)."""
        self._add_to_row(button)
        self._more_buttons.append((button, enabled))
        button.setEnabled(enabled())

    def _add_to_row(self, button: QPushButton) -> None:
        self._buttons.addWidget(button, self._button_count // 2, self._button_count % 2)
        self._button_count += 1

    def update_actions(self) -> None:
        """Enable the actions the version shown, the user's role and a running download allow,
        and the pane's buttons as their `enabled()` says."""
        one = self._current is not None
        self.download_button.setEnabled(one and not self._downloading)
        self.copy_button.setEnabled(one)
        self.alias_button.setEnabled(one and self._role in ALIAS_ROLES)
        self.alias_button.setToolTip(
            "" if self._role in ALIAS_ROLES else "Maintainers and owners set aliases"
        )
        aliases = bool(self._current is not None and self._current.aliases)
        self.remove_alias_button.setEnabled(aliases and self._role in ALIAS_ROLES)
        self.delete_button.setEnabled(one and self._role in ALIAS_ROLES)
        self.delete_button.setToolTip(
            "" if self._role in ALIAS_ROLES else "Maintainers and owners delete versions"
        )
        for button, enabled in self._more_buttons:
            button.setEnabled(enabled())

    def show_message(self, text: str) -> None:
        """Show `text` on the message line (and no error)."""
        self.message_label.setStyleSheet("")
        self.message_label.setText(text)
        self.error_box.show_error(None)

    def show_error(self, error: BaseException | str) -> None:
        """Show an error as a sentence, its technical detail behind "Details"."""
        self.message_label.setText("")
        self.error_box.show_error(explain(error, self._client.server))

    def set_download_dir_provider(self, provider: Callable[[], str | Path | None]) -> None:
        """Use `provider()` instead of a folder dialog to choose where downloads go (None
        cancels)."""
        self._download_dir_provider = provider

    def download_selected(self) -> None:
        """Download the version shown into a folder from the download-dir provider, in the
        background, with the progress bar following it."""
        version = self._current
        if version is None:
            return
        folder = self._download_dir_provider()
        if not folder:
            return
        self.progress.setRange(0, _PROGRESS_STEPS)
        self.progress.setValue(0)
        self.progress.setFormat("%p%")
        self.progress.setVisible(True)
        self._downloading = True
        self.update_actions()
        self.show_message(f"Downloading {version.ref} to {folder} …")
        tracker = DownloadProgress(self)
        tracker.fraction.connect(lambda f: self.progress.setValue(round(f * _PROGRESS_STEPS)))
        run_async(
            self._client.download,
            version.ref,
            local_dir=Path(folder),
            progress=tracker,
            on_done=lambda path: self._download_done(version, Path(path)),
            on_error=self._download_error,
            owner=self,
        )

    def copy_download_line(self) -> str | None:
        """Put `lmvp.download("project/model:N")` for the version shown on the clipboard; returns
        the line."""
        if self._current is None:
            return None
        line = f'lmvp.download("{self._current.ref}")'
        QGuiApplication.clipboard().setText(line)
        self.show_message(f"Copied: {line}")
        return line

    def confirm_alias(self, alias: str) -> None:
        """Ask before pointing `alias` at the version shown: the question says whether it is
        a new alias or moves one from another version (read from the server first)."""
        version = self._current
        alias = alias.strip()
        if version is None or not alias:
            return
        if alias in version.aliases:
            self.show_message(f"{alias} already points at v{version.number}")
            return

        def ask(aliases: list[lmvp.Alias]) -> None:
            if self._current is not version:
                return
            now = next((a.version for a in aliases if a.name == alias), None)
            ref = f"{version.project}/{version.model}"
            if now is None:
                text = f"Point the new alias '{alias}' at v{version.number} of {ref}?"
                action = "Set alias"
            else:
                text = (
                    f"Move the alias '{alias}' of {ref} from v{now} to v{version.number}? "
                    f"Whoever downloads {ref}:{alias} then gets v{version.number}."
                )
                action = "Move alias"
            self._confirm("Set alias", text, action, lambda: self.set_alias(alias))

        run_async(
            self._client.aliases,
            f"{version.project}/{version.model}",
            on_done=ask,
            on_error=self.show_error,
            owner=self,
        )

    def remove_alias(self, alias: str) -> None:
        """Remove `alias` of the model shown (in the background, no question asked)."""
        version = self._current
        if version is None:
            return
        run_async(
            self._client.delete_alias,
            f"{version.project}/{version.model}",
            alias,
            on_done=lambda _none: self._alias_removed(alias),
            on_error=self.show_error,
            owner=self,
        )

    def ask_delete(self) -> None:
        """Ask, saying what goes, then delete the version shown."""
        version = self._current
        if version is None:
            return
        ref = f"{version.project}/{version.model}"
        files = len(version.files)
        text = (
            f"Delete v{version.number} of {ref}? Its {files} file{'s' if files != 1 else ''} "
            f"({human_size(version.size)}) go with it, unless another version has the same "
            "bytes"
        )
        if version.aliases:
            text += f"; its alias{'es' if len(version.aliases) > 1 else ''} "
            text += ", ".join(version.aliases) + " go too"
        text += f". The number v{version.number} is never given again."
        self._confirm("Delete version", text, "Delete", lambda: self.delete_version(version))

    def delete_version(self, version: lmvp.Version) -> None:
        """Delete `version` on the server (maintainers), in the background."""
        self.show_message(f"Deleting v{version.number} …")
        run_async(
            self._client.delete_version,
            f"{version.project}/{version.model}",
            version.number,
            on_done=lambda _none: self._deleted(version),
            on_error=self.show_error,
            owner=self,
        )

    def set_alias(self, alias: str) -> None:
        """Point `alias` at the version shown (in the background). The server's refusal (a
        viewer's role, a bad name) is shown on the message line."""
        version = self._current
        alias = alias.strip()
        if version is None or not alias:
            return
        model_ref = f"{version.project}/{version.model}"
        self.show_message(f"Setting {alias} → v{version.number} …")
        run_async(
            self._client.set_alias,
            model_ref,
            alias,
            version.number,
            on_done=lambda result: self._alias_done(result),
            on_error=self.show_error,
            owner=self,
        )

    # --- helpers ---------------------------------------------------------------------------

    def _ask_alias(self) -> None:
        if self._current is None:
            return
        dialog = QInputDialog(self)
        dialog.setWindowTitle("Set alias")
        dialog.setLabelText(f"Alias to point at version {self._current.number}:")
        dialog.setTextValue(self._current.aliases[0] if self._current.aliases else "")
        edit = dialog.findChild(QLineEdit)
        if edit is not None:
            edit.setAccessibleName("Alias")
        dialog.textValueSelected.connect(self.confirm_alias)
        dialog.finished.connect(dialog.deleteLater)
        dialog.open()  # not modal for the app: the UI keeps running

    def _ask_remove_alias(self) -> None:
        version = self._current
        if version is None or not version.aliases:
            return
        if len(version.aliases) == 1:
            self._confirm_remove(version.aliases[0])
            return
        alias, ok = QInputDialog.getItem(
            self, "Remove alias", "Alias to remove:", list(version.aliases), 0, False
        )
        if ok and alias:
            self._confirm_remove(alias)

    def _confirm_remove(self, alias: str) -> None:
        version = self._current
        if version is None:
            return
        ref = f"{version.project}/{version.model}"
        text = (
            f"Remove the alias '{alias}' from v{version.number} of {ref}? Downloads of "
            f"{ref}:{alias} stop working until it is set again."
        )
        self._confirm("Remove alias", text, "Remove alias", lambda: self.remove_alias(alias))

    def _confirm(self, title: str, text: str, action: str, yes: Callable[[], None]) -> None:
        """A question with `action` and Cancel; `yes()` runs on `action`."""
        if self.confirmation is not None:
            self.confirmation.close()
        self.confirmation = confirm(self, title, text, action, yes)
        self.confirmation.finished.connect(lambda _r: setattr(self, "confirmation", None))

    def _alias_removed(self, alias: str) -> None:
        self.show_message(f"removed the alias {alias}")
        self.alias_removed.emit(alias)

    def _deleted(self, version: lmvp.Version) -> None:
        self.show_message(f"deleted v{version.number} of {version.project}/{version.model}")
        self.version_deleted.emit(version.number)

    def _alias_done(self, alias: lmvp.Alias) -> None:
        self.show_message(f"{alias.name} → v{alias.version}")
        self.alias_set.emit(alias.name, alias.version)

    def _ask_download_dir(self) -> str | None:
        folder = QFileDialog.getExistingDirectory(self, "Download to folder")
        return folder or None

    def _download_done(self, version: lmvp.Version, path: Path) -> None:
        self.progress.setValue(_PROGRESS_STEPS)
        self.progress.setFormat("%p% — done")
        self.show_message(f"Downloaded {version.ref} to {path}")
        self._downloading = False
        self.update_actions()
        self.download_finished.emit(path)

    def _download_error(self, exc: BaseException) -> None:
        self.progress.setVisible(False)
        self._downloading = False
        self.update_actions()
        self.show_error(exc)
        self.download_failed.emit(str(exc))


class DownloadProgress(QObject):
    """The `progress` callable of `Client.download`: called with byte counts on the download's
    thread, it emits `fraction(float)` (0..1), which Qt delivers on the UI thread."""

    fraction = Signal(float)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._lock = threading.Lock()
        self._total = 0
        self._done = 0
        self._reported = -1.0

    def set_total(self, total: int) -> None:
        """The bytes the download will fetch (what the cache lacks)."""
        with self._lock:
            self._total = total

    def __call__(self, n: int) -> None:
        with self._lock:
            self._done += n
            fraction = min(1.0, self._done / self._total) if self._total else 1.0
            # At most one signal per thousandth: a big download makes thousands of calls.
            if fraction - self._reported < 1 / _PROGRESS_STEPS and fraction < 1.0:
                return
            self._reported = fraction
        self.fraction.emit(fraction)


__all__ = ["ALIAS_ROLES", "DownloadProgress", "VersionDetails"]
