"""The desktop app's own settings: what they are, where they live, and the dialog that edits them.

`DesktopSettings` is persisted as JSON in the LMVP config directory (`LMVP_CONFIG_DIR`, or the
platform's user config dir), file `desktop.json`. `SettingsDialog` edits one and applies what
takes effect at once to the running daemon (settle window, bandwidth limit, run-idle time,
divergence factor) and to the session
(the XDG autostart entry for "start at login"). Logging out is the app's business: the dialog
only emits `logout_requested`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from lmvp.credentials import config_dir
from lmvp_daemon.alerts import DEFAULT_DIVERGENCE_FACTOR
from lmvp_daemon.run_end import DEFAULT_RUN_IDLE_SECONDS
from lmvp_daemon.service import SyncDaemon
from lmvp_daemon.sync import DEFAULT_SETTLE_SECONDS

log = logging.getLogger(__name__)

SETTINGS_FILE = "desktop.json"
# Settings whose values below these make no sense (a run finished at once, every point a
# divergence): such values are dropped for the defaults.
_AT_LEAST = {"run_idle_seconds": 1.0, "divergence_factor": 1.1}
AUTOSTART_NAME = "lmvp-desktop.desktop"
AUTOSTART_ENTRY = """\
[Desktop Entry]
Type=Application
Name=LMVP
Comment=Lightweight Model Versioning Platform: sync checkpoints in the background
Exec={command} --minimized
Icon=lmvp
Terminal=false
X-GNOME-Autostart-enabled=true
"""


class SettingsError(Exception):
    """The settings could not be read or written; the message says which file and why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class DesktopSettings:
    """What the user chose in the settings dialog (and the login dialog, for the server)."""

    server_url: str = ""
    # The app started the server at `server_url` on this machine ("Start a local server",
    # `make run`): it starts it again on the next launch.
    local_server: bool = False
    settle_seconds: float = DEFAULT_SETTLE_SECONDS
    # Bytes per second all uploads together may use; None for no limit.
    bandwidth_limit: float | None = None
    notify_synced: bool = True
    notify_failed: bool = True
    notify_teammates: bool = True
    # A watched folder's run is marked finished after this long without anything new.
    run_idle_seconds: float = DEFAULT_RUN_IDLE_SECONDS
    # A loss over this many times its recent average has diverged.
    divergence_factor: float = DEFAULT_DIVERGENCE_FACTOR
    # Training alerts (`lmvp_daemon.alerts`), each kind on or off.
    alert_nan: bool = True
    alert_diverged: bool = True
    alert_silent: bool = True
    start_at_login: bool = False

    @classmethod
    def load(cls, path: Path | None = None) -> DesktopSettings:
        """The saved settings, or the defaults when there are none yet. A damaged file is
        logged and replaced by the defaults rather than keeping the app from starting."""
        path = path or settings_path()
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable settings %s: %s", path, exc)
            return cls()
        if not isinstance(data, dict):
            log.warning("ignoring settings %s: not a JSON object", path)
            return cls()
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DesktopSettings:
        """Settings from a JSON object; unknown keys and wrongly typed values are dropped."""
        defaults = cls()
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            value, default = data[f.name], getattr(defaults, f.name)
            if f.name == "bandwidth_limit":
                ok = value is None or (isinstance(value, int | float) and value > 0)
            elif f.name in _AT_LEAST:
                ok = isinstance(value, int | float) and not isinstance(value, bool)
                ok = ok and value >= _AT_LEAST[f.name]
            elif isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, float):
                ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
            else:
                ok = isinstance(value, str)
            if ok:
                values[f.name] = float(value) if isinstance(default, float) and value else value
        return cls(**values)

    def save(self, path: Path | None = None) -> Path:
        """Write the settings (atomically: a temporary file renamed into place); returns the
        path. Raises `SettingsError` if the config directory cannot be written."""
        path = path or settings_path()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise SettingsError(f"could not save the settings to {path}: {exc}") from exc
        return path

    def apply_to_daemon(self, daemon: SyncDaemon) -> None:
        """Make the running daemon follow these settings (at once, also mid-upload)."""
        daemon.set_settle_seconds(self.settle_seconds)
        daemon.set_run_idle_seconds(self.run_idle_seconds)
        daemon.set_divergence_factor(self.divergence_factor)
        if daemon.bandwidth_limit != self.bandwidth_limit:
            daemon.set_bandwidth_limit(self.bandwidth_limit)


def settings_path() -> Path:
    """Where `DesktopSettings` are saved: `desktop.json` in the LMVP config directory."""
    return config_dir() / SETTINGS_FILE


def autostart_path() -> Path:
    """The XDG autostart entry that starts the app (minimized) at login."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "autostart" / AUTOSTART_NAME


def desktop_command() -> str:
    """How the autostart entry starts this app: the `lmvp-desktop` of this Python environment
    (a virtualenv's bin folder is usually not on the session's PATH at login)."""
    script = Path(sys.executable).parent / "lmvp-desktop"
    found = str(script) if script.exists() else shutil.which("lmvp-desktop") or "lmvp-desktop"
    # The desktop entry spec: an argument with spaces is double-quoted.
    return f'"{found}"' if " " in found else found


def set_start_at_login(enabled: bool) -> Path:
    """Write or remove the XDG autostart entry; returns its path. Raises `SettingsError` if
    the autostart folder cannot be written."""
    path = autostart_path()
    try:
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(AUTOSTART_ENTRY.format(command=desktop_command()))
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:
        raise SettingsError(f"could not change the autostart entry {path}: {exc}") from exc
    return path


class SettingsDialog(QDialog):
    """Edits `settings`; OK saves them and applies them to `daemon` and to the session.

    Signals: `logout_requested()` when the user asks to log out (the app forgets the token and
    shows the login dialog), `applied(DesktopSettings)` after OK applied the new settings.
    """

    logout_requested = Signal()
    applied = Signal(object)

    def __init__(
        self,
        settings: DesktopSettings,
        daemon: SyncDaemon,
        parent: QWidget | None = None,
        *,
        username: str = "",
        settings_file: Path | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("LMVP settings")
        self.settings = settings
        self.daemon = daemon
        self._settings_file = settings_file

        self.server_edit = QLineEdit(settings.server_url)
        self.server_edit.setPlaceholderText("http://localhost:8470")
        self.server_edit.setToolTip("Used from the next log in (log out to switch servers now)")
        self.settle_spin = QDoubleSpinBox()
        self.settle_spin.setRange(0.0, 3600.0)
        self.settle_spin.setDecimals(1)
        self.settle_spin.setSuffix(" s")
        self.settle_spin.setValue(settings.settle_seconds)
        self.settle_spin.setToolTip("How long a checkpoint must stay unchanged before it is sent")
        self.bandwidth_spin = QSpinBox()
        self.bandwidth_spin.setRange(0, 10_000_000)  # KiB/s
        self.bandwidth_spin.setSuffix(" KiB/s")
        self.bandwidth_spin.setSpecialValueText("no limit")
        limit = settings.bandwidth_limit
        self.bandwidth_spin.setValue(round(limit / 1024) if limit else 0)
        self.notify_synced_box = QCheckBox("Checkpoints synced")
        self.notify_synced_box.setChecked(settings.notify_synced)
        self.notify_failed_box = QCheckBox("Checkpoints that failed")
        self.notify_failed_box.setChecked(settings.notify_failed)
        self.notify_teammates_box = QCheckBox("Teammates' new versions")
        self.notify_teammates_box.setChecked(settings.notify_teammates)
        self.alert_nan_box = QCheckBox("A loss that became NaN or infinite")
        self.alert_nan_box.setChecked(settings.alert_nan)
        self.alert_diverged_box = QCheckBox("A loss that diverged")
        self.alert_diverged_box.setChecked(settings.alert_diverged)
        self.alert_silent_box = QCheckBox("A training job that stopped checkpointing")
        self.alert_silent_box.setChecked(settings.alert_silent)
        self.run_idle_spin = QDoubleSpinBox()
        self.run_idle_spin.setRange(1.0, 86400.0)
        self.run_idle_spin.setDecimals(0)
        self.run_idle_spin.setSuffix(" s")
        self.run_idle_spin.setValue(settings.run_idle_seconds)
        self.run_idle_spin.setAccessibleName("Finish a run after")
        self.run_idle_spin.setToolTip(
            "A watched folder's run is marked finished once its metric files and checkpoints "
            "stopped growing for this long (it runs again if they grow later)"
        )
        self.divergence_spin = QDoubleSpinBox()
        self.divergence_spin.setRange(1.1, 1000.0)
        self.divergence_spin.setDecimals(1)
        self.divergence_spin.setSuffix(" times its average")
        self.divergence_spin.setValue(settings.divergence_factor)
        self.divergence_spin.setAccessibleName("Loss diverges at")
        self.divergence_spin.setToolTip(
            "A loss over this many times its recent average makes a 'loss diverged' alert"
        )
        self.start_at_login_box = QCheckBox("Start LMVP when I log in")
        self.start_at_login_box.setChecked(settings.start_at_login)
        self.logout_button = QPushButton(f"Log out {username}".strip())
        self.logout_button.clicked.connect(self._logout)

        account = QGroupBox("Server and account")
        account_form = QFormLayout(account)
        account_form.addRow("Server", self.server_edit)
        account_form.addRow("", self.logout_button)
        sync = QGroupBox("Syncing")
        sync_form = QFormLayout(sync)
        sync_form.addRow("Settle window", self.settle_spin)
        sync_form.addRow("Upload limit", self.bandwidth_spin)
        sync_form.addRow("Finish a run after", self.run_idle_spin)
        sync_form.addRow("Loss diverges at", self.divergence_spin)
        notify = QGroupBox("Notify me of")
        notify_layout = QVBoxLayout(notify)
        for box in (
            self.notify_synced_box,
            self.notify_failed_box,
            self.notify_teammates_box,
            self.alert_nan_box,
            self.alert_diverged_box,
            self.alert_silent_box,
        ):
            notify_layout.addWidget(box)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)

        layout = QVBoxLayout(self)
        for widget in (account, sync, notify, self.start_at_login_box, buttons):
            layout.addWidget(widget)

    def edited_settings(self) -> DesktopSettings:
        """The settings as the dialog's fields show them now (nothing applied)."""
        kib = self.bandwidth_spin.value()
        return DesktopSettings(
            server_url=self.server_edit.text().strip(),
            # Still the local server only while the address is the one it runs at.
            local_server=self.settings.local_server
            and self.server_edit.text().strip() == self.settings.server_url,
            settle_seconds=self.settle_spin.value(),
            bandwidth_limit=float(kib * 1024) if kib else None,
            notify_synced=self.notify_synced_box.isChecked(),
            notify_failed=self.notify_failed_box.isChecked(),
            notify_teammates=self.notify_teammates_box.isChecked(),
            run_idle_seconds=self.run_idle_spin.value(),
            divergence_factor=self.divergence_spin.value(),
            alert_nan=self.alert_nan_box.isChecked(),
            alert_diverged=self.alert_diverged_box.isChecked(),
            alert_silent=self.alert_silent_box.isChecked(),
            start_at_login=self.start_at_login_box.isChecked(),
        )

    def apply(self) -> None:
        """Save the edited settings and apply them: the daemon's settle window, bandwidth
        limit, run-idle time and divergence factor, and the autostart entry. Raises
        `SettingsError` if a file cannot be written."""
        new = self.edited_settings()
        new.apply_to_daemon(self.daemon)
        if new.start_at_login != self.settings.start_at_login or (
            new.start_at_login != autostart_path().exists()
        ):
            set_start_at_login(new.start_at_login)
        # Update in place: the notifier and the app hold this very object.
        for f in fields(DesktopSettings):
            setattr(self.settings, f.name, getattr(new, f.name))
        self.settings.save(self._settings_file)
        self.applied.emit(self.settings)

    def accept(self) -> None:
        try:
            self.apply()
        except SettingsError as exc:
            log.error("%s", exc.message)
            QMessageBox.warning(self, "Settings not saved", exc.message)
            return
        super().accept()

    def _logout(self) -> None:
        self.logout_requested.emit()
        self.reject()


__all__ = [
    "DesktopSettings",
    "SettingsDialog",
    "SettingsError",
    "autostart_path",
    "set_start_at_login",
    "settings_path",
]
