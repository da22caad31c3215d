"""The daemon as the desktop app embeds it (`SyncDaemon` in a thread), against a real server,
real watchdog and real files: typed events and the overall state (idle, syncing, paused,
offline, error), pause that stops an upload in flight and resumes it at the server's offset,
the bandwidth limit, retry of failed checkpoints; and the kernel's inotify limits, hit for real
by lowering the sysctls (root only)."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import lmvp
from lmvp_daemon.outbox import Outbox
from lmvp_daemon.service import SyncDaemon, parse_rate, read_status
from lmvp_daemon.sync import DaemonState, EventKind, SyncEvent
from tests.client.relay import CountingRelay
from tests.support import (
    ADMIN_PASSWORD,
    Api,
    Deployment,
    ServerProcess,
    write_random_file,
)

MiB = 1024 * 1024
DAEMON = str(Path(sys.executable).parent / "lmvp-daemon")


class Recorder:
    """Collects a daemon's events; `wait_for` blocks until one matches."""

    def __init__(self) -> None:
        self.events: list[SyncEvent] = []
        self.threads: list[str] = []  # the name of the thread each event was sent on
        self._cond = threading.Condition()

    def __call__(self, event: SyncEvent) -> None:
        with self._cond:
            self.events.append(event)
            self.threads.append(threading.current_thread().name)
            self._cond.notify_all()

    def thread_of(self, event: SyncEvent) -> str:
        with self._cond:
            return self.threads[self.events.index(event)]

    def wait_for(self, match: Callable[[SyncEvent], bool], timeout: float = 30) -> SyncEvent:
        with self._cond:
            found: list[SyncEvent] = []

            def seen() -> bool:
                found[:] = [e for e in self.events if match(e)]
                return bool(found)

            assert self._cond.wait_for(seen, timeout), (
                f"no matching event in {timeout} s; got {[e.kind.value for e in self.events]}"
            )
            return found[0]

    def states(self) -> list[DaemonState]:
        with self._cond:
            return [e.state for e in self.events if e.kind is EventKind.state and e.state]

    def of(self, kind: EventKind) -> list[SyncEvent]:
        with self._cond:
            return [e for e in self.events if e.kind is kind]


@contextlib.contextmanager
def running_daemon(
    url: str, token: str, tmp_path: Path, project: str, *, settle: float = 0.2
) -> Iterator[tuple[SyncDaemon, Recorder, Path]]:
    folder = tmp_path / "run"
    folder.mkdir(exist_ok=True)
    outbox = Outbox(tmp_path / "state")
    if not outbox.watches():
        outbox.add_watch(folder, project, "net")
    client = lmvp.Client(url, token, retries=2)
    daemon = SyncDaemon(outbox, client, settle_seconds=settle, interval=0.2)
    recorder = Recorder()
    daemon.subscribe(recorder)
    daemon.start()
    try:
        yield daemon, recorder, folder
    finally:
        daemon.close()
        client.close()
        outbox.close()


def committed(key: str) -> Callable[[SyncEvent], bool]:
    return lambda e: e.kind is EventKind.committed and e.key == key


def state_is(state: DaemonState) -> Callable[[SyncEvent], bool]:
    return lambda e: e.kind is EventKind.state and e.state is state


def test_events_follow_a_checkpoint_from_queued_to_committed_with_progress(
    server: Deployment, tmp_path: Path
) -> None:
    user = server.user("embed")
    project = server.project(user)
    with running_daemon(server.url, user.token, tmp_path, project) as (daemon, rec, folder):
        write_random_file(folder / "model_step_10.safetensors", 3 * MiB, seed=1)
        rec.wait_for(committed("model_step_10.safetensors"))
        rec.wait_for(state_is(DaemonState.idle))
        assert daemon.state is DaemonState.idle

    kinds = [e.kind for e in rec.events if e.key == "model_step_10.safetensors"]
    assert kinds.index(EventKind.queued) < kinds.index(EventKind.committed)
    progress = rec.of(EventKind.progress)
    assert progress and progress[-1].sent == progress[-1].total == 3 * MiB
    assert all(a.sent <= b.sent for a, b in itertools.pairwise(progress))
    assert rec.of(EventKind.committed)[0].version == 1
    assert DaemonState.syncing in rec.states()


def test_a_stop_or_a_command_asked_during_a_turn_is_not_slept_through(
    server: Deployment, tmp_path: Path
) -> None:
    """The loop sleeps up to `interval` (here 10 s) when nothing happens; whatever is asked
    while it works on a turn must end that sleep at once. Here each is asked from another
    thread while the loop scans its watches: when the scan's event about the missing folder
    arrives (on the loop's thread). Both used to be slept through: one quit of the desktop app
    in three took a second longer (`interval` is 1 s there)."""
    user = server.user("sleeper")
    project = server.project(user)
    client = lmvp.Client(server.url, user.token, retries=2)

    def asked_during_a_scan(
        name: str, ask: Callable[[SyncDaemon, threading.Thread], Callable[[], bool]]
    ) -> float:
        """Seconds from the asking until what `ask` (given the daemon and its loop's thread)
        returns says it was done."""
        folder = tmp_path / name
        folder.mkdir()
        outbox = Outbox(tmp_path / f"state-{name}")
        outbox.add_watch(folder, project, "net")
        folder.rmdir()
        daemon = SyncDaemon(outbox, client, interval=10.0)
        asked: list[tuple[float, Callable[[], bool]]] = []

        def on_event(event: SyncEvent) -> None:
            if event.kind is EventKind.watch_error and not asked:
                loop = threading.current_thread()
                asker = threading.Thread(
                    target=lambda: asked.append((time.monotonic(), ask(daemon, loop)))
                )
                asker.start()
                asker.join()

        daemon.subscribe(on_event)
        daemon.start()
        try:
            started = time.monotonic()
            while not asked:
                assert time.monotonic() - started < 20, "the scan said nothing of the folder"
                time.sleep(0.01)
            at, done = asked[0]
            while not done() and time.monotonic() - at < 20:
                time.sleep(0.01)  # asking anything more of the daemon would wake it
            return time.monotonic() - at
        finally:
            daemon.close()
            outbox.close()

    def a_command(daemon: SyncDaemon, _loop: threading.Thread) -> Callable[[], bool]:
        return daemon.set_bandwidth_limit(1e9).done

    def a_stop(daemon: SyncDaemon, loop: threading.Thread) -> Callable[[], bool]:
        daemon.request_stop()
        return lambda: not loop.is_alive()

    try:
        command_took = asked_during_a_scan("command", a_command)
        stop_took = asked_during_a_scan("stop", a_stop)
    finally:
        client.close()
    # A turn takes milliseconds; 10 s would be the sleep.
    assert command_took < 3, f"a command asked during a turn waited {command_took:.1f} s"
    assert stop_took < 3, f"a stop asked during a turn waited {stop_took:.1f} s"


def test_pause_stops_an_upload_in_flight_and_resume_goes_on_from_the_servers_offset(
    server: Deployment, tmp_path: Path
) -> None:
    user = server.user("pauser")
    project = server.project(user)
    size = 24 * MiB
    with (
        CountingRelay(server.server.port) as relay,
        running_daemon(relay.url, user.token, tmp_path, project) as (daemon, rec, folder),
    ):
        daemon.set_bandwidth_limit(8e6)  # three seconds for the file: time to pause it
        write_random_file(folder / "big_step_1.bin", size, seed=2)
        rec.wait_for(lambda e: e.kind is EventKind.progress and e.sent >= 4 * MiB)
        daemon.pause()
        rec.wait_for(lambda e: e.kind is EventKind.paused)
        rec.wait_for(state_is(DaemonState.paused))
        sent_before_pause = relay.sent
        time.sleep(1.0)
        assert relay.sent - sent_before_pause < 2 * MiB  # nothing more goes out while paused
        assert not rec.of(EventKind.committed)
        assert read_status(tmp_path / "state")["state"] == "paused"

        daemon.set_bandwidth_limit(None)
        daemon.resume()
        rec.wait_for(committed("big_step_1.bin"))
        # Resumed at the server's offset: the file crossed the wire about once, not 1.5 times.
        assert relay.sent < size + 3 * MiB
    assert rec.states()[-1] is DaemonState.idle


def test_a_pause_from_another_thread_is_applied_by_the_loop_thread_between_two_slices(
    server: Deployment, tmp_path: Path
) -> None:
    user = server.user("thread-pauser")
    project = server.project(user)
    size = 16 * MiB

    def from_another_thread(control: Callable[[], object]) -> None:
        caller = threading.Thread(target=control, name="caller")
        caller.start()
        caller.join(5)
        assert not caller.is_alive(), "the control waited for the daemon's loop"

    with running_daemon(server.url, user.token, tmp_path, project) as (daemon, rec, folder):
        daemon.set_bandwidth_limit(8e6)  # two seconds for the file: time to pause it
        write_random_file(folder / "big_step_1.bin", size, seed=12)
        rec.wait_for(lambda e: e.kind is EventKind.progress and e.sent >= 2 * MiB)

        from_another_thread(daemon.pause)
        put_back = rec.wait_for(lambda e: e.kind is EventKind.paused)
        paused = rec.wait_for(state_is(DaemonState.paused))

        # The loop's thread applied it (and sent its state event), not the caller's.
        assert rec.thread_of(paused) == "lmvp-daemon"
        assert rec.thread_of(put_back) == "lmvp-daemon"
        assert "caller" not in rec.threads
        # Stopped between two slices, short of the end, and nothing moves while paused.
        progress_so_far = len(rec.of(EventKind.progress))
        assert rec.of(EventKind.progress)[-1].sent < size
        time.sleep(1.0)
        assert len(rec.of(EventKind.progress)) == progress_so_far
        assert not rec.of(EventKind.committed)

        daemon.set_bandwidth_limit(None)
        from_another_thread(daemon.resume)
        done = rec.wait_for(committed("big_step_1.bin"))
        assert rec.thread_of(done) == "lmvp-daemon"
    assert rec.of(EventKind.progress)[-1].sent == size
    assert "caller" not in rec.threads
    assert rec.states()[-1] is DaemonState.idle


def test_lmvp_daemon_pause_from_another_shell_stops_an_upload_and_the_daemon_says_paused(
    server: Deployment, tmp_path: Path
) -> None:
    user = server.user("shell-pauser")
    project = server.project(user)
    size = 16 * MiB
    state = ["--state-dir", str(tmp_path / "state")]
    with running_daemon(server.url, user.token, tmp_path, project) as (daemon, rec, folder):
        daemon.set_bandwidth_limit(8e6)
        write_random_file(folder / "big_step_1.bin", size, seed=13)
        rec.wait_for(lambda e: e.kind is EventKind.progress and e.sent >= 2 * MiB)

        subprocess.run([DAEMON, *state, "pause"], check=True, capture_output=True, timeout=60)
        rec.wait_for(lambda e: e.kind is EventKind.paused)
        rec.wait_for(state_is(DaemonState.paused))  # the loop took its turn: not stuck retrying
        progress_so_far = len(rec.of(EventKind.progress))
        time.sleep(1.0)
        assert len(rec.of(EventKind.progress)) == progress_so_far
        assert not rec.of(EventKind.committed)

        daemon.set_bandwidth_limit(None)
        subprocess.run([DAEMON, *state, "resume"], check=True, capture_output=True, timeout=60)
        rec.wait_for(committed("big_step_1.bin"))
    assert rec.of(EventKind.progress)[-1].sent == size


def test_bandwidth_limit_paces_uploads(server: Deployment, tmp_path: Path) -> None:
    user = server.user("limited")
    project = server.project(user)
    with running_daemon(server.url, user.token, tmp_path, project) as (daemon, rec, folder):
        daemon.set_bandwidth_limit(parse_rate("2MB"))
        write_random_file(folder / "weights_step_1.bin", 4 * MiB, seed=3)
        queued = rec.wait_for(lambda e: e.kind is EventKind.queued)
        start = time.monotonic()
        assert queued
        rec.wait_for(committed("weights_step_1.bin"), timeout=60)
        elapsed = time.monotonic() - start
    # 4.2 MB at 2 MB/s: at least about two seconds (a lower bound: a slow machine only adds).
    assert elapsed >= 1.8, elapsed


def test_offline_server_is_a_state_and_checkpoints_follow_once_it_is_back(
    make_server: Callable[[str], ServerProcess], tmp_path: Path
) -> None:
    s = make_server("sqlite")
    s.start()
    try:
        admin = Api(s.url).login("admin", ADMIN_PASSWORD)
        deployment = Deployment(server=s, admin=admin)
        user = deployment.user("offline")
        project = deployment.project(user)
        with running_daemon(s.url, user.token, tmp_path, project) as (_daemon, rec, folder):
            s.stop()
            write_random_file(folder / "step=1.ckpt", 50_000, seed=4)
            offline = rec.wait_for(state_is(DaemonState.offline), timeout=60)
            assert "cannot reach the LMVP server" in offline.message
            s.start()
            rec.wait_for(committed("step=1.ckpt"), timeout=60)
            rec.wait_for(lambda e: rec.states()[-1] is DaemonState.idle, timeout=30)
    finally:
        s.stop()


def test_missing_watched_folder_is_an_error_state_until_it_is_back(
    server: Deployment, tmp_path: Path
) -> None:
    user = server.user("vanish")
    project = server.project(user)
    with running_daemon(server.url, user.token, tmp_path, project) as (_daemon, rec, folder):
        write_random_file(folder / "a_step_1.pt", 10_000, seed=5)
        rec.wait_for(committed("a_step_1.pt"))
        moved = tmp_path / "elsewhere"
        folder.rename(moved)
        error = rec.wait_for(state_is(DaemonState.error))
        assert str(folder) in error.message
        moved.rename(folder)
        write_random_file(folder / "b_step_2.pt", 10_000, seed=6)
        rec.wait_for(committed("b_step_2.pt"))
        rec.wait_for(lambda e: rec.states()[-1] is DaemonState.idle)
    assert (folder / "a_step_1.pt").exists()


def test_failed_checkpoint_is_an_error_state_and_retry_sends_it(
    server: Deployment, tmp_path: Path
) -> None:
    owner = server.user("owner-r")
    project = server.project(owner)
    viewer = server.user("viewer-r")
    server.add_member(project, viewer, "viewer")
    with running_daemon(server.url, viewer.token, tmp_path, project) as (daemon, rec, folder):
        write_random_file(folder / "c_step_3.pt", 10_000, seed=7)
        failed = rec.wait_for(lambda e: e.kind is EventKind.failed)
        assert "contributor" in failed.message or "permission" in failed.message.lower()
        rec.wait_for(state_is(DaemonState.error))
        server.add_member(project, viewer, "contributor")
        assert daemon.retry_failed().result(timeout=30) == 1
        rec.wait_for(committed("c_step_3.pt"))
        rec.wait_for(lambda e: rec.states()[-1] is DaemonState.idle)


@pytest.mark.parametrize(
    ("text", "value"),
    [("50M", 50e6), ("2.5MB", 2.5e6), ("800k", 800e3), ("1GiB", 1024**3), ("off", None)],
)
def test_parse_rate(text: str, value: float | None) -> None:
    assert parse_rate(text) == value


# --- the kernel's inotify limits, for real ------------------------------------------------------


@contextlib.contextmanager
def sysctl(name: str, value: int) -> Iterator[Callable[[], None]]:
    """Set /proc/sys/fs/inotify/<name> for a moment; yields a function that restores it early.
    Skips the test where the sysctl cannot be written (not root)."""
    path = Path("/proc/sys/fs/inotify") / name
    try:
        saved = path.read_text().strip()
        path.write_text(str(value))
    except OSError as exc:
        pytest.skip(f"cannot set fs.inotify.{name} here ({exc}); needs root")

    def restore() -> None:
        path.write_text(saved)

    try:
        yield restore
    finally:
        restore()


def start_daemon_process(
    deployment: Deployment, tmp_path: Path, *extra: str
) -> tuple[subprocess.Popen[bytes], Path, str, dict[str, str]]:
    user = deployment.user("limits")
    project = deployment.project(user)
    folder = tmp_path / "run"
    folder.mkdir(exist_ok=True)
    env = dict(
        os.environ,
        LMVP_DAEMON_STATE_DIR=str(tmp_path / "state"),
        LMVP_SERVER=deployment.url,
        LMVP_TOKEN=user.token,
        LMVP_CONFIG_DIR=str(tmp_path / "config"),
    )
    subprocess.run([DAEMON, "watch", "add", str(folder), f"{project}/net"], env=env, check=True)
    proc = subprocess.Popen(
        [DAEMON, "run", "--settle", "0.2", "--interval", "0.2", *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, folder, f"{project}/net", env


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def daemon_status(env: dict[str, str]) -> str:
    """What `lmvp-daemon status` prints."""
    return subprocess.run([DAEMON, "status"], env=env, capture_output=True, text=True).stdout


def daemon_log(tmp_path: Path) -> str:
    path = tmp_path / "state" / "daemon.log"
    return path.read_text(errors="replace") if path.exists() else ""


def all_threads_stopped(pid: int) -> bool:
    """Whether every thread of process `pid` is stopped by a signal (state T in /proc)."""
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        with contextlib.suppress(OSError):
            states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
    return bool(states) and all(state == "T" for state in states)


def version_count(deployment: Deployment, token: str, ref: str) -> int:
    with lmvp.Client(deployment.url, token) as client:
        try:
            return len(client.versions(ref, limit=1000))
        except lmvp.NotFound:
            return 0


def test_lost_events_after_an_inotify_queue_overflow_trigger_a_rescan(
    server: Deployment, tmp_path: Path
) -> None:
    # A queue of 16 events, and no periodic rescan: only the overflow can make it look again.
    # The sysctl stays small until the burst was made: an inotify queue takes the size in force
    # when it is created, and the daemon may set its watch up again (a new queue) after start.
    with sysctl("max_queued_events", 16) as restore:
        proc, folder, ref, env = start_daemon_process(server, tmp_path, "--rescan", "3600")
        try:
            # One checkpoint synced: the daemon watches (its inotify queue exists) and its first
            # scan is over. (Stopped between its "watching ... for changes" and that scan, it
            # would find the burst below by the scan, with no overflow needed, and the test
            # would race the overflow's log line.)
            (folder / "first_step_0.pt").write_bytes(os.urandom(2000))
            token = env["LMVP_TOKEN"]
            wait_for(lambda: version_count(server, token, ref) == 1, 60, "the first version")
            # Stop the daemon so that it cannot read events, then make far more than 16. Only
            # once every thread of it has stopped: SIGSTOP wakes one thread to stop them all,
            # and on a busy machine its inotify reader, woken by the first events, could read
            # the whole burst before that thread runs (CI met that: no overflow, no rescan).
            proc.send_signal(signal.SIGSTOP)
            wait_for(lambda: all_threads_stopped(proc.pid), 30, "the daemon to stop")
            for i in range(40):
                (folder / f"burst_step_{i}.pt").write_bytes(os.urandom(2000))
            restore()
            proc.send_signal(signal.SIGCONT)
            # Most of the burst's events were dropped: only the rescan finds all 40.
            wait_for(lambda: version_count(server, token, ref) == 41, 60, "41 versions")
            # Said in the daemon's own words (watchdog's EventsLostEvent, not its log), before
            # the rescan it asked for.
            assert "were lost (the kernel's inotify queue overflowed)" in daemon_log(tmp_path)
        finally:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            proc.wait(30)


def test_too_few_inotify_watches_names_the_sysctl_and_the_daemon_keeps_syncing(
    server: Deployment, tmp_path: Path
) -> None:
    # No inotify watch at all for this user: the watched folder itself cannot be watched.
    # (watchdog skips subfolders it cannot watch without a word; the periodic rescan covers
    # those.)
    with sysctl("max_user_watches", 0) as restore:
        proc, folder, ref, env = start_daemon_process(server, tmp_path)
        state_dir = tmp_path / "state"
        try:
            # Waiting reads the status file the daemon writes (what `lmvp-daemon status` shows)
            # here, rather than starting an `lmvp-daemon status` process every 0.2 s; the
            # command itself is run once each time the state is reached.
            wait_for(
                lambda: "max_user_watches" in read_status(state_dir).get("message", ""),
                30,
                "the limit to show in the daemon's status",
            )
            status = daemon_status(env)
            assert "fs.inotify.max_user_watches" in status, status + daemon_log(tmp_path)
            assert proc.poll() is None  # still running: it rescans instead
            (folder / "model_step_5.pt").write_bytes(b"weights")
            token = env["LMVP_TOKEN"]
            wait_for(lambda: version_count(server, token, ref) == 1, 30, "the version")
            restore()
            wait_for(
                lambda: read_status(state_dir).get("state") not in (None, "error"),
                30,
                "the error to clear once the limit is raised",
            )
            assert "error" not in daemon_status(env).split("\n")[0]
        finally:
            proc.terminate()
            proc.wait(30)
