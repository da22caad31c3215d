"""Desktop notifications for synced checkpoints, failures, teammates' new versions and training
alerts, batched.

`Notifier` collects what happened per kind (synced, failed, teammate, and the daemon's training
alerts: a loss gone NaN, a loss that diverged, a job gone silent) and shows ONE
notification per kind per batch: a batch opens with the first item, stays open `delay`
seconds to gather the burst that usually follows (a training run saving 50 checkpoints),
and two notifications of one kind are at least `window` seconds apart (a minute: a run
checkpointing every 10 s makes one "6 checkpoints synced" a minute, not a balloon each
time); what arrives meanwhile goes into the next one ("50 checkpoints synced to
vision/resnet"). A teammate's version is notified with its message.

Every notification is emitted as `shown(title, body)` (the main window may put it in its
status bar). It is also delivered to the desktop: through the tray icon when one is shown,
otherwise as an `org.freedesktop.Notifications.Notify` call on the session bus. That call
goes through `gdbus` (GLib's D-Bus tool, run asynchronously with QProcess) rather than
QtDBus: from Python, QtDBus can only marshal an int as D-Bus `i` or `q`, never the `u` that
Notify's `replaces_id` is, and GNOME Shell, dunst and KDE all refuse a call whose signature
is `sisssasa{sv}i`. Without a tray, a session bus or gdbus, the signal is all there is.
"""

from __future__ import annotations

import enum
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from PySide6.QtCore import QObject, QProcess, QTimer, Signal
from PySide6.QtWidgets import QSystemTrayIcon

import lmvp
from lmvp_daemon.sync import EventKind, SyncEvent
from lmvp_desktop.settings import DesktopSettings

log = logging.getLogger(__name__)

APP_NAME = "LMVP"
NOTIFY_SERVICE = "org.freedesktop.Notifications"
NOTIFY_PATH = "/org/freedesktop/Notifications"
DEFAULT_DELAY_SECONDS = 2.0
DEFAULT_WINDOW_SECONDS = 60.0
_EXPIRE_MS = 8000
# Items named in a summary before "and N more".
_LISTED = 3


class NotificationKind(enum.StrEnum):
    synced = "synced"  # checkpoints that became versions
    failed = "failed"  # checkpoints that failed for good (until retried)
    teammate = "teammate"  # versions a teammate created (from the server's event stream)
    # Training alerts (`lmvp_daemon.alerts`), each said once by the daemon.
    loss_nan = "loss_nan"  # a watched run's loss became NaN or infinite
    diverged = "diverged"  # a watched run's loss jumped far over its recent average
    silent = "silent"  # a watched run that checkpointed regularly stopped


# The daemon's events that are notified, and as what.
_EVENT_KINDS = {
    EventKind.committed: NotificationKind.synced,
    EventKind.failed: NotificationKind.failed,
    EventKind.loss_nan: NotificationKind.loss_nan,
    EventKind.loss_diverged: NotificationKind.diverged,
    EventKind.checkpoints_silent: NotificationKind.silent,
}
# Alerts: their title for one item and for several, and the warning icon.
_ALERT_TITLES = {
    NotificationKind.loss_nan: ("Loss is NaN", "losses became NaN or infinite"),
    NotificationKind.diverged: ("Loss diverged", "losses diverged"),
    NotificationKind.silent: ("Training went silent", "training jobs went silent"),
}
_WARNINGS = (NotificationKind.failed, *_ALERT_TITLES)


@dataclass(frozen=True)
class Notification:
    """One notification as shown: which kind, its title and body, and how many items."""

    kind: NotificationKind
    title: str
    body: str
    count: int


@dataclass
class _Batch:
    items: list[_Item] = field(default_factory=list)
    last_shown: float | None = None


@dataclass(frozen=True)
class _Item:
    target: str  # "project/model"
    key: str  # checkpoint key, or the teammate's name
    version: int | None
    message: str = ""


class Notifier(QObject):
    """Batches daemon and server events into notifications.

    Connect `on_sync_event` to `DaemonBridge.sync_event` and `on_server_event` to
    `ServerEvents.received` (or call `follow(bridge, server_events)`). `username` is the
    logged-in user, whose own versions are not "a teammate's". A daemon event names its
    watch's project and model itself. `clock` is injectable for tests.
    """

    shown = Signal(str, str)  # title, body: every notification, delivered anywhere or not
    notified = Signal(object)  # the same as a `Notification`

    def __init__(
        self,
        settings: DesktopSettings,
        *,
        username: str | None = None,
        tray: QSystemTrayIcon | None = None,
        delay: float = DEFAULT_DELAY_SECONDS,
        window: float = DEFAULT_WINDOW_SECONDS,
        use_dbus: bool = True,
        clock: Callable[[], float] = time.monotonic,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.settings = settings
        self.username = username
        self.tray = tray
        self.delay = delay
        self.window = window
        self.use_dbus = use_dbus
        self._clock = clock
        self._batches = {kind: _Batch() for kind in NotificationKind}
        self._timers: dict[NotificationKind, QTimer] = {}
        for kind in NotificationKind:
            timer = QTimer(self)
            timer.setSingleShot(True)
            timer.timeout.connect(lambda k=kind: self.flush(k))
            self._timers[kind] = timer
        self._gdbus = shutil.which("gdbus")
        self._processes: set[QProcess] = set()
        self._dbus_failed = False

    # --- input -------------------------------------------------------------------------------

    def follow(self, bridge: QObject, server_events: QObject | None = None) -> None:
        """Connect to a `DaemonBridge` (and a `ServerEvents`) in one call."""
        bridge.sync_event.connect(self.on_sync_event)  # type: ignore[attr-defined]
        if server_events is not None:
            server_events.received.connect(self.on_server_event)  # type: ignore[attr-defined]

    def on_sync_event(self, event: SyncEvent) -> None:
        """A daemon event: committed checkpoints, failures and training alerts are notified."""
        kind = _EVENT_KINDS.get(event.kind)
        if kind is None:
            return
        target = f"{event.project}/{event.model}" if event.project else "the server"
        item = _Item(target, event.key, event.version, event.message)
        self._add(kind, item)

    def on_server_event(self, event: lmvp.Event, *, me: str | None = None) -> None:
        """A server event: a version created by someone else than the logged-in user (`me`,
        or the notifier's `username`)."""
        me = me if me is not None else self.username
        if event.kind != "version.created" or not event.actor or event.actor == me:
            return
        target = f"{event.project}/{event.model}" if event.model else event.project
        message = event.payload.get("message")
        item = _Item(
            target, event.actor, event.version, message if isinstance(message, str) else ""
        )
        self._add(NotificationKind.teammate, item)

    def _add(self, kind: NotificationKind, item: _Item) -> None:
        """Collect one item; show its batch now or when its window allows."""
        if not self.enabled(kind):
            return
        batch = self._batches[kind]
        batch.items.append(item)
        timer = self._timers[kind]
        if timer.isActive():
            return
        wait = self.delay
        if batch.last_shown is not None:
            wait = max(wait, batch.last_shown + self.window - self._clock())
        if wait <= 0:
            self.flush(kind)
        else:
            timer.start(round(wait * 1000))

    def enabled(self, kind: NotificationKind) -> bool:
        """Whether the user wants notifications of this kind (read live from the settings)."""
        return {
            NotificationKind.synced: self.settings.notify_synced,
            NotificationKind.failed: self.settings.notify_failed,
            NotificationKind.teammate: self.settings.notify_teammates,
            NotificationKind.loss_nan: self.settings.alert_nan,
            NotificationKind.diverged: self.settings.alert_diverged,
            NotificationKind.silent: self.settings.alert_silent,
        }[kind]

    # --- output ------------------------------------------------------------------------------

    def flush(self, kind: NotificationKind | None = None) -> list[Notification]:
        """Show what is collected now (one kind, or all); returns what was shown."""
        shown: list[Notification] = []
        for k in [kind] if kind is not None else list(NotificationKind):
            self._timers[k].stop()
            batch = self._batches[k]
            items, batch.items = batch.items, []
            if not items or not self.enabled(k):
                continue
            batch.last_shown = self._clock()
            notification = summarise(k, items)
            self._deliver(notification)
            shown.append(notification)
        return shown

    def _deliver(self, notification: Notification) -> None:
        log.info("notification: %s: %s", notification.title, notification.body)
        self.shown.emit(notification.title, notification.body)
        self.notified.emit(notification)
        icon = (
            QSystemTrayIcon.MessageIcon.Warning
            if notification.kind in _WARNINGS
            else QSystemTrayIcon.MessageIcon.Information
        )
        if self.tray is not None and self.tray.isVisible():
            self.tray.showMessage(notification.title, notification.body, icon, _EXPIRE_MS)
        elif self.use_dbus:
            self._notify_over_dbus(notification)

    def _notify_over_dbus(self, notification: Notification) -> None:
        if not os.environ.get("DBUS_SESSION_BUS_ADDRESS") or self._gdbus is None:
            return
        urgency = 2 if notification.kind in _WARNINGS else 1
        process = QProcess(self)
        process.setProgram(self._gdbus)
        process.setArguments(
            [
                "call",
                "--session",
                "--timeout",
                "5",
                "--dest",
                NOTIFY_SERVICE,
                "--object-path",
                NOTIFY_PATH,
                "--method",
                f"{NOTIFY_SERVICE}.Notify",
                _gvariant_string(APP_NAME),
                "0",  # replaces_id
                _gvariant_string("lmvp"),
                _gvariant_string(notification.title),
                _gvariant_string(notification.body),
                "@as []",
                f"{{'urgency': <byte {urgency}>}}",
                str(_EXPIRE_MS),
            ]
        )
        self._processes.add(process)
        process.finished.connect(lambda code, _status, p=process: self._dbus_done(p, code))
        process.errorOccurred.connect(lambda _error, p=process: self._dbus_done(p, -1))
        process.start()

    def _dbus_done(self, process: QProcess, code: int) -> None:
        if process not in self._processes:
            return
        self._processes.discard(process)
        if code != 0 and not self._dbus_failed:
            # Once: no notification server on this session is a normal case (a bare bus).
            self._dbus_failed = True
            error = bytes(process.readAllStandardError().data()).decode(errors="replace")
            log.info("no desktop notification (D-Bus): %s", error.strip() or process.errorString())
        process.deleteLater()

    def wait_for_delivery(self, timeout_ms: int = 5000) -> None:
        """Block until the D-Bus calls in flight finished (for tests and for quitting)."""
        for process in list(self._processes):
            process.waitForFinished(timeout_ms)


def summarise(kind: NotificationKind, items: list[_Item]) -> Notification:
    """The title and body of one notification for `items` of `kind`."""
    n = len(items)
    targets = _by_target(items)
    if kind is NotificationKind.synced:
        if n == 1:
            item = items[0]
            title = "Checkpoint synced"
            body = f"{item.key} is now {item.target} v{item.version}"
        else:
            title = f"{n} checkpoints synced"
            body = _join(
                f"{len(group)} checkpoint{'s' if len(group) > 1 else ''} synced to {target}"
                f"{_versions(group)}"
                for target, group in targets.items()
            )
    elif kind is NotificationKind.failed:
        if n == 1:
            item = items[0]
            title = "Checkpoint not synced"
            body = f"{item.key} ({item.target}): {item.message}"
        else:
            title = f"{n} checkpoints not synced"
            listed = [f"{i.key}: {i.message}" for i in items[:_LISTED]]
            more = f"\nand {n - _LISTED} more" if n > _LISTED else ""
            body = "\n".join(listed) + more
        body += "\nOpen the sync panel to retry."
    elif kind in _ALERT_TITLES:
        one, several = _ALERT_TITLES[kind]
        if n == 1:
            title = f"{one}: {items[0].target}"
            body = items[0].message
        else:
            title = f"{n} {several}"
            listed = [f"{i.target}: {i.message}" for i in items[:_LISTED]]
            body = "\n".join(listed) + (f"\nand {n - _LISTED} more" if n > _LISTED else "")
    else:
        people = sorted({i.key for i in items})
        if n == 1:
            item = items[0]
            title = f"New version by {item.key}"
            body = f"{item.target} v{item.version}" + _said(item.message)
        else:
            who = _join(people) if len(people) <= _LISTED else f"{len(people)} teammates"
            title = f"{n} new versions by {who}"
            body = _join(f"{target}{_versions(group)}" for target, group in targets.items())
            said = [f"v{i.version}{_said(i.message)}" for i in items[-_LISTED:] if i.message]
            if said:
                body += "\n" + "\n".join(said)
    return Notification(kind, title, body, n)


def _said(message: str, limit: int = 120) -> str:
    """': the message' (its first line, cut at `limit` characters), or nothing."""
    line = message.strip().splitlines()[0] if message.strip() else ""
    if not line:
        return ""
    return f": {line[: limit - 1]}…" if len(line) > limit else f": {line}"


def _by_target(items: list[_Item]) -> dict[str, list[_Item]]:
    groups: dict[str, list[_Item]] = {}
    for item in items:
        groups.setdefault(item.target, []).append(item)
    return groups


def _versions(items: list[_Item]) -> str:
    numbers = sorted(i.version for i in items if i.version is not None)
    if not numbers:
        return ""
    if len(numbers) == 1:
        return f" (v{numbers[0]})"
    if numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f" (v{numbers[0]} to v{numbers[-1]})"
    listed = ", ".join(f"v{v}" for v in numbers[:_LISTED])
    return f" ({listed}, …)" if len(numbers) > _LISTED else f" ({listed})"


def _join(parts: Iterable[str]) -> str:
    return ", ".join(parts)


def _gvariant_string(text: str) -> str:
    """`text` as a GVariant text-format string literal (what `gdbus call` parses)."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return f"'{escaped}'"


__all__ = ["Notification", "NotificationKind", "Notifier", "summarise"]
