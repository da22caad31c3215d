"""Getting started and managing a team's server from the app (issue 18), offscreen against a
real server: the first start on a server without a project opens a guide that makes a project,
a model and a watched folder in one step, and a checkpoint written there becomes a version;
aliases are set, moved and removed, versions and models deleted, only after a question that
says what happens; members are added by name with a role; personal API tokens are shown once
and revoked after a question; "Watch a folder" works on a server with no project."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtWidgets import QDialogButtonBox, QMessageBox
from pytestqt.qtbot import QtBot

import lmvp
from lmvp_desktop.main_window import MainWindow
from lmvp_desktop.manage import GettingStartedDialog, MembersDialog, TokensDialog
from lmvp_desktop.session import DesktopSession
from lmvp_desktop.settings import DesktopSettings
from lmvp_desktop.sync_panel import WatchTargetDialog
from tests.support import Api, Deployment


def _answer(box: QMessageBox | None, button: str) -> None:
    assert box is not None and box.isVisible()
    next(b for b in box.buttons() if b.text() == button).click()


@pytest.fixture
def newcomer(
    qtbot: QtBot, sqlite_deployment: Deployment, tmp_path: Path
) -> Iterator[tuple[MainWindow, Api]]:
    user = sqlite_deployment.user("newcomer")  # a member of no project
    session = DesktopSession(
        lmvp.Client(sqlite_deployment.url, user.token),
        state_dir=tmp_path / "state",
        settle_seconds=0.3,
    )
    session.daemon.interval = 0.2
    main = MainWindow(session, DesktopSettings(server_url=sqlite_deployment.url))
    qtbot.addWidget(main)
    session.start()
    main.start()
    main.show()
    try:
        yield main, user
    finally:
        main.shutdown()
        session.close()


def test_from_an_empty_server_to_a_synced_version_an_alias_and_a_deletion(
    qtbot: QtBot, newcomer: tuple[MainWindow, Api], tmp_path: Path
) -> None:
    main, user = newcomer
    # The guide opens by itself: this user sees no project.
    qtbot.waitUntil(lambda: isinstance(main.dialog, GettingStartedDialog), timeout=15_000)
    guide = main.dialog
    assert isinstance(guide, GettingStartedDialog)
    assert main.history.empty_hint.isVisibleTo(main)
    project = f"first-{user.username}"  # type: ignore[attr-defined]
    folder = tmp_path / "run"
    folder.mkdir()
    guide.project_edit.setText(project)
    guide.model_edit.setText("net")
    guide.folder_edit.setText(str(folder))
    guide.ok_button.click()

    qtbot.waitUntil(lambda: main.history.model == "net", timeout=15_000)
    qtbot.waitUntil(
        lambda: [(w.project, w.model) for w in main.session.outbox.watches()] == [(project, "net")],
        timeout=15_000,
    )
    qtbot.waitUntil(lambda: not main.history.empty_hint.isVisibleTo(main), timeout=15_000)
    client = main.session.client
    assert client.project(project).role == "owner"

    (folder / "model_step_10.pt").write_bytes(b"a" * 1000)
    versions = main.history.versions
    qtbot.waitUntil(lambda: versions.row_of(1) is not None, timeout=30_000)
    (folder / "model_step_20.pt").write_bytes(b"b" * 1000)
    qtbot.waitUntil(lambda: versions.row_of(2) is not None, timeout=30_000)

    details = main.history.details
    with qtbot.waitSignal(main.history.version_selected):
        main.history.select_version(1)
    details.confirm_alias("best")
    qtbot.waitUntil(lambda: details.confirmation is not None, timeout=10_000)
    assert details.confirmation is not None
    assert details.confirmation.text() == f"Point the new alias 'best' at v1 of {project}/net?"
    _answer(details.confirmation, "Cancel")  # nothing happens
    with qtbot.waitSignal(main.history.version_selected):
        main.history.select_version(2)
    details.confirm_alias("best")
    qtbot.waitUntil(lambda: details.confirmation is not None, timeout=10_000)
    assert client.aliases(f"{project}/net") == []
    _answer(details.confirmation, "Set alias")
    qtbot.waitUntil(lambda: [a.version for a in client.aliases(f"{project}/net")] == [2])

    with qtbot.waitSignal(main.history.version_selected):
        main.history.select_version(1)
    details.confirm_alias("best")
    qtbot.waitUntil(lambda: details.confirmation is not None, timeout=10_000)
    assert details.confirmation is not None
    assert details.confirmation.text().startswith(
        f"Move the alias 'best' of {project}/net from v2 to v1?"
    )
    _answer(details.confirmation, "Move alias")
    qtbot.waitUntil(lambda: [a.version for a in client.aliases(f"{project}/net")] == [1])
    qtbot.waitUntil(lambda: details.version is not None and details.version.aliases == ("best",))

    # Deleting says what goes; Cancel keeps it, Delete deletes it.
    details.ask_delete()
    box = details.confirmation
    assert box is not None
    assert box.text().startswith(f"Delete v1 of {project}/net? Its 1 file (1000 B")
    assert "its alias best go too" in box.text()
    _answer(box, "Cancel")
    assert [v.number for v in client.versions(f"{project}/net")] == [2, 1]
    details.ask_delete()
    _answer(details.confirmation, "Delete")
    qtbot.waitUntil(lambda: versions.row_of(1) is None, timeout=10_000)
    assert [v.number for v in client.versions(f"{project}/net")] == [2]

    # The model goes after a question too.
    main.ask_delete_model()
    box = main.dialog
    assert isinstance(box, QMessageBox)
    assert box.text().startswith(f"Delete the model {project}/net with all its 1 versions")
    _answer(box, "Delete model")
    qtbot.waitUntil(lambda: client.models(project) == [], timeout=10_000)


@pytest.mark.parametrize("begun", [False, True], ids=["untouched", "begun"])
def test_the_guide_it_opened_closes_when_a_teammate_adds_this_person_to_a_project(
    qtbot: QtBot,
    newcomer: tuple[MainWindow, Api],
    sqlite_deployment: Deployment,
    begun: bool,
) -> None:
    main, user = newcomer
    qtbot.waitUntil(lambda: isinstance(main.dialog, GettingStartedDialog), timeout=15_000)
    guide = main.dialog
    assert isinstance(guide, GettingStartedDialog) and guide.isVisible()
    if begun:
        guide.project_edit.setText("my-own")
    # A teammate adds this person to their project: the tree follows the server's events.
    owner = sqlite_deployment.user("teammate")
    project = sqlite_deployment.project(owner)
    added = owner.put(
        f"/projects/{project}/members/{user.username}",  # type: ignore[attr-defined]
        json={"role": "contributor"},
    )
    assert added.status_code == 200, added.text
    qtbot.waitUntil(lambda: main.history.tree_model.rowCount() > 0, timeout=15_000)
    if begun:
        # What the person typed stays: the guide is theirs to finish or cancel.
        qtbot.wait(200)
        assert main.dialog is guide and guide.isVisible()
        assert guide.project_edit.text() == "my-own"
    else:
        # "You are in no project on this server yet" is no longer true: it goes.
        qtbot.waitUntil(lambda: main.dialog is None, timeout=5_000)
        assert "guide closed" in main.statusBar().currentMessage()


def test_members_are_added_by_name_with_a_role_and_refusals_are_sentences(
    qtbot: QtBot, sqlite_deployment: Deployment
) -> None:
    owner = sqlite_deployment.user("owner")
    project = sqlite_deployment.project(owner)
    mate = sqlite_deployment.account("mate")
    with lmvp.Client(sqlite_deployment.url, owner.token) as client:
        dialog = MembersDialog(client, project)
        qtbot.addWidget(dialog)
        qtbot.waitUntil(lambda: dialog.members() == [(owner.username, "owner")])  # type: ignore[attr-defined]
        dialog.username_edit.setText(mate)
        dialog.role_combo.setCurrentText("contributor")
        dialog.add_button.click()
        qtbot.waitUntil(lambda: (mate, "contributor") in dialog.members(), timeout=10_000)
        assert {m.username: m.role for m in client.members(project)}[mate] == "contributor"

        dialog.username_edit.setText("nobody-at-all")
        dialog.add_button.click()
        qtbot.waitUntil(lambda: dialog.error_box.isVisibleTo(dialog), timeout=10_000)
        assert "nobody-at-all" in dialog.error_box.text() + dialog.error_box.detail.text()
        assert dialog.username_edit.text() == "nobody-at-all"  # what was typed is kept

        row = [name for name, _role in dialog.members()].index(mate)
        dialog.table.selectRow(row)
        dialog.remove_button.click()
        assert dialog.confirmation is not None
        assert dialog.confirmation.text().startswith(f"Remove {mate} from {project}?")
        _answer(dialog.confirmation, "Remove")
        qtbot.waitUntil(lambda: mate not in [n for n, _ in dialog.members()], timeout=10_000)


def test_a_new_token_is_shown_once_works_and_is_revoked_after_a_question(
    qtbot: QtBot, sqlite_deployment: Deployment
) -> None:
    user = sqlite_deployment.user("tokens")
    with lmvp.Client(sqlite_deployment.url, user.token) as client:
        dialog = TokensDialog(client)
        qtbot.addWidget(dialog)
        dialog.name_edit.setText("ci")
        dialog.scope_combo.setCurrentText("read")
        dialog.days_spin.setValue(30)
        dialog.create_button.click()
        qtbot.waitUntil(lambda: bool(dialog.secret_edit.text()), timeout=10_000)
        secret = dialog.secret_edit.text()
        assert "shown only once" in dialog.secret_note.text()
        assert "read token (expires" in dialog.secret_note.text()
        with lmvp.Client(sqlite_deployment.url, secret) as ci:
            assert ci.whoami().username == user.username  # type: ignore[attr-defined]
        qtbot.waitUntil(lambda: any(t.name == "ci" for t in dialog.tokens), timeout=10_000)
        row = [t.name for t in dialog.tokens].index("ci")
        assert dialog.table.item(row, 1).text() == "read"  # type: ignore[union-attr]
        dialog.table.selectRow(row)
        dialog.revoke_button.click()
        assert dialog.confirmation is not None and "'ci'" in dialog.confirmation.text()
        _answer(dialog.confirmation, "Revoke")
        qtbot.waitUntil(lambda: all(t.name != "ci" for t in dialog.tokens), timeout=10_000)
        with (
            lmvp.Client(sqlite_deployment.url, secret, retries=1) as ci,
            pytest.raises(lmvp.AuthenticationError),
        ):
            ci.whoami()


def test_watch_a_folder_on_a_server_with_no_project_creates_the_one_typed(
    qtbot: QtBot, sqlite_deployment: Deployment, tmp_path: Path
) -> None:
    user = sqlite_deployment.user("empty")
    with lmvp.Client(sqlite_deployment.url, user.token) as client:
        dialog = WatchTargetDialog(client, str(tmp_path))
        qtbot.addWidget(dialog)
        dialog.show()
        with qtbot.waitSignal(dialog.projects_loaded, timeout=10_000):
            pass
        ok = dialog.buttons.button(QDialogButtonBox.StandardButton.Ok)
        assert "type a name" in dialog.error_label.text()
        assert not ok.isEnabled()
        name = f"typed-{user.username}"  # type: ignore[attr-defined]
        dialog.project_combo.setEditText(name)
        dialog.model_combo.setEditText("net")
        assert ok.isEnabled()
        with qtbot.waitSignal(dialog.accepted, timeout=10_000):
            ok.click()
        assert client.project(name).role == "owner"


def test_a_recent_version_in_the_tray_opens_the_hidden_window_on_it(
    qtbot: QtBot, newcomer: tuple[MainWindow, Api]
) -> None:
    main, _user = newcomer
    main.tabs.setCurrentIndex(1)
    main.hide()
    main.tray.version_activated.emit("somewhere", "net", 3)  # as the tray menu's item does
    assert main.isVisible() and not main.isMinimized()
    assert main.tabs.currentIndex() == 0
    assert (main.history.project, main.history.model) == ("somewhere", "net")


def test_one_search_box_finds_projects_models_and_versions_and_opens_them(
    qtbot: QtBot, sqlite_deployment: Deployment, tmp_path: Path
) -> None:
    from lmvp_desktop.search import SearchBox, SearchHit

    owner = sqlite_deployment.user("finder")
    project = sqlite_deployment.project(owner, prefix="vision")
    with lmvp.Client(sqlite_deployment.url, owner.token) as client:
        weights = tmp_path / "w.bin"
        for i, message in enumerate(("baseline", "tuned on set B", "augmented")):
            weights.write_bytes(f"weights {i}".encode())
            client.update(
                f"{project}/resnet", weights, message=message, metadata={"dataset": f"set-{i}"}
            )
        client.set_alias(f"{project}/resnet", "best", 2)
        box = SearchBox(client)
        qtbot.addWidget(box)
        box.show()

        def found(text: str) -> list[SearchHit]:
            box.edit.setText(text)
            with qtbot.waitSignal(box.searched, timeout=15_000):
                box.search()
            return box.hits()

        assert [(h.project, h.model, h.version) for h in found("resnet")] == [
            (project, "resnet", None)
        ]
        assert [h.version for h in found("tuned set")] == [2]  # every word, any order
        assert [h.version for h in found("BEST")] == [2]  # an alias, case aside
        assert [h.version for h in found("set-2")] == [3]  # metadata
        assert found(project)[0].model is None  # the project first
        assert found("no-such-thing") == [] and "Nothing found" in box.status.text()

        found("augmented")
        with qtbot.waitSignal(box.version_chosen) as chosen:
            box.results.itemClicked.emit(box.results.item(0))
        assert chosen.args == [project, "resnet", 3]
