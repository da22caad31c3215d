"""Bad data told apart from lost data: a training job wrote some malformed records into its
metric files; the real daemon (real server, real watchdog) sends every other point, and says
which file holds how many malformed records in its `metrics_skipped` events, in
`SyncDaemon.metric_skips()`, in its status file and in `lmvp-daemon status`, across a restart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import lmvp
from lmvp_daemon.outbox import Outbox
from lmvp_daemon.service import SyncDaemon, read_status
from lmvp_daemon.sync import EventKind, SyncEvent
from tests.support import Deployment

DAEMON = str(Path(sys.executable).parent / "lmvp-daemon")
CSV = "lightning_logs/version_0/metrics.csv"


def follow_until(
    outbox: Outbox, client: lmvp.Client, watch_id: int, *, points: int, skips: dict[str, int]
) -> list[SyncEvent]:
    """Run the daemon until the watch's run holds `points` points and it reports `skips`;
    returns its metrics_skipped events."""
    daemon = SyncDaemon(outbox, client, settle_seconds=0.2, interval=0.1)
    events: list[SyncEvent] = []
    daemon.subscribe(lambda e: events.append(e) if e.kind is EventKind.metrics_skipped else None)
    daemon.start()
    in_status = [{"watch": watch_id, "file": f, "skipped": n} for f, n in sorted(skips.items())]
    try:
        deadline = time.monotonic() + 30
        while True:
            run_id = outbox.watch_run(watch_id).run_id
            got = sum(len(s.steps) for s in client.metrics(run_id).values()) if run_id else 0
            status = read_status(outbox.state_dir)  # what the running daemon wrote
            if (
                got == points
                and daemon.metric_skips() == {watch_id: skips}
                and status.get("metric_skips") == in_status
            ):
                break
            assert time.monotonic() < deadline, (got, daemon.metric_skips(), status)
            time.sleep(0.1)
    finally:
        daemon.close()
    return events


def test_malformed_metric_records_are_reported_by_file_while_every_other_point_is_sent(
    server: Deployment, tmp_path: Path
) -> None:
    user = server.user("metric-skips")
    project = server.project(user)
    folder = tmp_path / "run"
    (folder / "lightning_logs" / "version_0").mkdir(parents=True)
    jsonl = folder / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1 / s}) for s in range(1, 6)]
    lines[2:2] = ['{"step": 3, "loss": ', "not json"]
    jsonl.write_text("\n".join(lines) + "\n")
    (folder / CSV).write_text("epoch,step,train_loss\r\n0,9,0.5\r\n0,oops,0.4\r\n0,19,0.3\r\n")
    outbox = Outbox(tmp_path / "state")
    watch = outbox.add_watch(folder, project, "net")
    client = lmvp.Client(server.url, user.token)
    try:
        events = follow_until(
            outbox, client, watch.id, points=5 + 4, skips={"metrics.jsonl": 2, CSV: 1}
        )
        assert {(e.watch_id, e.key, e.skipped) for e in events} == {
            (watch.id, "metrics.jsonl", 2),
            (watch.id, CSV, 1),
        }
        [csv_event] = [e for e in events if e.key == CSV]
        assert csv_event.message.startswith(f"{CSV}: 1 malformed row skipped")

        env = dict(os.environ, LMVP_DAEMON_STATE_DIR=str(tmp_path / "state"))
        status = subprocess.run(
            [DAEMON, "status"], env=env, capture_output=True, text=True, timeout=60
        )
        assert status.returncode == 0, status.stderr
        assert "metrics.jsonl: 2 malformed lines skipped (bad data in the file" in status.stdout
        assert f"{CSV}: 1 malformed row skipped" in status.stdout

        # One more bad line while the daemon is off: counted on top, the rest not again.
        with jsonl.open("a") as f:
            f.write('{"step": 6, "loss": 0.1}\n{"step": 7\n{"step": 8, "loss": 0.05}\n')
        events = follow_until(
            outbox, client, watch.id, points=7 + 4, skips={"metrics.jsonl": 3, CSV: 1}
        )
        assert (watch.id, "metrics.jsonl", 3) in {(e.watch_id, e.key, e.skipped) for e in events}
    finally:
        client.close()
        outbox.close()
