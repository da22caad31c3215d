"""The daemon's outbox: durable across crashes, idempotent, in order, and one daemon per state dir.

Everything runs on real SQLite files in temporary directories; crashes and lock holders are
real separate processes.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lmvp_daemon.errors import OutboxError
from lmvp_daemon.outbox import BACKOFF_CAP_SECONDS, CheckpointChanged, Outbox, backoff_delay
from lmvp_daemon.outbox_db import CheckpointState, ManifestEntry
from lmvp_daemon.state_dir import acquire_lock, resolve_state_dir

REPO = Path(__file__).resolve().parents[2]
MANIFEST = [ManifestEntry("model.safetensors", 10, "ab" * 32)]


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def outbox(state_dir: Path) -> Iterator[Outbox]:
    box = Outbox(state_dir)
    yield box
    box.close()


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    folder = tmp_path / "runs"
    folder.mkdir()
    return folder


def fingerprint(
    name: str, size: int = 10, mtime_ns: int = 1, inode: int = 7
) -> list[tuple[str, int, int, int]]:
    return [(name, size, mtime_ns, inode)]


def run_python(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def send(outbox: Outbox, checkpoint_id: int, version: int) -> None:
    """Walk a ready checkpoint through a successful upload and commit."""
    outbox.mark_uploading(checkpoint_id)
    outbox.set_manifest(checkpoint_id, MANIFEST)
    outbox.mark_committing(checkpoint_id)
    outbox.mark_done(checkpoint_id, version)


# --- durability ----------------------------------------------------------------------------


def test_everything_recorded_survives_a_crash_without_close(state_dir: Path, runs: Path) -> None:
    crashed = run_python(
        """
        import os, sys
        from pathlib import Path
        from lmvp_daemon.outbox import Outbox
        from lmvp_daemon.outbox_db import ManifestEntry
        box = Outbox(Path(sys.argv[1]))
        watch = box.add_watch(sys.argv[2], "vision", "resnet", include=["*.pt"], ignore=["tmp/"])
        first = box.record_seen(watch.id, "step-1.pt", [("step-1.pt", 5, 11, 3)], {"step": 1})
        box.mark_ready(first.id)
        box.mark_uploading(first.id)
        box.set_manifest(first.id, [ManifestEntry("step-1.pt", 5, "cd" * 32)])
        box.mark_committing(first.id)
        second = box.record_seen(watch.id, "step-2.pt", [("step-2.pt", 6, 12, 4)], {"step": 2})
        print(first.idempotency_key, second.idempotency_key, flush=True)
        os._exit(0)  # no close, no cleanup: what a kill -9 leaves behind
        """,
        str(state_dir),
        str(runs),
    )
    out, err = crashed.communicate(timeout=60)
    assert crashed.returncode == 0, err
    first_key, second_key = out.split()

    with Outbox(state_dir) as reopened:
        (watch,) = reopened.watches()
        assert (watch.folder, watch.project, watch.model) == (str(runs), "vision", "resnet")
        assert (watch.include, watch.ignore, watch.enabled) == (["*.pt"], ["tmp/"], True)
        first, second = reopened.pending()
        assert (first.key, first.state, first.meta) == ("step-1.pt", "committing", {"step": 1})
        assert first.manifest_entries == [ManifestEntry("step-1.pt", 5, "cd" * 32)]
        assert first.fingerprint_entries == [("step-1.pt", 5, 11, 3)]
        assert (second.key, second.state, second.meta) == ("step-2.pt", "queued", {"step": 2})
        assert (first.idempotency_key, second.idempotency_key) == (first_key, second_key)


def test_idempotency_key_is_the_same_after_reopening(state_dir: Path, runs: Path) -> None:
    with Outbox(state_dir) as box:
        watch = box.add_watch(runs, "p", "m")
        before = box.record_seen(watch.id, "a.pt", fingerprint("a.pt"))
    with Outbox(state_dir) as box:
        again = box.record_seen(watch.id, "a.pt", fingerprint("a.pt"))
        assert again.id == before.id
        assert again.idempotency_key == before.idempotency_key


def test_interrupted_upload_and_commit_are_due_again_with_the_same_key(
    outbox: Outbox, runs: Path
) -> None:
    watch = outbox.add_watch(runs, "p", "m")
    cp = outbox.record_seen(watch.id, "a.pt", fingerprint("a.pt"))
    outbox.mark_ready(cp.id)
    outbox.mark_uploading(cp.id)
    outbox.set_manifest(cp.id, MANIFEST)
    outbox.mark_committing(cp.id)
    assert outbox.next_ready() is None  # in flight

    assert outbox.resume_interrupted() == 1
    resumed = outbox.next_ready()
    assert resumed is not None and resumed.id == cp.id
    assert resumed.idempotency_key == cp.idempotency_key
    assert resumed.manifest_entries == MANIFEST


def test_schema_version_is_recorded_and_a_newer_outbox_is_refused(state_dir: Path) -> None:
    Outbox(state_dir).close()
    db = sqlite3.connect(state_dir / "outbox.db")
    assert db.execute("PRAGMA user_version").fetchone() == (2,)
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(OutboxError, match="newer lmvp-daemon"):
        Outbox(state_dir)


def test_an_outbox_of_schema_1_gains_the_watch_runs_table_and_keeps_its_watches(
    state_dir: Path, tmp_path: Path
) -> None:
    with Outbox(state_dir) as box:
        box.add_watch(tmp_path, "p", "m")
    db = sqlite3.connect(state_dir / "outbox.db")
    db.execute("DROP TABLE watch_runs")
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    with Outbox(state_dir) as box:
        assert [w.folder for w in box.watches()] == [str(tmp_path)]
        watch_id = box.watches()[0].id
        box.set_watch_run(watch_id, 7)
        assert box.watch_run(watch_id).run_id == 7


def test_state_dir_comes_from_the_environment_when_not_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMVP_DAEMON_STATE_DIR", str(tmp_path / "from-env"))
    with Outbox() as box:
        assert box.path == tmp_path / "from-env" / "outbox.db"
        assert box.path.exists()
    assert resolve_state_dir(tmp_path / "given") == tmp_path / "given"


# --- checkpoints: identity -----------------------------------------------------------------


def test_seeing_the_same_fingerprint_twice_records_one_checkpoint(
    outbox: Outbox, runs: Path
) -> None:
    watch = outbox.add_watch(runs, "p", "m")
    first = outbox.record_seen(watch.id, "a.pt", fingerprint("a.pt"), {"step": 1})
    second = outbox.record_seen(watch.id, "a.pt", fingerprint("a.pt"), {"step": 1})
    assert second.id == first.id
    assert len(outbox.pending()) == 1


def test_an_unchanged_done_checkpoint_seen_again_stays_done(outbox: Outbox, runs: Path) -> None:
    watch = outbox.add_watch(runs, "p", "m")
    cp = outbox.record_seen(watch.id, "a.pt", fingerprint("a.pt"))
    outbox.mark_ready(cp.id)
    send(outbox, cp.id, version=1)
    again = outbox.record_seen(watch.id, "a.pt", fingerprint("a.pt"))
    assert (again.id, again.state, again.version_number) == (cp.id, "done", 1)
    assert outbox.pending() == []


def test_a_queued_checkpoint_still_being_written_is_replaced_not_duplicated(
    outbox: Outbox, runs: Path
) -> None:
    watch = outbox.add_watch(runs, "p", "m")
    growing = outbox.record_seen(watch.id, "a.pt", fingerprint("a.pt", size=10))
    grown = outbox.record_seen(watch.id, "a.pt", fingerprint("a.pt", size=20, mtime_ns=2))
    assert grown.id == growing.id
    assert grown.fingerprint_entries == [("a.pt", 20, 2, 7)]
    assert grown.first_seen_at == growing.first_seen_at
    assert [cp.id for cp in outbox.pending()] == [growing.id]


def test_a_done_key_rewritten_later_is_a_new_checkpoint_with_a_new_key(
    outbox: Outbox, runs: Path
) -> None:
    watch = outbox.add_watch(runs, "p", "m")
    old = outbox.record_seen(watch.id, "latest.pt", fingerprint("latest.pt", mtime_ns=1))
    outbox.mark_ready(old.id)
    send(outbox, old.id, version=1)

    new = outbox.record_seen(watch.id, "latest.pt", fingerprint("latest.pt", mtime_ns=2))
    assert new.id != old.id
    assert new.state == CheckpointState.queued
    assert new.idempotency_key != old.idempotency_key
    assert outbox.get_checkpoint(old.id).state == CheckpointState.done


def test_a_checkpoint_whose_commit_was_sent_is_pinned_to_its_content(
    outbox: Outbox, runs: Path
) -> None:
    watch = outbox.add_watch(runs, "p", "m")
    cp = outbox.record_seen(watch.id, "a.pt", fingerprint("a.pt", mtime_ns=1))
    outbox.mark_ready(cp.id)
    outbox.mark_uploading(cp.id)
    outbox.set_manifest(cp.id, MANIFEST)
    outbox.mark_committing(cp.id)
    outbox.mark_retry(cp.id, "connection reset")  # did the version land? unknown

    changed = outbox.record_seen(watch.id, "a.pt", fingerprint("a.pt", mtime_ns=2))
    assert changed.id != cp.id
    kept = outbox.get_checkpoint(cp.id)
    assert (kept.idempotency_key, kept.manifest_entries) == (cp.idempotency_key, MANIFEST)
    with pytest.raises(CheckpointChanged):
        outbox.requeue(cp.id)


def test_a_file_changed_during_upload_goes_back_to_queued_and_its_commit_is_refused(
    outbox: Outbox, runs: Path
) -> None:
    watch = outbox.add_watch(runs, "p", "m")
    cp = outbox.record_seen(watch.id, "a.pt", fingerprint("a.pt"))
    outbox.mark_ready(cp.id)
    outbox.mark_uploading(cp.id)
    outbox.set_manifest(cp.id, MANIFEST)

    back = outbox.requeue(cp.id)
    assert (back.state, back.manifest) == (CheckpointState.queued, None)
    assert outbox.next_ready() is None
    with pytest.raises(CheckpointChanged, match="queued"):
        outbox.mark_committing(cp.id)


def test_a_file_rewritten_during_its_upload_is_queued_again_and_its_commit_refused(
    outbox: Outbox, runs: Path
) -> None:
    watch = outbox.add_watch(runs, "p", "m")
    cp = outbox.record_seen(watch.id, "a.pt", fingerprint("a.pt", mtime_ns=1))
    outbox.mark_ready(cp.id)
    outbox.mark_uploading(cp.id)

    rewritten = outbox.record_seen(watch.id, "a.pt", fingerprint("a.pt", mtime_ns=2))
    assert (rewritten.id, rewritten.state) == (cp.id, CheckpointState.queued)
    assert rewritten.idempotency_key != cp.idempotency_key  # new content, new version
    with pytest.raises(CheckpointChanged):
        outbox.set_manifest(cp.id, MANIFEST)
    with pytest.raises(CheckpointChanged):
        outbox.mark_committing(cp.id)


# --- checkpoints: order and retries --------------------------------------------------------


def test_next_ready_hands_out_a_watchs_checkpoints_in_the_order_first_seen(
    outbox: Outbox, runs: Path
) -> None:
    watch = outbox.add_watch(runs, "p", "m")
    ids = [
        outbox.record_seen(watch.id, f"checkpoint-{step}", fingerprint(f"c{step}")).id
        for step in (100, 200, 300)
    ]
    for cp_id in reversed(ids):  # settled in the opposite order
        outbox.mark_ready(cp_id)

    sent = []
    while (cp := outbox.next_ready()) is not None:
        sent.append(cp.key)
        send(outbox, cp.id, version=len(sent))
    assert sent == ["checkpoint-100", "checkpoint-200", "checkpoint-300"]


def test_a_later_checkpoint_waits_while_an_earlier_one_is_not_settled_or_retrying(
    outbox: Outbox, runs: Path
) -> None:
    watch = outbox.add_watch(runs, "p", "m")
    early = outbox.record_seen(watch.id, "early.pt", fingerprint("early.pt"))
    late = outbox.record_seen(watch.id, "late.pt", fingerprint("late.pt"))
    outbox.mark_ready(late.id)
    assert outbox.next_ready() is None  # early.pt is still being written

    outbox.mark_ready(early.id)
    outbox.mark_retry(early.id, "server unavailable", retry_after=60)
    assert outbox.next_ready() is None  # early.pt must land first

    later = datetime.now(UTC) + timedelta(seconds=61)
    due = outbox.next_ready(later)
    assert due is not None and due.id == early.id


def test_watches_do_not_wait_for_each_other(outbox: Outbox, tmp_path: Path) -> None:
    slow = outbox.add_watch(tmp_path / "slow", "p", "slow")
    fast = outbox.add_watch(tmp_path / "fast", "p", "fast")
    outbox.record_seen(slow.id, "a.pt", fingerprint("a.pt"))  # never settles
    ready = outbox.record_seen(fast.id, "b.pt", fingerprint("b.pt"))
    outbox.mark_ready(ready.id)
    due = outbox.next_ready()
    assert due is not None and due.id == ready.id


def test_a_disabled_watch_hands_out_nothing_until_enabled(outbox: Outbox, runs: Path) -> None:
    watch = outbox.add_watch(runs, "p", "m")
    cp = outbox.record_seen(watch.id, "a.pt", fingerprint("a.pt"))
    outbox.mark_ready(cp.id)
    outbox.set_watch_enabled(runs, False)
    assert outbox.next_ready() is None
    outbox.set_watch_enabled(watch.id, True)
    assert outbox.next_ready() is not None


def test_retry_waits_grow_exponentially_with_jitter_up_to_the_cap() -> None:
    rng = random.Random(4)
    for attempt in range(1, 15):
        ceiling = min(BACKOFF_CAP_SECONDS, 2 ** (attempt - 1))
        draws = [backoff_delay(attempt, rng=rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in draws)
        assert max(draws) > 0.8 * ceiling  # the whole range is used: full jitter
    mean = [sum(backoff_delay(n, rng=rng) for _ in range(500)) / 500 for n in (1, 4, 8)]
    assert mean[0] < mean[1] < mean[2]


def test_retry_never_comes_sooner_than_the_servers_retry_after(outbox: Outbox, runs: Path) -> None:
    watch = outbox.add_watch(runs, "p", "m")
    cp = outbox.record_seen(watch.id, "a.pt", fingerprint("a.pt"))
    outbox.mark_ready(cp.id)
    now = datetime.now(UTC)

    first = outbox.mark_retry(cp.id, "503", retry_after=30, now=now)
    assert first.next_attempt_at is not None
    assert first.next_attempt_at - now >= timedelta(seconds=30)
    assert (first.state, first.attempts, first.last_error) == ("waiting_retry", 1, "503")
    assert outbox.next_ready(now + timedelta(seconds=29)) is None

    for _ in range(20):
        retried = outbox.mark_retry(cp.id, "timeout", now=now)
    assert retried.attempts == 21
    assert retried.next_attempt_at is not None
    assert retried.next_attempt_at - now <= timedelta(seconds=BACKOFF_CAP_SECONDS)


def test_a_failed_checkpoint_is_counted_but_never_handed_out(outbox: Outbox, runs: Path) -> None:
    watch = outbox.add_watch(runs, "p", "m")
    broken = outbox.record_seen(watch.id, "a.pt", fingerprint("a.pt"))
    fine = outbox.record_seen(watch.id, "b.pt", fingerprint("b.pt"))
    outbox.mark_ready(broken.id)
    outbox.mark_ready(fine.id)
    outbox.mark_failed(broken.id, "permission denied: a.pt")

    due = outbox.next_ready(datetime.now(UTC) + timedelta(days=1))
    assert due is not None and due.id == fine.id  # a failure does not block the watch
    counts = outbox.counts()
    assert counts[CheckpointState.failed] == 1
    assert counts[CheckpointState.ready] == 1
    assert sum(counts.values()) == 2
    assert [cp.last_error for cp in outbox.failures()] == ["permission denied: a.pt"]


# --- watches -------------------------------------------------------------------------------


def test_a_folder_already_watched_is_refused(outbox: Outbox, runs: Path) -> None:
    outbox.add_watch(runs, "p", "m")
    with pytest.raises(OutboxError, match="already watched"):
        outbox.add_watch(runs / ".." / runs.name, "p", "other")


def test_a_folder_inside_or_around_a_watched_one_is_refused(outbox: Outbox, runs: Path) -> None:
    outbox.add_watch(runs, "p", "m")
    with pytest.raises(OutboxError, match="inside"):
        outbox.add_watch(runs / "sub", "p", "inner")
    with pytest.raises(OutboxError, match="inside"):
        outbox.add_watch(runs.parent, "p", "outer")
    outbox.add_watch(runs.parent / "runs-2", "p", "sibling")  # a shared prefix is not nesting
    assert len(outbox.watches()) == 2


def test_removing_a_watch_forgets_its_checkpoints(outbox: Outbox, runs: Path) -> None:
    watch = outbox.add_watch(runs, "p", "m")
    outbox.record_seen(watch.id, "a.pt", fingerprint("a.pt"))
    removed = outbox.remove_watch(str(runs))
    assert removed.id == watch.id
    assert outbox.watches() == [] and outbox.pending() == []
    with pytest.raises(OutboxError, match="no watch"):
        outbox.remove_watch(watch.id)


def test_a_second_outbox_on_the_same_state_dir_sees_and_makes_changes(
    outbox: Outbox, state_dir: Path, runs: Path
) -> None:
    """What `lmvp-daemon watch add` and `status` do while the daemon runs."""
    with Outbox(state_dir) as cli:
        watch = cli.add_watch(runs, "p", "m")
        cp = outbox.record_seen(watch.id, "a.pt", fingerprint("a.pt"))
        assert cli.counts()[CheckpointState.queued] == 1
        cli.set_watch_enabled(watch.id, False)
        outbox.mark_ready(cp.id)
        assert outbox.next_ready() is None


# --- the lock ------------------------------------------------------------------------------

HOLD_LOCK = """
    import sys, time
    from pathlib import Path
    from lmvp_daemon.state_dir import acquire_lock
    lock = acquire_lock(Path(sys.argv[1]))
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_daemon_is_refused_and_told_the_holders_pid(state_dir: Path) -> None:
    holder = run_python(HOLD_LOCK, str(state_dir))
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(OutboxError, match=rf"another lmvp-daemon \(pid {holder.pid}\)"):
            acquire_lock(state_dir)
    finally:
        holder.kill()
        holder.communicate()


def test_the_lock_is_free_again_once_its_holder_is_killed(state_dir: Path) -> None:
    holder = run_python(HOLD_LOCK, str(state_dir))
    assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
    os.kill(holder.pid, signal.SIGKILL)
    holder.communicate()
    with acquire_lock(state_dir) as lock:
        assert lock.path.read_text() == f"{os.getpid()}\nlmvp-daemon\n"


def test_the_lock_is_released_for_the_next_daemon_in_the_same_process(state_dir: Path) -> None:
    with acquire_lock(state_dir), pytest.raises(OutboxError, match=f"pid {os.getpid()}"):
        acquire_lock(state_dir)
    acquire_lock(state_dir).release()
