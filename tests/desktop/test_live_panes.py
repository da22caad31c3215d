"""Every pane stays true while things happen on the server (issue 14): the tree picks up
projects and models created after it loaded (also before the event stream opened) and drops a
model deleted elsewhere, the label under the table counts its rows ("1 version"), the plot
knows the runs that started after it loaded and says when one finished or failed, and the table
reads at a glance ("3 min ago").
Real server, real Qt widgets offscreen, wired as the main window wires them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

import lmvp
from lmvp_desktop.history_view import HistoryPane
from lmvp_desktop.metric_plot import MetricPlot
from lmvp_desktop.server_events import ServerEvents
from lmvp_desktop.version_columns import COL_MESSAGE, when
from tests.support import ADMIN_PASSWORD, Api, Deployment, ServerProcess, unique


class Panes:
    """The history pane and the plot of one user, fed by one event stream."""

    def __init__(self, qtbot: QtBot, deployment: Deployment, api: Api, tmp_path: Path) -> None:
        self.client = lmvp.Client(deployment.url, api.token, cache_dir=tmp_path / "cache")
        self.history = HistoryPane(self.client)
        self.plot = MetricPlot(self.client, live_interval_ms=200)
        for widget in (self.history, self.plot):
            qtbot.addWidget(widget)
            widget.show()
        self.events = ServerEvents(deployment.url, api.token)
        self.events.received.connect(self.history.on_server_event)
        self.events.received.connect(self.plot.on_server_event)
        self.events.opened.connect(self.history.reconcile)
        self.events.opened.connect(self.plot.reconcile)
        self.history.model_selected.connect(self.plot.show_model)

    def tree(self) -> dict[str, list[str]]:
        model = self.history.tree_model
        out: dict[str, list[str]] = {}
        for row in range(model.rowCount()):
            item = model.item(row)
            out[item.text()] = [item.child(r).text() for r in range(item.rowCount())]
        return out

    def close(self) -> None:
        self.events.stop()
        self.client.close()


@pytest.fixture
def user(sqlite_deployment: Deployment) -> Api:
    return sqlite_deployment.user("live")


@pytest.fixture
def panes(
    qtbot: QtBot, sqlite_deployment: Deployment, user: Api, tmp_path: Path
) -> Iterator[Panes]:
    p = Panes(qtbot, sqlite_deployment, user, tmp_path)
    yield p
    p.close()


def _publish(client: lmvp.Client, ref: str, tmp_path: Path, message: str) -> lmvp.Version:
    path = tmp_path / f"{unique('w')}.bin"
    path.write_bytes(message.encode())
    return client.update(ref, path, message=message)


def test_tree_follows_projects_and_models_created_before_and_after_the_stream_opened(
    qtbot: QtBot, sqlite_deployment: Deployment, user: Api, panes: Panes, tmp_path: Path
) -> None:
    qtbot.waitUntil(lambda: not panes.history.tree_model._refreshing, timeout=5000)
    assert panes.tree() == {}
    # Created after the tree loaded and before the stream opened: no event will say so.
    early = sqlite_deployment.project(user, prefix="early")
    with lmvp.Client(sqlite_deployment.url, user.token) as client:
        client.create_model(f"{early}/first")
        panes.events.start()
        qtbot.waitUntil(lambda: panes.tree().get(early) == ["first"], timeout=10_000)

        # After it opened: the events bring them.
        late = sqlite_deployment.project(user, prefix="late")
        client.create_model(f"{late}/b-model")
        client.create_model(f"{late}/a-model")
        qtbot.waitUntil(lambda: panes.tree().get(late) == ["a-model", "b-model"], timeout=10_000)

        # Deleted elsewhere: it disappears, and the table showing it empties.
        _publish(client, f"{late}/b-model", tmp_path, "v1")
        panes.history.select_model(late, "b-model")
        qtbot.waitUntil(lambda: panes.history.versions.rowCount() == 1, timeout=10_000)
        assert user.delete(f"/projects/{late}/models/b-model").status_code == 204
        qtbot.waitUntil(lambda: panes.tree().get(late) == ["a-model"], timeout=10_000)
        qtbot.waitUntil(lambda: panes.history.versions.rowCount() == 0, timeout=10_000)
        assert "was deleted" in panes.plot.status_text()


def test_the_count_label_counts_the_rows_as_versions_arrive(
    qtbot: QtBot, sqlite_deployment: Deployment, user: Api, panes: Panes, tmp_path: Path
) -> None:
    project = sqlite_deployment.project(user, prefix="count")
    ref = f"{project}/net"
    with lmvp.Client(sqlite_deployment.url, user.token) as client:
        _publish(client, ref, tmp_path, "first")
        panes.events.start()
        qtbot.waitUntil(lambda: project in panes.tree(), timeout=10_000)
        panes.history.select_model(project, "net")
        label = panes.history.table_status
        qtbot.waitUntil(lambda: label.text() == "1 version", timeout=10_000)
        for n in range(2, 5):
            _publish(client, ref, tmp_path, f"v{n}")
            qtbot.waitUntil(lambda n=n: label.text() == f"{n} versions", timeout=10_000)
        assert panes.history.versions.rowCount() == 4
        assert panes.history.table.model().rowCount() == 4


def test_the_plot_names_a_run_that_started_after_it_loaded(
    qtbot: QtBot, sqlite_deployment: Deployment, user: Api, panes: Panes
) -> None:
    project = sqlite_deployment.project(user, prefix="runs")
    ref = f"{project}/net"
    with lmvp.Client(sqlite_deployment.url, user.token) as client:
        client.create_model(ref)
        panes.plot.show_model(project, "net")
        qtbot.waitUntil(lambda: "has no runs yet" in panes.plot.status_text(), timeout=10_000)
        # Started before the stream opened: reconciled when it opens.
        run = client.create_run(ref, name="early-run")
        client.log_metrics(run.id, [lmvp.MetricPoint("loss", 0, 1.0)])
        panes.events.start()
        qtbot.waitUntil(
            lambda: panes.plot.status_text() == f"{ref}: 1 run; running: early-run",
            timeout=10_000,
        )
        client.create_run(ref, name="second")  # after: its event brings it
        qtbot.waitUntil(
            lambda: panes.plot.status_text().startswith(f"{ref}: 2 runs; running: "),
            timeout=10_000,
        )
        client.finish_run(run.id)
        qtbot.waitUntil(
            lambda: (
                panes.plot.status_text() == f"{ref}: 2 runs; running: second; finished: early-run"
            ),
            timeout=10_000,
        )


def test_the_plot_says_a_run_finished_or_failed_when_its_job_ends(
    qtbot: QtBot, sqlite_deployment: Deployment, user: Api, panes: Panes
) -> None:
    project = sqlite_deployment.project(user, prefix="ends")
    ref = f"{project}/net"
    with lmvp.Client(sqlite_deployment.url, user.token) as client:
        client.create_model(ref)
        ok = client.create_run(ref, name="ok-run")
        client.log_metrics(ok.id, [lmvp.MetricPoint("loss", 0, 1.0)])
        panes.events.start()
        panes.plot.show_model(project, "net")
        qtbot.waitUntil(
            lambda: panes.plot.status_text() == f"{ref}: 1 run; running: ok-run", timeout=10_000
        )
        # The run is drawn and polled live; its finish event (a job that stopped) says so.
        assert panes.plot.shown_runs() == [ok.id]
        client.finish_run(ok.id)
        qtbot.waitUntil(
            lambda: panes.plot.status_text() == f"{ref}: 1 run; finished: ok-run", timeout=10_000
        )
        # A run the plot does not draw, whose job crashed, is said to have failed.
        crashed = client.create_run(ref, name="crashed-run")
        qtbot.waitUntil(
            lambda: panes.plot.status_text().startswith(f"{ref}: 2 runs; running: crashed-run"),
            timeout=10_000,
        )
        panes.plot.set_runs([ok.id])
        assert crashed.id not in panes.plot.shown_runs()
        client.finish_run(crashed.id, status="failed")
        qtbot.waitUntil(
            lambda: (
                panes.plot.status_text() == f"{ref}: 2 runs; finished: ok-run; failed: crashed-run"
            ),
            timeout=10_000,
        )
        for n in range(4):
            client.finish_run(client.create_run(ref, name=f"more-{n}").id)
        shortened = (
            f"{ref}: 6 runs; finished: more-3, more-2, more-1 and 2 more; failed: crashed-run"
        )
        qtbot.waitUntil(lambda: panes.plot.status_text() == shortened, timeout=10_000)


def test_times_read_at_a_glance_to_the_minute() -> None:
    now = datetime(2026, 12, 4, 14, 30, tzinfo=UTC).astimezone()
    assert when(now - timedelta(seconds=20), now) == "just now"
    assert when(now - timedelta(minutes=3, seconds=50), now) == "3 min ago"
    earlier = now - timedelta(hours=2)
    assert when(earlier, now) in (f"today {earlier:%H:%M}", f"yesterday {earlier:%H:%M}")
    assert when(now - timedelta(days=400), now) == (now - timedelta(days=400)).strftime(
        "%Y-%m-%d %H:%M"
    )


def test_after_the_stream_drops_and_reconnects_nothing_is_missed(
    qtbot: QtBot, make_server: Callable[[str], ServerProcess], tmp_path: Path
) -> None:
    server = make_server("sqlite")
    server.start()
    try:
        deployment = Deployment(server=server, admin=Api(server.url).login("admin", ADMIN_PASSWORD))
        user = deployment.user("drop")
        project = deployment.project(user, prefix="drop")
        ref = f"{project}/net"
        panes = Panes(qtbot, deployment, user, tmp_path)
        panes.events._retry_seconds = 0.2
        opened: list[int] = []
        panes.events.opened.connect(lambda: opened.append(1))
        try:
            with lmvp.Client(deployment.url, user.token) as client:
                _publish(client, ref, tmp_path, "before")
            panes.events.start()
            qtbot.waitUntil(lambda: len(opened) == 1, timeout=10_000)
            panes.history.select_model(project, "net")
            qtbot.waitUntil(lambda: panes.history.versions.rowCount() == 1, timeout=10_000)

            server.stop()  # the stream drops
            server.start()
            with lmvp.Client(deployment.url, user.token) as client:
                _publish(client, ref, tmp_path, "while reconnecting")
                client.create_model(f"{project}/other")
            qtbot.waitUntil(lambda: len(opened) >= 2, timeout=30_000)
            qtbot.waitUntil(lambda: panes.history.versions.rowCount() == 2, timeout=10_000)
            qtbot.waitUntil(lambda: panes.tree().get(project) == ["net", "other"], timeout=10_000)
            assert panes.history.table_status.text() == "2 versions"
        finally:
            panes.close()
    finally:
        server.stop()


def test_column_widths_a_user_sets_are_remembered(
    qtbot: QtBot, sqlite_deployment: Deployment, user: Api, tmp_path: Path
) -> None:
    first = Panes(qtbot, sqlite_deployment, user, tmp_path)
    header = first.history.table.horizontalHeader()
    default = header.sectionSize(COL_MESSAGE)
    header.resizeSection(COL_MESSAGE, default + 123)  # as a drag of the header does
    first.close()
    again = Panes(qtbot, sqlite_deployment, user, tmp_path)
    try:
        assert again.history.table.horizontalHeader().sectionSize(COL_MESSAGE) == default + 123
        # Sized to their content, the step and three metric columns fit beside the details
        # on a 1366-pixel screen (the first 7 columns leave room for 3 metric columns).
        widths = [again.history.table.horizontalHeader().sectionSize(c) for c in range(7)]
        assert sum(widths) - 123 < 620
    finally:
        again.close()
