"""The demo's run ends when its job does (issue 14): the session started the demo's training job,
so it knows when that process exits, and the run on the server is marked finished within
seconds, not after the daemon's run-idle time (minutes); a job that crashed is marked failed."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

import lmvp
from lmvp_desktop.session import DesktopSession
from tests.support import Deployment


@pytest.mark.parametrize(
    ("how", "status"), [(signal.SIGTERM, "finished"), (signal.SIGKILL, "failed")]
)
def test_the_demo_run_ends_seconds_after_its_job_stops(
    sqlite_deployment: Deployment,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    how: signal.Signals,
    status: str,
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("LMVP_CONFIG_DIR", str(tmp_path / "config"))
    assert sqlite_deployment.admin.token is not None
    session = DesktopSession(
        lmvp.Client(sqlite_deployment.url, sqlite_deployment.admin.token),
        state_dir=tmp_path / "state",
        settle_seconds=0.2,
    )
    assert session.daemon.run_idle_seconds >= 60  # the default: far longer than this test
    try:
        folder = session.start_demo(tmp_path / "data" / "lmvp" / f"demo-{how.name}")
        session.start()
        [watch] = [w for w in session.outbox.watches() if Path(w.folder) == folder.resolve()]
        client = session.client
        deadline = time.monotonic() + 30
        while (run_id := session.outbox.watch_run(watch.id).run_id) is None:
            assert time.monotonic() < deadline, "the demo's run was never made"
            time.sleep(0.1)
        assert client.run(run_id).status == "running"

        assert session.demo_job is not None
        session.demo_job.send_signal(how)
        stopped = time.monotonic()
        while client.run(run_id).status == "running":
            assert time.monotonic() - stopped < 10, "the run was not marked as ended"
            time.sleep(0.1)
        assert client.run(run_id).status == status
    finally:
        session.close()
