"""What one run of the desktop app holds: the logged-in client, the embedded sync daemon with
its outbox, and the server's event stream; plus the demo that `make run` shows.

`DesktopSession` owns their lifetimes: `start()` starts the daemon's thread and the event
stream, `close()` stops the daemon cleanly (an upload in flight stops between two slices and
resumes at the next start), the stream, the demo job and a local server the app started.
Nothing here touches widgets, so the headless mode (no display) uses it too.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
from pathlib import Path

import platformdirs

import lmvp
from lmvp.errors import Conflict
from lmvp_daemon.outbox import Outbox
from lmvp_daemon.service import SyncDaemon
from lmvp_desktop.local_server import LocalServer

log = logging.getLogger(__name__)

DEMO_PROJECT = "demo"
DEMO_MODEL = "tiny-net"


class DesktopSession:
    """The client, daemon and outbox of one desktop app run."""

    def __init__(
        self,
        client: lmvp.Client,
        *,
        state_dir: Path | None = None,
        settle_seconds: float = 2.0,
        bandwidth_limit: float | None = None,
        local_server: LocalServer | None = None,
    ) -> None:
        self.client = client
        self.outbox = Outbox(state_dir)
        # The daemon gets a client of its own: its uploads must not queue behind the UI's calls.
        self.daemon_client = lmvp.Client(client.server, client.http.token)
        self.daemon = SyncDaemon(self.outbox, self.daemon_client, settle_seconds=settle_seconds)
        if bandwidth_limit is not None:
            self.daemon.set_bandwidth_limit(bandwidth_limit)
        self.local_server = local_server
        self.demo_job: subprocess.Popen[bytes] | None = None
        self.username = ""

    def start(self) -> None:
        """Start syncing (the daemon's thread)."""
        try:
            self.username = self.client.whoami().username
        except lmvp.LMVPError as exc:
            log.warning("could not ask the server who this is: %s", exc)
        self.daemon.start()

    def close(self) -> None:
        """Stop everything this session started, the daemon first (cleanly)."""
        self.daemon.stop()
        if self.demo_job is not None and self.demo_job.poll() is None:
            self.demo_job.terminate()
            self.demo_job.wait(10)
        self.daemon_client.close()
        self.client.close()
        self.outbox.close()
        if self.local_server is not None:
            self.local_server.stop()

    # --- the demo -------------------------------------------------------------------------

    def start_demo(self, folder: Path | None = None) -> Path:
        """Watch a demo folder as `demo/tiny-net` and start a simulated training job writing
        checkpoints and metrics.jsonl into it (a separate process); returns the folder."""
        folder = folder or Path(platformdirs.user_data_dir("lmvp", appauthor=False)) / "demo-run"
        folder.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(Conflict):  # made by an earlier demo
            self.client.create_project(DEMO_PROJECT)
        self.client.ensure_model(f"{DEMO_PROJECT}/{DEMO_MODEL}")
        if not any(Path(w.folder) == folder.resolve() for w in self.outbox.watches()):
            self.outbox.add_watch(folder, DEMO_PROJECT, DEMO_MODEL)
        self.demo_job = subprocess.Popen(
            [sys.executable, "-m", "lmvp_desktop.demo_job", str(folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        log.info("demo: a simulated training job writes into %s", folder)
        return folder


__all__ = ["DEMO_MODEL", "DEMO_PROJECT", "DesktopSession"]
