"""What one run of the desktop app holds: the logged-in client, the embedded sync daemon with
its outbox, and the server's event stream; plus the demo that `make run` shows.

`DesktopSession` owns their lifetimes: `start()` starts the daemon's thread and the event
stream, `close()` stops the daemon cleanly (an upload in flight stops between two slices and
resumes at the next start), the stream, the demo job and a local server the app started.
Nothing here touches widgets, so the headless mode (no display) uses it too.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import platformdirs

import lmvp
from lmvp.errors import Conflict
from lmvp_daemon.alerts import DEFAULT_DIVERGENCE_FACTOR
from lmvp_daemon.errors import DaemonError
from lmvp_daemon.outbox import Outbox
from lmvp_daemon.run_end import DEFAULT_RUN_IDLE_SECONDS
from lmvp_daemon.service import SyncDaemon
from lmvp_daemon.state_dir import DESKTOP
from lmvp_desktop import demo_job
from lmvp_desktop.local_server import LocalServer

log = logging.getLogger(__name__)

DEMO_PROJECT = "demo"
DEMO_MODEL = "tiny-net"
_DEMO_FOLDER = "demo-run"


class DesktopSession:
    """The client, daemon and outbox of one desktop app run."""

    def __init__(
        self,
        client: lmvp.Client,
        *,
        state_dir: Path | None = None,
        settle_seconds: float = 2.0,
        bandwidth_limit: float | None = None,
        run_idle_seconds: float = DEFAULT_RUN_IDLE_SECONDS,
        divergence_factor: float = DEFAULT_DIVERGENCE_FACTOR,
        local_server: LocalServer | None = None,
    ) -> None:
        self.client = client
        self.outbox = Outbox(state_dir)
        # The daemon gets a client of its own: its uploads must not queue behind the UI's calls.
        self.daemon_client = lmvp.Client(client.server, client.token)
        try:
            # Refused (StateDirInUse) while `lmvp-daemon run` syncs from the same state dir.
            self.daemon = SyncDaemon(
                self.outbox,
                self.daemon_client,
                settle_seconds=settle_seconds,
                run_idle_seconds=run_idle_seconds,
                divergence_factor=divergence_factor,
                holder=DESKTOP,
            )
        except DaemonError:
            self.daemon_client.close()
            self.outbox.close()
            raise
        if bandwidth_limit is not None:
            self.daemon.set_bandwidth_limit(bandwidth_limit)
        self.local_server = local_server
        self.demo_job: subprocess.Popen[bytes] | None = None
        self.demo_folder: Path | None = None
        # Called (on a thread of the session's) when the demo's job has trained all its steps.
        self.demo_finished_callbacks: list[Callable[[], None]] = []
        self.username = ""
        self._closing = False

    def start(self) -> None:
        """Start syncing (the daemon's thread)."""
        try:
            self.username = self.client.whoami().username
        except lmvp.LMVPError as exc:
            log.warning("could not ask the server who this is: %s", exc)
        self.daemon.start()

    def close(self) -> None:
        """Stop everything this session started, the daemon first (cleanly)."""
        self._closing = True
        self.daemon.close()
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
        checkpoints and metrics.jsonl into it (a separate process); returns the folder.

        The folder is the one the last demo used (the job goes on where it stopped), unless
        given. A job that already trained all its steps is not started again: the demo is then
        finished (`demo_state`), and `restart_demo` runs it again."""
        folder = folder or self._current_demo_folder()
        folder.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(Conflict):  # made by an earlier demo
            self.client.create_project(DEMO_PROJECT)
        self.client.ensure_model(f"{DEMO_PROJECT}/{DEMO_MODEL}")
        if not any(Path(w.folder) == folder.resolve() for w in self.outbox.watches()):
            self.outbox.add_watch(folder, DEMO_PROJECT, DEMO_MODEL)
            self.daemon.reload_watches()
        self.demo_folder = folder
        self.demo_job = None
        if demo_job.last_step(folder) >= demo_job.STEPS:
            self._demo_finished()
            return folder
        job = subprocess.Popen(
            [sys.executable, "-m", "lmvp_desktop.demo_job", str(folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.demo_job = job
        threading.Thread(target=self._wait_for_demo, args=(job,), daemon=True).start()
        log.info("demo: a simulated training job writes into %s", folder)
        return folder

    def restart_demo(self) -> Path:
        """Run the demo's job again from its first step, as a new run: in a new folder
        (`demo-run-2`, `-3` ...) with a watch of its own, since a watch feeds one run. The
        earlier folders and their watches stay (their checkpoints are versions already).
        Returns the new folder."""
        if self.demo_job is not None and self.demo_job.poll() is None:
            self.demo_job.terminate()
            self.demo_job.wait(10)
        root = _demo_root()
        number = 2
        while (root / f"{_DEMO_FOLDER}-{number}").exists():
            number += 1
        return self.start_demo(root / f"{_DEMO_FOLDER}-{number}")

    def demo_state(self) -> DemoState:
        """Whether this session's demo job is running, has finished or stopped early."""
        if self.demo_folder is None:
            return DemoState.none
        if self.demo_job is None:
            return DemoState.finished  # it had trained all its steps before this start
        code = self.demo_job.poll()
        if code is None:
            return DemoState.running
        return DemoState.finished if code == 0 else DemoState.stopped

    def _wait_for_demo(self, job: subprocess.Popen[bytes]) -> None:
        code = job.wait()
        if job is not self.demo_job or self._closing:
            return
        # The writer of the demo's folder exited: its run ends now, not after the idle time;
        # finished when it trained all its steps or was stopped (SIGTERM, Ctrl-C), failed when
        # it crashed (an error, SIGKILL, a segfault).
        if self.demo_folder is not None:
            stopped = (0, -signal.SIGTERM, -signal.SIGINT)
            self.daemon.job_ended(self.demo_folder, failed=code not in stopped)
        if code == 0:
            self._demo_finished()

    def _demo_finished(self) -> None:
        for callback in list(self.demo_finished_callbacks):
            callback()

    def _current_demo_folder(self) -> Path:
        """The folder of the newest demo watch, else the first demo folder."""
        root = _demo_root()
        for watch in reversed(self.outbox.watches()):
            folder = Path(watch.folder)
            if (
                (watch.project, watch.model) == (DEMO_PROJECT, DEMO_MODEL)
                and folder.parent == root.resolve()
                and re.fullmatch(rf"{_DEMO_FOLDER}(-\d+)?", folder.name)
            ):
                return folder
        return root / _DEMO_FOLDER


class DemoState(enum.Enum):
    """Where the demo's simulated training job stands."""

    none = "none"  # this session runs no demo
    running = "running"
    finished = "finished"  # it trained all its steps
    stopped = "stopped"  # it stopped before its end (killed, or it failed)


def _demo_root() -> Path:
    return Path(platformdirs.user_data_dir("lmvp", appauthor=False))


__all__ = ["DEMO_MODEL", "DEMO_PROJECT", "DemoState", "DesktopSession"]
