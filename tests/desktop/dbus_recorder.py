"""A stand-in desktop notification server for tests: owns `org.freedesktop.Notifications` on the
session bus given by DBUS_SESSION_BUS_ADDRESS and appends every Notify call, as one JSON line,
to the file named on the command line.

    python tests/desktop/dbus_recorder.py RECORD_FILE

It prints `ready` once it owns the name. It introspects like a real server (GDBus clients such
as `gdbus call` need that), and records the call's D-Bus signature, so a test can check that
the app sends what strict servers (GNOME Shell, dunst) accept: `susssasa{sv}i`. It must run in
a process of its own: a Qt app cannot serve a blocking D-Bus call to itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import signal
import sys
from pathlib import Path
from typing import Any

from PySide6.QtCore import QCoreApplication
from PySide6.QtDBus import QDBusArgument, QDBusConnection, QDBusMessage, QDBusVirtualObject

SERVICE = "org.freedesktop.Notifications"
PATH = "/org/freedesktop/Notifications"
INTROSPECTION = f"""<node>
 <interface name="{SERVICE}">
  <method name="Notify">
   <arg name="app_name" type="s" direction="in"/>
   <arg name="replaces_id" type="u" direction="in"/>
   <arg name="app_icon" type="s" direction="in"/>
   <arg name="summary" type="s" direction="in"/>
   <arg name="body" type="s" direction="in"/>
   <arg name="actions" type="as" direction="in"/>
   <arg name="hints" type="a{{sv}}" direction="in"/>
   <arg name="expire_timeout" type="i" direction="in"/>
   <arg name="id" type="u" direction="out"/>
  </method>
  <method name="GetServerInformation">
   <arg name="name" type="s" direction="out"/>
   <arg name="vendor" type="s" direction="out"/>
   <arg name="version" type="s" direction="out"/>
   <arg name="spec_version" type="s" direction="out"/>
  </method>
 </interface>
</node>"""


class NotificationServer(QDBusVirtualObject):
    def __init__(self, record: Path) -> None:
        super().__init__()
        self.record = record
        self.next_id = 1

    def introspect(self, path: str) -> str:
        return ""

    def handleMessage(self, message: QDBusMessage, connection: QDBusConnection) -> bool:
        member = message.member()
        if member == "Introspect":
            connection.send(message.createReply(INTROSPECTION))
        elif member == "GetServerInformation":
            connection.send(message.createReply(["lmvp-test-recorder", "lmvp", "1", "1.2"]))
        elif member == "Notify":
            args = message.arguments()
            entry: dict[str, Any] = {
                "signature": message.signature(),
                "app_name": args[0],
                "replaces_id": args[1],
                "summary": args[3],
                "body": args[4],
                "actions": _plain(args[5]),
                "expire_timeout": args[7],
            }
            with self.record.open("a") as f:
                f.write(json.dumps(entry) + "\n")
            connection.send(message.createReply(self.next_id))
            self.next_id += 1
        else:
            connection.send(
                message.createErrorReply(
                    "org.freedesktop.DBus.Error.UnknownMethod", f"no method {member}"
                )
            )
        return True


def _plain(value: Any) -> Any:
    return None if isinstance(value, QDBusArgument) else value


def main() -> int:
    with contextlib.suppress(OSError):  # die with the test process
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    app = QCoreApplication(sys.argv)
    bus = QDBusConnection.sessionBus()
    if not bus.isConnected():
        print(f"no session bus: {bus.lastError().message()}", file=sys.stderr)
        return 1
    server = NotificationServer(Path(sys.argv[1]))
    if not bus.registerVirtualObject(PATH, server) or not bus.registerService(SERVICE):
        print(f"could not own {SERVICE}: {bus.lastError().message()}", file=sys.stderr)
        return 1
    print("ready", flush=True)
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
