"""Notifications: a burst of synced checkpoints makes one notification that counts them; each kind
can be turned off; a teammate's new version (from the real server's event stream) makes one and
your own none; and the notification reaches a real session D-Bus, as a Notify call with the
signature real notification servers accept, recorded by a separate server process."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytestqt.qtbot import QtBot

import lmvp
from lmvp_daemon.sync import EventKind, SyncEvent
from lmvp_desktop.notifications import Notification, NotificationKind, Notifier
from lmvp_desktop.server_events import ServerEvents
from lmvp_desktop.settings import DesktopSettings
from tests.support import Deployment

RECORDER = Path(__file__).with_name("dbus_recorder.py")


def resnet_event(kind: EventKind, key: str, **fields: Any) -> SyncEvent:
    """An event of a watch syncing to vision/resnet (the daemon's events name both)."""
    return SyncEvent(kind, 1, key, project="vision", model="resnet", **fields)


def committed(n: int) -> list[SyncEvent]:
    return [resnet_event(EventKind.committed, f"step_{i}.pt", version=i) for i in range(1, n + 1)]


class Shown:
    """Every notification a notifier showed."""

    def __init__(self, notifier: Notifier) -> None:
        self.items: list[Notification] = []
        notifier.notified.connect(self.items.append)


def test_fifty_committed_checkpoints_in_a_burst_make_one_notification_saying_fifty(
    qtbot: QtBot,
) -> None:
    notifier = Notifier(DesktopSettings(), delay=0.2, window=1.0, use_dbus=False)
    shown = Shown(notifier)
    with qtbot.waitSignal(notifier.shown, timeout=3000) as signal:
        for event in committed(50):
            notifier.on_sync_event(event)
    title, body = signal.args
    assert title == "50 checkpoints synced"
    assert body == "50 checkpoints synced to vision/resnet (v1 to v50)"
    qtbot.wait(400)
    assert len(shown.items) == 1

    # More within the window wait for it to pass, and come as one again.
    started = time.monotonic()
    for i in (51, 52):
        notifier.on_sync_event(resnet_event(EventKind.committed, f"s{i}.pt", version=i))
    qtbot.waitUntil(lambda: len(shown.items) == 2, timeout=3000)
    assert time.monotonic() - started >= 0.5  # not before the window since the first ended
    assert shown.items[1].title == "2 checkpoints synced"


def test_failures_are_one_notification_with_their_messages(qtbot: QtBot) -> None:
    notifier = Notifier(DesktopSettings(), delay=0.1, window=1.0, use_dbus=False)
    with qtbot.waitSignal(notifier.notified, timeout=3000) as signal:
        for key in ("a.pt", "b.pt"):
            notifier.on_sync_event(resnet_event(EventKind.failed, key, message="needs contributor"))
    note = signal.args[0]
    assert note.kind is NotificationKind.failed and note.count == 2
    assert note.title == "2 checkpoints not synced"
    assert "a.pt: needs contributor" in note.body and "retry" in note.body


def test_kinds_turned_off_in_the_settings_send_nothing(qtbot: QtBot) -> None:
    settings = DesktopSettings(notify_synced=False, notify_failed=False, notify_teammates=False)
    notifier = Notifier(settings, delay=0.05, window=0.1, use_dbus=False)
    shown = Shown(notifier)
    for event in committed(5):
        notifier.on_sync_event(event)
    notifier.on_sync_event(resnet_event(EventKind.failed, "x.pt", message="boom"))
    qtbot.wait(300)
    assert notifier.flush() == [] and shown.items == []

    settings.notify_failed = True  # read live: the settings dialog changes the same object
    with qtbot.waitSignal(notifier.notified, timeout=2000) as signal:
        notifier.on_sync_event(resnet_event(EventKind.failed, "y.pt", message="boom"))
    assert signal.args[0].kind is NotificationKind.failed
    assert len(shown.items) == 1


def test_a_teammates_new_version_makes_one_notification_and_your_own_none(
    qtbot: QtBot, sqlite_deployment: Deployment, tmp_path: Path
) -> None:
    me, teammate = sqlite_deployment.user("me"), sqlite_deployment.user("mate")
    project = sqlite_deployment.project(me)
    sqlite_deployment.add_member(project, teammate, "contributor")
    my_name: str = me.username  # type: ignore[attr-defined]
    notifier = Notifier(DesktopSettings(), username=my_name, delay=0.1, window=1.0, use_dbus=False)
    shown = Shown(notifier)
    events = ServerEvents(sqlite_deployment.url, me.token)
    received: list[lmvp.Event] = []
    events.received.connect(received.append)
    events.received.connect(notifier.on_server_event)
    events.start()
    weights = tmp_path / "w.bin"
    try:
        with lmvp.Client(sqlite_deployment.url, me.token) as mine:
            # My own versions until the stream shows one: then it is surely open.
            for attempt in range(10):
                weights.write_bytes(f"mine {attempt}".encode())
                mine.update(f"{project}/net", weights, message="mine")
                with contextlib.suppress(Exception):
                    qtbot.waitUntil(
                        lambda: any(e.kind == "version.created" for e in received), timeout=1000
                    )
                    break
        weights.write_bytes(b"theirs")
        with lmvp.Client(sqlite_deployment.url, teammate.token) as theirs:
            version = theirs.update(f"{project}/net", weights, message="theirs")
        qtbot.waitUntil(lambda: len(shown.items) == 1, timeout=5000)
        qtbot.wait(300)
    finally:
        events.stop()
    assert len(shown.items) == 1
    note = shown.items[0]
    assert note.kind is NotificationKind.teammate
    assert note.title == f"New version by {teammate.username}"  # type: ignore[attr-defined]
    assert note.body == f"{project}/net v{version.number}: theirs"  # with its message


# --- a real session bus ----------------------------------------------------------------------


@pytest.fixture
def session_bus(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A private `dbus-daemon --session`; DBUS_SESSION_BUS_ADDRESS points at it."""
    if shutil.which("dbus-daemon") is None:
        pytest.skip("dbus-daemon is missing (apt-get install dbus; `make` installs it)")
    if shutil.which("gdbus") is None:
        pytest.skip("gdbus is missing (apt-get install libglib2.0-bin): no D-Bus notifications")
    proc = subprocess.Popen(
        ["dbus-daemon", "--session", "--nofork", "--nopidfile", "--print-address=1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().strip()
        assert address, "dbus-daemon printed no address"
        monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", address)
        yield address
    finally:
        proc.terminate()
        proc.wait(5)


@pytest.fixture
def notification_server(session_bus: str, tmp_path: Path) -> Iterator[Path]:
    """tests/desktop/dbus_recorder.py on the session bus; yields the file it records into."""
    record = tmp_path / "notifications.jsonl"
    env = {**os.environ, "DBUS_SESSION_BUS_ADDRESS": session_bus, "QT_QPA_PLATFORM": "offscreen"}
    proc = subprocess.Popen(
        [sys.executable, str(RECORDER), str(record)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line == "ready", (
            f"recorder did not start: {line} {proc.stderr.read() if proc.stderr else ''}"
        )
        yield record
    finally:
        proc.kill()
        proc.wait(5)


def test_a_burst_reaches_the_session_bus_as_one_notify_call(
    qtbot: QtBot, notification_server: Path
) -> None:
    notifier = Notifier(DesktopSettings(), delay=0.2, window=1.0)
    assert notifier.tray is None  # offscreen: no tray, so D-Bus it is
    with qtbot.waitSignal(notifier.shown, timeout=3000):
        for event in committed(50):
            notifier.on_sync_event(event)
    qtbot.waitUntil(notification_server.exists, timeout=5000)
    qtbot.wait(300)  # nothing more comes
    notifier.wait_for_delivery()
    calls = [json.loads(line) for line in notification_server.read_text().splitlines()]
    assert len(calls) == 1
    call = calls[0]
    assert call["signature"] == "susssasa{sv}i"  # what GNOME Shell, dunst and KDE accept
    assert call["app_name"] == "LMVP"
    assert call["summary"] == "50 checkpoints synced"
    assert call["body"] == "50 checkpoints synced to vision/resnet (v1 to v50)"


def test_a_run_checkpointing_every_10_s_makes_one_notification_a_minute(qtbot: QtBot) -> None:
    now = [0.0]
    notifier = Notifier(DesktopSettings(), delay=0.05, use_dbus=False, clock=lambda: now[0])
    assert notifier.window == 60.0  # the default: a minute between two of one kind
    shown = Shown(notifier)
    with qtbot.waitSignal(notifier.notified, timeout=2000):
        notifier.on_sync_event(resnet_event(EventKind.committed, "s1.pt", version=1))
    for i in range(2, 14):  # one every 10 s for two minutes
        now[0] = 10.0 * (i - 1)
        if i == 8:  # the minute has passed: the timer fires (run here, not waited for)
            notifier.flush(NotificationKind.synced)
        notifier.on_sync_event(resnet_event(EventKind.committed, f"s{i}.pt", version=i))
    assert [n.title for n in shown.items] == ["Checkpoint synced", "6 checkpoints synced"]
    timer = notifier._timers[NotificationKind.synced]
    assert timer.isActive() and 55_000 < timer.remainingTime() <= 61_000  # the next at 130 s


def test_a_notification_on_the_status_bar_does_not_repeat_its_title() -> None:
    from lmvp_desktop.main_window import status_line

    assert (
        status_line("2 checkpoints synced", "2 checkpoints synced to p/m (v1 to v2)")
        == "2 checkpoints synced to p/m (v1 to v2)"
    )
    assert (
        status_line("New version by mara", "p/m v3: tuned") == "New version by mara: p/m v3: tuned"
    )
    assert len(status_line("x", "y" * 500)) == 160
