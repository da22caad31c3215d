"""The model history pane against a real server: the project/model tree, the lazily paged
version table (10,000 versions), live updates from the event stream, details, compare, aliases
by role, and downloads with progress — real Qt widgets, offscreen."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PySide6.QtCore import QItemSelectionModel, Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QInputDialog
from pytestqt.qtbot import QtBot

import lmvp
from lmvp_desktop.compare import FileChange, compare_versions
from lmvp_desktop.history_view import HistoryPane
from lmvp_desktop.server_events import ServerEvents
from lmvp_desktop.version_columns import COL_ALIASES, COL_MESSAGE, COL_SIZE, FIXED_COLUMNS
from lmvp_desktop.version_pages import PAGE_SIZE
from lmvp_desktop.version_table import VERSION_ROLE
from tests.support import Api, Deployment, server_database, sha256_file, unique

BIG = 10_000


@dataclass
class Team:
    """A project with an owner, a maintainer and a viewer, and a model `m` of three versions."""

    project: str
    owner: Api
    maintainer: Api
    viewer: Api
    versions: list[lmvp.Version]


def _client(deployment: Deployment, api: Api, tmp_path: Path) -> lmvp.Client:
    # A cache of its own: downloads really fetch, and progress really moves.
    return lmvp.Client(deployment.url, api.token, cache_dir=tmp_path / f"cache-{unique('c')}")


@pytest.fixture(scope="module")
def team(sqlite_deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Team:
    d = sqlite_deployment
    owner = d.user("hist-owner")
    project = d.project(owner, prefix="hist")
    maintainer, viewer = d.user("hist-maint"), d.user("hist-view")
    d.add_member(project, maintainer, "maintainer")
    d.add_member(project, viewer, "viewer")
    folder = tmp_path_factory.mktemp("team-files")
    with lmvp.Client(d.url, owner.token, cache_dir=folder / "cache") as client:
        run = client.create_run(f"{project}/m", name="train")
        versions = []
        for i in range(3):
            model_dir = folder / f"v{i}"
            model_dir.mkdir()
            (model_dir / "model.bin").write_bytes(os.urandom(4096 + i))
            if i == 2:
                (model_dir / "tokenizer.json").write_text('{"vocab": 3}')
            versions.append(
                client.update(
                    f"{project}/m",
                    model_dir,
                    message=f"checkpoint {i} {'warmup' if i == 0 else 'tuned'}",
                    metadata={"framework": "torch", "hp": {"lr": 0.1 / (i + 1)}},
                    metrics={"loss": 1.0 / (i + 1), "acc": 0.5 + i / 10},
                    run=run.id,
                    step=100 * (i + 1),
                    parent=versions[-1] if versions else None,
                )
            )
        client.create_model(f"{project}/empty")
    return Team(project, owner, maintainer, viewer, versions)


@pytest.fixture(scope="module")
def big_model(sqlite_deployment: Deployment) -> tuple[Api, str]:
    """A model with 10,000 versions: one committed through the API, the other 9,999 written
    straight into the server's database in one transaction (committing them one by one over
    HTTP takes ~6 ms each, a minute in all, which this file cannot spend). The rows are what
    a commit writes; the listing endpoint reads them as it reads any other."""
    from sqlalchemy import func, insert, select, update

    from lmvp_server.models import Model, User, Version, VersionFile

    d = sqlite_deployment
    owner = d.user("big")
    project = d.project(owner, prefix="big")
    r = d.commit(owner, project, "huge", {"model.bin": b"weights"}, message="v1")
    assert r.status_code == 201, r.text
    first = r.json()
    sha = first["files"][0]["sha256"]
    start = datetime.now(UTC) - timedelta(hours=BIG)
    with server_database(d.server) as session:
        model = session.scalars(select(Model).where(Model.name == "huge")).one()
        author = session.scalars(select(User).where(User.username == owner.username)).one()  # type: ignore[attr-defined]
        next_id = (session.scalar(select(func.max(Version.id))) or 0) + 1
        rows = [
            {
                "id": next_id + n,
                "model_id": model.id,
                "number": n + 2,
                "author_id": author.id,
                "message": f"step {(n + 2) * 10}",
                "meta": {"step": (n + 2) * 10},
                "metrics": {"loss": 1 / (n + 2)},
                "source_host": "gpu-1",
                "source_path": "/runs/big",
                "size": 7,
                "file_count": 1,
                "created_at": start + timedelta(hours=n + 1),
            }
            for n in range(BIG - 1)
        ]
        session.execute(insert(Version), rows)
        session.execute(
            insert(VersionFile),
            [
                {"version_id": row["id"], "path": "model.bin", "size": 7, "sha256": sha}
                for row in rows
            ],
        )
        session.execute(
            update(Model)
            .where(Model.id == model.id)
            .values(version_counter=BIG, revision=Model.revision + 1)
        )
    return owner, project


@pytest.fixture
def pane(
    qtbot: QtBot, sqlite_deployment: Deployment, team: Team, tmp_path: Path
) -> Iterator[HistoryPane]:
    """The pane as the project's owner sees it, with the tree loaded."""
    yield from _pane(qtbot, sqlite_deployment, team.owner, tmp_path)


def _pane(qtbot: QtBot, deployment: Deployment, api: Api, tmp_path: Path) -> Iterator[HistoryPane]:
    client = _client(deployment, api, tmp_path)
    widget = HistoryPane(client)
    qtbot.addWidget(widget)
    widget.resize(1400, 700)
    widget.show()
    qtbot.waitUntil(lambda: widget.tree_model.rowCount() > 0, timeout=5000)
    yield widget
    client.close()


def _open_model(qtbot: QtBot, pane: HistoryPane, project: str, model: str, rows: int) -> None:
    with qtbot.waitSignal(pane.model_selected, timeout=2000):
        pane.select_model(project, model)
    qtbot.waitUntil(lambda: pane.versions.rowCount() >= rows and not pane.versions.loading)


def _select_rows(pane: HistoryPane, *numbers: int) -> None:
    selection = pane.table.selectionModel()
    selection.clearSelection()
    for number in numbers:
        row = pane.versions.row_of(number)
        assert row is not None
        index = pane.proxy.mapFromSource(pane.versions.index(row, 0))
        selection.select(
            index,
            QItemSelectionModel.SelectionFlag.Select | QItemSelectionModel.SelectionFlag.Rows,
        )


def _cell(pane: HistoryPane, number: int, column: int) -> str:
    row = pane.versions.row_of(number)
    assert row is not None
    return str(pane.versions.index(row, column).data())


# --- the tree and the table ----------------------------------------------------------------------


def test_tree_lists_projects_with_their_models(pane: HistoryPane, team: Team) -> None:
    project_index = pane.tree_model.index_of(team.project)
    assert project_index.isValid()
    children = [
        pane.tree_model.index(row, 0, project_index).data()
        for row in range(pane.tree_model.rowCount(project_index))
    ]
    assert children == ["empty", "m"]
    assert pane.tree_model.role_of(team.project) == "owner"


def test_clicking_a_model_in_the_tree_loads_its_versions_newest_first(
    qtbot: QtBot, pane: HistoryPane, team: Team
) -> None:
    with qtbot.waitSignal(pane.model_selected, timeout=2000) as selected:
        pane.tree.setCurrentIndex(pane.tree_model.index_of(team.project, "m"))
    assert selected.args == [team.project, "m"]
    qtbot.waitUntil(lambda: pane.versions.rowCount() == 3)

    assert [pane.proxy.version_at(r).number for r in range(3)] == [3, 2, 1]
    headers = [
        pane.versions.headerData(c, Qt.Orientation.Horizontal)
        for c in range(len(FIXED_COLUMNS) + 2)
    ]
    assert headers == [*FIXED_COLUMNS, "loss", "acc"]
    assert _cell(pane, 1, COL_MESSAGE) == "checkpoint 0 warmup"
    assert _cell(pane, 3, COL_SIZE) == "4.0 KiB"
    assert _cell(pane, 2, len(FIXED_COLUMNS)) == "0.5"  # loss
    assert _cell(pane, 2, 6) == "200"  # step
    assert pane.table_status.text() == "3 versions"

    with qtbot.waitSignal(pane.model_selected):
        pane.select_model(team.project, "empty")
    qtbot.waitUntil(lambda: pane.versions.all_loaded() and not pane.versions.loading)
    assert pane.versions.rowCount() == 0


def test_filter_matches_message_author_and_aliases_and_columns_sort(
    qtbot: QtBot, pane: HistoryPane, team: Team
) -> None:
    _open_model(qtbot, pane, team.project, "m", 3)
    pane.filter_edit.setText("WARMUP")
    assert pane.proxy.rowCount() == 1 and pane.proxy.version_at(0).number == 1
    pane.filter_edit.setText(team.owner.username)  # type: ignore[attr-defined]
    assert pane.proxy.rowCount() == 3
    pane.filter_edit.setText("nobody-wrote-this")
    assert pane.proxy.rowCount() == 0
    pane.filter_edit.clear()

    pane.table.sortByColumn(len(FIXED_COLUMNS), Qt.SortOrder.AscendingOrder)  # by loss
    assert [pane.proxy.version_at(r).number for r in range(3)] == [3, 2, 1]
    pane.table.sortByColumn(COL_SIZE, Qt.SortOrder.DescendingOrder)
    assert pane.proxy.version_at(0).number == 3  # the one with the tokenizer too


def test_ten_thousand_versions_load_a_page_at_a_time_as_the_view_scrolls(
    qtbot: QtBot, sqlite_deployment: Deployment, big_model: tuple[Api, str], tmp_path: Path
) -> None:
    owner, project = big_model
    for widget in _pane(qtbot, sqlite_deployment, owner, tmp_path):
        started = time.perf_counter()
        _open_model(qtbot, widget, project, "huge", PAGE_SIZE)
        first_page = time.perf_counter() - started
        assert widget.versions.rowCount() == PAGE_SIZE
        assert first_page < 2.0, f"first page took {first_page:.2f} s"
        assert widget.proxy.version_at(0).number == BIG
        assert widget.versions.canFetchMore()

        # Scrolling to the bottom fetches the next page, not the rest.
        widget.table.scrollToBottom()
        qtbot.waitUntil(lambda w=widget: w.versions.rowCount() == 2 * PAGE_SIZE)  # type: ignore[misc]
        qtbot.wait(100)
        assert widget.versions.rowCount() == 2 * PAGE_SIZE
        assert not widget.versions.loading

        # An old version: pages are fetched until it is there, then it is selected and shown.
        with qtbot.waitSignal(widget.version_selected, timeout=15000) as selected:
            widget.select_version(3)
        assert selected.args[0].number == 3
        current = widget.table.currentIndex()
        assert widget.proxy.version_at(current.row()).number == 3
        assert widget.table.viewport().rect().intersects(widget.table.visualRect(current))
        assert widget.details.fields["Message"].text() == "step 30"
        rows = widget.versions.rowCount()
        assert BIG - 2 <= rows <= BIG
        numbers = [widget.versions.version_at(r).number for r in range(rows)]
        assert numbers == sorted(set(numbers), reverse=True)  # no row twice, none out of order

        # Sorting all of them is quick, and the selection stays on its version.
        started = time.perf_counter()
        widget.table.sortByColumn(len(FIXED_COLUMNS), Qt.SortOrder.AscendingOrder)  # by loss
        assert time.perf_counter() - started < 1.0
        assert widget.proxy.version_at(0).number == BIG
        last = widget.proxy.rowCount() - 1
        assert widget.proxy.version_at(last).number == 1  # without the metric: last
        assert [v.number for v in widget.selected_versions()] == [3]


def test_new_version_appears_on_top_from_the_event_stream_without_reloading(
    qtbot: QtBot, pane: HistoryPane, sqlite_deployment: Deployment, team: Team, tmp_path: Path
) -> None:
    with lmvp.Client(sqlite_deployment.url, team.owner.token) as client:
        (tmp_path / "first.bin").write_bytes(b"first weights")
        client.update(f"{team.project}/live", tmp_path / "first.bin", message="first")
    _open_model(qtbot, pane, team.project, "live", 1)
    shown = pane.versions.version_at(0)
    events = ServerEvents(sqlite_deployment.url, team.owner.token)
    events.received.connect(pane.on_server_event)
    try:
        # The teammate commits once the server accepted the stream, as every later change
        # comes on it (what came before, the pane loads itself).
        with qtbot.waitSignal(events.opened, timeout=10000):
            events.start()
        (tmp_path / "new.bin").write_bytes(b"fresh weights")
        with lmvp.Client(sqlite_deployment.url, team.maintainer.token) as teammate:
            new = teammate.update(f"{team.project}/live", tmp_path / "new.bin", message="teammate")
        qtbot.waitUntil(lambda: pane.versions.rowCount() == 2, timeout=5000)
    finally:
        events.stop()
    assert new.number == 2
    assert [pane.proxy.version_at(r).message for r in range(2)] == ["teammate", "first"]
    assert pane.versions.version_at(1) is shown  # the row already there was kept, not read again

    # Asked for a version newer than the table knows (no event came): it is fetched and selected.
    with lmvp.Client(sqlite_deployment.url, team.owner.token) as client:
        third = client.update(f"{team.project}/live", tmp_path / "first.bin", message="third")
    with qtbot.waitSignal(pane.version_selected, timeout=5000) as selected:
        pane.select_version(third.number)
    assert selected.args[0].number == 3 and pane.versions.rowCount() == 3


# --- details and actions -------------------------------------------------------------------------


def test_selecting_a_version_shows_its_details(qtbot: QtBot, pane: HistoryPane, team: Team) -> None:
    _open_model(qtbot, pane, team.project, "m", 3)
    with qtbot.waitSignal(pane.version_selected) as selected:
        pane.select_version(3)
    version = selected.args[0]
    details = pane.details
    assert isinstance(version, lmvp.Version) and version.number == 3
    assert details.version == version

    assert details.fields["Parent"].text() == "v2"
    assert details.fields["Author"].text() == team.owner.username  # type: ignore[attr-defined]
    assert details.fields["Step"].text() == "300"
    assert details.fields["Run"].text() == str(version.run)
    assert details.fields["Source host"].text() == version.source_host != ""
    assert details.fields["Source folder"].text().endswith("v2")
    files = {
        details.files_table.item(r, 0).text(): details.files_table.item(r, 1).text()
        for r in range(details.files_table.rowCount())
    }
    assert files == {"model.bin": "4.0 KiB", "tokenizer.json": "12 B"}
    assert '"lr": 0.0333' in details.metadata_view.toPlainText()
    assert details.download_button.isEnabled() and details.alias_button.isEnabled()
    assert not pane.compare_button.isEnabled()

    with qtbot.waitSignal(pane.version_selected) as cleared:
        pane.table.clearSelection()
    assert cleared.args == [None]
    assert not details.download_button.isEnabled()


def test_copy_download_line_puts_the_call_on_the_clipboard(
    qtbot: QtBot, pane: HistoryPane, team: Team
) -> None:
    _open_model(qtbot, pane, team.project, "m", 3)
    with qtbot.waitSignal(pane.version_selected):
        pane.select_version(2)
    pane.details.copy_button.click()
    expected = f'lmvp.download("{team.project}/m:2")'
    assert QGuiApplication.clipboard().text() == expected


def test_comparing_two_versions_shows_the_files_and_metrics_that_differ(
    qtbot: QtBot, pane: HistoryPane, team: Team
) -> None:
    _open_model(qtbot, pane, team.project, "m", 3)
    _select_rows(pane, 3, 1)
    assert pane.compare_button.isEnabled()
    pane.compare_button.click()
    dialog = pane.compare_dialog
    assert dialog is not None and dialog.isVisible()
    assert dialog.comparison.a.number == 1 and dialog.comparison.b.number == 3

    files = dialog.files_table
    changes = {files.item(r, 0).text(): files.item(r, 1).text() for r in range(files.rowCount())}
    assert changes == {"model.bin": "changed", "tokenizer.json": "added"}

    fields = dialog.fields_table
    shown = {fields.item(r, 0).text(): fields.item(r, 0) for r in range(fields.rowCount())}
    assert fields.item(list(shown).index("metrics.loss"), 1).text() == "1.0"
    highlighted = {
        name for name, item in shown.items() if item.background().style() != Qt.BrushStyle.NoBrush
    }
    assert {"metrics.loss", "metrics.acc", "metadata.hp.lr", "message", "step"} <= highlighted
    assert "metadata.framework" not in highlighted and "author" not in highlighted

    _select_rows(pane, 3)
    assert not pane.compare_button.isEnabled()


def test_compare_versions_reports_removed_and_unchanged_files(team: Team) -> None:
    newer, older = team.versions[2], team.versions[0]
    comparison = compare_versions(newer, older)
    assert {f.path: f.change for f in comparison.files} == {
        "model.bin": FileChange.CHANGED,
        "tokenizer.json": FileChange.REMOVED,
    }
    same = compare_versions(older, older)
    assert same.changed_files == [] and same.differing_fields == []


def test_maintainer_sets_an_alias_and_the_table_shows_it(
    qtbot: QtBot, sqlite_deployment: Deployment, team: Team, tmp_path: Path
) -> None:
    for pane in _pane(qtbot, sqlite_deployment, team.maintainer, tmp_path):
        _open_model(qtbot, pane, team.project, "m", 3)
        with qtbot.waitSignal(pane.version_selected):
            pane.select_version(2)
        assert pane.details.alias_button.isEnabled()
        pane.details.alias_button.click()
        dialog = pane.findChild(QInputDialog)
        assert dialog is not None and dialog.isVisible()
        dialog.setTextValue("best")
        dialog.accept()
        # A new alias is set after a question that says so (issue 18).
        qtbot.waitUntil(lambda p=pane: p.details.confirmation is not None, timeout=5000)  # type: ignore[misc]
        box = pane.details.confirmation
        assert box is not None and box.text().startswith("Point the new alias 'best' at v2")
        with qtbot.waitSignal(pane.details.alias_set, timeout=5000) as done:
            next(b for b in box.buttons() if b.text() == "Set alias").click()
        assert done.args == ["best", 2]
        qtbot.waitUntil(lambda p=pane: _cell(p, 2, COL_ALIASES) == "best")  # type: ignore[misc]
        qtbot.waitUntil(lambda p=pane: p.details.fields["Aliases"].text() == "best")  # type: ignore[misc]
        assert pane.versions.index(0, 0).data(VERSION_ROLE).number != 2

    with lmvp.Client(sqlite_deployment.url, team.viewer.token) as viewer:
        assert viewer.version(f"{team.project}/m@best").number == 2


def test_viewer_cannot_set_an_alias_and_sees_the_servers_refusal(
    qtbot: QtBot, sqlite_deployment: Deployment, team: Team, tmp_path: Path
) -> None:
    with (
        lmvp.Client(sqlite_deployment.url, team.viewer.token) as viewer,
        pytest.raises(lmvp.PermissionDenied) as refused,
    ):
        viewer.set_alias(f"{team.project}/m", "mine", 1)

    for pane in _pane(qtbot, sqlite_deployment, team.viewer, tmp_path):
        _open_model(qtbot, pane, team.project, "m", 3)
        with qtbot.waitSignal(pane.version_selected):
            pane.select_version(1)
        assert not pane.details.alias_button.isEnabled()  # the role says no before the server does
        pane.details.set_alias("mine")  # and the server says so too, in its own words
        qtbot.waitUntil(lambda p=pane: p.details.error_box.detail.text() == refused.value.message)  # type: ignore[misc]
        assert pane.details.error_box.text() == "Your role in this project does not allow this."


def test_download_fills_the_progress_bar_and_writes_the_file_with_its_sha256(
    qtbot: QtBot, sqlite_deployment: Deployment, pane: HistoryPane, team: Team, tmp_path: Path
) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(12 * 1024 * 1024 + 5))
    with lmvp.Client(sqlite_deployment.url, team.owner.token) as client:
        version = client.update(f"{team.project}/weights", source, message="12 MiB")
    _open_model(qtbot, pane, team.project, "weights", 1)
    with qtbot.waitSignal(pane.version_selected):
        pane.select_version(version.number)

    target = tmp_path / "downloads"
    target.mkdir()
    details = pane.details
    details.set_download_dir_provider(lambda: target)
    seen: list[int] = []
    details.progress.valueChanged.connect(seen.append)
    with qtbot.waitSignal(details.download_finished, timeout=15000) as finished:
        details.download_button.click()
        assert not details.download_button.isEnabled()  # one download at a time
    path = Path(finished.args[0])
    assert path == target / "big.bin"
    assert sha256_file(path) == hashlib.sha256(source.read_bytes()).hexdigest()
    assert details.progress.value() == details.progress.maximum()
    assert any(0 < value < details.progress.maximum() for value in seen), seen
    assert seen == sorted(seen)
    assert details.download_button.isEnabled()


def test_compare_has_a_difference_column_readable_numbers_and_files_matched_by_role() -> None:
    from datetime import UTC, datetime

    def version(number: int, step: int, loss: float, lr: float) -> lmvp.Version:
        model = lmvp.FileEntry(f"model_step_{step}.pt", 10, f"{number:064x}")
        config = lmvp.FileEntry("config.json", 5, "c" * 64)
        return lmvp.Version(
            "p", "m", number, f"step {step}", {"lr": lr}, {"loss": loss}, "me", None, (), 15,
            (model, config), "", "", datetime.now(UTC), run=None, step=step,
        )  # fmt: skip

    a, b = version(1, 400, 0.8233629341234, 0.001), version(2, 800, 0.5, 0.001)
    comparison = compare_versions(a, b)
    loss = next(f for f in comparison.fields if f.name == "metrics.loss")
    assert (loss.a, loss.b) == ("0.823363", "0.5")
    assert loss.full_a == "0.8233629341234"  # all of it in the tooltip
    assert loss.difference == "-0.323363 (-39.3%)"
    lr = next(f for f in comparison.fields if f.name == "metadata.lr")
    assert lr.difference == "" and not lr.differs
    assert [(f.path, f.change) for f in comparison.changed_files] == [
        ("model_step_400.pt → model_step_800.pt", FileChange.CHANGED)
    ]
