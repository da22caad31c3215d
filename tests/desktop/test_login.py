"""The first-start login dialog against a real server: a password login stores the token
(in the keyring, here the in-memory one) so the next start needs no dialog; a wrong password
says so and stores nothing; "start a local server" runs a real server process and logs in as
its admin."""

from __future__ import annotations

from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from lmvp import credentials
from lmvp_desktop.local_server import LocalServer
from lmvp_desktop.login import LoginDialog
from tests.support import Deployment, MemoryKeyring, free_port


@pytest.fixture(autouse=True)
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LMVP_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("LMVP_SERVER", raising=False)
    monkeypatch.delenv("LMVP_TOKEN", raising=False)
    return tmp_path / "config"


def test_login_stores_the_token_so_the_next_start_skips_the_dialog(
    qtbot: QtBot, sqlite_deployment: Deployment, memory_keyring: MemoryKeyring
) -> None:
    name = sqlite_deployment.account("desk")
    dialog = LoginDialog(sqlite_deployment.url)
    qtbot.addWidget(dialog)
    dialog.username.setText(name)
    dialog.password.setText("password-" + name)

    dialog.login_button.click()

    qtbot.waitUntil(lambda: dialog.result() == LoginDialog.DialogCode.Accepted, timeout=20_000)
    assert dialog.client is not None and dialog.client.whoami().username == name
    token = memory_keyring.passwords[("lmvp", sqlite_deployment.url)]
    assert credentials.resolve_server() == sqlite_deployment.url
    assert credentials.resolve_token(sqlite_deployment.url) == token
    dialog.client.close()


def test_wrong_password_is_said_and_nothing_is_stored(
    qtbot: QtBot, sqlite_deployment: Deployment, memory_keyring: MemoryKeyring
) -> None:
    name = sqlite_deployment.account("desk")
    dialog = LoginDialog(sqlite_deployment.url)
    qtbot.addWidget(dialog)
    dialog.username.setText(name)
    dialog.password.setText("not-the-password")

    dialog.login_button.click()

    qtbot.waitUntil(
        lambda: "wrong username or password" in dialog.error_box.text().lower(), timeout=20_000
    )
    assert dialog.result() != LoginDialog.DialogCode.Accepted
    assert dialog.login_button.isEnabled()
    assert memory_keyring.passwords == {}


def test_start_a_local_server_runs_one_and_logs_in_as_its_admin(
    qtbot: QtBot, tmp_path: Path, memory_keyring: MemoryKeyring
) -> None:
    local = LocalServer(tmp_path / "server-data", port=free_port())
    dialog = LoginDialog(local_server=lambda: local)
    qtbot.addWidget(dialog)
    try:
        dialog.local_button.click()
        qtbot.waitUntil(lambda: dialog.result() == LoginDialog.DialogCode.Accepted, timeout=60_000)
        assert dialog.local_server is local
        assert dialog.client is not None and dialog.client.whoami().username == "admin"
        assert memory_keyring.passwords[("lmvp", local.url)] == dialog.client.http.token
        dialog.client.close()
    finally:
        local.stop()
    assert local.proc is not None and local.proc.poll() is not None


def test_an_unreachable_server_is_said_in_a_sentence_with_the_detail_behind_details(
    qtbot: QtBot, memory_keyring: MemoryKeyring
) -> None:
    port = free_port()  # nothing listens there
    dialog = LoginDialog(f"http://127.0.0.1:{port}")
    qtbot.addWidget(dialog)
    dialog.show()
    dialog.username.setText("someone")
    dialog.password.setText("a-password")

    dialog.login_button.click()

    qtbot.waitUntil(lambda: dialog.error_box.isVisible(), timeout=30_000)
    sentence = dialog.error_box.text()
    assert sentence.startswith(f"The LMVP server at 127.0.0.1:{port} is not running.")
    assert "Errno" not in sentence and "lmvp login" not in sentence
    assert not dialog.error_box.detail.isVisible()
    dialog.error_box.details_button.click()
    assert dialog.error_box.detail.isVisible()
    assert "refused" in dialog.error_box.detail.text().lower()
