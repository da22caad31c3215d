"""The model's retention and storage in the desktop app against a real server: the policy in
words (the model's own or the project's default), the version table's "Kept by" marks and the
would-remove list with the bytes it frees, each equal to the server's preview; the policy dialog
for maintainers (set, refused with a sentence, removed), read-only for viewers; storage figures
equal to the API's; and all of it following the server's events — real Qt widgets, offscreen."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel
from pytestqt.qtbot import QtBot

import lmvp
from lmvp.history import human_size
from lmvp.types import KeepBest, RetentionPolicy, RetentionPreview
from lmvp_desktop.history_view import HistoryPane
from lmvp_desktop.project_tree import PROJECT_ROLE
from lmvp_desktop.retention_dialog import RetentionDialog
from lmvp_desktop.server_events import ServerEvents
from lmvp_desktop.version_columns import COL_KEPT, FIXED_COLUMNS, REMOVED_TEXT, rule_words
from tests.support import Api, Deployment

VERSIONS = 8
# val_loss of versions 1..8: the best two (lowest) are versions 3 and 5.
LOSSES = [0.9, 0.7, 0.2, 0.6, 0.3, 0.8, 0.65, 0.75]
POLICY = RetentionPolicy(keep_latest=2, keep_best=(KeepBest(2, "val_loss", "min"),))
PROJECT_DEFAULT = RetentionPolicy(keep_within_hours=48)


@dataclass
class Team:
    """A project with an owner, a maintainer and a viewer. Its model `m` has eight versions
    with a val_loss and a step, v1 aliased `production`, v2 and v4 sharing a file, and the
    policy `POLICY` set after they were committed (so nothing was applied yet); `inherits` has
    no policy of its own and follows the project's default, `PROJECT_DEFAULT`."""

    project: str
    owner: Api
    maintainer: Api
    viewer: Api


def _commit(d: Deployment, api: Api, project: str, model: str, **body: object) -> int:
    files = body.pop("files", None) or {"model.bin": os.urandom(2048)}
    r = d.commit(api, project, model, files, **body)  # type: ignore[arg-type]
    assert r.status_code == 201, r.text
    return int(r.json()["number"])


@pytest.fixture(scope="module")
def team(sqlite_deployment: Deployment) -> Team:
    d = sqlite_deployment
    owner = d.user("ret-owner")
    project = d.project(owner, prefix="ret")
    maintainer, viewer = d.user("ret-maint"), d.user("ret-view")
    d.add_member(project, maintainer, "maintainer")
    d.add_member(project, viewer, "viewer")
    shared = os.urandom(3000)
    for i, loss in enumerate(LOSSES, start=1):
        files = {"model.bin": os.urandom(1000 * i)}
        if i in (2, 4):
            files["shared.bin"] = shared
        _commit(d, owner, project, "m", files=files, metrics={"val_loss": loss}, step=500 * i)
    _commit(d, owner, project, "inherits")
    with lmvp.Client(d.url, owner.token) as client:
        client.set_alias(f"{project}/m", "production", 1)
        client.set_retention(f"{project}/m", POLICY)
        client.set_retention(project, PROJECT_DEFAULT)
    return Team(project, owner, maintainer, viewer)


def _pane(qtbot: QtBot, d: Deployment, api: Api) -> Iterator[HistoryPane]:
    client = lmvp.Client(d.url, api.token)
    widget = HistoryPane(client)
    qtbot.addWidget(widget)
    widget.resize(1400, 800)
    widget.show()
    qtbot.waitUntil(lambda: widget.tree_model.rowCount() > 0, timeout=5000)
    yield widget
    client.close()


@pytest.fixture
def owner_pane(qtbot: QtBot, sqlite_deployment: Deployment, team: Team) -> Iterator[HistoryPane]:
    yield from _pane(qtbot, sqlite_deployment, team.owner)


def _open(qtbot: QtBot, pane: HistoryPane, project: str, model: str) -> None:
    with qtbot.waitSignal(pane.retention.loaded, timeout=10000):
        pane.select_model(project, model)
    qtbot.waitUntil(lambda: pane.versions.all_loaded() and not pane.versions.loading)


def _preview(d: Deployment, api: Api, ref: str) -> RetentionPreview:
    with lmvp.Client(d.url, api.token) as client:
        return client.preview_retention(ref)


def _kept_cells(pane: HistoryPane) -> dict[int, str]:
    """What the "Kept by" column shows, version by version."""
    table = pane.versions
    return {
        table.version_at(row).number: str(table.index(row, COL_KEPT).data())
        for row in range(table.rowCount())
    }


def test_the_policy_in_words_and_the_kept_by_marks_are_the_servers_preview(
    qtbot: QtBot, sqlite_deployment: Deployment, owner_pane: HistoryPane, team: Team
) -> None:
    pane = owner_pane
    _open(qtbot, pane, team.project, "m")
    retention = pane.retention
    assert retention.policy_label.text() == (
        "Retention (this model's policy): keep every aliased version; the latest 2; the best 2 "
        "by val_loss (min); every other version goes."
    )
    assert pane.versions.headerData(COL_KEPT, Qt.Orientation.Horizontal) == "Kept by"
    assert not pane.table.isColumnHidden(COL_KEPT)

    preview = _preview(sqlite_deployment, team.viewer, f"{team.project}/m")
    cells = _kept_cells(pane)
    assert sorted(cells) == list(range(1, VERSIONS + 1))
    # Each version's mark is the server's: the rules that keep it, or that it goes next.
    expected = {
        k.number: ", ".join(rule_words(r, short=True) for r in k.rules) for k in preview.keep
    }
    expected.update({r.number: REMOVED_TEXT for r in preview.remove})
    assert cells == expected
    # What that means here, written out: the aliased, the latest two, the best two by loss.
    assert cells[1] == "alias production"
    assert cells[8] == cells[7] == "latest 2"
    assert cells[3] == cells[5] == "best 2 val_loss"
    assert {n for n, text in cells.items() if text == REMOVED_TEXT} == {2, 4, 6}
    # The tooltip (and accessible description) says it in whole words.
    row = pane.versions.row_of(3)
    assert row is not None
    tip = pane.versions.index(row, COL_KEPT).data(Qt.ItemDataRole.ToolTipRole)
    assert pane.versions.index(row, COL_KEPT).data(Qt.ItemDataRole.AccessibleDescriptionRole) == tip
    assert tip == "Kept by the retention policy: the best 2 by val_loss (min)"


def test_the_would_remove_list_and_the_bytes_it_frees_are_the_previews(
    qtbot: QtBot, sqlite_deployment: Deployment, owner_pane: HistoryPane, team: Team
) -> None:
    pane = owner_pane
    _open(qtbot, pane, team.project, "m")
    preview = _preview(sqlite_deployment, team.owner, f"{team.project}/m")
    retention = pane.retention
    items = [retention.removal_list.item(i).text() for i in range(retention.removal_list.count())]
    assert [text.split(":")[0] for text in items] == [f"v{r.number}" for r in preview.remove]
    assert [r.number for r in preview.remove] == [6, 4, 2]
    assert items[0].startswith(f"v6: {human_size(6000)}, step 3000, created ")
    assert retention.removal_list.isVisible()
    # v2 and v4 share a file no kept version has: it is freed once, with their own files.
    assert preview.bytes_freed == 6000 + 4000 + 2000 + 3000
    assert retention.removal_label.text() == (
        "Its next application moves 3 versions to the trash, freeing "
        f"{human_size(preview.bytes_freed)} ({preview.bytes_freed:,} bytes) once they leave it."
    )


def test_a_model_without_its_own_policy_shows_the_projects_default(
    qtbot: QtBot, sqlite_deployment: Deployment, owner_pane: HistoryPane, team: Team
) -> None:
    pane = owner_pane
    _open(qtbot, pane, team.project, "inherits")
    assert pane.retention.policy_label.text() == (
        "Retention (the project's default policy): keep every aliased version; everything "
        "younger than 48 hours; every other version goes."
    )
    assert pane.retention.removal_label.text() == "Its next application removes nothing."
    assert not pane.retention.removal_list.isVisible()
    assert _kept_cells(pane) == {1: "within 48 h"}


def test_without_a_policy_every_version_is_kept_and_the_column_makes_room(
    qtbot: QtBot, sqlite_deployment: Deployment, owner_pane: HistoryPane, team: Team
) -> None:
    pane = owner_pane
    _open(qtbot, pane, team.project, "m")
    assert not pane.table.isColumnHidden(COL_KEPT)
    project = sqlite_deployment.project(team.owner, prefix="ret-free")
    _commit(sqlite_deployment, team.owner, project, "free")
    pane.tree_model.refresh()
    qtbot.waitUntil(lambda: pane.tree_model.index_of(project, "free").isValid(), timeout=5000)
    _open(qtbot, pane, project, "free")
    assert pane.retention.policy_label.text() == "No retention policy: every version is kept."
    assert not pane.retention.removal_label.isVisible()
    assert not pane.retention.removal_list.isVisible()
    assert _kept_cells(pane) == {1: ""}
    # The metrics keep the room of a column that would say nothing.
    assert pane.table.isColumnHidden(COL_KEPT)


def test_storage_figures_are_the_apis(
    qtbot: QtBot, sqlite_deployment: Deployment, owner_pane: HistoryPane, team: Team
) -> None:
    pane = owner_pane
    _open(qtbot, pane, team.project, "m")
    usage = team.owner.get(f"/projects/{team.project}/usage").json()
    share = next(m for m in usage["models"] if m["name"] == "m")
    blobs = usage["blobs"]
    assert pane.retention.usage_label.text() == (
        f"Storage: the project {team.project} holds {human_size(usage['bytes'])} in "
        f"{blobs:,} blobs; m's versions reference {human_size(share['referenced_bytes'])}, and "
        f"deleting it would free {human_size(share['exclusive_bytes'])} once it leaves the trash."
    )
    # Eight files of their own and the shared one, counted once.
    assert share["referenced_bytes"] == sum(1000 * i for i in range(1, 9)) + 3000
    # The tree says what each project holds, as the project listing does.
    listed = {p["name"]: p["size"] for p in team.owner.get("/projects").json()}
    index = pane.tree_model.index_of(team.project)
    assert index.data(PROJECT_ROLE) == team.project
    tooltip = str(pane.tree_model.itemFromIndex(index).toolTip())
    assert f"stored: {human_size(listed[team.project])} ({listed[team.project]:,} bytes)" in (
        tooltip
    )


def test_a_viewer_sees_the_policy_but_cannot_change_it(
    qtbot: QtBot, sqlite_deployment: Deployment, team: Team
) -> None:
    for pane in _pane(qtbot, sqlite_deployment, team.viewer):
        _open(qtbot, pane, team.project, "m")
        assert pane.retention.policy_label.text().startswith("Retention (this model's policy)")
        assert _kept_cells(pane)[1] == "alias production"  # the preview is anyone's to read
        assert not pane.retention.edit_button.isEnabled()
        assert "Maintainers and owners" in pane.retention.edit_button.toolTip()
        assert pane.retention.open_editor() is None


def _edit(qtbot: QtBot, pane: HistoryPane) -> RetentionDialog:
    assert pane.retention.edit_button.isEnabled()
    pane.retention.edit_button.click()
    dialog = pane.retention.dialog
    assert dialog is not None and dialog.isVisible()
    return dialog


def test_a_maintainer_sets_changes_and_removes_the_policy_in_the_dialog(
    qtbot: QtBot, sqlite_deployment: Deployment, team: Team
) -> None:
    d = sqlite_deployment
    for i in range(3):
        _commit(d, team.owner, team.project, "edited", metrics={"acc": 0.5 + i / 10}, step=i)
    ref = f"{team.project}/edited"
    with lmvp.Client(d.url, team.owner.token) as owner:
        for pane in _pane(qtbot, d, team.maintainer):
            _open(qtbot, pane, team.project, "edited")
            # Nothing of its own: it starts from the project's default, and cannot remove.
            dialog = _edit(qtbot, pane)
            assert dialog.within_spin.value() == 48
            assert not dialog.remove_button.isEnabled()
            # It names the model's metrics, for the best-by rule.
            assert "Metrics of this model: acc" in [w.text() for w in dialog.findChildren(QLabel)]

            # A rule that is not COUNT:METRIC:min|max is said as a sentence; the dialog stays.
            dialog.best_edit.setText("three:acc")
            dialog.save_button.click()
            assert dialog.error_box.text().startswith("'three:acc': write the best versions")
            assert dialog.isVisible()

            dialog.within_spin.setValue(0)
            dialog.best_edit.setText("1:acc:max")
            dialog.latest_spin.setValue(1)
            # Tried first: the server says what it would remove, and nothing changes.
            dialog.preview_button.click()
            qtbot.waitUntil(
                lambda dlg=dialog: dlg.trial_label.text().startswith("This policy"),  # type: ignore[misc]
                timeout=10000,
            )
            tried = owner.preview_retention(ref, dialog.policy())
            assert [r.number for r in tried.remove] == [2, 1]
            assert dialog.trial_label.text() == (
                "This policy would move 2 versions to the trash now (v2, v1), freeing "
                f"{human_size(tried.bytes_freed)} ({tried.bytes_freed:,} bytes)."
            )
            assert owner.retention(ref).policy is None
            with qtbot.waitSignal(pane.retention.loaded, timeout=10000):
                dialog.save_button.click()
            assert owner.retention(ref).policy == RetentionPolicy(
                keep_latest=1, keep_best=(KeepBest(1, "acc", "max"),)
            )
            qtbot.waitUntil(lambda p=pane: p.retention.dialog is None)  # type: ignore[misc]
            assert pane.retention.policy_label.text() == (
                "Retention (this model's policy): keep every aliased version; the latest 1; "
                "the best 1 by acc (max); every other version goes."
            )
            # The latest is also the best by accuracy: the two older ones go next.
            assert _kept_cells(pane) == {
                3: "latest 1, best 1 acc",
                2: REMOVED_TEXT,
                1: REMOVED_TEXT,
            }

            # The server's refusal (the maintainer was made a viewer meanwhile), as a sentence.
            dialog = _edit(qtbot, pane)
            assert dialog.latest_spin.value() == 1 and dialog.best_edit.text() == "1:acc:max"
            d.add_member(team.project, team.maintainer, "viewer")
            try:
                dialog.latest_spin.setValue(5)
                dialog.save_button.click()
                qtbot.waitUntil(lambda dlg=dialog: dlg.error_box.text() != "")  # type: ignore[misc]
                assert dialog.error_box.text() == "Your role in this project does not allow this."
                assert dialog.isVisible() and dialog.save_button.isEnabled()
                assert owner.retention(ref).policy == RetentionPolicy(
                    keep_latest=1, keep_best=(KeepBest(1, "acc", "max"),)
                )
            finally:
                d.add_member(team.project, team.maintainer, "maintainer")

            # Removing the model's own policy: the project's default is in force again.
            with qtbot.waitSignal(pane.retention.loaded, timeout=10000):
                dialog.remove_button.click()
            assert owner.retention(ref).policy is None
            assert pane.retention.policy_label.text().startswith(
                "Retention (the project's default policy)"
            )


def test_the_marks_and_the_list_follow_the_servers_events(
    qtbot: QtBot, sqlite_deployment: Deployment, team: Team
) -> None:
    d = sqlite_deployment
    for i in range(4):
        _commit(d, team.owner, team.project, "live", step=i)
    ref = f"{team.project}/live"
    for pane in _pane(qtbot, d, team.owner):
        events = ServerEvents(d.url, team.owner.token)
        events.received.connect(pane.on_server_event)
        with qtbot.waitSignal(events.opened, timeout=10000):
            events.start()
        try:
            _open(qtbot, pane, team.project, "live")
            assert _kept_cells(pane) == dict.fromkeys(range(1, 5), "within 48 h")

            # A teammate sets a policy: the view shows what it would remove, unasked.
            with lmvp.Client(d.url, team.maintainer.token) as teammate:
                teammate.set_retention(ref, RetentionPolicy(keep_latest=2))
            qtbot.waitUntil(
                lambda p=pane: p.retention.policy_label.text().endswith(  # type: ignore[misc]
                    "the latest 2; every other version goes."
                ),
                timeout=10000,
            )
            qtbot.waitUntil(
                lambda p=pane: p.retention.removal_list.count() == 2,  # type: ignore[misc]
                timeout=10000,
            )
            assert _kept_cells(pane) == {
                4: "latest 2",
                3: "latest 2",
                2: REMOVED_TEXT,
                1: REMOVED_TEXT,
            }

            # A commit applies it: the removed versions leave, the rest is marked anew.
            _commit(d, team.owner, team.project, "live", step=9)

            def settled() -> bool:
                preview = _preview(d, team.owner, ref)
                return (
                    not preview.remove
                    and _kept_cells(pane) == {5: "latest 2", 4: "latest 2"}
                    and pane.retention.removal_list.count() == 0
                )

            qtbot.waitUntil(settled, timeout=15000)
            assert pane.retention.removal_label.text() == "Its next application removes nothing."
        finally:
            events.stop()


def test_a_maintainer_made_a_viewer_can_no_longer_open_the_dialog(
    qtbot: QtBot, sqlite_deployment: Deployment, team: Team
) -> None:
    d = sqlite_deployment
    for pane in _pane(qtbot, d, team.maintainer):
        events = ServerEvents(d.url, team.maintainer.token)
        events.received.connect(pane.on_server_event)
        with qtbot.waitSignal(events.opened, timeout=10000):
            events.start()
        try:
            _open(qtbot, pane, team.project, "m")
            assert pane.retention.edit_button.isEnabled()
            d.add_member(team.project, team.maintainer, "viewer")
            try:
                qtbot.waitUntil(
                    lambda p=pane: not p.retention.edit_button.isEnabled(),  # type: ignore[misc]
                    timeout=10000,
                )
                assert pane.retention.open_editor() is None
            finally:
                d.add_member(team.project, team.maintainer, "maintainer")
            qtbot.waitUntil(
                lambda p=pane: p.retention.edit_button.isEnabled(),  # type: ignore[misc]
                timeout=10000,
            )
        finally:
            events.stop()


def test_every_control_of_the_pane_and_the_dialog_has_an_accessible_name(
    qtbot: QtBot, sqlite_deployment: Deployment, owner_pane: HistoryPane, team: Team
) -> None:
    from PySide6.QtWidgets import (
        QAbstractButton,
        QAbstractItemView,
        QAbstractSpinBox,
        QComboBox,
        QLineEdit,
        QWidget,
    )

    pane = owner_pane
    _open(qtbot, pane, team.project, "m")
    dialog = _edit(qtbot, pane)
    controls = (QAbstractButton, QAbstractItemView, QAbstractSpinBox, QComboBox, QLineEdit)
    for widget in (pane.retention, dialog):
        unnamed = [
            type(w).__name__
            for w in widget.findChildren(QWidget)
            if isinstance(w, controls)
            and w.isVisible()
            and not w.accessibleName().strip()
            and not (isinstance(w, QAbstractButton) and w.text().strip())
            # A spin box's own line edit is the spin box to assistive tools.
            and not isinstance(w.parent(), QAbstractSpinBox)
        ]
        assert unnamed == [], unnamed
    assert len(FIXED_COLUMNS) == COL_KEPT + 1
