"""Desktop settings: saved to and read back from desktop.json in the config dir; the dialog applies
the settle window and the bandwidth limit to a real daemon, writes and removes the XDG autostart
entry, and asks the app to log out."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

import lmvp
from lmvp_daemon.outbox import Outbox
from lmvp_daemon.service import SyncDaemon, read_settings
from lmvp_desktop.settings import (
    DesktopSettings,
    SettingsDialog,
    autostart_path,
    settings_path,
)
from tests.support import Deployment


@pytest.fixture(autouse=True)
def config_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LMVP_CONFIG_DIR", str(tmp_path / "lmvp-config"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    return tmp_path


@pytest.fixture
def daemon(tmp_path: Path, sqlite_deployment: Deployment) -> Iterator[SyncDaemon]:
    """A real daemon (not started: the settings act on it all the same)."""
    outbox = Outbox(tmp_path / "state")
    assert sqlite_deployment.admin.token is not None
    client = lmvp.Client(sqlite_deployment.url, sqlite_deployment.admin.token)
    with SyncDaemon(outbox, client) as daemon:
        yield daemon
    client.close()
    outbox.close()


def test_settings_round_trip_through_desktop_json_in_the_config_dir(config_dirs: Path) -> None:
    assert DesktopSettings.load() == DesktopSettings()  # nothing saved yet: the defaults
    saved = DesktopSettings(
        server_url="http://models.example:8470",
        settle_seconds=1.5,
        bandwidth_limit=2_000_000.0,
        notify_synced=False,
        notify_teammates=False,
        start_at_login=True,
    )
    path = saved.save()
    assert path == settings_path() == config_dirs / "lmvp-config" / "desktop.json"
    assert DesktopSettings.load() == saved
    assert json.loads(path.read_text())["bandwidth_limit"] == 2_000_000.0

    # A hand-edited file: wrong types fall back to the defaults, unknown keys are ignored.
    path.write_text(json.dumps({"settle_seconds": "soon", "notify_failed": False, "x": 1}))
    assert DesktopSettings.load() == DesktopSettings(notify_failed=False)
    path.write_text("{not json")
    assert DesktopSettings.load() == DesktopSettings()


def test_dialog_applies_settle_and_bandwidth_to_the_daemon_and_saves(
    qtbot: QtBot, daemon: SyncDaemon
) -> None:
    settings = DesktopSettings()
    dialog = SettingsDialog(settings, daemon)
    qtbot.addWidget(dialog)
    assert dialog.bandwidth_spin.text() == "no limit"
    dialog.settle_spin.setValue(4.5)
    dialog.bandwidth_spin.setValue(500)  # KiB/s
    dialog.notify_teammates_box.setChecked(False)
    with qtbot.waitSignal(dialog.applied):
        dialog.accept()
    assert daemon.bandwidth_limit == 500 * 1024
    assert daemon.settle_seconds == 4.5
    assert read_settings(daemon.state_dir)["bandwidth_limit"] == 500 * 1024  # persisted too
    # The object the app (and the notifier) holds is updated in place, and saved.
    assert settings.bandwidth_limit == 500 * 1024 and not settings.notify_teammates
    assert DesktopSettings.load() == settings

    dialog = SettingsDialog(settings, daemon)
    qtbot.addWidget(dialog)
    assert dialog.bandwidth_spin.value() == 500
    dialog.bandwidth_spin.setValue(0)
    dialog.accept()
    assert daemon.bandwidth_limit is None and settings.bandwidth_limit is None


def test_start_at_login_writes_and_removes_the_xdg_autostart_entry(
    qtbot: QtBot, daemon: SyncDaemon, config_dirs: Path
) -> None:
    entry = config_dirs / "xdg" / "autostart" / "lmvp-desktop.desktop"
    assert autostart_path() == entry
    settings = DesktopSettings()
    dialog = SettingsDialog(settings, daemon)
    qtbot.addWidget(dialog)
    dialog.start_at_login_box.setChecked(True)
    dialog.accept()
    assert settings.start_at_login
    text = entry.read_text()
    assert "[Desktop Entry]" in text
    # This environment's own script: a virtualenv is not on the PATH of a login session.
    assert f"\nExec={Path(sys.executable).parent / 'lmvp-desktop'} --minimized\n" in text

    dialog = SettingsDialog(settings, daemon)
    qtbot.addWidget(dialog)
    assert dialog.start_at_login_box.isChecked()
    dialog.start_at_login_box.setChecked(False)
    dialog.accept()
    assert not entry.exists() and not DesktopSettings.load().start_at_login


def test_log_out_button_asks_the_app_to_log_out(qtbot: QtBot, daemon: SyncDaemon) -> None:
    dialog = SettingsDialog(DesktopSettings(), daemon, username="alice")
    qtbot.addWidget(dialog)
    assert dialog.logout_button.text() == "Log out alice"
    with qtbot.waitSignal(dialog.logout_requested):
        dialog.logout_button.click()


def test_dialog_sets_the_run_idle_time_divergence_and_alert_kinds(
    qtbot: QtBot, daemon: SyncDaemon
) -> None:
    settings = DesktopSettings()
    assert (settings.alert_nan, settings.alert_diverged, settings.alert_silent) == (True,) * 3
    dialog = SettingsDialog(settings, daemon)
    qtbot.addWidget(dialog)
    dialog.run_idle_spin.setValue(90)
    dialog.divergence_spin.setValue(5.0)
    dialog.alert_diverged_box.setChecked(False)
    with qtbot.waitSignal(dialog.applied):
        dialog.accept()
    assert daemon.run_idle_seconds == 90 and daemon.divergence_factor == 5.0
    assert not settings.alert_diverged and settings.alert_nan and settings.alert_silent
    assert DesktopSettings.load() == settings
    assert dialog.run_idle_spin.accessibleName() == "Finish a run after"
    assert dialog.divergence_spin.accessibleName() == "Loss diverges at"

    # Values that make no sense in a hand-edited file fall back to the defaults.
    settings_path().write_text(json.dumps({"run_idle_seconds": 0, "divergence_factor": 0.5}))
    loaded = DesktopSettings.load()
    assert (loaded.run_idle_seconds, loaded.divergence_factor) == (
        DesktopSettings().run_idle_seconds,
        DesktopSettings().divergence_factor,
    )
